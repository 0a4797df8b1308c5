"""Run by the parent (root): the processes of one VM interface, forked (by the zygote) and reaped.

Only the parent may ask for a process, and the zygote (zygote_link.py)
forks it, so that no child shares the parent's memory layout. Per
interface it has forked:
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
SIGKILL and forgotten when the zygote says it has exited (Parent.child_exited
calls child_died; the zygote reaps the pid only after that, so the pid
killed is never another process's); until then its pid is in `exiting`,
since its fds, the tap's among them, live until it has exited. Workers are
killed before their session (end_session says why).
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
        self.generation = 0         # of the session: forks asked under an older one are late

    # ---- the session ------------------------------------------------------

    def spawn_session(self):
        """Ask the zygote for the session and watch its channel at once
        (also the respawn timer). Its pid comes later (_session_forked);
        meanwhile session_pid is 0. A fork that fails is a session that died."""
        self.respawn = None
        port = self.port
        if port.stopping:
            return
        mine, theirs = control.pair()
        gen = self.generation
        try:
            port.parent.zygote.fork_session(
                theirs, port.listener, port.key, port.offered, port.ident,
                chroot_of(port), port.queue_pairs, port.vmm_ident,
                lambda pid: self._session_forked(gen, pid))
        except OSError as e:
            mine.close()
            self.session_died("could not be forked: %s" % e)
            return
        finally:
            theirs.close()
        mine.setblocking(False)
        control.refuse_fds(mine)        # a session never sends one
        self.session_pid = 0
        self.session_started = time.monotonic()
        port.channel = SessionChannel(port, mine)
        port.parent.watch(mine, port.channel.readable)
        port.channel.send(limits=port.limits)

    def _session_forked(self, gen, pid):
        if gen != self.generation:
            self._late(pid)         # the session ended before its pid came
        elif pid is None:
            self.session_died("could not be forked")
        else:
            self.session_pid = pid

    def _late(self, pid):
        """A process forked for a session that has ended since: killed, and
        held like the others until it has exited."""
        if pid:
            self._kill(pid)
            if self.port.stopping and self.port.tap_name:
                self.port.parent.exiting.killed(self.port.tap_name, [pid])

    def end_session(self):
        """Kill the workers, then the session (the zygote reports their
        exits). In that order: the VMM takes the session's end of its
        socket for the end of the device and reads the used index to restart from; a worker still
        alive then could complete more chains behind its back, which the
        next device would complete a second time (a guest says "id N is not
        a head"). A worker sent SIGKILL runs no more of its own code."""
        for pid in [*self.workers.values(), self.session_pid]:
            if pid:
                self._kill(pid)
        self.generation += 1        # forks still on their way are killed as they come
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
        """pid has exited (the zygote said so): True if it was ours (the session, one of its
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
        """Ask the zygote for the oldest worker asked for, killing the one it
        replaces; the next waits for the next loop turn, or for the budget."""
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
            self._fork_worker(role, qp)
        if self.asked and self.port.channel is not None:
            self.fork_timer = port.parent.loop.call_later(wait, self._fork_next)

    def _fork_worker(self, role, qp):
        """Ask the zygote for the worker of (role, qp) and give it its name
        and tap; its channel goes to the session when its pid comes
        (_worker_forked)."""
        port = self.port
        mine, theirs = control.pair()
        name = "%s %s" % (ROLE_NAME[role], port.key) + (".%d" % qp if qp else "")
        gen = self.generation
        try:
            port.parent.zygote.fork_worker(theirs, name, role, port.ident, chroot_of(port),
                                           lambda pid: self._worker_forked(gen, role, qp, mine,
                                                                           pid))
        except OSError as e:
            mine.close()
            log.warning("%s: new %s worker: %s", port.key, ROLE_NAME[role], e)
            return
        finally:
            theirs.close()
        control.refuse_fds(mine)        # the session's end: a worker never sends one
        try:
            control.send(mine, pb.ToWorker(hello=pb.Hello(name=port.key, role=role,
                                                          queue_pair=qp)))
            control.send(mine, pb.ToWorker(tap=pb.Tap()), [port.tap_fds[qp]])
        except OSError as e:
            log.warning("%s: new %s worker: %s", port.key, ROLE_NAME[role], e)

    def _worker_forked(self, gen, role, qp, mine, pid):
        """The zygote forked the worker (pid None: it could not): its
        channel goes to the session, unless the session has gone since."""
        port = self.port
        if gen != self.generation or port.channel is None or pid is None:
            mine.close()
            self._late(pid)
            return
        old = self.workers.pop((role, qp), None)
        if old:
            self._kill(old)     # two asks of one ring in a row: the newer one stays
        self.workers[role, qp] = pid
        port.channel.send([mine.fileno()], worker=pb.WorkerChannel(role=role, pid=pid,
                                                                   queue_pair=qp))
        mine.close()


def chroot_of(port):
    """The empty directory port's sessions and workers chroot to."""
    return port.conf.chroot or config.DEFAULT_CHROOT


def describe_exit(status):
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals.__members__.values() else str(sig)
        return "killed by %s" % name
    return "exited with status %d" % os.WEXITSTATUS(status)
