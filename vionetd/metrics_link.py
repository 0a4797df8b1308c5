"""Run by the parent (root): the metrics process, exec'd, answered and replaced.

With `metrics listen ADDR:PORT` the parent binds the TCP socket (so a port
below 1024 works) and starts the metrics process (metrics.py, exec'd by
spawn.exec_module: it reads HTTP from the network and must not share the
root parent's memory layout) with it and a channel. The parent never reads
an HTTP byte: from the channel it takes one FromMetrics message at a time,
answers a stats request with the CtlReply vionetctl stats would get
(CtlServer.stats), at most once per MIN_INTERVAL (a request sooner waits on
a timer), and logs a forbidden system call. Anything else, or a message
that does not parse, kills the process; one that dies is started again
after a delay that doubles while it keeps dying (backoff.Backoff).

Invariants: at most one request is being answered; the reply is sent
non-blocking with a send buffer large enough for it, and dropped if it does
not fit (the process answers its clients 503 and asks again); nothing here
waits for the process.
"""
import os
import signal
import socket
import time

from vionetd import config, control, spawn
from vionetd import vionetd_pb2 as pb
from vionetd.backoff import Backoff
from vionetd.ctl import SNDBUF, SO_SNDBUFFORCE
from vionetd.log import log

MIN_INTERVAL = 1.0            # seconds between two answers
RESPAWN = (0.5, 30.0)         # first and largest delay before a new process
MAX_MESSAGE = 64              # a FromMetrics is a few bytes


def settings(conf):
    """What the metrics process depends on in conf: a change restarts it."""
    return (conf.metrics_listen, conf.user, conf.chroot) if conf.metrics_listen else None


def listen(addr):
    """The TCP socket of "metrics listen" (ADDR, PORT), non-blocking."""
    host, port = addr
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(128)
    except OSError:
        s.close()
        raise
    s.setblocking(False)
    return s


class MetricsLink:
    def __init__(self, parent, conf, listener=None):
        """listener: the socket of a process this one replaces, when the
        address is the same; else a new one is bound (OSError if it cannot)."""
        self.parent = parent
        self.key = settings(conf)
        self.listener = listener or listen(conf.metrics_listen)
        self.pid = None
        self.chan = None
        self.busy = False           # a request is being answered
        self.last = -MIN_INTERVAL   # when the last answer was asked for
        self.deaths = Backoff(*RESPAWN)
        self.timer = None           # respawn, or a request that came too soon
        self.stopped = False

    def start(self):
        self.timer = None
        mine, theirs = control.pair()
        _, user, chroot = self.key
        pid = spawn.exec_module("metrics", [theirs.fileno(), self.listener.fileno()],
                                [user, chroot or config.DEFAULT_CHROOT])
        theirs.close()
        mine.setblocking(False)
        self.pid, self.chan, self.busy = pid, mine, False
        self.parent.watch(mine, self._readable)
        host, port = self.key[0]
        log.info("metrics: serving http://%s:%d/metrics (pid %d)", host, port, pid)

    def _readable(self):
        try:
            data, _, flags, _ = self.chan.recvmsg(MAX_MESSAGE)
        except BlockingIOError:
            return
        except OSError as e:
            return self._kill("channel: %s" % e)
        if not data:
            self.parent.unwatch(self.chan)     # it is exiting: SIGCHLD says how
            return
        msg = pb.FromMetrics()
        try:
            msg.ParseFromString(data)
        except Exception:
            msg = None
        kind = msg.WhichOneof("msg") if msg is not None and not flags & socket.MSG_TRUNC \
            else None
        if kind == "forbidden_syscall":
            from vionetd import sandbox
            log.error("metrics: process %d made forbidden system call %d (%s)", self.pid,
                      msg.forbidden_syscall, sandbox.syscall_name(msg.forbidden_syscall))
        elif kind == "stats" and not self.busy:
            self._ask()
        else:
            self._kill("sent %s" % ("a second request" if kind == "stats" else "garbage"))

    def _ask(self):
        """Answer now, or when MIN_INTERVAL has passed since the last."""
        self.busy = True
        wait = self.last + MIN_INTERVAL - time.monotonic()
        if wait > 0:
            self.timer = self.parent.loop.call_later(wait, self._ask_now)
        else:
            self._ask_now()

    def _ask_now(self):
        self.timer = None
        self.last = time.monotonic()
        chan = self.chan
        self.parent.ctl.stats(lambda reply: self._reply(chan, reply))

    def _reply(self, chan, reply):
        if chan is not self.chan:
            return                      # for a process that has gone
        self.busy = False
        try:
            chan.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SNDBUF)
            chan.send(reply.SerializeToString())
        except OSError as e:
            log.debug("metrics: reply not sent: %s", e)

    def _kill(self, why):
        log.warning("metrics: killing process %s: %s", self.pid, why)
        self._end()

    def _end(self):
        if self.chan is not None:
            self.parent.unwatch(self.chan)
            self.chan.close()
            self.chan = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def child_died(self, pid):
        """SIGCHLD reaped pid: True if it was the metrics process, which is
        then replaced after the backoff's delay."""
        if pid != self.pid:
            return False
        self.pid = None
        self._end()
        if not self.stopped:
            delay = self.deaths.fail()
            log.warning("metrics: process exited; a new one in %.1f s", delay)
            self.timer = self.parent.loop.call_later(delay, self.start)
        return True

    def stop(self, keep_listener=False):
        """No more metrics: the process is killed (reaped by the parent's
        SIGCHLD, which no longer replaces it), the socket closed unless the
        next process takes it."""
        self.stopped = True
        self._end()
        if not keep_listener:
            self.listener.close()


def follow(parent, link, conf):
    """Start, restart or stop the metrics process (link: the MetricsLink
    running now, or None) as conf says: its address, user or chroot changed,
    a new one. A new socket is bound before the old one goes, so an address
    that cannot be bound leaves the old process serving. Returns (error or
    None, the MetricsLink from now on)."""
    want = settings(conf)
    if link is not None and link.key == want:
        return None, link
    same = link is not None and want is not None and link.key[0] == want[0]
    new = None
    if want is not None:
        try:
            new = MetricsLink(parent, conf, link.listener if same else None)
        except OSError as e:
            return "metrics listen %s:%d: %s" % (*conf.metrics_listen, e.strerror or e), link
    if link is not None:
        link.stop(keep_listener=same)
    if new is not None:
        new.start()
    return None, new
