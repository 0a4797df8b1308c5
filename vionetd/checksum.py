"""Run by the parent and the workers: the Internet checksum (RFC 1071) of the frames Python builds.

DHCP replies (dhcp.py), DHCPv6 replies and router advertisements
(frame6.py) are small and rare; the C core sums the data path's frames.
"""
import struct


def rfc1071(data):
    """The one's complement of the one's complement sum of data's 16-bit
    words (an odd byte padded with zero)."""
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
