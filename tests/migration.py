"""migration.py: live-migrate a real guest between two vionetd "hosts" on
this machine, under traffic, and measure what the guest saw.

Topology (every namespace, link and process is the run's own, and goes
away at the end whatever happened):

    netns A: vionetd A, bridge "brmig" (the VM's tap + veth to the LAN)
    netns B: vionetd B, bridge "brmig" (the VM's tap + veth to the LAN)
    netns LAN: bridge with both veths' far ends and the peer's address

Both daemons read the same configuration (one VM, one interface, same
lladdr, on the switch of bridge brmig).  QEMU 10 boots the guest on A's
socket; a second QEMU 10 with the same machine and device options waits
on B's socket with -incoming.  The guest (guest/plans/migrate.sh) streams
random data to the peer while the peer streams to it, and the peer pings
it every 10 ms; meanwhile the run migrates A to B over QMP.

    run = migrate_under_load(no_dirty_log=False)
    run.ok(), run.failures(), run.figures()

Pieces usable alone: Qmp (a QMP client), Peer (the LAN side of the
streams), Pinger (ping -i 0.01 and its longest gap), two_hosts().

Every wait is bounded by a deadline; a run that goes wrong records why in
run.errors and still cleans up.
"""
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from tests import guest
from tests import netns as N
from tests.daemon import daemon, switched_conf

PEER_IP, GUEST_IP = "10.77.0.1", "10.77.0.2"
MAC = "52:54:00:77:00:02"
BRIDGE = "brmig"          # the same name in both hosts' namespaces
VM = "mig"
PORT = 5501               # guest upload; downloads on PORT+1+I; the word on PORT+99
NO_DIRTY_LOG = "VIONETD_TEST_NO_DIRTY_LOG"
# The load and the migration that the test runs, with and without dirty
# logging: eight streams of 16 MiB to the guest (and one from it), and
# QEMU limited to 20 MiB/s, as over a 160 Mbit/s link, with auto-converge
# so that it converges while the streams run.  Over the local socket at
# QEMU's default (128 MiB/s) the migration is one pass of about a second;
# the guest's own writes then cover nearly every page vionetd wrote, and
# the negative control passed (see test_migration.py).
STREAMS = 8
STREAM_BYTES = 16 << 20
MIG_PARAMS = {"max-bandwidth": 20 << 20}
MIG_CAPS = {"auto-converge": True}
# Offset of tcpi_bytes_acked in Linux's struct tcp_info (uapi/linux/tcp.h):
# 8 one-byte fields, 24 u32 fields, then u64 pacing_rate, max_pacing_rate,
# bytes_acked.
TCPI_BYTES_ACKED = 8 + 24 * 4 + 2 * 8


def conf():
    """The vionetd.conf both hosts run: one VM, one interface on the
    bridge brmig with the guest's lladdr."""
    return switched_conf(BRIDGE, vms=(VM,), lines="        lladdr %s" % MAC)


# ---- the topology ---------------------------------------------------------

class Hosts:
    def __init__(self, a, b, lan):
        self.a, self.b, self.lan = a, b, lan


@contextlib.contextmanager
def two_hosts():
    """Namespaces A, B and LAN: a bridge brmig in A and in B, each joined
    by a veth to the LAN's bridge, which holds the peer's address."""
    with N.netns("mA") as a, N.netns("mB") as b, N.netns("mL") as lan:
        try:
            for ns in (a, b, lan):
                N.disable_ipv6(ns)
            N.ns_run(lan, "ip", "link", "add", "lan0", "type", "bridge",
                     "stp_state", "0", "forward_delay", "0")
            N.ns_run(lan, "ip", "addr", "add", PEER_IP + "/24", "dev", "lan0")
            N.ns_run(lan, "ip", "link", "set", "lan0", "up")
            for ns, far in ((a, "upA"), (b, "upB")):
                N.ns_run(ns, "ip", "link", "add", BRIDGE, "type", "bridge",
                         "stp_state", "0", "forward_delay", "0")
                N.ns_run(ns, "ip", "link", "set", BRIDGE, "up")
                N.ns_run(ns, "ip", "link", "add", "up0", "type", "veth",
                         "peer", "name", far, "netns", lan)
                N.ns_run(ns, "ip", "link", "set", "up0", "master", BRIDGE)
                N.ns_run(ns, "ip", "link", "set", "up0", "up")
                N.ns_run(lan, "ip", "link", "set", far, "master", "lan0")
                N.ns_run(lan, "ip", "link", "set", far, "up")
            yield Hosts(a, b, lan)
        finally:
            # Whatever still runs in the namespaces is the run's own.
            for ns in (a, b, lan):
                kill_netns_pids(ns)


def kill_netns_pids(ns):
    pids = N.run("ip", "netns", "pids", ns, check=False).stdout.split()
    for p in pids:
        try:
            os.kill(int(p), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


# ---- QMP ------------------------------------------------------------------

class QmpError(Exception):
    pass


class Qmp:
    """A QMP client on QEMU's unix socket: one command at a time, each
    answer awaited at most timeout seconds; events are kept in .events."""

    def __init__(self, path, timeout=10.0):
        self.timeout = timeout
        self.events = []
        self._buf = b""
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() >= deadline:
                    raise QmpError("no QMP socket at %s within %.0fs"
                                   % (path, timeout))
                time.sleep(0.05)
        greeting = self._read(deadline)
        if "QMP" not in greeting:
            raise QmpError("not a QMP greeting: %r" % greeting)
        self.cmd("qmp_capabilities")

    def _read(self, deadline):
        """The next JSON object from QEMU."""
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpError("QMP: no answer within %.0fs" % self.timeout)
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise QmpError("QMP: QEMU closed the socket")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, name, **args):
        """Run a command; its "return", or QmpError with QEMU's reason."""
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise QmpError("%s: %s" % (name, reply["error"].get("desc")))
            elif "return" in reply:
                return reply["return"]

    def close(self):
        self.sock.close()


# ---- the LAN peer ---------------------------------------------------------

def tcp_bytes_acked(sock):
    """How many bytes the other end has acknowledged on a TCP socket."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except OSError:
        return None
    if len(info) < TCPI_BYTES_ACKED + 8:
        return None
    return struct.unpack_from("=Q", info, TCPI_BYTES_ACKED)[0]


class Stream:
    """One direction of one TCP connection, as the peer saw it."""

    def __init__(self, name, port):
        self.name, self.port = name, port
        self.bytes = 0
        self.sha256 = None
        self.error = None
        self.conn = None
        self.done = False
        self.last_progress = None   # monotonic time of the last byte moved

    def acked(self):
        """Bytes the guest acknowledged (downloads), while connected."""
        c = self.conn
        return tcp_bytes_acked(c) if c is not None else None


class Peer:
    """The LAN side of guest/plans/migrate.sh: one receiver of the guest's
    upload on port, and `streams` senders of nbytes of random data to it,
    on port+1+I.  Sockets are opened in the LAN namespace; threads move the
    data and hash it.  A stream that moves nothing for `stall` seconds, or
    is not done by `deadline` (monotonic), ends with an error."""

    def __init__(self, ns, port, streams, nbytes, stall, deadline):
        self.ns, self.nbytes = ns, nbytes
        self.stall, self.deadline = stall, deadline
        self.up = Stream("up", port)
        self.downs = [Stream("down%d" % i, port + 1 + i) for i in range(streams)]
        self.threads = []
        self.listeners = []

    def start(self):
        with N.inside(self.ns):
            for s in [self.up] + self.downs:
                ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                ls.bind((PEER_IP, s.port))
                ls.listen(1)
                self.listeners.append(ls)
        pairs = [(self._receive, self.up)] + [(self._send, d) for d in self.downs]
        for (fn, s), ls in zip(pairs, self.listeners):
            t = threading.Thread(target=self._guard, args=(fn, s, ls), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def _left(self):
        return self.deadline - time.monotonic()

    def _timeout(self):
        """A socket timeout: the stall bound, cut to the deadline."""
        left = self._left()
        if left <= 0:
            raise TimeoutError("deadline passed")
        return min(self.stall, left)

    def _guard(self, fn, s, ls):
        try:
            ls.settimeout(max(self._left(), 0.1))
            conn, _ = ls.accept()
            s.conn = conn
            s.last_progress = time.monotonic()
            with conn:
                fn(s, conn)
            s.done = True
        except (OSError, TimeoutError) as e:
            s.error = "%s after %d bytes: %s" % (type(e).__name__, s.bytes, e)
        finally:
            s.conn = None
            ls.close()

    def _receive(self, s, conn):
        """Read the guest's upload until it closes; hash it."""
        h = hashlib.sha256()
        while True:
            conn.settimeout(self._timeout())
            data = conn.recv(1 << 20)
            if not data:
                break
            h.update(data)
            s.bytes += len(data)
            s.last_progress = time.monotonic()
        s.sha256 = h.hexdigest()

    def _send(self, s, conn):
        """Send nbytes of fresh random data, hashed; then close our side and
        wait for the guest to close its own."""
        h = hashlib.sha256()
        left = self.nbytes
        while left:
            chunk = os.urandom(min(left, 256 << 10))
            h.update(chunk)
            conn.settimeout(self._timeout())
            conn.sendall(chunk)
            left -= len(chunk)
            s.bytes += len(chunk)
            s.last_progress = time.monotonic()
        s.sha256 = h.hexdigest()
        conn.shutdown(socket.SHUT_WR)
        while True:
            conn.settimeout(self._timeout())
            if not conn.recv(4096):
                break

    def snapshot(self):
        """Bytes moved so far: from the guest (received here) and to the
        guest (acknowledged by it, or sent when no longer connected)."""
        acked = 0
        for d in self.downs:
            a = d.acked()
            acked += a if a is not None else d.bytes
        return {"t": time.time(), "from_guest": self.up.bytes,
                "to_guest_acked": acked,
                "to_guest_sent": sum(d.bytes for d in self.downs)}

    def connected(self):
        return all(s.last_progress is not None for s in [self.up] + self.downs)

    def finished(self):
        return all(s.done or s.error for s in [self.up] + self.downs)

    def wait(self, timeout):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(deadline - time.monotonic(), 0))
        return self.finished()

    def close(self):
        for ls in self.listeners:
            ls.close()
        for s in [self.up] + self.downs:
            c = s.conn
            if c is not None:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
        for t in self.threads:
            t.join(5)


# ---- ping -----------------------------------------------------------------

PING_RE = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from [0-9.]+: icmp_seq=(\d+) ")


class Pinger:
    """ping -D -i 0.01 from the LAN namespace; after stop(), .replies is
    [(wall time, seq)] of the first reply to each sequence number.  ping
    writes to a file: a pipe nobody reads until the end would fill up
    (64 KiB, some 850 replies) and stop ping in its tracks."""

    def __init__(self, ns, target):
        self.ns, self.target = ns, target
        self.proc = None
        self.out = ""
        self.replies = []
        self.started = self.stopped = None
        self.transmitted = None

    def start(self):
        self._file = tempfile.TemporaryFile(mode="w+")
        self.started = time.time()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "ping", "-D", "-n", "-i", "0.01",
             self.target], stdout=self._file, stderr=subprocess.STDOUT,
            start_new_session=True)
        return self

    def stop(self):
        if self.proc is None:
            return
        self.stopped = time.time()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        self.proc = None
        self._file.seek(0)
        self.out = self._file.read()
        self._file.close()
        self.parse(self.out)

    def parse(self, out):
        """ping -D's lines into .replies (duplicates left out), and its
        summary into .transmitted."""
        seen = set()
        self.replies = []
        m = re.search(r"^(\d+) packets transmitted", out, re.M)
        self.transmitted = int(m.group(1)) if m else None
        for line in out.splitlines():
            m = PING_RE.match(line)
            if m and int(m.group(2)) not in seen:
                seen.add(int(m.group(2)))
                self.replies.append((float(m.group(1)), int(m.group(2))))
        self.replies.sort()

    def longest_gap(self):
        """(seconds, wall time of the reply before it, of the reply after
        it or of the stop) of the longest silence between two replies, or
        between the last reply and the stop; None without replies."""
        times = [t for t, _ in self.replies]
        if times and self.stopped is not None:
            times.append(max(self.stopped, times[-1]))
        best = None
        for t0, t1 in zip(times, times[1:]):
            if best is None or t1 - t0 > best[0]:
                best = (t1 - t0, t0, t1)
        return best

    def median_interval(self):
        """The median time between two replies: the rate ping achieved
        (below -i 0.01 when the host's CPUs are busy)."""
        d = sorted(t1 - t0 for (t0, _), (t1, _) in zip(self.replies, self.replies[1:]))
        return d[len(d) // 2] if d else None

    def replies_after(self, t):
        return sum(1 for tr, _ in self.replies if tr > t)

    def sent(self):
        """Echo requests sent: ping's own count, else the highest sequence
        number answered."""
        if self.transmitted is not None:
            return self.transmitted
        return max((s for _, s in self.replies), default=0)


# ---- the run --------------------------------------------------------------

class Run:
    """Everything one migration run measured, and why it went wrong."""

    def __init__(self, no_dirty_log, nbytes, streams):
        self.no_dirty_log, self.nbytes, self.streams = no_dirty_log, nbytes, streams
        self.errors = []           # the harness's own failures, in order
        self.migration = None      # the last query-migrate answer
        self.migrated = False      # query-migrate said "completed"
        self.mig_window = None     # (wall start, wall end) of the migration
        self.during = None         # peer counters moved during the window
        self.status_a = self.status_b = None
        self.state_a_after = None  # A's interface state after QEMU A quit
        self.counters_b = None     # B's interface counters after the transfers
        self.counters_b_at_switch = None
        self.migration_a = None    # A's "migration" entry in its stats, at the switch
        self.migration_b = None    # B's, after the transfers
        self.guest = {}            # the guest's results (B's serial log)
        self.peer = {}             # the peer's view of every stream
        self.ping = {}
        self.log = ""
        self.seconds = None        # the whole run's wall time

    def failures(self):
        """Why the run did not succeed, as sentences; empty if it did."""
        out = list(self.errors)
        if not self.migrated:
            out.append("migration did not complete: %s" % (self.migration,))
        up = self.peer.get("up", {})
        if up.get("error") or up.get("bytes") != self.nbytes:
            out.append("guest->peer stream: %s" % (up,))
        elif self.guest.get("mig.tx_sha256") != up.get("sha256"):
            out.append("guest->peer sha256 differs: guest %s, peer %s"
                       % (self.guest.get("mig.tx_sha256"), up.get("sha256")))
        for i in range(self.streams):
            d = self.peer.get("down%d" % i, {})
            g_sha = self.guest.get("mig.rx%d_sha256" % i)
            g_n = self.guest.get("mig.rx%d_bytes" % i)
            if d.get("error"):
                out.append("peer->guest stream %d: %s" % (i, d))
            elif g_n != str(self.nbytes):
                out.append("peer->guest stream %d: guest got %s bytes of %d"
                           % (i, g_n, self.nbytes))
            elif g_sha != d.get("sha256"):
                out.append("peer->guest stream %d sha256 differs: guest %s, "
                           "peer %s" % (i, g_sha, d.get("sha256")))
        if not self.ping.get("replies_after_migration"):
            out.append("the guest answered no ping after the migration")
        return out

    def ok(self):
        return not self.failures()

    def guest_visible_failures(self):
        """The failures a guest's user would see (a stream corrupted, cut
        short or stalled, the guest unreachable), not the harness's own."""
        words = ("sha256 differs", "stream", "answered no ping")
        return [f for f in self.failures()
                if any(w in f for w in words) and not f.startswith("migration did not")]

    def figures(self):
        """The numbers the issue's note reports, as one dict."""
        m = self.migration or {}
        ram = m.get("ram", {})
        return {
            "dirty_logging": not self.no_dirty_log,
            "migration_status": m.get("status"),
            "migration_total_ms": m.get("total-time"),
            "migration_downtime_ms_qemu": m.get("downtime"),
            "migration_setup_ms": m.get("setup-time"),
            "ram_transferred": ram.get("transferred"),
            "dirty_sync_count": ram.get("dirty-sync-count"),
            "max_cpu_throttle_percent": m.get("max-cpu-throttle-percentage"),
            "longest_ping_gap_ms": self.ping.get("longest_gap_ms"),
            "longest_ping_gap_starts_s_after_migrate":
                self.ping.get("longest_gap_starts_s_after_migrate"),
            "ping_median_interval_ms": self.ping.get("median_interval_ms"),
            "ping_replies": self.ping.get("replies"),
            "ping_sent": self.ping.get("sent"),
            "ping_replies_after_migration": self.ping.get("replies_after_migration"),
            "bytes_to_guest_during_migration": (self.during or {}).get("to_guest_acked"),
            "bytes_from_guest_during_migration": (self.during or {}).get("from_guest"),
            "stream_bytes": self.nbytes, "rx_streams": self.streams,
            "peer": self.peer, "guest": {k: v for k, v in self.guest.items()
                                         if k.startswith("mig.")},
            "b_counters": {k: v for k, v in (self.counters_b or {}).items()
                           if k in ("rx_frames", "tx_frames", "rx_bytes", "tx_bytes")},
            "b_counters_at_switch": {k: v for k, v in
                                     (self.counters_b_at_switch or {}).items()
                                     if k in ("rx_frames", "tx_frames")},
            "a_migration_at_switch": self.migration_a,
            "b_migration": self.migration_b,
            "a_state_after_quit": self.state_a_after,
            "status_a": self.status_a, "status_b": self.status_b,
            "run_seconds": round(self.seconds, 1) if self.seconds else None,
            "failures": self.failures(),
        }


def iface_of(d):
    """The VM interface's entry in a daemon's stats (state, counters)."""
    return d.stats()["%s/0" % VM]


def wait_until(what, cond, timeout, step=0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError("%s: not within %.0fs" % (what, timeout))
        time.sleep(step)


def migrate(qmp, uri, timeout, params=None, caps=None):
    """Start a migration to uri, with migration parameters and capabilities
    ({name: bool}) if given, and poll query-migrate until it ends or
    timeout passes (then cancel it).  Returns the last answer."""
    if caps:
        qmp.cmd("migrate-set-capabilities",
                capabilities=[{"capability": k, "state": v} for k, v in caps.items()])
    if params:
        qmp.cmd("migrate-set-parameters", **params)
    qmp.cmd("migrate", uri=uri)
    deadline = time.monotonic() + timeout
    throttle = 0      # the most auto-converge slowed the vCPU (percent)
    while True:
        info = qmp.cmd("query-migrate")
        throttle = max(throttle, info.get("cpu-throttle-percentage", 0))
        info["max-cpu-throttle-percentage"] = throttle
        if info.get("status") in ("completed", "failed", "cancelled"):
            return info
        if time.monotonic() >= deadline:
            with contextlib.suppress(QmpError):
                qmp.cmd("migrate_cancel")
            info["timed_out"] = True
            return info
        time.sleep(0.1)


def migrate_under_load(no_dirty_log=False, nbytes=STREAM_BYTES, streams=STREAMS,
                       start_after=4 << 20, mig_params=MIG_PARAMS, mig_caps=MIG_CAPS,
                       mig_timeout=90.0,
                       stall=20.0, budget=200.0, mem_mb=256):
    """One run: boot on A, stream both ways, migrate to B once the guest
    has received start_after bytes on its downloads, let the streams end on
    B, and collect every figure.  no_dirty_log sets the daemon's test-only
    switch on host A.  budget bounds the whole run (seconds)."""
    run = Run(no_dirty_log, nbytes, streams)
    t_start = time.monotonic()
    deadline = t_start + budget
    env_a = {NO_DIRTY_LOG: "1"} if no_dirty_log else None
    with contextlib.ExitStack() as stack:
        h = stack.enter_context(two_hosts())
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="vionet-mig-"))
        da = stack.enter_context(daemon(conf(), h.a, env=env_a))
        db = stack.enter_context(daemon(conf(), h.b))
        logs = []
        stack.callback(lambda: logs.append(
            "--- vionetd A ---\n%s\n--- vionetd B ---\n%s" % (da.log(), db.log())))
        for d in (da, db):
            d.wait_socket(os.path.join(d.dir, VM + ".sock"))
        peer = Peer(h.lan, PORT, streams, nbytes, stall, deadline).start()
        stack.callback(peer.close)
        params = {"ip": GUEST_IP + "/24", "host": PEER_IP, "mig_bytes": nbytes,
                  "mig_port": PORT, "mig_streams": streams,
                  "timeout": int(budget)}

        def vm(sock, **kw):
            return guest.Guest(kernel="6.12", qemu="10", smp=1, mem_mb=mem_mb,
                               netdev=guest.VhostUser(sock),
                               device_props={"mac": MAC}, plan=["migrate"],
                               params=params, timeout=budget, qmp=True, **kw)

        uri = "unix:" + os.path.join(tmp, "incoming.sock")
        ga = vm(os.path.join(da.dir, VM + ".sock"))
        gb = vm(os.path.join(db.dir, VM + ".sock"), incoming=uri)
        stack.callback(gb.stop)
        stack.callback(ga.stop)
        # (callbacks run last first: the logs are read before the stops)
        stack.callback(lambda: logs.append(
            "--- QEMU A ---\n%s\n--- QEMU B ---\n%s" % (ga.log(), gb.log())))
        pinger = Pinger(h.lan, GUEST_IP)
        stack.callback(pinger.stop)
        try:
            ga.start()
            gb.start()
            qa, qb = Qmp(ga.qmp_path), Qmp(gb.qmp_path)
            stack.callback(qa.close)
            stack.callback(qb.close)
            # The streams run once the guest is up; then the pings start.
            wait_until("the guest's streams", peer.connected,
                       deadline - time.monotonic())
            pinger.start()
            wait_until("%d bytes to the guest" % start_after,
                       lambda: peer.snapshot()["to_guest_acked"] >= start_after
                       or peer.finished(), deadline - time.monotonic())
            if peer.finished():
                run.errors.append("the streams ended before the migration "
                                  "started: make them longer")
            before = peer.snapshot()
            try:
                info = migrate(qa, uri, min(mig_timeout, deadline - time.monotonic()),
                               mig_params, mig_caps)
            except QmpError as e:
                # refused at once (e.g. a migration blocker): the guest
                # stays on A and the run goes on there
                run.errors.append("migrate: %s" % e)
                info = {"status": "refused", "error": str(e)}
            after = peer.snapshot()
            run.migration = info
            run.migrated = info.get("status") == "completed"
            run.mig_window = (before["t"], after["t"])
            run.during = {k: after[k] - before[k] for k in before}
            run.status_a = qa.cmd("query-status").get("status")
            run.status_b = qb.cmd("query-status").get("status")
            if run.migrated:
                with contextlib.suppress(RuntimeError, KeyError):
                    run.counters_b_at_switch = iface_of(db).get("counters")
                with contextlib.suppress(RuntimeError, KeyError):
                    run.migration_a = iface_of(da).get("migration")
                # QEMU A has handed the VM over: it quits, A's vionetd
                # goes back to waiting for a VMM.
                with contextlib.suppress(QmpError):
                    qa.cmd("quit")
                with contextlib.suppress(Exception):
                    ga.proc.wait(timeout=10)
                try:
                    run.state_a_after = wait_until(
                        "A's interface waiting",
                        lambda: iface_of(da)["state"] == "waiting" and "waiting",
                        10, step=0.2)
                except TimeoutError:
                    run.state_a_after = iface_of(da)["state"]
            # The streams end (on B, or not at all).
            if not peer.wait(max(deadline - time.monotonic(), 1)):
                run.errors.append("the peer's streams did not end within the budget")
            # The guest's results, wherever the guest now runs.
            g = gb if run.migrated else ga
            last = "mig.rx%d_rc" % (streams - 1)
            try:
                g.wait_for(r"VIONET-RESULT %s=" % re.escape(last),
                           min(30, max(deadline - time.monotonic(), 1)))
            except guest.GuestError:
                run.errors.append("the guest reported no transfer results")
            with contextlib.suppress(RuntimeError, KeyError):
                b = iface_of(db)
                run.counters_b, run.migration_b = b.get("counters"), b.get("migration")
            # Pings are counted up to here: the guest still runs.
            time.sleep(0.5)
            pinger.stop()
            say_finish(h.lan)
            with contextlib.suppress(guest.GuestError):
                g.wait_done(timeout=min(20, max(deadline - time.monotonic(), 1)))
            g._poll_serial()
            run.guest = dict(guest.RESULT_RE.findall(g.serial))
        except (TimeoutError, guest.GuestError, QmpError, OSError, RuntimeError) as e:
            run.errors.append("%s: %s" % (type(e).__name__, e))
        finally:
            pinger.stop()
            run.peer = {s.name: {"bytes": s.bytes, "sha256": s.sha256, "error": s.error}
                        for s in [peer.up] + peer.downs}
            run.ping = ping_figures(pinger, run.mig_window)
            run.seconds = time.monotonic() - t_start
    run.log = "\n".join(logs)
    return run


def say_finish(ns):
    """The host's word to guest/plans/migrate.sh: connect to the guest's
    last port and close.  A guest that does not answer is left to its
    plan's timeout (and the harness's kill)."""
    try:
        with N.inside(ns):
            w = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with w:
            w.settimeout(5)
            w.connect((GUEST_IP, PORT + 99))
    except OSError:
        pass


def ping_figures(pinger, window):
    gap = pinger.longest_gap()
    med = pinger.median_interval()
    out = {"replies": len(pinger.replies), "sent": pinger.sent(),
           "longest_gap_ms": round(gap[0] * 1000, 1) if gap else None,
           "median_interval_ms": round(med * 1000, 1) if med else None}
    if gap and window:
        # where the longest silence was, relative to the migration's start
        out["longest_gap_starts_s_after_migrate"] = round(gap[1] - window[0], 2)
    if window:
        out["replies_after_migration"] = pinger.replies_after(window[1])
    return out


def main(argv=None):
    """By hand: python3 -m tests.migration [--no-dirty-log] [--bytes N]
    [--streams K]; prints the figures as JSON."""
    import argparse
    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("--no-dirty-log", action="store_true")
    ap.add_argument("--bytes", type=int, default=STREAM_BYTES)
    ap.add_argument("--streams", type=int, default=STREAMS)
    ap.add_argument("--max-bandwidth", type=int, default=MIG_PARAMS["max-bandwidth"],
                    help="bytes/s; 0: QEMU's default")
    ap.add_argument("--downtime-limit", type=int, help="ms (QEMU's default if not given)")
    ap.add_argument("--no-auto-converge", action="store_true")
    ap.add_argument("--log", action="store_true", help="print every log")
    a = ap.parse_args(argv)
    params = {}
    if a.max_bandwidth:
        params["max-bandwidth"] = a.max_bandwidth
    if a.downtime_limit:
        params["downtime-limit"] = a.downtime_limit
    run = migrate_under_load(a.no_dirty_log, a.bytes, a.streams,
                             mig_params=params or None,
                             mig_caps=None if a.no_auto_converge else MIG_CAPS)
    if a.log:
        print(run.log)
    print(json.dumps(run.figures(), indent=1, sort_keys=True))
    return 0 if run.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
