"""Run by the parent: IPv6 of local interfaces, a /64 each out of the prefix6.

The local prefix6 is the configuration's (`local prefix6`), else the host's
own ULA /48 (RFC 4193 3.2): made once, from the time and the host's
machine id through SHA-1 as 3.2.2 says, and kept in the lease file
(leases.py prefix6()), so it is the same after every restart.

Each local interface gets one /64 of it, chosen from a hash of the
interface's key (vm/index), so the VM keeps its prefix across restarts and
reloads; a /64 already taken by another interface takes the next free one,
in order (as local.py does with /31s). In the /64:

- HOST_ID (::1) is the host side of the tap: the guest's router and, unless
  dns6 says otherwise, its DNS server (RDNSS, DHCPv6 option 23);
- LEASE_ID (::2) is the address DHCPv6 leases to the guest (IA_NA);
- the guest's SLAAC addresses are its own choice in the rest; a locked
  interface lets it use only the one of its MAC (guest_sources()).
"""
import hashlib
import ipaddress
import os
import time
from dataclasses import dataclass

from vionetd import frame6

HOST_ID = 1
LEASE_ID = 2
MACHINE_ID = "/etc/machine-id"


@dataclass(frozen=True)
class Addresses6:
    net: ipaddress.IPv6Network          # the interface's /64
    host: ipaddress.IPv6Address         # PREFIX::1 on the tap
    lease: ipaddress.IPv6Address        # PREFIX::2, by DHCPv6


def addresses6(prefix, key, taken=()):
    """The /64 for interface key in prefix (an IPv6Network, /64 or wider),
    avoiding the /64s in taken. ValueError when the prefix is full."""
    bits = 64 - prefix.prefixlen
    if bits < 0:
        raise ValueError("local prefix6 %s holds no /64" % prefix)
    slots = 1 << bits
    start = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % slots
    base = int(prefix.network_address)
    for i in range(min(slots, 1 << 20)):
        net = ipaddress.IPv6Network((base + (((start + i) % slots) << 64), 64))
        if net not in taken:
            first = int(net.network_address)
            return Addresses6(net, ipaddress.IPv6Address(first + HOST_ID),
                              ipaddress.IPv6Address(first + LEASE_ID))
    raise ValueError("local prefix6 %s is full" % prefix)


def guest_sources(a6, mac):
    """The IPv6 sources a locked guest (6-byte mac) may use on a local
    interface with addresses a6: its link-local and SLAAC addresses (the
    modified EUI-64 of its MAC, RFC 4291 appendix A, in fe80::/64 and in its
    /64) and its DHCPv6 lease. [] when the interface is not locked or has no
    IPv6."""
    if a6 is None or len(mac) != 6:
        return []
    return [frame6.link_local(mac), a6.net.network_address.packed[:8] + frame6.eui64(mac),
            a6.lease.packed]


def new_ula(now=None, machine_id=None):
    """A fresh ULA /48 (RFC 4193 3.2.2): SHA-1 of the time and an id of
    this host, the low 40 bits as the global ID, after fd00::/8."""
    if machine_id is None:
        try:
            with open(MACHINE_ID, "rb") as f:
                machine_id = f.read(64).strip()
        except OSError:
            machine_id = b""
        machine_id += os.urandom(8)
    stamp = int((time.time() if now is None else now) * (1 << 32))
    digest = hashlib.sha1(stamp.to_bytes(8, "big") + machine_id).digest()
    global_id = digest[-5:]
    return ipaddress.IPv6Network((b"\xfd" + global_id + b"\x00" * 10, 48))


def prefix6(conf, store):
    """The prefix the local /64s come from: conf.local_prefix6, else the
    ULA kept in store (leases.Leases), made and kept at first use."""
    if conf.local_prefix6 is not None:
        return conf.local_prefix6
    ula = store.prefix6()
    if ula is None:
        ula = new_ula()
        store.set_prefix6(ula)
    return ula
