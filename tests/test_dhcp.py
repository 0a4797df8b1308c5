"""DHCP for local interfaces: the three steps of vionetd/dhcp.py on their
own, then the whole exchange through the real daemon with a test VMM:
DISCOVER/OFFER, REQUEST/ACK, NAK for a wrong address, INFORM, RELEASE, and a
malformed message counted and dropped. Replies are checked with scapy, an
independent parser, and must carry complete checksums."""
import ipaddress
import struct
from types import SimpleNamespace

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests import netns as N
from tests.daemon import daemon
from tests.testvm import TestVM
from vionetd import dhcp, local

MAC = bytes.fromhex("525400000001")


def request_frame(mtype, xid=0x1234, requested=None, ciaddr=b"\0" * 4, server=None,
                  broadcast=True, truncate=None):
    opts = bytes([53, 1, mtype])
    if requested:
        opts += bytes([50, 4]) + requested
    if server:
        opts += bytes([54, 4]) + server
    opts += bytes([12, 6]) + b"guest1" + bytes([55, 3, 1, 3, 6]) + b"\xff"
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0,
                        0x8000 if broadcast else 0, ciaddr, b"\0" * 4, b"\0" * 4, b"\0" * 4,
                        MAC, b"", b"") + dhcp.MAGIC + opts
    if truncate:
        bootp = bootp[:truncate]
    udp = struct.pack("!HHHH", 68, 67, 8 + len(bootp), 0) + bootp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, ciaddr,
                     b"\xff" * 4)
    ip = ip[:10] + struct.pack("!H", dhcp._checksum(ip)) + ip[12:]
    return b"\xff" * 6 + MAC + b"\x08\x00" + ip + udp


def options(pkt):
    return {o[0]: o[1:] for o in pkt[DHCP].options if isinstance(o, tuple)}


def fake_port(prefix="100.64.0.0/10", key="vm1/0"):
    addr = local.addresses(ipaddress.IPv4Network(prefix), key)
    return SimpleNamespace(address=addr, key=key, lease=None, tap_mac=bytes.fromhex("fe0000000001"),
                           conf=SimpleNamespace(dns=[]),
                           iface=SimpleNamespace(mtu=1500, hostname="guest1"))


# ---- the three steps on their own ------------------------------------------

def test_fields_of_a_discover():
    req = dhcp.fields(request_frame(dhcp.DISCOVER))
    assert req.message_type == dhcp.DISCOVER and req.xid == 0x1234
    assert req.chaddr == MAC and req.hostname == "guest1"


@pytest.mark.parametrize("cut", [10, 200, 240, 243])
def test_malformed_is_none(cut):
    assert dhcp.fields(request_frame(dhcp.DISCOVER, truncate=cut)) is None


def test_options_running_past_the_end_are_refused():
    frame = request_frame(dhcp.DISCOVER)
    bad = frame[:-1] + bytes([50])          # replace the end option with a bare code
    assert dhcp.fields(bad) is None


def test_decide_and_build_offer_ack_nak():
    port = fake_port()
    offer = dhcp.decide(port, dhcp.fields(request_frame(dhcp.DISCOVER)))
    pkt = Ether(dhcp.build(offer))
    assert pkt[BOOTP].yiaddr == str(port.address.guest)
    o = options(pkt)
    assert o["message-type"] == (dhcp.OFFER,)
    assert o["router"] == (str(port.address.host),)
    assert o["subnet_mask"] == ("255.255.255.254",)
    assert o["lease_time"] == (dhcp.LEASE_TIME,)
    assert o["interface-mtu"] == (1500,)
    # complete checksums, checked by recomputing them with scapy
    raw = bytes(pkt)
    del pkt[IP].chksum, pkt[UDP].chksum
    assert bytes(Ether(bytes(pkt))) == raw
    ack = dhcp.decide(port, dhcp.fields(request_frame(dhcp.REQUEST,
                                                      requested=port.address.guest.packed)))
    assert ack.message_type == dhcp.ACK and port.lease
    nak = dhcp.decide(port, dhcp.fields(request_frame(dhcp.REQUEST, requested=b"\x0a\0\0\x05")))
    assert nak.message_type == dhcp.NAK
    assert Ether(dhcp.build(nak))[IP].dst == "255.255.255.255"
    other = dhcp.decide(port, dhcp.fields(request_frame(
        dhcp.REQUEST, requested=port.address.guest.packed, server=b"\x0a\0\0\x01")))
    assert other is None                    # the client chose another server


def test_release_and_inform():
    port = fake_port()
    g = port.address.guest.packed
    dhcp.decide(port, dhcp.fields(request_frame(dhcp.REQUEST, requested=g)))
    assert port.lease
    assert dhcp.decide(port, dhcp.fields(request_frame(dhcp.RELEASE, ciaddr=g))) is None
    assert port.lease is None
    inform = dhcp.decide(port, dhcp.fields(request_frame(dhcp.INFORM, ciaddr=g)))
    pkt = Ether(dhcp.build(inform))
    assert options(pkt)["message-type"] == (dhcp.ACK,)
    assert "lease_time" not in options(pkt)
    assert pkt[IP].dst == str(port.address.guest)


def test_addresses_are_stable_and_distinct():
    net = ipaddress.IPv4Network("100.64.0.0/10")
    a = local.addresses(net, "web/0")
    assert a == local.addresses(net, "web/0")
    assert int(a.host) % 2 == 0 and a.guest == a.host + 1 and a.host in net
    b = local.addresses(net, "web/0", taken={a.host})
    assert b != a
    with pytest.raises(ValueError):
        local.addresses(ipaddress.IPv4Network("10.0.0.0/31"), "x", taken={ipaddress.IPv4Address("10.0.0.0")})


# ---- through the real daemon -----------------------------------------------

CONF = """socket "@CTL@"
vm "t1" {
    interface {
        socket "@DIR@/t1.sock"
        lladdr 52:54:00:00:00:01
        local
        hostname "guest1"
    }
}
"""


def dhcp_replies(vm, n, timeout=5.0):
    """The next n DHCP replies in the RX ring (other frames, e.g. the host's
    own IPv6 chatter, are skipped)."""
    out = []
    while len(out) < n:
        (hdr, frame), = vm.receive(1, timeout)
        pkt = Ether(frame)
        if pkt.haslayer(DHCP):
            out.append((hdr, pkt, frame))
    return out


@pytest.mark.root
def test_dhcp_exchange_through_the_daemon():
    with N.netns("vh") as ns, daemon(CONF, ns) as d:
        d.wait_socket(d.dir + "/t1.sock")
        with TestVM(d.dir + "/t1.sock") as vm:
            vm.post_rx(128, 2048)
            vm.send(request_frame(dhcp.DISCOVER, xid=1))
            (hdr, offer, raw), = dhcp_replies(vm, 1)
            assert hdr[0] == 0                      # no partial checksum: complete
            assert options(offer)["message-type"] == (dhcp.OFFER,)
            guest = offer[BOOTP].yiaddr
            host = options(offer)["server_id"][0]
            assert ipaddress.IPv4Address(guest) == ipaddress.IPv4Address(host) + 1
            del offer[IP].chksum, offer[UDP].chksum
            assert bytes(Ether(bytes(offer))) == raw
            vm.send(request_frame(dhcp.REQUEST, xid=2,
                                  requested=ipaddress.IPv4Address(guest).packed))
            (_, ack, _), = dhcp_replies(vm, 1)
            assert options(ack)["message-type"] == (dhcp.ACK,) and ack[BOOTP].xid == 2
            show = d.ctl("show", "t1").stdout
            assert "lease %s" % guest in show
            # the host side of the tap has the other address of the /31
            addrs = N.ns_run(ns, "ip", "-4", "addr", "show").stdout
            assert "%s/31" % host in addrs
            vm.send(request_frame(dhcp.REQUEST, xid=3, requested=b"\x0a\0\0\x09"))
            (_, nak, _), = dhcp_replies(vm, 1)
            assert options(nak)["message-type"] == (dhcp.NAK,)
            before = d.stats()["t1/0"]["counters"].get("tx_dhcp_malformed", 0)
            vm.send(request_frame(dhcp.DISCOVER, truncate=100))
            vm.send(request_frame(dhcp.RELEASE, xid=4,
                                  ciaddr=ipaddress.IPv4Address(guest).packed))
            import time
            deadline = time.monotonic() + 5
            while "lease" in d.ctl("show", "t1").stdout and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "lease" not in d.ctl("show", "t1").stdout
            assert d.stats()["t1/0"]["counters"]["tx_dhcp_malformed"] == before + 1
