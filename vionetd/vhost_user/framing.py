"""Run by a session (the unprivileged process that speaks vhost-user with one
VM interface's VMM): one message at a time off a vhost-user socket, and
replies onto it.

It knows the header and nothing of what a request means.

Invariants
  - read() never blocks: the socket is non-blocking and a message is
    reassembled across calls. It reads at most the rest of the current
    message (the 12-byte header, then exactly `size` bytes), so it never
    reads into the next message and every fd received (SCM_RIGHTS, at most
    MAX_FDS) belongs to the message being read.
  - A header with a bad version, the reply flag, or a size over
    MAX_PAYLOAD is a ProtocolError as soon as it is complete; so is a
    connection that ends inside a message, or more than MAX_FDS fds.
  - The fds of a message being read are held here until it is complete,
    then handed out with it; close() closes those of an incomplete one.
  - A message still incomplete `timeout` seconds after its first byte
    makes overdue() true; the caller drops the connection.
  - A reply that does not fit the socket at once (a VMM that does not read
    its answers) is a ProtocolError.
"""
from __future__ import annotations

import errno
import socket
import time
from typing import NamedTuple, Optional

from vionetd.control import close_fds, fds_of
from vionetd.vhost_user.backend import ProtocolError
from vionetd.vhost_user.wire import (FLAG_REPLY, FLAG_VERSION_MASK, HDR,
                                     MAX_FDS, MAX_PAYLOAD, VERSION, request_name)

CMSG_SPACE = socket.CMSG_SPACE(MAX_FDS * 4)      # room for MAX_FDS ints


class Message(NamedTuple):
    """One complete request, and the fds that came with it (the caller's)."""
    req: int
    flags: int
    payload: bytes
    fds: list[int]


class Framing:
    """Message reassembly and replies on one connected SOCK_STREAM socket."""

    def __init__(self, sock: socket.socket, timeout: float):
        self.sock = sock
        self.timeout = timeout                  # seconds a message may take
        sock.setblocking(False)
        self._buf = bytearray()                 # the message being read
        self._fds: list[int] = []               # and the fds that came with it
        self._since: Optional[float] = None     # when its first byte came
        self.eof = False                        # the peer closed, between messages

    def read(self) -> Optional[Message]:
        """read() - read without blocking towards the next complete message

        Return: the message (its fds are the caller's), or None if it has
        not all come yet or the peer closed (then eof is true). Raises
        ProtocolError.
        """
        while not self.eof and len(self._buf) < self._want():
            if not self._fill():
                return None
        if self.eof:
            return None
        req, flags, _ = HDR.unpack_from(self._buf)
        msg = Message(req, flags, bytes(self._buf[HDR.size:]), self._fds)
        self._buf.clear()
        self._fds = []
        self._since = None
        return msg

    @property
    def pending(self) -> bool:
        """A message has begun and is still incomplete."""
        return self._since is not None

    def overdue(self, now: float) -> bool:
        """True if a message began more than `timeout` seconds before now
        and is still incomplete."""
        return self.pending and now - self._since > self.timeout

    def send(self, req: int, payload: bytes) -> None:
        """Send a reply to req at once, or raise ProtocolError."""
        try:
            self.sock.sendall(HDR.pack(req, VERSION | FLAG_REPLY,
                                       len(payload)) + payload)
        except (OSError, socket.timeout) as e:
            raise ProtocolError(f"{request_name(req)}: reply failed: {e}")

    def close(self) -> None:
        """Close the fds of a message not read whole."""
        close_fds(self._fds)

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
        """One non-blocking read of at most the rest of the current
        message. False if nothing was there."""
        try:
            data, anc, msg_flags, _ = self.sock.recvmsg(
                self._want() - len(self._buf), CMSG_SPACE, socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            if e.errno in (errno.ECONNRESET, errno.EPIPE) and not self._buf:
                self.eof = True
                return True
            raise ProtocolError(f"read failed: {e}")
        self._fds.extend(fds_of(anc))
        if msg_flags & socket.MSG_CTRUNC or len(self._fds) > MAX_FDS:
            raise ProtocolError(f"more than {MAX_FDS} file descriptors")
        if not data:
            if self._buf or self._fds:
                raise ProtocolError("connection closed inside a message")
            self.eof = True
            return True
        if self._since is None:
            self._since = time.monotonic()
        self._buf += data
        return True
