"""Glue between tests/guestmem.py (the guest's view) and the C ring engine.

Maps a GuestMemory into a struct guest_mem the way the worker does after
SET_MEM_TABLE, and sets up a struct vq (inside a tx_ctx/rx_ctx or alone)
from a SplitRing the way SET_VRING_NUM/ADDR/BASE do.
"""
import os

from vionetd._core import ffi, lib


def map_memory(mem, gm=None):
    gm = gm if gm is not None else ffi.new("struct guest_mem *")
    for fd, gpa, size, uva, off in mem.regions():
        rc = lib.gmem_map(gm, fd, gpa, size, uva, off)
        assert rc == lib.GM_OK, rc
    return gm


def setup_vq(q, gm, ring, base=None, event_idx=False, indirect=True, call_fd=-1):
    return lib.vq_setup(q, gm, ring.num, ring.desc_uva, ring.avail_uva, ring.used_uva,
                        ring.avail_idx if base is None else base,
                        int(event_idx), int(indirect), call_fd)


def eventfd():
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def eventfd_count(fd):
    """How many signals since the last read (0 if none)."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def counters(ctx):
    """{name: value} of every nonzero counter of a tx_ctx/rx_ctx."""
    out = {}
    for i in range(lib.DC_MAX):
        if ctx.cnt[i]:
            out[ffi.string(lib.dp_counter_name(i)).decode()] = ctx.cnt[i]
    return out
