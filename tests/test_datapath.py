"""The TX and RX data paths (csrc/txpath.c, csrc/rxpath.c) end to end in C.

The guest side is a memfd laid out by tests/guestmem.py; the "tap" is one end
of an AF_UNIX SOCK_SEQPACKET socketpair, so each writev() of the TX path is
one datagram the test receives, and each datagram the test sends is one
frame (vnet header first) the RX path reads, just as a tap with IFF_VNET_HDR
behaves. Kick/call are real eventfds, the control channel a real socketpair.
"""
import os
import select
import socket
import struct
import tty

import pytest

from tests import frames as F
from tests.guestmem import GuestMemory, SplitRing
from vionetd._core import ffi, lib
from tests.vqglue import counters, eventfd, eventfd_count, map_memory, setup_vq

VERSION_1 = 1 << 32
F_MRG = 1 << 15
F_GUEST_CSUM = 1 << 1
F_GUEST_TSO4 = 1 << 7
F_GUEST_TSO6 = 1 << 8
HOST_ALL = F.ALL_HOST | VERSION_1


def vnet(flags=0, gso_type=0, hdr_len=0, gso_size=0, cs=0, co=0, nb=0):
    return struct.pack("<BBHHHHH", flags, gso_type, hdr_len, gso_size, cs, co, nb)


def unvnet(b):
    return dict(zip(("flags", "gso_type", "hdr_len", "gso_size", "csum_start",
                     "csum_offset", "num_buffers"), struct.unpack("<BBHHHHH", b[:12])))


def l4_csum_ok(frame, version, l4_off, proto):
    """The L4 checksum verifies over the pseudo-header (independent of C)."""
    if version == 4:
        ihl = (frame[14] & 15) * 4
        src, dst = frame[26:30], frame[30:34]
        l4_len = struct.unpack("!H", frame[16:18])[0] - ihl
    else:
        src, dst = frame[22:38], frame[38:54]
        l4_len = struct.unpack("!H", frame[18:20])[0] - (l4_off - 54)
    seg = frame[l4_off:l4_off + l4_len]
    return F.ones_sum(F.pseudo_header(version, src, dst, proto, l4_len) + seg) == 0xFFFF


class Rig:
    """Guest memory, one ring, eventfds, a socketpair "tap" and a control pair."""

    def __init__(self, kind, num=64, features=HOST_ALL, flags=None, event_idx=False,
                 memsize=8 << 20, uring=False):
        self.kind = kind
        self.uring = ffi.NULL
        self.mem = GuestMemory(memsize)
        self.gm = map_memory(self.mem)
        self.ring = SplitRing(self.mem, num)
        self.c = ffi.new("struct %s_ctx *" % kind)
        self.kick, self.call = eventfd(), eventfd()
        self.tap, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.tap.setblocking(False)
        self.peer.setblocking(False)
        self.ctl, self.ctl_peer = socket.socketpair()
        q = ffi.addressof(self.c, "q")
        assert setup_vq(q, self.gm, self.ring, event_idx=event_idx, call_fd=self.call) == 0
        self.c.kick_fd, self.c.tap_fd, self.c.features = self.kick, self.tap.fileno(), features
        if kind == "tx":
            self.c.flags = lib.TXF_ENABLED if flags is None else flags
            assert lib.tx_init(self.c) == 0
            if uring:
                self.uring = lib.txu_open()
                assert self.uring != ffi.NULL, "io_uring: %s" % os.strerror(ffi.errno)
                self.c.uring = self.uring
        else:
            self.c.flags = lib.RXF_ENABLED if flags is None else flags
            assert lib.rx_init(self.c) == 0
        self.bufs = {}

    def close(self):
        if self.kind == "tx":
            lib.tx_fini(self.c)
            lib.txu_close(self.uring)
        lib.gmem_unmap_all(self.gm)
        for s in (self.tap, self.peer, self.ctl, self.ctl_peer):
            s.close()
        os.close(self.kick)
        os.close(self.call)
        self.mem.close()

    @property
    def q(self):
        return ffi.addressof(self.c, "q")

    def run(self, kick=True, rounds=50):
        """Kick, then let *_run serve until nothing is left to do (bounded)."""
        if kick:
            os.eventfd_write(self.kick, 1)
        rcs = []
        for _ in range(rounds):
            self.ctl_peer.send(b"x")           # makes *_run return after a batch
            before = list(self.c.cnt)
            fn = lib.tx_run if self.kind == "tx" else lib.rx_run
            rc = fn(self.c, self.ctl.fileno())
            self.ctl.recv(16)
            rcs.append(rc)
            if rc == lib.DP_ERROR:
                raise OSError(ffi.errno, "run failed")
            if rc == lib.DP_CTL and list(self.c.cnt) == before:
                break
        return rcs

    def recv_all(self):
        out = []
        while True:
            try:
                out.append(self.peer.recv(1 << 17))
            except BlockingIOError:
                return out

    # TX: a frame as a Linux guest puts it: header descriptor, then the frame
    # cut in pieces.
    def tx_send(self, hdr, data, cuts=(), indirect=False):
        pieces, last = [], 0
        for c in list(cuts) + [len(data)]:
            pieces.append(data[last:c])
            last = c
        bufs = [self.ring.alloc_buffer(12, hdr)] + \
               [self.ring.alloc_buffer(len(p), p) for p in pieces if p]
        return self.ring.add_chain(bufs, indirect=indirect)

    # RX: writable chains of the given descriptor sizes
    def rx_post(self, sizes, count=1):
        heads = []
        for _ in range(count):
            bufs = [self.ring.alloc_buffer(s, writable=True) for s in sizes]
            h = self.ring.add_chain(bufs)
            self.bufs[h] = bufs
            heads.append(h)
        return heads

    def rx_read(self, head, length):
        out = b""
        for gpa, size, _ in self.bufs[head]:
            take = min(size, length - len(out))
            out += self.mem.read(gpa, take)
            if len(out) == length:
                break
        return out

    def rx_frames(self):
        """Used entries grouped into frames by num_buffers: [(hdr, frame, nbufs)]."""
        used = self.ring.get_used()
        out, i = [], 0
        while i < len(used):
            head, length = used[i]
            first = self.rx_read(head, length)
            h = unvnet(first)
            n = h["num_buffers"] if self.c.features & F_MRG else 1
            data = first
            for k in range(1, n):
                data += self.rx_read(*used[i + k])
            out.append((h, data[12:], n))
            i += n
        return out


@pytest.fixture(params=["writev", "io_uring"])
def tx(request):
    """A TX rig; every TX test runs with one write per frame and with a
    batch's frames in one io_uring submission (txuring.c)."""
    rigs = []

    def make(**kw):
        r = Rig("tx", uring=request.param == "io_uring", **kw)
        rigs.append(r)
        return r
    yield make
    for r in rigs:
        r.close()


@pytest.fixture
def rx():
    rigs = []

    def make(**kw):
        r = Rig("rx", **kw)
        rigs.append(r)
        return r
    yield make
    for r in rigs:
        r.close()


def test_counter_names_unique():
    names = [ffi.string(lib.dp_counter_name(i)).decode() for i in range(lib.DC_MAX)]
    assert len(set(names)) == lib.DC_MAX and "unknown" not in names
    assert names[lib.DC_RING_BASE + lib.VQE_LOOP] == "ring_loop"
    assert names[lib.DC_VR_BASE + lib.VR_FRAME_SHORT].startswith("refused_")


# ---- TX ---------------------------------------------------------------------

def test_tx_passthrough_batch(tx):
    r = tx()
    f1 = F.build(4, F.TCP, b"a" * 1000)                     # NEEDS_CSUM
    f2 = F.build(6, F.UDP, b"b" * 300, csum="full")
    f3 = F.build(4, F.TCP, b"c" * 20000, gso_size=1448)     # TSO
    heads = [r.tx_send(vnet(f1.flags, 0, 7, 0, f1.csum_start, f1.csum_offset), f1.data, (30, 100)),
             r.tx_send(vnet(F.DATA_VALID), f2.data),
             r.tx_send(vnet(f3.flags, f3.gso_type, 3, 1448, f3.csum_start, f3.csum_offset),
                       f3.data, (54, 4096, 8192), indirect=True)]
    r.run()
    got = r.recv_all()
    assert len(got) == 3
    h1, h2, h3 = (unvnet(g) for g in got)
    assert [g[12:] for g in got] == [f1.data, f2.data, f3.data]
    # our header, not the guest's: hdr_len recomputed, DATA_VALID dropped
    assert h1 == dict(flags=1, gso_type=0, hdr_len=f1.hdrs_len, gso_size=0,
                      csum_start=f1.csum_start, csum_offset=16, num_buffers=0)
    assert h2["flags"] == 0 and h2["hdr_len"] == f2.hdrs_len
    assert h3["gso_type"] == F.GSO_TCPV4 and h3["gso_size"] == 1448 and h3["hdr_len"] == 54
    assert sorted(r.ring.get_used()) == sorted((h, 0) for h in heads)
    assert eventfd_count(r.call) == 1                      # one signal for the batch
    cnt = counters(r.c)
    assert cnt["frames"] == 3 and cnt["passthrough"] == 3 and cnt["kicks"] == 1
    assert cnt["bytes"] == len(f1.data) + len(f2.data) + len(f3.data)
    assert cnt["notifications"] == 1
    assert r.ring.used_flags == 0                          # waiting for kicks again


def test_tx_sw_csum(tx):
    r = tx(flags=lib.TXF_ENABLED | lib.TXF_SW_CSUM)
    fs = [F.build(4, F.UDP, b"u" * 333), F.build(6, F.TCP, bytes(range(256)) * 9),
          F.build(4, F.TCP, b"t" * 1, ip_opts=2)]
    for f in fs:
        r.tx_send(f.vnet_hdr(), f.data, (20,))
    r.run()
    got = r.recv_all()
    assert len(got) == 3
    for f, g in zip(fs, got):
        assert g[:12] == bytes(12)
        frame = g[12:]
        assert len(frame) == len(f.data) and frame[f.hdrs_len:] == f.payload
        assert l4_csum_ok(frame, f.version, f.l4_off, f.proto)
    assert counters(r.c)["sw_csum"] == 3


def test_tx_sw_csum_over_a_next_header_never_writes_a_frame_that_fails_validation(tx):
    """fuzz_tx: an IPv6 frame whose payload length runs past the frame, its
    headers too deep to parse, with NEEDS_CSUM whose field (bytes 61-62)
    covers the second extension header's next-header byte. It passed
    validation (the IP length was judged only for frames that parsed), then
    the software checksum (0xffff over zeros) made it parse, and the tap got
    an IPv6 packet 1054 bytes long in 200: refused and counted now."""
    r = tx(flags=lib.TXF_ENABLED | lib.TXF_SW_CSUM)
    data = F.v6_length_past_unparsed_exts(claimed=1000, total=200)
    head = r.tx_send(vnet(F.NEEDS_CSUM, 0, 0, 0, 55, 6), data)
    r.run()
    assert r.recv_all() == []
    assert r.ring.get_used() == [(head, 0)]
    cnt = counters(r.c)
    assert cnt["refused_gso_ip_length"] == 1 and "sw_csum" not in cnt and "frames" not in cnt


@pytest.mark.parametrize("version,proto", [(4, F.TCP), (6, F.TCP), (4, F.UDP)])
def test_tx_sw_gso(tx, version, proto):
    r = tx(flags=lib.TXF_ENABLED | lib.TXF_SW_GSO | lib.TXF_SW_CSUM)
    payload = bytes((i * 7) & 0xFF for i in range(3500))
    f = F.build(version, proto, payload, gso_size=1000)
    r.tx_send(f.vnet_hdr(), f.data, (f.hdrs_len, 2000))
    r.run()
    got = r.recv_all()
    assert len(got) == 4
    data = b""
    for k, g in enumerate(got):
        assert g[:12] == bytes(12)
        seg = g[12:]
        assert seg[:12] == f.data[:12]
        assert l4_csum_ok(seg, version, f.l4_off, proto)
        if version == 4:
            assert struct.unpack("!H", seg[16:18])[0] == len(seg) - 14
        if proto == F.TCP:
            assert struct.unpack("!I", seg[f.l4_off + 4:f.l4_off + 8])[0] == 1000 + 1000 * k
        data += seg[f.hdrs_len:]
    assert data == payload
    cnt = counters(r.c)
    assert cnt["sw_segmented"] == 1 and cnt["segments_out"] == 4


def test_tx_refused_and_bad_chains_counted_next_served(tx):
    r = tx()
    good = F.build(4, F.UDP, b"ok" * 50, csum="full")
    r.tx_send(vnet(), b"short")                                     # < Ethernet header
    r.tx_send(vnet(0x40), good.data)                                # unknown flag
    r.ring.add_chain([r.ring.alloc_buffer(12, vnet()),
                      r.ring.alloc_buffer(len(good.data), good.data, writable=True)])
    # a loop: 0 -> 1 -> 0
    d0, d1 = r.ring.free.pop(0), r.ring.free.pop(0)
    buf = r.ring.alloc_buffer(64, bytes(64))
    r.ring.write_desc(d0, buf[0], 64, 1, d1)
    r.ring.write_desc(d1, buf[0], 64, 1, d0)
    r.ring.post_head(d0)
    r.ring.post_head(1000)                                          # head out of range
    r.ring.write_desc(r.ring.free.pop(0), 2**63, 100)               # outside memory
    r.ring.post_head(r.ring.free[-1] if False else d1 + 1)
    r.tx_send(vnet(), good.data)
    r.run()
    got = r.recv_all()
    assert [g[12:] for g in got] == [good.data]
    cnt = counters(r.c)
    assert cnt["refused_" + ffi.string(lib.vnet_reason_name(lib.VR_FRAME_SHORT)).decode()] == 1
    assert cnt["refused_" + ffi.string(lib.vnet_reason_name(lib.VR_FLAGS_UNKNOWN)).decode()] == 1
    assert cnt["ring_write_on_tx"] == 1 and cnt["ring_loop"] == 1
    assert cnt["ring_head_range"] == 1 and cnt["ring_addr"] == 1
    assert cnt["frames"] == 1
    used = r.ring.get_used()
    assert len(used) == 6 and all(length == 0 for _, length in used)   # all but head 1000


def test_tx_tap_full_loses_nothing(tx):
    r = tx(num=128)
    r.tap.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sent = [F.build(4, F.UDP, bytes([i]) * 1400, csum="full").data for i in range(40)]
    for d in sent:
        r.tx_send(vnet(), d)
    r.run()
    assert r.c.cnt[lib.DC_TAP_FULL] >= 1
    used = r.ring.get_used()
    # kept, not dropped: in the ring, or (io_uring) staged and not completed
    assert lib.vq_pending(r.q) > 0 or len(used) < len(sent)
    got = r.recv_all()
    for _ in range(100):
        if len(got) == len(sent):
            break
        r.run(kick=False)                          # POLLOUT wakes it
        got += r.recv_all()
    assert [g[12:] for g in got] == sent           # all, once, in order
    assert lib.vq_pending(r.q) == 0
    assert len(used + r.ring.get_used()) == len(sent)


def test_tx_tap_that_cannot_refuse_to_wait_falls_back_to_writev():
    """A tap whose writes cannot be told not to wait (RWF_NOWAIT: EOPNOTSUPP;
    a pty is such a file) wrote nothing through io_uring: the frames go out
    with writev(), in order, and io_uring is given up for good."""
    r = Rig("tx", uring=True)
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        os.set_blocking(slave, False)
        r.c.tap_fd = slave
        sent = [F.build(4, F.UDP, bytes([65 + i]) * 40, csum="full").data for i in range(3)]
        for d in sent:
            r.tx_send(vnet(), d)
        r.run()
        assert r.c.cnt[lib.DC_TAP_URING_OFF] == 1 and r.c.uring == ffi.NULL
        assert r.c.cnt[lib.DC_PASSTHROUGH] == 3 and r.c.cnt[lib.DC_TAP_ERROR] == 0
        got = b""
        while len(got) < sum(12 + len(d) for d in sent):
            assert select.select([master], [], [], 5)[0], "the frames never came"
            got += os.read(master, 4096)
        for d in sent:                                  # in order, behind a header
            assert got[12:12 + len(d)] == d
            got = got[12 + len(d):]
        assert got == b""
        assert len(r.ring.get_used()) == 3
    finally:
        r.c.tap_fd = r.tap.fileno()
        os.close(master)
        os.close(slave)
        r.close()


def test_tx_disabled_ring_discards(tx):
    r = tx(flags=0)
    f = F.build(4, F.UDP, b"x" * 10, csum="full")
    for _ in range(3):
        r.tx_send(vnet(), f.data)
    r.run()
    assert r.recv_all() == []
    assert counters(r.c)["disabled_drop"] == 3
    assert len(r.ring.get_used()) == 3


def test_tx_locked_mac(tx):
    r = tx(flags=lib.TXF_ENABLED | lib.TXF_LOCKED_MAC)
    r.c.locked_mac = list(F.SRC_MAC)
    f = F.build(4, F.UDP, b"x" * 10, csum="full")
    spoof = F.patch(f.data, 6, bytes.fromhex("020000000001"))
    r.tx_send(vnet(), spoof)
    r.tx_send(vnet(), f.data)
    r.run()
    assert [g[12:] for g in r.recv_all()] == [f.data]
    assert counters(r.c)["locked_mac_drop"] == 1


def _dhcp_frame():
    body = bytes([1, 1, 6, 0]) + bytes(232) + bytes([99, 130, 83, 99, 53, 1, 1, 255])
    l4 = struct.pack("!HHHH", 68, 67, 8 + len(body), 0) + body
    l3 = F.ipv4(F.UDP, len(l4), src=bytes(4), dst=b"\xff" * 4)
    return F.eth(F.ETH_P_IP) + l3 + l4


def test_tx_dhcp_divert(tx):
    r = tx(flags=lib.TXF_ENABLED | lib.TXF_DHCP_DIVERT)
    d = _dhcp_frame()
    other = F.build(4, F.UDP, b"x" * 10, csum="full").data
    r.tx_send(vnet(), other)
    r.tx_send(vnet(), d, (100,))
    r.tx_send(vnet(), other)
    os.eventfd_write(r.kick, 1)
    rc = lib.tx_run(r.c, r.ctl.fileno())
    assert rc == lib.DP_DIVERT
    assert bytes(ffi.buffer(r.c.divert, r.c.divert_len)) == d
    r.run(kick=False)
    assert [g[12:] for g in r.recv_all()] == [other, other]
    assert counters(r.c)["dhcp_diverted"] == 1
    assert len(r.ring.get_used()) == 3


INET6 = lib.TXF_ENABLED | lib.TXF_INET6
LOCKED6 = lib.TXF_ENABLED | lib.TXF_LOCKED_IP6
FILTERS = lib.TXF_ENABLED | lib.TXF_INET6 | lib.TXF_LOCKED_IP6 | lib.TXF_DHCP_DIVERT


@pytest.mark.parametrize("kind,n_exts,flags,counter", [
    ("ra", 1, INET6, "v6_router_drop"),
    ("ra", 9, INET6, "v6_unparsed_drop"),
    ("dhcp6_reply", 1, INET6, "v6_router_drop"),
    ("dhcp6_reply", 9, INET6, "v6_unparsed_drop"),
    ("ra", 9, LOCKED6, "v6_unparsed_drop"),
])
def test_tx_ipv6_filter_refuses_headers_it_cannot_parse(tx, kind, n_exts, flags, counter):
    """A router message behind more extension headers than frame_parse()
    walks (8) was not recognised and reached the tap; now an IPv6 frame
    whose headers do not parse is refused wherever an IPv6 filter applies
    (locked: even from the guest's own address), and frames that parse
    still pass."""
    r = tx(flags=flags)
    r.c.locked_ip6[0] = list(F.SRC6)
    ok = F.build(6, F.TCP, b"x" * 40)
    r.tx_send(vnet(), F.router_message(kind, n_exts))
    r.tx_send(ok.vnet_hdr(), ok.data)
    r.run()
    assert [g[12:] for g in r.recv_all()] == [ok.data]
    cnt = counters(r.c)
    assert cnt[counter] == 1 and cnt["frames"] == 1
    assert len(r.ring.get_used()) == 2


@pytest.mark.parametrize("sw_csum", [0, lib.TXF_SW_CSUM], ids=["kernel_csum", "sw_csum"])
@pytest.mark.parametrize("make,flags", [(F.echo_becoming_ra, INET6),
                                        (F.udp_becoming_dhcp, lib.TXF_ENABLED | lib.TXF_DHCP_DIVERT)],
                         ids=["echo_to_ra", "udp_to_dhcp"])
def test_tx_filters_refuse_a_checksum_that_is_not_the_l4_field(tx, make, flags, sw_csum):
    """The checksum, written by us (TXF_SW_CSUM) or by the kernel, lands
    where the guest says: pointed at the ICMPv6 type or the UDP source port
    it turned a frame the filter passed into one it drops or diverts. Where
    a filter reads the transport header, NEEDS_CSUM must name that
    header's checksum field; other partial frames still pass."""
    r = tx(flags=flags | sw_csum)
    frame, start, off = make()
    ok = F.build(6, F.UDP, b"z" * 30)
    r.tx_send(vnet(F.NEEDS_CSUM, 0, 0, 0, start, off), frame)
    r.tx_send(ok.vnet_hdr(), ok.data)
    r.run()
    got = r.recv_all()
    assert len(got) == 1 and got[0][12 + 54:12 + 56] == ok.data[54:56]
    cnt = counters(r.c)
    assert cnt["csum_field_drop"] == 1 and cnt["frames"] == 1
    assert "dhcp_diverted" not in cnt and "v6_router_drop" not in cnt


@pytest.mark.parametrize("sw_csum", [0, lib.TXF_SW_CSUM], ids=["kernel_csum", "sw_csum"])
def test_tx_filters_pass_partial_checksums_at_the_l4_field(tx, sw_csum):
    """TCP, UDP (both families, one behind an extension header) and ICMPv6
    with NEEDS_CSUM at their own checksum field pass every filter."""
    r = tx(flags=FILTERS | sw_csum)
    r.c.locked_ip6[0] = list(F.SRC6)
    frames = [F.build(v, p, b"p" * 33) for v in (4, 6) for p in (F.TCP, F.UDP)]
    frames.append(F.build(6, F.TCP, b"q" * 20, exts=[(60, 8)]))
    sent = [(f.vnet_hdr(), f.data) for f in frames]
    icmp = bytes([128, 0]) + struct.pack("!H", F.ones_sum(F.pseudo_header(
        6, F.SRC6, F.DST6, 58, 12))) + struct.pack("!HH", 7, 1) + b"ping"
    sent.append((vnet(F.NEEDS_CSUM, 0, 0, 0, 54, 2), F.behind_dest_opts(0, 58, icmp)))
    for h, d in sent:
        r.tx_send(h, d)
    r.run()
    got = r.recv_all()
    assert [g[12:26] for g in got] == [d[:14] for _, d in sent]
    assert "csum_field_drop" not in counters(r.c)
    if sw_csum:
        assert l4_csum_ok(got[-1][12:], 6, 54, 58)


def test_tx_event_idx_offers_avail_event(tx):
    r = tx(event_idx=True)
    f = F.build(4, F.UDP, b"x" * 10, csum="full")
    for _ in range(5):
        r.tx_send(vnet(), f.data)
    r.ring.set_used_event(100)                       # the guest wants no call yet
    r.run()
    assert len(r.recv_all()) == 5
    assert eventfd_count(r.call) == 1                # first notification is unconditional
    assert r.ring.avail_event == r.ring.avail_idx    # kick me at the next one
    r.tx_send(vnet(), f.data)
    r.run()
    assert eventfd_count(r.call) == 0                # used_event 100 not reached


# ---- RX ---------------------------------------------------------------------

RX_FEATS = VERSION_1 | F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6


def test_rx_small_frames_non_mergeable(rx):
    r = rx(features=RX_FEATS)
    r.c.frame_max = 1518
    heads = r.rx_post([12, 1518], count=8)
    fs = [F.build(4, F.UDP, bytes([i]) * (60 + 100 * i), csum="full") for i in range(3)]
    for f in fs:
        r.peer.send(vnet(F.DATA_VALID) + f.data)
    r.run(kick=False)
    got = r.rx_frames()
    assert [g[1] for g in got] == [f.data for f in fs]
    assert all(h["num_buffers"] == 1 and h["flags"] == F.DATA_VALID for h, _, _ in got)
    assert eventfd_count(r.call) == 1
    assert lib.vq_pending(r.q) == 5                 # the unused chains stay posted
    cnt = counters(r.c)
    assert cnt["frames"] == 3 and heads


def test_rx_gso_frame_mergeable(rx):
    r = rx(features=RX_FEATS | F_MRG)
    r.rx_post([4096], count=40)
    f = F.build(4, F.TCP, bytes(i & 0xFF for i in range(65000)), gso_size=1448)
    small = F.build(6, F.UDP, b"s" * 100, csum="full")
    r.peer.send(vnet(f.flags, f.gso_type, f.hdrs_len, 1448, f.csum_start, f.csum_offset) + f.data)
    r.peer.send(vnet() + small.data)
    r.run(kick=False)
    got = r.rx_frames()
    assert len(got) == 2
    (h1, d1, n1), (h2, d2, n2) = got
    assert d1 == f.data and n1 == -(-(12 + len(f.data)) // 4096) == h1["num_buffers"]
    assert h1["gso_type"] == F.GSO_TCPV4 and h1["gso_size"] == 1448 and h1["flags"] == 1
    assert d2 == small.data and n2 == 1 and h2["num_buffers"] == 1


def test_rx_frame_larger_than_the_last_batch_spills_and_arrives_whole(rx):
    """After a batch of small frames a frame is read straight into the few
    buffers they took and the rest of what was gathered is a private spill
    buffer: a 64 KiB frame then lands mostly there and is copied into the
    next buffers. The next batch expects 64 KiB and reads it all directly."""
    r = rx(features=RX_FEATS | F_MRG, num=256)
    r.rx_post([1536], count=200)
    small = [F.build(4, F.UDP, bytes([i]) * 200, csum="full") for i in range(3)]
    big = [F.build(4, F.TCP, bytes((i * 7 + k) & 0xFF for i in range(65000)),
                   gso_size=1448) for k in range(2)]

    def send_big(f):
        r.peer.send(vnet(f.flags, f.gso_type, f.hdrs_len, 1448, f.csum_start, f.csum_offset)
                    + f.data)
    for f in small:
        r.peer.send(vnet() + f.data)
    r.run(kick=False)
    send_big(big[0])
    r.peer.send(vnet() + small[0].data)             # after it, in the same batch
    r.run(kick=False)
    assert counters(r.c)["rx_spilled"] == 1
    send_big(big[1])
    r.run(kick=False)
    got = r.rx_frames()
    assert [g[1] for g in got] == [f.data for f in small] + [big[0].data, small[0].data,
                                                             big[1].data]
    nbufs = -(-(12 + len(big[0].data)) // 1536)
    assert [g[2] for g in got] == [1, 1, 1, nbufs, 1, nbufs]
    assert all(g[0]["num_buffers"] == g[2] for g in got)
    cnt = counters(r.c)
    assert cnt["rx_spilled"] == 1 and cnt["frames"] == 6 and "rx_too_big" not in cnt


def test_rx_tiny_buffers_gathered_to_the_arrays_end_keep_every_frame(rx):
    """1023 buffers of 40 bytes are gathered for the largest frame: more
    pieces than one readv() takes, so the frame is read into the first 1022
    and the rest is spill. A completed frame moves the start of the gathered
    chains along their arrays; at the arrays' end the window is moved back
    before each new chain is added. Every frame arrives whole, in order.
    (Before: the frame was read into the header alone and dropped.)"""
    r = rx(features=RX_FEATS | F_MRG, num=2048)
    r.c.batch = 1024                                # one batch for all of them
    r.rx_post([40], count=2048)
    frames = [F.build(4, F.UDP, bytes([i]) * 20, csum="full") for i in range(100)]
    for f in frames:
        r.peer.send(vnet() + f.data)
    r.run(kick=False)
    got = r.rx_frames()
    assert [g[1] for g in got] == [f.data for f in frames]
    assert [g[2] for g in got] == [2] * 100         # 12 + 62 bytes in 40-byte buffers
    assert counters(r.c)["frames"] == 100
    assert {"rx_bad_hdr", "rx_bounced", "rx_spilled"}.isdisjoint(counters(r.c))


def test_rx_frame_beyond_the_spill_is_dropped_and_counted(rx):
    """What was gathered (for frame_max) is the limit with a spill buffer
    too: a longer frame reaches the last byte of the spill, is dropped and
    counted, and the next one is delivered."""
    r = rx(features=RX_FEATS | F_MRG)
    r.c.frame_max = 3000                            # two 1536-byte buffers
    r.rx_post([1536], count=20)
    small = F.build(4, F.UDP, b"s" * 100, csum="full")
    r.peer.send(vnet() + small.data)
    r.run(kick=False)                               # the next batch expects one buffer
    r.peer.send(vnet() + F.build(4, F.UDP, b"L" * 3100, csum="full").data)
    r.peer.send(vnet() + small.data)
    r.run(kick=False)
    got = r.rx_frames()
    assert [g[1] for g in got] == [small.data, small.data]
    cnt = counters(r.c)
    assert cnt["rx_too_big"] == 1 and "rx_spilled" not in cnt


def test_rx_gso_frame_big_chain_non_mergeable(rx):
    r = rx(features=RX_FEATS)
    r.rx_post([12] + [4096] * 17, count=2)          # Linux "big packets" chains
    f = F.build(6, F.TCP, b"z" * 65000, gso_size=1400)
    r.peer.send(f.vnet_hdr() + f.data)
    r.run(kick=False)
    got = r.rx_frames()
    assert len(got) == 1 and got[0][1] == f.data and got[0][0]["num_buffers"] == 1
    assert got[0][0]["gso_type"] == F.GSO_TCPV6


@pytest.mark.parametrize("event_idx", [False, True])
def test_rx_backpressure_no_loss(rx, event_idx):
    r = rx(features=RX_FEATS | F_MRG, event_idx=event_idx)
    r.rx_post([4096], count=5)                      # 20 KiB: not enough for 64K
    big = F.build(4, F.TCP, b"B" * 60000, gso_size=1448)
    small = F.build(4, F.UDP, b"s" * 64, csum="full")
    r.peer.send(big.vnet_hdr() + big.data)
    r.peer.send(vnet() + small.data)
    r.run(kick=False)
    assert r.rx_frames() == []
    assert r.c.cnt[lib.DC_RX_NO_BUFFERS] >= 1
    if event_idx:                                   # the next buffer added kicks
        assert r.ring.avail_event == r.ring.avail_idx
    else:
        assert r.ring.used_flags == 0               # asks for a kick
    assert lib.vq_pending(r.q) == 5                 # chains handed back
    # 60 KiB: short of 12 + 64K, the most the tap could deliver, but enough
    # for this frame: it was read into the private buffer and fits now.
    r.rx_post([4096], count=10)
    r.run(kick=True)
    got = r.rx_frames()
    assert [g[1] for g in got] == [big.data]       # it took all 15 buffers
    r.rx_post([4096], count=2)
    r.run(kick=True)
    got += r.rx_frames()
    assert [g[1] for g in got] == [big.data, small.data]
    assert got[0][2] == -(-(12 + len(big.data)) // 4096)
    assert r.c.cnt[lib.DC_RX_BOUNCED] >= 1


def test_rx_csum_completed_for_guest_without_guest_csum(rx):
    r = rx(features=VERSION_1)
    r.c.frame_max = 1518
    r.rx_post([1530], count=4)
    f = F.build(4, F.UDP, b"p" * 501)
    r.peer.send(f.vnet_hdr() + f.data)
    r.peer.send(vnet(F.DATA_VALID) + F.build(4, F.UDP, b"q", csum="full").data)
    r.run(kick=False)
    (h, d, _), (h2, _, _) = r.rx_frames()
    assert h["flags"] == 0 and h["csum_start"] == 0 and h2["flags"] == 0
    assert l4_csum_ok(d, 4, f.l4_off, F.UDP)
    assert counters(r.c)["sw_csum"] == 1


def test_rx_csum_policy_software(rx):
    r = rx(features=RX_FEATS, flags=lib.RXF_ENABLED | lib.RXF_SW_CSUM)
    r.rx_post([12, 70000], count=2)
    f = F.build(6, F.TCP, b"p" * 3000)
    r.peer.send(f.vnet_hdr() + f.data)
    r.run(kick=False)
    ((h, d, _),) = r.rx_frames()
    assert h["flags"] == F.DATA_VALID and l4_csum_ok(d, 6, f.l4_off, F.TCP)


def test_rx_partial_csum_passed_to_capable_guest(rx):
    r = rx(features=RX_FEATS)
    r.rx_post([12, 70000], count=1)
    f = F.build(4, F.TCP, b"p" * 3000)
    r.peer.send(f.vnet_hdr() + f.data)
    r.run(kick=False)
    ((h, d, _),) = r.rx_frames()
    assert h["flags"] == F.NEEDS_CSUM and h["csum_start"] == f.csum_start and d == f.data


def test_rx_gso_unnegotiated_dropped(rx):
    r = rx(features=VERSION_1 | F_GUEST_CSUM | F_MRG)
    r.rx_post([4096], count=20)
    f = F.build(4, F.TCP, b"B" * 6000, gso_size=1448)
    ok = F.build(4, F.UDP, b"k" * 10, csum="full")
    r.peer.send(f.vnet_hdr() + f.data)
    r.peer.send(vnet() + ok.data)
    r.run(kick=False)
    assert [g[1] for g in r.rx_frames()] == [ok.data]
    assert counters(r.c)["rx_bad_hdr"] == 1


def test_rx_read_only_chain_refused(rx):
    r = rx(features=RX_FEATS | F_MRG)
    bad = r.ring.add_chain([r.ring.alloc_buffer(4096)])     # read-only
    r.rx_post([4096], count=20)
    ok = F.build(4, F.UDP, b"k" * 10, csum="full")
    r.peer.send(vnet() + ok.data)
    r.run(kick=False)
    used = r.ring.get_used()
    assert used[0] == (bad, 0)
    assert counters(r.c)["ring_read_on_rx"] == 1
    h, length = used[1]
    assert r.rx_read(h, length)[12:] == ok.data


def test_rx_bad_chain_mid_gather(rx):
    r = rx(features=RX_FEATS | F_MRG)
    r.rx_post([4096], count=3)
    bad = r.ring.add_chain([r.ring.alloc_buffer(4096)])     # read-only, 4th
    r.rx_post([4096], count=20)
    ok = F.build(4, F.UDP, b"k" * 10, csum="full")
    r.peer.send(vnet() + ok.data)
    r.run(kick=False)
    used = r.ring.get_used()
    assert (bad, 0) in used
    assert counters(r.c)["rx_abandoned"] == 3
    frames = [(h, n) for h, n in used if n]
    assert len(frames) == 1 and r.rx_read(*frames[0])[12:] == ok.data
    assert len(used) == 5                                    # 3 abandoned, bad, frame


def test_rx_inject(rx):
    r = rx(features=RX_FEATS | F_MRG)
    assert lib.rx_inject(r.c, b"x" * 100, 100) == -1        # no buffers yet
    r.rx_post([64], count=4)
    frame = bytes(range(200))
    assert lib.rx_inject(r.c, frame, len(frame)) == 0
    ((h, d, n),) = r.rx_frames()
    assert d == frame and n == h["num_buffers"] == 4 and h["flags"] == 0
    assert eventfd_count(r.call) == 1
    cnt = counters(r.c)
    assert cnt["rx_injected"] == 1 and cnt["rx_inject_nobuf"] == 1


def test_rx_disabled_does_not_read(rx):
    r = rx(features=RX_FEATS, flags=0)
    r.rx_post([12, 2000], count=2)
    r.peer.send(vnet() + F.build(4, F.UDP, b"k", csum="full").data)
    r.run(kick=False)
    assert r.ring.get_used() == []
    r.c.flags = lib.RXF_ENABLED
    r.run(kick=False)
    assert len(r.rx_frames()) == 1


# ---- hostile headers and frames through every TX mode -------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(hdr=st.tuples(st.integers(0, 3), st.sampled_from([0, 1, 3, 4, 5, 0x81, 0x85, 7]),
                     st.integers(0, 0xFFFF), st.integers(0, 0xFFFF) | st.integers(1, 2000),
                     st.integers(0, 0xFFFF) | st.integers(0, 80),
                     st.integers(0, 0xFFFF) | st.sampled_from([6, 16])),
       base=st.sampled_from([(4, F.TCP), (6, F.TCP), (4, F.UDP), (6, F.UDP)]),
       size=st.integers(0, 9000),
       flips=st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=4),
       mode=st.sampled_from([0, lib.TXF_SW_CSUM, lib.TXF_SW_GSO | lib.TXF_SW_CSUM]))
def test_tx_hostile_frames_never_crash(hdr, base, size, flips, mode):
    r = Rig("tx", num=8, memsize=1 << 20, flags=lib.TXF_ENABLED | mode)
    try:
        f = F.build(base[0], base[1], b"p" * size)
        data = bytearray(f.data)
        for off, val in flips:
            if off < len(data):
                data[off] = val
        flags, gso, hl, gs, cs, co = hdr
        head = r.tx_send(vnet(flags, gso, hl, gs, cs, co), bytes(data), (40,))
        r.run()
        got = r.recv_all()
        assert r.ring.get_used() == [(head, 0)]
        cnt = r.c.cnt
        if cnt[lib.DC_FRAMES] == 0:
            assert got == []
        for g in got:
            assert len(g) >= 12 + 14
            if mode and unvnet(g)["flags"] == 0 and unvnet(g)["gso_type"] == 0:
                assert len(g) - 12 <= lib.FRAME_MAX
    finally:
        r.close()


def test_rx_frame_too_big_for_chain_dropped(rx):
    r = rx(features=RX_FEATS)
    r.c.frame_max = 1518
    r.rx_post([12, 1518], count=2)
    exact = F.build(4, F.UDP, b"e" * (1518 - 42), csum="full").data   # fills the chain
    big = F.build(4, F.UDP, b"b" * 3000, csum="full").data
    for d in (big, exact):
        r.peer.send(vnet() + d)
    r.run(kick=False)
    assert [g[1] for g in r.rx_frames()] == [exact]
    assert counters(r.c)["rx_too_big"] == 1
    assert lib.vq_pending(r.q) == 1                 # the chain big did not use is back


def test_tx_sw_gso_tap_full_mid_segments(tx):
    r = tx(flags=lib.TXF_ENABLED | lib.TXF_SW_GSO)
    r.tap.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = bytes((i * 13) & 0xFF for i in range(1448 * 20))
    f = F.build(4, F.TCP, payload, gso_size=1448)
    head = r.tx_send(f.vnet_hdr(), f.data, (f.hdrs_len,))
    r.run()
    assert r.c.cnt[lib.DC_TAP_FULL] >= 1 and r.c.seg_count > 0
    assert r.ring.get_used() == [(head, 0)]         # the chain is already complete
    got = r.recv_all()
    for _ in range(100):
        if len(got) == 20:
            break
        r.run(kick=False)
        got += r.recv_all()
    assert b"".join(g[12 + f.hdrs_len:] for g in got) == payload
    assert r.c.cnt[lib.DC_SEGMENTS_OUT] == 20


def test_tx_reset_drops_pending_segments(tx):
    r = tx(flags=lib.TXF_ENABLED | lib.TXF_SW_GSO)
    r.tap.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    f = F.build(4, F.TCP, b"x" * (1448 * 20), gso_size=1448)
    r.tx_send(f.vnet_hdr(), f.data)
    r.run()
    left = r.c.seg_count - r.c.seg_next
    assert left > 0
    before = r.c.cnt[lib.DC_TAP_ERROR]
    lib.tx_reset(r.c)
    assert r.c.seg_count == 0 and r.c.waiting_out == 0
    assert r.c.cnt[lib.DC_TAP_ERROR] == before + left


@pytest.mark.parametrize("kind", ["tx", "rx"])
def test_bad_kick_fd_reported_not_spun(tx, rx, kind):
    r = (tx if kind == "tx" else rx)()
    dead = eventfd()
    os.close(dead)                       # an fd number nothing owns (POLLNVAL)
    r.c.kick_fd = dead
    fn = lib.tx_run if kind == "tx" else lib.rx_run
    assert fn(r.c, r.ctl.fileno()) == lib.DP_FD_ERROR


# ---- the worker's Datapath (vionetd/datapath.py) ------------------------------

@pytest.mark.parametrize("base, expected", [(10, 10), (4, 10), (65530, 10), (20, 20)])
def test_a_vmm_base_behind_the_used_index_is_not_taken_again(base, expected):
    """The used index is 10 in guest memory. A VMM that read it while an
    old device still completed chains gives an older base (4, or 65530
    across the wrap): taking chains from there would complete them a second
    time, so the ring starts at the used index and says so. A base at or
    ahead of it (chains taken, not completed) is the VMM's to give."""
    from vionetd import vionetd_pb2 as pb
    from vionetd.datapath import Datapath
    with GuestMemory(1 << 20) as mem:
        ring = SplitRing(mem, 64, start=10)
        dp = Datapath(rx=True)
        dp.set_memory([pb.Region(guest_addr=mem.gpa, size=mem.size, user_addr=mem.uva)],
                      [os.dup(mem.fd)])
        dp.start_ring(pb.RingStart(num=64, desc_user_addr=ring.desc_uva,
                                   avail_user_addr=ring.avail_uva,
                                   used_user_addr=ring.used_uva, base=base),
                      eventfd(), None)
        assert dp.stop_ring() == expected
        assert dict(dp.counters()).get("base_behind_used", 0) == (base != expected)
