"""Run by the parent: addresses of local interfaces, a /31 each out of the prefix.

As in vmd: the first address of the /31 goes on the host's side of the tap
(the guest's router and DNS server), the second is offered to the guest by
DHCP. The /31 is chosen from a hash of the interface's key (vm/index), so a
VM keeps its address across restarts of the daemon and reloads; a collision
takes the next free /31, in order, and is logged.
"""
import hashlib
import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class Addresses:
    host: ipaddress.IPv4Address
    guest: ipaddress.IPv4Address


def addresses(prefix, key, taken=()):
    """The /31 for interface key in prefix (an IPv4Network), avoiding the
    host addresses in taken. ValueError when the prefix is full."""
    slots = prefix.num_addresses // 2
    if slots < 1:
        raise ValueError("local prefix %s holds no /31" % prefix)
    start = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % slots
    base = int(prefix.network_address)
    for i in range(slots):
        host = ipaddress.IPv4Address(base + 2 * ((start + i) % slots))
        if host not in taken:
            return Addresses(host, host + 1)
    raise ValueError("local prefix %s is full" % prefix)
