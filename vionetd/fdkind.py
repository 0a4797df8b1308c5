"""Run by a session: what a VMM hands us as a file descriptor, checked before use.

vhost-user passes kick and call notifiers and guest memory as fds. A VMM can
pass anything instead: a pipe without a writer (every poll says "hang up"),
a full pipe (every write blocks), a socket, a file too short for the region
it claims to back (the worker's first touch past its end is SIGBUS). Each is
refused here, in the session, with a message that says what was wrong.

- a notifier must be an anonymous-inode file, as eventfd(2) makes them: the
  same (device, inode) as an eventfd of our own. Pipes, sockets, regular
  files and devices fail this. Other anonymous-inode kinds (timerfd,
  signalfd, epoll) pass it; on those a worker's 8-byte read or write fails
  and is handled as a failed ring, never a block: the notifier is made
  non-blocking here;
- guest memory must be a regular file (memfd, tmpfs, hugetlbfs) whose size
  covers mmap_offset + size, with mmap_offset page-aligned, since mmap(2)
  needs that.
"""
import os
import stat

PAGE = os.sysconf("SC_PAGE_SIZE")


class FdError(ValueError):
    pass


def _anon_inode():
    fd = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return st.st_dev, st.st_ino


# Learned at import, before a session confines itself (eventfd2 is not in
# its seccomp list).
ANON_INODE = _anon_inode()


def notifier(fd, what):
    """Check that fd is an eventfd-like notifier; make it non-blocking."""
    try:
        st = os.fstat(fd)
    except OSError as e:
        raise FdError("%s: fstat: %s" % (what, e.strerror))
    if (st.st_dev, st.st_ino) != ANON_INODE:
        raise FdError("%s is not an eventfd (%s)" % (what, describe(st)))
    os.set_blocking(fd, False)


def memory(fd, size, mmap_offset, what):
    """Check that fd can back size bytes of guest memory from mmap_offset."""
    try:
        st = os.fstat(fd)
    except OSError as e:
        raise FdError("%s: fstat: %s" % (what, e.strerror))
    if not stat.S_ISREG(st.st_mode):
        raise FdError("%s is not a memory file (%s)" % (what, describe(st)))
    if mmap_offset % PAGE:
        raise FdError("%s: mmap offset %#x is not page-aligned" % (what, mmap_offset))
    if mmap_offset + size > st.st_size:
        raise FdError("%s: offset %#x + size %#x is beyond the file's %#x bytes"
                      % (what, mmap_offset, size, st.st_size))


def shrunk(fd, size, mmap_offset):
    """True if a memory file no longer covers its region (it was truncated
    after we checked it)."""
    try:
        return mmap_offset + size > os.fstat(fd).st_size
    except OSError:
        return True


def describe(st):
    for test, name in ((stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISREG, "a regular file"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory")):
        if test(st.st_mode):
            return name
    return "mode %o" % st.st_mode
