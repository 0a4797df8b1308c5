"""Run by every session, worker and the metrics process: what it gives up before it meets a peer.

Sessions and workers are forked by the zygote (zygote.py), in the
network and IPC namespaces it made (unshare_namespaces), and apply this
right after the fork, before they read a byte from a VMM or map a guest
(and the metrics process, forked by the parent, before it accepts an HTTP
client), in this order (each step needs the privileges the next one drops):

1. close every fd but those it keeps (its channels, a session's listening
   socket); stdin, stdout and stderr become /dev/null, so that nothing it
   writes reaches the parent's terminal or journal (its diagnostics go over
   its channel) and no fd it receives later takes their numbers;
2. (the zygote's namespaces: no interface but a down loopback, no abstract
   socket, no System V object within reach);
3. chroot to an empty directory, so a path means nothing;
4. drop to the VM's unprivileged uid and gid (numbers: the parent resolved
   a configured name, or took them from the range, uids.py; they need no
   passwd entry), with no supplementary groups;
5. die with the parent (PR_SET_PDEATHSIG; after step 4, since changing
   credentials clears it), and make sure the parent is still the one that
   forked us (it may have died before the call);
6. rlimits: no new processes, no core dumps, no files, and descriptors
   as many as the process needs (nofile() below);
7. PR_SET_NO_NEW_PRIVS, then a seccomp allow-list in the spirit of
   pledge("stdio recvfd"): nothing that opens, creates sockets, connects,
   executes, forks, traces or signals another process; fcntl only with the
   commands that read or set fd flags (F_SETOWN and F_SETSIG would let it
   aim SIGIO at another process); mmap and mprotect never with PROT_EXEC.

The list is COMMON below (what the interpreter and the channels need) plus
the calls of the process's own code, declared next to that code:
session/main.py's SYSCALLS, worker.syscalls(role) (an rx worker's list
lacks the tx worker's io_uring_enter) and metrics.SYSCALLS, each call with
its reason. ioctl is allowed only as TCGETS on fd 2 (isatty), and, in a
session, FIONBIO.

A call outside the list traps: csrc/sigsys.c reports its number over the
process's channel, then the process dies by SIGSYS; the receiver logs both
and the process is replaced.
"""
import ctypes
import errno
import os
import pwd
import resource
import signal
import socket

import pyseccomp as seccomp

from vionetd.core import lib

# name: why every confined process needs it
COMMON = {
    # its channel (control.py, sigsys.c)
    "recvmsg": "messages and the fds they carry (control.recv)",
    "sendto": "messages without fds (control.send); the SIGSYS report (sigsys.c)",
    "recvfrom": "Python's socket.recv",
    "close": "fds replaced by newer ones",
    "getsockopt": "Python's socket layer queries the socket type",
    "fcntl": "Python reads and sets fd flags (only F_GETFD/F_SETFD/F_GETFL/F_SETFL)",
    "poll": "the data path's wait for its kick, tap and channel (rxpath.c, txpath.c)",
    # the interpreter's memory
    "mmap": "malloc (never PROT_EXEC)",
    "munmap": "free",
    "mprotect": "glibc malloc arenas (never PROT_EXEC)",
    "madvise": "glibc malloc trimming",
    "mremap": "glibc realloc of large blocks",
    "brk": "malloc",
    # the interpreter
    "futex": "the GIL and other locks",
    "rt_sigaction": "Python's signal machinery; the SIGSYS handler (sigsys.c)",
    "rt_sigprocmask": "glibc raise() blocks signals around tgkill",
    "rt_sigreturn": "return from a signal handler",
    "sigaltstack": "Python's faulthandler stack",
    "getpid": "logging; raise()",
    "gettid": "raise()",
    "clock_gettime": "time.monotonic where the vDSO is not used",
    "clock_nanosleep": "time.sleep",
    "nanosleep": "time.sleep on older glibc",
    "restart_syscall": "a poll interrupted by a signal",
    "getrandom": "hash randomisation of late-created objects",
    "fstat": "Python checks fds it wraps",
    "newfstatat": "Python checks fds it wraps (fstat through fstatat)",
    "lseek": "Python's buffered stderr",
    "ioctl": "Python's isatty() on stderr: TCGETS on fd 2 only (tun takes the host-wide "
             "RTNL lock for any ioctl on a tap); FIONBIO where a process allows it",
    "write": "Python's stderr (/dev/null: sandbox.close_fds)",
    "exit": "thread exit",
    "exit_group": "the end",
}

# tgkill is allowed only towards ourselves: raise(SIGSYS) in sigsys.c.
TGKILL = "tgkill"
TCGETS = 0x5401
FIONBIO = 0x5421
FCNTL_ALLOWED = (1, 2, 3, 4)      # F_GETFD, F_SETFD, F_GETFL, F_SETFL
PROT_EXEC = 0x4

STDERR = 2
_report_fd = -1           # the confined process's channel (enter's keep[0])
FORBIDDEN_TESTS = ("open", "socket", "connect", "execve", "fork", "ptrace", "kill",
                   "fcntl_setown", "mmap_exec", "io_uring_unrestricted", "io_uring_register",
                   "ioctl_tcgets")


def syscall_name(nr):
    try:
        return seccomp.resolve_syscall(seccomp.Arch.NATIVE, nr).decode()
    except (ValueError, TypeError, AttributeError, OSError):
        return "unknown"


def close_fds(keep):
    """Close every fd but keep; 0, 1 and 2 (unless kept) become /dev/null."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        if fd not in keep and fd != null:
            os.dup2(null, fd)
    keep = set(keep) | {0, 1, 2}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


# RLIMIT_NOFILE of a session of Q queue pairs: NOFILE_BASE + NOFILE_PER_PAIR * Q.
# It bounds the fds open and, since the kernel counts the fds a uid has in
# flight over SCM_RIGHTS against the sender's RLIMIT_NOFILE (ETOOMANYREFS
# beyond), also what the session may have sent to its workers and not yet
# seen them read. A session holds: stdio, its channel, epoll fd, listener
# and VMM connection, the memory table's up to MAX_FDS (8) fds and a new
# table's 8 while it replaces them, the dirty log and its notifier (2), a
# VMM message's 8 fds: 32 at most, doubled for margin (NOFILE_BASE). Per
# pair: the rx and tx workers' channels (2, and one replacing either), the
# 4 kick and call eventfds, and in flight towards each of the 2 workers a
# memory table (8), a dirty log (2) and a ring start (2): 7 + 24 = 31,
# rounded up to 32. A worker's needs do not grow with Q (its channel, tap,
# io_uring, two memory tables, log, kick, call: under 32): WORKER_NOFILE.
NOFILE_BASE = 64
NOFILE_PER_PAIR = 32
WORKER_NOFILE = 64


def nofile(queue_pairs):
    """RLIMIT_NOFILE of a session of queue_pairs pairs (see above)."""
    return NOFILE_BASE + NOFILE_PER_PAIR * queue_pairs


def identity(user):
    """(uid, gid) of a user name, looked up before the chroot."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise OSError(errno.ENOENT, "unknown user %s" % user) from None
    return pw.pw_uid, pw.pw_gid


def drop_privileges(ident, root):
    """Chroot to root, then become ident, a (uid, gid) pair of numbers."""
    uid, gid = ident
    if uid == 0 or gid == 0:
        raise OSError(errno.EPERM, "refusing to run a VM's process as root")
    os.makedirs(root, mode=0o755, exist_ok=True)
    if os.listdir(root):
        raise OSError(errno.ENOTEMPTY, "chroot directory %s is not empty" % root)
    os.chroot(root)
    os.chdir("/")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000


def unshare_namespaces():
    """New network and IPC namespaces, made by the zygote for all its
    children (bench/memory.py measures the cost; VIONETD_TEST_NO_NAMESPACES=1
    leaves them out, for that comparison). False if they were not made: the
    process may not (no CAP_SYS_ADMIN, as under rc.d/vionetd.service)."""
    if os.environ.get("VIONETD_TEST_NO_NAMESPACES") == "1":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET | CLONE_NEWIPC) == 0:
        return True
    if ctypes.get_errno() == errno.EPERM:
        return False            # no CAP_SYS_ADMIN (rc.d/vionetd.service)
    raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET|CLONE_NEWIPC)")


def limit_resources(files=WORKER_NOFILE):
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))


def prctl(option, value, what):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(%s)" % what)


def no_new_privs():
    prctl(38, 1, "PR_SET_NO_NEW_PRIVS")


def die_with_parent(parent):
    """SIGKILL when the parent dies, however it dies: a killed daemon
    leaves no session holding a VMM's connection or a worker holding a tap,
    so a new daemon can take both at once, and a stopped process (SIGSTOP)
    that reads nothing goes too. Called after the uid change, which clears
    the setting (prctl(2)); a parent that died before it is caught by
    getppid(), which is then no longer the pid that forked us."""
    prctl(1, signal.SIGKILL, "PR_SET_PDEATHSIG")
    if os.getppid() != parent:
        raise OSError(errno.ESRCH, "the parent (pid %d) has gone" % parent)


def seccomp_filter(calls, nonblocking_ioctl=False, any_tgkill=False):
    """COMMON and calls allowed, with the argument rules above; the rest
    traps. any_tgkill: the zygote's, under which each child's own filter
    points tgkill at the child itself."""
    f = seccomp.SyscallFilter(defaction=seccomp.TRAP)
    # A binary tree of syscall numbers rather than a list: every call of the
    # data path (write, writev, readv, ppoll) pays for the filter.
    f.set_attr(seccomp.Attr.CTL_OPTIMIZE, 2)
    for name in {**COMMON, **calls}:
        if name == "ioctl":
            f.add_rule(seccomp.ALLOW, name, seccomp.Arg(0, seccomp.EQ, STDERR),
                       seccomp.Arg(1, seccomp.EQ, TCGETS))
            if nonblocking_ioctl:
                f.add_rule(seccomp.ALLOW, name, seccomp.Arg(1, seccomp.EQ, FIONBIO))
        elif name == "fcntl":
            for cmd in FCNTL_ALLOWED:
                f.add_rule(seccomp.ALLOW, name, seccomp.Arg(1, seccomp.EQ, cmd))
        elif name in ("mmap", "mprotect"):
            f.add_rule(seccomp.ALLOW, name, seccomp.Arg(2, seccomp.MASKED_EQ, PROT_EXEC, 0))
        else:
            try:
                f.add_rule(seccomp.ALLOW, name)
            except (RuntimeError, ValueError, OSError):
                pass    # a call this architecture does not have
    if any_tgkill:
        f.add_rule(seccomp.ALLOW, TGKILL)
    else:
        f.add_rule(seccomp.ALLOW, TGKILL, seccomp.Arg(0, seccomp.EQ, os.getpid()))
    return f


def enter(calls, keep, ident, root, nonblocking_ioctl=False, files=WORKER_NOFILE):
    """Confine the calling process to COMMON + calls. keep: the fds it keeps
    (the first is its channel, where a forbidden call is reported); ident:
    the (uid, gid) it runs as; files: its RLIMIT_NOFILE. Raises
    OSError if any step fails: a process that cannot be confined must not run."""
    parent = os.getppid()
    close_fds(set(keep))
    f = seccomp_filter(calls, nonblocking_ioctl)   # resolves names: before chroot
    drop_privileges(ident, root)
    die_with_parent(parent)
    limit_resources(files)
    no_new_privs()
    global _report_fd
    _report_fd = keep[0]
    if lib.sigsys_install(keep[0]) != 0:
        raise OSError(ctypes.get_errno(), "sigaction(SIGSYS)")
    f.load()


def _nr(name):
    return seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)


def test_forbidden_call(name):
    """Tests only: try one forbidden call. A worker or session reaches this
    only when it was started with test hooks on (test_hooks=True), which the
    daemon never does; no guest or VMM can send a control message."""
    libc = ctypes.CDLL(None, use_errno=True)
    if name == "open":
        os.open("/etc/passwd", os.O_RDONLY)
    elif name == "socket":
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    elif name == "connect":
        libc.connect(0, None, 0)
    elif name == "execve":
        os.execv("/bin/true", ["true"])
    elif name == "fork":
        libc.fork()
    elif name == "ptrace":
        libc.ptrace(16, 1, 0, 0)                    # PTRACE_ATTACH to init
    elif name == "kill":
        os.kill(1, 0)
    elif name == "fcntl_setown":
        libc.fcntl(0, 8, 1)                         # F_SETOWN to init
    elif name == "mmap_exec":
        libc.mmap(None, 4096, 0x4, 0x22, -1, 0)     # PROT_EXEC, MAP_PRIVATE|MAP_ANONYMOUS
    elif name == "io_uring_unrestricted":
        # a ring of its own, which no restriction binds (its requests do not
        # pass through seccomp)
        params = ctypes.create_string_buffer(120)   # struct io_uring_params
        libc.syscall(_nr("io_uring_setup"), 8, params)
    elif name == "io_uring_register":
        libc.syscall(_nr("io_uring_register"), 0, 0, None, 0)   # e.g. lifting restrictions
    elif name == "ioctl_tcgets":
        termios = ctypes.create_string_buffer(64)
        libc.ioctl(_report_fd, TCGETS, termios)   # on its channel, not on stderr
    elif name == "io_uring_enter":
        libc.syscall(_nr("io_uring_enter"), -1, 0, 0, 0, None, 0)   # allowed in tx only
    else:
        raise ValueError("unknown forbidden call %r" % name)
