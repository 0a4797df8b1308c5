#!/usr/bin/env python3
"""atheris target: the vhost-user message decoder and request handlers
(vionetd/vhost_user/ Connection), driven as the daemon drives it.

A Connection is made over one end of a socketpair with a fake Backend; the
other end plays the VMM. Input: u8 backend behaviour (bits: which Backend
methods refuse with BackendError, bit 6 for starting a ring (stopping is
never refused); bit 7: get_vring_base answers 70000), then records of u8
fd plan + u16 length + bytes: the bytes are sent as one chunk of the byte
stream (a message may span chunks or share one), with
the planned file descriptors (0-3 of them, each an eventfd, a memfd or a
pipe end) attached as SCM_RIGHTS; then, optionally, one or two bytes too
few for a record: the first is the wait plan (WAIT_* below: which Backend
methods wait for a Reply, whether the answer is None, whether the VMM is
dropped at the first wait). The VMM's end is then shut for writing and the
Connection is driven only through its surface: handle_readable() whenever
the socket is readable and the Connection is not waiting; while it waits,
the harness answers the outstanding Reply (as a worker would), or closes
the Connection (as a session dropping its VMM), until handle_readable()
returns False, a ProtocolError ends it (raised, or given to resumed()),
or the socket is not readable.
Contract: no exception but ProtocolError; no hang (the stream is complete,
then EOF); never waiting without a Reply outstanding, never waiting after
resumed(); every fd received is closed or handed to the Backend (the fd
count of the process is the same after the Backend closed what it got).
"""
import os
import select
import socket
import struct

import atheris
import harness

with atheris.instrument_imports():
    from vionetd import features as F
    from vionetd import vhost_user as vu
    from vionetd.eventloop import Reply

OFFER = (1 << F.CSUM | 1 << F.GUEST_CSUM | 1 << F.MAC | 1 << F.MRG_RXBUF |
         1 << F.RING_INDIRECT_DESC | 1 << F.RING_EVENT_IDX | 1 << 32 |
         1 << F.HOST_USO | 1 << 11 | 1 << 12 | 1 << 7 | 1 << 8)


# The wait plan: which methods wait for a Reply (bits 0-5), how it is answered.
WAIT_FEATURES, WAIT_MEM, WAIT_BASE, WAIT_READY, WAIT_ENABLE, WAIT_FDS = range(6)
WAIT_NO_ANSWER = 1 << 6         # the Reply is set to None: the method refuses
WAIT_DROP = 1 << 7              # close the Connection at the first wait


class FakeBackend(vu.Backend):
    def __init__(self, refuse, wait):
        self.refuse = refuse
        self.wait = wait
        self.fds = []
        self.replies = []       # Replies handed out, in order

    def _maybe(self, bit):
        if self.refuse & (1 << bit):
            raise vu.BackendError("refused by the fake backend")

    def _keep(self, fd):
        if fd is not None:
            self.fds.append(fd)

    def _gate(self, bit, fn, *args):
        """fn(*args) now, or (wait plan bit set) after a Reply: a generator."""
        if not self.wait & (1 << bit):
            return fn(*args)
        return self._after_reply(fn, *args)

    def _after_reply(self, fn, *args):
        r = Reply()
        self.replies.append(r)
        if (yield r) is None:
            raise vu.BackendError("no answer")
        return fn(*args)

    def get_features(self):
        return OFFER

    def set_features(self, features):
        return self._gate(WAIT_FEATURES, self._maybe, 0)

    def set_mem_table(self, regions, fds):
        return self._gate(WAIT_MEM, self._take_mem, fds)

    def _take_mem(self, fds):       # after any wait, as the contract says
        self._maybe(1)
        self.fds.extend(fds)

    def get_vring_base(self, index):
        return self._gate(WAIT_BASE, self._base)

    def _base(self):
        self._maybe(2)
        return 70000 if self.refuse & 0x80 else 7

    def set_vring_kick(self, index, fd):
        return self._gate(WAIT_FDS, self._take, 3, fd)

    def set_vring_call(self, index, fd):
        return self._gate(WAIT_FDS, self._take, 4, fd)

    def set_vring_err(self, index, fd):
        return self._gate(WAIT_FDS, self._take, 5, fd)

    def _take(self, bit, fd):
        self._maybe(bit)
        self._keep(fd)

    def set_log_base(self, size, offset, fd):
        self._keep(fd)

    def set_log_fd(self, fd):
        self._keep(fd)

    def set_vring_enable(self, index, enabled):
        return self._gate(WAIT_ENABLE, lambda: None)

    def ring_ready_changed(self, index, ready):
        # Starting may be refused; stopping is not (as the daemon's session),
        # though a stop that waits may get no answer.
        return self._gate(WAIT_READY, self._ready, ready)

    def _ready(self, ready):
        if ready:
            self._maybe(6)

    def close_all(self):
        for fd in self.fds:
            os.close(fd)          # EBADF here would mean a double hand-over
        self.fds = []


def make_fd(kind, keep):
    """A new fd of the given kind; returns it (the other pipe end goes in keep)."""
    if kind == 0:
        return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    if kind == 1:
        fd = os.memfd_create("fuzz", os.MFD_CLOEXEC)
        os.ftruncate(fd, 65536)
        return fd
    r, w = os.pipe2(os.O_CLOEXEC)
    keep.append(w if kind == 2 else r)
    return r if kind == 2 else w


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def records(data):
    """The (fd plan, chunk) records after the behaviour byte, and the wait
    plan (the byte after them, if any; else 0)."""
    out, pos = [], 1
    while pos + 3 <= len(data):
        (n,) = struct.unpack_from("<H", data, pos + 1)
        out.append((data[pos], data[pos + 3:pos + 3 + n]))
        pos += 3 + n
    return out, (data[pos] if pos < len(data) else 0)


def drive(conn, backend, sock, ended):
    """As the daemon's loop: handle_readable() while the socket is readable
    and the Connection is not waiting; while it waits, answer its Reply (or
    return, and the caller drops it). The stream ends in EOF, so this ends
    in False or a ProtocolError; the bound only turns a hang into a
    finding."""
    for _ in range(10000):
        if ended:                   # resumed() with a ProtocolError
            return
        if conn.waiting:
            pending = [r for r in backend.replies if not r.done]
            assert pending, "waiting, but no Reply is outstanding"
            if backend.wait & WAIT_DROP:
                return
            calls = conn.resumed_calls
            pending[0].set(None if backend.wait & WAIT_NO_ANSWER else 1)
            assert conn.waiting or conn.resumed_calls == calls + 1, \
                "a message that waited ended without resumed()"
            continue
        if not select.select([sock], [], [], 0)[0]:
            return
        try:
            if not conn.handle_readable():
                return
        except vu.ProtocolError:
            return
    raise AssertionError("handle_readable() never reached the end of the stream")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    recs, wait = records(data)
    backend = FakeBackend(data[0], wait)
    before = open_fds()
    ours, vmm = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ended = []

    def resumed(error):
        assert not conn.waiting, "resumed() while still waiting"
        conn.resumed_calls += 1
        if error is not None:
            assert isinstance(error, vu.ProtocolError), repr(error)
            ended.append(error)
    conn = vu.Connection(ours, backend, name="fuzz", timeout=1.0, resumed=resumed)
    conn.resumed_calls = 0
    sent = []
    try:
        for plan, chunk in recs:
            if not chunk:
                continue
            fds = [make_fd((plan >> (2 + 2 * i)) % 3, sent) for i in range(plan & 3)]
            try:
                vmm.sendmsg([chunk], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                       struct.pack("%di" % len(fds), *fds))] if fds else [])
            finally:
                for fd in fds:          # the receiver has its own copies
                    os.close(fd)
        vmm.shutdown(socket.SHUT_WR)
        drive(conn, backend, ours, ended)
    finally:
        conn.close()
        vmm.close()
        for fd in sent:
            os.close(fd)
        backend.close_all()
    after = open_fds()
    assert after == before, "fd leak: %d open before, %d after" % (before, after)


if __name__ == "__main__":
    harness.run(test_one_input)
