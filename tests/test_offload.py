"""offload.c: NEEDS_CSUM completion, TSO/USO segmentation and receive-side
verification, checked with scapy (parsing) and a pure-Python RFC 1071 (sums).

Segmentation must give what Linux's software GSO gives: per segment IPv4
tot_len/id/header checksum, IPv6 payload_len, TCP seq, FIN/PSH only on the
last segment, CWR only on the first, UDP datagrams with their own length, every
L4 checksum complete, payloads that concatenate to the input's."""
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scapy.layers.inet import IP, TCP as STCP, UDP as SUDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from tests.frames import (ALL_HOST, TCP, TCP_ACK, TCP_CWR, TCP_ECE, TCP_FIN, TCP_PSH,
                          UDP, build, c_hdr, c_iov, c_validate, eth, inet_csum, ipv4,
                          ones_sum, patch, pseudo_header, split, udp)
from vionetd._core import ffi, lib

MSS = {4: 1460, 6: 1440}


def segment(f, cuts=(), out_cap=None, max_segs=1024, canary=64):
    """Validate f, then gso_segment() it from a scatter list cut at cuts.
    Returns (n, [segment bytes]) and checks nothing is written past out_cap."""
    r, fi = c_validate(f, ALL_HOST)
    assert r == lib.VR_OK, r
    head = ffi.from_buffer("uint8_t[]", f.data[:256])
    pieces = split(f.data, list(cuts))
    iov, keep = c_iov(pieces)
    payload = len(f.data) - f.hdrs_len
    nseg = max(1, -(-payload // f.gso_size))
    cap = nseg * f.hdrs_len + payload if out_cap is None else out_cap
    out = bytearray(cap + canary)
    out[cap:] = b"\xa5" * canary
    lens = ffi.new("uint32_t[]", max_segs or 1)
    n = lib.gso_segment(c_hdr(f), fi, head, iov, len(pieces), len(f.data),
                        ffi.from_buffer("uint8_t[]", out), cap, lens, max_segs)
    assert out[cap:] == b"\xa5" * canary
    segs, pos = [], 0
    for i in range(max(n, 0)):
        segs.append(bytes(out[pos:pos + lens[i]]))
        pos += lens[i]
    return n, segs


def check_segments(f, segs, ecn_cwr=False):
    """Every rule, on raw bytes with the pure-Python sums, and through scapy."""
    orig = f.data
    l3, l4 = f.l3_off, f.l4_off
    tcp = f.proto == TCP
    payload = b""
    for i, s in enumerate(segs):
        last = i == len(segs) - 1
        seg_payload = s[f.hdrs_len:]
        assert len(seg_payload) == (f.gso_size if not last else len(seg_payload))
        assert 0 < len(seg_payload) <= f.gso_size or len(segs) == 1
        payload += seg_payload
        # unchanged bytes: L2, addresses, ports, options
        assert s[:l3] == orig[:l3]
        if f.version == 4:
            ihl = (s[l3] & 15) * 4
            assert struct.unpack_from("!H", s, l3 + 2)[0] == len(s) - l3
            assert struct.unpack_from("!H", s, l3 + 4)[0] == \
                (struct.unpack_from("!H", orig, l3 + 4)[0] + i) & 0xFFFF
            assert inet_csum(s[l3:l3 + ihl]) == 0
            assert s[l3 + 12:l4] == orig[l3 + 12:l4]  # addresses and options
            src, dst = s[l3 + 12:l3 + 16], s[l3 + 16:l3 + 20]
        else:
            assert struct.unpack_from("!H", s, l3 + 4)[0] == len(s) - l3 - 40
            assert s[l3 + 6:l4] == orig[l3 + 6:l4]  # addresses and extension headers
            src, dst = s[l3 + 8:l3 + 24], s[l3 + 24:l3 + 40]
        l4len = len(s) - l4
        assert ones_sum(pseudo_header(f.version, src, dst, f.proto, l4len) + s[l4:]) == 0xFFFF
        if tcp:
            seq0 = struct.unpack_from("!I", orig, l4 + 4)[0]
            assert struct.unpack_from("!I", s, l4 + 4)[0] == (seq0 + i * f.gso_size) & 0xFFFFFFFF
            fl, ofl = s[l4 + 13], orig[l4 + 13]
            assert fl & TCP_FIN == (ofl & TCP_FIN if last else 0)
            assert fl & TCP_PSH == (ofl & TCP_PSH if last else 0)
            assert fl & TCP_CWR == (ofl & TCP_CWR if i == 0 else 0)
            assert fl & ~(TCP_FIN | TCP_PSH | TCP_CWR) == ofl & ~(TCP_FIN | TCP_PSH | TCP_CWR)
            assert s[l4:l4 + 4] == orig[l4:l4 + 4] and s[l4 + 8:l4 + 13] == orig[l4 + 8:l4 + 13]
            assert s[l4 + 14:l4 + 16] == orig[l4 + 14:l4 + 16]        # window
            assert s[l4 + 18:f.hdrs_len] == orig[l4 + 18:f.hdrs_len]  # urgent, options
        else:
            assert struct.unpack_from("!H", s, l4 + 4)[0] == l4len
            assert struct.unpack_from("!H", s, l4 + 6)[0] != 0
            assert s[l4:l4 + 4] == orig[l4:l4 + 4]
        # scapy, independently
        p = Ether(s)
        ipl = p[IP] if f.version == 4 else p[IPv6]
        if f.version == 4:
            assert ipl.len == len(s) - l3
        else:
            assert ipl.plen == len(s) - l3 - 40
        l4p = p[STCP] if tcp else p[SUDP]
        assert bytes(l4p.payload) == seg_payload
        assert lib.rx_csum_verify(ffi.from_buffer("uint8_t[]", s), len(s)) == 1
    assert payload == f.payload


@st.composite
def gso_frames(draw):
    version = draw(st.sampled_from([4, 6]))
    proto = draw(st.sampled_from([TCP, UDP]))
    vlan = draw(st.one_of(st.none(), st.integers(0, 4095)))
    ip_opts = draw(st.integers(0, 10)) if version == 4 else 0
    exts = draw(st.lists(st.tuples(st.sampled_from([0, 43, 60]), st.sampled_from([8, 16, 24])),
                         max_size=3)) if version == 6 else ()
    tcp_opts = draw(st.integers(0, 10)) if proto == TCP else 0
    gso = draw(st.integers(1, MSS[version]))
    nseg = draw(st.integers(1, 40 if proto == TCP else min(40, 128)))
    hdr_room = 80 + 40 + 48 + 8 * 9
    plen = draw(st.integers(0, min(gso * nseg, 65535 - hdr_room)))
    byte = draw(st.integers(0, 255))
    payload = bytes((byte + i * 7) & 0xFF for i in range(plen))
    flags = draw(st.sampled_from([TCP_ACK, TCP_ACK | TCP_PSH, TCP_ACK | TCP_FIN | TCP_PSH,
                                  TCP_ACK | TCP_CWR | TCP_ECE, 0xFF & ~0x02]))
    f = build(version, proto, payload, vlan=vlan, ip_opts=ip_opts, exts=exts,
              tcp_opts=tcp_opts, tcp_flags=flags, gso_size=gso,
              seq=draw(st.integers(0, 2**32 - 1)), ip_id=draw(st.integers(0, 0xFFFF)))
    cuts = draw(st.lists(st.integers(0, len(f.data)), max_size=6))
    return f, cuts


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gso_frames())
def test_segmentation_properties(fc):
    f, cuts = fc
    n, segs = segment(f, cuts)
    assert n == max(1, -(-len(f.payload) // f.gso_size))
    check_segments(f, segs)


@pytest.mark.parametrize("version,proto", [(4, TCP), (6, TCP), (4, UDP), (6, UDP)])
def test_64k_super_frame(version, proto):
    room = 65535 - (20 if version == 4 else 40) - (20 if proto == TCP else 8)
    payload = bytes(i * 31 & 0xFF for i in range(room))
    f = build(version, proto, payload, gso_size=1448, tcp_flags=TCP_ACK | TCP_PSH | TCP_CWR,
              ip_id=0xFFF0, seq=2**32 - 5000)
    n, segs = segment(f, cuts=[1, 77, 1000, 1001, 40000])
    assert n == -(-room // 1448)
    check_segments(f, segs)


def test_udp_zero_checksum_sent_as_ffff():
    # find a payload whose datagram sums to zero; then the field must be 0xffff
    base = build(4, UDP, b"\0\0" * 8, gso_size=16)
    for v in range(0x10000):
        pl = struct.pack("!H", v) + b"\0" * 14
        f = build(4, UDP, pl, gso_size=16)
        ph = pseudo_header(4, f.data[26:30], f.data[30:34], UDP, 24)
        l4 = f.data[f.l4_off:f.l4_off + 6] + b"\0\0" + pl
        if inet_csum(ph + l4) == 0:
            break
    else:
        pytest.skip("no zero-sum payload")
    n, segs = segment(f)
    assert n == 1 and segs[0][f.l4_off + 6:f.l4_off + 8] == b"\xff\xff"
    assert base  # keep linters quiet


def test_too_small_buffers():
    f = build(4, TCP, b"z" * 5000, gso_size=1000)
    need = 5 * f.hdrs_len + 5000
    assert segment(f, out_cap=need - 1)[0] == -1
    assert segment(f, max_segs=4)[0] == -1
    assert segment(f, out_cap=need, max_segs=5)[0] == 5


def test_short_scatter_list_refused():
    f = build(4, TCP, b"z" * 5000, gso_size=1000)
    r, fi = c_validate(f)
    iov, keep = c_iov([f.data[:-1]])
    out = ffi.new("uint8_t[]", 10000)
    lens = ffi.new("uint32_t[]", 16)
    head = ffi.from_buffer("uint8_t[]", f.data[:256])
    assert lib.gso_segment(c_hdr(f), fi, head, iov, 1, len(f.data), out, 10000, lens, 16) == -1


@settings(max_examples=80, deadline=None)
@given(st.sampled_from([4, 6]), st.sampled_from([TCP, UDP]), st.binary(max_size=3000),
       st.lists(st.integers(0, 3200), max_size=5), st.one_of(st.none(), st.integers(0, 4095)))
def test_csum_complete(version, proto, payload, cuts, vlan):
    part = build(version, proto, payload, vlan=vlan)
    full = build(version, proto, payload, vlan=vlan, csum="full")
    buf = bytearray(part.data)
    assert lib.csum_complete(ffi.from_buffer("uint8_t[]", buf), len(buf),
                             part.csum_start, part.csum_offset) == 0
    assert bytes(buf) == full.data
    pieces = split(part.data, cuts)
    iov, keep = c_iov(pieces)
    out = ffi.new("uint16_t *")
    assert lib.csum_complete_iov(iov, len(pieces), len(part.data), part.csum_start,
                                 part.csum_offset, out) == 0
    at = part.csum_start + part.csum_offset
    assert struct.pack("=H", out[0]) == full.data[at:at + 2]
    assert lib.rx_csum_verify(ffi.from_buffer("uint8_t[]", full.data), len(full.data)) == 1


def test_csum_complete_range():
    f = build(4, TCP, b"abc")
    buf = ffi.from_buffer("uint8_t[]", bytearray(f.data))
    assert lib.csum_complete(buf, len(f.data), len(f.data) - 1, 0) == -1
    assert lib.csum_complete(buf, len(f.data), f.l4_off, len(f.data) - f.l4_off - 1) == -1
    iov, keep = c_iov([f.data])
    out = ffi.new("uint16_t *")
    assert lib.csum_complete_iov(iov, 1, len(f.data) + 1, f.l4_off, 16, out) == -1
    assert lib.csum_complete_iov(iov, 1, len(f.data), len(f.data) - 1, 0, out) == -1


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([4, 6]), st.sampled_from([TCP, UDP]),
       st.binary(min_size=1, max_size=1500), st.data())
def test_rx_verify_flip(version, proto, payload, data):
    f = build(version, proto, payload, csum="full", ip_opts=2 if version == 4 else 0,
              exts=[(60, 8)] if version == 6 else ())
    buf = bytearray(f.data)
    assert lib.rx_csum_verify(ffi.from_buffer("uint8_t[]", buf), len(buf)) == 1
    i = data.draw(st.integers(f.hdrs_len, len(buf) - 1))
    bit = data.draw(st.integers(0, 7))
    buf[i] ^= 1 << bit
    assert lib.rx_csum_verify(ffi.from_buffer("uint8_t[]", buf), len(buf)) == 0


def test_rx_verify_cases():
    def v(b):
        return lib.rx_csum_verify(ffi.from_buffer("uint8_t[]", b), len(b))
    f = build(4, TCP, b"hello", csum="full")
    assert v(f.data) == 1
    assert v(patch(f.data, 24, b"\x00\x00")) == 0          # IPv4 header checksum
    assert v(f.data + bytes(20)) == 1                       # Ethernet padding ignored
    assert v(f.data[:-1]) == 0                              # truncated
    assert v(eth(0x0806) + bytes(46)) == -1                 # not IP
    frag = eth(0x0800) + ipv4(UDP, 16, df=False, frag=0x2000) + udp(16) + bytes(8)
    assert v(frag) == -1
    u4 = build(4, UDP, b"x" * 9, csum="zero")
    assert v(u4.data) == 1                                  # no checksum over IPv4
    u6 = build(6, UDP, b"x" * 9, csum="zero")
    assert v(u6.data) == 0                                  # required over IPv6
    icmp = eth(0x0800) + ipv4(1, 8) + bytes(8)
    assert v(icmp) == -1
