"""Run by the workers of local interfaces (and the parent, for addresses): IPv6 frames of ra.py and dhcp6.py, read and built.

- packet(frame), in the tx worker: the Ethernet and IPv6 headers of a
  frame the C data path diverted (one 802.1Q tag at most, no extension
  headers: a router solicitation or a DHCPv6 message from a guest has
  none), every length checked; a Packet, or ValueError.
- frame(...), in the rx worker: an Ethernet frame of one IPv6 packet with
  an ICMPv6 or UDP payload whose checksum (RFC 8200 8.1) is complete.

Addresses are 16 bytes, MACs 6, as the protobuf messages carry them.
"""
import struct
from dataclasses import dataclass

from vionetd.checksum import rfc1071

ETH_IPV6 = 0x86DD
ETH_VLAN = 0x8100
ICMPV6, UDP = 58, 17
ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
ALL_ROUTERS = bytes.fromhex("ff020000000000000000000000000002")
ALL_DHCP = bytes.fromhex("ff020000000000000000000000010002")   # RFC 8415 7.1
UNSPECIFIED = bytes(16)
ROUTER = bytes.fromhex("fe800000000000000000000000000001")   # the host side's link-local


@dataclass(frozen=True)
class Packet:
    src_mac: bytes
    src: bytes
    dst: bytes
    next_header: int
    hop_limit: int
    payload: bytes          # exactly the IPv6 payload length


def packet(frame):
    """The IPv6 packet in an Ethernet frame; ValueError if it is not one
    or its lengths do not hold."""
    frame = bytes(frame)
    if len(frame) < 14:
        raise ValueError("runt")
    off, ethertype = 14, struct.unpack_from("!H", frame, 12)[0]
    if ethertype == ETH_VLAN:
        if len(frame) < 18:
            raise ValueError("runt")
        off, ethertype = 18, struct.unpack_from("!H", frame, 16)[0]
    if ethertype != ETH_IPV6 or len(frame) < off + 40 or frame[off] >> 4 != 6:
        raise ValueError("not IPv6")
    plen, nh, hops = struct.unpack_from("!HBB", frame, off + 4)
    if off + 40 + plen > len(frame):
        raise ValueError("IPv6 payload length past the frame")
    return Packet(frame[6:12], frame[off + 8:off + 24], frame[off + 24:off + 40], nh, hops,
                  frame[off + 40:off + 40 + plen])


def checksum(src, dst, proto, payload):
    """The RFC 8200 8.1 checksum of payload (its checksum field zero)."""
    return rfc1071(src + dst + struct.pack("!IxxxB", len(payload), proto) + payload)


def verify(pkt):
    """True if pkt's ICMPv6 or UDP checksum is right."""
    return checksum(pkt.src, pkt.dst, pkt.next_header, pkt.payload) == 0


def frame(dst_mac, src_mac, src, dst, proto, payload, csum_at, hop_limit=255):
    """An Ethernet frame of one IPv6 packet; the payload's checksum field,
    at byte csum_at of it, is filled in (UDP: 0 sent as 0xffff)."""
    payload = bytearray(payload)
    payload[csum_at:csum_at + 2] = b"\x00\x00"
    csum = checksum(src, dst, proto, bytes(payload))
    if proto == UDP and csum == 0:
        csum = 0xFFFF
    payload[csum_at:csum_at + 2] = struct.pack("!H", csum)
    ip = struct.pack("!IHBB", 6 << 28, len(payload), proto, hop_limit) + src + dst
    return dst_mac + src_mac + struct.pack("!H", ETH_IPV6) + ip + bytes(payload)


def multicast_mac(ip):
    """The Ethernet address of an IPv6 multicast group (RFC 2464 7)."""
    return b"\x33\x33" + ip[12:16]


def link_local(mac):
    """fe80::/64 with the modified EUI-64 of mac (RFC 4291 2.5.1, appendix A)."""
    return b"\xfe\x80" + bytes(6) + eui64(mac)


def eui64(mac):
    """The modified EUI-64 interface identifier of a MAC (RFC 4291 appendix A)."""
    return bytes([mac[0] ^ 0x02]) + mac[1:3] + b"\xff\xfe" + mac[3:6]
