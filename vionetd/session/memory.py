"""Run by a session: the guest's memory and the dirty log, for the workers.

The VMM shares the guest's memory as files (SET_MEM_TABLE: one fd per
region) and, while migrating, a dirty log to mark the pages the device
writes (SET_LOG_BASE, SET_LOG_FD's eventfd to signal it). The session keeps
the fds so that a replaced worker can map them again (restore()), and sends
each worker every change. It never maps them itself.

Every fd kept here is closed when it is replaced or forgotten.
"""
import os

from vionetd import control, fdkind
from vionetd import vionetd_pb2 as pb


class Memory:
    def __init__(self, workers):
        self.workers = workers
        self.table = None                      # (regions, fds)
        self.dirty_log = None                  # (size, offset, fd): SET_LOG_BASE
        self.log_notify = None                 # SET_LOG_FD's eventfd

    # ---- the memory table -------------------------------------------------

    def same(self, regions, fds):
        """The table we have, each region backed by the same file."""
        if not self.table or list(regions) != self.table[0]:
            return False
        try:
            return all(same_file(a, b) for a, b in zip(fds, self.table[1]))
        except OSError:
            return False

    def set_table(self, regions, fds):
        """A new table (the caller stopped the rings that use it): every
        worker remaps."""
        if self.table:
            control.close_fds(self.table[1])
        self.table = (list(regions), list(fds))
        for w in self.workers.workers:
            self._send_table(w)

    def _send_table(self, w):
        regions, fds = self.table
        msg = pb.MemTable(regions=[pb.Region(guest_addr=r.guest_addr, size=r.size,
                                             user_addr=r.user_addr, mmap_offset=r.mmap_offset)
                                   for r in regions])
        self.workers.send(w, fds, mem_table=msg)

    # ---- the dirty log ----------------------------------------------------

    def set_log(self, size, offset, fd):
        """The VMM starts (or resizes) its dirty log: every worker maps it."""
        if self.dirty_log:
            os.close(self.dirty_log[2])
        self.dirty_log = (size, offset, fd)
        for w in self.workers.workers:
            self._send_log(w)

    def set_log_notify(self, fd):
        if self.log_notify is not None:
            os.close(self.log_notify)
        self.log_notify = fd
        if self.dirty_log:
            for w in self.workers.workers:
                self._send_log(w)

    def _send_log(self, w):
        size, offset, fd = self.dirty_log
        fds = [fd] + ([self.log_notify] if self.log_notify is not None else [])
        self.workers.send(w, fds, dirty_log=pb.DirtyLog(size=size, offset=offset,
                                                         has_notify=len(fds) > 1))

    # ---- both -------------------------------------------------------------

    def restore(self, w):
        """A new worker maps what its predecessor had."""
        if self.table:
            self._send_table(w)
        if self.dirty_log:
            self._send_log(w)

    def forget(self):
        """The device was reset: workers unmap, fds are closed."""
        if self.table:
            control.close_fds(self.table[1])
            self.table = None
            self.workers.send_all(mem_table=pb.MemTable())
        if self.dirty_log:
            os.close(self.dirty_log[2])
            self.dirty_log = None
            self.workers.send_all(dirty_log=pb.DirtyLog())
        if self.log_notify is not None:
            os.close(self.log_notify)
            self.log_notify = None

    def shrunk(self):
        """Why the workers cannot map what they were given, or None: a guest
        memory or dirty log file shrank under its mapping (a worker that
        touches it dies of SIGBUS, and so would the next)."""
        if self.table and any(fdkind.shrunk(fd, r.size, r.mmap_offset)
                              for r, fd in zip(*self.table)):
            return "a guest memory file shrank under its mapping"
        if self.dirty_log and fdkind.shrunk(self.dirty_log[2], *self.dirty_log[:2]):
            return "the dirty log file shrank under its mapping"
        return None


def same_file(a, b):
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
