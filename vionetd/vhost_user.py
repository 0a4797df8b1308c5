"""vhost-user, device side, for one connection (QEMU docs/interop/vhost-user.rst).

A Connection reads one message at a time from a connected SOCK_STREAM unix
socket, checks it completely (size, indices, flags, file descriptors, order
where it matters), tracks the state of the two rings of our single queue pair
(0 = RX, 1 = TX), calls a Backend and answers. It knows nothing of workers,
taps or guest memory contents: the integrator's Backend does.

Wire format: u32 request, u32 flags (bits 0-1 version = 1, bit 2 reply,
bit 3 need_reply), u32 size, then size bytes of payload; file descriptors
ride as SCM_RIGHTS on the message's first bytes, at most 8. We read at most
the rest of the current message (the 12-byte header, then exactly size bytes)
with recvmsg (with room for 8 fds), so we never read into the next message and
every fd we receive belongs to the message being read.

Handled (request number: what we do)
   1 GET_FEATURES           reply backend.get_features() | PROTOCOL_FEATURES
                            | LOG_ALL
   2 SET_FEATURES           must be a subset of the offer and have VERSION_1
                            (legacy devices refused); while a ring runs only
                            LOG_ALL may change (migration starts or ends)
   3 SET_OWNER              required before memory and ring messages
   4 RESET_OWNER            deprecated; treated as a device reset
   5 SET_MEM_TABLE          1..8 regions, size > 0, no wrap, no overlap in guest
                            or user space, exactly one fd per region, each a
                            regular file covering its region from a
                            page-aligned offset (fdkind.py)
   8 SET_VRING_NUM          power of 2 in 1..32768; ring stopped
   6 SET_LOG_BASE           needs LOG_SHMFD: {u64 size, u64 offset}, one fd
                            of a file that covers it, size <= LOG_MAX; an
                            empty reply (QEMU waits for one)
   7 SET_LOG_FD             one eventfd, signalled when pages get marked
   9 SET_VRING_ADDR         desc/avail/used aligned 16/2/4; flag bit 0 logs
                            the used ring at log_guest_addr; on a running
                            ring only the log flag and address may change
  10 SET_VRING_BASE         < 65536 (split ring); ring stopped
  11 GET_VRING_BASE         stops the ring; reply {index, next avail index}
  12 SET_VRING_KICK         exactly one eventfd (polling mode, bit 8, is
                            refused); starts the ring
  13 SET_VRING_CALL         one eventfd, or none with bit 8 (no notification)
  14 SET_VRING_ERR          one eventfd, or none with bit 8
  15 GET_PROTOCOL_FEATURES  reply MQ | LOG_SHMFD | RARP | REPLY_ACK | NET_MTU
  16 SET_PROTOCOL_FEATURES  must be a subset of that
  17 GET_QUEUE_NUM          reply the interface's queue pairs
  18 SET_VRING_ENABLE       num 0 or 1
  19 SEND_RARP              the guest's MAC (first 6 bytes of the u64):
                            backend.send_rarp() announces it; ignored (or
                            failed with REPLY_ACK) unless RARP was acked
  20 NET_SET_MTU            u64 in 68..65535, only with NET_MTU acked;
                            backend.set_mtu() accepts or refuses (BackendError:
                            failure reply with REPLY_ACK, else fatal)
  34 RESET_DEVICE           device reset (harmless, so accepted unoffered)
Refused softly (reply failure if need_reply and REPLY_ACK, else log, ignore,
close any fd): 21 SET_BACKEND_REQ_FD,
  23 SET_VRING_ENDIAN, 25 SET_CONFIG, 27 CLOSE_CRYPTO_SESSION,
  29 POSTCOPY_LISTEN, 32 SET_INFLIGHT_FD, 33 GPU_SET_SOCKET, 35 VRING_KICK,
  39 SET_STATUS, and any request number we do not know.
Refused, fatal unless a failure reply is possible (ignoring them would leave
the frontend believing something false): 37 ADD_MEM_REG, 38 REM_MEM_REG
  (memory hot(un)plug without CONFIGURE_MEM_SLOTS).
Refused, always fatal (the frontend waits for a specific reply payload that we
cannot give; none of them is legal without a feature we never offer):
  22 IOTLB_MSG, 24 GET_CONFIG, 26 CREATE_CRYPTO_SESSION, 28 POSTCOPY_ADVISE,
  30 POSTCOPY_END, 31 GET_INFLIGHT_FD, 36 GET_MAX_MEM_SLOTS, 40 GET_STATUS,
  41 GET_SHARED_OBJECT, 42 SET_DEVICE_STATE_FD, 43 CHECK_DEVICE_STATE.

Invariants
  - Any protocol violation raises ProtocolError; the caller logs it and
    closes the connection (close()). Nothing we received is trusted.
  - Every fd received is either handed to the Backend (which owns it from the
    moment its method returns normally) or closed here; never leaked, also
    when a message is refused or the Backend raises. Fds that come with a
    message that takes none are closed at once and the message handled.
  - A Backend method may raise BackendError to refuse: the frontend gets a
    failure reply if it asked for one (need_reply with REPLY_ACK); otherwise
    the refusal is fatal, since the frontend would go on believing it worked.
  - Ring readiness (ring_ready(i)) is recomputed after every message and each
    change is reported once through Backend.ring_ready_changed(i, ready).
    A ring is ready (started) when the memory table, features, num,
    addresses (all inside one memory region each) and a kick fd are set and
    it has not been stopped since by GET_VRING_BASE. Whether it is enabled
    is separate (ring_enabled(i), Backend.set_vring_enable): with
    VHOST_USER_F_PROTOCOL_FEATURES acked in SET_FEATURES a ring starts
    disabled until SET_VRING_ENABLE 1; without it, it is enabled from its
    kick ("Ring states" in vhost-user.rst). A started but disabled ring
    supplies no RX and takes and discards TX, as that section asks.
  - handle_readable() never blocks: the socket is non-blocking and a
    message is reassembled across reads. One that is still incomplete
    `timeout` seconds after its first byte makes overdue() true, and the
    caller drops the connection. A reply that does not fit the socket at
    once (a VMM that does not read its answers) is a ProtocolError.
"""
from __future__ import annotations

import array
import errno
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import NamedTuple, Optional

from vionetd import fdkind
from vionetd import features as F

log = logging.getLogger("vionetd.vhost_user")

# ---- request numbers (vhost-user.rst, "Front-end message types") ----
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

VERSION = 1
FLAG_VERSION_MASK = 0x3
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8

HDR = struct.Struct("<III")
U64 = struct.Struct("<Q")
STATE = struct.Struct("<II")          # vhost_vring_state {index, num}
ADDR = struct.Struct("<IIQQQQ")       # {index, flags, desc, used, avail, log}
MEM_HDR = struct.Struct("<II")        # {nregions, padding}
REGION = struct.Struct("<QQQQ")       # {guest_addr, size, user_addr, mmap_offset}

MAX_FDS = 8                           # VHOST_MEMORY_BASELINE_NREGIONS
MAX_REGIONS = 8
MAX_BATCH = 64                        # messages handled per readable event
MAX_PAYLOAD = 4096                    # larger than any message we know
MAX_QUEUE_PAIRS = 16                  # rings 2i (RX) and 2i+1 (TX) of pair i
LOG = struct.Struct("<QQ")            # SET_LOG_BASE {mmap_size, mmap_offset}
LOG_MAX = 1 << 32                     # bytes of log: 128 TiB of guest memory
MAX_RING_SIZE = 32768                 # virtio 1.2 2.7
VRING_F_LOG = 1                       # SET_VRING_ADDR flags bit 0
VRING_NOFD = 0x100                    # SET_VRING_KICK/CALL/ERR bit 8
VRING_IDX_MASK = 0xff
U64_MAX = (1 << 64) - 1
MTU_MIN, MTU_MAX = 68, 65535          # virtio-net's mtu is a u16; IPv4's minimum

_SOFT_REFUSE = {SET_BACKEND_REQ_FD,
                SET_VRING_ENDIAN, SET_CONFIG, CLOSE_CRYPTO_SESSION,
                POSTCOPY_LISTEN, SET_INFLIGHT_FD, GPU_SET_SOCKET, VRING_KICK,
                SET_STATUS}
_REFUSE_UNLESS_ACK = {ADD_MEM_REG, REM_MEM_REG}
_FATAL = {IOTLB_MSG, GET_CONFIG, CREATE_CRYPTO_SESSION, POSTCOPY_ADVISE,
          POSTCOPY_END, GET_INFLIGHT_FD, GET_MAX_MEM_SLOTS, GET_STATUS,
          GET_SHARED_OBJECT, SET_DEVICE_STATE_FD, CHECK_DEVICE_STATE}


def request_name(req: int) -> str:
    return REQUEST_NAMES.get(req, f"request {req}")


class ProtocolError(Exception):
    """The frontend broke the protocol: close this connection."""


class BackendError(Exception):
    """The Backend refuses a request (reply failure, or close if it cannot)."""


class _Refused(Exception):
    """Internal: a request we refuse; fatal unless a failure reply is sent."""


class _Ignored(_Refused):
    """Internal: a request we refuse harmlessly: failure reply if one is
    asked for, else logged and ignored."""


class MemRegion(NamedTuple):
    guest_addr: int
    size: int
    user_addr: int
    mmap_offset: int


@dataclass
class RingState:
    """What the frontend told us about one ring (addresses are user addresses)."""
    num: Optional[int] = None
    desc: Optional[int] = None
    used: Optional[int] = None
    avail: Optional[int] = None
    log: Optional[int] = None # used ring's guest address, if it is logged
    base: int = 0
    kick: bool = False        # a kick fd was handed to the backend
    call: bool = False        # a call fd was handed to the backend
    err: bool = False
    enabled: bool = False     # last SET_VRING_ENABLE
    started: bool = False     # kick set, not stopped since by GET_VRING_BASE

    @property
    def addr_set(self) -> bool:
        return self.desc is not None


class Backend:
    """What a Connection calls; the integrator implements it.

    File descriptors passed to a method belong to the backend once the method
    returns normally; if it raises, the Connection closes them. A method
    raises BackendError to refuse. Defaults: the optional hooks do nothing
    (and set_vring_err closes the fd it is given).
    """

    def get_features(self) -> int:
        """The virtio feature bits to offer (features.offer())."""
        raise NotImplementedError

    def set_features(self, features: int) -> None:
        """The features the guest acked (a subset of the offer, checked)."""
        raise NotImplementedError

    def set_owner(self) -> None:
        pass

    def reset(self) -> None:
        """RESET_OWNER / RESET_DEVICE: rings were reported not ready already;
        forget features, memory table and ring fds."""

    def set_mem_table(self, regions: list[MemRegion], fds: list[int]) -> None:
        """A new memory table (validated), one fd per region, same order.
        May come while rings are ready (memory hotplug)."""
        raise NotImplementedError

    def set_vring_num(self, index: int, num: int) -> None:
        pass

    def set_vring_addr(self, index: int, desc: int, used: int, avail: int,
                       log: Optional[int]) -> None:
        """User (frontend virtual) addresses; Connection.user_to_guest()
        translates. log: the used ring's guest-physical address when its
        stores are to be logged (VHOST_VRING_F_LOG), else None. May come
        for a running ring with only log changed (migration)."""

    def set_log_base(self, size: int, offset: int, fd: int) -> None:
        """The dirty log: size bytes of fd from offset (checked to exist)."""
        raise BackendError("dirty logging is not supported")

    def set_log_fd(self, fd: int) -> None:
        """An eventfd to signal when pages were marked in the log."""
        os.close(fd)

    def send_rarp(self, mac: bytes) -> None:
        """SEND_RARP: announce mac on the network (the guest moved here)."""

    def set_vring_base(self, index: int, base: int) -> None:
        pass

    def get_vring_base(self, index: int) -> int:
        """The ring is stopped (ring_ready_changed(index, False) came first if
        it was ready): return the next avail index to resume from."""
        raise NotImplementedError

    def set_vring_kick(self, index: int, fd: Optional[int]) -> None:
        """The kick eventfd (never None: polling mode is refused). Replaces
        any previous one, which the backend closes."""
        raise NotImplementedError

    def set_vring_call(self, index: int, fd: Optional[int]) -> None:
        """The call eventfd, or None: do not notify. May change at any time,
        also while the ring runs. Replaces any previous one."""
        raise NotImplementedError

    def set_vring_err(self, index: int, fd: Optional[int]) -> None:
        if fd is not None:
            os.close(fd)

    def set_vring_enable(self, index: int, enabled: bool) -> None:
        pass

    def ring_ready_changed(self, index: int, ready: bool) -> None:
        """Start (ready) or stop (not ready) moving frames on this ring."""

    def set_mtu(self, mtu: int) -> None:
        """NET_SET_MTU: the MTU the VMM put in the guest's config space
        (QEMU's host_mtu). Accept it, or raise BackendError to refuse."""
        raise BackendError("setting the MTU is not supported")

    def disconnected(self) -> None:
        """The connection is closed (rings were reported not ready first)."""


def _close_all(fds: list[int]) -> None:
    while fds:
        fd = fds.pop()
        try:
            os.close(fd)
        except OSError:
            pass


class Connection:
    """The device side of one vhost-user connection."""

    def __init__(self, sock: socket.socket, backend: Backend,
                 name: str = "vhost-user", timeout: float = 2.0,
                 queue_pairs: int = 1):
        self.sock = sock
        self.backend = backend
        self.name = name
        self.timeout = timeout                  # seconds a message may take
        sock.setblocking(False)
        self._buf = bytearray()                 # the message being read
        self._fds: list[int] = []               # and the fds that came with it
        self._since: Optional[float] = None     # when its first byte came
        self._eof = False
        self.owner = False
        self.offered: Optional[int] = None      # last GET_FEATURES answer
        self.features: Optional[int] = None     # acked by SET_FEATURES
        self.protocol_features = 0              # acked by SET_PROTOCOL_FEATURES
        self.mtu: Optional[int] = None          # accepted NET_SET_MTU
        self.regions: list[MemRegion] = []
        if not 1 <= queue_pairs <= MAX_QUEUE_PAIRS:
            raise ValueError(f"queue pairs {queue_pairs} not in 1..{MAX_QUEUE_PAIRS}")
        self.queue_pairs = queue_pairs
        self.nrings = 2 * queue_pairs
        self.rings = [RingState() for _ in range(self.nrings)]
        self._reported = [False] * self.nrings
        self.closed = False
        self.messages = 0
        self.stray_fds = 0                      # fds with messages that take none
        self.asked_queue_num = False            # GET_QUEUE_NUM came

    # ---- public helpers ----

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def reply_ack(self) -> bool:
        return F.has(self.protocol_features, F.PROTOCOL_F_REPLY_ACK)

    @property
    def protocol_negotiated(self) -> bool:
        """VHOST_USER_F_PROTOCOL_FEATURES acked: rings start disabled."""
        return self.features is not None and \
            F.has(self.features, F.VHOST_USER_F_PROTOCOL_FEATURES)

    def translate_user(self, addr: int, length: int) -> Optional[tuple[int, int]]:
        """(region index, offset in region) of [addr, addr+length) in user
        address space, or None unless it lies inside one region."""
        for i, r in enumerate(self.regions):
            if r.user_addr <= addr and addr + length <= r.user_addr + r.size:
                return i, addr - r.user_addr
        return None

    def user_to_guest(self, addr: int, length: int = 1) -> Optional[int]:
        """Guest physical address of a user address range, or None."""
        t = self.translate_user(addr, length)
        if t is None:
            return None
        return self.regions[t[0]].guest_addr + t[1]

    def ring_layout_ok(self, i: int) -> bool:
        """All three parts of ring i lie in the memory table (split ring
        sizes with EVENT_IDX's extra u16, virtio 1.2 2.7)."""
        r = self.rings[i]
        if r.num is None or not r.addr_set:
            return False
        return (self.translate_user(r.desc, 16 * r.num) is not None and
                self.translate_user(r.avail, 6 + 2 * r.num) is not None and
                self.translate_user(r.used, 6 + 8 * r.num) is not None)

    def ring_ready(self, i: int) -> bool:
        r = self.rings[i]
        return (bool(self.regions) and self.features is not None and
                r.num is not None and r.addr_set and r.kick and r.started and
                self.ring_layout_ok(i))

    def reported_ready(self, i: int) -> bool:
        """Ready as last reported to the backend (ring_ready_changed)."""
        return self._reported[i]

    def ring_enabled(self, i: int) -> bool:
        """Whether a ready ring moves frames: with PROTOCOL_FEATURES acked
        only after SET_VRING_ENABLE 1; without, from its kick on. A ready
        but disabled ring supplies no RX and takes and discards TX."""
        return self.rings[i].enabled or not self.protocol_negotiated

    def close(self) -> None:
        """Report rings stopped, tell the backend, close the socket."""
        if self.closed:
            return
        self.closed = True
        _close_all(self._fds)
        for i in range(self.nrings):
            self.rings[i].started = False
        try:
            try:
                self._report()
            except ProtocolError as e:      # a ring that would not stop: closing anyway
                log.warning("%s: %s", self.name, e)
            self.backend.disconnected()
        finally:
            self.sock.close()

    # ---- reading ----

    def handle_readable(self) -> bool:
        """Read what the socket holds, without blocking, and handle every
        message completed by it (at most MAX_BATCH, so that one VMM cannot
        keep its session from its other duties). False when the peer closed
        the connection cleanly between messages. Raises ProtocolError."""
        for _ in range(MAX_BATCH):
            try:
                while not self._eof and len(self._buf) < self._want():
                    if not self._fill():
                        return True         # the rest has not come yet
            except ProtocolError as e:
                raise ProtocolError(f"{self.name}: {e}") from None
            if self._eof:
                return False
            req, flags, _ = HDR.unpack_from(self._buf)
            payload = bytes(self._buf[HDR.size:])
            fds, self._fds = self._fds, []
            self._buf.clear()
            self._since = None
            try:
                self.messages += 1
                self._dispatch(req, flags, payload, fds)
                self._report()
            except ProtocolError as e:
                raise ProtocolError(f"{self.name}: {e}") from None
            finally:
                _close_all(fds)
        return True

    def overdue(self, now: float) -> bool:
        """True if a message began more than `timeout` seconds before now
        and is still incomplete: the caller drops the connection."""
        return self._since is not None and now - self._since > self.timeout

    def _want(self) -> int:
        """Bytes of the current message we know of: the header, then the
        header and its payload."""
        if len(self._buf) < HDR.size:
            return HDR.size
        req, flags, size = HDR.unpack_from(self._buf)
        if flags & FLAG_VERSION_MASK != VERSION:
            raise ProtocolError(f"{request_name(req)}: bad version in "
                                f"flags 0x{flags:x}")
        if flags & FLAG_REPLY:
            raise ProtocolError(f"{request_name(req)}: reply flag set "
                                "on a request")
        if size > MAX_PAYLOAD:
            raise ProtocolError(f"{request_name(req)}: payload of "
                                f"{size} bytes is too large")
        return HDR.size + size

    def _fill(self) -> bool:
        """One non-blocking read of at most the rest of the current message
        (never into the next one, so every fd received belongs to the
        message being read). False if nothing was there."""
        want = self._want()
        cmsg_space = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
        try:
            data, anc, msg_flags, _ = self.sock.recvmsg(
                want - len(self._buf), cmsg_space, socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            if e.errno in (errno.ECONNRESET, errno.EPIPE) and not self._buf:
                self._eof = True
                return True
            raise ProtocolError(f"read failed: {e}")
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(cdata[:len(cdata) - len(cdata) % a.itemsize])
                self._fds.extend(a)
        if msg_flags & socket.MSG_CTRUNC or len(self._fds) > MAX_FDS:
            raise ProtocolError(f"more than {MAX_FDS} file descriptors")
        if not data:
            if self._buf or self._fds:
                raise ProtocolError("connection closed inside a message")
            self._eof = True
            return True
        if self._since is None:
            self._since = time.monotonic()
        self._buf += data
        return True

    # ---- writing ----

    def _send_reply(self, req: int, payload: bytes) -> None:
        try:
            self.sock.sendall(HDR.pack(req, VERSION | FLAG_REPLY,
                                       len(payload)) + payload)
        except (OSError, socket.timeout) as e:
            raise ProtocolError(f"{request_name(req)}: reply failed: {e}")

    def _ack(self, req: int, flags: int, ok: bool) -> bool:
        """Send the REPLY_ACK answer if one was asked for; True if sent."""
        if flags & FLAG_NEED_REPLY and self.reply_ack:
            self._send_reply(req, U64.pack(0 if ok else 1))
            return True
        return False

    # ---- dispatch ----

    def _dispatch(self, req: int, flags: int, payload: bytes,
                  fds: list[int]) -> None:
        name = request_name(req)
        handler = _HANDLERS.get(req)
        if handler is None:
            return self._refuse(req, flags, payload, fds)
        if fds and req not in _TAKES_FDS:
            # closed at once; the message itself may still be good
            log.warning("%s: %s came with %d file descriptor(s); closed", self.name,
                        name, len(fds))
            self.stray_fds += len(fds)
            _close_all(fds)
        try:
            reply = handler(self, payload, fds)
        except _Refused as e:
            _close_all(fds)
            if not self._ack(req, flags, False) and not isinstance(e, _Ignored):
                raise ProtocolError(f"{name}: refused: {e}")
            log.warning("%s: %s refused: %s", self.name, name, e)
            return
        except BackendError as e:
            _close_all(fds)
            if reply_expected(req) or not self._ack(req, flags, False):
                raise ProtocolError(f"{name}: backend refused: {e}")
            log.warning("%s: %s: backend refused: %s", self.name, name, e)
            return
        if fds:
            raise ProtocolError(f"{name}: {len(fds)} unexpected file "
                                "descriptor(s)")
        if reply is not None:
            self._send_reply(req, reply)
        else:
            self._ack(req, flags, True)

    def _refuse(self, req: int, flags: int, payload: bytes,
                fds: list[int]) -> None:
        name = request_name(req)
        _close_all(fds)
        if req in _FATAL:
            raise ProtocolError(f"{name} needs a feature we never offered")
        if self._ack(req, flags, False):
            log.warning("%s: %s refused (not supported)", self.name, name)
            return
        if req in _REFUSE_UNLESS_ACK:
            raise ProtocolError(f"{name} not supported and no failure "
                                "reply was asked for")
        log.warning("%s: %s ignored (not supported)", self.name, name)

    # ---- checks shared by handlers ----

    @staticmethod
    def _size(name: str, payload: bytes, want: int) -> None:
        if len(payload) != want:
            raise ProtocolError(f"{name}: payload of {len(payload)} bytes, "
                                f"expected {want}")

    @staticmethod
    def _nfds(name: str, fds: list[int], want: int) -> None:
        if len(fds) != want:
            raise ProtocolError(f"{name}: {len(fds)} file descriptor(s), "
                                f"expected {want}")

    def _owned(self, name: str) -> None:
        if not self.owner:
            raise ProtocolError(f"{name} before SET_OWNER")

    def _index(self, name: str, index: int) -> int:
        if index >= self.nrings:
            raise ProtocolError(f"{name}: ring index {index} out of range: this "
                                f"interface has {self.queue_pairs} queue pair(s) "
                                f"(queues in vionetd.conf)")
        return index

    def _stopped(self, name: str, i: int) -> None:
        if self.rings[i].started:
            raise ProtocolError(f"{name}: ring {i} is running")

    def _state(self, name: str, payload: bytes) -> tuple[int, int]:
        self._size(name, payload, STATE.size)
        index, num = STATE.unpack(payload)
        self._owned(name)
        return self._index(name, index), num

    def _report(self) -> None:
        """Tell the backend about every change of ring readiness."""
        for i in range(self.nrings):
            ready = not self.closed and self.ring_ready(i)
            if ready != self._reported[i]:
                self._reported[i] = ready
                try:
                    self.backend.ring_ready_changed(i, ready)
                except BackendError as e:
                    raise ProtocolError(f"ring {i}: backend could not "
                                        f"{'start' if ready else 'stop'} "
                                        f"it: {e}")

    def _check_running_layout(self) -> None:
        for i in range(self.nrings):
            r = self.rings[i]
            if r.started and r.num is not None and r.addr_set and \
                    self.regions and not self.ring_layout_ok(i):
                raise ProtocolError(f"ring {i} lies outside the memory table")

    @staticmethod
    def _give(fds: list[int], method, *args) -> None:
        """Call a Backend method that takes the message's fds: they are the
        backend's once it returns, and leave the message's list; if it
        raises they stay there, and the dispatch closes them."""
        method(*args)
        fds.clear()

    # ---- handlers: each returns a reply payload, or None ----

    def _offer(self) -> int:
        """The backend's virtio features and the vhost ones we implement."""
        self.offered = self.backend.get_features() | \
            F.mask(F.VHOST_USER_F_PROTOCOL_FEATURES, F.LOG_ALL)
        return self.offered

    def _get_features(self, p: bytes, fds: list[int]):
        self._size("GET_FEATURES", p, 0)
        return U64.pack(self._offer())

    def _set_features(self, p: bytes, fds: list[int]):
        self._size("SET_FEATURES", p, U64.size)
        (f,) = U64.unpack(p)
        if self.offered is None:
            self._offer()
        extra = f & ~self.offered
        if extra:
            raise ProtocolError("SET_FEATURES: features not offered: " +
                                ", ".join(F.names(extra)))
        if not F.has(f, F.VERSION_1):
            raise ProtocolError("SET_FEATURES without VERSION_1: legacy "
                                "(pre-virtio 1.0) devices are not supported")
        if self.features is not None and (f ^ self.features) & ~F.bit(F.LOG_ALL) \
                and any(r.started for r in self.rings):
            raise ProtocolError("SET_FEATURES: features other than LOG_ALL "
                                "change while a ring is running")
        self.backend.set_features(f)
        self.features = f
        return None

    def _set_owner(self, p: bytes, fds: list[int]):
        self._size("SET_OWNER", p, 0)
        if self.owner:
            log.info("%s: SET_OWNER again", self.name)
        self.backend.set_owner()
        self.owner = True
        return None

    def _reset(self, p: bytes, fds: list[int]):
        self._size("RESET", p, 0)
        for r in self.rings:
            r.started = False
        self._report()
        self.rings = [RingState() for _ in range(self.nrings)]
        self.features = None
        self.regions = []
        self.backend.reset()
        return None

    def _set_mem_table(self, p: bytes, fds: list[int]):
        name = "SET_MEM_TABLE"
        if len(p) < MEM_HDR.size:
            raise ProtocolError(f"{name}: payload of {len(p)} bytes is short")
        n, _pad = MEM_HDR.unpack_from(p)
        if not 1 <= n <= MAX_REGIONS:
            raise ProtocolError(f"{name}: {n} regions (1..{MAX_REGIONS})")
        self._size(name, p, MEM_HDR.size + n * REGION.size)
        self._nfds(name, fds, n)
        self._owned(name)
        regions = [MemRegion(*REGION.unpack_from(p, MEM_HDR.size + i * REGION.size))
                   for i in range(n)]
        for i, r in enumerate(regions):
            if r.size == 0:
                raise ProtocolError(f"{name}: region {i} is empty")
            for what, base in (("guest", r.guest_addr), ("user", r.user_addr),
                               ("mmap offset", r.mmap_offset)):
                if base + r.size - 1 > U64_MAX:
                    raise ProtocolError(f"{name}: region {i} wraps the "
                                        f"{what} address space")
        for key in ("guest_addr", "user_addr"):
            spans = sorted((getattr(r, key), getattr(r, key) + r.size)
                           for r in regions)
            for (a0, a1), (b0, _b1) in zip(spans, spans[1:]):
                if b0 < a1:
                    raise ProtocolError(f"{name}: regions overlap in "
                                        f"{key.split('_')[0]} address space")
        for i, (r, fd) in enumerate(zip(regions, fds)):
            self._fd_ok(fdkind.memory, fd, r.size, r.mmap_offset,
                        f"{name}: region {i}")
        old = self.regions
        self.regions = regions
        try:
            self._check_running_layout()
        except ProtocolError:
            self.regions = old
            raise
        try:
            self._give(fds, self.backend.set_mem_table, regions, list(fds))
        except BaseException:
            self.regions = old
            raise
        return None

    def _set_vring_num(self, p: bytes, fds: list[int]):
        i, num = self._state("SET_VRING_NUM", p)
        if not (1 <= num <= MAX_RING_SIZE and num & (num - 1) == 0):
            raise ProtocolError(f"SET_VRING_NUM: ring {i} size {num} is not "
                                f"a power of 2 in 1..{MAX_RING_SIZE}")
        self._stopped("SET_VRING_NUM", i)
        self.backend.set_vring_num(i, num)
        self.rings[i].num = num
        return None

    def _set_vring_addr(self, p: bytes, fds: list[int]):
        name = "SET_VRING_ADDR"
        self._size(name, p, ADDR.size)
        index, flags, desc, used, avail, log_addr = ADDR.unpack(p)
        self._owned(name)
        i = self._index(name, index)
        if flags & ~VRING_F_LOG:
            raise ProtocolError(f"{name}: unknown flags 0x{flags:x}")
        if desc % 16 or avail % 2 or used % 4:
            raise ProtocolError(f"{name}: ring {i} misaligned (desc 0x{desc:x}"
                                f" avail 0x{avail:x} used 0x{used:x})")
        r = self.rings[i]
        if (desc, used, avail) != (r.desc, r.used, r.avail):
            self._stopped(name, i)      # a running ring only toggles its log
        # Recorded first: a running ring restarts from it in the backend.
        old = r.desc, r.used, r.avail, r.log
        r.desc, r.used, r.avail = desc, used, avail
        r.log = log_addr if flags & VRING_F_LOG else None
        try:
            self.backend.set_vring_addr(i, desc, used, avail, r.log)
        except BaseException:
            r.desc, r.used, r.avail, r.log = old
            raise
        return None

    def _set_log_base(self, p: bytes, fds: list[int]):
        name = "SET_LOG_BASE"
        if not F.has(self.protocol_features, F.PROTOCOL_F_LOG_SHMFD):
            raise ProtocolError(f"{name} without the LOG_SHMFD protocol feature")
        self._size(name, p, LOG.size)
        size, offset = LOG.unpack(p)
        self._nfds(name, fds, 1)
        if not 0 < size <= LOG_MAX:
            raise ProtocolError(f"{name}: log of {size} bytes (1..{LOG_MAX})")
        self._fd_ok(fdkind.memory, fds[0], size, offset, name)
        self._give(fds, self.backend.set_log_base, size, offset, fds[0])
        return b""          # QEMU waits for this (empty) reply

    def _set_log_fd(self, p: bytes, fds: list[int]):
        self._size("SET_LOG_FD", p, 0)
        self._nfds("SET_LOG_FD", fds, 1)
        self._fd_ok(fdkind.notifier, fds[0], "SET_LOG_FD")
        self._give(fds, self.backend.set_log_fd, fds[0])
        return None

    def _send_rarp(self, p: bytes, fds: list[int]):
        self._size("SEND_RARP", p, U64.size)
        if not F.has(self.protocol_features, F.PROTOCOL_F_RARP):
            raise _Ignored("the RARP protocol feature was not negotiated")
        self.backend.send_rarp(p[:6])
        return None

    def _set_vring_base(self, p: bytes, fds: list[int]):
        i, base = self._state("SET_VRING_BASE", p)
        if base > 0xffff:
            raise ProtocolError(f"SET_VRING_BASE: ring {i} base {base} is not "
                                "a 16-bit index")
        self._stopped("SET_VRING_BASE", i)
        self.backend.set_vring_base(i, base)
        self.rings[i].base = base
        return None

    def _get_vring_base(self, p: bytes, fds: list[int]):
        i, _ = self._state("GET_VRING_BASE", p)
        r = self.rings[i]
        r.started = False
        r.kick = False          # a new SET_VRING_KICK starts it again
        self._report()
        base = self.backend.get_vring_base(i)
        if not 0 <= base <= 0xffff:
            raise BackendError(f"ring {i}: bad base {base}")
        r.base = base
        return STATE.pack(i, base)

    def _vring_file(self, name: str, p: bytes, fds: list[int]):
        self._size(name, p, U64.size)
        (v,) = U64.unpack(p)
        if v & ~(VRING_IDX_MASK | VRING_NOFD):
            raise ProtocolError(f"{name}: unknown bits in 0x{v:x}")
        self._owned(name)
        i = self._index(name, v & VRING_IDX_MASK)
        nofd = bool(v & VRING_NOFD)
        self._nfds(name, fds, 0 if nofd else 1)
        if fds:
            self._fd_ok(fdkind.notifier, fds[0], f"{name}: ring {i}")
        return i, nofd

    @staticmethod
    def _fd_ok(check, fd: int, *args) -> None:
        try:
            check(fd, *args)
        except fdkind.FdError as e:
            raise ProtocolError(str(e))

    def _set_vring_kick(self, p: bytes, fds: list[int]):
        i, nofd = self._vring_file("SET_VRING_KICK", p, fds)
        if nofd:
            raise _Refused(f"ring {i}: polling mode (no kick fd) is not "
                           "supported")
        self._give(fds, self.backend.set_vring_kick, i, fds[0])
        self.rings[i].kick = True
        self.rings[i].started = True
        self._check_running_layout()
        return None

    def _set_vring_call(self, p: bytes, fds: list[int]):
        i, nofd = self._vring_file("SET_VRING_CALL", p, fds)
        self._give(fds, self.backend.set_vring_call, i, None if nofd else fds[0])
        self.rings[i].call = not nofd
        return None

    def _set_vring_err(self, p: bytes, fds: list[int]):
        i, nofd = self._vring_file("SET_VRING_ERR", p, fds)
        self._give(fds, self.backend.set_vring_err, i, None if nofd else fds[0])
        self.rings[i].err = not nofd
        return None

    def _get_protocol_features(self, p: bytes, fds: list[int]):
        self._size("GET_PROTOCOL_FEATURES", p, 0)
        return U64.pack(F.PROTOCOL_OFFER)

    def _set_protocol_features(self, p: bytes, fds: list[int]):
        self._size("SET_PROTOCOL_FEATURES", p, U64.size)
        (pf,) = U64.unpack(p)
        extra = pf & ~F.PROTOCOL_OFFER
        if extra:
            raise ProtocolError("SET_PROTOCOL_FEATURES: not offered: " +
                                ", ".join(F.protocol_names(extra)))
        self.protocol_features = pf
        return None

    def _get_queue_num(self, p: bytes, fds: list[int]):
        self._size("GET_QUEUE_NUM", p, 0)
        self.asked_queue_num = True
        return U64.pack(self.queue_pairs)

    def _set_vring_enable(self, p: bytes, fds: list[int]):
        i, on = self._state("SET_VRING_ENABLE", p)
        if on > 1:
            raise ProtocolError(f"SET_VRING_ENABLE: ring {i}: value {on}")
        self.backend.set_vring_enable(i, bool(on))
        self.rings[i].enabled = bool(on)
        return None


    def _net_set_mtu(self, p: bytes, fds: list[int]):
        name = "NET_SET_MTU"
        self._size(name, p, U64.size)
        (mtu,) = U64.unpack(p)
        if not F.has(self.protocol_features, F.PROTOCOL_F_NET_MTU):
            raise ProtocolError(f"{name} without the NET_MTU protocol "
                                "feature")
        if not MTU_MIN <= mtu <= MTU_MAX:
            raise ProtocolError(f"{name}: MTU {mtu} out of range "
                                f"{MTU_MIN}..{MTU_MAX}")
        self.backend.set_mtu(mtu)
        self.mtu = mtu
        return None


def reply_expected(req: int) -> bool:
    """Requests whose normal answer is a reply payload (not a REPLY_ACK)."""
    return req in (GET_FEATURES, GET_PROTOCOL_FEATURES, GET_VRING_BASE,
                   GET_QUEUE_NUM, SET_LOG_BASE)


_TAKES_FDS = {SET_MEM_TABLE, SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR,
              SET_LOG_BASE, SET_LOG_FD}

_HANDLERS = {
    GET_FEATURES: Connection._get_features,
    SET_FEATURES: Connection._set_features,
    SET_OWNER: Connection._set_owner,
    RESET_OWNER: Connection._reset,
    SET_MEM_TABLE: Connection._set_mem_table,
    SET_VRING_NUM: Connection._set_vring_num,
    SET_VRING_ADDR: Connection._set_vring_addr,
    SET_VRING_BASE: Connection._set_vring_base,
    GET_VRING_BASE: Connection._get_vring_base,
    SET_VRING_KICK: Connection._set_vring_kick,
    SET_VRING_CALL: Connection._set_vring_call,
    SET_VRING_ERR: Connection._set_vring_err,
    GET_PROTOCOL_FEATURES: Connection._get_protocol_features,
    SET_PROTOCOL_FEATURES: Connection._set_protocol_features,
    GET_QUEUE_NUM: Connection._get_queue_num,
    SET_VRING_ENABLE: Connection._set_vring_enable,
    NET_SET_MTU: Connection._net_set_mtu,
    SET_LOG_BASE: Connection._set_log_base,
    SET_LOG_FD: Connection._set_log_fd,
    SEND_RARP: Connection._send_rarp,
    RESET_DEVICE: Connection._reset,
}
