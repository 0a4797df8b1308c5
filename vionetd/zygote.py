"""Run by the zygote: the exec'd process that forks every session and worker.

A process forked without exec keeps its parent's memory layout (the ASLR
offsets of every library, the heap, the stack) and its stack canary: a
leak from a VM's session or worker would then give away the root parent's
addresses. So the parent forks and execs this module (`python -m
vionetd.zygote`, zygote_link.py) at its start, and every session and
worker is forked from here: they share the zygote's layout and canary,
never the parent's.

At start, before it serves a request, the zygote
1. dies with the parent (PR_SET_PDEATHSIG, then getppid() is still the
   pid that forked it, given on its command line);
2. imports everything sessions and workers run (their modules, the C core,
   pyseccomp, protobuf), so that its children find them loaded and share
   those pages copy-on-write, as they shared the parent's before;
3. makes new network and IPC namespaces, once for all of them (sessions and
   workers need neither: their sockets and taps are passed in; no
   interface but a down loopback, no abstract socket, no System V object is
   within their reach, and no child pays for a namespace of its own);
   where it may not (no CAP_SYS_ADMIN: rc.d/vionetd.service keeps it out of
   the parent's bounding set), it says so on stderr and goes on without;
4. closes every fd but its channel (fd 3) and stderr; it opens nothing
   after that;
5. keeps only the capabilities its children need before they drop every
   privilege (sandbox.enter), and drops the rest from its bounding set too
   (capabilities.py);
6. loads its seccomp allow-list (SYSCALLS below).

It stays uid 0: the capabilities its children need would go with the uid.

Then it serves the parent's requests (ToZygote, one control.Table): a
session or a worker is forked with the fds the parent sent (its channel,
a session's listening socket); the child runs session.main or worker.main,
which confine it exactly as before; the pid goes back (FromZygote.forked).
Their exits reach the parent through here: SIGCHLD wakes the zygote, which
reports each exit (FromZygote.exited; waitid with WNOWAIT leaves the child
a zombie) and reaps a pid only when the parent says it has handled it
(ToZygote.reap), so no other process can take a pid the parent may still
SIGKILL. Its children die with it (PR_SET_PDEATHSIG, sandbox.enter) and it
dies with the parent: every session and worker dies with the parent. It
exits when the parent closes the channel.
"""
import logging
import os
import select
import signal
import socket
import sys

from vionetd import capabilities, control, sandbox
from vionetd import vionetd_pb2 as pb
from vionetd.log import log

CHANNEL_FD = 3
PER_TURN = 64             # messages handled per wakeup: exits are not starved

# What the zygote's children run under this list, on top of their own (a
# call must pass both): sandbox.COMMON, session/main.py's SYSCALLS and the
# workers' lists are added at load (allowed_calls()). These are the
# zygote's own calls and those its children make before they load theirs.
# (tgkill: COMMON's rule points it at the caller, which would be the zygote
# under this list; here it is allowed towards any thread, so that a child's
# SIGSYS report can raise() in the child. kill and tkill stay forbidden.)
SYSCALLS = {
    # the zygote itself
    "clone": "fork() of a session or worker",
    "set_robust_list": "glibc's fork, in the child",
    "waitid": "an exit, seen without reaping it (WNOWAIT)",
    "wait4": "reaping a pid the parent has handled (os.waitpid)",
    "getppid": "sandbox.enter checks that its parent, the zygote, is alive",
    "getsockname": "socket(fileno=) of the fds the parent sent",
    # a child, before its own list (sandbox.enter, session.main, worker.main)
    "openat": "close_fds lists /proc/self/fd; the empty root is checked for "
              "entries (then chroot takes every path away)",
    "getdents64": "the same two listings",
    "dup2": "close_fds makes stdin, stdout and stderr /dev/null",
    "dup3": "the same, where Python's os.dup2 uses it",
    "mkdir": "the empty root is made if missing (sandbox.drop_privileges)",
    "chroot": "sandbox.drop_privileges",
    "chdir": "to / in the new root",
    "setgroups": "no supplementary groups",
    "setresgid": "the VM's group",
    "setresuid": "the VM's user",
    "prctl": "PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, the process title",
    "prlimit64": "rlimits (setrlimit)",
    "seccomp": "the child's own list",
    "epoll_create1": "a session's event loop",
    "io_uring_setup": "a tx worker's ring (txuring.c), before its list",
    "io_uring_register": "restricting that ring to WRITEV (txuring.c)",
}


def allowed_calls():
    """Every call the zygote allows: its own and every child's."""
    from vionetd import worker
    from vionetd.session import SYSCALLS as SESSION
    return {**SYSCALLS, **SESSION, **worker.syscalls(pb.ROLE_TX)}


class Zygote:
    def __init__(self, chan):
        self.chan = chan
        self.known = set()          # pids forked and not reaped
        self.reported = set()       # of those, exits told to the parent
        self.wake_r, self.wake_w = socket.socketpair()
        self.table = control.Table({
            "session": control.with_fds(lambda body, fds: self.fork(run_session, body, fds)),
            "worker": control.with_fds(lambda body, fds: self.fork(run_worker, body, fds)),
            "reap": self.reap,
        })

    def fork(self, run, body, fds):
        """Fork a child that runs run(body, fds); the parent learns its pid."""
        try:
            pid = os.fork()
        except OSError as e:
            control.close_fds(fds)
            self.send(error="fork: %s" % e.strerror)
            return
        if pid == 0:
            code = 1
            try:
                self.chan.close()
                self.wake_r.close()
                self.wake_w.close()
                log.setLevel(body.log_level or logging.INFO)     # the parent's, now
                code = run(body, fds)
            except Exception as e:  # (no traceback: it would open source files)
                print("vionetd: %s: %s: %s" % (body.name, type(e).__name__, e), file=sys.stderr)
            finally:
                os._exit(code)
        control.close_fds(fds)
        self.known.add(pid)
        self.send(forked=pid)

    def reap(self, pid):
        if pid in self.reported:
            os.waitpid(pid, 0)          # a zombie already: does not wait
            self.known.discard(pid)
            self.reported.discard(pid)

    def exits(self):
        """Report each child that has exited, once; it stays a zombie."""
        for pid in sorted(self.known - self.reported):
            try:
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                self.known.discard(pid)
                continue
            if info is not None and info.si_pid:
                self.reported.add(pid)
                self.send(exited=pb.Exited(pid=pid, status=wait_status(info)))

    def send(self, **kw):
        control.send(self.chan, pb.FromZygote(**kw))

    def run(self):
        """Serve until the parent closes the channel."""
        poller = select.poll()
        poller.register(self.chan, select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        while True:
            try:
                ready = dict(poller.poll())
            except InterruptedError:
                continue
            if self.wake_r.fileno() in ready:
                self.wake_r.recv(4096)
                self.exits()
            if self.chan.fileno() in ready:
                for msg, fds in control.receive(self.chan, pb.ToZygote, PER_TURN):
                    if msg is None:
                        return 0
                    self.table.dispatch(msg, fds)


def wait_status(info):
    """waitid()'s siginfo as the status waitpid() would give."""
    if info.si_code == os.CLD_EXITED:
        return (info.si_status & 0xff) << 8
    return info.si_status | (0x80 if info.si_code == os.CLD_DUMPED else 0)


def run_session(body, fds):
    from vionetd import session
    chan = socket.socket(fileno=fds[0])
    listener = socket.socket(fileno=fds[1]) if body.has_listener and len(fds) > 1 else None
    vmm = tuple(None if i < 0 else i for i in (body.vmm_uid, body.vmm_gid))
    return session.main(chan, listener, body.name, body.offered, (body.uid, body.gid),
                        body.root, body.queue_pairs, vmm=vmm)


def run_worker(body, fds):
    from vionetd import worker
    return worker.main(socket.socket(fileno=fds[0]), body.name, (body.uid, body.gid),
                       body.root, role=body.role)


def preload():
    """Everything a child runs, imported (and the C core loaded) here."""
    import setproctitle  # noqa: F401
    from vionetd import session, worker  # noqa: F401
    from vionetd.core import lib  # noqa: F401


def start(parent):
    """Steps 1-6 of the module's doc; returns the channel."""
    sandbox.die_with_parent(parent)
    preload()
    if not sandbox.unshare_namespaces():
        print("vionetd: zygote: sessions and workers share the parent's network and IPC "
              "namespaces (no CAP_SYS_ADMIN to make new ones)", file=sys.stderr)
    sandbox.close_fds({CHANNEL_FD, 2})
    capabilities.keep_only(capabilities.ZYGOTE)
    chan = socket.socket(fileno=CHANNEL_FD)
    return chan


def main(argv):
    import setproctitle
    setproctitle.setproctitle("vionetd: zygote")
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # the parent's to handle
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        chan = start(int(argv[1]))
        z = Zygote(chan)
        z.wake_w.setblocking(False)
        signal.set_wakeup_fd(z.wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        sandbox.seccomp_filter(allowed_calls(), nonblocking_ioctl=True, any_tgkill=True).load()
    except OSError as e:
        print("vionetd: zygote: cannot start: %s" % e, file=sys.stderr)
        return 1
    try:
        return z.run()
    except (control.ChannelError, OSError) as e:
        print("vionetd: zygote: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
