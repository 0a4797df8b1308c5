"""IPv6 of local interfaces: local6.py's /64s and ULA prefix on their own,
then through the real daemon with a test VMM: the tap's addresses, a
router solicitation answered, DHCPv6 with Rapid Commit, vionetctl showing
both families, a flood of solicitations and DHCPv6 messages answered at a
bounded rate, the guest's router messages and malformed ones counted, and
the same /64 after a restart of the daemon."""
import ipaddress
import time

import pytest
from scapy.layers.dhcp6 import DHCP6_Reply, DHCP6OptIA_NA
from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6NDOptPrefixInfo, ICMPv6NDOptRDNSS
from scapy.layers.l2 import Ether

from tests import netns as N
from tests.daemon import daemon
from tests.test_dhcp6 import ia_na, message, opt
from tests.test_ra import GUEST_MAC, rs_frame
from tests.testvm import TestVM
from vionetd import dhcp6, leases, local6

# ---- local6 on its own -------------------------------------------------------------

def test_slash64s_are_stable_distinct_and_inside():
    net = ipaddress.IPv6Network("fd00:1:2::/48")
    a = local6.addresses6(net, "web/0")
    assert a == local6.addresses6(net, "web/0") and a.net.subnet_of(net)
    assert a.net.prefixlen == 64 and a.host == a.net.network_address + 1
    assert a.lease == a.net.network_address + 2
    b = local6.addresses6(net, "web/0", taken={a.net})
    assert b.net != a.net and b.net.subnet_of(net)
    seen = {local6.addresses6(net, "vm%d/0" % i).net for i in range(50)}
    assert len(seen) >= 49                  # a hash: a collision in 50 of 65536 is rare


def test_ula_is_rfc_4193s_and_kept_with_the_leases(tmp_path):
    ula = local6.new_ula(now=1.5, machine_id=b"x")
    assert ula.prefixlen == 48 and ula.network_address.packed[0] == 0xFD
    assert ula == local6.new_ula(now=1.5, machine_id=b"x") != local6.new_ula(2.5, b"x")
    store = leases.Leases(str(tmp_path / "leases"))
    conf = type("C", (), {"local_prefix6": None})()
    made = local6.prefix6(conf, store)
    again = leases.Leases(store.path)
    again.load()
    assert local6.prefix6(conf, again) == made
    conf.local_prefix6 = ipaddress.IPv6Network("2001:db8::/32")
    assert local6.prefix6(conf, again) == conf.local_prefix6


def test_a_bad_kept_prefix_is_replaced(tmp_path):
    path = tmp_path / "leases"
    path.write_text('{"version": 1, "leases": {}, "prefix6": "2001:db8::/48"}')
    store = leases.Leases(str(path))
    store.load()
    assert store.prefix6() is None


# ---- through the real daemon -------------------------------------------------------

CONF = """socket "@CTL@"
local prefix6 fd00:6:6::/48
dns6 fd00::53
vm "t1" {
    interface {
        socket "@DIR@/t1.sock"
        lladdr 52:54:00:12:34:56
        local
        mtu 1400
    }
}
"""


def replies(vm, layer, n, timeout=5.0):
    """The next n frames with this scapy layer in the RX ring (others skipped)."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("%d of %d %s" % (len(out), n, layer.__name__))
        (_, frame), = vm.receive(1, left, multicast=True)
        pkt = Ether(frame)
        if pkt.haslayer(layer):
            out.append(pkt)
    return out


def ra_wait():
    """How long an answer to a solicitation may take: the advertisement
    sent when the rings started holds the next one back (ra.py)."""
    from vionetd import ra
    return ra.MIN_DELAY_BETWEEN + ra.MAX_RA_DELAY + 3.0


def counter(d, name):
    return d.stats()["t1/0"]["counters"].get(name, 0)


def wait_counter(d, name, at_least, timeout=5.0):
    deadline = time.monotonic() + timeout
    while counter(d, name) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    return counter(d, name)


@pytest.mark.root
def test_router_advertisements_and_dhcpv6_through_the_daemon():
    with N.netns("v6") as ns, daemon(CONF, ns) as d:
        d.wait_socket(d.dir + "/t1.sock")
        a6 = local6.addresses6(ipaddress.IPv6Network("fd00:6:6::/48"), "t1/0")
        addrs = N.ns_run(ns, "ip", "-6", "addr", "show").stdout
        assert "%s/64" % a6.host in addrs and "fe80::1/64" in addrs
        with TestVM(d.dir + "/t1.sock") as vm:
            vm.post_rx(256, 2048)
            vm.send(rs_frame())
            ra, = replies(vm, ICMPv6ND_RA, 1, timeout=ra_wait())
            assert ra[ICMPv6NDOptPrefixInfo].prefix == str(a6.net.network_address)
            assert ra[ICMPv6NDOptRDNSS].dns == ["fd00::53"]
            vm.send(message(dhcp6.SOLICIT, opt(1, bytes.fromhex("00030001") + GUEST_MAC)
                            + ia_na(iaid=9) + opt(14, b"")))
            rep, = replies(vm, DHCP6_Reply, 1)
            assert rep[DHCP6OptIA_NA].ianaopts[0].addr == str(a6.lease)
            show = d.ctl("show", "t1").stdout
            assert "address6 %s, lease %s" % (a6.net, a6.lease) in show
            assert str(a6.net) in d.ctl("status").stdout
            flood(d, vm)
            hostile(d, vm)


def flood(d, vm):
    """1000 solicitations and 1000 DHCPv6 Solicits at once: the tx worker
    passes a burst and then its rate, the parent answers solicitations once
    per MIN_DELAY_BETWEEN; the rest are counted."""
    start = time.monotonic()
    for i in range(1000):
        vm.send(rs_frame())
        vm.send(message(dhcp6.SOLICIT, opt(1, bytes.fromhex("00030001") + GUEST_MAC)
                        + ia_na(), xid=i))
    limited = wait_counter(d, "tx_rs_limited", 990) + wait_counter(d, "tx_dhcp6_limited", 900)
    elapsed = time.monotonic() - start
    assert counter(d, "tx_rs_limited") >= 1000 - 3 - int(elapsed) - 1
    assert counter(d, "tx_dhcp6_limited") >= 1000 - 10 - int(5 * elapsed) - 1
    assert limited >= 1800


def hostile(d, vm):
    """The guest's own router advertisement and a DHCPv6 server message are
    dropped and counted; a malformed DHCPv6 message is counted."""
    from vionetd import frame6
    import struct
    ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
    vm.send(frame6.frame(frame6.multicast_mac(frame6.ALL_NODES), GUEST_MAC,
                         frame6.link_local(GUEST_MAC), frame6.ALL_NODES, frame6.ICMPV6, ra, 2))
    udp = struct.pack("!HHHH", 547, 546, 12, 0) + bytes([7, 0, 0, 1])
    vm.send(frame6.frame(frame6.multicast_mac(frame6.ALL_NODES), GUEST_MAC,
                         frame6.link_local(GUEST_MAC), frame6.ALL_NODES, frame6.UDP, udp, 6))
    assert wait_counter(d, "tx_v6_router_drop", 2) == 2
    time.sleep(2.1)                                 # the DHCPv6 bucket has tokens again
    vm.send(message(dhcp6.SOLICIT, opt(1, bytes(200))))
    assert wait_counter(d, "tx_dhcp6_malformed", 1) == 1


@pytest.mark.root
def test_the_same_slash64_after_a_restart():
    conf = CONF.replace("local prefix6 fd00:6:6::/48\n", "")
    with N.netns("v6") as ns:
        shown = []
        for _ in range(2):
            with daemon(conf, ns) as d:
                d.wait_socket(d.dir + "/t1.sock")
                line = [ln for ln in d.ctl("status").stdout.splitlines() if "t1" in ln][0]
                shown.append([w for w in line.split() if w.startswith("fd")][0])
        assert shown[0] == shown[1] and shown[0].endswith("/64")


LOCKED_CONF = """socket "@CTL@"
local prefix6 fd00:6:6::/48
vm "t1" {
    local interface {
        socket "@DIR@/t1.sock"
        locked lladdr 52:54:00:12:34:56
    }
}
"""


def udp6(src, dst):
    import struct
    from vionetd import frame6
    udp = struct.pack("!HHHH", 4000, 4000, 12, 0) + b"ping"
    return frame6.frame(b"\x02\x00\x00\x00\x00\x01", GUEST_MAC, src, dst, frame6.UDP, udp, 6, 64)


@pytest.mark.root
def test_a_locked_guest_sends_ipv6_from_its_own_addresses_only():
    """Its link-local and SLAAC addresses (EUI-64 of the locked MAC) and its
    DHCPv6 lease pass; another source of the /64, another link-local and a
    non-ICMPv6 packet from :: are dropped and counted; :: in ICMPv6 (a
    duplicate address detection) passes."""
    from vionetd import frame6
    with N.netns("v6") as ns, daemon(LOCKED_CONF, ns) as d:
        d.wait_socket(d.dir + "/t1.sock")
        a6 = local6.addresses6(ipaddress.IPv6Network("fd00:6:6::/48"), "t1/0")
        host = a6.host.packed
        own = local6.guest_sources(a6, GUEST_MAC)
        assert own[1] == (a6.net.network_address + int.from_bytes(
            frame6.eui64(GUEST_MAC), "big")).packed
        with TestVM(d.dir + "/t1.sock") as vm:
            for src in own:
                vm.send(udp6(src, host))
            assert counter(d, "tx_locked_ip6_drop") == 0
            others = [(a6.net.network_address + 7).packed,
                      frame6.link_local(bytes.fromhex("525400999999")), bytes(16)]
            for src in others:
                vm.send(udp6(src, host))
            assert wait_counter(d, "tx_locked_ip6_drop", 3) == 3
            import struct
            ns_msg = struct.pack("!BBHI16s", 135, 0, 0, 0, own[1])
            vm.send(frame6.frame(frame6.multicast_mac(own[1]), GUEST_MAC, bytes(16),
                                 bytes.fromhex("ff0200000000000000000001ff") + own[1][13:],
                                 frame6.ICMPV6, ns_msg, 2))
            time.sleep(0.5)
            assert counter(d, "tx_locked_ip6_drop") == 3
            assert counter(d, "tx_frames") >= len(own) + 1
