"""frame_parse(): offsets for the shapes we support, and each error."""
import struct

import pytest

from tests.frames import (ETH_P_8021Q, TCP, UDP, build, c_parse, eth, ipv4, ipv6,
                          patch, tcp, udp)
from vionetd._core import lib


@pytest.mark.parametrize("version,proto,vlan,ip_opts,exts,tcp_opts", [
    (4, TCP, None, 0, (), 0),
    (4, TCP, 7, 10, (), 10),
    (4, UDP, None, 3, (), 0),
    (6, TCP, None, 0, (), 3),
    (6, UDP, 100, 0, [(0, 8), (43, 8), (60, 24)], 0),
    (6, TCP, None, 0, [(60, 16)], 10),
])
def test_offsets(version, proto, vlan, ip_opts, exts, tcp_opts):
    f = build(version, proto, b"p" * 33, vlan=vlan, ip_opts=ip_opts, exts=exts,
              tcp_opts=tcp_opts)
    r, fi = c_parse(f.data)
    assert r == lib.PARSE_OK
    assert (fi.l3_off, fi.l4_off, fi.hdrs_len) == (f.l3_off, f.l4_off, f.hdrs_len)
    assert fi.l4_len == f.hdrs_len - f.l4_off
    assert fi.vlan == (vlan is not None)
    assert fi.ip_version == version and fi.l4_proto == proto and not fi.fragment
    assert fi.ip_end == len(f.data)
    assert fi.ethertype == (0x0800 if version == 4 else 0x86DD)


def test_not_ip_and_double_tag():
    r, fi = c_parse(eth(0x0806) + bytes(28))
    assert r == lib.PARSE_OK and fi.ip_version == 0 and fi.ethertype == 0x0806
    qinq = eth(ETH_P_8021Q, vlan=5) + struct.pack("!HH", 6, 0x0800) + build().data[14:]
    r, fi = c_parse(qinq)
    assert r == lib.PARSE_OK and fi.ip_version == 0 and fi.ethertype == ETH_P_8021Q


def test_fragments():
    v4 = eth(0x0800) + ipv4(UDP, 16, df=False, frag=0x2000) + udp(16) + bytes(8)
    r, fi = c_parse(v4)
    assert r == lib.PARSE_OK and fi.fragment and fi.l4_off == 0
    v6 = eth(0x86DD) + ipv6(UDP, 16, exts=[(0, 8), (44, 8)]) + udp(16) + bytes(8)
    r, fi = c_parse(v6)
    assert r == lib.PARSE_OK and fi.fragment and fi.l4_proto == UDP and fi.l4_off == 0


def test_errors():
    f = build(4, TCP, b"x" * 10)
    assert c_parse(f.data[:13])[0] == lib.PARSE_SHORT
    assert c_parse(f.data, head_len=f.hdrs_len - 1)[0] == lib.PARSE_SHORT
    assert c_parse(patch(f.data, 14, b"\x44"))[0] == lib.PARSE_BAD_IP      # IHL 4
    assert c_parse(patch(f.data, 14, b"\x65"))[0] == lib.PARSE_BAD_IP      # version 6
    assert c_parse(patch(f.data, 16, b"\x00\x13"))[0] == lib.PARSE_BAD_IP  # tot_len < IHL
    assert c_parse(patch(f.data, 16, b"\x00\x20"))[0] == lib.PARSE_BAD_IP  # TCP past tot_len
    assert c_parse(patch(f.data, f.l4_off + 12, b"\x40"))[0] == lib.PARSE_BAD_L4
    # nine extension headers, or headers ending past HEAD_MAX
    deep = eth(0x86DD) + ipv6(TCP, 20, exts=[(60, 8)] * 9) + tcp()
    assert c_parse(deep)[0] == lib.PARSE_TOO_DEEP
    far = build(6, TCP, b"x" * 400, exts=[(0, 208)], tcp_opts=0)
    assert far.hdrs_len > 256
    assert c_parse(far.data, head_len=len(far.data))[0] == lib.PARSE_TOO_DEEP


def test_never_reads_past_head():
    """Every prefix of a valid frame either parses to the same headers or is short."""
    f = build(6, TCP, b"x" * 20, vlan=3, exts=[(0, 8), (43, 8)], tcp_opts=3)
    for n in range(len(f.data) + 1):
        r, fi = c_parse(f.data[:n], head_len=n, frame_len=len(f.data))
        if n >= f.hdrs_len:
            assert r == lib.PARSE_OK and fi.hdrs_len == f.hdrs_len
        else:
            assert r == lib.PARSE_SHORT
