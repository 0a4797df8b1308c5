"""Guest memory and split virtqueues, driver side, for tests.

GuestMemory is one memory region backed by a memfd, the way a VMM shares a
guest's RAM: it has a guest physical base (gpa) and a frontend virtual base
(uva, what vhost-user SET_VRING_ADDR speaks), and regions() gives exactly the
SET_MEM_TABLE fields. SplitRing lays a split virtqueue (virtio 1.2, 2.7) into
such memory and plays the guest driver: add chains (direct or indirect), make
them available, read the used ring back, and set or read the notification
fields (NO_INTERRUPT, used_event, used->flags, avail_event).

It also writes raw descriptors and avail entries, so tests can build the bad
chains a hostile guest would. Nothing here depends on the C core.
"""
import mmap
import os
import struct

DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1
USED_F_NO_NOTIFY = 1


class GuestMemory:
    """One region of guest RAM in a memfd, with a bump allocator."""

    def __init__(self, size, gpa=0x100000, uva=0x7F0000000000, name="guestmem"):
        self.size, self.gpa, self.uva = size, gpa, uva
        self.fd = os.memfd_create(name, 0)
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)
        self._next = 0

    def close(self):
        if self.map is not None:
            self.map.close()
            self.map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def regions(self):
        """SET_MEM_TABLE rows: (fd, guest_addr, size, user_addr, mmap_offset)."""
        return [(self.fd, self.gpa, self.size, self.uva, 0)]

    def alloc(self, size, align=16):
        """A fresh, zeroed range; returns its gpa."""
        off = (self._next + align - 1) & ~(align - 1)
        if off + size > self.size:
            raise MemoryError("guest memory exhausted")
        self._next = off + size
        self.map[off:off + size] = bytes(size)
        return self.gpa + off

    def _off(self, gpa, n):
        off = gpa - self.gpa
        if off < 0 or off + n > self.size:
            raise ValueError("gpa %#x+%d outside guest memory" % (gpa, n))
        return off

    def write(self, gpa, data):
        off = self._off(gpa, len(data))
        self.map[off:off + len(data)] = data

    def read(self, gpa, n):
        off = self._off(gpa, n)
        return bytes(self.map[off:off + n])

    def gpa_to_uva(self, gpa):
        return self.uva + (gpa - self.gpa)

    def u16(self, gpa):
        return struct.unpack("<H", self.read(gpa, 2))[0]

    def u32(self, gpa):
        return struct.unpack("<I", self.read(gpa, 4))[0]

    def put16(self, gpa, v):
        self.write(gpa, struct.pack("<H", v & 0xFFFF))


class SplitRing:
    """A split virtqueue in guest memory, driven as a guest driver would.

    Buffers for add_chain() are (gpa, len, writable) tuples; alloc_buffer()
    gives fresh ones. Indices are free running u16, as in the spec; start
    lets a test begin near the 65535 wrap (device base = start as well).
    """

    def __init__(self, mem, num, start=0):
        if num <= 0 or num & (num - 1):
            raise ValueError("num must be a power of 2")
        self.mem, self.num = mem, num
        self.desc = mem.alloc(16 * num, 16)
        self.avail = mem.alloc(6 + 2 * num, 2)
        self.used = mem.alloc(6 + 8 * num, 4)
        self.avail_idx = start & 0xFFFF
        self.last_used = start & 0xFFFF
        mem.put16(self.avail + 2, self.avail_idx)
        mem.put16(self.used + 2, self.last_used)
        self.free = list(range(num))
        self.chains = {}          # head -> descriptor indices it holds

    # addresses as vhost-user gives them (frontend virtual)
    @property
    def desc_uva(self):
        return self.mem.gpa_to_uva(self.desc)

    @property
    def avail_uva(self):
        return self.mem.gpa_to_uva(self.avail)

    @property
    def used_uva(self):
        return self.mem.gpa_to_uva(self.used)

    def alloc_buffer(self, size, data=None, writable=False):
        gpa = self.mem.alloc(max(size, 1), 16)
        if data is not None:
            self.mem.write(gpa, data)
        return (gpa, size, writable)

    # ---- raw access (for hostile chains)
    def write_desc(self, i, addr, length, flags=0, nxt=0, table=None):
        base = self.desc if table is None else table
        self.mem.write(base + 16 * i, struct.pack("<QIHH", addr & (2**64 - 1),
                                                  length & 0xFFFFFFFF, flags, nxt))

    def post_head(self, head, publish=True):
        """Put head in the next avail slot (head may be out of range)."""
        self.mem.put16(self.avail + 4 + 2 * (self.avail_idx % self.num), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        if publish:
            self.publish()

    def publish(self):
        self.mem.put16(self.avail + 2, self.avail_idx)

    # ---- chains
    def add_chain(self, bufs, indirect=False, publish=True):
        """Make bufs available as one chain; returns its head index."""
        if not bufs:
            raise ValueError("empty chain")
        if indirect:
            table = self.mem.alloc(16 * len(bufs), 16)
            for k, (gpa, n, w) in enumerate(bufs):
                more = k + 1 < len(bufs)
                self.write_desc(k, gpa, n, (DESC_F_WRITE if w else 0) |
                                (DESC_F_NEXT if more else 0), k + 1 if more else 0,
                                table=table)
            head = self.free.pop(0)
            self.write_desc(head, table, 16 * len(bufs), DESC_F_INDIRECT)
            self.chains[head] = [head]
        else:
            if len(bufs) > len(self.free):
                raise RuntimeError("ring full")
            idx = [self.free.pop(0) for _ in bufs]
            for k, (gpa, n, w) in enumerate(bufs):
                more = k + 1 < len(bufs)
                self.write_desc(idx[k], gpa, n, (DESC_F_WRITE if w else 0) |
                                (DESC_F_NEXT if more else 0), idx[k + 1] if more else 0)
            head = idx[0]
            self.chains[head] = idx
        self.post_head(head, publish)
        return head

    # ---- used ring
    @property
    def used_idx(self):
        return self.mem.u16(self.used + 2)

    def get_used(self):
        """New used entries as (id, len); their descriptors are freed."""
        out = []
        end = self.used_idx
        while self.last_used != end:
            e = self.used + 4 + 8 * (self.last_used % self.num)
            ident, length = struct.unpack("<II", self.mem.read(e, 8))
            out.append((ident, length))
            self.free.extend(self.chains.pop(ident, []))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out

    # ---- notification fields
    def set_no_interrupt(self, on):
        self.mem.put16(self.avail, AVAIL_F_NO_INTERRUPT if on else 0)

    def set_used_event(self, v):
        self.mem.put16(self.avail + 4 + 2 * self.num, v)

    @property
    def used_flags(self):
        return self.mem.u16(self.used)

    @property
    def avail_event(self):
        return self.mem.u16(self.used + 4 + 8 * self.num)
