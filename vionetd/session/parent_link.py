"""Run by a session: its channel to the parent (root), both directions.

What the session tells the parent (FromSession, proto/vionetd.proto): its
state, the VMM's features and MTU (the parent sets the tap's offloads and
MTU and answers), spawn requests for workers, DHCP requests from the tx
worker of a local interface, counters, log lines (a session cannot open
syslog's socket), RARP announcements, dial requests in client mode.

What the parent sends (ToSession) is handled through one table, one row per
field; the rows for a worker's channel and a dialed VMM connection take the
message's fd, every other row's fds are closed by control.Table.

A request that wants an answer (features, set_mtu) returns a Reply that the
answer completes; the parent answers in order, so the answers owed are a
queue. One that does not come within PARENT_TIMEOUT completes with None.
Sending blocks (messages are small and the parent reads them as they
come); receiving never does. If the parent is gone the session ends.
"""
import collections
import logging

from vionetd import control, sandbox
from vionetd import vionetd_pb2 as pb
from vionetd.eventloop import Reply
from vionetd.log import log, printable

PARENT_TIMEOUT = 2.0          # seconds the parent may take to answer
LOG_TEXT_MAX = 300
MESSAGES_PER_TURN = 32        # parent messages handled per readable event


class ParentLink:
    def __init__(self, session, chan, test_hooks=False):
        self.session = session
        self.chan = chan
        self.owed = collections.deque()       # (field, Reply, Timer)
        self._sent_state = None
        rows = {
            "worker": control.with_fds(session.workers.arrived),
            "dialed": control.with_fds(session.vmm.dialed),
            "features": lambda body: self._answer("features", body),
            "mtu": lambda body: self._answer("mtu", body),
            # DHCP, DHCPv6 replies and router advertisements go to pair 0's
            # rx worker, which puts them in the guest's RX ring
            "dhcp_reply": lambda body: session.workers.send(session.workers.workers[0],
                                                            dhcp_reply=body),
            "dhcp6_reply": lambda body: session.workers.send(session.workers.workers[0],
                                                             dhcp6_reply=body),
            "router_advert": lambda body: session.workers.send(session.workers.workers[0],
                                                               router_advert=body),
            "limits": session.limits.set,
            "stats": lambda body: session.workers.counters(
                lambda counters: self.send(stats=pb.Stats(counters=counters))),
        }
        if test_hooks:
            rows["test_forbidden_call"] = sandbox.test_forbidden_call
        self.table = control.Table(rows)
        session.loop.watch(chan, self.readable)

    def send(self, **kw):
        try:
            control.send(self.chan, pb.FromSession(**kw))
        except OSError:
            self.session.stop()             # the parent is gone: so are we

    def request(self, field, **kw):
        """Send a request whose answer is ToSession.<field>: a Reply."""
        reply = Reply()
        timer = self.session.loop.call_later(PARENT_TIMEOUT, lambda: self._late(reply))
        self.owed.append((field, reply, timer))
        self.send(**kw)
        return reply

    def _late(self, reply):
        """The parent did not answer in time: the request fails. Its entry
        stays queued, since the answer may still come in its turn."""
        reply.set(None)

    def _answer(self, field, body):
        """The parent's answer to the oldest request it owes (one that timed
        out meanwhile takes it and drops it: Reply.set counts once)."""
        if not self.owed or self.owed[0][0] != field:
            return                          # nobody asked: dropped
        _, reply, timer = self.owed.popleft()
        timer.cancel()
        reply.set(body)

    def readable(self):
        try:
            for msg, fds in control.receive(self.chan, pb.ToSession, MESSAGES_PER_TURN):
                if msg is None:
                    return self.session.stop()
                self._dispatch(msg, fds)
        except (OSError, control.ChannelError) as e:
            log.error("%s: parent channel: %s", self.session.name, e)
            self.session.stop()

    def _dispatch(self, msg, fds):
        try:
            self.table.dispatch(msg, fds)
        except control.ChannelError as e:
            log.warning("%s: from the parent: %s", self.session.name, e)

    def report_state(self, state):
        if state != self._sent_state:
            self._sent_state = state
            self.send(state=state)


class ParentLog(logging.Handler):
    """Log lines go to the parent, which writes them (a session cannot open
    syslog's socket) and collapses repeats by the format sent with each."""

    def __init__(self, link):
        super().__init__()
        self.link = link

    def emit(self, record):
        self.link.send(log=pb.LogLine(level=record.levelno,
                                      text=printable(record.getMessage(), LOG_TEXT_MAX),
                                      format=printable(str(record.msg), LOG_TEXT_MAX)))
