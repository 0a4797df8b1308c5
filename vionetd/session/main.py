"""Run by a session: the process's entry, and its confinement.

The zygote (zygote.py) forks one session per VM interface on the parent's
request and calls main() in the child, which confines itself at once
(sandbox.enter: the VM's unprivileged uid and gid, an empty root directory,
RLIMIT_NOFILE sized for its queue pairs (sandbox.nofile), no_new_privs,
then the seccomp allow-list below) and then runs the Session until the
parent goes.

A session reads every byte its VMM writes, so it holds nothing it does not
need: no way to open a path, make a socket, fork or exec. The fds it keeps
are its channel to the parent, its event loop's epoll fd and, in server
mode, the listening socket; the rest come over the channel or the VMM's
socket.
"""
import signal

import setproctitle

from vionetd import sandbox
from vionetd.log import log
from vionetd.session.parent_link import ParentLog
from vionetd.session.session import Session

# What a session needs beyond sandbox.COMMON, and why.
SYSCALLS = {
    "accept4": "the VMM's connection (vmm_link.VmmLink._accept)",
    "sendmsg": "fds to the workers: guest memory, kick and call (control.send)",
    "epoll_wait": "the event loop (eventloop.Loop)",
    "epoll_pwait": "the event loop, where glibc uses it",
    "epoll_ctl": "watching the VMM, workers and parent (eventloop.Loop)",
    "fstat": "the kind and size of each fd a VMM sends (fdkind.py)",
    "getsockname": "Python's socket(fileno=) checks a worker's channel "
                   "(workers.Supervisor.arrived)",
    # getsockopt (sandbox.COMMON) also reads SO_PEERCRED of the VMM's
    # connection (vmm_link.VmmLink._connected)
}


def main(chan, listener, name, offered, ident, root, queue_pairs=1, test_hooks=False,
         vmm=(None, None)):
    """Entry point in the forked child: listener is the interface's listening
    socket, or None in client mode; ident the (uid, gid) it runs as; vmm
    the (uid, gid) its VMM must have, each None if any will do
    (vmm_link.py). Returns the exit status."""
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)     # the parent's handlers are not ours
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.set_wakeup_fd(-1)
    setproctitle.setproctitle("vionetd: vhost %s" % name)
    s = Session(chan, listener, name, offered, queue_pairs, test_hooks, vmm)
    log.handlers[:] = [ParentLog(s.parent)]
    keep = [chan.fileno(), s.loop.fileno()] + ([listener.fileno()] if listener else [])
    try:
        sandbox.enter(SYSCALLS, keep, ident, root,
                      nonblocking_ioctl=True,     # Python's setblocking()
                      files=sandbox.nofile(queue_pairs))
    except OSError as e:
        log.error("%s: cannot confine the session: %s", name, e)
        return 1
    try:
        return s.run()
    except Exception as e:
        # No traceback: printing one would open source files, which seccomp forbids.
        log.error("%s: session failed: %s: %s", name, type(e).__name__, e)
        return 1
