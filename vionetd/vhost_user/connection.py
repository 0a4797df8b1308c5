"""Run by a session (the unprivileged process that speaks vhost-user with one
VM interface's VMM): the device side of one vhost-user connection.

The driver: read a message (framing.py), look its row up (requests.py),
call the handler, send its reply or ack, then report readiness changes
(rings.py), in that order, one message at a time. Each message's handling
is a generator that yields the Replies a waiting Backend method yields
(backend.py): a pending one suspends the message until it is set.

Invariants
  - Any protocol violation raises ProtocolError (from handle_readable, or
    given to `resumed` for a message that waited); the caller closes the
    connection (close()). Nothing we received is trusted.
  - Every fd received is handed to the Backend or closed here, also when
    a message is refused, fails, or is still suspended at close(). Fds
    with a message that takes none are closed at once (stray_fds) and the
    message handled.
  - While `waiting`, nothing more is read; the message resumes inside
    whatever sets its Reply, and the caller reads again after `resumed`.
  - close() is never called while the Connection itself is running a step.
"""
from __future__ import annotations

import logging
import socket
from typing import Callable, Optional

from vionetd import features as F
from vionetd.control import close_fds
from vionetd.vhost_user import checks
from vionetd.vhost_user import requests as R
from vionetd.vhost_user.backend import (Backend, BackendError, ProtocolError,
                                        Steps, call, call_nowait)
from vionetd.vhost_user.framing import Framing, Message
from vionetd.vhost_user.rings import RingTable
from vionetd.vhost_user.wire import FLAG_NEED_REPLY, MAX_QUEUE_PAIRS, U64, MemRegion

log = logging.getLogger("vionetd.vhost_user")

MAX_BATCH = 64          # messages handled per readable event


class Connection:
    """The device side of one vhost-user connection."""

    def __init__(self, sock: socket.socket, backend: Backend,
                 name: str = "vhost-user", timeout: float = 2.0,
                 queue_pairs: int = 1,
                 resumed: Optional[Callable[[Optional[ProtocolError]], None]] = None):
        if not 1 <= queue_pairs <= MAX_QUEUE_PAIRS:
            raise ValueError(f"queue pairs {queue_pairs} not in 1..{MAX_QUEUE_PAIRS}")
        self.sock, self.backend, self.name = sock, backend, name
        self.timeout = timeout                  # seconds a message may take
        self._framing = Framing(sock, timeout)
        self._resumed = resumed
        self.queue_pairs = queue_pairs
        self.rings = RingTable(queue_pairs)
        self.owner = False
        self.offered: Optional[int] = None      # last vmm_may_ack() of the offer
        self.features: Optional[int] = None     # acked by SET_FEATURES
        self.protocol_features = 0              # acked by SET_PROTOCOL_FEATURES
        self.mtu: Optional[int] = None          # accepted NET_SET_MTU
        self.regions: list[MemRegion] = []
        self.closed = False
        self._steps = Steps(self._finished)
        self.messages = 0
        self.stray_fds = 0                      # fds with messages that take none
        self.asked_queue_num = False            # GET_QUEUE_NUM came
        self.refusals_logged: set = set()       # requests.once_per_connection()

    # ---- what the session reads ----

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def waiting(self) -> bool:
        """A message waits for a Reply: do not call handle_readable()."""
        return self._steps.waiting

    @property
    def reply_ack(self) -> bool:
        return F.has(self.protocol_features, F.PROTOCOL_F_REPLY_ACK)

    @property
    def protocol_negotiated(self) -> bool:
        """VHOST_USER_F_PROTOCOL_FEATURES acked: rings start disabled."""
        return self.features is not None and \
            F.has(self.features, F.VHOST_USER_F_PROTOCOL_FEATURES)

    def translate_user(self, addr: int, length: int) -> Optional[tuple[int, int]]:
        """(region index, offset) of a user address range, or None."""
        return checks.translate(self.regions, addr, length)

    def user_to_guest(self, addr: int, length: int = 1) -> Optional[int]:
        """Guest physical address of a user address range, or None."""
        t = self.translate_user(addr, length)
        return None if t is None else self.regions[t[0]].guest_addr + t[1]

    def ring_layout_ok(self, i: int) -> bool:
        """All three parts of ring i lie in the memory table."""
        return checks.ring_fits(self.regions, self.rings[i])

    def running(self, i: int) -> bool:
        """Ring i is ready as last reported through ring_ready_changed."""
        return self.rings[i].reported

    def ring_enabled(self, i: int) -> bool:
        """Whether a running ring moves frames: with PROTOCOL_FEATURES acked
        only after SET_VRING_ENABLE 1; without, from its kick on ("Ring
        states" in vhost-user.rst). A running but disabled ring supplies
        no RX and takes and discards TX."""
        return self.rings[i].enabled or not self.protocol_negotiated

    @property
    def message_pending(self) -> bool:
        """A message has begun and is still incomplete (see overdue())."""
        return self._framing.pending

    def overdue(self, now: float) -> bool:
        """A message began more than `timeout` seconds before now and is
        still incomplete: the caller drops the connection."""
        return self._framing.overdue(now)

    # ---- the driver ----

    def handle_readable(self) -> bool:
        """handle_readable() - read and handle what the socket holds, without blocking

        Handles at most MAX_BATCH messages (one VMM must not keep its
        session from its other duties), and none while `waiting`.
        Return: False when the peer closed the connection between
        messages, else True (also when a message now waits). Raises
        ProtocolError.
        """
        if self._steps.waiting:
            return True
        try:
            for _ in range(MAX_BATCH):
                msg = self._framing.read()
                if msg is None:
                    return not self._framing.eof
                self.messages += 1
                if not self._steps.run(self._message(msg)):
                    return True
        except ProtocolError as e:
            raise ProtocolError(f"{self.name}: {e}") from None
        return True

    def _message(self, msg: Message):
        """One message: its handler, its reply or ack, then the readiness
        report. Its fds are closed at the end unless the Backend took them."""
        row = R.lookup(msg.req)
        try:
            if row.handler is None:
                R.unsupported(self, row, msg)
            else:
                yield from self._handle(row, msg)
            yield from self.report()
        finally:
            close_fds(msg.fds)

    def _handle(self, row: R.Row, msg: Message):
        """Parse the body, call the handler, send its reply or ack."""
        name, fds = row.name, msg.fds
        if fds and not row.fds:         # closed at once; the message may be good
            log.warning("%s: %s came with %d file descriptor(s); closed",
                        self.name, name, len(fds))
            self.stray_fds += len(fds)
            close_fds(fds)
        try:
            reply = yield from call(row.handler, self, row.body.parse(name, msg.payload), fds)
        except (R.Refused, BackendError) as e:
            R.failed(self, row, msg, e)
            return
        if fds:
            raise ProtocolError(f"{name}: {len(fds)} unexpected file descriptor(s)")
        if row.reply == R.ACK:
            self.ack(msg, True)
        else:
            self._framing.send(msg.req, reply if row.reply == R.PAYLOAD else b"")

    def ack(self, msg: Message, ok: bool) -> bool:
        """Send the REPLY_ACK answer if one was asked for; True if sent."""
        if msg.flags & FLAG_NEED_REPLY and self.reply_ack:
            self._framing.send(msg.req, U64.pack(0 if ok else 1))
            return True
        return False

    def report(self):
        """Tell the backend of every change of ring readiness (rings.edges())."""
        negotiated = self.features is not None and not self.closed
        for i, ready in self.rings.edges(self.regions, negotiated):
            try:
                yield from call(self.backend.ring_ready_changed, i, ready)
            except BackendError as e:
                raise ProtocolError(f"ring {i}: backend could not "
                                    f"{'start' if ready else 'stop'} it: {e}")

    def _finished(self, error: Optional[Exception]) -> None:
        """A message that waited has ended: tell `resumed`, with the
        ProtocolError that ended it (a bug is one too: the VMM is dropped,
        not the session)."""
        if error is not None and not isinstance(error, ProtocolError):
            log.error("%s: internal error: %s: %s", self.name, type(error).__name__,
                      error, exc_info=error)
            error = f"internal error: {type(error).__name__}: {error}"
        if error is not None:
            error = ProtocolError(f"{self.name}: {error}")
        if self._resumed is not None:
            self._resumed(error)

    def close(self) -> None:
        """close() - end the connection

        A message still waiting is abandoned (its fds closed), every
        running ring is reported stopped (not waiting for the stop), the
        backend is told (disconnected()) and the socket closed.
        """
        if self.closed:
            return
        assert not self._steps.busy, "close() during a step of this Connection"
        self.closed = True
        try:
            self._steps.abandon()       # GeneratorExit: its fds are closed
            self._framing.close()
            for i, _ in self.rings.edges(self.regions, False):
                try:
                    call_nowait(self.backend.ring_ready_changed, i, False)
                except BackendError as e:     # closing anyway
                    log.warning("%s: ring %d: backend could not stop it: %s",
                                self.name, i, e)
            self.backend.disconnected()
        finally:
            self.sock.close()
