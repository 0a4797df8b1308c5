"""vnet_validate(): one row per refusal reason (every reason must have one),
each refused with its own reason, and headers Linux guests send accepted."""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from tests.frames import (ALL_HOST, DATA_VALID, F_CSUM, F_HOST_ECN, F_HOST_TSO4,
                          F_HOST_TSO6, F_HOST_UFO, F_HOST_USO, GSO_ECN, GSO_TCPV4,
                          GSO_TCPV6, GSO_UDP, GSO_UDP_L4, NEEDS_CSUM, TCP, UDP,
                          build, c_validate, eth, patch, v6_length_past_unparsed_exts,
                          with_fields)
from vionetd._core import lib
from vionetd.core import reason_name

T4 = build(4, TCP, b"a" * 3000, gso_size=1448)
T6 = build(6, TCP, b"b" * 3000, exts=[(0, 8)], gso_size=1428)
U4 = build(4, UDP, b"c" * 3000, gso_size=1400)
U6 = build(6, UDP, b"d" * 3000, gso_size=1400)
P4 = build(4, TCP, b"e" * 100)            # NEEDS_CSUM only
P6 = build(6, UDP, b"f" * 100, vlan=9)
N4 = build(4, TCP, b"g" * 100, csum="full")

GOOD = [
    ("plain", N4, ALL_HOST),
    ("plain_no_features", N4, 0),
    ("data_valid", with_fields(N4, flags=DATA_VALID), 0),
    ("csum_v4", P4, F_CSUM),
    ("csum_v6_vlan", P6, F_CSUM),
    ("tso4", T4, F_CSUM | F_HOST_TSO4),
    ("tso6_ext", T6, F_CSUM | F_HOST_TSO6),
    ("tso4_ecn", with_fields(T4, gso_type=GSO_TCPV4 | GSO_ECN), F_CSUM | F_HOST_TSO4 | F_HOST_ECN),
    ("uso4", U4, F_CSUM | F_HOST_USO),
    ("uso6", U6, F_CSUM | F_HOST_USO),
    ("gso_one_segment", build(4, TCP, b"x" * 100, gso_size=1448), ALL_HOST),
    ("gso_no_payload", build(6, TCP, b"", gso_size=1448), ALL_HOST),
    ("uso_max_segments", build(4, UDP, b"x" * 1280, gso_size=10), ALL_HOST),
    ("padded_short", with_fields(N4, data=build(4, UDP, b"", csum="full").data + bytes(18)), 0),
    ("not_ip", with_fields(N4, data=eth(0x0806) + bytes(46)), 0),
    ("hdr_len_frame", with_fields(T4, hdr_len=len(T4.data)), ALL_HOST),
]

# (name, frame, features, reason)
BAD = [
    ("short", with_fields(N4, data=N4.data[:13]), ALL_HOST, lib.VR_FRAME_SHORT),
    ("long", with_fields(N4, data=bytes(lib.FRAME_MAX + 1)), ALL_HOST, lib.VR_FRAME_LONG),
    ("flag_rsc", with_fields(N4, flags=4), ALL_HOST, lib.VR_FLAGS_UNKNOWN),
    ("flag_high", with_fields(P4, flags=NEEDS_CSUM | 0x80), ALL_HOST, lib.VR_FLAGS_UNKNOWN),
    ("csum_unneg", P4, ALL_HOST & ~F_CSUM, lib.VR_CSUM_UNNEGOTIATED),
    ("gso_type_2", with_fields(T4, gso_type=2), ALL_HOST, lib.VR_GSO_UNKNOWN),
    ("gso_type_ecn_6", with_fields(T4, gso_type=6 | GSO_ECN), ALL_HOST, lib.VR_GSO_UNKNOWN),
    ("ufo_negotiated", with_fields(U4, gso_type=GSO_UDP), ALL_HOST | F_HOST_UFO, lib.VR_GSO_UNKNOWN),
    ("tso4_unneg", T4, ALL_HOST & ~F_HOST_TSO4, lib.VR_GSO_UNNEGOTIATED),
    ("tso6_unneg", T6, ALL_HOST & ~F_HOST_TSO6, lib.VR_GSO_UNNEGOTIATED),
    ("uso_unneg", U4, ALL_HOST & ~F_HOST_USO, lib.VR_GSO_UNNEGOTIATED),
    ("ufo_unneg", with_fields(U4, gso_type=GSO_UDP), ALL_HOST, lib.VR_GSO_UNNEGOTIATED),
    ("ecn_unneg", with_fields(T4, gso_type=GSO_TCPV4 | GSO_ECN), ALL_HOST & ~F_HOST_ECN,
     lib.VR_ECN_UNNEGOTIATED),
    ("ecn_uso", with_fields(U4, gso_type=GSO_UDP_L4 | GSO_ECN), ALL_HOST, lib.VR_ECN_NOT_TCP),
    ("ecn_alone", with_fields(P4, gso_type=GSO_ECN), ALL_HOST, lib.VR_ECN_NOT_TCP),
    ("gso_no_csum", with_fields(T4, flags=0), ALL_HOST, lib.VR_GSO_NO_CSUM),
    ("gso_size_0", with_fields(T4, gso_size=0), ALL_HOST, lib.VR_GSO_SIZE_ZERO),
    ("gso_by_frags", with_fields(T4, gso_size=0xFFFF), ALL_HOST, lib.VR_GSO_SIZE_BY_FRAGS),
    ("csum_start_end", with_fields(P4, csum_start=len(P4.data) - 1), ALL_HOST,
     lib.VR_CSUM_START_RANGE),
    ("csum_start_head_max", with_fields(P4, data=P4.data + bytes(400), csum_start=300),
     ALL_HOST, lib.VR_CSUM_START_RANGE),
    ("csum_offset_end", with_fields(P4, csum_offset=len(P4.data) - P4.l4_off - 1), ALL_HOST,
     lib.VR_CSUM_OFFSET_RANGE),
    ("csum_offset_head_max", with_fields(P4, csum_offset=230), ALL_HOST,
     lib.VR_CSUM_OFFSET_RANGE),
    ("tcp_gso_thlen", with_fields(T4, data=T4.data[:T4.l4_off + 19], hdr_len=0),
     ALL_HOST, lib.VR_CSUM_OFFSET_RANGE),
    ("csum_start_linux_min", with_fields(P4, csum_start=20, csum_offset=16), ALL_HOST,
     lib.VR_CSUM_START_LOW),
    ("csum_start_v6_low", with_fields(P6, csum_start=18 + 39), ALL_HOST, lib.VR_CSUM_START_LOW),
    ("tso6_start_v4", with_fields(T4, gso_type=GSO_TCPV6), ALL_HOST, lib.VR_CSUM_START_LOW),
    ("hdr_len", with_fields(T4, hdr_len=len(T4.data) + 1), ALL_HOST, lib.VR_HDR_LEN),
    ("gso_ihl_4", with_fields(T4, data=patch(T4.data, 14, b"\x44")), ALL_HOST, lib.VR_PARSE),
    ("gso_doff_4", with_fields(T4, data=patch(T4.data, T4.l4_off + 12, b"\x40")), ALL_HOST,
     lib.VR_PARSE),
    ("gso_not_ip", with_fields(T4, data=patch(T4.data, 12, b"\x88\xb5")), ALL_HOST,
     lib.VR_GSO_NOT_IP),
    ("tso4_on_v6", with_fields(T6, gso_type=GSO_TCPV4), ALL_HOST, lib.VR_GSO_PROTO),
    ("uso_on_tcp", with_fields(T4, gso_type=GSO_UDP_L4, csum_offset=6), ALL_HOST,
     lib.VR_GSO_PROTO),
    ("tso_on_udp", with_fields(U4, gso_type=GSO_TCPV4, csum_offset=16), ALL_HOST,
     lib.VR_GSO_PROTO),
    ("gso_v4_mf", with_fields(T4, data=patch(T4.data, 20, b"\x20\x00")), ALL_HOST,
     lib.VR_GSO_FRAGMENT),
    ("gso_csum_start", with_fields(T4, csum_start=T4.l4_off + 4), ALL_HOST,
     lib.VR_GSO_CSUM_START),
    ("tcp_csum_offset", with_fields(T4, csum_offset=6), ALL_HOST, lib.VR_TCP_CSUM_OFFSET),
    ("udp_csum_offset", with_fields(U4, csum_offset=16), ALL_HOST, lib.VR_UDP_CSUM_OFFSET),
    ("uso_segments", build(4, UDP, b"x" * 1281, gso_size=10), ALL_HOST, lib.VR_USO_SEGMENTS),
    ("gso_tot_len_short", with_fields(T4, data=patch(T4.data, 16, struct.pack(
        "!H", len(T4.data) - 14 - 1))), ALL_HOST, lib.VR_GSO_IP_LENGTH),
    ("gso_plen_long", with_fields(T6, data=patch(T6.data, 18, struct.pack(
        "!H", len(T6.data) - 54 + 1))), ALL_HOST, lib.VR_GSO_IP_LENGTH),
    ("uso_udp_len", with_fields(U4, data=patch(U4.data, U4.l4_off + 4, b"\x00\x09")),
     ALL_HOST, lib.VR_GSO_IP_LENGTH),
    ("truncated_ip", with_fields(N4, data=N4.data[:-1]), ALL_HOST, lib.VR_GSO_IP_LENGTH),
    # The IP length is judged once the IP header is read, whether or not the
    # extension headers after it parse (fuzz_tx: a software checksum written
    # over a next-header byte made such a frame parse after validation).
    ("ip_length_exts_unparsed", with_fields(N4, data=v6_length_past_unparsed_exts()),
     ALL_HOST, lib.VR_GSO_IP_LENGTH),
    ("ip_length_exts_unparsed_csum", with_fields(
        N4, data=v6_length_past_unparsed_exts(), flags=NEEDS_CSUM, csum_start=55,
        csum_offset=6), ALL_HOST, lib.VR_GSO_IP_LENGTH),
]


@pytest.mark.parametrize("name,f,features", GOOD, ids=[g[0] for g in GOOD])
def test_good(name, f, features):
    r, fi = c_validate(f, features)
    assert r == lib.VR_OK, reason_name(r)
    if f.gso_type:
        assert (fi.l4_off, fi.hdrs_len) == (f.l4_off, f.hdrs_len)


@pytest.mark.parametrize("name,f,features,reason", BAD, ids=[b[0] for b in BAD])
def test_bad(name, f, features, reason):
    r, _ = c_validate(f, features)
    assert reason_name(r) == reason_name(reason)


def test_every_reason_has_a_row():
    covered = {row[3] for row in BAD}
    missing = [reason_name(r) for r in range(1, lib.VR_REASON_MAX) if r not in covered]
    assert not missing, missing


def test_reason_names():
    names = [reason_name(r) for r in range(lib.VR_REASON_MAX)]
    assert len(set(names)) == lib.VR_REASON_MAX and "unknown" not in names
    assert reason_name(lib.VR_REASON_MAX) == "unknown" and reason_name(-1) == "unknown"


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=0, max_size=300), st.integers(0, 255), st.integers(0, 255),
       st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 300),
       st.integers(0, 300))
def test_garbage_never_crashes(data, flags, gso_type, hdr_len, gso_size, start, off):
    """Random bytes and fields: a defined answer, and OK only when the rules hold."""
    f = with_fields(N4, data=data, flags=flags, gso_type=gso_type, hdr_len=hdr_len,
                    gso_size=gso_size, csum_start=start, csum_offset=off)
    r, _ = c_validate(f, ALL_HOST)
    assert 0 <= r < lib.VR_REASON_MAX
    if r == lib.VR_OK and flags & NEEDS_CSUM:
        assert start + off + 2 <= len(data)
    if r == lib.VR_OK and gso_type:
        assert flags & NEEDS_CSUM and gso_size not in (0, 0xFFFF)
