"""The workers' sandbox: what a worker gives up before it touches a guest.

Applied by every worker right after the fork, before it receives guest memory,
in this order (each step needs the privileges the next one drops):

1. close every fd but the control channel (and stderr while -d);
2. chroot to an empty directory, so a path means nothing;
3. drop to the unprivileged user and its group, with no supplementary groups;
4. rlimits: no new processes, no core dumps, no files, few descriptors;
5. PR_SET_NO_NEW_PRIVS, then a seccomp allow-list in the spirit of
   pledge("stdio recvfd"): what the data path and the Python runtime need
   and nothing that opens, creates sockets, connects, executes, forks,
   traces or signals another process.

A call outside the list traps: csrc/sigsys.c reports its number to the parent
over the control channel, then the worker dies by SIGSYS; the parent logs both
and replaces it.

ALLOWED below is the whole list, each call with the code that needs it.
"""
import ctypes
import errno
import os
import pwd
import resource
import socket

import pyseccomp as seccomp

from vionetd.core import lib

# name: why a worker needs it
ALLOWED = {
    # the data path (csrc/txpath.c, csrc/rxpath.c, csrc/virtq.c)
    "read": "eventfd kicks; tap reads (rxpath.c)",
    "readv": "tap frames straight into guest buffers (rxpath.c)",
    "write": "eventfd calls to the guest (virtq.c); stderr logging with -d",
    "writev": "frames into the tap: header + guest buffers, one call (txpath.c)",
    "poll": "waiting on kick, tap and control channel (txpath.c, rxpath.c)",
    "ppoll": "glibc may implement poll() with it",
    # the control channel (control.py, sigsys.c)
    "recvmsg": "control messages and the fds they carry (control.py)",
    "recvfrom": "Python's socket.recv on the control channel",
    "sendmsg": "answers to the parent (control.py)",
    "sendto": "answers to the parent; the SIGSYS report (sigsys.c)",
    "close": "fds replaced by newer ones (worker.py, datapath.py)",
    "fcntl": "Python sets the control channel blocking/non-blocking",
    "getsockopt": "Python's socket layer queries the socket type",
    # guest memory and the interpreter's own memory
    "mmap": "guest memory regions (virtq.c gmem_map); malloc",
    "munmap": "a replaced memory table; free",
    "mprotect": "glibc malloc arenas",
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
    "ioctl": "Python's isatty() on stderr (TCGETS only, see below)",
    "exit": "thread exit",
    "exit_group": "the worker's end",
}

# tgkill is allowed only towards ourselves: raise(SIGSYS) in sigsys.c.
TGKILL = "tgkill"
TCGETS = 0x5401

FORBIDDEN_TESTS = ("open", "socket", "connect", "execve", "fork", "ptrace", "kill")


def syscall_name(nr):
    try:
        return seccomp.resolve_syscall(seccomp.Arch.NATIVE, nr).decode()
    except (ValueError, TypeError, AttributeError, OSError):
        return "unknown"


def close_fds(keep):
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def drop_privileges(user, root):
    pw = pwd.getpwnam(user)
    os.makedirs(root, mode=0o755, exist_ok=True)
    if os.listdir(root):
        raise OSError(errno.ENOTEMPTY, "chroot directory %s is not empty" % root)
    os.chroot(root)
    os.chdir("/")
    os.setgroups([])
    os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
    os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)


def limit_resources():
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def no_new_privs():
    PR_SET_NO_NEW_PRIVS = 38
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")


def seccomp_filter():
    f = seccomp.SyscallFilter(defaction=seccomp.TRAP)
    for name in ALLOWED:
        if name == "ioctl":
            f.add_rule(seccomp.ALLOW, name, seccomp.Arg(1, seccomp.EQ, TCGETS))
            continue
        try:
            f.add_rule(seccomp.ALLOW, name)
        except (RuntimeError, ValueError, OSError):
            pass    # a call this architecture does not have
    f.add_rule(seccomp.ALLOW, TGKILL, seccomp.Arg(0, seccomp.EQ, os.getpid()))
    return f


def enter(chan_fd, user, root, keep_stderr=True):
    """Confine the calling worker. Raises OSError if any step fails: a
    worker that cannot be confined must not run."""
    keep = {chan_fd} | ({2} if keep_stderr else set())
    close_fds(keep)
    f = seccomp_filter()        # resolves syscall names: before chroot
    drop_privileges(user, root)
    limit_resources()
    no_new_privs()
    if lib.sigsys_install(chan_fd) != 0:
        raise OSError(ctypes.get_errno(), "sigaction(SIGSYS)")
    f.load()


def test_forbidden_call(name):
    """Tests only: try one forbidden call. The worker reaches this only when
    it was started with test hooks on (worker.main(test_hooks=True)), which
    the daemon never does; no guest or VMM can send a control message."""
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
    else:
        raise ValueError("unknown forbidden call %r" % name)
