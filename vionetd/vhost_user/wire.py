"""Run by a session (the unprivileged process that speaks vhost-user with one
VM interface's VMM): the vhost-user wire format, and message bodies that
check themselves.

Numbers and layouts are QEMU's docs/interop/vhost-user.rst ("Message
types", "Front-end message types", "Message specification"). A message is
a 12-byte header {u32 request, u32 flags, u32 size} and size bytes of
payload; flags bits 0-1 are the version (1), bit 2 marks a reply, bit 3
asks for one (need_reply, with the REPLY_ACK protocol feature).

Each body type's parse(name, payload) checks the payload's size and
everything the payload alone decides (alignment, ranges, unknown bits, a
memory table's regions among themselves) and returns the typed body, or
raises ProtocolError naming the request. What depends on the connection's
state (SET_OWNER came, the ring index exists, the ring is stopped) is the
handlers' (requests.py).
"""
from __future__ import annotations

import struct
from typing import NamedTuple, Optional

from vionetd.vhost_user import checks
from vionetd.vhost_user.backend import ProtocolError

# ---- request numbers ("Front-end message types") ----
GET_FEATURES = 1
SET_FEATURES = 2
SET_OWNER = 3
RESET_OWNER = 4
SET_MEM_TABLE = 5
SET_LOG_BASE = 6
SET_LOG_FD = 7
SET_VRING_NUM = 8
SET_VRING_ADDR = 9
SET_VRING_BASE = 10
GET_VRING_BASE = 11
SET_VRING_KICK = 12
SET_VRING_CALL = 13
SET_VRING_ERR = 14
GET_PROTOCOL_FEATURES = 15
SET_PROTOCOL_FEATURES = 16
GET_QUEUE_NUM = 17
SET_VRING_ENABLE = 18
SEND_RARP = 19
NET_SET_MTU = 20
SET_BACKEND_REQ_FD = 21
IOTLB_MSG = 22
SET_VRING_ENDIAN = 23
GET_CONFIG = 24
SET_CONFIG = 25
CREATE_CRYPTO_SESSION = 26
CLOSE_CRYPTO_SESSION = 27
POSTCOPY_ADVISE = 28
POSTCOPY_LISTEN = 29
POSTCOPY_END = 30
GET_INFLIGHT_FD = 31
SET_INFLIGHT_FD = 32
GPU_SET_SOCKET = 33
RESET_DEVICE = 34
VRING_KICK = 35
GET_MAX_MEM_SLOTS = 36
ADD_MEM_REG = 37
REM_MEM_REG = 38
SET_STATUS = 39
GET_STATUS = 40
GET_SHARED_OBJECT = 41
SET_DEVICE_STATE_FD = 42
CHECK_DEVICE_STATE = 43

REQUEST_NAMES = {v: k for k, v in globals().items()
                 if k.isupper() and isinstance(v, int) and 1 <= v <= 43}


def request_name(req: int) -> str:
    """The request's name, or "request N" for a number we do not know."""
    return REQUEST_NAMES.get(req, f"request {req}")


# ---- header ("Message specification") ----
VERSION = 1
FLAG_VERSION_MASK = 0x3
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8

HDR = struct.Struct("<III")           # {request, flags, size}
U64 = struct.Struct("<Q")
STATE = struct.Struct("<II")          # vhost_vring_state {index, num}
ADDR = struct.Struct("<IIQQQQ")       # {index, flags, desc, used, avail, log}
MEM_HDR = struct.Struct("<II")        # {nregions, padding}
REGION = struct.Struct("<QQQQ")       # {guest_addr, size, user_addr, mmap_offset}
LOG = struct.Struct("<QQ")            # SET_LOG_BASE {mmap_size, mmap_offset}

# ---- limits ----
MAX_FDS = 8                           # VHOST_MEMORY_BASELINE_NREGIONS
MAX_REGIONS = 8
MAX_PAYLOAD = 4096                    # larger than any message we know
MAX_QUEUE_PAIRS = 16                  # rings 2i (RX) and 2i+1 (TX) of pair i
LOG_MAX = 1 << 32                     # bytes of log: 128 TiB of guest memory
MAX_RING_SIZE = 32768                 # virtio 1.2 2.7
MAX_RING_INDEX = 0xffff               # split ring avail/used indices are u16
MTU_MIN, MTU_MAX = 68, 65535          # virtio-net's mtu is a u16; IPv4's minimum
VRING_F_LOG = 1                       # SET_VRING_ADDR flags bit 0
VRING_NOFD = 0x100                    # SET_VRING_KICK/CALL/ERR bit 8
VRING_IDX_MASK = 0xff
U64_MAX = checks.U64_MAX


class MemRegion(NamedTuple):
    guest_addr: int
    size: int
    user_addr: int
    mmap_offset: int


def expect_size(name: str, payload: bytes, want: int) -> None:
    """Raise ProtocolError unless the payload has exactly want bytes."""
    if len(payload) != want:
        raise ProtocolError(f"{name}: payload of {len(payload)} bytes, "
                            f"expected {want}")


def unpack(name: str, payload: bytes, layout: struct.Struct) -> tuple:
    """unpack() - a fixed-size payload's fields
    @name: the request, for messages
    @payload: the message's payload
    @layout: its struct

    Return: the unpacked fields. Raises ProtocolError unless the payload
    has exactly the layout's size.
    """
    expect_size(name, payload, layout.size)
    return layout.unpack(payload)


class Empty(NamedTuple):
    """No payload at all."""

    @classmethod
    def parse(cls, name: str, payload: bytes) -> "Empty":
        expect_size(name, payload, 0)
        return cls()


class U64Value(NamedTuple):
    """A u64: feature bits, protocol feature bits."""
    value: int

    @classmethod
    def parse(cls, name: str, payload: bytes) -> "U64Value":
        return cls(*unpack(name, payload, U64))


class Mac(NamedTuple):
    """SEND_RARP's u64: the guest's MAC in its first 6 bytes."""
    mac: bytes

    @classmethod
    def parse(cls, name: str, payload: bytes) -> "Mac":
        unpack(name, payload, U64)
        return cls(payload[:6])


class Mtu(NamedTuple):
    """NET_SET_MTU's u64, in MTU_MIN..MTU_MAX."""
    mtu: int

    @classmethod
    def parse(cls, name: str, payload: bytes) -> "Mtu":
        (mtu,) = unpack(name, payload, U64)
        if not MTU_MIN <= mtu <= MTU_MAX:
            raise ProtocolError(f"{name}: MTU {mtu} out of range "
                                f"{MTU_MIN}..{MTU_MAX}")
        return cls(mtu)


class VringState(NamedTuple):
    """vhost_vring_state ("Ring state description"): a ring index and a
    number (size, base, or enable)."""
    index: int
    num: int

    @classmethod
    def parse(cls, name: str, payload: bytes) -> "VringState":
        return cls(*unpack(name, payload, STATE))


class VringAddr(NamedTuple):
    """vhost_vring_addr ("Ring address description"): user addresses of the
    three parts, split-ring aligned; flag bit 0 logs the used ring at
    log_addr (guest physical)."""
    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log_addr: int

    @classmethod
    def parse(cls, name: str, payload: bytes) -> "VringAddr":
        a = cls(*unpack(name, payload, ADDR))
        if a.flags & ~VRING_F_LOG:
            raise ProtocolError(f"{name}: unknown flags 0x{a.flags:x}")
        if not checks.ring_aligned(a.desc, a.avail, a.used):
            raise ProtocolError(f"{name}: ring {a.index} misaligned (desc "
                                f"0x{a.desc:x} avail 0x{a.avail:x} used "
                                f"0x{a.used:x})")
        return a

    @property
    def log(self) -> Optional[int]:
        """The used ring's guest address if it is to be logged, else None."""
        return self.log_addr if self.flags & VRING_F_LOG else None


class VringFile(NamedTuple):
    """The u64 of SET_VRING_KICK/CALL/ERR ("Vring descriptor indices for
    file descriptors"): ring index in bits 0-7; bit 8 says no fd comes."""
    index: int
    nofd: bool

    @classmethod
    def parse(cls, name: str, payload: bytes) -> "VringFile":
        (v,) = unpack(name, payload, U64)
        if v & ~(VRING_IDX_MASK | VRING_NOFD):
            raise ProtocolError(f"{name}: unknown bits in 0x{v:x}")
        return cls(v & VRING_IDX_MASK, bool(v & VRING_NOFD))


class MemTable(NamedTuple):
    """SET_MEM_TABLE's body ("Multiple Memory regions description"): 1 to
    MAX_REGIONS regions, none empty, none wrapping, none overlapping."""
    regions: list

    @classmethod
    def parse(cls, name: str, payload: bytes) -> "MemTable":
        if len(payload) < MEM_HDR.size:
            raise ProtocolError(f"{name}: payload of {len(payload)} bytes "
                                "is short")
        n, _pad = MEM_HDR.unpack_from(payload)
        if not 1 <= n <= MAX_REGIONS:
            raise ProtocolError(f"{name}: {n} regions (1..{MAX_REGIONS})")
        expect_size(name, payload, MEM_HDR.size + n * REGION.size)
        regions = [MemRegion(*REGION.unpack_from(payload, MEM_HDR.size + i * REGION.size))
                   for i in range(n)]
        checks.regions_ok(name, regions)
        return cls(regions)


class LogArea(NamedTuple):
    """SET_LOG_BASE's body ("Log description"): size bytes (1..LOG_MAX) of
    the message's fd from offset."""
    size: int
    offset: int

    @classmethod
    def parse(cls, name: str, payload: bytes) -> "LogArea":
        size, offset = unpack(name, payload, LOG)
        if not 0 < size <= LOG_MAX:
            raise ProtocolError(f"{name}: log of {size} bytes (1..{LOG_MAX})")
        return cls(size, offset)


__all__ = [k for k in dict(globals()) if k.isupper()] + [
    "MemRegion", "request_name", "expect_size", "unpack", "Empty", "U64Value",
    "Mac", "Mtu", "VringState", "VringAddr", "VringFile", "MemTable", "LogArea"]
