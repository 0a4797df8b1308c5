"""A session: the unprivileged process that serves one VM interface's VMM.

The parent (iface.py) forks one session per VM interface and hands it the
interface's listening socket and a channel to itself; the session confines
itself at once (sandbox.py: own user, empty root, no_new_privs, seccomp) and
from then on:

- accepts one VMM connection at a time on that socket, or, in client mode
  (no listening socket), has the parent connect to the VMM's socket for it,
  retrying with backoff while that socket is absent and after the VMM goes;
  and speaks vhost-user with the VMM (vhost_user.Connection; this class is
  its Backend);
- supervises the interface's rx and tx workers: the parent forks each one
  when asked (a session cannot fork) and hands over its channel; the session
  gives it guest memory, eventfds and ring state, and asks for a new one
  when it dies or stops answering;
- relays what the parent must know as small protobuf (proto/vionetd.proto,
  FromSession): state, the VMM's features (the parent sets the tap's
  offloads), DHCP requests, counters, log lines.

Nothing a VMM or a worker does can block it: the VMM's socket is
non-blocking and a message must complete within MESSAGE_TIMEOUT; a worker
answers a request within WORKER_TIMEOUT or is replaced; restarts wait on
timers (RESTART_DELAY doubling to RESTART_MAX); a worker that dies
MAX_FAILURES times within FAILURE_WINDOW costs the VMM its connection, with
the reason in vionetctl status; a VMM whose connections keep ending at once
is accepted more and more slowly (ACCEPT_BACKOFF). What goes wrong here
costs this VM alone: the parent replaces a session that dies.
"""
import collections
import logging
import os
import select
import signal
import socket
import time

import setproctitle

from vionetd import control, fdkind, sandbox, vhost_user
from vionetd import features as F
from vionetd import vionetd_pb2 as pb
from vionetd.eventloop import Loop
from vionetd.log import log

# What a session needs beyond sandbox.COMMON, and why.
SYSCALLS = {
    "accept4": "the VMM's connection (Session._accept)",
    "sendmsg": "fds to the workers: guest memory, kick and call (control.send)",
    "epoll_wait": "the event loop (eventloop.Loop)",
    "epoll_pwait": "the event loop, where glibc uses it",
    "epoll_ctl": "watching the VMM, workers and parent (eventloop.Loop)",
    "fstat": "the kind and size of each fd a VMM sends (fdkind.py)",
    "getsockname": "Python's socket(fileno=) checks a worker's channel (_worker_arrived)",
}

# Ring 2i is queue pair i's RX ring (its rx worker), ring 2i+1 its TX ring.
ROLE_NAME = {pb.ROLE_RX: "rx", pb.ROLE_TX: "tx"}
MESSAGE_TIMEOUT = 2.0         # seconds a VMM may take to finish a message
WORKER_TIMEOUT = 1.0          # seconds a worker may take to answer
PARENT_TIMEOUT = 2.0          # seconds the parent may take to answer
RESTART_DELAY = 0.1           # first worker restart; doubles per failure in the window
RESTART_MAX = 5.0
MAX_FAILURES = 5              # worker deaths in FAILURE_WINDOW that cost the VMM its connection
FAILURE_WINDOW = 30.0
SHORT_CONNECTION = 1.0        # a VMM connection shorter than this counts for ACCEPT_BACKOFF
ACCEPT_BACKOFF = (0.05, 5.0)  # first and largest delay before the next accept
DIAL_BACKOFF = (0.1, 2.0)     # client mode: first and largest delay between attempts
MESSAGE_RATE = (2000, 2000)   # VMM messages per second, and the burst, before reading pauses
TICK = 0.25                   # how often deadlines are checked
LOG_TEXT_MAX = 300


class Ring:
    """What the session keeps of one ring for its worker (a replaced worker
    gets it again). Whether the ring runs is the Connection's: ready()."""

    def __init__(self):
        self.kick = None
        self.call = None
        self.last_avail = None      # from the worker when it stopped the ring
        self.base_lost = False      # stopped without the worker's answer

    def set(self, which, fd):
        old = getattr(self, which)
        if old is not None:
            os.close(old)
        setattr(self, which, fd)

    def close(self):
        self.set("kick", None)
        self.set("call", None)


class Worker:
    """The worker of one ring: ring 2i is pair i's rx worker, 2i+1 its tx."""

    def __init__(self, ring):
        self.ring = ring
        self.role = pb.ROLE_TX if ring % 2 else pb.ROLE_RX
        self.queue_pair = ring // 2
        self.name = "%s%s" % (ROLE_NAME[self.role], ring // 2 or "")
        self.chan = None
        self.pid = 0
        self.failures = collections.deque()   # times of recent deaths
        self.timer = None                     # pending restart
        self.asked = False                    # spawn requested, channel not here yet


class Session(vhost_user.Backend):
    def __init__(self, chan, listener, name, offered, queue_pairs=1, test_hooks=False):
        self.chan = chan                       # to the parent
        self.listener = listener
        self.name = name
        self.offered = offered                 # feature bits, from the parent
        self.test_hooks = test_hooks
        self.loop = Loop()
        self.conn = None
        self.connected_at = 0.0
        self.short = 0                         # short connections in a row
        self.ran = False
        self.retries = 0                       # client mode: failed attempts in a row
        self.queue_pairs = queue_pairs
        self.rings = [Ring() for _ in range(2 * queue_pairs)]
        self.mem = None                        # (regions, fds)
        self.dirty_log = None                  # (size, offset, fd): SET_LOG_BASE
        self.log_notify = None                 # SET_LOG_FD's eventfd
        self.workers = [Worker(i) for i in range(2 * queue_pairs)]
        self.restarts = 0
        self.vmm_features = 0
        self.worker_features = None            # pb.Features from the parent
        self.mtu = 0
        self.reason = ""
        self._sent_state = None
        self._parent_backlog = []              # parent messages met while waiting
        self._in_vmm = False                   # inside conn.handle_readable()
        self._drop = None                      # a disconnect asked for meanwhile
        self.running = True

    # ---- the loop -------------------------------------------------------

    def run(self):
        self.loop.watch(self.chan, self._from_parent)
        if self.listener is not None:
            self.loop.watch(self.listener, self._accept)
        else:
            self._dial()
        for w in self.workers[:2]:          # other pairs' when the VMM uses them
            self._ask_worker(w)
        self._tick()
        self._report_state()
        while self.running:
            self.loop.run_once()
        return 0

    def _tick(self):
        if self.conn is not None and self.conn.overdue(time.monotonic()):
            self._disconnect("VMM did not finish a message within %.0f s" % MESSAGE_TIMEOUT)
        self.loop.call_later(TICK, self._tick)

    # ---- the parent -----------------------------------------------------

    def _to_parent(self, **kw):
        try:
            control.send(self.chan, pb.FromSession(**kw))
        except OSError:
            self.running = False            # the parent is gone: so are we

    # The channels to the parent and the workers block on send (messages are
    # small and their readers keep up) but never on receive: a callback the
    # loop dispatches for a readable channel may find it empty, an earlier
    # callback of the same turn (_wait_parent, _ask) having read it.

    def _recv_parent(self):
        try:
            msg, fds = control.recv(self.chan, pb.ToSession, wait=False)
        except BlockingIOError:
            return None, []
        if msg is None:
            self.running = False
        return msg, fds

    def _from_parent(self):
        if self._parent_backlog:
            msg, fds = self._parent_backlog.pop(0)
        else:
            msg, fds = self._recv_parent()
        if msg is not None:
            self._parent_message(msg, fds)

    def _parent_message(self, msg, fds):
        kind = msg.WhichOneof("msg")
        if kind == "worker":
            self._worker_arrived(msg.worker, fds)
            return
        if kind == "dialed":
            self._dialed(msg.dialed.error, fds)
            return
        control.close_fds(fds)
        if kind == "dhcp_reply":
            self._send(self.workers[0], dhcp_reply=msg.dhcp_reply)   # pair 0's rx
        elif kind == "stats":
            self._to_parent(stats=pb.Stats(counters=self._counters()))
        elif kind == "features":
            self.worker_features = msg.features
        elif kind == "test_forbidden_call" and self.test_hooks:
            sandbox.test_forbidden_call(msg.test_forbidden_call)

    def _wait_parent(self, field):
        """The parent's answer to a request; other messages that arrive
        first are kept for the loop."""
        deadline = time.monotonic() + PARENT_TIMEOUT
        while self.running:
            left = deadline - time.monotonic()
            if left <= 0 or not readable(self.chan, left):
                return None
            msg, fds = self._recv_parent()
            if msg is None:
                continue
            if msg.WhichOneof("msg") == field:
                control.close_fds(fds)
                return msg
            self._parent_backlog.append((msg, fds))
            self.loop.call_later(0, self._from_parent)
        return None

    def _report_state(self):
        state = pb.SessionState(state=self.state, reason=self.reason,
                                vmm_features=self.vmm_features,
                                worker_restarts=self.restarts, mtu=self.mtu,
                                retries=self.retries, logging=self.logging)
        if state != self._sent_state:
            self._sent_state = state
            self._to_parent(state=state)

    @property
    def state(self):
        if self.conn is None:
            return "waiting" if self.listener is not None else "connecting"
        if any(self.ready(i) for i in range(len(self.rings))):
            return "running"
        return "connected"

    # ---- the VMM connection ---------------------------------------------

    def _accept(self):
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        if self.conn is not None:
            log.info("%s: refusing a second VMM connection", self.name)
            sock.close()
            return
        self._connected(sock)

    def _dial(self):
        """Client mode: ask the parent to connect to the VMM's socket (a
        session can reach no path); the answer is _dialed()."""
        self._to_parent(dial=True)

    def _dialed(self, error, fds):
        if not error and len(fds) == 1:
            self.retries = 0
            self._connected(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0,
                                          fileno=fds[0]))
            return
        control.close_fds(fds)
        self.retries += 1
        if self.retries == 1:
            log.info("%s: cannot connect to the VMM (%s), retrying", self.name,
                     error[:LOG_TEXT_MAX])
        first, largest = DIAL_BACKOFF
        self.loop.call_later(min(largest, first * 2 ** min(self.retries - 1, 8)), self._dial)
        self._report_state()

    def _connected(self, sock):
        self.conn = vhost_user.Connection(sock, self, name=self.name,
                                          timeout=MESSAGE_TIMEOUT,
                                          queue_pairs=self.queue_pairs)
        self.connected_at = time.monotonic()
        self.ran = False                       # a ring of this connection started
        self.tokens, self.tokens_at, self.counted = MESSAGE_RATE[1], self.connected_at, 0
        self.loop.watch(sock, self._readable)
        log.info("%s: VMM connected", self.name)
        self._report_state()

    def _readable(self):
        why = None
        self._in_vmm = True
        try:
            if self.conn.handle_readable() is False:
                why = "VMM disconnected"
        except vhost_user.ProtocolError as e:
            why = "dropping VMM: %s" % e
        except OSError as e:
            why = "VMM connection: %s" % e
        finally:
            self._in_vmm = False
        why, self._drop = self._drop or why, None
        if why == "VMM disconnected" and self.conn.asked_queue_num and not self.ran \
                and time.monotonic() - self.connected_at < SHORT_CONNECTION:
            # what QEMU does when it wants more pairs than we have (and then
            # reconnects, again and again: the accept backoff slows it)
            why = ("VMM left before starting a queue, after asking for the number "
                   "of queue pairs (%d): does it want more? (queues in vionetd.conf)"
                   % self.queue_pairs)
        if why:
            self._disconnect(why, quiet=why == "VMM disconnected")
        else:
            self._report_state()
            self._pace()

    def _pace(self):
        """A VMM that floods requests gets MESSAGE_RATE answered per second
        and its socket is left unread for the rest: its session, not the
        host's CPUs, absorbs the flood. (A handshake is a few hundred
        messages, well inside the burst.)"""
        rate, burst = MESSAGE_RATE
        now = time.monotonic()
        self.tokens = min(burst, self.tokens + (now - self.tokens_at) * rate)
        self.tokens -= self.conn.messages - self.counted
        self.tokens_at, self.counted = now, self.conn.messages
        if self.tokens < 0:
            conn = self.conn
            self.loop.unwatch(conn.sock)
            self.loop.call_later(-self.tokens / rate, lambda: self.conn is conn and
                                 self.loop.watch(conn.sock, self._readable))

    def _disconnect(self, why, quiet=False):
        if self.conn is None:
            return
        if self._in_vmm:                 # the Connection is mid-message: after it
            self._drop = self._drop or why
            return
        (log.info if quiet else log.warning)("%s: %s", self.name, why)
        if not quiet:
            self.reason = why
        self.loop.unwatch(self.conn.sock)
        conn, self.conn = self.conn, None
        conn.close()                     # reports rings stopped, then disconnected()
        self._accept_backoff()
        self._report_state()

    def _accept_backoff(self):
        """A VMM that reconnects in a tight loop (one we refuse at once, say)
        must not cost a core: after short connections that never started a
        ring, wait before the next
        accept (or, in client mode, the next connection attempt), doubling
        up to ACCEPT_BACKOFF[1]."""
        if self.ran or time.monotonic() - self.connected_at >= SHORT_CONNECTION:
            self.short = 0
            delay = 0.0
        else:
            self.short += 1
            first, largest = ACCEPT_BACKOFF
            delay = min(largest, first * 2 ** (self.short - 1))
        if self.listener is None:
            self.loop.call_later(delay, self._dial)
        elif delay:
            self.loop.unwatch(self.listener)
            self.loop.call_later(delay, lambda: self.loop.watch(self.listener, self._accept))

    def ready(self, i):
        return self.conn is not None and self.conn.reported_ready(i)

    @property
    def logging(self):
        """The VMM is migrating: LOG_ALL acked and a log to mark."""
        return F.has(self.vmm_features, F.LOG_ALL) and \
            self.dirty_log is not None

    # ---- vhost_user.Backend ---------------------------------------------

    def get_features(self):
        return self.offered

    def set_features(self, value):
        self._to_parent(features=value)
        reply = self._wait_parent("features")
        if reply is None:
            raise vhost_user.BackendError("the parent did not apply the features")
        self.vmm_features = value
        self.worker_features = reply.features
        for w in self.workers:
            self._send(w, features=self.worker_features)
        self._report_state()

    def set_mtu(self, mtu):
        """NET_SET_MTU: the parent checks it and the tap follows."""
        self._to_parent(set_mtu=mtu)
        reply = self._wait_parent("mtu")
        if reply is None or reply.mtu.error:
            raise vhost_user.BackendError(reply.mtu.error if reply else
                                          "the parent did not answer")
        self.mtu = mtu

    def reset(self):
        for ring in self.rings:
            ring.close()
            ring.last_avail = None
            ring.base_lost = False
        self._forget_memory()
        self._forget_log()
        self.vmm_features = 0
        self.mtu = 0

    def disconnected(self):
        self.reset()

    def _forget_memory(self):
        if self.mem:
            control.close_fds(self.mem[1])
            self.mem = None
            for w in self.workers:
                self._send(w, mem_table=pb.MemTable())

    # ---- dirty logging (migration) ----------------------------------------

    def set_log_base(self, size, offset, fd):
        """The VMM starts (or resizes) its dirty log: every worker maps it."""
        if self.dirty_log:
            os.close(self.dirty_log[2])
        self.dirty_log = (size, offset, fd)
        for w in self.workers:
            self._send_log(w)
        self._report_state()

    def set_log_fd(self, fd):
        if self.log_notify is not None:
            os.close(self.log_notify)
        self.log_notify = fd
        if self.dirty_log:
            for w in self.workers:
                self._send_log(w)

    def _send_log(self, w):
        size, offset, fd = self.dirty_log
        fds = [fd] + ([self.log_notify] if self.log_notify is not None else [])
        self._send(w, fds, dirty_log=pb.DirtyLog(size=size, offset=offset,
                                                  has_notify=len(fds) > 1))

    def _forget_log(self):
        if self.dirty_log:
            os.close(self.dirty_log[2])
            self.dirty_log = None
            for w in self.workers:
                self._send(w, dirty_log=pb.DirtyLog())
        if self.log_notify is not None:
            os.close(self.log_notify)
            self.log_notify = None

    def send_rarp(self, mac):
        """The guest now runs here: the parent announces its MAC."""
        self._to_parent(announce=mac)

    # ---- memory and rings -------------------------------------------------

    def set_mem_table(self, regions, fds):
        if self._same_memory(regions, fds):
            # QEMU sends the table once per queue pair: keep the mappings
            control.close_fds(fds)
            return
        running = [i for i in range(len(self.rings)) if self.ready(i)]
        for i in running:                  # hotplug: remap under stopped rings
            self._stop_ring(i)
        if self.mem:
            control.close_fds(self.mem[1])
        self.mem = (list(regions), list(fds))
        for w in self.workers:
            self._send_mem(w)
        for i in running:
            self._start_ring(i, base=self.rings[i].last_avail)

    def _same_memory(self, regions, fds):
        """The table we have, each region backed by the same file."""
        if not self.mem or list(regions) != self.mem[0]:
            return False
        try:
            return all(same_file(a, b) for a, b in zip(fds, self.mem[1]))
        except OSError:
            return False

    def _send_mem(self, w):
        regions, fds = self.mem
        msg = pb.MemTable(regions=[pb.Region(guest_addr=r.guest_addr, size=r.size,
                                             user_addr=r.user_addr, mmap_offset=r.mmap_offset)
                                   for r in regions])
        self._send(w, fds, mem_table=msg)

    def get_vring_base(self, i):
        ring = self.rings[i]
        if ring.base_lost:
            raise vhost_user.BackendError(
                "ring %d: its worker did not say where it stopped" % i)
        if ring.last_avail is not None:
            return ring.last_avail
        return self.conn.rings[i].base

    def set_vring_base(self, i, base):
        self.rings[i].last_avail = None    # the VMM's base wins from now on
        self.rings[i].base_lost = False

    def set_vring_addr(self, i, desc, used, avail, log):
        """Only a running ring's log can change (migration starts or ends):
        its worker restarts the ring with the new one."""
        if self.ready(i):
            self._stop_ring(i)
            self._start_ring(i, base=self.rings[i].last_avail)

    def set_vring_kick(self, i, fd):
        self._replace_fd(i, "kick", fd)

    def set_vring_call(self, i, fd):
        self._replace_fd(i, "call", fd)

    def _replace_fd(self, i, which, fd):
        """A new kick or call eventfd; a running ring's worker must use the
        new one from now on, so it is stopped and started again."""
        ring = self.rings[i]
        ring.set(which, fd)
        if self.ready(i):
            self._stop_ring(i)
            self._start_ring(i, base=ring.last_avail)

    def set_vring_enable(self, i, enabled):
        # The VMM's ack (REPLY_ACK) must mean the worker holds it.
        w = self.workers[i]
        if self.ready(i):
            self._ask(w, "ring_enabled", ring_enable=pb.RingEnable(enabled=enabled))

    def ring_ready_changed(self, i, ready):
        if ready:
            self.ran = True
            self._start_ring(i)
        else:
            self._stop_ring(i)

    # ---- rings ----------------------------------------------------------

    def _start_ring(self, i, base=None, resume=False):
        ring = self.rings[i]
        state = self.conn.rings[i] if self.conn else None
        if state is None or ring.kick is None or self.mem is None:
            return
        w = self.workers[i]
        if w.chan is None:
            if not w.asked and w.timer is None:
                self._ask_worker(w)         # its first use: _restore starts the ring
            return
        fds = [ring.kick] + ([ring.call] if ring.call is not None else [])
        msg = pb.RingStart(num=state.num, desc_user_addr=state.desc,
                           avail_user_addr=state.avail, used_user_addr=state.used,
                           base=state.base if base is None else base,
                           has_call=ring.call is not None,
                           enabled=self.conn.ring_enabled(i), resume=resume,
                           log_used=state.log is not None,
                           log_guest_addr=state.log or 0)
        ring.last_avail = None
        ring.base_lost = False
        self._send(self.workers[i], fds, ring_start=msg)

    def _stop_ring(self, i):
        """Stop ring i in its worker and keep its next avail index. Without
        the worker's answer the index is unknown: GET_VRING_BASE then fails
        (the VMM must not resume from a guess)."""
        ring = self.rings[i]
        reply = self._ask(self.workers[i], "ring_stopped", ring_stop=pb.RingStop())
        if reply is None:
            ring.base_lost = True
        else:
            ring.last_avail = reply.ring_stopped.last_avail

    # ---- workers --------------------------------------------------------

    def _ask_worker(self, w):
        w.timer = None
        w.asked = True
        self._to_parent(spawn=pb.Spawn(role=w.role, queue_pair=w.queue_pair))

    def _worker_arrived(self, msg, fds):
        ring = 2 * msg.queue_pair + (msg.role == pb.ROLE_TX)
        if msg.role not in ROLE_NAME or ring >= len(self.workers) or len(fds) != 1:
            control.close_fds(fds)
            return
        w = self.workers[ring]
        if w.chan is not None:
            self._drop_worker(w)
        w.chan = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fileno=fds[0])
        w.pid = msg.pid
        w.asked = False
        self.loop.watch(w.chan, lambda: self._from_worker(w))
        self._restore(w)
        self._report_state()

    def _restore(self, w):
        """Bring a new worker to where its predecessor was."""
        if self.worker_features is not None and self.vmm_features:
            self._send(w, features=self.worker_features)
        if self.mem:
            self._send_mem(w)
        if self.dirty_log:
            self._send_log(w)
        if self.ready(w.ring):
            self._start_ring(w.ring, resume=True)

    def _drop_worker(self, w):
        if w.chan is not None:
            self.loop.unwatch(w.chan)
            w.chan.close()
            w.chan = None

    def _worker_lost(self, w, why):
        """A worker died or stopped answering. The parent kills what is left
        of it when it forks the next one; that waits on a timer."""
        self._drop_worker(w)
        if w.timer is not None or w.asked:
            return
        now = time.monotonic()
        w.failures.append(now)
        while w.failures and now - w.failures[0] > FAILURE_WINDOW:
            w.failures.popleft()
        self.restarts += 1
        log.warning("%s: %s worker %d %s", self.name, w.name, w.pid, why)
        if self.mem and any(fdkind.shrunk(fd, r.size, r.mmap_offset)
                            for r, fd in zip(*self.mem)):
            self._disconnect("a guest memory file shrank under its mapping")
        elif self.dirty_log and fdkind.shrunk(self.dirty_log[2], *self.dirty_log[:2]):
            self._disconnect("the dirty log file shrank under its mapping")
        elif len(w.failures) >= MAX_FAILURES:
            self._disconnect("%s worker failed %d times in %.0f s" %
                             (w.name, len(w.failures), FAILURE_WINDOW))
        delay = min(RESTART_MAX, RESTART_DELAY * 2 ** (len(w.failures) - 1))
        w.timer = self.loop.call_later(delay, lambda: self._ask_worker(w))
        self._report_state()

    def _send(self, w, fds=(), **kw):
        if w.chan is None:
            return False
        try:
            control.send(w.chan, pb.ToWorker(**kw), fds)
            return True
        except (OSError, control.ChannelError) as e:
            self._worker_lost(w, "unreachable: %s" % e)
            return False

    def _ask(self, w, field, **kw):
        """Send a request and wait for its answer, at most WORKER_TIMEOUT; a
        worker that misses it is replaced. Other messages that arrive
        meanwhile are handled as usual."""
        if not self._send(w, **kw):
            return None
        deadline = time.monotonic() + WORKER_TIMEOUT
        while w.chan is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not readable(w.chan, left):
                self._worker_lost(w, "did not answer within %.0f s" % WORKER_TIMEOUT)
                return None
            msg = self._recv_worker(w)
            if msg is None:
                return None
            if msg.WhichOneof("msg") == field:
                return msg
            self._worker_message(w, msg)
        return None

    def _recv_worker(self, w):
        try:
            msg, fds = control.recv(w.chan, pb.FromWorker, wait=False)
        except BlockingIOError:
            return None
        except (OSError, control.ChannelError) as e:
            self._worker_lost(w, "channel: %s" % e)
            return None
        control.close_fds(fds)              # workers never send fds
        if msg is None:
            self._worker_lost(w, "exited")
        return msg

    def _from_worker(self, w):
        msg = self._recv_worker(w)
        if msg is not None:
            self._worker_message(w, msg)

    def _worker_message(self, w, msg):
        kind = msg.WhichOneof("msg")
        if kind == "dhcp":
            self._to_parent(dhcp=msg.dhcp)
        elif kind == "ring_failed":
            self._disconnect("%s ring failed: %s" % (w.name, msg.ring_failed[:LOG_TEXT_MAX]))
        elif kind == "error":
            log.warning("%s: %s worker: %s", self.name, w.name, msg.error[:LOG_TEXT_MAX])
        elif kind == "forbidden_syscall":
            log.error("%s: %s worker %d made forbidden system call %d (%s)", self.name,
                      w.name, w.pid, msg.forbidden_syscall,
                      sandbox.syscall_name(msg.forbidden_syscall))
        else:
            log.debug("%s: unexpected %s from %s worker", self.name, kind, w.name)

    def _counters(self):
        """Every worker's counters, named "PAIR/rx_NAME" or "PAIR/tx_NAME"."""
        out = []
        for w in self.workers:
            reply = self._ask(w, "stats", stats=pb.StatsRequest())
            if reply is not None:
                out += [pb.Counter(name="%d/%s_%s" % (w.queue_pair, ROLE_NAME[w.role], c.name),
                                   value=c.value)
                        for c in reply.stats.counters]
        return out


def same_file(a, b):
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def readable(sock, seconds):
    p = select.poll()
    p.register(sock, select.POLLIN)
    return bool(p.poll(seconds * 1000))


class ParentLog(logging.Handler):
    """Log lines go to the parent, which writes them (a session cannot open
    syslog's socket) and collapses repeats."""

    def __init__(self, session):
        super().__init__()
        self.session = session

    def emit(self, record):
        text = "".join(c if c.isprintable() else "?" for c in record.getMessage())
        self.session._to_parent(log=pb.LogLine(level=record.levelno,
                                               text=text[:LOG_TEXT_MAX]))


def main(chan, listener, name, offered, user, root, queue_pairs=1, test_hooks=False):
    """Entry point in the forked child: listener is the interface's listening
    socket, or None in client mode. Returns the exit status."""
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)     # the parent's handlers are not ours
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.set_wakeup_fd(-1)
    setproctitle.setproctitle("vionetd: vhost %s" % name)
    s = Session(chan, listener, name, offered, queue_pairs, test_hooks)
    log.handlers[:] = [ParentLog(s)]
    keep = [chan.fileno(), s.loop.fileno()] + ([listener.fileno()] if listener else [])
    try:
        sandbox.enter(SYSCALLS, keep, user, root,
                      nonblocking_ioctl=True)     # Python's setblocking()
    except OSError as e:
        log.error("%s: cannot confine the session: %s", name, e)
        return 1
    try:
        return s.run()
    except Exception as e:
        # No traceback: printing one would open source files, which seccomp forbids.
        log.error("%s: session failed: %s: %s", name, type(e).__name__, e)
        return 1
