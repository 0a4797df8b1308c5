"""Run by the parent and `vionetd -n`: vionetd.conf's checks across statements.

The grammar (grammar.py) checks each statement as it reads it. What
depends on several statements is checked here, at two moments:
- interface_done(), when an interface's statements have been read: its
  offload policy against the virtio feature dependencies, then local
  against switch, inet6 and hostname;
- whole_file(), at the end of the file, since global settings may come
  after the blocks that use them: no two switches on one bridge; each VM's
  user (the global user when one is written, else none: a uid of its
  own from the user range) and each interface's socket owner, group and mode filled in from
  the global settings unless given; then, interface by interface in file
  order, socket options against connect, unique sockets, tap names (not a
  bridge either) and MAC addresses, known switches; last, a local prefix
  that holds a /31 per local interface.

Invariants:
- The first error found, in the order above, is the one raised.
- Errors name the line of the statement at fault, which the grammar keeps
  in the Notes; an offload dependency names the last offload statement
  involved (the interface's line if none), and a local prefix too small
  for the interfaces names no line if the prefix is the default one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NoReturn

from vionetd.config.model import (DIRECTIONS, OFF, Config, ConfigError,
                                  Interface, alternatives)


@dataclass
class Notes:
    """What the grammar writes down for the checks, beside the Config."""
    filename: str
    # (interface key, what) -> line of its statement, what being "socket",
    # "name", "lladdr", "switch", "inet6" or "hostname"; also ("switch", NAME) -> line
    # of the switch's bridge and ("global", "prefix") -> the local prefix's.
    where: dict[tuple[str, str], int] = field(default_factory=dict)
    # interface key -> the socket's options as written: {word: (value, line)}
    sock_opts: dict[str, dict] = field(default_factory=dict)
    own_user: set[str] = field(default_factory=set)   # VMs with a "user"
    global_user: bool = False                         # a top-level "user NAME"

    def error(self, line: int | None, message: str) -> NoReturn:
        raise ConfigError(self.filename, line, message)


# -- when an interface's block closes

def interface_done(iface: Interface, offload_lines: dict, notes: Notes):
    """Check an interface whose statements have all been read.

    @offload_lines: (direction, name) -> line of the last offload statement
    that set it; an offload not set is blamed on the interface's line.
    """
    _offload_dependencies(iface, offload_lines, notes)
    if iface.local and iface.switch is not None:
        notes.error(notes.where[(iface.key, "switch")], "%s: a local "
                    "interface is routed, it cannot be on a switch"
                    % iface.key)
    if (iface.key, "inet6") in notes.where and not iface.local:
        notes.error(notes.where[(iface.key, "inet6")], "%s: inet6 is said of "
                    "local interfaces only (an interface on a switch or "
                    "of its own gets its IPv6 from that network)" % iface.key)
    if iface.hostname is not None and not iface.local:
        notes.error(notes.where[(iface.key, "hostname")], "%s: hostname is "
                    "given by DHCP on local interfaces only" % iface.key)


def _offload_dependencies(iface: Interface, lines: dict, notes: Notes):
    """The virtio feature dependencies: TSO, USO and ECN need the
    checksum offload of their direction; ECN needs TSO4 or TSO6."""
    def line_of(*keys):
        return max(lines.get(k, iface.line) for k in keys)
    for d in DIRECTIONS:
        modes = getattr(iface.offload, d)
        if modes["csum"] == OFF:
            for n in ("tso4", "tso6", "uso", "ecn"):
                if modes[n] != OFF:
                    notes.error(line_of((d, n), (d, "csum")),
                                "%s: %s %s needs %s csum, which is off "
                                '(add "offload %s %s off" or turn csum on)'
                                % (iface.key, d, n, d, d, n))
        if modes["ecn"] != OFF and modes["tso4"] == OFF \
                and modes["tso6"] == OFF:
            notes.error(line_of((d, "ecn"), (d, "tso4"), (d, "tso6")),
                        "%s: %s ecn needs %s tso4 or tso6, both off "
                        '(add "offload %s ecn off")' % (iface.key, d, d, d))


# -- at the end of the file

def whole_file(conf: Config, notes: Notes):
    """Fill in the defaults that global settings give, then check what
    must hold across blocks. conf is completed in place."""
    bridges = _bridges(conf, notes)
    for vm in conf.vms.values():
        if vm.name not in notes.own_user and notes.global_user:
            vm.user = conf.user
    sockets = {conf.socket: "the control socket"}
    taps: dict[str, str] = {}
    macs: dict[str, str] = {}
    nlocal = 0
    for iface in conf.interfaces():
        _resolve_socket(iface, conf, notes)
        _unique_names(iface, notes, sockets, taps, macs, bridges)
        _switch_known(iface, conf, notes)
        nlocal += iface.local
    if nlocal * 2 > conf.local_prefix.num_addresses:
        notes.error(notes.where.get(("global", "prefix")), "local prefix %s "
                    "too small for %d local interfaces (each takes a /31)"
                    % (conf.local_prefix, nlocal))


def _bridges(conf: Config, notes: Notes) -> dict[str, str]:
    """Check that no two switches share a bridge; return bridge -> switch."""
    bridges: dict[str, str] = {}
    for sw in conf.switches.values():
        if sw.bridge in bridges:
            notes.error(notes.where[("switch", sw.name)], 'switches "%s" '
                        'and "%s" use the same bridge %s'
                        % (bridges[sw.bridge], sw.name, sw.bridge))
        bridges[sw.bridge] = sw.name
    return bridges


def _resolve_socket(iface: Interface, conf: Config, notes: Notes):
    """Set the interface's socket owner, group and mode: its own, else
    the global defaults; with connect, none (the socket is the VMM's)."""
    opts = notes.sock_opts.get(iface.key, {})
    if "connect" in opts:
        iface.connect = True
        for word in ("owner", "group", "mode"):
            if word in opts:
                notes.error(opts[word][1], "%s: socket %s does not apply "
                            "with connect: the VMM creates that socket"
                            % (iface.key, word))
        iface.socket_owner = iface.socket_group = None
        iface.socket_mode = None
        return
    iface.socket_owner = opts.get("owner", (conf.socket_owner,))[0]
    iface.socket_group = opts.get("group", (conf.socket_group,))[0]
    iface.socket_mode = opts.get("mode", (conf.socket_mode,))[0]


def _unique_names(iface: Interface, notes: Notes, sockets: dict,
                  taps: dict, macs: dict, bridges: dict):
    """Check the interface's socket, tap name and MAC address against those
    seen so far (each dict: value -> who uses it), then add them."""
    key = iface.key
    if iface.socket in sockets:
        notes.error(notes.where[(key, "socket")], "%s: duplicate socket %s "
                    "(also used by %s)" % (key, iface.socket,
                                           sockets[iface.socket]))
    sockets[iface.socket] = key
    if iface.name is not None:
        line = notes.where[(key, "name")]
        if iface.name in taps:
            notes.error(line, '%s: duplicate tap name "%s" (also used by %s)'
                        % (key, iface.name, taps[iface.name]))
        if iface.name in bridges:
            notes.error(line, '%s: tap name "%s" is the bridge of switch "%s"'
                        % (key, iface.name, bridges[iface.name]))
        taps[iface.name] = key
    if iface.lladdr is not None:
        if iface.lladdr in macs:
            notes.error(notes.where[(key, "lladdr")], "%s: duplicate lladdr "
                        "%s (also used by %s)"
                        % (key, iface.lladdr, macs[iface.lladdr]))
        macs[iface.lladdr] = key


def _switch_known(iface: Interface, conf: Config, notes: Notes):
    """An interface's switch must be defined somewhere in the file."""
    if iface.switch is None or iface.switch in conf.switches:
        return
    known = ['"%s"' % s for s in sorted(conf.switches)]
    notes.error(notes.where[(iface.key, "switch")], '%s: unknown switch "%s"; '
                "expected %s" % (iface.key, iface.switch, alternatives(known)
                                 if known else "a switch defined in this file"))
