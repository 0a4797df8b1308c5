"""Run by the parent (root): the processes of one VM interface, forked and reaped.

Only the parent may fork. Per interface it forks:
- the session (session/), with the listening socket and a channel
  (session_channel.py); one that dies is replaced on a timer, after a delay
  (SESSION_DELAY, backoff.Backoff) that doubles while it keeps dying
  younger than SESSION_YOUNG; the VMM reconnects to the new one;
- the workers the session asks for: each gets its tap and name from here,
  then its channel is handed to the session; the one a new worker replaces
  is killed first. Requests wait in `asked`, at most one per (role, queue
  pair) (a second is the same request), and one timer forks them: one
  worker per loop turn (a zero delay between forks, so that other VMs'
  messages are served between them), at most SPAWN_BUDGET per window
  (backoff.take_slot), the timer waiting out the window beyond it. The
  session's end forgets them and cancels the timer.

Invariants: nothing here waits for a child. A process is killed with
SIGKILL and reaped when SIGCHLD says it has exited (Parent.reap calls
child_died); until then its pid is in `exiting`, since its fds, the tap's
among them, live until it has exited. Workers are killed before their
session (end_session says why).
"""
import collections
import os
import signal
import time

from vionetd import config, control
from vionetd import vionetd_pb2 as pb
from vionetd.backoff import Backoff, take_slot
from vionetd.control import ROLE_NAME
from vionetd.log import log
from vionetd.session_channel import SessionChannel

SESSION_DELAY = (0.5, 30.0)   # first and largest delay before a new session
SESSION_YOUNG = 10.0          # a session that dies younger doubles the delay
SPAWN_BUDGET = (20, 10.0)     # at most 20 worker forks per 10 s per interface


class Children:
    def __init__(self, port):
        self.port = port
        self.session_pid = None
        self.session_started = 0.0
        self.session_restarts = 0
        self.young_deaths = Backoff(*SESSION_DELAY)
        self.respawn = None         # timer of the next session
        self.workers = {}           # (role, queue pair) -> pid
        self.spawns = collections.deque()   # times of recent worker forks
        self.asked = {}             # (role, queue pair) -> True: forks waiting, in order
        self.fork_timer = None      # forks the oldest of asked
        self.exiting = set()        # killed, not reaped yet

    # ---- the session ------------------------------------------------------

    def spawn_session(self):
        """Fork the session and watch its channel (also the respawn timer)."""
        from vionetd import session
        self.respawn = None
        port = self.port
        if port.stopping:
            return
        mine, theirs = control.pair()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                mine.close()
                code = session.main(theirs, port.listener, port.key, port.offered, port.ident,
                                    port.conf.chroot or config.DEFAULT_CHROOT, port.queue_pairs,
                                    vmm=port.vmm_ident)
            finally:
                os._exit(code)
        theirs.close()
        mine.setblocking(False)
        control.refuse_fds(mine)        # a session never sends one
        self.session_pid = pid
        self.session_started = time.monotonic()
        port.channel = SessionChannel(port, mine)
        port.parent.watch(mine, port.channel.readable)
        port.channel.send(limits=port.limits)

    def end_session(self):
        """Kill the workers, then the session (SIGCHLD reaps them). In that
        order: the VMM takes the session's end of its socket for the end of
        the device and reads the used index to restart from; a worker still
        alive then could complete more chains behind its back, which the
        next device would complete a second time (a guest says "id N is not
        a head"). A worker sent SIGKILL runs no more of its own code."""
        for pid in [*self.workers.values(), self.session_pid]:
            if pid:
                self._kill(pid)
        if self.port.channel is not None:
            self.port.channel.close()
        self.session_pid = None
        self.workers.clear()
        self.asked.clear()
        if self.fork_timer is not None:
            self.fork_timer.cancel()
            self.fork_timer = None

    def session_died(self, how):
        """The session exited or broke the rules: end it, and unless the
        interface stops, fork the next one after the backoff's delay."""
        port = self.port
        log.warning("%s: session %s", port.key, how)
        port.reason = "session %s" % how
        self.end_session()
        if port.stopping:
            return
        if time.monotonic() - self.session_started < SESSION_YOUNG:
            delay = self.young_deaths.fail()
        else:
            self.young_deaths.reset()
            delay = self.young_deaths.delay(1)
        self.session_restarts += 1
        self.respawn = port.parent.loop.call_later(delay, self.spawn_session)

    def stop(self):
        """The interface stops: no next session, every process killed."""
        if self.respawn:
            self.respawn.cancel()
            self.respawn = None
        self.end_session()

    def child_died(self, pid, status):
        """SIGCHLD reaped pid: True if it was ours (the session, one of its
        workers, or one killed earlier)."""
        how = describe_exit(status)
        known = pid in self.exiting
        self.exiting.discard(pid)
        if pid == self.session_pid:
            self.session_died(how)
            return True
        for (role, qp), wpid in list(self.workers.items()):
            if wpid == pid:
                log.warning("%s: %s worker %d of pair %d %s", self.port.key, ROLE_NAME[role],
                            pid, qp, how)
                del self.workers[role, qp]
                return True
        return known

    def _kill(self, pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.exiting.add(pid)

    # ---- workers --------------------------------------------------------

    def spawn_worker(self, role, qp):
        """The session asks for the worker of (role, qp): fork it soon
        (_fork_next), unless it is asked for already."""
        if (role, qp) in self.asked:
            return
        self.asked[role, qp] = True
        if self.fork_timer is None:
            self.fork_timer = self.port.parent.loop.call_later(0, self._fork_next)

    def _fork_next(self):
        """Fork the oldest worker asked for, killing the one it replaces;
        the next waits for the next loop turn, or for the budget."""
        port = self.port
        self.fork_timer = None
        if not self.asked or port.channel is None or port.channel.sock is None:
            return
        wait = take_slot(self.spawns, SPAWN_BUDGET)
        if not wait:
            role, qp = next(iter(self.asked))
            del self.asked[role, qp]
            old = self.workers.pop((role, qp), None)
            if old:
                self._kill(old)
            mine = self._fork_worker(role, qp)
            port.channel.send([mine.fileno()], worker=pb.WorkerChannel(
                role=role, pid=self.workers[role, qp], queue_pair=qp))
            mine.close()
        if self.asked and self.port.channel is not None:
            self.fork_timer = port.parent.loop.call_later(wait, self._fork_next)

    def _fork_worker(self, role, qp):
        """Fork the worker of (role, qp) and give it its name and tap;
        returns the parent's end of its channel, for the session."""
        from vionetd import worker
        port = self.port
        mine, theirs = control.pair()
        name = "%s %s" % (ROLE_NAME[role], port.key) + (".%d" % qp if qp else "")
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                mine.close()
                code = worker.main(theirs, name, port.conf, ident=port.ident, role=role)
            finally:
                os._exit(code)
        theirs.close()
        control.refuse_fds(mine)        # the session's end: a worker never sends one
        self.workers[role, qp] = pid
        try:
            control.send(mine, pb.ToWorker(hello=pb.Hello(name=port.key, role=role,
                                                          queue_pair=qp)))
            control.send(mine, pb.ToWorker(tap=pb.Tap()), [port.tap_fds[qp]])
        except OSError as e:
            log.warning("%s: new %s worker: %s", port.key, ROLE_NAME[role], e)
        return mine


def describe_exit(status):
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals.__members__.values() else str(sig)
        return "killed by %s" % name
    return "exited with status %d" % os.WEXITSTATUS(status)
