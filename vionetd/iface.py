"""The parent's side of one VM interface: its tap, its socket, its processes.

The parent (root) owns, per VM interface:
- the tap, opened here (one fd per queue pair, IFF_MULTI_QUEUE when there
  are several) and configured with pyroute2 (links.py);
- the listening vhost-user socket, created here and handed to the session;
  in client mode (the VMM listens) it connects to the VMM's socket when the
  session asks and hands over the connection, and never reads from it;
- the session (session.py), forked here with the socket and a channel, and
  replaced when it dies, after a delay that doubles while it keeps dying
  young; the VMM reconnects to the new one;
- the workers the session asks for: forked here (only the parent may fork),
  given their tap and name, and their channels handed to the session; the
  one a new worker replaces is killed first;
- for a local interface, its address and DHCP lease (dhcp.decide).

It never reads a byte a VMM wrote. From the session it takes FromSession
messages only, each checked: a state among the known ones, features inside
the offer, a known role, printable log text; an fd that comes along is
closed at once, and a session that sends what does not parse is killed.
"""
import collections
import os
import signal
import time

from vionetd import config, control, dhcp, features, links, tap, vmmsocket
from vionetd import vionetd_pb2 as pb
from vionetd.log import log

AUTO_TAP = "vio%d"            # the kernel picks the number
DEFAULT_MTU = 1500            # an interface without "mtu": a tap's default
ROLE_NAME = {pb.ROLE_RX: "rx", pb.ROLE_TX: "tx"}
STATES = ("waiting", "connecting", "connected", "running")
SESSION_DELAY = (0.5, 30.0)   # first and largest delay before a new session
SESSION_YOUNG = 10.0          # a session that dies younger doubles the delay
SPAWN_BUDGET = (20, 10.0)     # at most 20 worker forks per 10 s per interface
EXIT_WAIT = 2.0               # stop(): how long killed processes may take to exit
ANNOUNCE_BUDGET = (8, 10.0)   # RARPs per 10 s (QEMU's defaults send 5 in about 1.5 s)
MESSAGES_PER_TURN = 32        # session messages handled per readable event


class Interface:
    def __init__(self, parent, iface, conf):
        self.parent = parent
        self.iface = iface
        self.conf = conf
        self.key = iface.key
        self.tap_fds = []           # one per queue pair
        self.tap_name = None
        self.tap_caps = 0           # TUN_F_* the kernel accepts
        self.offered = 0
        self.listener = None
        self.session_pid = None
        self.chan = None
        self.session_started = 0.0
        self.session_restarts = 0
        self.young_deaths = 0
        self.respawn = None         # timer of the next session
        self.session = pb.SessionState(state="waiting")
        self.workers = {}           # (role, queue pair) -> pid
        self.spawns = collections.deque()
        self.announces = collections.deque()   # times of recent RARPs
        self.announced = 0
        self.pending_stats = collections.deque()   # callbacks, oldest first
        self.reason = ""
        self.address = None         # local interfaces: local.Addresses
        self.tap_mac = None         # the host side's MAC, source of DHCP replies
        self.lease = None
        self.vmm_mtu = 0            # accepted NET_SET_MTU; the tap follows it
        self.stopping = False

    # ---- life cycle -----------------------------------------------------

    @property
    def queue_pairs(self):
        return getattr(self.iface, "queues", None) or 1

    @property
    def tap_fd(self):
        """The fd device-wide tap ioctls go to (offloads, filter)."""
        return self.tap_fds[0] if self.tap_fds else None

    def start(self):
        multi = self.queue_pairs > 1
        fd, self.tap_name = tap.open_tap(self.iface.name or AUTO_TAP, multi_queue=multi)
        self.tap_fds = [fd]
        for _ in range(1, self.queue_pairs):
            self.tap_fds.append(tap.open_tap(self.tap_name, multi_queue=True)[0])
        self.tap_caps = tap.probe_offloads(self.tap_fd)
        tap.set_offload(self.tap_fd, 0)
        if self.iface.locked and self.iface.lladdr:
            tap.set_rx_filter(self.tap_fd, self.locked_mac)
        self._configure_link()
        self.offered = features.offer(self.iface.offload, self.tap_caps, self.queue_pairs)
        if not self.client_mode:
            self._listen()
        self._spawn_session()
        log.info("%s: tap %s, socket %s, offering %#x", self.key, self.tap_name,
                 self.iface.socket, self.offered)

    def _configure_link(self):
        if self.iface.mtu:
            links.set_mtu(self.tap_name, self.iface.mtu)
        if self.iface.switch:
            links.attach_to_bridge(self.tap_name, self.conf.switches[self.iface.switch].bridge)
        links.set_up(self.tap_name)
        self.tap_mac = links.get_mac(self.tap_name)
        if self.iface.local:
            from vionetd import local
            taken = {p.address.host for p in self.parent.ports.values() if p.address}
            self.address = local.addresses(self.conf.local_prefix, self.key, taken)
            links.add_address(self.tap_name, str(self.address.host), 31)
            dhcp.restore(self)          # a lease from before a restart

    def _listen(self):
        i = self.iface
        self.listener = vmmsocket.listen(i.socket, i.socket_owner, i.socket_group,
                                         i.socket_mode)

    def stop(self):
        self.stopping = True
        if self.respawn:
            self.respawn.cancel()
        killed = [p for p in (*self.workers.values(), self.session_pid) if p]
        self._end_session()
        if self.listener:               # (client mode: the socket is the VMM's)
            self.listener.close()
            self.listener = None
            try:
                os.unlink(self.iface.socket)
            except OSError:
                pass
        for fd in self.tap_fds:
            os.close(fd)            # the tap is not persistent: closing deletes it
        self.tap_fds = []
        wait_exited(killed, EXIT_WAIT)

    @property
    def client_mode(self):
        return self.iface.connect

    @property
    def user(self):
        return self.conf.vms[self.iface.vm].user

    # ---- the session ------------------------------------------------------

    def _spawn_session(self):
        from vionetd import session
        self.respawn = None
        if self.stopping:
            return
        mine, theirs = control.pair()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                mine.close()
                code = session.main(theirs, self.listener, self.key, self.offered,
                                    self.user, self.conf.chroot or config.DEFAULT_CHROOT,
                                    self.queue_pairs)
            finally:
                os._exit(code)
        theirs.close()
        mine.setblocking(False)
        self.chan, self.session_pid = mine, pid
        self.session_started = time.monotonic()
        self.session = pb.SessionState(state="waiting")
        self.parent.watch(mine, self._from_session)

    def _end_session(self):
        """Kill the workers, then the session (SIGCHLD reaps them). In that
        order: the VMM takes the session's end of its socket for the end of
        the device and reads the used index to restart from; a worker still
        alive then could complete more chains behind its back, which the
        next device would complete a second time (a guest says "id N is not
        a head"). A worker sent SIGKILL runs no more of its own code."""
        for pid in [*self.workers.values(), self.session_pid]:
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.chan is not None:
            self.parent.unwatch(self.chan)
            self.chan.close()
            self.chan = None
        self.session_pid = None
        self.workers.clear()
        while self.pending_stats:
            self.pending_stats.popleft()({})

    def _session_died(self, how):
        log.warning("%s: session %s", self.key, how)
        self.reason = "session %s" % how
        self._end_session()
        if self.stopping:
            return
        if time.monotonic() - self.session_started < SESSION_YOUNG:
            self.young_deaths += 1
        else:
            self.young_deaths = 0
        first, largest = SESSION_DELAY
        delay = min(largest, first * 2 ** max(0, self.young_deaths - 1))
        self.session_restarts += 1
        self.respawn = self.parent.loop.call_later(delay, self._spawn_session)

    def child_died(self, pid, status):
        """SIGCHLD: True if pid was ours (the session or one of its workers)."""
        how = describe_exit(status)
        if pid == self.session_pid:
            self._session_died(how)
            return True
        for (role, qp), wpid in list(self.workers.items()):
            if wpid == pid:
                log.warning("%s: %s worker %d of pair %d %s", self.key, ROLE_NAME[role],
                            pid, qp, how)
                del self.workers[role, qp]
                return True
        return False

    def _send(self, fds=(), **kw):
        if self.chan is None:
            return False
        try:
            control.send(self.chan, pb.ToSession(**kw), fds)
            return True
        except (OSError, control.ChannelError) as e:
            self._session_died("unreachable: %s" % e)
            return False

    def _from_session(self):
        for _ in range(MESSAGES_PER_TURN):
            if self.chan is None:
                return
            try:
                msg, fds = control.recv(self.chan, pb.FromSession)
            except BlockingIOError:
                return
            except (OSError, control.ChannelError) as e:
                self._session_died("killed: %s" % e)
                return
            control.close_fds(fds)           # a session never sends fds
            if msg is None:
                self.parent.unwatch(self.chan)   # it is dying; SIGCHLD tells how
                return
            why = self._session_message(msg)
            if why:
                self._session_died("killed: %s" % why)
                return

    def _session_message(self, msg):
        """Handle one message; a reason if it breaks the rules."""
        kind = msg.WhichOneof("msg")
        allowed = self.offered | features.mask(features.VHOST_USER_F_PROTOCOL_FEATURES,
                                               features.LOG_ALL)
        if kind == "state":
            st = msg.state
            if st.state not in STATES or st.vmm_features & ~allowed:
                return "bad state message"
            if st.state in ("waiting", "connecting") and self.vmm_mtu:
                self._restore_mtu()             # the next VMM may not say
            self.session = st
            if st.reason:
                self.reason = printable(st.reason)
        elif kind == "features":
            if msg.features & ~allowed:
                return "features %#x not offered" % msg.features
            self._apply_features(msg.features)
        elif kind == "spawn":
            if msg.spawn.role not in ROLE_NAME or msg.spawn.queue_pair >= self.queue_pairs:
                return "no worker %d of pair %d" % (msg.spawn.role, msg.spawn.queue_pair)
            self._spawn_worker(msg.spawn.role, msg.spawn.queue_pair)
        elif kind == "set_mtu":
            self._send(mtu=pb.MtuResult(error=self._set_mtu(msg.set_mtu)))
        elif kind == "dial":
            if not self.client_mode:
                return "dial on a listening interface"
            self._dial()
        elif kind == "dhcp":
            if self.iface.local:
                from vionetd import dhcp
                reply = dhcp.decide(self, msg.dhcp)
                if reply is not None:
                    self._send(dhcp_reply=reply)
        elif kind == "stats":
            if self.pending_stats:
                counters = {printable(c.name)[:64]: c.value for c in msg.stats.counters[:512]}
                self.pending_stats.popleft()(counters)
        elif kind == "log":
            text = printable(msg.log.text)[:300]
            if not text.startswith(self.key + ":"):
                text = "%s: %s" % (self.key, text)
            log.log(min(max(msg.log.level, 10), 40), "%s", text)
        elif kind == "announce":
            if len(msg.announce) != 6 or msg.announce[0] & 1:
                return "announce of %r: not a unicast MAC" % msg.announce.hex()
            self._announce(msg.announce)
        elif kind == "forbidden_syscall":
            from vionetd import sandbox
            log.error("%s: session %s made forbidden system call %d (%s)", self.key,
                      self.session_pid, msg.forbidden_syscall,
                      sandbox.syscall_name(msg.forbidden_syscall))
        return None

    def _announce(self, mac):
        """SEND_RARP: the guest has moved here; a RARP from its MAC lets
        bridges and switches learn its new port (what QEMU broadcasts when
        it announces a guest itself). A locked interface announces only its
        own address; a session asking too often is told no, in the log."""
        if self.locked_mac and mac != self.locked_mac:
            log.warning("%s: not announcing %s: the interface is locked to %s",
                        self.key, mac.hex(":"), self.iface.lladdr)
            return
        if self.tap_fd is None or take_slot(self.announces, ANNOUNCE_BUDGET):
            log.warning("%s: RARP for %s not sent (%s)", self.key, mac.hex(":"),
                        "no tap" if self.tap_fd is None else "too many")
            return
        try:
            os.write(self.tap_fd, bytes(tap.VNET_HDR_SZ) + rarp(mac))
        except OSError as e:
            log.warning("%s: RARP for %s: %s", self.key, mac.hex(":"), e)
            return
        self.announced += 1
        log.info("%s: announced %s (RARP) after a migration", self.key, mac.hex(":"))

    def _apply_features(self, value):
        """The VMM's SET_FEATURES, relayed: the tap's offloads follow, and
        the session gets what its workers must do."""
        mask = features.tap_offloads_for(value, self.iface.offload, self.tap_caps)
        tap.set_offload(self.tap_fd, mask)
        sw = features.software_mode(self.iface.offload, value)
        software = pb.Software(tx_csum=sw.tx_csum, rx_csum=sw.rx_csum,
                               tx_tso4="tso4" in sw.tx_segment,
                               tx_tso6="tso6" in sw.tx_segment,
                               tx_uso="uso" in sw.tx_segment)
        self._send(features=pb.Features(features=value, software=software,
                                        locked_lladdr=self.locked_mac,
                                        local=bool(self.iface.local),
                                        mtu=self.iface.mtu or DEFAULT_MTU))

    def _set_mtu(self, mtu):
        """NET_SET_MTU, relayed: the MTU the VMM gives the guest (QEMU's
        host_mtu, libvirt's <mtu size=.../>). Larger than the interface's
        mtu is refused; otherwise the tap's MTU follows. Returns the refusal,
        "" if none."""
        limit = self.iface.mtu or DEFAULT_MTU
        if mtu > limit:
            log.error("%s: refusing MTU %d from the VMM: larger than this "
                      "interface's mtu %d in vionetd.conf", self.key, mtu, limit)
            return "MTU %d larger than the interface's %d" % (mtu, limit)
        try:
            links.set_mtu(self.tap_name, mtu)
        except Exception as e:
            log.error("%s: MTU %d from the VMM: tap %s: %s", self.key, mtu, self.tap_name, e)
            return "tap MTU %d: %s" % (mtu, e)
        self.vmm_mtu = mtu
        log.info("%s: guest MTU %d, tap %s follows", self.key, mtu, self.tap_name)
        return ""

    def _restore_mtu(self):
        self.vmm_mtu = 0
        try:
            links.set_mtu(self.tap_name, self.iface.mtu or DEFAULT_MTU)
        except Exception as e:
            log.warning("%s: restoring the tap's MTU: %s", self.key, e)

    def _dial(self):
        """Client mode: connect to the VMM's socket for the session. A unix
        socket connects at once or fails at once (no listener, no room)."""
        try:
            s = vmmsocket.connect(self.iface.socket, timeout=0)   # never waits
        except OSError as e:
            self._send(dialed=pb.Dialed(error=e.strerror or str(e)))
            return
        self._send([s.fileno()], dialed=pb.Dialed())
        s.close()

    # ---- workers --------------------------------------------------------

    def _spawn_worker(self, role, qp):
        """Fork a worker for the session, killing the one it replaces. At
        most SPAWN_BUDGET forks per window: beyond it the request waits."""
        wait = take_slot(self.spawns, SPAWN_BUDGET)
        if wait:
            self.parent.loop.call_later(wait, lambda: self._spawn_worker(role, qp)
                                        if self.chan is not None else None)
            return
        old = self.workers.pop((role, qp), None)
        if old:
            try:
                os.kill(old, signal.SIGKILL)
            except ProcessLookupError:
                pass
        from vionetd import worker
        mine, theirs = control.pair()
        name = "%s %s" % (ROLE_NAME[role], self.key) + (".%d" % qp if qp else "")
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                mine.close()
                code = worker.main(theirs, name, self.conf, user=self.user, role=role)
            finally:
                os._exit(code)
        theirs.close()
        self.workers[role, qp] = pid
        try:
            control.send(mine, pb.ToWorker(hello=pb.Hello(name=self.key, role=role,
                                                          queue_pair=qp)))
            control.send(mine, pb.ToWorker(tap=pb.Tap()), [self.tap_fds[qp]])
        except OSError as e:
            log.warning("%s: new %s worker: %s", self.key, ROLE_NAME[role], e)
        self._send([mine.fileno()], worker=pb.WorkerChannel(role=role, pid=pid,
                                                            queue_pair=qp))
        mine.close()

    # ---- what vionetctl and DHCP see ------------------------------------

    @property
    def state(self):
        if self.session_pid is None:
            return "restarting" if not self.stopping else "stopped"
        return self.session.state

    @property
    def locked_mac(self):
        """The lladdr as 6 bytes when the interface is locked to it, else b""."""
        if self.iface.locked and self.iface.lladdr:
            return bytes.fromhex(self.iface.lladdr.replace(":", ""))
        return b""

    @property
    def vmm_features(self):
        return self.session.vmm_features

    @property
    def restarts(self):
        return self.session.worker_restarts

    def request_stats(self, done):
        """Ask the session for counters; done({name: value}) is called with
        them, or with {} if the session cannot answer."""
        if self._send(stats=pb.StatsRequest()):
            self.pending_stats.append(done)
        else:
            done({})


def take_slot(times, budget):
    """A sliding-window rate limit: budget is (count, seconds), times the
    deque of past events. Records now and returns 0 if fewer than count
    fall in the window; else the seconds until the oldest leaves it."""
    now = time.monotonic()
    count, window = budget
    while times and now - times[0] > window:
        times.popleft()
    if len(times) >= count:
        return window - (now - times[0]) or 1e-6
    times.append(now)
    return 0


def rarp(mac):
    """A RARP request (RFC 903) from mac for itself, broadcast and padded to
    Ethernet's 60 bytes: htype 1 (Ethernet), ptype 0x0800 (IPv4), op 3."""
    body = (b"\x00\x01\x08\x00\x06\x04\x00\x03" + mac + bytes(4) + mac + bytes(4))
    frame = b"\xff" * 6 + mac + b"\x80\x35" + body
    return frame + bytes(60 - len(frame))


def printable(text):
    return "".join(c if c.isprintable() else "?" for c in text)


def describe_exit(status):
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals.__members__.values() else str(sig)
        return "killed by %s" % name
    return "exited with status %d" % os.WEXITSTATUS(status)


def wait_exited(pids, timeout):
    """Wait, at most timeout seconds, until the killed children have exited
    (not reaped: SIGCHLD does that). Until then their fds keep the tap, and
    an interface restarted under the same tap name would get EBUSY."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                    break
            except ChildProcessError:
                break               # already reaped
            time.sleep(0.002)
