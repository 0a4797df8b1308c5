"""Run by the parent and by the workers of local interfaces: router advertisements (RFC 4861).

Three steps, each in the process that may do it, as dhcp.py does for IPv4:

- fields(frame), in the tx worker (sandboxed): the C data path diverted an
  ICMPv6 router solicitation from the guest; this checks it as RFC 4861
  6.1.1 says (hop limit 255, code 0, checksum, options of non-zero length
  within the message, no link-layer option from the unspecified address)
  and returns a RouterSolicit of its fields, never the frame, or None;
- advert(port, ...) in the parent: the RouterAdvert of a port, and
  Advertiser, its pace (below);
- build(advert), in the rx worker: the frame, checksum complete.

What an advertisement says (4.2, 4.6; RFC 8106 5.1): cur hop limit 64,
M and O set (dhcp6.py leases an address and gives the name servers),
router lifetime ROUTER_LIFETIME, the interface's /64 on-link and
autonomous (SLAAC) with VALID and PREFERRED lifetimes, the MTU option
when the interface has an MTU, RDNSS with dns6 (else the host side's
address), the source link-layer address option with the tap's MAC. Its
source is the host side's link-local address, frame6.ROUTER (fe80::1).

Pace (6.2.4, 6.2.6): unsolicited advertisements to all nodes when the
guest's driver starts (the session says "running"), MAX_INITIAL of them
INITIAL_INTERVAL apart, then every MIN_INTERVAL to MAX_INTERVAL seconds
(random). A solicitation is answered by a multicast advertisement after a
random delay up to MAX_RA_DELAY, never sooner than MIN_DELAY_BETWEEN after
the last one: solicitations meanwhile share it. So the guest gets at most
one advertisement every MIN_DELAY_BETWEEN seconds, however many it asks.
"""
import random
import struct

from vionetd import frame6
from vionetd import vionetd_pb2 as pb

RS, RA = 133, 134
OPT_SLLA, OPT_PREFIX, OPT_MTU, OPT_RDNSS = 1, 3, 5, 25
HOP_LIMIT = 64
ROUTER_LIFETIME = 1800               # 3 x MAX_INTERVAL, 6.2.1
VALID, PREFERRED = 86400, 14400      # 6.2.1 AdvValidLifetime, AdvPreferredLifetime
DNS_LIFETIME = 1200                  # 2 x MAX_INTERVAL, RFC 8106 5.1
MAX_INTERVAL, MIN_INTERVAL = 600, 198
MAX_INITIAL, INITIAL_INTERVAL = 3, 16
MIN_DELAY_BETWEEN, MAX_RA_DELAY = 3, 0.5


# ---- tx worker: the guest's solicitation, as fields ---------------------------

def fields(frame):
    """The RouterSolicit in an Ethernet frame, or None if it is not a valid one."""
    try:
        pkt = frame6.packet(frame)
    except ValueError:
        return None
    msg = pkt.payload
    if pkt.next_header != frame6.ICMPV6 or pkt.hop_limit != 255 or len(msg) < 8 \
            or msg[0] != RS or msg[1] != 0 or not frame6.verify(pkt):
        return None
    rs = pb.RouterSolicit(src_mac=pkt.src_mac, src_ip=pkt.src)
    try:
        for kind, value in options(msg[8:]):
            if kind == OPT_SLLA and len(value) >= 6:
                rs.lladdr = value[:6]
    except ValueError:
        return None
    if rs.lladdr and pkt.src == frame6.UNSPECIFIED:
        return None
    return rs


def options(data):
    """(type, value) of ND options (4.6): ValueError for a zero length or
    one past the end."""
    i = 0
    while i < len(data):
        if i + 2 > len(data) or data[i + 1] == 0 or i + 8 * data[i + 1] > len(data):
            raise ValueError("bad option at %d" % i)
        yield data[i], bytes(data[i + 2:i + 8 * data[i + 1]])
        i += 8 * data[i + 1]


# ---- parent: what to advertise, and when ---------------------------------------

def advert(port, dst_ip=frame6.ALL_NODES, dst_mac=None):
    """The RouterAdvert of port (an iface.Interface with address6)."""
    a6 = port.address6
    dns = port.conf.dns6 or [a6.host]
    return pb.RouterAdvert(
        dst_mac=dst_mac or frame6.multicast_mac(dst_ip), dst_ip=dst_ip,
        src_mac=port.tap_mac or bytes(6), src_ip=frame6.ROUTER, hop_limit=HOP_LIMIT,
        managed=True, other=True, router_lifetime=ROUTER_LIFETIME,
        prefix=a6.net.network_address.packed, valid_lifetime=VALID,
        preferred_lifetime=PREFERRED, mtu=port.iface.mtu or 0,
        dns=[d.packed for d in dns], dns_lifetime=DNS_LIFETIME)


class Advertiser:
    """The pace of one port's advertisements. send(advert) is called with
    each; loop is the parent's (call_later); rand, clock for tests."""

    def __init__(self, loop, send, make, clock, rand=random.uniform):
        self.loop, self.send, self.make, self.clock, self.rand = loop, send, make, clock, rand
        self.timer = None          # the next unsolicited one
        self.answer = None         # a solicited one, scheduled
        self.last = None           # clock() of the last one sent
        self.initial = 0           # unsolicited ones sent since start()
        self.sent = self.coalesced = 0

    def start(self):
        """The guest's driver started: advertise now, then at the pace."""
        self.initial = 0
        self._unsolicited()

    def solicited(self, rs):
        """A router solicitation: one advertisement, soon, unless one is
        already on its way (then it serves this one too)."""
        if self.answer is not None:
            self.coalesced += 1
            return
        delay = self.rand(0, MAX_RA_DELAY)
        if self.last is not None:
            delay = max(delay, self.last + MIN_DELAY_BETWEEN - self.clock())
        self.answer = self.loop.call_later(delay, self._answer)

    def stop(self):
        for t in (self.timer, self.answer):
            if t is not None:
                t.cancel()
        self.timer = self.answer = None

    def _answer(self):
        self.answer = None
        self._send()

    def _unsolicited(self):
        if self.timer is not None:
            self.timer.cancel()
        if self.last is None or self.clock() - self.last >= MIN_DELAY_BETWEEN:
            self._send()
        self.initial += 1
        if self.initial < MAX_INITIAL:
            delay = INITIAL_INTERVAL
        else:
            delay = self.rand(MIN_INTERVAL, MAX_INTERVAL)
        self.timer = self.loop.call_later(delay, self._unsolicited)

    def _send(self):
        self.last = self.clock()
        self.sent += 1
        self.send(self.make())


# ---- rx worker: the frame ------------------------------------------------------

def build(a):
    """The Ethernet frame of RouterAdvert a, ICMPv6 checksum complete."""
    flags = (0x80 if a.managed else 0) | (0x40 if a.other else 0)
    msg = struct.pack("!BBHBBHII", RA, 0, 0, a.hop_limit, flags, a.router_lifetime, 0, 0)
    msg += struct.pack("!BBBBIII16s", OPT_PREFIX, 4, 64, 0xC0, a.valid_lifetime,
                       a.preferred_lifetime, 0, a.prefix)
    if a.dns:
        msg += struct.pack("!BBHI", OPT_RDNSS, 1 + 2 * len(a.dns), 0, a.dns_lifetime)
        msg += b"".join(a.dns)
    if a.mtu:
        msg += struct.pack("!BBHI", OPT_MTU, 1, 0, a.mtu)
    msg += struct.pack("!BB6s", OPT_SLLA, 1, a.src_mac)
    return frame6.frame(a.dst_mac, a.src_mac, a.src_ip, a.dst_ip, frame6.ICMPV6, msg, 2)
