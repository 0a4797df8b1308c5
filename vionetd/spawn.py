"""Run by the parent (root): fork and exec one of vionetd's own modules.

A child forked without exec keeps the parent's memory layout (every
library's ASLR offset, the heap, the stack) and its stack canary, so a
leak from it gives away the root parent's addresses. The processes that
read untrusted bytes are therefore exec'd: the zygote (which forks
sessions and workers) and the metrics process.

exec_module(module, fds, args) runs `python -m vionetd.MODULE PARENT_PID
ARGS...` with fds[0] as fd 3, fds[1] as fd 4 and so on; besides those and
stdin, stdout and stderr, every fd is closed by exec (Python opens its fds
close-on-exec, and so are the scratch copies made here). The child checks
PARENT_PID against getppid() once it has asked to die with the parent
(sandbox.die_with_parent), so a parent that died in between is noticed.
"""
import fcntl
import os
import sys

FIRST_FD = 3
SCRATCH_FD = 100          # where the fds wait, so that placing one cannot close another


def exec_module(module, fds, args=()):
    """Fork; the child execs the module. Returns the child's pid."""
    parent = os.getpid()
    argv = [sys.executable, "-m", "vionetd." + module, str(parent)] + [str(a) for a in args]
    pid = os.fork()
    if pid == 0:
        try:
            moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, SCRATCH_FD) for fd in fds]
            for i, fd in enumerate(moved):
                os.dup2(fd, FIRST_FD + i)     # dup2 makes the copy inheritable
            os.execv(sys.executable, argv)
        finally:
            os._exit(127)
    return pid
