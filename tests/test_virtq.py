"""The ring engine (csrc/virtq.c) against a guest simulated in a memfd.

Guest memory and rings are laid out by tests/guestmem.py exactly as a guest
driver would; the C functions are called directly through cffi.
"""
import os
import struct

import pytest

from vionetd._core import ffi, lib
from tests.guestmem import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, GuestMemory, SplitRing
from tests.vqglue import eventfd, eventfd_count, map_memory, setup_vq

MAXLEN = 12 + lib.FRAME_MAX


@pytest.fixture
def mem():
    m = GuestMemory(1 << 20)
    yield m
    m.close()


@pytest.fixture
def gm(mem):
    g = map_memory(mem)
    yield g
    lib.gmem_unmap_all(g)


def new_q(gm, ring, **kw):
    q = ffi.new("struct vq *")
    assert setup_vq(q, gm, ring, **kw) == lib.GM_OK
    return q


def chain_bytes(c):
    return b"".join(ffi.buffer(c.iov[i].iov_base, c.iov[i].iov_len)[:] for i in range(c.niov))


# ---- guest memory ----------------------------------------------------------

def test_gmem_translation_bounds(mem, gm):
    base = mem.gpa
    assert lib.gmem_gpa(gm, base, mem.size) != ffi.NULL
    assert lib.gmem_gpa(gm, base + mem.size - 1, 1) != ffi.NULL
    assert lib.gmem_gpa(gm, base + mem.size - 1, 2) == ffi.NULL      # runs past the end
    assert lib.gmem_gpa(gm, base - 1, 2) == ffi.NULL
    assert lib.gmem_gpa(gm, base + 8, 2**64 - 4) == ffi.NULL         # length wraps
    assert lib.gmem_gpa(gm, 2**64 - 1, 2) == ffi.NULL
    mem.write(base + 100, b"hello")
    p = lib.gmem_uva(gm, mem.uva + 100, 5)
    assert ffi.buffer(p, 5)[:] == b"hello"
    assert lib.gmem_uva(gm, base + 100, 5) == ffi.NULL                # gpa is not a uva


def test_gmem_map_refusals(mem):
    g = ffi.new("struct guest_mem *")
    try:
        assert lib.gmem_map(g, mem.fd, 0, 0, 0, 0) == lib.GM_RANGE
        assert lib.gmem_map(g, mem.fd, 2**64 - 4096, 8192, 0, 0) == lib.GM_RANGE
        assert lib.gmem_map(g, mem.fd, 0, 8192, 2**64 - 4096, 0) == lib.GM_RANGE
        # a file smaller than the mapping would SIGBUS later
        assert lib.gmem_map(g, mem.fd, 0, 2 * mem.size, 0x1000000, 0) == lib.GM_FILE
        assert lib.gmem_map(g, mem.fd, 0, mem.size, 0x10000000, 0) == lib.GM_OK
        # overlapping in gpa, then in uva space
        assert lib.gmem_map(g, mem.fd, 4096, 4096, 0x20000000, 0) == lib.GM_OVERLAP
        assert lib.gmem_map(g, mem.fd, 0x40000000, 4096, 0x10000000 + mem.size - 1, 0) == lib.GM_OVERLAP
        # a non-page-aligned offset works: the mapping is adjusted
        mem.write(mem.gpa + 4096 + 8, b"offset!")
        assert lib.gmem_map(g, mem.fd, 0x40000000, 4096, 0x40000000, 4096 + 8) == lib.GM_OK
        assert ffi.buffer(lib.gmem_gpa(g, 0x40000000, 7), 7)[:] == b"offset!"
        for k in range(2, lib.GMEM_MAX_REGIONS):
            assert lib.gmem_map(g, mem.fd, 0x80000000 * k, 4096, 0x80000000 * k, 0) == lib.GM_OK
        assert lib.gmem_map(g, mem.fd, 0x80000000 * 99, 4096, 0x80000000 * 99, 0) == lib.GM_FULL
    finally:
        lib.gmem_unmap_all(g)
    assert g.nregions == 0


# ---- setup -----------------------------------------------------------------

def test_setup_refusals(mem, gm):
    ring = SplitRing(mem, 8)
    q = ffi.new("struct vq *")
    args = [ring.desc_uva, ring.avail_uva, ring.used_uva, 0, 0, 1, -1]
    assert lib.vq_setup(q, gm, 6, *args) == lib.VQS_NUM
    assert lib.vq_setup(q, gm, 0, *args) == lib.VQS_NUM
    assert lib.vq_setup(q, gm, 65536, *args) == lib.VQS_NUM
    assert lib.vq_setup(q, gm, 8, ring.desc_uva + 8, ring.avail_uva, ring.used_uva, 0, 0, 1, -1) == lib.VQS_DESC
    assert lib.vq_setup(q, gm, 8, ring.desc_uva, ring.avail_uva + 1, ring.used_uva, 0, 0, 1, -1) == lib.VQS_AVAIL
    assert lib.vq_setup(q, gm, 8, ring.desc_uva, ring.avail_uva, ring.used_uva + 2, 0, 0, 1, -1) == lib.VQS_USED
    # used ring outside memory, and one that straddles its end
    end = mem.uva + mem.size
    assert lib.vq_setup(q, gm, 8, ring.desc_uva, ring.avail_uva, end + 4096, 0, 0, 1, -1) == lib.VQS_USED
    assert lib.vq_setup(q, gm, 8, ring.desc_uva, ring.avail_uva, end - 16, 0, 0, 1, -1) == lib.VQS_USED
    # a gpa is not a frontend address
    assert lib.vq_setup(q, gm, 8, ring.desc, ring.avail_uva, ring.used_uva, 0, 0, 1, -1) == lib.VQS_DESC
    assert lib.vq_pop(q, ffi.new("struct vq_chain *"), 0, MAXLEN) == 0   # not ready
    assert lib.vq_setup(q, gm, *[8] + args) == lib.GM_OK


# ---- good chains -----------------------------------------------------------

def test_chain_of_several_descriptors(mem, gm):
    ring = SplitRing(mem, 16)
    q = new_q(gm, ring)
    parts = [b"A" * 12, b"B" * 100, b"C" * 7, b"D" * 3000]
    head = ring.add_chain([ring.alloc_buffer(len(p), p) for p in parts])
    c = ffi.new("struct vq_chain *")
    assert lib.vq_pop(q, c, 0, MAXLEN) == 1
    assert c.head == head and c.niov == 4 and c.len == sum(map(len, parts))
    assert chain_bytes(c) == b"".join(parts)
    assert lib.vq_pop(q, c, 0, MAXLEN) == 0
    lib.vq_push(q, head, 0)
    assert ring.get_used() == []          # not published yet
    lib.vq_publish(q)
    assert ring.get_used() == [(head, 0)]
    assert lib.vq_last_avail(q) == ring.avail_idx


def test_indirect_table(mem, gm):
    ring = SplitRing(mem, 8)
    q = new_q(gm, ring)
    parts = [bytes([i]) * (50 + i) for i in range(20)]    # more entries than the ring
    head = ring.add_chain([ring.alloc_buffer(len(p), p) for p in parts], indirect=True)
    c = ffi.new("struct vq_chain *")
    assert lib.vq_pop(q, c, 0, MAXLEN) == 1
    assert c.head == head and c.niov == 20 and chain_bytes(c) == b"".join(parts)


def test_indirect_needs_feature(mem, gm):
    ring = SplitRing(mem, 8)
    q = new_q(gm, ring, indirect=False)
    head = ring.add_chain([ring.alloc_buffer(64, b"x" * 64)], indirect=True)
    c = ffi.new("struct vq_chain *")
    assert lib.vq_pop(q, c, 0, MAXLEN) == -lib.VQE_IND_UNNEGOTIATED
    lib.vq_publish(q)
    assert ring.get_used() == [(head, 0)]


def test_index_wraparound(mem, gm):
    ring = SplitRing(mem, 4, start=65533)
    q = new_q(gm, ring)
    c = ffi.new("struct vq_chain *")
    seen = []
    for k in range(11):            # crosses 65535 -> 0 and several ring laps
        data = struct.pack("<I", k) * 4
        head = ring.add_chain([ring.alloc_buffer(16, data, writable=True)])
        assert lib.vq_pop(q, c, 1, MAXLEN) == 1
        assert c.head == head and chain_bytes(c) == data
        lib.vq_push(q, c.head, k + 1)
        lib.vq_publish(q)
        seen += ring.get_used()
    assert [length for _, length in seen] == list(range(1, 12))
    assert ring.used_idx == (65533 + 11) & 0xFFFF == lib.vq_last_avail(q)


def test_avail_idx_too_far_ahead(mem, gm):
    ring = SplitRing(mem, 8)
    q = new_q(gm, ring)
    mem.put16(ring.avail + 2, 9)   # 9 entries in a ring of 8: impossible
    c = ffi.new("struct vq_chain *")
    assert lib.vq_pop(q, c, 0, MAXLEN) == -lib.VQE_AVAIL_IDX
    assert lib.vq_last_avail(q) == 0 and lib.vq_pending(q) == 0


# ---- bad chains: counted reason, returned with len 0, next one served --------

def _bad(ring, mem, kind):
    """Build one hostile chain; returns (head, expected error, returned?)."""
    good = ring.alloc_buffer(64, b"g" * 64)
    if kind == "loop":
        ring.write_desc(0, good[0], 64, DESC_F_NEXT, 1)
        ring.write_desc(1, good[0], 64, DESC_F_NEXT, 0)
        return 0, lib.VQE_LOOP
    if kind == "addr":
        ring.write_desc(0, mem.gpa + mem.size - 8, 64)
        return 0, lib.VQE_ADDR
    if kind == "wrap":
        ring.write_desc(0, 2**64 - 16, 0x100)          # addr + len wraps past 2^64
        return 0, lib.VQE_ADDR
    if kind == "toolong":
        ring.write_desc(0, good[0], 64, DESC_F_NEXT, 1)
        ring.write_desc(1, mem.gpa, 0x80000000)
        return 0, lib.VQE_TOO_LONG
    if kind == "write_on_tx":
        ring.write_desc(0, good[0], 64, DESC_F_WRITE)
        return 0, lib.VQE_WRITE_ON_TX
    if kind == "next_range":
        ring.write_desc(0, good[0], 64, DESC_F_NEXT, 8)
        return 0, lib.VQE_NEXT_RANGE
    if kind == "ind_next":
        table = mem.alloc(32)
        ring.write_desc(0, good[0], 64, table=table)
        ring.write_desc(0, table, 16, DESC_F_INDIRECT | DESC_F_NEXT, 1)
        return 0, lib.VQE_IND_NEXT
    if kind == "ind_in_table_next":
        # NEXT+INDIRECT inside a table is nesting too
        table = mem.alloc(32)
        ring.write_desc(0, good[0], 64, DESC_F_INDIRECT | DESC_F_NEXT, 1, table=table)
        ring.write_desc(0, table, 32, DESC_F_INDIRECT)
        return 0, lib.VQE_IND_NESTED
    if kind == "ind_nested":
        inner = mem.alloc(16)
        ring.write_desc(0, good[0], 64, table=inner)
        outer = mem.alloc(16)
        ring.write_desc(0, inner, 16, DESC_F_INDIRECT, table=outer)
        ring.write_desc(0, outer, 16, DESC_F_INDIRECT)
        return 0, lib.VQE_IND_NESTED
    if kind == "ind_len":
        table = mem.alloc(32)
        ring.write_desc(0, table, 24, DESC_F_INDIRECT)
        return 0, lib.VQE_IND_LEN
    if kind == "ind_addr":
        ring.write_desc(0, mem.gpa + mem.size - 16, 32, DESC_F_INDIRECT)
        return 0, lib.VQE_IND_ADDR
    if kind == "ind_loop":
        table = mem.alloc(32)
        ring.write_desc(0, good[0], 64, DESC_F_NEXT, 1, table=table)
        ring.write_desc(1, good[0], 64, DESC_F_NEXT, 0, table=table)
        ring.write_desc(0, table, 32, DESC_F_INDIRECT)
        return 0, lib.VQE_LOOP
    if kind == "ind_next_range":
        table = mem.alloc(32)
        ring.write_desc(0, good[0], 64, DESC_F_NEXT, 2, table=table)
        ring.write_desc(0, table, 32, DESC_F_INDIRECT)
        return 0, lib.VQE_NEXT_RANGE
    raise AssertionError(kind)


BAD_KINDS = ["loop", "addr", "wrap", "toolong", "write_on_tx", "next_range", "ind_next",
             "ind_in_table_next", "ind_nested", "ind_len", "ind_addr", "ind_loop",
             "ind_next_range"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_chain_refused_then_next_served(mem, gm, kind):
    ring = SplitRing(mem, 8)
    q = new_q(gm, ring)
    ring.free.remove(0)
    ring.free.remove(1)            # the hostile chains use descriptors 0 and 1
    head, err = _bad(ring, mem, kind)
    ring.post_head(head)
    good = ring.add_chain([ring.alloc_buffer(40, b"ok" * 20)])
    c = ffi.new("struct vq_chain *")
    assert lib.vq_pop(q, c, 0, 0x10000000) == -err
    assert ffi.string(lib.vq_err_name(err)) != b"unknown"
    assert lib.vq_pop(q, c, 0, 0x10000000) == 1
    assert c.head == good and chain_bytes(c) == b"ok" * 20
    lib.vq_publish(q)
    assert ring.get_used() == [(head, 0)]     # the bad one came back, empty


def test_read_only_on_rx(mem, gm):
    ring = SplitRing(mem, 8)
    q = new_q(gm, ring)
    bad = ring.add_chain([ring.alloc_buffer(64, writable=True), ring.alloc_buffer(64)])
    c = ffi.new("struct vq_chain *")
    assert lib.vq_pop(q, c, 1, MAXLEN) == -lib.VQE_READ_ON_RX
    lib.vq_publish(q)
    assert ring.get_used() == [(bad, 0)]


def test_head_out_of_range_not_returned(mem, gm):
    ring = SplitRing(mem, 8)
    q = new_q(gm, ring)
    ring.post_head(8)
    good = ring.add_chain([ring.alloc_buffer(10, b"0123456789")])
    c = ffi.new("struct vq_chain *")
    assert lib.vq_pop(q, c, 0, MAXLEN) == -lib.VQE_HEAD_RANGE
    assert lib.vq_pop(q, c, 0, MAXLEN) == 1 and c.head == good
    lib.vq_publish(q)
    assert ring.get_used() == []              # nothing to give back for head 8


def test_unpop_gives_chain_again(mem, gm):
    ring = SplitRing(mem, 8)
    q = new_q(gm, ring)
    h1 = ring.add_chain([ring.alloc_buffer(8, b"first!!!")])
    c = ffi.new("struct vq_chain *")
    assert lib.vq_pop(q, c, 0, MAXLEN) == 1
    lib.vq_unpop(q, 1)
    assert lib.vq_pending(q) == 1
    assert lib.vq_pop(q, c, 0, MAXLEN) == 1 and c.head == h1


# ---- notifications -----------------------------------------------------------

def _complete_one(ring, q, c):
    ring.add_chain([ring.alloc_buffer(8, b"x" * 8)])
    assert lib.vq_pop(q, c, 0, MAXLEN) == 1
    lib.vq_push(q, c.head, 0)
    return lib.vq_notify(q)


def test_notify_no_interrupt(mem, gm):
    ring = SplitRing(mem, 8)
    efd = eventfd()
    try:
        q = new_q(gm, ring, call_fd=efd)
        c = ffi.new("struct vq_chain *")
        assert _complete_one(ring, q, c) == 1 and eventfd_count(efd) == 1
        assert lib.vq_notify(q) == 0               # nothing new: no signal
        ring.set_no_interrupt(True)
        assert _complete_one(ring, q, c) == 0 and eventfd_count(efd) == 0
        ring.set_no_interrupt(False)
        assert _complete_one(ring, q, c) == 1 and eventfd_count(efd) == 1
        assert q.calls == 2
    finally:
        os.close(efd)


def test_notify_event_idx(mem, gm):
    ring = SplitRing(mem, 8)
    efd = eventfd()
    try:
        q = new_q(gm, ring, event_idx=True, call_fd=efd)
        c = ffi.new("struct vq_chain *")
        ring.set_no_interrupt(True)               # ignored with EVENT_IDX
        ring.set_used_event(0)
        assert _complete_one(ring, q, c) == 1      # used 0 -> 1 crosses event 0
        ring.set_used_event(3)                    # "tell me when entry 3 is used"
        assert _complete_one(ring, q, c) == 0      # used 2
        assert _complete_one(ring, q, c) == 0      # used 3
        assert _complete_one(ring, q, c) == 1      # used 4: passed 3
        assert _complete_one(ring, q, c) == 0      # event left behind: quiet
        assert eventfd_count(efd) == 2
        # several completions in one batch crossing the event: one signal
        ring.set_used_event(6)
        for _ in range(3):
            ring.add_chain([ring.alloc_buffer(8)])
            assert lib.vq_pop(q, c, 0, MAXLEN) == 1
            lib.vq_push(q, c.head, 0)
        assert lib.vq_notify(q) == 1 and eventfd_count(efd) == 1
    finally:
        os.close(efd)


def test_enable_notify_flags_and_race(mem, gm):
    ring = SplitRing(mem, 8)
    q = new_q(gm, ring)
    lib.vq_disable_notify(q)
    assert ring.used_flags == 1
    assert lib.vq_enable_notify(q) == 0
    assert ring.used_flags == 0
    ring.add_chain([ring.alloc_buffer(8)])
    assert lib.vq_enable_notify(q) == 1           # work arrived: do not sleep

    ring2 = SplitRing(mem, 8, start=100)
    q2 = new_q(gm, ring2, event_idx=True)
    lib.vq_disable_notify(q2)
    assert ring2.used_flags == 0                  # EVENT_IDX does not use the flag
    assert lib.vq_enable_notify(q2) == 0
    assert ring2.avail_event == 100


# ---- a hostile guest at random -------------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=100, deadline=None)
@given(descs=st.lists(st.tuples(st.integers(0, 2**64 - 1) | st.integers(0x100000, 0x110000),
                                st.integers(0, 2**32 - 1) | st.integers(0, 300),
                                st.integers(0, 7), st.integers(0, 20)),
                      min_size=16, max_size=16),
       heads=st.lists(st.integers(0, 20), min_size=1, max_size=16),
       write=st.booleans())
def test_random_rings_never_escape_memory(descs, heads, write):
    with GuestMemory(1 << 16) as mem:
        g = map_memory(mem)
        try:
            ring = SplitRing(mem, 16)
            q = new_q(g, ring)
            for i, (addr, length, flags, nxt) in enumerate(descs):
                ring.write_desc(i, addr, length, flags, nxt)
            for h in heads:
                ring.post_head(h)
            c = ffi.new("struct vq_chain *")
            lo = int(ffi.cast("uintptr_t", lib.gmem_gpa(g, mem.gpa, 1)))
            results = []
            for _ in range(len(heads)):
                r = lib.vq_pop(q, c, int(write), MAXLEN)
                results.append(r)
                if r == 1:
                    assert c.len <= MAXLEN and c.niov <= lib.VQ_IOV_MAX
                    for k in range(c.niov):
                        base = int(ffi.cast("uintptr_t", c.iov[k].iov_base))
                        assert lo <= base and base + c.iov[k].iov_len <= lo + mem.size
                    lib.vq_push(q, c.head, 0)
                else:
                    assert -lib.VQE_MAX < r < 0
            assert lib.vq_pop(q, c, int(write), MAXLEN) == 0
            lib.vq_publish(q)
            # every chain whose head was valid came back exactly once
            assert [i for i, _ in ring.get_used()] == [h for h in heads if h < 16]
        finally:
            lib.gmem_unmap_all(g)


# ---- the dirty log -----------------------------------------------------------

@pytest.fixture
def dlog():
    """A mapped dirty log of 64 bytes (512 pages, 2 MiB of guest memory)."""
    fd = os.memfd_create("dirty-log")
    os.ftruncate(fd, 4096)
    log = ffi.new("struct dirty_log *")
    log.notify_fd = -1
    assert lib.dlog_map(log, fd, 64, 0) == lib.GM_OK
    os.close(fd)                          # the mapping keeps it
    yield log
    lib.dlog_unmap(log)


def log_pages(log):
    data = ffi.buffer(log.bits, log.size)[:]
    return {8 * i + b for i, v in enumerate(data) for b in range(8) if v >> b & 1}


def test_dlog_marks_every_page_of_a_range_once(dlog):
    lib.dlog_mark(dlog, 0x1000 - 1, 2)            # straddles pages 0 and 1
    lib.dlog_mark(dlog, 0x5000, 3 * 4096 + 1)     # pages 5..8
    lib.dlog_mark(dlog, 0x5010, 8)                # already marked
    assert log_pages(dlog) == {0, 1, 5, 6, 7, 8}
    assert dlog.marked == 6 and dlog.outside == 0


def test_dlog_never_writes_past_its_end(dlog):
    lib.dlog_mark(dlog, 511 * 4096, 2 * 4096)     # last page, then beyond
    lib.dlog_mark(dlog, 2**64 - 8, 16)            # wraps
    lib.dlog_mark(dlog, 2**63, 1)
    assert log_pages(dlog) == {511}
    assert dlog.outside == 3


def test_dlog_map_refuses_a_short_file():
    fd = os.memfd_create("dirty-log")
    os.ftruncate(fd, 4096)
    log = ffi.new("struct dirty_log *")
    try:
        assert lib.dlog_map(log, fd, 8192, 0) == lib.GM_FILE
        assert lib.dlog_map(log, fd, 0, 0) == lib.GM_RANGE
        assert log.bits == ffi.NULL
    finally:
        os.close(fd)


def test_ring_marks_used_stores_and_written_buffers(mem, gm, dlog):
    ring = SplitRing(mem, 16)
    q = new_q(gm, ring)
    q.log = dlog
    q.log_used = 1
    q.log_used_gpa = ring.used
    buf = ring.alloc_buffer(3 * 4096, writable=True)
    head = ring.add_chain([buf])
    c = ffi.new("struct vq_chain *")
    assert lib.vq_pop(q, c, 1, MAXLEN) == 1
    lib.vq_log_write(q, c.iov, c.niov, 4096 + 10)     # the device wrote this much
    lib.vq_push(q, head, 4096 + 10)
    lib.vq_publish(q)
    want = {p for p in range(buf[0] // 4096, (buf[0] + 4096 + 10 - 1) // 4096 + 1)}
    want |= {ring.used // 4096, (ring.used + 4 + 8) // 4096}
    assert log_pages(dlog) == want
    # a ring that is not logging marks nothing
    q.log = ffi.NULL
    head = ring.add_chain([ring.alloc_buffer(100, writable=True)])
    assert lib.vq_pop(q, c, 1, MAXLEN) == 1
    lib.vq_push(q, head, 100)
    lib.vq_publish(q)
    assert log_pages(dlog) == want


def test_dlog_notify_fd_signalled_after_marking(mem, gm, dlog):
    ring = SplitRing(mem, 16)
    q = new_q(gm, ring)
    efd = eventfd()
    dlog.notify_fd = efd
    q.log = dlog
    q.log_used = 1
    q.log_used_gpa = ring.used
    try:
        lib.vq_publish(q)                   # nothing new marked beyond used->idx
        assert eventfd_count(efd) == 1
        lib.vq_publish(q)                   # the same page again: no new bit
        assert eventfd_count(efd) == 0
    finally:
        os.close(efd)
