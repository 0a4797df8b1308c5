"""Run by a session: the supervisor of one VM interface's rx and tx workers.

Ring 2i is queue pair i's RX ring, served by its rx worker; ring 2i+1 its TX
ring, served by its tx worker. A session cannot fork: it asks the parent for
a worker (Spawn), the parent forks it and hands the session its channel
(ToSession.worker), and from then on the session alone talks to it.

Each worker is in exactly one State:
  IDLE             no worker and none asked for (its ring never ran yet)
  ASKED            the parent was asked for one; its channel has not come
  RUNNING          its channel is here; requests can be sent
  RESTART_PENDING  it died or stopped answering; a timer will ask again

A request that wants an answer (ring_stop, ring_enable, stats) returns a
Reply (eventloop.py) at once; the answer completes it when the worker's
message arrives, in order: a worker answers its requests in the order they
came, so each worker keeps a queue of the answers it owes. A worker that
misses WORKER_TIMEOUT, sends an answer nobody asked for, or whose channel
fails is lost: every answer it owes is completed with None, and it is asked
for again after a delay that doubles with its failures in FAILURE_WINDOW. A
worker that fails MAX_FAILURES times in that window costs the VMM its
connection (Session.vmm.end); so does a guest memory file that shrank under
a mapping, which would only kill the next worker too.

Nothing here waits: the event loop calls back when a channel is readable,
and timers stand for every deadline.
"""
import collections
import enum
import socket
import time

from vionetd import control, sandbox
from vionetd import vionetd_pb2 as pb
from vionetd.backoff import Backoff
from vionetd.eventloop import Reply
from vionetd.log import log, printable

WORKER_TIMEOUT = 1.0          # seconds a worker may take to answer
RESTART = Backoff(0.1, 5.0)   # first and largest delay before a new worker
MAX_FAILURES = 5              # deaths in FAILURE_WINDOW that cost the VMM its connection
FAILURE_WINDOW = 30.0
LOG_TEXT_MAX = 300
MESSAGES_PER_TURN = 32        # worker messages handled per readable event


class State(enum.Enum):
    IDLE = "idle"
    ASKED = "asked"
    RUNNING = "running"
    RESTART_PENDING = "restart pending"


class Worker:
    """The worker of one ring, as the session sees it."""

    def __init__(self, ring):
        self.ring = ring
        self.role = pb.ROLE_TX if ring % 2 else pb.ROLE_RX
        self.queue_pair = ring // 2
        self.name = "%s%s" % (control.ROLE_NAME[self.role], ring // 2 or "")
        self.state = State.IDLE
        self.chan = None                      # while RUNNING
        self.pid = 0
        self.owed = collections.deque()       # (field, Reply, Timer): answers it owes
        self.failures = collections.deque()   # times of recent deaths
        self.timer = None                     # RESTART_PENDING: the new ask


class Supervisor:
    """Every worker of one session: asks for them, talks to them, replaces
    them. The session gives: its loop, its parent link (spawn requests,
    DHCP relay), its device (restore(worker)) and its VMM link (end())."""

    def __init__(self, session, queue_pairs):
        self.session = session
        self.loop = session.loop
        self.workers = [Worker(i) for i in range(2 * queue_pairs)]
        self.restarts = 0
        self.table = control.Table({           # FromWorker, with the worker first
            "ring_stopped": lambda w, body: self._answer(w, "ring_stopped", body),
            "ring_enabled": lambda w, body: self._answer(w, "ring_enabled", body),
            "stats": lambda w, body: self._answer(w, "stats", body),
            "dhcp": lambda w, body: self.session.parent.send(dhcp=body),
            "router_solicit": lambda w, body: self.session.parent.send(router_solicit=body),
            "dhcp6": lambda w, body: self.session.parent.send(dhcp6=body),
            "ring_failed": self._ring_failed,
            "error": self._error,
            "forbidden_syscall": self._forbidden,
        })

    # ---- asking for workers ---------------------------------------------

    def ask(self, w):
        """ask() - have the parent fork a worker for w's ring (IDLE or
        RESTART_PENDING to ASKED)."""
        w.timer = None
        w.state = State.ASKED
        self.session.parent.send(spawn=pb.Spawn(role=w.role, queue_pair=w.queue_pair))

    def wanted(self, w):
        """w's ring is about to run: ask for its worker if nobody has."""
        if w.state is State.IDLE:
            self.ask(w)

    def arrived(self, body, fds):
        """ToSession.worker - the parent forked a worker: its channel is the
        one fd. It replaces any worker of that ring and is brought to where
        its ring is (Device.restore)."""
        ring = 2 * body.queue_pair + (body.role == pb.ROLE_TX)
        if body.role not in control.ROLE_NAME or ring >= len(self.workers) or len(fds) != 1:
            control.close_fds(fds)
            return
        w = self.workers[ring]
        self._drop(w)
        if w.timer is not None:
            w.timer.cancel()
            w.timer = None
        w.chan = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fileno=fds[0])
        w.pid, w.state = body.pid, State.RUNNING
        self.loop.watch(w.chan, lambda: self._from_worker(w))
        self.session.limits.give(w)
        self.session.device.restore(w)
        self.session.report_state()

    # ---- talking to them --------------------------------------------------

    def send(self, w, fds=(), **kw):
        """Send w a ToWorker message; False if it has no channel (the fds
        are then the caller's) or the send failed (it is lost)."""
        if w.state is not State.RUNNING:
            return False
        try:
            control.send(w.chan, pb.ToWorker(**kw), fds)
            return True
        except (OSError, control.ChannelError) as e:
            self.lost(w, "unreachable: %s" % e)
            return False

    def send_all(self, fds=(), **kw):
        for w in self.workers:
            self.send(w, fds, **kw)

    def request(self, w, field, **kw):
        """Send a request whose answer is FromWorker.<field>; the Reply is
        completed with that message, or with None if w cannot answer."""
        reply = Reply()
        if not self.send(w, **kw):
            reply.set(None)
            return reply
        timer = self.loop.call_later(WORKER_TIMEOUT, lambda: self.lost(
            w, "did not answer within %.0f s" % WORKER_TIMEOUT))
        w.owed.append((field, reply, timer))
        return reply

    def _from_worker(self, w):
        try:
            # workers never send fds: read without a control buffer, the
            # kernel discards any (and the message then loses the worker)
            for msg, _ in control.receive(w.chan, pb.FromWorker, MESSAGES_PER_TURN, fds=False):
                if msg is None:
                    return self.lost(w, "exited")
                self._message(w, msg)
                if w.chan is None:              # lost while handling it
                    return
        except (OSError, control.ChannelError) as e:
            self.lost(w, "channel: %s" % e)

    def _message(self, w, msg):
        try:
            self.table.dispatch(msg, [], w)
        except control.ChannelError as e:
            self.lost(w, "broke its channel: %s" % e)

    def _answer(self, w, kind, body):
        """The answer at the head of what w owes, or w broke its channel's
        order: it is lost."""
        if not w.owed or w.owed[0][0] != kind:
            return self.lost(w, "sent %s, which nobody asked for" % kind)
        _, reply, timer = w.owed.popleft()
        timer.cancel()
        reply.set(body)

    def _ring_failed(self, w, text):
        """The kick eventfd or the tap failed: the worker stopped its ring,
        which the VMM must set up again."""
        self.session.vmm.end("%s ring failed: %s" % (w.name, printable(text, LOG_TEXT_MAX)))

    def _error(self, w, text):
        log.warning("%s: %s worker: %s", self.session.name, w.name,
                    printable(text, LOG_TEXT_MAX))

    def _forbidden(self, w, number):
        log.error("%s: %s worker %d made forbidden system call %d (%s)", self.session.name,
                  w.name, w.pid, number, sandbox.syscall_name(number))

    # ---- losing them ------------------------------------------------------

    def _drop(self, w):
        """Forget w's channel and complete what it owed with None."""
        if w.chan is not None:
            self.loop.unwatch(w.chan)
            w.chan.close()
            w.chan = None
        while w.owed:
            _, reply, timer = w.owed.popleft()
            timer.cancel()
            reply.set(None)

    def lost(self, w, why):
        """w died or stopped answering. The parent kills what is left of it
        when it forks the next one, which a timer asks for."""
        was = w.state
        w.state = State.IDLE
        self._drop(w)
        if was is not State.RUNNING:
            w.state = was                 # already being replaced
            return
        now = time.monotonic()
        w.failures.append(now)
        while w.failures and now - w.failures[0] > FAILURE_WINDOW:
            w.failures.popleft()
        self.restarts += 1
        log.warning("%s: %s worker %d %s", self.session.name, w.name, w.pid, why)
        self._judge(w)
        w.state = State.RESTART_PENDING
        w.timer = self.loop.call_later(RESTART.delay(len(w.failures)), lambda: self.ask(w))
        self.session.report_state()

    def _judge(self, w):
        """After a loss: does the VMM lose its connection for it?"""
        why = self.session.device.memory.shrunk()
        if why is None and len(w.failures) >= MAX_FAILURES:
            why = "%s worker failed %d times in %.0f s" % (w.name, len(w.failures),
                                                          FAILURE_WINDOW)
        if why:
            self.session.vmm.end(why)

    # ---- counters ------------------------------------------------------------

    def counters(self, done):
        """Ask every running worker for its counters; done(list of
        pb.Counter named "PAIR/rx_NAME" or "PAIR/tx_NAME") once all have
        answered or been lost."""
        replies = [(w, self.request(w, "stats", stats=pb.StatsRequest()))
                   for w in self.workers if w.state is State.RUNNING]
        left = [len(replies)]

        def one(_):
            left[0] -= 1
            if left[0] == 0:
                done([pb.Counter(name="%d/%s_%s" % (w.queue_pair, control.ROLE_NAME[w.role],
                                                     c.name), value=c.value)
                      for w, r in replies if r.value is not None
                      for c in r.value.counters])
        if not replies:
            done([])
        for _, r in replies:
            r.then(one)

    def close(self):
        for w in self.workers:
            if w.timer is not None:
                w.timer.cancel()
            self._drop(w)
