"""A test VMM: plays QEMU's part against the real daemon, through its socket.

TestVM = guest memory in a memfd (guestmem.GuestMemory) + the two split
rings of one queue pair laid out in it (guestmem.SplitRing: 0 RX, 1 TX) +
the vhost-user frontend (vmm.Frontend) that negotiates with the daemon.

    with TestVM(socket_path, want=features) as vm:
        vm.send(hdr, frame)            # guest TX: one chain, kick, wait for used
        vm.post_rx(n, size)            # guest RX buffers
        frames = vm.receive(count)     # [(vnet header fields, frame)], merged
"""
import os
import select
import struct
import time

from tests import guestmem, vmm
from vionetd import features

HDR = struct.Struct("<BBHHHHH")
F_MRG_RXBUF = 15


class _Region:
    """guestmem.GuestMemory as vmm.Frontend wants a region."""

    def __init__(self, mem):
        self.mem = mem
        self.fd = mem.fd
        self.guest_addr, self.size, self.user_addr = mem.gpa, mem.size, mem.uva
        self.region = (mem.gpa, mem.size, mem.uva, 0)

    def contains(self, gpa, length=1):
        return self.guest_addr <= gpa and gpa + length <= self.guest_addr + self.size

    def gpa_to_user(self, gpa):
        return self.user_addr + gpa - self.guest_addr


class _Layout:
    def __init__(self, rings):
        self.rings = rings
        self.queue_size = rings[0].num

    def addresses(self, i):
        r = self.rings[i]
        return r.desc, r.avail, r.used


class TestVM:
    __test__ = False   # not a pytest class

    def __init__(self, path, want=None, num=256, mem_size=64 << 20, base=0, style="qemu10",
                 listen=False):
        """A VMM on path: it connects, or with listen it listens there and
        takes the backend's connection (vionetd's client mode)."""
        self.mem = guestmem.GuestMemory(mem_size)
        self.rx = guestmem.SplitRing(self.mem, num, start=base)
        self.tx = guestmem.SplitRing(self.mem, num, start=base)
        self.fe = (vmm.Frontend.accept if listen else vmm.Frontend.connect)(path, timeout=10)
        self.features = self.fe.negotiate([_Region(self.mem)], _Layout([self.rx, self.tx]),
                                          want=want, style=style, base=base)
        self.rx_bufs = {}        # head -> [(gpa, size, writable)]
        self.rx_written = []     # (buffers, length) of every used RX chain read
        self.rx_pending = []

    @property
    def mergeable(self):
        return bool(self.features >> F_MRG_RXBUF & 1)

    def close(self):
        self.fe.close()
        self.mem.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- migration ----------------------------------------------------------

    def log_size(self):
        """Bytes of dirty log that cover this guest's memory (a bit per page)."""
        pages = -(-(self.mem.gpa + self.mem.size) // 4096)
        return -(-pages // 64) * 8

    def start_logging(self, log_fd, size=None, log_addrs=None):
        """What QEMU does on a running device when migration starts: the
        log (SET_LOG_BASE), LOG_ALL, then each ring's addresses again with
        the log flag and its used ring's guest address (log_addrs overrides)."""
        fe = self.fe
        fe.set_log_base(self.log_size() if size is None else size, log_fd)
        fe.set_features(self.features | 1 << features.LOG_ALL)
        for i, ring in enumerate((self.rx, self.tx)):
            log = ring.used if log_addrs is None else log_addrs[i]
            fe.set_vring_addr(i, fe.gpa_to_user(ring.desc), fe.gpa_to_user(ring.used),
                              fe.gpa_to_user(ring.avail), flags=1, log=log)
        fe.get_features()          # a round trip: everything above was handled

    # ---- TX: guest to tap ---------------------------------------------------

    def post_tx(self, frame, hdr=(0, 0, 0, 0, 0, 0, 0), split=None, indirect=False, kick=True):
        """Make one TX chain of header + frame available; returns its head.
        split: lengths to cut header+frame into (several descriptors)."""
        data = HDR.pack(*hdr) + frame
        pieces = split or [len(data)]
        bufs, off = [], 0
        for n in pieces + ([len(data) - sum(pieces)] if sum(pieces) < len(data) else []):
            bufs.append(self.tx.alloc_buffer(n, data[off:off + n]))
            off += n
        head = self.tx.add_chain(bufs, indirect=indirect)
        if kick:
            self.fe.kick_ring(1)
        return head

    def wait_used(self, ring, count, timeout=10.0):
        """The next count used entries of ring (0 RX, 1 TX), waiting at most timeout."""
        r = self.rx if ring == 0 else self.tx
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            got += r.get_used()
            if len(got) >= count:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("ring %d: %d of %d used entries" % (ring, len(got), count))
            call = self.fe.call.get(ring)
            if call is not None:
                select.select([call], [], [], min(left, 0.05))
                try:
                    os.eventfd_read(call)
                except BlockingIOError:
                    pass
            else:
                time.sleep(0.01)
        return got

    def send(self, frame, hdr=(0, 0, 0, 0, 0, 0, 0), **kw):
        head = self.post_tx(frame, hdr, **kw)
        used = self.wait_used(1, 1)
        assert used[0][0] == head, "used entry for another chain"
        return used[0]

    # ---- RX: tap to guest ---------------------------------------------------

    def post_rx(self, count, size=2048, per_chain=1, indirect=False, kick=True):
        """count chains of per_chain writable buffers of size bytes each."""
        for _ in range(count):
            bufs = [self.rx.alloc_buffer(size, writable=True) for _ in range(per_chain)]
            head = self.rx.add_chain(bufs, indirect=indirect)
            self.rx_bufs[head] = bufs
        if kick:
            self.fe.kick_ring(0)

    def _chain_bytes(self, head, length):
        self.rx_written.append((self.rx_bufs[head], length))
        out = b""
        for gpa, size, _ in self.rx_bufs.pop(head):
            take = min(size, length - len(out))
            if take <= 0:
                break
            out += self.mem.read(gpa, take)
        return out

    def receive(self, count, timeout=10.0, multicast=False):
        """count frames from the RX ring: [(hdr tuple, frame bytes)], with
        mergeable buffers put back together by num_buffers. IP multicast
        frames (01:00:5e, 33:33: IGMP and MLD reports that the test's own
        namespaces send now and then) are read and left out, unless
        multicast (router advertisements go to 33:33:00:00:00:01)."""
        frames = []
        pending = self.rx_pending        # used entries seen but not yet read
        deadline = time.monotonic() + timeout
        while len(frames) < count:
            if not pending:
                pending += self.wait_used(0, 1, max(0.01, deadline - time.monotonic()))
            head, length = pending.pop(0)
            data = self._chain_bytes(head, length)
            hdr = HDR.unpack(data[:12])
            nbuf = hdr[6] if self.mergeable else 1
            assert nbuf >= 1, "num_buffers 0"
            for _ in range(nbuf - 1):
                if not pending:
                    pending += self.wait_used(0, 1, max(0.01, deadline - time.monotonic()))
                h, n = pending.pop(0)
                data += self._chain_bytes(h, n)
            if multicast or data[12:15] != b"\x01\x00\x5e" and data[12:14] != b"\x33\x33":
                frames.append((hdr, data[12:]))
        return frames
