"""Run by a session: the connection to the VMM, from its first byte to its end.

A session serves one VMM connection at a time. It gets one in one of two ways:
- server mode: it accepts on the interface's listening socket (made by the
  parent); a second connection while one is served is refused;
- client mode (no listening socket): the parent connects to the VMM's socket
  for it (a session can reach no path) and hands over the connection
  (ToSession.dialed); a failed attempt is retried after DIAL_BACKOFF.

While connected, vhost_user.Connection reads and answers the VMM's messages
when its socket is readable, never blocking. A message that takes long to
handle (its answer waits on a worker or the parent) is held by the
Connection; the socket is not watched meanwhile, and resumed() watches it
again. A VMM that floods requests is answered MESSAGE_RATE per second: its
socket is left unread for the rest (the pacing), so its session, not the
host's CPUs, absorbs the flood. A message begun but not finished within
MESSAGE_TIMEOUT ends the connection (a timer, armed only while a message is
incomplete).

Either way, who the VMM is (SO_PEERCRED) is checked against the VM's
`vmm user` and `vmm group` before its first byte is read (vmm_identity.py);
anyone else is refused (closed, logged, the reason reported), then the next
accept or dial waits as after a short connection.

Every end goes through end(why), which closes the connection on the next
turn of the loop (never inside the Connection's own call) with the first
reason given. A VMM whose connections keep ending before a ring started is
accepted (or dialed) more and more slowly (ACCEPT_BACKOFF).
"""
import socket
import time

from vionetd import control, vhost_user
from vionetd.backoff import Backoff
from vionetd.log import log
from vionetd.session.vmm_identity import refusal

MESSAGE_TIMEOUT = 2.0             # seconds a VMM may take to finish a message
SHORT_CONNECTION = 1.0            # a VMM connection shorter than this counts for ACCEPT_BACKOFF
ACCEPT_BACKOFF = (0.05, 5.0)      # first and largest delay before the next accept
DIAL_BACKOFF = (0.1, 2.0)         # client mode: first and largest delay between attempts
MESSAGE_RATE = (2000, 2000)       # VMM messages per second, and the burst, before reading pauses
LOG_TEXT_MAX = 300
PEER_CLOSED = None                # end(PEER_CLOSED): the VMM closed between messages


class VmmLink:
    def __init__(self, session, listener, vmm=(None, None)):
        self.session = session
        self.vmm = vmm                    # (uid, gid) the VMM must have, None: any
        self.loop = session.loop
        self.listener = listener
        self.conn = None
        self.connected_at = 0.0
        self.ran = False                  # a ring of this connection started
        self.short = Backoff(*ACCEPT_BACKOFF)
        self.dials = Backoff(*DIAL_BACKOFF)
        self.ending = False               # end() was called; the close is due
        self.timeout = None               # timer of an incomplete message
        self.reason = ""                  # why the last VMM was dropped
        self.dial_error = ""              # client mode: why the last attempt failed

    @property
    def retries(self):
        """Client mode: connection attempts that failed in a row."""
        return self.dials.failures

    def start(self):
        if self.listener is not None:
            self.loop.watch(self.listener, self._accept)
        else:
            self._dial()

    # ---- getting a connection -------------------------------------------

    def _accept(self):
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        if self.conn is not None:
            log.info("%s: refusing a second VMM connection", self.session.name)
            sock.close()
            return
        self._connected(sock)

    def _dial(self):
        """Client mode: ask the parent to connect to the VMM's socket; the
        answer is dialed()."""
        self.session.parent.send(dial=True)

    def dialed(self, body, fds):
        """ToSession.dialed - the parent's attempt: the connection as the one
        fd, or the error."""
        if not body.error and len(fds) == 1 and self.conn is None:
            self.dials.reset()
            self._connected(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0,
                                          fileno=fds[0]))
            return
        control.close_fds(fds)
        delay = self.dials.fail()
        error = body.error[:LOG_TEXT_MAX]
        if self.dials.failures == 1 or error != self.dial_error:   # logged when it changes
            log.info("%s: cannot connect to the VMM (%s), retrying", self.session.name, error)
        self.dial_error = error
        self.loop.call_later(delay, self._dial)
        self.session.report_state()

    def _connected(self, sock):
        why = refusal(sock, self.vmm)
        if why:
            sock.close()
            log.warning("%s: %s", self.session.name, why)
            self.reason = why
            self.connected_at = time.monotonic()
            self.ran = False
            if self.listener is not None:
                self.loop.unwatch(self.listener)
            self._backoff()               # watches the listener, or dials, again
            self.session.report_state()
            return
        self.conn = vhost_user.Connection(sock, self.session.device, name=self.session.name,
                                          timeout=MESSAGE_TIMEOUT,
                                          queue_pairs=self.session.queue_pairs,
                                          resumed=self._resumed)
        self.connected_at = time.monotonic()
        self.ran = False
        self.tokens, self.tokens_at, self.counted = MESSAGE_RATE[1], self.connected_at, 0
        self.loop.watch(sock, self._readable)
        log.info("%s: VMM connected", self.session.name)
        self.session.report_state()

    # ---- reading --------------------------------------------------------

    def _readable(self):
        conn = self.conn
        try:
            if conn.handle_readable() is False:
                return self.end(PEER_CLOSED)
        except vhost_user.ProtocolError as e:
            return self.end("dropping VMM: %s" % e)
        except OSError as e:
            return self.end("VMM connection: %s" % e)
        self._after_message()

    def _resumed(self, error):
        """The Connection finished a message that had to wait."""
        if error is not None:
            return self.end("dropping VMM: %s" % error)
        if self.conn is not None and not self.ending:
            self.loop.watch(self.conn.sock, self._readable)
            self._after_message()

    def _after_message(self):
        conn = self.conn
        if conn is None or self.ending:
            return
        if conn.waiting:                  # resumed() watches it again
            self.loop.unwatch(conn.sock)
        elif conn.message_pending and self.timeout is None:
            self.timeout = self.loop.call_later(MESSAGE_TIMEOUT, self._overdue)
        self.session.report_state()
        self._pace()

    def _overdue(self):
        self.timeout = None
        if self.conn is None:
            return
        if self.conn.overdue(time.monotonic()):
            self.end("VMM did not finish a message within %.0f s" % MESSAGE_TIMEOUT)
        elif self.conn.message_pending:
            self.timeout = self.loop.call_later(MESSAGE_TIMEOUT / 4, self._overdue)

    def _pace(self):
        """Count the messages handled since last time against the token
        bucket; when it runs dry, stop reading until it has refilled."""
        rate, burst = MESSAGE_RATE
        conn, now = self.conn, time.monotonic()
        self.tokens = min(burst, self.tokens + (now - self.tokens_at) * rate)
        self.tokens -= conn.messages - self.counted
        self.tokens_at, self.counted = now, conn.messages
        if self.tokens < 0 and not conn.waiting:
            self.loop.unwatch(conn.sock)
            self.loop.call_later(-self.tokens / rate, lambda: self._unpause(conn))

    def _unpause(self, conn):
        if self.conn is conn and not self.ending and not conn.waiting:
            self.loop.watch(conn.sock, self._readable)

    # ---- the end --------------------------------------------------------

    def end(self, why):
        """End the connection on the next turn, for why (PEER_CLOSED: the VMM
        left between messages, not an error). The first reason counts."""
        if self.conn is None or self.ending:
            return
        self.ending = True
        self.loop.unwatch(self.conn.sock)
        if self.listener is not None:     # the next VMM is accepted after the close
            self.loop.unwatch(self.listener)
        self.loop.call_later(0, lambda: self._close(why))

    def _close(self, why):
        quiet = why is PEER_CLOSED
        if quiet and self.conn.asked_queue_num and not self.ran and \
                time.monotonic() - self.connected_at < SHORT_CONNECTION:
            # what QEMU does when it wants more pairs than we have (and then
            # reconnects, again and again: the accept backoff slows it)
            quiet = False
            why = ("VMM left before starting a queue, after asking for the number "
                   "of queue pairs (%d): does it want more? (queues in vionetd.conf)"
                   % self.session.queue_pairs)
        (log.info if quiet else log.warning)("%s: %s", self.session.name,
                                             "VMM disconnected" if quiet else why)
        if not quiet:
            self.reason = why
        if self.timeout is not None:
            self.timeout.cancel()
            self.timeout = None
        conn, self.conn, self.ending = self.conn, None, False
        conn.close()                      # reports rings stopped, then disconnected()
        self._backoff()
        self.session.report_state()

    def _backoff(self):
        """A VMM that reconnects in a tight loop (one we refuse at once, say)
        must not cost a core: after short connections that never started a
        ring, wait before the next accept (or, in client mode, the next
        connection attempt), doubling up to ACCEPT_BACKOFF[1]."""
        if self.ran or time.monotonic() - self.connected_at >= SHORT_CONNECTION:
            self.short.reset()
            delay = 0.0
        else:
            delay = self.short.fail()
        if self.listener is None:
            self.loop.call_later(delay, self._dial)
        elif delay:
            self.loop.call_later(delay, lambda: self.loop.watch(self.listener, self._accept))
        else:
            self.loop.watch(self.listener, self._accept)

    def close(self):
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.close()
