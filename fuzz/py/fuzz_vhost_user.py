#!/usr/bin/env python3
"""atheris target: the vhost-user message decoder and request handlers
(vionetd/vhost_user.py Connection), driven as the daemon drives it.

A Connection is made over one end of a socketpair with a fake Backend; the
other end plays the VMM. Input: u8 backend behaviour (bits: which Backend
methods refuse with BackendError, bit 6 for starting a ring (stopping is
never refused); bit 7: get_vring_base answers 70000), then records of u8
fd plan + u16 length + bytes: the bytes are sent as one chunk of the byte
stream (a message may span chunks or share one), with
the planned file descriptors (0-3 of them, each an eventfd, a memfd or a
pipe end) attached as SCM_RIGHTS. The VMM's end is then shut for writing
and the Connection is driven only through its surface: handle_readable()
whenever the socket is readable, until it returns False, raises
ProtocolError (the daemon drops the VMM), or the socket is not readable.
Contract: no exception but ProtocolError; no hang (the stream is complete,
then EOF); every fd received is closed or handed to the Backend (the fd
count of the process is the same after the Backend closed what it got).
"""
import logging
import os
import select
import socket
import struct
import sys

import atheris

with atheris.instrument_imports():
    from vionetd import features as F
    from vionetd import vhost_user as vu

OFFER = (1 << F.CSUM | 1 << F.GUEST_CSUM | 1 << F.MAC | 1 << F.MRG_RXBUF |
         1 << F.RING_INDIRECT_DESC | 1 << F.RING_EVENT_IDX | 1 << 32 |
         1 << F.HOST_USO | 1 << 11 | 1 << 12 | 1 << 7 | 1 << 8)


class FakeBackend(vu.Backend):
    def __init__(self, refuse):
        self.refuse = refuse
        self.fds = []

    def _maybe(self, bit):
        if self.refuse & (1 << bit):
            raise vu.BackendError("refused by the fake backend")

    def _keep(self, fd):
        if fd is not None:
            self.fds.append(fd)

    def get_features(self):
        return OFFER

    def set_features(self, features):
        self._maybe(0)

    def set_mem_table(self, regions, fds):
        self._maybe(1)
        self.fds.extend(fds)

    def get_vring_base(self, index):
        self._maybe(2)
        return 70000 if self.refuse & 0x80 else 7

    def set_vring_kick(self, index, fd):
        self._maybe(3)
        self._keep(fd)

    def set_vring_call(self, index, fd):
        self._maybe(4)
        self._keep(fd)

    def set_vring_err(self, index, fd):
        self._maybe(5)
        self._keep(fd)

    def set_log_base(self, size, offset, fd):
        self._keep(fd)

    def set_log_fd(self, fd):
        self._keep(fd)

    def ring_ready_changed(self, index, ready):
        # Starting may be refused; stopping is not (as the daemon's session):
        # Connection.close() lets the ProtocolError of a refused stop escape
        # (tests/test_fuzz_regressions.py, xfail until it is decided).
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


def test_one_input(data: bytes) -> None:
    if not data:
        return
    backend = FakeBackend(data[0])
    pos = 1
    before = open_fds()
    ours, vmm = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = vu.Connection(ours, backend, name="fuzz", timeout=1.0)
    sent = []
    try:
        while pos + 3 <= len(data):
            plan = data[pos]
            (n,) = struct.unpack_from("<H", data, pos + 1)
            pos += 3
            chunk = data[pos:pos + n]
            pos += n
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
        # As the daemon's loop: handle_readable() while the socket is
        # readable. The stream ends in EOF, so it ends in False or a
        # ProtocolError; the bound only turns a hang into a finding.
        for _ in range(10000):
            if not select.select([ours], [], [], 0)[0]:
                break
            try:
                if not conn.handle_readable():
                    break
            except vu.ProtocolError:
                break
        else:
            raise AssertionError("handle_readable() never reached the end of the stream")
    finally:
        conn.close()
        vmm.close()
        for fd in sent:
            os.close(fd)
        backend.close_all()
    after = open_fds()
    assert after == before, "fd leak: %d open before, %d after" % (before, after)


def main() -> None:
    logging.disable(logging.CRITICAL)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
