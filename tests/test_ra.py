"""Router advertisements (vionetd/ra.py): a router solicitation the kernel
sent, parsed; RFC 4861 6.1.1's checks on hostile ones; the advertisement
byte-compared against radvd 2.19's with the same settings, read back by
scapy (an independent parser); lifetimes against RFC 4861 6.2.1 and RFC
8106 5.1; the pace of Advertiser against a flood of solicitations."""
import ipaddress
import struct
from types import SimpleNamespace

import pytest
from scapy.layers.inet6 import (ICMPv6ND_RA, ICMPv6NDOptMTU, ICMPv6NDOptPrefixInfo,
                                ICMPv6NDOptRDNSS, ICMPv6NDOptSrcLLAddr, IPv6)
from scapy.layers.l2 import Ether

from tests.data6 import load
from vionetd import frame6, local6, ra
from vionetd import vionetd_pb2 as pb

GUEST_MAC = bytes.fromhex("525400123456")
TAP_MAC = bytes.fromhex("fe0000000001")


def fake_port(mtu=1500, dns6=()):
    a6 = local6.Addresses6(ipaddress.IPv6Network("fd12:3456:789a:1::/64"),
                           ipaddress.IPv6Address("fd12:3456:789a:1::1"),
                           ipaddress.IPv6Address("fd12:3456:789a:1::2"))
    return SimpleNamespace(key="vm1/0", address6=a6, tap_mac=TAP_MAC, lease6=None,
                           conf=SimpleNamespace(dns6=[ipaddress.IPv6Address(d) for d in dns6]),
                           iface=SimpleNamespace(mtu=mtu))


def rs_frame(src=frame6.link_local(GUEST_MAC), opts=None, hops=255, code=0, csum=True):
    opts = struct.pack("!BB6s", 1, 1, GUEST_MAC) if opts is None else opts
    msg = struct.pack("!BBHI", 133, code, 0, 0) + opts
    f = bytearray(frame6.frame(frame6.multicast_mac(frame6.ALL_ROUTERS), GUEST_MAC, src,
                               frame6.ALL_ROUTERS, frame6.ICMPV6, msg, 2, hop_limit=hops))
    if not csum:
        f[56] ^= 1
    return bytes(f)


# ---- the solicitation -----------------------------------------------------------

def test_fields_of_the_kernels_solicitation():
    rs = ra.fields(load("rs_kernel.hex"))
    assert rs.src_mac == GUEST_MAC and rs.lladdr == GUEST_MAC
    assert rs.src_ip == ipaddress.IPv6Address("fe80::5054:ff:fe12:3456").packed


def test_our_solicitation_frame_is_the_kernels():
    assert rs_frame() == load("rs_kernel.hex")


@pytest.mark.parametrize("frame", [
    rs_frame(hops=64),                                       # 6.1.1: hop limit 255
    rs_frame(code=1),                                        # code 0
    rs_frame(csum=False),                                    # checksum
    rs_frame(opts=b"\x01\x00" + bytes(6)),                   # option of length 0
    rs_frame(opts=b"\x01\x02" + bytes(6)),                   # option past the end
    rs_frame(src=frame6.UNSPECIFIED),                        # link-layer option from ::
    load("rs_kernel.hex")[:60],                              # truncated
    load("ra_radvd.hex"),                                    # not a solicitation
    b"",
])
def test_malformed_solicitations_are_refused(frame):
    assert ra.fields(frame) is None


def test_solicitation_from_unspecified_without_option():
    rs = ra.fields(rs_frame(src=frame6.UNSPECIFIED, opts=b""))
    assert rs.src_ip == frame6.UNSPECIFIED and rs.lladdr == b""


# ---- the advertisement ------------------------------------------------------------

def test_advertisement_is_radvds_byte_for_byte():
    """radvd 2.19 with the same settings (tests/data/ra_radvd.hex): the
    same bytes but the flow label, which radvd's socket sets and we leave 0."""
    ours = ra.build(ra.advert(fake_port()))
    theirs = load("ra_radvd.hex")
    assert len(ours) == len(theirs)
    assert ours[:14] == theirs[:14] and ours[18:] == theirs[18:]
    assert ours[14:18] == bytes.fromhex("60000000")


def test_advertisement_read_by_scapy():
    pkt = Ether(ra.build(ra.advert(fake_port(mtu=9000, dns6=["fd00::53", "fd00::54"]))))
    assert pkt[IPv6].src == "fe80::1" and pkt[IPv6].dst == "ff02::1" and pkt[IPv6].hlim == 255
    adv = pkt[ICMPv6ND_RA]
    assert adv.M == 1 and adv.O == 1 and adv.routerlifetime == ra.ROUTER_LIFETIME
    assert pkt[ICMPv6NDOptPrefixInfo].prefix == "fd12:3456:789a:1::"
    assert pkt[ICMPv6NDOptPrefixInfo].L == 1 and pkt[ICMPv6NDOptPrefixInfo].A == 1
    assert pkt[ICMPv6NDOptMTU].mtu == 9000
    assert pkt[ICMPv6NDOptRDNSS].dns == ["fd00::53", "fd00::54"]
    assert pkt[ICMPv6NDOptSrcLLAddr].lladdr == "fe:00:00:00:00:01"
    assert frame6.verify(frame6.packet(bytes(pkt)))


def test_no_mtu_option_without_an_mtu_and_host_as_dns():
    pkt = Ether(ra.build(ra.advert(fake_port(mtu=None))))
    assert ICMPv6NDOptMTU not in pkt
    assert pkt[ICMPv6NDOptRDNSS].dns == ["fd12:3456:789a:1::1"]


def test_lifetimes_follow_the_rfcs():
    # RFC 4861 6.2.1: MaxRtrAdvInterval 4..1800, MinRtrAdvInterval at most
    # 0.75 of it, router lifetime 0 or MaxRtrAdvInterval..9000; preferred <= valid
    assert 4 <= ra.MAX_INTERVAL <= 1800 and 3 <= ra.MIN_INTERVAL <= 0.75 * ra.MAX_INTERVAL
    assert ra.MAX_INTERVAL <= ra.ROUTER_LIFETIME <= 9000
    assert ra.PREFERRED <= ra.VALID
    # RFC 8106 5.1: MaxRtrAdvInterval <= RDNSS lifetime <= 2 x MaxRtrAdvInterval
    assert ra.MAX_INTERVAL <= ra.DNS_LIFETIME <= 2 * ra.MAX_INTERVAL


# ---- the pace -----------------------------------------------------------------------

class FakeLoop:
    def __init__(self):
        self.now = 0.0
        self.timers = []

    def call_later(self, delay, fn):
        t = SimpleNamespace(when=self.now + delay, fn=fn, cancelled=False)
        t.cancel = lambda: setattr(t, "cancelled", True)
        self.timers.append(t)
        return t

    def advance(self, to):
        while True:
            due = [t for t in self.timers if not t.cancelled and t.when <= to]
            if not due:
                break
            t = min(due, key=lambda t: t.when)
            self.timers.remove(t)
            self.now = t.when
            t.fn()
        self.now = to


def advertiser(loop, sent):
    return ra.Advertiser(loop, sent.append, lambda: pb.RouterAdvert(), lambda: loop.now,
                         rand=lambda a, b: (a + b) / 2)


def test_a_flood_of_solicitations_gets_one_advertisement_per_min_delay():
    loop, sent = FakeLoop(), []
    adv = advertiser(loop, sent)
    for i in range(30000):                      # 1000 a second for 30 s
        loop.advance(i / 1000)
        adv.solicited(pb.RouterSolicit())
    loop.advance(31)
    assert 30 / ra.MIN_DELAY_BETWEEN <= len(sent) <= 30 / ra.MIN_DELAY_BETWEEN + 1
    assert adv.coalesced == 30000 - len(sent)


def test_unsolicited_pace():
    loop, sent = FakeLoop(), []
    adv = advertiser(loop, sent)
    adv.start()
    assert len(sent) == 1
    loop.advance(ra.INITIAL_INTERVAL * (ra.MAX_INITIAL - 1))
    assert len(sent) == ra.MAX_INITIAL
    loop.advance(loop.now + (ra.MIN_INTERVAL + ra.MAX_INTERVAL) / 2)
    assert len(sent) == ra.MAX_INITIAL + 1
    adv.stop()
    loop.advance(loop.now + 10000)
    assert len(sent) == ra.MAX_INITIAL + 1
