"""A vhost-user frontend for the tests: plays QEMU's part over a real socket.

It speaks the protocol of QEMU docs/interop/vhost-user.rst from the frontend
side: features and protocol features, SET_OWNER, a memory table made of memfd
regions (mmap'd here, so a test can read and write "guest memory"), and the
per-ring messages with real eventfds for kick and call. Besides well-formed
messages it can send anything (send(), send_raw()) to test how a backend
refuses malformed input.

It does not touch rings: laying out and filling descriptor tables, avail and
used rings is tests/guestmem.py's job. negotiate() only needs each ring's
three guest-physical addresses and its size, from a `layout` object with
`queue_size` and `addresses(index) -> (desc, avail, used)`; SplitLayout below
computes a plain one (address arithmetic only).

Two ways to drive a device:
  - a real daemon: Frontend.connect(path); every call blocks on its reply;
  - a Connection in the same thread (unit tests): Frontend(sock, pump=...)
    calls pump() after sending each message, e.g. conn.handle_readable, so
    the device handles it before we wait for a reply; its exceptions reach
    the test directly.
"""
from __future__ import annotations

import array
import mmap
import os
import select
import socket
import struct
from typing import Callable, Iterable, Optional

from vionetd import features as F
from vionetd import vhost_user as V

HDR = struct.Struct("<III")
U64 = struct.Struct("<Q")
STATE = struct.Struct("<II")
ADDR = struct.Struct("<IIQQQQ")
REGION = struct.Struct("<QQQQ")

USER_BASE = 0x7F00_0000_0000      # where our fake frontend "maps" guest RAM


class FrontendError(Exception):
    pass


class GuestRegion:
    """One region of guest RAM: a memfd, mmap'd here."""

    def __init__(self, size: int, guest_addr: int = 0,
                 user_addr: Optional[int] = None, mmap_offset: int = 0,
                 name: str = "guest-ram"):
        self.size = size
        self.guest_addr = guest_addr
        self.user_addr = USER_BASE + guest_addr if user_addr is None else user_addr
        self.mmap_offset = mmap_offset
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, mmap_offset + size)
        self.mem = mmap.mmap(self.fd, mmap_offset + size)

    @property
    def region(self) -> tuple[int, int, int, int]:
        return (self.guest_addr, self.size, self.user_addr, self.mmap_offset)

    def contains(self, gpa: int, length: int = 1) -> bool:
        return self.guest_addr <= gpa and gpa + length <= self.guest_addr + self.size

    def gpa_to_user(self, gpa: int) -> int:
        return self.user_addr + gpa - self.guest_addr

    def close(self) -> None:
        if self.fd >= 0:
            self.mem.close()
            os.close(self.fd)
            self.fd = -1


class SplitLayout:
    """Split rings placed one after the other from base (guest physical),
    each part page-aligned. Address arithmetic only (virtio 1.2 2.7)."""

    def __init__(self, base: int, queue_size: int = 256, nrings: int = 2):
        self.base = base
        self.queue_size = queue_size
        q = queue_size
        page = 4096
        up = lambda n: (n + page - 1) // page * page  # noqa: E731
        self.desc_size = up(16 * q)
        self.avail_size = up(6 + 2 * q)
        self.used_size = up(6 + 8 * q)
        self.stride = self.desc_size + self.avail_size + self.used_size
        self.nrings = nrings

    @property
    def end(self) -> int:
        return self.base + self.nrings * self.stride

    def addresses(self, index: int) -> tuple[int, int, int]:
        desc = self.base + index * self.stride
        avail = desc + self.desc_size
        used = avail + self.avail_size
        return desc, avail, used


def eventfd() -> int:
    return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)


class Frontend:
    """The frontend end of one vhost-user connection."""

    def __init__(self, sock: socket.socket,
                 pump: Optional[Callable[[], object]] = None,
                 timeout: float = 5.0):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.pump = pump
        self.protocol_features = 0
        self.features = 0
        self.offered = 0
        self.regions: list[GuestRegion] = []
        self.kick: dict[int, int] = {}
        self.call: dict[int, int] = {}
        self.err: dict[int, int] = {}
        self.ack_always: set[int] = set()   # requests sent with need_reply
        self.acks = 0                       # REPLY_ACK answers received

    @classmethod
    def connect(cls, path: str, timeout: float = 5.0) -> "Frontend":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.settimeout(timeout)
        s.connect(path)
        return cls(s, timeout=timeout)

    @classmethod
    def accept(cls, path: str, timeout: float = 5.0, mode: int = 0o666) -> "Frontend":
        """Listen at path, as a VMM whose backend connects (vionetd's client
        mode), and take the first connection within timeout. The socket
        gets mode: vionetd connects as the VM's uid, which must be able to
        write to it."""
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            lsock.bind(path)
            os.chmod(path, mode)
            lsock.listen(1)
            lsock.settimeout(timeout)
            s, _ = lsock.accept()
        finally:
            lsock.close()
            os.unlink(path)
        return cls(s, timeout=timeout)

    # ---- raw messages ----

    def send_raw(self, data: bytes, fds: Iterable[int] = ()) -> None:
        fds = list(fds)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                array.array("i", fds).tobytes())] if fds else []
        sent = self.sock.sendmsg([data], anc)
        if sent < len(data):
            self.sock.sendall(data[sent:])

    def send(self, req: int, payload: bytes = b"", fds: Iterable[int] = (),
             need_reply: bool = False, flags: Optional[int] = None,
             size: Optional[int] = None, pump: bool = True) -> None:
        """One message; flags and size may be forced to anything."""
        if flags is None:
            flags = V.VERSION | (V.FLAG_NEED_REPLY if need_reply else 0)
        if size is None:
            size = len(payload)
        self.send_raw(HDR.pack(req, flags, size) + payload, fds)
        if pump and self.pump is not None:
            self.pump()

    def recv_reply(self, req: int) -> bytes:
        head = self._recv_exact(HDR.size)
        rreq, flags, size = HDR.unpack(head)
        if rreq != req:
            raise FrontendError(f"reply to {rreq}, expected {req}")
        if not flags & V.FLAG_REPLY or flags & V.FLAG_VERSION_MASK != V.VERSION:
            raise FrontendError(f"bad reply flags 0x{flags:x}")
        return self._recv_exact(size) if size else b""

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            data = self.sock.recv(n - len(buf))
            if not data:
                raise FrontendError("connection closed by the device")
            buf += data
        return buf

    def pending(self, wait: float = 0.0) -> bool:
        """True if the device sent something we have not read."""
        r, _, _ = select.select([self.sock], [], [], wait)
        return bool(r)

    # ---- requests ----

    def _get_u64(self, req: int) -> int:
        self.send(req)
        p = self.recv_reply(req)
        if len(p) != 8:
            raise FrontendError(f"reply of {len(p)} bytes to {req}")
        return U64.unpack(p)[0]

    def _set(self, req: int, payload: bytes, fds: Iterable[int] = (),
             need_reply: Optional[bool] = None) -> Optional[int]:
        """A request without a reply body; with need_reply (REPLY_ACK), wait
        for the ack and return it (0 is success)."""
        if need_reply is None:
            need_reply = req in self.ack_always
        self.send(req, payload, fds, need_reply=need_reply)
        # a device answers need_reply only once REPLY_ACK is negotiated
        if not need_reply or \
                not F.has(self.protocol_features, F.PROTOCOL_F_REPLY_ACK):
            return None
        p = self.recv_reply(req)
        if len(p) != 8:
            raise FrontendError(f"ack of {len(p)} bytes to {req}")
        self.acks += 1
        return U64.unpack(p)[0]

    def get_features(self) -> int:
        self.offered = self._get_u64(V.GET_FEATURES)
        return self.offered

    def set_features(self, f: int, **kw) -> Optional[int]:
        self.features = f
        return self._set(V.SET_FEATURES, U64.pack(f), **kw)

    def get_protocol_features(self) -> int:
        return self._get_u64(V.GET_PROTOCOL_FEATURES)

    def set_protocol_features(self, pf: int, **kw) -> Optional[int]:
        r = self._set(V.SET_PROTOCOL_FEATURES, U64.pack(pf), **kw)
        self.protocol_features = pf
        return r

    def get_queue_num(self) -> int:
        return self._get_u64(V.GET_QUEUE_NUM)

    def set_owner(self, **kw) -> Optional[int]:
        return self._set(V.SET_OWNER, b"", **kw)

    def reset_owner(self, **kw) -> Optional[int]:
        return self._set(V.RESET_OWNER, b"", **kw)

    def set_mem_table(self, regions: list[tuple[int, int, int, int]],
                      fds: list[int], **kw) -> Optional[int]:
        payload = struct.pack("<II", len(regions), 0) + \
            b"".join(REGION.pack(*r) for r in regions)
        return self._set(V.SET_MEM_TABLE, payload, fds, **kw)

    def set_memory(self, regions: list[GuestRegion], **kw) -> Optional[int]:
        self.regions = list(regions)
        return self.set_mem_table([r.region for r in regions],
                                  [r.fd for r in regions], **kw)

    def set_vring_num(self, i: int, num: int, **kw) -> Optional[int]:
        return self._set(V.SET_VRING_NUM, STATE.pack(i, num), **kw)

    def set_vring_base(self, i: int, base: int, **kw) -> Optional[int]:
        return self._set(V.SET_VRING_BASE, STATE.pack(i, base), **kw)

    def set_vring_addr(self, i: int, desc: int, used: int, avail: int,
                       flags: int = 0, log: int = 0, **kw) -> Optional[int]:
        """User addresses, as QEMU sends them."""
        return self._set(V.SET_VRING_ADDR,
                         ADDR.pack(i, flags, desc, used, avail, log), **kw)

    def set_log_base(self, size: int, fd: int, offset: int = 0) -> None:
        """The dirty log, as QEMU sends it with LOG_SHMFD: the device's
        empty reply is awaited."""
        self.send(V.SET_LOG_BASE, V.LOG.pack(size, offset), [fd])
        if self.recv_reply(V.SET_LOG_BASE) != b"":
            raise FrontendError("SET_LOG_BASE reply has a payload")

    def get_vring_base(self, i: int) -> int:
        self.send(V.GET_VRING_BASE, STATE.pack(i, 0))
        p = self.recv_reply(V.GET_VRING_BASE)
        if len(p) != 8:
            raise FrontendError(f"GET_VRING_BASE reply of {len(p)} bytes")
        idx, base = STATE.unpack(p)
        if idx != i:
            raise FrontendError(f"GET_VRING_BASE reply for ring {idx}")
        return base

    def _vring_fd(self, req: int, i: int, fd: Optional[int], **kw):
        v = i | (V.VRING_NOFD if fd is None else 0)
        return self._set(req, U64.pack(v), [] if fd is None else [fd], **kw)

    def set_vring_kick(self, i: int, fd: Optional[int], **kw):
        return self._vring_fd(V.SET_VRING_KICK, i, fd, **kw)

    def set_vring_call(self, i: int, fd: Optional[int], **kw):
        return self._vring_fd(V.SET_VRING_CALL, i, fd, **kw)

    def set_vring_err(self, i: int, fd: Optional[int], **kw):
        return self._vring_fd(V.SET_VRING_ERR, i, fd, **kw)

    def set_vring_enable(self, i: int, on: bool, **kw) -> Optional[int]:
        return self._set(V.SET_VRING_ENABLE, STATE.pack(i, int(on)), **kw)

    # ---- whole sequences ----

    def gpa_to_user(self, gpa: int, length: int = 1) -> int:
        for r in self.regions:
            if r.contains(gpa, length):
                return r.gpa_to_user(gpa)
        raise FrontendError(f"guest address 0x{gpa:x} is in no region")

    def _eventfd(self, table: dict[int, int], i: int) -> int:
        if i in table:
            os.close(table[i])
        table[i] = eventfd()
        return table[i]

    def negotiate(self, regions: list[GuestRegion], layout=None,
                  want: Optional[int] = None,
                  protocol: int = F.PROTOCOL_OFFER,
                  style: str = "qemu10", nrings: int = 2,
                  base: int = 0) -> int:
        """The message sequence QEMU's vhost-user net sends from connecting
        to running (hw/virtio/vhost.c vhost_dev_init / vhost_dev_start,
        hw/virtio/vhost-user.c vhost_user_backend_init). Returns the acked
        features.

        Both styles send SET_VRING_CALL then SET_VRING_ERR per ring at init
        (vhost_virtqueue_init). style "qemu72" asks REPLY_ACK for
        SET_MEM_TABLE only; "qemu10" also for SET_FEATURES and
        SET_VRING_ENABLE (an approximation of newer QEMUs waiting on more
        requests; the device must answer whichever carry need_reply).
        """
        if layout is None:
            layout = SplitLayout(regions[0].guest_addr, 256, nrings)
        self.ack_always = {V.SET_MEM_TABLE}
        if style == "qemu10":
            self.ack_always |= {V.SET_FEATURES, V.SET_VRING_ENABLE}
        # vhost_user_backend_init
        offered = self.get_features()
        if F.has(offered, F.VHOST_USER_F_PROTOCOL_FEATURES):
            pf = self.get_protocol_features() & protocol
            self.set_protocol_features(pf)
            if F.has(pf, F.PROTOCOL_F_MQ):
                if self.get_queue_num() < nrings // 2:
                    raise FrontendError("device has too few queues")
        # vhost_dev_init
        self.set_owner()
        self.get_features()
        for i in range(nrings):
            self.set_vring_call(i, self._eventfd(self.call, i))
            self.set_vring_err(i, self._eventfd(self.err, i))
        # vhost_dev_start
        if want is None:
            want = offered & ~F.bit(F.LOG_ALL)   # QEMU sets it only to migrate
        acked = (offered & want) | \
            (offered & F.bit(F.VHOST_USER_F_PROTOCOL_FEATURES))
        self._check_ack(self.set_features(acked), "SET_FEATURES")
        self._check_ack(self.set_memory(regions), "SET_MEM_TABLE")
        for i in range(nrings):
            desc, avail, used = layout.addresses(i)
            q = layout.queue_size
            self.set_vring_num(i, q)
            self.set_vring_base(i, base)
            self.set_vring_addr(i, self.gpa_to_user(desc, 16 * q),
                                self.gpa_to_user(used, 6 + 8 * q),
                                self.gpa_to_user(avail, 6 + 2 * q))
            self.set_vring_kick(i, self._eventfd(self.kick, i))
            self.set_vring_call(i, self._eventfd(self.call, i))
        if F.has(acked, F.VHOST_USER_F_PROTOCOL_FEATURES):
            for i in range(nrings):
                self._check_ack(self.set_vring_enable(i, True),
                                "SET_VRING_ENABLE")
        return acked

    def stop(self, nrings: int = 2) -> list[int]:
        """vhost_dev_stop: disable, then GET_VRING_BASE each ring."""
        if F.has(self.features, F.VHOST_USER_F_PROTOCOL_FEATURES):
            for i in range(nrings):
                self.set_vring_enable(i, False)
        return [self.get_vring_base(i) for i in range(nrings)]

    @staticmethod
    def _check_ack(r: Optional[int], what: str) -> None:
        if r:
            raise FrontendError(f"{what} failed: {r}")

    def kick_ring(self, i: int) -> None:
        os.eventfd_write(self.kick[i], 1)

    def close(self) -> None:
        for table in (self.kick, self.call, self.err):
            for fd in table.values():
                os.close(fd)
            table.clear()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
