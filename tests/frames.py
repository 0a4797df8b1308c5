"""Frame builders for tests: Ethernet (+802.1Q), IPv4 (+options), IPv6 (+extension
headers), TCP (+options), UDP, with the virtio_net_hdr a Linux guest would write.

Built with struct, byte by byte, so a test controls every field; parse the results
with scapy or dpkt to check them independently. The checksum reference here is
a plain RFC 1071 loop over big-endian 16-bit words, independent of the C core.

As Linux guests send them (virtio-net with CSUM/TSO/USO): the L4 checksum field
holds the folded pseudo-header sum (not complemented), NEEDS_CSUM is set with
csum_start at the L4 header and csum_offset 16 (TCP) or 6 (UDP), and a GSO
super-frame's IPv4 tot_len / IPv6 payload_len / UDP length name the whole
super-packet.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
TCP, UDP = 6, 17

NEEDS_CSUM, DATA_VALID = 1, 2
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4, GSO_ECN = 0, 1, 3, 4, 5, 0x80

F_CSUM = 1 << 0
F_HOST_TSO4 = 1 << 11
F_HOST_TSO6 = 1 << 12
F_HOST_ECN = 1 << 13
F_HOST_UFO = 1 << 14
F_HOST_USO = 1 << 56
ALL_HOST = F_CSUM | F_HOST_TSO4 | F_HOST_TSO6 | F_HOST_ECN | F_HOST_USO

SRC_MAC = bytes.fromhex("525400123456")
DST_MAC = bytes.fromhex("525400abcdef")
SRC4, DST4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
SRC6 = bytes.fromhex("fd000000000000000000000000000001")
DST6 = bytes.fromhex("fd000000000000000000000000000002")

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80)


# ---- RFC 1071, the slow obvious way ---------------------------------------

def ones_sum(data: bytes, start: int = 0) -> int:
    """One's complement sum of big-endian 16-bit words, folded, not complemented."""
    if len(data) % 2:
        data = data + b"\0"
    s = start
    for (w,) in struct.iter_unpack("!H", data):
        s += w
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def inet_csum(data: bytes, start: int = 0) -> int:
    """The checksum to store (big-endian number)."""
    return ~ones_sum(data, start) & 0xFFFF


def pseudo_header(version: int, src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if version == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


# ---- headers ----------------------------------------------------------------

def eth(ethertype: int, vlan: int | None = None) -> bytes:
    if vlan is None:
        return DST_MAC + SRC_MAC + struct.pack("!H", ethertype)
    return DST_MAC + SRC_MAC + struct.pack("!HHH", ETH_P_8021Q, vlan, ethertype)


def ipv4(proto: int, l4_len: int, ident: int = 0x1234, options: bytes = b"",
         tos: int = 0, df: bool = True, frag: int = 0, ttl: int = 64,
         src: bytes = SRC4, dst: bytes = DST4, tot_len: int | None = None) -> bytes:
    assert len(options) % 4 == 0 and len(options) <= 40
    ihl = 5 + len(options) // 4
    tot = ihl * 4 + l4_len if tot_len is None else tot_len
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, tot, ident,
                    (0x4000 if df else 0) | frag, ttl, proto, 0, src, dst) + options
    return h[:10] + struct.pack("!H", inet_csum(h)) + h[12:]


def ext_header(next_hdr: int, body_len: int) -> bytes:
    """A hop-by-hop / destination options style header: PadN over body_len bytes.
    The total (2 + body_len) must be a multiple of 8."""
    assert (2 + body_len) % 8 == 0
    hlen = (2 + body_len) // 8 - 1
    body = bytes([1, body_len - 2]) + bytes(body_len - 2)  # one PadN option
    return bytes([next_hdr, hlen]) + body


def routing_header(next_hdr: int) -> bytes:
    """A routing header with segments left 0 (the pseudo-header keeps dst)."""
    return bytes([next_hdr, 0, 253, 0]) + bytes(4)


def fragment_header(next_hdr: int, offset: int = 0, more: bool = True) -> bytes:
    return struct.pack("!BBHI", next_hdr, 0, (offset << 3) | int(more), 0xABCD)


def ipv6(next_hdr: int, payload_len: int, exts: list[tuple[int, int]] = (),
         src: bytes = SRC6, dst: bytes = DST6, tclass: int = 0) -> bytes:
    """exts: (type, size) pairs, type in 0, 43, 60, 44; size for 0/60 a multiple of 8."""
    types = [t for t, _ in exts] + [next_hdr]
    chain = b""
    for (t, size), nxt in zip(exts, types[1:]):
        if t == 43:
            chain += routing_header(nxt)
        elif t == 44:
            chain += fragment_header(nxt)
        else:
            chain += ext_header(nxt, size - 2)
    first = types[0]
    return struct.pack("!IHBB16s16s", 0x60000000 | tclass << 20,
                       len(chain) + payload_len, first, 64, src, dst) + chain


def tcp(seq: int = 1000, ack: int = 2000, flags: int = TCP_ACK | TCP_PSH,
        options: bytes = b"", sport: int = 40000, dport: int = 5201,
        window: int = 502, check: int = 0) -> bytes:
    assert len(options) % 4 == 0 and len(options) <= 40
    doff = 5 + len(options) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, doff << 4,
                       flags, window, check, 0) + options


def udp(length: int, sport: int = 40000, dport: int = 9000, check: int = 0) -> bytes:
    return struct.pack("!HHHH", sport, dport, length, check)


def tcp_options(n_words: int) -> bytes:
    """Plausible options: timestamps first, then NOPs."""
    opts = b""
    if n_words >= 3:
        opts = b"\x01\x01\x08\x0a" + struct.pack("!II", 0x11223344, 0x55667788)
    return opts + b"\x01" * (n_words * 4 - len(opts))


def ip_options(n_words: int) -> bytes:
    """NOP options then an end-of-list byte."""
    if n_words == 0:
        return b""
    return b"\x01" * (n_words * 4 - 1) + b"\x00"


# ---- a whole frame as a guest sends it --------------------------------------

@dataclass
class Frame:
    data: bytes
    version: int
    proto: int
    l3_off: int
    l4_off: int
    hdrs_len: int
    payload: bytes
    flags: int = 0
    gso_type: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0
    hdr_len: int = 0
    num_buffers: int = 0
    meta: dict = field(default_factory=dict)

    def vnet_hdr(self) -> bytes:
        return struct.pack("<BBHHHHH", self.flags, self.gso_type, self.hdr_len,
                           self.gso_size, self.csum_start, self.csum_offset,
                           self.num_buffers)

    def hdr_fields(self) -> dict:
        return dict(flags=self.flags, gso_type=self.gso_type, hdr_len=self.hdr_len,
                    gso_size=self.gso_size, csum_start=self.csum_start,
                    csum_offset=self.csum_offset, num_buffers=self.num_buffers)


def build(version: int = 4, proto: int = TCP, payload: bytes = b"x" * 100,
          vlan: int | None = None, ip_opts: int = 0, exts: list[tuple[int, int]] = (),
          tcp_opts: int = 0, tcp_flags: int = TCP_ACK | TCP_PSH, seq: int = 1000,
          ip_id: int = 0x1234, gso_size: int = 0, ecn: bool = False,
          csum: str = "partial") -> Frame:
    """A frame with its vnet header. csum: "partial" (NEEDS_CSUM, pseudo sum in
    the field, as a guest with CSUM sends), "full" (complete checksum, no flag)
    or "zero" (field 0, no flag). gso_size > 0 makes it a GSO frame of the type
    matching version/proto (NEEDS_CSUM implied)."""
    if proto == TCP:
        l4 = tcp(seq=seq, flags=tcp_flags, options=tcp_options(tcp_opts))
    else:
        l4 = udp(8 + len(payload))
    l4_len = len(l4) + len(payload)
    if version == 4:
        l3 = ipv4(proto, l4_len, ident=ip_id, options=ip_options(ip_opts))
        src, dst = SRC4, DST4
    else:
        l3 = ipv6(proto, l4_len, exts=exts)
        src, dst = SRC6, DST6
    l2 = eth(ETH_P_IP if version == 4 else ETH_P_IPV6, vlan)
    l3_off, l4_off = len(l2), len(l2) + len(l3)
    coff = 16 if proto == TCP else 6
    ph = pseudo_header(version, src, dst, proto, l4_len)
    if csum == "partial" or gso_size:
        check = ones_sum(ph)
        flags = NEEDS_CSUM
    elif csum == "full":
        check = inet_csum(ph + l4 + payload)
        if proto == UDP and check == 0:
            check = 0xFFFF
        flags = 0
    else:
        check, flags = 0, 0
    l4 = l4[:coff] + struct.pack("!H", check) + l4[coff + 2:]
    f = Frame(data=l2 + l3 + l4 + payload, version=version, proto=proto,
              l3_off=l3_off, l4_off=l4_off, hdrs_len=l4_off + len(l4),
              payload=payload, flags=flags)
    if flags & NEEDS_CSUM:
        f.csum_start, f.csum_offset = l4_off, coff
    if gso_size:
        if proto == UDP:
            f.gso_type = GSO_UDP_L4
        else:
            f.gso_type = GSO_TCPV4 if version == 4 else GSO_TCPV6
        if ecn:
            f.gso_type |= GSO_ECN
        f.gso_size = gso_size
        f.hdr_len = f.hdrs_len
    return f


def v6_length_past_unparsed_exts(claimed: int = 1000, total: int = 200) -> bytes:
    """An IPv6 frame of total bytes whose payload length claims claimed bytes
    and whose headers do not parse (nine empty hop-by-hop headers, more than
    frame_parse() walks): the fuzz_tx finding of
    fuzz/corpus/fuzz_tx/crash-v6-length-past-unparsed-exts-sw-csum, rebuilt."""
    data = eth(ETH_P_IPV6) + ipv6(0, claimed)
    return data + bytes(total - len(data))


# ---- frames the IPv6 and DHCP filters must refuse (txpath.c) ------------------

def behind_dest_opts(n: int, proto: int, l4: bytes) -> bytes:
    """An IPv6 frame from SRC6 with l4 behind n 8-byte destination options."""
    return eth(ETH_P_IPV6) + ipv6(proto, len(l4), exts=[(60, 8)] * n) + l4


def router_message(kind: str, n_exts: int) -> bytes:
    """What only a router or a DHCPv6 server sends ("ra": an RA; else a
    DHCPv6 Reply, UDP 547 -> 546), behind n_exts destination options."""
    if kind == "ra":            # RFC 4861 4.2: type 134, no options
        return behind_dest_opts(n_exts, 58, bytes([134, 0, 0, 0]) + bytes(12))
    body = bytes([7, 0, 0x12, 0x34])   # RFC 8415: Reply, transaction id
    return behind_dest_opts(n_exts, UDP, udp(8 + len(body), 547, 546) + body)


def csum_lands(frame: bytes, start: int, target: int) -> bytes:
    """frame with its last word chosen so that completing a partial checksum
    from start (the sum to the end, complemented) gives target."""
    assert (len(frame) - start) % 2 == 0
    w = ((~target & 0xFFFF) - ones_sum(frame[start:-2])) % 0xFFFF
    frame = frame[:-2] + struct.pack("!H", w)
    assert inet_csum(frame[start:]) == target
    return frame


def echo_becoming_ra() -> tuple[bytes, int, int]:
    """ICMPv6 echo request (128) whose checksum, stored over its type and
    code (csum_start 54, csum_offset 0), makes it a router advertisement."""
    icmp = bytes([128, 0, 0, 0]) + struct.pack("!HH", 1, 1) + b"x" * 40 + bytes(2)
    return csum_lands(behind_dest_opts(0, 58, icmp), 54, 0x8600), 54, 0


def udp_becoming_dhcp() -> tuple[bytes, int, int]:
    """IPv4 UDP 1234 -> 67 whose checksum, stored over its source port
    (csum_start 34, csum_offset 0), makes it a DHCP request (68 -> 67)."""
    l4 = udp(8 + 40, 1234, 67) + b"y" * 38 + bytes(2)
    return csum_lands(eth(ETH_P_IP) + ipv4(UDP, len(l4)) + l4, 34, 68), 34, 0


def with_fields(f: Frame, data: bytes | None = None, **kw) -> Frame:
    """A copy of f with some header fields (or the bytes) replaced."""
    d = dict(f.__dict__)
    d.update(kw)
    if data is not None:
        d["data"] = data
    d["meta"] = dict(f.meta)
    return Frame(**d)


def patch(data: bytes, off: int, new: bytes) -> bytes:
    return data[:off] + new + data[off + len(new):]


# ---- handing frames to the C core -------------------------------------------

def c_hdr(f: Frame):
    """A struct vnet_hdr * for f (cffi)."""
    from vionetd._core import ffi
    return ffi.new("struct vnet_hdr *", f.hdr_fields())


def c_iov(pieces: list[bytes]):
    """A struct iovec[] over copies of pieces; returns (iov, keepalive)."""
    from vionetd._core import ffi
    bufs = [ffi.from_buffer(bytearray(p) if p else bytearray(1)) for p in pieces]
    iov = ffi.new("struct iovec[]", max(len(pieces), 1))
    for i, (b, p) in enumerate(zip(bufs, pieces)):
        iov[i].iov_base = ffi.cast("void *", b)
        iov[i].iov_len = len(p)
    return iov, bufs


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """data cut at the given offsets (sorted, deduplicated, clamped)."""
    cuts = sorted({min(max(c, 0), len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(cuts, cuts[1:])] or [b""]


def c_parse(data: bytes, head_len: int | None = None, frame_len: int | None = None):
    """frame_parse() on data: (result, frame_info)."""
    from vionetd._core import ffi, lib
    fi = ffi.new("struct frame_info *")
    buf = ffi.from_buffer("uint8_t[]", data)
    hl = min(len(data), 256) if head_len is None else head_len
    r = lib.frame_parse(buf, hl, len(data) if frame_len is None else frame_len, fi)
    return r, fi


def c_validate(f: Frame, features: int = ALL_HOST, head_len: int | None = None):
    """vnet_validate() on f: (reason, frame_info)."""
    from vionetd._core import ffi, lib
    fi = ffi.new("struct frame_info *")
    buf = ffi.from_buffer("uint8_t[]", f.data)
    hl = min(len(f.data), 256) if head_len is None else head_len
    r = lib.vnet_validate(c_hdr(f), buf, hl, len(f.data), features, fi)
    return r, fi
