"""Run by the parent (root): its end of the channel to one interface's session.

A session is unprivileged and reads everything its VMM sends, so the parent
takes from it FromSession messages only (proto/vionetd.proto), read
non-blocking and without ancillary data (control.recv with fds=False: the
kernel discards any fd a session sends, so the parent never installs one,
nor closes one whose close could block), at most MESSAGES_PER_TURN per
readable event, and each goes through one dispatch table (control.Table), a
row per field. Each row checks its message before it acts: a state among
STATES and VMM features the VMM may ack (features.vmm_may_ack), features
inside that too, a worker of a known role and queue pair, an MTU in
68..65535, a dial only in client mode (beyond DIAL_BUDGET: refused), DHCP
only on a local interface and as dhcp.fields() makes it, counters only
when asked for, a unicast MAC to announce, text (a reason, a log line and
its format) at most TEXT_LIMIT characters, made
printable. A row returns None, or the rule the session broke: the session is
then killed with that reason and replaced (children.py), as is one whose
datagram carried fds, was empty, truncated, does not parse, has fields its
type does not know or no field the table knows, and one that reports a
forbidden system call (it broke its sandbox: logged, then killed).

A session's log lines and forbidden-call reports take a token from its
bucket (LOG_BUDGET); lines beyond it are counted, and the next line written
(or the session's end) says how many were dropped.

Invariants: no fd a session sends reaches the parent; a callback waiting
for counters is called once, with {} if the session goes first.
"""
import collections

from vionetd import control, dhcp, features, vmmsocket
from vionetd import vionetd_pb2 as pb
from vionetd.backoff import Bucket, take_slot
from vionetd.control import ROLE_NAME
from vionetd.log import log, printable

STATES = ("waiting", "connecting", "connected", "running")
MESSAGES_PER_TURN = 32        # session messages handled per readable event
TEXT_LIMIT = 300              # characters of a reason, a log line, its format
COUNTER_NAME_LIMIT = 64
DIAL_BUDGET = (10, 1.0)       # client mode: at most 10 connection attempts a second
COUNTERS_LIMIT = 4096         # counters in one Stats message (16 pairs: 2432)
MTU_RANGE = (68, 65535)       # virtio-net's mtu is a u16; IPv4's minimum
LOG_BUDGET = (30, 0.5)        # a session's log lines: a burst of 30, then one per 2 s


class SessionChannel:
    def __init__(self, port, sock):
        self.port = port
        self.sock = sock            # non-blocking; None once closed
        self.session = pb.SessionState(state="waiting")   # its last report
        self.pending_stats = collections.deque()         # callbacks, oldest first
        self.dials = collections.deque()                 # times of recent dials
        self.log_budget = Bucket(*LOG_BUDGET)
        self.table = control.Table({
            "state": self._state, "features": self._features, "spawn": self._spawn,
            "set_mtu": self._set_mtu, "dial": self._dial, "dhcp": self._dhcp,
            "router_solicit": lambda rs: self.port.inet6.solicited(rs),
            "dhcp6": lambda req: self.port.inet6.dhcp6(req),
            "stats": self._stats, "log": self._log, "announce": self._announce,
            "forbidden_syscall": self._forbidden_syscall})

    # ---- the channel ----------------------------------------------------

    def send(self, fds=(), **kw):
        """One ToSession; False if the session cannot be reached (it is
        then killed and replaced)."""
        if self.sock is None:
            return False
        try:
            control.send(self.sock, pb.ToSession(**kw), fds)
            return True
        except (OSError, control.ChannelError) as e:
            self.port.children.session_died("unreachable: %s" % e)
            return False

    def readable(self):
        """The loop's callback: handle what the session sent."""
        sock = self.sock
        if sock is None:
            return
        try:
            for msg, fds in control.receive(sock, pb.FromSession, MESSAGES_PER_TURN,
                                            fds=False):
                if msg is None:
                    self.port.parent.unwatch(sock)   # it is dying; SIGCHLD tells how
                    return
                why = self.handle(msg, fds)
                if why:
                    self.port.children.session_died("killed: %s" % why)
                    return
                if self.sock is not sock:           # ended while handling it
                    return
        except (OSError, control.ChannelError) as e:
            self.port.children.session_died("killed: %s" % e)

    def handle(self, msg, fds=()):
        """Handle one message (fds: none, as read); the rule it breaks, or None."""
        try:
            return self.table.dispatch(msg, fds)
        except control.ChannelError as e:
            return str(e)

    def close(self):
        """Forget the session: its counters will not come."""
        if self.sock is not None:
            if self.port.parent is not None:
                self.port.parent.unwatch(self.sock)
            self.sock.close()
            self.sock = None
            self._dropped()
        while self.pending_stats:
            self.pending_stats.popleft()({})

    def request_stats(self, done):
        """Ask the session for counters; done({name: value}) is called with
        them, or with {} if the session cannot answer."""
        if self.send(stats=pb.StatsRequest()):
            self.pending_stats.append(done)
        else:
            done({})

    # ---- the rows: each returns None or the rule broken -----------------

    def _state(self, st):
        if st.state not in STATES or st.vmm_features & ~features.vmm_may_ack(self.port.offered) \
                or len(st.reason) > TEXT_LIMIT or (st.mtu and not mtu_ok(st.mtu)):
            return "bad state message"
        if st.state in ("waiting", "connecting"):
            self.port.tap.vmm_gone()
        if st.state == "running" and self.session.state != "running":
            self.port.inet6.running()       # unsolicited router advertisements
        self.session = st
        if st.reason:
            self.port.reason = printable(st.reason)
        return None

    def _features(self, value):
        if value & ~features.vmm_may_ack(self.port.offered):
            return "features %#x not offered" % value
        self.send(features=self.port.tap.features(value))
        return None

    def _spawn(self, spawn):
        if spawn.role not in ROLE_NAME or spawn.queue_pair >= self.port.queue_pairs:
            return "no worker %d of pair %d" % (spawn.role, spawn.queue_pair)
        self.port.children.spawn_worker(spawn.role, spawn.queue_pair)
        return None

    def _set_mtu(self, mtu):
        if not mtu_ok(mtu):
            return "MTU %d out of range" % mtu
        self.send(mtu=pb.MtuResult(error=self.port.tap.set_mtu(mtu)))
        return None

    def _dial(self, _):
        if not self.port.client_mode:
            return "dial on a listening interface"
        self.dial_vmm()
        return None

    def dial_vmm(self):
        """Client mode: connect to the VMM's socket for the session, as the
        VM's uid (vmmsocket.connect), at most DIAL_BUDGET times per window
        (the session backs off too; this holds for one that does not). A
        unix socket connects at once or fails at once (no listener, no room)."""
        if take_slot(self.dials, DIAL_BUDGET):
            self.send(dialed=pb.Dialed(error="dialing too often"))
            return
        port = self.port
        try:
            s = vmmsocket.connect(port.iface.socket, timeout=0,     # never waits
                                  ident=port.ident, groups=port.dial_groups)
        except OSError as e:
            self.send(dialed=pb.Dialed(error=e.strerror or str(e)))
            return
        self.send([s.fileno()], dialed=pb.Dialed())
        s.close()

    def _dhcp(self, request):
        if not self.port.iface.local:
            return "DHCP on an interface that is not local"
        if not dhcp.well_formed(request):
            return "DHCP request that dhcp.fields() cannot make"
        reply = dhcp.decide(self.port, request)
        if reply is not None:
            self.send(dhcp_reply=reply)
        return None

    def _stats(self, stats):
        if not self.pending_stats:
            return "counters nobody asked for"
        if len(stats.counters) > COUNTERS_LIMIT or any(
                len(c.name) > COUNTER_NAME_LIMIT for c in stats.counters):
            return "counters over %d, or a name over %d characters" % (COUNTERS_LIMIT,
                                                                       COUNTER_NAME_LIMIT)
        self.pending_stats.popleft()({printable(c.name): c.value for c in stats.counters})
        return None

    def _log(self, line):
        if len(line.text) > TEXT_LIMIT or len(line.format) > TEXT_LIMIT \
                or not 1 <= line.level <= 50:
            return "log line over %d characters or of level %d" % (TEXT_LIMIT, line.level)
        if not self._budget():
            return None
        key = self.port.key
        text = printable(line.text)
        if text.startswith(key + ":"):
            text = text[len(key) + 1:].lstrip()
        log.log(max(line.level, 10), "%s: %s", key, text,
                extra={"source": key, "form": printable(line.format) or text})
        return None

    def _budget(self):
        """A token for one more line of this session; the first line after
        some were dropped says how many."""
        if not self.log_budget.take():
            return False
        self._dropped()
        return True

    def _dropped(self):
        n = self.log_budget.refused()
        if n:
            log.warning("%s: %d log lines of session %s dropped (over its budget)",
                        self.port.key, n, self.port.children.session_pid)

    def _announce(self, mac):
        if len(mac) != 6 or mac[0] & 1:
            return "announce of %s: not a unicast MAC" % (
                mac.hex() if len(mac) <= 6 else "%d bytes" % len(mac))
        self.port.tap.announce(mac)
        return None

    def _forbidden_syscall(self, number):
        from vionetd import sandbox
        if self._budget():
            log.error("%s: session %s made forbidden system call %d (%s)", self.port.key,
                      self.port.children.session_pid, number, sandbox.syscall_name(number))
        return "forbidden system call %d" % number


def mtu_ok(mtu):
    return MTU_RANGE[0] <= mtu <= MTU_RANGE[1]
