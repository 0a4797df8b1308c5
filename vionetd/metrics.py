"""Run by the metrics process: GET /metrics over HTTP, unprivileged and confined.

With `metrics listen ADDR:PORT` in vionetd.conf the parent binds that TCP
socket and execs this process (metrics_link.py), which confines itself
(sandbox.enter: the global user of vionetd.conf, an empty root, the allow-list SYSCALLS
below) and then serves, from one poll() loop:

- GET /metrics: the Prometheus text (prometheus.py) of the counters it asks
  the parent for (FromMetrics.stats; the answer is one CtlReply). What it
  got is served for CACHE_SECONDS, so a client that floods costs the parent
  at most one request a second; clients that arrive meanwhile wait for the
  answer (at most ANSWER_WAIT, then 503);
- anything else: 405 for another method, 404 for another path, 400 for
  what does not parse or is longer than MAX_REQUEST bytes; every response
  closes its connection.

Bounds: at most MAX_CLIENTS connections (a new one pushes out the oldest),
each given CLIENT_SECONDS from accept to its last byte sent; a client that
sends slowly or never reads its answer only holds its own slot. Nothing
here can slow the parent or a VM: the parent reads one small message from
this process at a time and answers it once a second at most.
"""
import collections
import select
import signal
import socket
import sys
import time

import setproctitle

from vionetd import prometheus, sandbox
from vionetd import vionetd_pb2 as pb

MAX_CLIENTS = 40              # below the sandbox's RLIMIT_NOFILE (WORKER_NOFILE, 64)
MAX_REQUEST = 4096            # bytes of request line and headers
CLIENT_SECONDS = 10.0         # from accept to the last byte of the answer
CACHE_SECONDS = 1.0
ANSWER_WAIT = 3.0             # seconds to wait for the parent's counters
LINGER = 1.0                  # seconds a sent answer waits for the client to close
ACCEPTS_PER_TURN = 64
MAX_REPLY = 16 << 20          # the parent's CtlReply (vionetctl takes as much)

# What the metrics process needs beyond sandbox.COMMON, and why.
SYSCALLS = {
    "accept4": "the HTTP clients (socket.accept)",
    "getsockname": "Python's socket.accept() reads the new socket's address",
    "shutdown": "the answer's end (SHUT_WR) before the rest of a request is read away",
}

STATUS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
          503: "Service Unavailable"}


def response(code, body=b"", content_type="text/plain; charset=utf-8"):
    head = ["HTTP/1.1 %d %s" % (code, STATUS[code]), "Content-Type: " + content_type,
            "Content-Length: %d" % len(body), "Connection: close"]
    if code == 405:
        head.append("Allow: GET")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def route(request):
    """What a complete request head (bytes) gets: a status, or None for GET /metrics."""
    try:
        line = request.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode("ascii")
        method, target, version = line.split(" ")
    except (UnicodeDecodeError, ValueError):
        return 400
    if not version.startswith("HTTP/1."):
        return 400
    if method != "GET":
        return 405
    if target.split("?", 1)[0] != "/metrics":
        return 404
    return None


class Client:
    def __init__(self, sock, now):
        self.sock = sock
        self.until = now + CLIENT_SECONDS
        self.data = b""
        self.out = None           # the answer, once known; what is left of it
        self.waiting = False      # for the parent's counters
        self.closing = False      # answered: what the client still sends is read away


class Server:
    """The listener, the clients and the parent's channel, on one poll()."""

    def __init__(self, chan, listener):
        self.chan, self.listener = chan, listener
        self.clients = collections.OrderedDict()    # fd -> Client, oldest first
        self.poll = select.poll()
        self.poll.register(chan, select.POLLIN)
        self.poll.register(listener, select.POLLIN)
        self.text, self.text_at = None, -CACHE_SECONDS
        self.asked_at = None      # a request to the parent is out since then

    def run(self):
        while True:
            for fd, ev in self.poll.poll(self._timeout()):
                if fd == self.chan.fileno():
                    if not self._from_parent():
                        return 0
                elif fd == self.listener.fileno():
                    self._accept()
                elif fd in self.clients:
                    self._serve(self.clients[fd], ev)
            self._expire()

    def _timeout(self):
        """ms until the next deadline (a client's, the parent's answer's)."""
        now = time.monotonic()
        ends = [c.until for c in self.clients.values()]
        if self.asked_at is not None:
            ends.append(self.asked_at + ANSWER_WAIT)
        return max(0, int((min(ends) - now) * 1000) + 1) if ends else None

    # ---- clients ------------------------------------------------------------

    def _accept(self):
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, ConnectionAbortedError):
                return
            except OSError:
                return            # out of fds: the kernel keeps it queued
            sock.setblocking(False)
            if len(self.clients) >= MAX_CLIENTS:
                self._drop(next(iter(self.clients.values())))
            self.clients[sock.fileno()] = Client(sock, time.monotonic())
            self.poll.register(sock, select.POLLIN)

    def _serve(self, c, ev):
        if ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL) and c.out is None:
            return self._drop(c)
        if c.closing:
            return self._discard(c)
        if c.out is not None:
            return self._write(c)
        try:
            data = c.sock.recv(MAX_REQUEST + 1 - len(c.data))
        except BlockingIOError:
            return
        except OSError:
            return self._drop(c)
        if not data:
            return self._drop(c)
        c.data += data
        if b"\r\n\r\n" in c.data or b"\n\n" in c.data:
            self._answer(c, route(c.data))
        elif len(c.data) > MAX_REQUEST:
            self._answer(c, 400)

    def _answer(self, c, code):
        if code is not None:
            return self._send(c, response(code, (STATUS[code] + "\n").encode()))
        now = time.monotonic()
        if self.text is not None and now - self.text_at < CACHE_SECONDS:
            return self._send(c, response(200, self.text, prometheus.CONTENT_TYPE))
        c.waiting = True
        self.poll.modify(c.sock, 0)
        if self.asked_at is None:
            self.asked_at = now     # no answer within ANSWER_WAIT: 503
            try:
                self.chan.send(pb.FromMetrics(stats=True).SerializeToString())
            except BlockingIOError:
                pass

    def _send(self, c, data):
        c.waiting = False
        c.out = data
        self.poll.modify(c.sock, select.POLLOUT)
        self._write(c)

    def _write(self, c):
        try:
            n = c.sock.send(c.out)
        except BlockingIOError:
            return
        except OSError:
            return self._drop(c)
        c.out = c.out[n:]
        if not c.out:
            self._linger(c)

    def _linger(self, c):
        """The answer is sent: close our side and read away what the client
        still sends (closing with unread bytes would reset the connection,
        and the client might lose the answer), for LINGER at most."""
        try:
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return self._drop(c)
        c.out, c.closing = None, True
        c.until = min(c.until, time.monotonic() + LINGER)
        self.poll.modify(c.sock, select.POLLIN)

    def _discard(self, c):
        try:
            if c.sock.recv(1 << 16):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        self._drop(c)

    def _drop(self, c):
        self.clients.pop(c.sock.fileno(), None)
        self.poll.unregister(c.sock)
        c.sock.close()

    def _expire(self):
        now = time.monotonic()
        for c in [c for c in self.clients.values() if c.until <= now]:
            self._drop(c)
        if self.asked_at is not None and now - self.asked_at >= ANSWER_WAIT:
            self.asked_at = None
            self._release(response(503, b"no counters from the daemon\n"))

    # ---- the parent ---------------------------------------------------------

    def _from_parent(self):
        """The parent's CtlReply; False when the parent has gone."""
        try:       # MSG_TRUNC: the datagram's real length, without taking it
            size = self.chan.recv_into(bytearray(1), 1, socket.MSG_PEEK | socket.MSG_TRUNC)
            data = self.chan.recv(min(max(size, 1), MAX_REPLY))
        except BlockingIOError:
            return True
        if not data:
            return False
        self.asked_at = None
        reply = pb.CtlReply()
        try:
            reply.ParseFromString(data)
            self.text, self.text_at = prometheus.exposition(reply).encode(), time.monotonic()
            out = response(200, self.text, prometheus.CONTENT_TYPE)
        except Exception:         # a reply that does not parse: say so, keep going
            out = response(503, b"bad counters from the daemon\n")
        self._release(out)
        return True

    def _release(self, data):
        for c in [c for c in self.clients.values() if c.waiting]:
            self._send(c, data)


CHANNEL_FD, LISTENER_FD = 3, 4     # where spawn.exec_module puts them


def main(argv):
    """`python -m vionetd.metrics PARENT_PID USER ROOT`, the channel at fd 3
    and the listening socket at fd 4. Returns the exit status."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # the parent's to handle
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    setproctitle.setproctitle("vionetd: metrics")
    try:
        parent, user, root = int(argv[1]), argv[2], argv[3]
        sandbox.die_with_parent(parent)
        chan = socket.socket(fileno=CHANNEL_FD)
        listener = socket.socket(fileno=LISTENER_FD)
        sandbox.enter(SYSCALLS, [CHANNEL_FD, LISTENER_FD], sandbox.identity(user), root,
                      nonblocking_ioctl=True)
    except (OSError, ValueError, IndexError) as e:
        print("vionetd: metrics: cannot confine: %s" % e, file=sys.stderr)
        return 1
    chan.setblocking(False)
    try:
        return Server(chan, listener).run()
    except OSError as e:
        print("vionetd: metrics: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
