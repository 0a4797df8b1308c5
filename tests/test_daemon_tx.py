"""TX through the real daemon: a test VMM sends every header kind, the frames
arrive at the tap's far end, in namespaces of the test's own, as valid frames.

Topology (tests/daemon.py wire()): the daemon's tap is on a bridge with a veth
that has every offload off, so whatever vionetd hands the kernel with
metadata (passthrough: GSO, partial checksums) is segmented and checksummed
by Linux before the capture in the far namespace; what vionetd finishes
itself (software) must already be right. Either way every captured frame
must carry valid checksums and the payloads must add up to what was sent.
The counters tell which path was taken, so a test fails if the mode it
asks for was not the one used.
"""
import socket
import time

import pytest

from tests import frames as F
from tests.daemon import capture_socket, daemon, switched_conf, wire
from tests.test_kernel_segmentation import dissect
from tests.testvm import TestVM

LLADDR = "        lladdr 52:54:00:12:34:56\n"
pytestmark = pytest.mark.root

SOFTWARE = """        offload tx csum software
        offload tx tso4 software
        offload tx tso6 software
        offload tx uso software"""

KINDS = {
    # name: frames.build arguments
    "plain": dict(version=4, proto=F.UDP, payload=b"p" * 200, csum="full"),
    "csum4_tcp": dict(version=4, proto=F.TCP, payload=b"c" * 999),
    "csum6_udp": dict(version=6, proto=F.UDP, payload=b"u" * 501),
    "tso4": dict(version=4, proto=F.TCP, payload=bytes(range(256)) * 40, gso_size=1448),
    "tso6": dict(version=6, proto=F.TCP, payload=bytes(range(256)) * 40, gso_size=1428),
    "tso4_ecn": dict(version=4, proto=F.TCP, payload=b"e" * 5000, gso_size=1000, ecn=True,
                     tcp_flags=F.TCP_ACK | F.TCP_CWR | F.TCP_ECE),
    "uso4": dict(version=4, proto=F.UDP, payload=bytes(range(200)) * 30, gso_size=1400),
    "uso6": dict(version=6, proto=F.UDP, payload=bytes(range(200)) * 30, gso_size=1232),
    "tso4_vlan_opts": dict(version=4, proto=F.TCP, payload=b"v" * 3000, gso_size=700,
                           vlan=7, ip_opts=2, tcp_opts=3),
}


@pytest.fixture(scope="module", params=["passthrough", "software"])
def tx_path(request):
    policy = SOFTWARE if request.param == "software" else ""
    with wire() as (dns, wns, bridge, veth_w):
        with daemon(switched_conf(bridge, lines=LLADDR + policy), dns) as d:
            d.wait_socket(d.dir + "/t1.sock")
            cap = capture_socket(wns, veth_w)
            try:
                with TestVM(d.dir + "/t1.sock") as vm:
                    yield request.param, d, vm, cap
            finally:
                cap.close()


def capture(cap, want_payload, timeout=5.0):
    """Frames from the test's source MAC until their payloads add up."""
    got, total = [], 0
    deadline = time.monotonic() + timeout
    while total < want_payload and time.monotonic() < deadline:
        cap.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = cap.recv(70000)
        except socket.timeout:
            break
        if data[6:12] != F.SRC_MAC:
            continue
        d = dissect(data)
        got.append(d)
        total += len(d["payload"])
    return got


def counters(d):
    return d.stats()["t1/0"]["counters"]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_tx_kind_arrives_valid(tx_path, kind):
    mode, d, vm, cap = tx_path
    f = F.build(**KINDS[kind])
    before = counters(d)
    vm.send(f.data, tuple(f.hdr_fields().values()))
    segs = capture(cap, len(f.payload))
    assert b"".join(s["payload"] for s in segs) == f.payload
    for s in segs:
        assert s["l4.csum_ok"], "bad L4 checksum in %s" % kind
        if s["ip.version"] == 4:
            assert s["ip.csum_ok"]
    if f.gso_size:
        expect = -(-len(f.payload) // f.gso_size)
        assert len(segs) == expect
        if f.proto == F.TCP:
            seqs = [s["tcp.seq"] for s in segs]
            assert seqs == [1000 + i * f.gso_size for i in range(expect)]
            if f.gso_type & F.GSO_ECN:
                assert segs[0]["tcp.flags"] & F.TCP_CWR
                assert not any(s["tcp.flags"] & F.TCP_CWR for s in segs[1:])
    after = counters(d)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert delta["tx_frames"] == 1
    if mode == "software" and f.gso_size:
        assert delta["tx_sw_segmented"] == 1 and delta["tx_passthrough"] == 0
    elif mode == "software" and f.flags & F.NEEDS_CSUM:
        assert delta["tx_sw_csum"] == 1 and delta["tx_passthrough"] == 0
    else:
        assert delta["tx_passthrough"] == 1
