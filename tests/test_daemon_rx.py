"""RX through the real daemon: frames sent from a far namespace cross a bridge
into vionetd's tap and must arrive in the test VMM's RX ring, whole.

Small frames and 64 KiB GSO frames (sent with PACKET_VNET_HDR so the kernel
keeps them whole up to the tap, whose offloads follow the guest's GUEST_*
features), into mergeable and non-mergeable buffers, across the u16 index
wrap, with indirect tables, and with a ring too small for what is sent
(backpressure: nothing may be lost once the guest adds buffers).
"""
import socket
import struct
import time

import pytest

from tests import frames as F
from tests import netns as N
from tests.daemon import daemon, switched_conf, wire
from tests.test_kernel_segmentation import dissect
from tests.testvm import TestVM

LLADDR = "        lladdr 52:54:00:12:34:56\n"
pytestmark = pytest.mark.root

GUEST_MAC = bytes.fromhex("525400123456")
PEER_MAC = bytes.fromhex("5254009a0001")
SOL_PACKET, PACKET_VNET_HDR = 263, 15
F_GUEST_CSUM, F_MRG_RXBUF = 1, 15



class Peer:
    """The far side: sends frames towards the guest, with a vnet header so
    that a GSO super-frame stays whole until the tap."""

    def __init__(self, wns, ifname):
        with N.inside(wns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        self.sock.bind((ifname, 0))

    def send(self, f):
        data = GUEST_MAC + PEER_MAC + f.data[12:]
        hdr = struct.pack("<BBHHHH", f.flags, f.gso_type, f.hdr_len, f.gso_size,
                          f.csum_start, f.csum_offset)
        self.sock.send(hdr + data)
        return data


@pytest.fixture(scope="module")
def rig():
    """(daemon, peer, policy setter): one daemon per policy text."""
    with wire() as (dns, wns, bridge, veth_w):
        peer = Peer(wns, veth_w)
        try:
            yield dns, bridge, peer
        finally:
            peer.sock.close()


@pytest.fixture
def vmd(rig):
    dns, bridge, peer = rig
    started = []

    def start(policy="", **vmargs):
        ctx = daemon(switched_conf(bridge, lines=LLADDR + policy), dns)
        d = ctx.__enter__()
        started.append(ctx)
        d.wait_socket(d.dir + "/t1.sock")
        vm = TestVM(d.dir + "/t1.sock", **vmargs)
        started.append(vm)
        return d, vm, peer
    try:
        yield start
    finally:
        for obj in reversed(started):
            obj.__exit__(None, None, None)


def complete(hdr, frame):
    """What the guest's stack would do with NEEDS_CSUM: finish the checksum."""
    flags, _, _, _, start, off, _ = hdr
    if not flags & F.NEEDS_CSUM:
        return frame
    csum = F.inet_csum(frame[start:])
    return frame[:start + off] + struct.pack("!H", csum) + frame[start + off + 2:]


def check_frame(hdr, got, sent, guest_csum=True):
    assert len(got) == len(sent)
    flags = hdr[0]
    if not guest_csum:
        assert flags == 0, "flags %#x to a guest without GUEST_CSUM" % flags
    d = dissect(complete(hdr, got))
    assert d["l4.csum_ok"]
    assert d["payload"] == dissect(complete(hdr, sent) if flags & F.NEEDS_CSUM else sent)["payload"]


def plain(n=300, proto=F.UDP):
    return F.build(version=4, proto=proto, payload=bytes(range(256)) * (n // 256) +
                   b"z" * (n % 256), csum="full")


def test_rx_small_frames_mergeable(vmd):
    d, vm, peer = vmd()
    assert vm.mergeable
    vm.post_rx(16, 2048)
    sent = [peer.send(plain(100 + 37 * i)) for i in range(8)]
    got = vm.receive(8)
    for (hdr, frame), s in zip(got, sent):
        assert hdr[6] == 1                    # num_buffers
        check_frame(hdr, frame, s)


def test_rx_gso_into_mergeable_buffers(vmd):
    d, vm, peer = vmd()
    vm.post_rx(64, 4096)
    f = F.build(version=4, proto=F.TCP, payload=bytes(range(256)) * 250, gso_size=1448)
    sent = peer.send(f)
    (hdr, frame), = vm.receive(1)
    assert hdr[1] == F.GSO_TCPV4 and hdr[3] == 1448, "not delivered as one GSO frame: %r" % (hdr,)
    assert hdr[6] == -(-(12 + len(sent)) // 4096)
    check_frame(hdr, frame, sent)


def test_rx_gso_into_big_buffers_without_mrg_rxbuf(vmd):
    d0, vm0, _ = vmd()
    want = vm0.features & ~(1 << F_MRG_RXBUF)
    vm0.close()
    d0.stop()
    d, vm, peer = vmd(want=want)
    assert not vm.mergeable
    vm.post_rx(4, 65562 + 12)
    f = F.build(version=6, proto=F.TCP, payload=b"6" * 60000, gso_size=1428)
    sent = peer.send(f)
    (hdr, frame), = vm.receive(1)
    assert hdr[1] == F.GSO_TCPV6 and hdr[6] == 1
    check_frame(hdr, frame, sent)


def test_rx_ring_wraps(vmd):
    d, vm, peer = vmd(base=65530)
    vm.post_rx(12, 2048)
    sent = [peer.send(plain(64 + i)) for i in range(12)]
    got = vm.receive(12)
    assert vm.rx.used_idx == (65530 + 12) & 0xFFFF
    for (hdr, frame), s in zip(got, sent):
        check_frame(hdr, frame, s)


def test_rx_indirect_tables(vmd):
    d, vm, peer = vmd()
    vm.post_rx(4, 512, per_chain=3, indirect=True)
    f = F.build(version=4, proto=F.UDP, payload=b"i" * 1400, csum="full")
    sent = peer.send(f)
    (hdr, frame), = vm.receive(1)
    check_frame(hdr, frame, sent)


def test_rx_full_ring_loses_nothing(vmd):
    d, vm, peer = vmd()
    vm.post_rx(3, 2048)
    sent = [peer.send(plain(200 + i)) for i in range(10)]
    first = vm.receive(3)
    time.sleep(0.3)
    assert not vm.rx.get_used(), "delivered without buffers"
    vm.post_rx(7, 2048)
    rest = vm.receive(7)
    for (hdr, frame), s in zip(first + rest, sent):
        check_frame(hdr, frame, s)
    c = d.stats()["t1/0"]["counters"]
    assert c["rx_no_buffers"] >= 1


def test_rx_guest_without_guest_csum_gets_complete_checksums(vmd):
    d0, vm0, _ = vmd()
    want = vm0.features & ~((1 << F_GUEST_CSUM) | (0x3 << 7) | (1 << 9) | (0x3 << 54))
    vm0.close()
    d0.stop()
    d, vm, peer = vmd(want=want)
    vm.post_rx(64, 2048)
    f = F.build(version=4, proto=F.TCP, payload=b"g" * 5000, gso_size=1448)
    peer.send(f)
    got = vm.receive(4)
    assert b"".join(dissect(fr)["payload"] for _, fr in got) == f.payload
    for hdr, fr in got:
        assert hdr[0] == 0 and hdr[1] == 0
        assert dissect(fr)["l4.csum_ok"]


def test_rx_software_checksum_delivers_data_valid(vmd):
    d, vm, peer = vmd(policy="        offload rx csum software")
    vm.post_rx(8, 4096)
    f = F.build(version=4, proto=F.UDP, payload=b"d" * 1000)      # partial checksum
    sent = peer.send(f)
    (hdr, frame), = vm.receive(1)
    assert hdr[0] == F.DATA_VALID, "flags %#x" % hdr[0]
    d1 = dissect(frame)
    assert d1["l4.csum_ok"] and d1["payload"] == f.payload
    assert d.stats()["t1/0"]["counters"]["rx_sw_csum"] >= 1
    assert len(sent) == len(frame)
