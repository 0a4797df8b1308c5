"""The data paths against a REAL tap (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, vnet
header size 12) inside a network namespace this test creates and deletes.

The far side of the tap is an AF_PACKET socket bound to it in the namespace:
what the TX path writes into the tap arrives there (the kernel accepted our
header and frame), and what it sends out of the tap the RX path reads.
This checks what a socketpair cannot: that the kernel takes our rebuilt
headers, and that a frame too big for a non-mergeable chain is dropped by the
kernel (EFAULT) without wedging the ring.
"""
import ctypes
import fcntl
import os
import select
import socket
import struct
import subprocess
import threading
import time

import pytest

from tests import frames as F
from tests.test_datapath import HOST_ALL, RX_FEATS, Rig, unvnet, vnet
from vionetd._core import lib

pytestmark = pytest.mark.root

TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ = 0x400454CA, 0x400454D0, 0x400454D8
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003

_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(ns, fn):
    """fn() in a thread that joined namespace ns (setns is per thread)."""
    out = {}

    def body():
        try:
            fd = os.open("/run/netns/" + ns, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            out["v"] = fn()
        except BaseException as e:  # handed to the caller
            out["e"] = e

    t = threading.Thread(target=body)
    t.start()
    t.join(10)
    if "e" in out:
        raise out["e"]
    return out["v"]


@pytest.fixture
def tapns():
    if not os.path.exists("/dev/net/tun") or os.geteuid() != 0:
        pytest.skip("needs root and /dev/net/tun")
    ns = "vring%d" % os.getpid()
    subprocess.run(["ip", "netns", "add", ns], check=True)
    fds = []
    try:
        def make():
            tap = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH14x", b"tap0",
                                                     IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
            fcntl.ioctl(tap, TUNSETVNETHDRSZ, struct.pack("i", 12))
            fcntl.ioctl(tap, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
            pkt = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            return tap, pkt
        tap, pkt = in_netns(ns, make)
        fds += [tap, pkt]
        subprocess.run(["ip", "-n", ns, "link", "set", "tap0", "mtu", "9000", "up"], check=True)
        pkt.bind(("tap0", 0))
        pkt.setblocking(False)
        yield tap, pkt
    finally:
        for x in fds:
            x.close() if hasattr(x, "close") else os.close(x)
        subprocess.run(["ip", "netns", "del", ns], check=False)


def packets_from(pkt, src_mac, want, timeout=3.0):
    """Frames the packet socket sees with our source MAC (ignoring the
    kernel's own IPv6 chatter), until want of them or the timeout."""
    out, end = [], time.monotonic() + timeout
    while len(out) < want and time.monotonic() < end:
        select.select([pkt], [], [], 0.1)
        while True:
            try:
                data, addr = pkt.recvfrom(1 << 17)
            except BlockingIOError:
                break
            if data[6:12] == src_mac:
                out.append(data)
    return out


@pytest.mark.parametrize("uring", [False, True], ids=["writev", "io_uring"])
def test_tx_into_real_tap(tapns, uring):
    tap, pkt = tapns
    r = Rig("tx", features=HOST_ALL, flags=lib.TXF_ENABLED, uring=uring)
    try:
        r.c.tap_fd = tap
        plain = F.build(4, F.UDP, b"u" * 500)                      # NEEDS_CSUM
        tso = F.build(4, F.TCP, b"t" * 20000, gso_size=1448)       # TSO super-frame
        r.tx_send(vnet(plain.flags, 0, 7, 0, plain.csum_start, plain.csum_offset),
                  plain.data, (34,))
        r.tx_send(vnet(tso.flags, tso.gso_type, 1, 1448, tso.csum_start, tso.csum_offset),
                  tso.data, (54, 8000))
        r.run()
        assert r.c.cnt[lib.DC_TAP_ERROR] == 0 and r.c.cnt[lib.DC_PASSTHROUGH] == 2
        assert r.c.cnt[lib.DC_TAP_SUBMITS] == (1 if uring else 0)
        got = packets_from(pkt, F.SRC_MAC, 2)
        # the kernel took both headers: the frames arrive (the TSO one whole,
        # as a GSO packet, or cut in segments if something on the way did)
        assert got and got[0] == plain.data
        assert sum(len(g) - tso.hdrs_len for g in got[1:]) == len(tso.payload)
    finally:
        r.close()


def test_rx_from_real_tap_too_big_dropped_not_wedged(tapns):
    tap, pkt = tapns
    r = Rig("rx", features=RX_FEATS, flags=lib.RXF_ENABLED)
    try:
        r.c.tap_fd = tap
        r.c.frame_max = 1518
        r.rx_post([12, 1518], count=4)
        small = F.build(4, F.UDP, b"a" * 200, csum="full").data
        big = F.build(4, F.UDP, b"b" * 3000, csum="full").data
        for d in (small, big, small):
            pkt.send(d)
        deadline = time.monotonic() + 3
        frames = []
        while len(frames) < 2 and time.monotonic() < deadline:
            select.select([tap], [], [], 0.1)
            r.run(kick=False)
            frames += r.rx_frames()
        ours = [d for h, d, n in frames if d[6:12] == F.SRC_MAC]
        assert ours == [small, small]
        assert r.c.cnt[lib.DC_RX_TOO_BIG] == 1
        assert all(h["num_buffers"] == 1 for h, _, _ in frames)
        assert unvnet(bytes(12))["flags"] == 0
    finally:
        r.close()
