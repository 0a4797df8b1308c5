"""Run by the parent (root): its zygote, which forks sessions and workers, and their exits.

The parent starts the zygote once (start(): spawn.exec_module, the
channel's end as fd 3), so that no session or worker shares the parent's
memory layout or stack canary (zygote.py says why and how the zygote is
confined).

fork_session() and fork_worker() send the request and the fds the child
needs (its channel's end; a session's listening socket) and return: the
parent waits for nothing (under load, the zygote may take tens of
milliseconds to be scheduled, times every fork). The zygote answers each
request in order (FromZygote.forked with the pid, or .error), and the
request's done(pid) is called then. Exits come as FromZygote.exited: each
goes to Parent.child_exited, as a reaped child's status did, and only then
is the zygote told to reap the pid (ToZygote.reap), so the pid cannot be
reused while the parent may still SIGKILL it.

If the zygote itself dies (Parent.reap sees its pid), every child it had
has died or is dying with it (PR_SET_PDEATHSIG): each is reported as
killed by SIGKILL, and a new zygote is started.
"""
import collections
import signal

from vionetd import control, spawn
from vionetd import vionetd_pb2 as pb
from vionetd.log import log

PER_TURN = 64             # exits handled per loop turn


class ZygoteError(OSError):
    pass


def none_is(value, none=-1):
    """An id for the wire: -1 for None."""
    return none if value is None else value


class Zygote:
    def __init__(self, parent):
        self.parent = parent
        self.pid = None
        self.sock = None
        self.children = set()       # pids forked, exit not handled yet
        self.waiting = collections.deque()  # done() of each request not answered yet
        self.table = control.Table({"forked": self._forked, "exited": self._exited,
                                    "error": self._failed})

    def start(self):
        """Fork and exec a new zygote, and watch its channel."""
        mine, theirs = control.pair()
        pid = spawn.exec_module("zygote", [theirs.fileno()])
        theirs.close()
        mine.setblocking(False)
        self.pid, self.sock = pid, mine
        self.parent.watch(mine, self.readable)

    def fork_session(self, chan, listener, name, offered, ids, root, queue_pairs, vmm, done):
        """Ask for a new session; done(pid) is called when the zygote has
        forked it (pid None: it could not). chan: its channel's end;
        listener: the listening socket or None; ids: (uid, gid); vmm: the
        (uid, gid) its VMM must have, each None if any will do. Raises
        ZygoteError if the request cannot be sent."""
        fds = [chan.fileno()] + ([listener.fileno()] if listener else [])
        self._ask(fds, done, session=pb.ForkSession(
            name=name, offered=offered, uid=ids[0], gid=ids[1], root=root,
            queue_pairs=queue_pairs, has_listener=listener is not None,
            log_level=log.level, vmm_uid=none_is(vmm[0]), vmm_gid=none_is(vmm[1])))

    def fork_worker(self, chan, name, role, ids, root, done):
        """Ask for a new worker; done(pid) as for fork_session."""
        self._ask([chan.fileno()], done, worker=pb.ForkWorker(
            name=name, role=role, uid=ids[0], gid=ids[1], root=root, log_level=log.level))

    def _ask(self, fds, done, **kw):
        if self.sock is None:
            raise ZygoteError("no zygote")
        try:
            control.send(self.sock, pb.ToZygote(**kw), fds)
        except (OSError, control.ChannelError) as e:
            raise ZygoteError("zygote: %s" % e)
        self.waiting.append(done)

    def _forked(self, pid):
        """FromZygote.forked: the pid of the oldest request (in order)."""
        self.children.add(pid)
        self._answer(pid)

    def _failed(self, why):
        log.error("zygote: %s", why)
        self._answer(None)

    def _answer(self, pid):
        if self.waiting:
            self.waiting.popleft()(pid)
        else:
            raise control.ChannelError("the zygote answered a request never made")

    def readable(self):
        try:
            for msg, fds in control.receive(self.sock, pb.FromZygote, PER_TURN):
                if msg is None:
                    self.close()        # its exit comes by SIGCHLD
                    return
                self.table.dispatch(msg, fds)
        except (OSError, control.ChannelError) as e:
            log.error("zygote: %s", e)

    def _exited(self, body):
        self.children.discard(body.pid)
        self.parent.child_exited(body.pid, body.status)
        try:
            if self.sock is not None:
                control.send(self.sock, pb.ToZygote(reap=body.pid))
        except OSError:
            pass                    # a zygote gone has reaped them all

    def died(self, status):
        """The zygote exited (Parent.reap): its children are gone with it;
        a new zygote is started."""
        from vionetd.children import describe_exit
        log.error("zygote %s; starting a new one", describe_exit(status))
        self.close()
        for pid in sorted(self.children):
            self.parent.child_exited(pid, signal.SIGKILL)
        self.children.clear()
        while self.waiting:
            self.waiting.popleft()(None)
        if self.parent.running:
            self.start()

    def close(self):
        """Close the channel: the zygote exits, and its children with it."""
        if self.sock is not None:
            self.parent.unwatch(self.sock)
            self.sock.close()
            self.sock = None
