"""Run by the parent and `vionetd -n`: the dataclasses of vionetd.conf, ConfigError.

The parent reads its configuration at start and on every reload, `vionetd -n`
only to check it; both get the classes below from config.parse() and
config.load(). This module holds data and the defaults only: no parsing.

Invariants:
- The defaults of a Config, Vm and Interface built with no arguments are the
  defaults of vionetd.conf(5): an empty file parses to Config().
- Line numbers are kept in fields excluded from == and repr, so that adding a
  comment does not make an unchanged VM look changed to a reload.
- Offload modes are stored per direction as {name: mode} holding every name
  of OFFLOAD_NAMES, in that order.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

DEFAULT_SOCKET = "/run/vionetd.sock"
DEFAULT_USER = "_vionetd"
DEFAULT_USER_RANGE = (70000, 79999)   # uids (and gids) given one per VM
DEFAULT_CHROOT = "/var/empty"
DEFAULT_PREFIX = "100.64.0.0/10"
DEFAULT_SOCKET_MODE = 0o660      # mode of the vhost-user sockets vionetd creates

DIRECTIONS = ("tx", "rx")
OFFLOAD_NAMES = ("csum", "tso4", "tso6", "ecn", "uso")
PASSTHROUGH, SOFTWARE, OFF = "passthrough", "software", "off"
MODES = (PASSTHROUGH, SOFTWARE, OFF)


class ConfigError(Exception):
    """An error in a configuration file: str() is "FILE:LINE: message",
    or "FILE: message" when line is None (the file as a whole)."""

    def __init__(self, filename: str, line: int | None, message: str):
        self.filename = filename
        self.line = line
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.line is None:
            return "%s: %s" % (self.filename, self.message)
        return "%s:%d: %s" % (self.filename, self.line, self.message)


def alternatives(what: list[str]) -> str:
    """How messages say "expected ...": "a", "a or b", "a, b or c"."""
    if len(what) == 1:
        return what[0]
    return ", ".join(what[:-1]) + " or " + what[-1]


def _all(mode: str) -> dict[str, str]:
    return dict.fromkeys(OFFLOAD_NAMES, mode)


@dataclass
class Offload:
    """Per direction, per offload: passthrough, software or off."""
    tx: dict[str, str] = field(default_factory=lambda: _all(PASSTHROUGH))
    rx: dict[str, str] = field(default_factory=lambda: _all(PASSTHROUGH))

    def mode(self, direction: str, name: str) -> str:
        return getattr(self, direction)[name]

    def offered(self, direction: str, name: str) -> bool:
        """True if the guest may be offered this offload (mode is not off)."""
        return self.mode(direction, name) != OFF


@dataclass(frozen=True)
class Rate:
    """rate tx|rx: the limit of one direction (0: none of that kind)."""
    bits: int = 0        # bits per second
    burst: int = 0       # bytes the bucket holds; 0: 50 ms of the rate, at least 64 KiB
    pps: int = 0         # frames per second

    @property
    def on(self) -> bool:
        return bool(self.bits or self.pps)


@dataclass
class Switch:
    name: str
    bridge: str
    line: int = field(default=0, compare=False, repr=False)


@dataclass
class Interface:
    vm: str
    index: int
    name: str | None = None          # tap name; None: the parent picks one
    socket: str | None = None        # vhost-user socket QEMU connects to
    # Who may use the socket vionetd creates: user and group names (None:
    # root's, as created) and its mode. For a socket vionetd connects to
    # (connect) all three are None: that socket is the VMM's.
    socket_owner: str | None = None
    socket_group: str | None = None
    socket_mode: int | None = DEFAULT_SOCKET_MODE
    connect: bool = False            # the VMM listens, vionetd connects
    lladdr: str | None = None        # guest MAC, lower case; None: random
    locked: bool = False             # drop guest frames from another MAC
    switch: str | None = None
    mtu: int | None = None
    queues: int = 1                  # queue pairs the VMM may use
    local: bool = False              # /31 from local prefix, DHCP by vionetd
    hostname: str | None = None      # DHCP option 12
    inet6: bool = True               # local: a /64, RAs and DHCPv6 ("inet6 off")
    offload: Offload = field(default_factory=Offload)
    # rate tx|rx: applied by the workers, changed by a reload in place
    rate_tx: Rate = field(default_factory=Rate)
    rate_rx: Rate = field(default_factory=Rate)
    line: int = field(default=0, compare=False, repr=False)

    @property
    def key(self) -> str:
        """Stable name of this interface: "vm/index", as in process titles."""
        return "%s/%d" % (self.vm, self.index)


@dataclass
class Vm:
    name: str
    interfaces: list[Interface] = field(default_factory=list)
    disabled: bool = False
    # the VM's processes run as this user; None: as a uid and gid of
    # their own, from the global user range (uids.py)
    user: str | None = None
    # who the VM's VMM must be (SO_PEERCRED of its connection): a uid
    # and/or a gid, None: anyone who can reach the socket
    vmm_user: int | None = None
    vmm_group: int | None = None
    line: int = field(default=0, compare=False, repr=False)


@dataclass
class Config:
    socket: str = DEFAULT_SOCKET
    # the control socket's group is this user's; and, when written, the
    # user of every VM that names none (then they share one uid)
    user: str = DEFAULT_USER
    user_range: tuple[int, int] = DEFAULT_USER_RANGE
    # Defaults of the vhost-user sockets vionetd creates (the interfaces
    # hold the resulting values); the control socket is not concerned.
    socket_owner: str | None = None
    socket_group: str | None = None
    socket_mode: int = DEFAULT_SOCKET_MODE
    chroot: str = DEFAULT_CHROOT
    local_prefix: ipaddress.IPv4Network = field(
        default_factory=lambda: ipaddress.IPv4Network(DEFAULT_PREFIX))
    dns: list[ipaddress.IPv4Address] = field(default_factory=list)
    # None: the host's ULA /48, made once and kept with the leases (local6.py)
    local_prefix6: ipaddress.IPv6Network | None = None
    dns6: list[ipaddress.IPv6Address] = field(default_factory=list)
    # metrics listen ADDR:PORT: where the metrics process serves /metrics
    metrics_listen: tuple[str, int] | None = None
    switches: dict[str, Switch] = field(default_factory=dict)
    vms: dict[str, Vm] = field(default_factory=dict)

    def interfaces(self):
        """Every interface of every VM, in file order."""
        for vm in self.vms.values():
            yield from vm.interfaces
