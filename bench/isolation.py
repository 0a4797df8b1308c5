"""bench/isolation.py: what one hostile VMM costs another VM of the same daemon.

    isolation.py [--seconds S] [--only SCENARIO]... [--json]

The real daemon (tests/daemon.py, in network namespaces of the benchmark's
own, through tests/hostile.py's Rig) serves three interfaces on one bridge:
  by   the bystander: a TestVM connected once, before everything;
  new  a second bystander interface, on which a thread makes a full new
       vhost-user negotiation (connect, a TestVM's whole QEMU-like sequence,
       close) every 0.2 s: what a VM booting during the attack sees;
  vic  the victim, whose socket a forked attacker process abuses.

Per scenario, for the scenario's duration, three threads measure the
bystander while the attacker (a separate process, so that it does not
share this process's interpreter lock with the measuring threads) runs:
  - GET_FEATURES / GET_PROTOCOL_FEATURES / GET_QUEUE_NUM round trips on
    the bystander's established connection, one every 20 ms;
  - TX frames from the bystander back to back (post one chain, kick, wait
    for its used entry), counted when used; the far namespace's capture
    counts how many arrived;
  - new-connection negotiations on "new" (timed whole, failures included).

Scenarios (the victim VMM):
  undisturbed     no attacker: the reference for the frame rate; run first
                  (after a second of unmeasured frames) and again last as
                  undisturbed_again; the reference is the mean of both
  flood           sends GET_FEATURES requests in batches of 64 as fast as it
                  can, reading the replies; reconnects if dropped
  trickle         sends a SET_OWNER header one byte every 1.5 s; reconnects
                  if dropped
  crash_loop      negotiates with a memory region whose mmap_offset is 8
                  (workers cannot map it) and kicks both rings; holds the
                  connection while the daemon keeps it, then does it again
  reconnect_loop  connects and closes its socket in a tight loop
  log_flood       negotiates, then sends vhost-user requests of unknown
                  numbers (a new number each), NET_SET_MTU of ever other
                  values and GET_FEATURES with stray fds, reconnecting every
                  200 messages: every line it could make the daemon write
  compromised_session
                  takes the victim's session over (its channel to the
                  parent, duplicated with pidfd_getfd(2)) and writes what a
                  compromised session could: 500 log lines, 500 spawn
                  requests, 200 MTUs, 20 messages with fds, then an unknown
                  field, which gets it killed; then the same to the next
                  session, for the whole scenario

Figures per scenario:
  bystander_handshake_ms    worst of the two below
  bystander_get_features_ms worst round trip on the established connection
  bystander_negotiation_ms  worst full new negotiation on "new"
  negotiation_failures      new negotiations that failed (refused, timed out)
  bystander_frames_per_s    TX frames used per second
  bystander_frame_ratio     that, divided by the undisturbed reference
  bystander_frames_arrived  of those, seen in the far namespace
  daemon_cpu_s              CPU seconds of all the daemon's processes over the
                            scenario: utime+stime from /proc/PID/stat of the
                            parent and every live descendant, plus the
                            parent's cutime+cstime (children it reaped)
  log_growth_bytes          growth of the daemon's log (stderr, -v) file
  victim_log_bytes_per_min  of that, the lines about the victim ("vic/0:"),
                            per minute of the scenario
  victim_restarts           the victim's worker restarts (vionetctl show)
  attacker_ops              messages, negotiations or connects the attacker did
  daemon_alive              whether the daemon was still running afterwards

Durations: 10 s per scenario, 60 s for reconnect_loop and log_flood (a
minute of log); --seconds S sets
every scenario to S. Between scenarios the rig is checked and, if the daemon
died or the bystander stopped answering, started afresh (reported as
"rig_restarted"). This is a benchmark: it prints figures and asserts nothing.

Invariants: every process, tap and namespace made here is gone when main()
returns (the Rig's context, the attacker killed by its own pid); every wait
is bounded.
"""
import argparse
import contextlib
import json
import os
import signal
import socket
import struct
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests import hostile as H        # noqa: E402
from tests import vmm                 # noqa: E402
from vionetd import vhost_user as V   # noqa: E402

SCENARIOS = ("undisturbed", "flood", "trickle", "crash_loop", "reconnect_loop", "log_flood",
             "compromised_session")
DEFAULT_SECONDS = {"reconnect_loop": 60.0, "log_flood": 60.0}
DEFAULT_OTHER = 10.0


# ---- attackers: each runs in a forked child until its end time ---------------

def _connect(path):
    fe = vmm.Frontend.connect(path, timeout=5)
    return fe


def each_connection(path, end, step, setup=None):
    """Connect to path (again whenever dropped) until end, and call
    step(fe) over and over on the connection; the sum of what step returns."""
    ops = 0
    while time.monotonic() < end:
        try:
            fe = _connect(path)
            if setup:
                setup(fe)
        except (OSError, vmm.FrontendError):
            time.sleep(0.05)
            continue
        try:
            while time.monotonic() < end:
                ops += step(fe)
        except (OSError, vmm.FrontendError):
            time.sleep(0.05)
        finally:
            fe.close()
    return ops


def attack_flood(path, end):
    batch = struct.pack("<III", V.GET_FEATURES, 1, 0) * 64

    def step(fe):
        fe.sock.sendall(batch)
        for _ in range(64):
            fe.recv_reply(V.GET_FEATURES)
        return 64
    return each_connection(path, end, step)


def attack_trickle(path, end):
    ops = 0
    msg = struct.pack("<III", V.SET_OWNER, 1, 0)
    while time.monotonic() < end:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            for b in msg:
                if time.monotonic() >= end:
                    break
                s.send(bytes([b]))
                ops += 1
                time.sleep(min(1.5, max(0.0, end - time.monotonic())))
        except OSError:
            time.sleep(0.05)
        finally:
            s.close()
    return ops


def attack_crash_loop(path, end):
    ops = 0
    while time.monotonic() < end:
        try:
            fe, fd = H.bad_region_frontend(path, mmap_offset=8)
        except OSError:
            time.sleep(0.05)
            continue
        ops += 1
        try:
            H.closed_by_peer(fe.sock, max(0.0, end - time.monotonic()))
        finally:
            fe.close()
            os.close(fd)
    return ops


def attack_reconnect_loop(path, end):
    return H.reconnect_loop(path, seconds=end - time.monotonic())


def attack_log_flood(path, end):
    n = [0]

    def setup(fe):
        fe.get_features()
        fe.set_protocol_features(fe.get_protocol_features())
        fe.set_owner()

    def step(fe):
        n[0] += 1
        fe.send(1000 + n[0] % 100000)                       # unknown: ignored
        fe.send(V.NET_SET_MTU, struct.pack("<Q", 68 + n[0] % 60000))
        fe.send(V.GET_FEATURES, fds=[0])                    # a stray fd
        fe.recv_reply(V.GET_FEATURES)
        if n[0] % 50 == 0:
            fe.close()                                      # and again
        return 3
    return each_connection(path, end, step, setup)


def attack_compromised_session(path, end, daemon_pid, ns):
    """What a compromised victim session writes to its parent (see the
    module doc), session after session."""
    from vionetd import vionetd_pb2 as pb
    ops, pid = 0, None
    burst = ([pb.FromSession(log=pb.LogLine(level=40, text="x%d" % i, format="x%d" % i))
              for i in range(500)] + [pb.FromSession(spawn=pb.Spawn(role=1 + i % 2))
                                      for i in range(500)]
             + [pb.FromSession(set_mtu=68 + i) for i in range(200)])
    burst = [m.SerializeToString() for m in burst]
    while time.monotonic() < end:
        pid = H.process_named(daemon_pid, "vionetd: vhost vic/0", other_than=pid,
                              timeout=max(0.0, end - time.monotonic()))
        if pid is None:
            break
        try:
            chan = H.session_channel(daemon_pid, ns, pid)
        except (OSError, LookupError):
            continue
        chan.settimeout(max(0.1, end - time.monotonic()))
        try:
            for data in burst:
                chan.send(data)
                ops += 1
            for _ in range(20):
                with contextlib.suppress(PermissionError):    # SO_PASSRIGHTS: refused
                    chan.sendmsg([b""], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          struct.pack("i", 0))])
                ops += 1
            chan.send(pb.FromSession(state=pb.SessionState(state="waiting"))
                      .SerializeToString() + b"\xf8\x07\x01")    # an unknown field
            ops += 1
        except OSError:
            pass
        finally:
            chan.close()
    return ops


ATTACKS = {"flood": attack_flood, "trickle": attack_trickle,
           "crash_loop": attack_crash_loop, "reconnect_loop": attack_reconnect_loop,
           "log_flood": attack_log_flood, "compromised_session": attack_compromised_session}


def start_attacker(kind, path, seconds, *args):
    """Fork the attacker; it writes its op count to a pipe. (pid, read fd)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            ops = ATTACKS[kind](path, time.monotonic() + seconds, *args)
            os.write(w, b"%d\n" % ops)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def finish_attacker(pid, r, bound):
    """Wait for the attacker at most bound seconds (then kill it by pid);
    its op count, or None."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    try:
        data = os.read(r, 64)
    finally:
        os.close(r)
    return int(data) if data.strip() else None


# ---- one scenario ------------------------------------------------------------

def victim_restarts(rig):
    try:
        out = rig.d.ctl("show", "vic", check=False).stdout
    except Exception:                 # noqa: BLE001 - a figure we could not get
        return None
    words = out.replace(",", " ").split()
    if "restarts" in words:
        return int(words[words.index("restarts") + 1])
    return None


def log_size(rig):
    try:
        return os.path.getsize(rig.d.log_path)
    except OSError:
        return None


def victim_log_bytes(rig, since):
    """Bytes of the log's lines about the victim, from offset since."""
    try:
        with open(rig.d.log_path, "rb") as f:
            f.seek(since)
            return sum(len(line) for line in f if b" vic/0:" in line)
    except (OSError, TypeError):
        return None


def run_scenario(rig, kind, seconds):
    restarted = rig.restarts
    rig.ensure()
    cpu0, log0 = H.cpu_seconds(rig.pid), log_size(rig)
    attacker = None
    if kind in ATTACKS:      # forked before the measuring threads start
        extra = (rig.pid, rig.dns) if kind == "compromised_session" else ()
        attacker = start_attacker(kind, rig.path("vic"), seconds, *extra)
    with rig.monitor(pace=0.02, frame_pace=0, newcomer=rig.path("new")) as mon:
        time.sleep(seconds)
    ops = finish_attacker(*attacker, bound=15) if attacker else None
    t = mon.t1 - mon.t0
    cpu1, log1 = H.cpu_seconds(rig.pid), log_size(rig)
    time.sleep(0.2)
    arrived = len(mon.arrivals())
    gf = mon.max_rtt
    neg = max((d for d, _ in mon.negotiations), default=None)
    worst = max([x for x in (gf, neg) if x is not None], default=None)
    ms = lambda x: None if x is None else round(x * 1000, 2)      # noqa: E731
    return {
        "seconds": round(t, 2),
        "bystander_handshake_ms": ms(worst),
        "bystander_get_features_ms": ms(gf),
        "bystander_negotiation_ms": ms(neg),
        "negotiations": len(mon.negotiations),
        "negotiation_failures": sum(1 for _, e in mon.negotiations if e),
        "bystander_frames_per_s": round(len(mon.done) / t, 1),
        "bystander_frames_arrived": arrived,
        "bystander_errors": mon.errors[:3],
        "daemon_cpu_s": None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 2),
        "log_growth_bytes": None if log0 is None or log1 is None else log1 - log0,
        "victim_log_bytes_per_min": per_minute(victim_log_bytes(rig, log0), t),
        "victim_restarts": victim_restarts(rig) if rig.alive() else None,
        "attacker_ops": ops,
        "daemon_alive": rig.alive(),
        "rig_restarted": rig.restarts != restarted,
    }


def per_minute(n, seconds):
    return None if n is None or not seconds else round(n * 60.0 / seconds)


def warm_up(rig, seconds=1.0):
    """Bystander frames back to back for a second, unmeasured."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rig.bystander.send()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, help="duration of every scenario")
    p.add_argument("--only", action="append", choices=SCENARIOS,
                   help="run only these scenarios (undisturbed always runs)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = p.parse_args(argv)
    kinds = [k for k in SCENARIOS if k == "undisturbed" or not args.only or k in args.only]
    kinds.append("undisturbed_again")
    out = {}
    with H.Rig(("by", "vic", "new")) as rig:
        warm_up(rig)
        for kind in kinds:
            seconds = args.seconds or DEFAULT_SECONDS.get(kind, DEFAULT_OTHER)
            out[kind] = run_scenario(rig, kind, seconds)
        base = (out["undisturbed"]["bystander_frames_per_s"] +
                out["undisturbed_again"]["bystander_frames_per_s"]) / 2
        for r in out.values():
            r["bystander_frame_ratio"] = round(r["bystander_frames_per_s"] / base, 3) \
                if base else None
    if args.json:
        print(json.dumps(out, indent=1, sort_keys=True))
    else:
        cols = ("bystander_handshake_ms", "bystander_get_features_ms", "bystander_negotiation_ms",
                "bystander_frame_ratio", "daemon_cpu_s", "log_growth_bytes",
                "victim_log_bytes_per_min", "victim_restarts")
        print("%-20s" % "scenario" + "".join("%14s" % c.replace("bystander_", "")[:13]
                                              for c in cols))
        for kind, r in out.items():
            print("%-20s" % kind + "".join("%14s" % r[c] for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
