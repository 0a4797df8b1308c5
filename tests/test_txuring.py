"""The TX worker's io_uring (csrc/txuring.c): restricted to WRITEV.

io_uring requests do not pass through seccomp, so the ring itself must refuse
everything a writev() system call could not do. The frames it writes are
tested with the TX path (tests/test_datapath.py and test_datapath_tap.py run
every TX test both with and without it).
"""
import errno
import os

import pytest

from vionetd._core import ffi, lib

# include/uapi/linux/io_uring.h (enum io_uring_op)
IORING_OP_NOP = 0
IORING_OP_READV = 1
IORING_OP_SENDMSG = 9
IORING_OP_OPENAT = 18
IORING_OP_CLOSE = 19
IORING_OP_READ = 22
IORING_OP_WRITE = 23
IORING_OP_SOCKET = 45


@pytest.fixture
def ring():
    u = lib.txu_open()
    assert u != ffi.NULL, "io_uring: %s" % os.strerror(ffi.errno)
    yield u
    lib.txu_close(u)


@pytest.mark.parametrize("op", [IORING_OP_NOP, IORING_OP_READV, IORING_OP_SENDMSG,
                                IORING_OP_OPENAT, IORING_OP_CLOSE, IORING_OP_READ,
                                IORING_OP_WRITE, IORING_OP_SOCKET])
def test_every_operation_but_writev_is_refused(ring, op):
    assert lib.txu_try_opcode(ring, op) == -errno.EACCES


def test_writev_reaches_the_kernel(ring):
    # fd -1: the request passed the restriction and failed on the fd
    assert lib.txu_try_opcode(ring, lib.TXU_OP_WRITEV) == -errno.EBADF


def test_ring_fd_is_an_io_uring(ring):
    assert os.readlink("/proc/self/fd/%d" % lib.txu_fd(ring)) == "anon_inode:[io_uring]"
