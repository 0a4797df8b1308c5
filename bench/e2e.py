"""bench/e2e.py: TCP throughput of a real guest on vionetd, against QEMU's own tap.

One Linux guest (the project's image: 6.12 kernel, QEMU 10 from
guest/out/qemu10, booted by tests/guest.py) measures with iperf3, guest to
host (tx) and host to guest (rx), on each backend:

  vionetd            vionetd, default offload policy
  vionetd_nooffload  vionetd, the guest's offloads off
                     (vionet.offload=tx:off,tso:off,gso:off)
  qemu_tap           QEMU's own tap backend, vhost=off
  vhost_net          a tap with kernel vhost-net (-netdev tap,vhost=on);
                     null with a why where /dev/vhost-net is absent

    e2e.py [--rounds 3] [--seconds 10] [--only BACKEND]... [--json]

Method. Every backend gets the same virtio-net-pci properties (device_props():
under TCG event_idx=off for all, since QEMU's tap backend stalls TCP
otherwise; USO properties spelled out; QEMU clears what a backend cannot do).
Throughput drifts 10-15 % over tens of minutes here, so rounds alternate the
backends (for each round, for each backend: one boot doing one tx and one rx
iperf3 run of --seconds) and each figure is the median over rounds. The
iperf3 server and the tap's host address live in a network namespace of the
boot's own. On vionetd the guest prints a marker before and after its runs
and pauses, so the host samples between them: utime+stime of the daemon's
worker processes (/proc/PID/stat) and vionetd's tx_bytes+rx_bytes counters
-> CPU seconds per GB moved.

USO (informational): in each qemu_tap boot the guest also sends UDP with
UDP_SEGMENT (guest/out/bin/udpgso_send) with its tx-udp-segmentation on and
then off (order alternating by round); uso_gain is the ratio of the send
rates (QEMU 10's tap backend offers HOST_USO, host_uso=on). vionetd gets
null there: QEMU never offers USO over vhost-user (see USO_WHY).

Invariants: every namespace, tap, daemon, QEMU and host-side peer made here
is gone when a boot ends, whatever happened (context managers and finally
blocks; SIGTERM is turned into KeyboardInterrupt so they run then too);
processes are killed by their own pid or session, never by name; every wait
is bounded. A boot that fails is recorded in `runs` with its error and the
benchmark goes on; a backend with no good run reports null with a why.
"""
import argparse
import contextlib
import dataclasses
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.backend import busy_between, cpu_times, proc_cpu, workers  # noqa: E402
from tests import guest as G                                          # noqa: E402
from tests import netns as N                                          # noqa: E402
from tests.daemon import daemon                                       # noqa: E402

BACKENDS = ("vionetd", "vionetd_nooffload", "qemu_tap", "vhost_net")
KERNEL, QEMU = "6.12", "10"
HOST_IP, GUEST_IP = "10.0.0.1", "10.0.0.2"
MAC = "52:54:00:12:34:56"
IPERF_PORT, USO_PORTS = 5201, {"on": 5401, "off": 5402}
HOST_USO = 56                     # virtio feature bit (REFERENCE.md)
NO_OFFLOAD = "tx:off,tso:off,gso:off"
USO_WHY = ("QEMU (7.2 and 10) never offers USO to a guest over vhost-user: "
           "net/vhost-user.c has no has_uso callback, so virtio-net clears "
           "HOST_USO/GUEST_USO4/GUEST_USO6")
VHOST_NET = "/dev/vhost-net"
TAP = "vbe0"                      # inside the boot's own namespace: no clash
CONF = """socket "@CTL@"
vm "g1" {
    interface "%s" {
        socket "@DIR@/g1.sock"
        lladdr %s
    }
}
""" % (TAP, MAC)


class VhostNetTap(G.Tap):
    """QEMU's tap backend with the kernel's vhost-net doing the rings."""

    def args(self, qemu):
        return ["-netdev", f"tap,id=n0,ifname={self.ifname},script=no,"
                "downscript=no,vhost=on"]


def device_props(accel):
    """The virtio-net-pci properties every backend gets, whatever
    tests/guest.py's device_defaults() would pick per backend."""
    return {"mac": MAC,
            "event_idx": "off" if accel == "tcg" else "on",
            "host_uso": "on", "guest_uso4": "on", "guest_uso6": "on"}


def unavailable(backend):
    """Why a backend cannot run on this host, or None."""
    if backend == "vhost_net" and not os.path.exists(VHOST_NET):
        return "no /dev/vhost-net on this host"
    return None


# ---- the guest's side ----------------------------------------------------------

def snippet(backend, seconds, uso_secs, uso_first):
    """Shell run by the guest (after init has set up eth0): markers for the
    host's samples, one tx and one rx iperf3 run (each in a subshell, so the
    plan's variables do not leak), then for qemu_tap the USO sends."""
    s = ["note bench-begin", "sleep 2", "fail=0"]
    for name, rev in (("tx", 0), ("rx", 1)):
        s.append(f"( export VIONET_IPERF_NAME={name} VIONET_IPERF_REVERSE={rev} "
                 f"VIONET_IPERF_SECS={seconds}; . /plans/iperf.sh ) || fail=1")
    s += ["note bench-end", "sleep 3"]
    if backend == "qemu_tap" and uso_secs > 0:
        order = ("on", "off") if uso_first == "on" else ("off", "on")
        for mode in order:
            s += [f"ethtool -K $IF tx-udp-segmentation {mode}",
                  f"result uso_{mode}.ethtool_rc $?",
                  f"udpgso_send send $VIONET_HOST {USO_PORTS[mode]} -t {uso_secs} "
                  f"| results_from uso_{mode}"]
    s.append("exit $fail")
    return "\n".join(s) + "\n"


# ---- host-side processes ---------------------------------------------------------

class Peers:
    """Processes in a namespace, each in its own session; close() kills
    those still running, by their session (their own pid)."""

    def __init__(self, ns):
        self.ns, self.procs = ns, []

    def start(self, *argv):
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, text=True,
                             start_new_session=True)
        self.procs.append(p)
        return p

    @staticmethod
    def readline(p, timeout):
        r, _, _ = select.select([p.stdout], [], [], timeout)
        line = p.stdout.readline().strip() if r else ""
        return line

    @staticmethod
    def finish(p, timeout):
        """stdout of p once it exits by itself (bounded), else killed."""
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate(timeout=5)
        return out

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=10)


@contextlib.contextmanager
def peers(ns):
    p = Peers(ns)
    try:
        yield p
    finally:
        p.close()


def stop_receiver(p):
    """A udpgso receiver's counts: it stops by itself 3 s after its last
    datagram; one that got nothing is told to stop (it still prints)."""
    try:
        p.wait(timeout=6)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    return Peers.finish(p, 10)


def keyvals(text):
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@contextlib.contextmanager
def tap_in(ns):
    """A persistent tap in ns with the host's address, for QEMU to open
    (goes away with the namespace)."""
    N.ns_run(ns, "ip", "tuntap", "add", "dev", TAP, "mode", "tap")
    N.ns_run(ns, "ip", "addr", "add", HOST_IP + "/24", "dev", TAP)
    N.ns_run(ns, "ip", "link", "set", TAP, "up")
    yield TAP


# ---- one boot ----------------------------------------------------------------------

@dataclasses.dataclass
class Boot:
    backend: str
    round: int
    seconds: int
    uso_secs: int
    accel: str

    def params(self):
        p = {"ip": GUEST_IP + "/24", "host": HOST_IP,
             "timeout": 4 * self.seconds + 2 * self.uso_secs + 120}
        if self.backend == "vionetd_nooffload":
            p["offload"] = NO_OFFLOAD
        return p

    def guest(self, netdev, netns=None):
        uso_first = "on" if self.round % 2 == 0 else "off"
        return G.Guest(kernel=KERNEL, qemu=QEMU, netdev=netdev, netns=netns,
                       accel=self.accel, device_props=device_props(self.accel),
                       params=self.params(), timeout=self.timeout(),
                       snippet=snippet(self.backend, self.seconds, self.uso_secs,
                                       uso_first))

    def timeout(self):
        # boot (about 20 s under TCG), both runs, the USO sends, slack
        return 240 + 3 * self.seconds + 3 * self.uso_secs

    def run(self):
        """One boot; returns the run's figures (raises on failure)."""
        with N.netns("vbe") as ns:
            if self.backend.startswith("vionetd"):
                return self.on_vionetd(ns)
            return self.on_tap(ns)

    def on_vionetd(self, ns):
        with daemon(CONF, ns) as d, peers(ns) as pp:
            sock = d.dir + "/g1.sock"
            d.wait_socket(sock)
            N.ns_run(ns, "ip", "addr", "add", HOST_IP + "/24", "dev", TAP)
            pp.start("iperf3", "-s", "-p", str(IPERF_PORT))
            with self.guest(G.VhostUser(sock)) as g:
                g.wait_for(r"VIONET-NOTE bench-begin", self.timeout())
                s0 = sample(d)
                g.wait_for(r"VIONET-NOTE bench-end", 3 * self.seconds + 60)
                s1 = sample(d)
                res = g.wait_done()
                log = g.log()
            out = self.figures(res, log, g)
            out.update(cost(s0, s1))
            return out

    def on_tap(self, ns):
        netdev_cls = VhostNetTap if self.backend == "vhost_net" else G.Tap
        with tap_in(ns) as tap, peers(ns) as pp:
            pp.start("iperf3", "-s", "-p", str(IPERF_PORT))
            recv = {}
            if self.backend == "qemu_tap" and self.uso_secs > 0:
                for mode, port in USO_PORTS.items():
                    r = pp.start(os.path.join(G.OUT, "bin", "udpgso_send"), "recv",
                                 str(port), "-t", str(self.timeout()), "-i", "3",
                                 "-r", str(16 << 20))
                    line = pp.readline(r, 10)
                    if line != f"listening={port}":
                        raise RuntimeError(f"udpgso receiver: {line!r}")
                    recv[mode] = r
            with self.guest(netdev_cls(tap), netns=ns) as g:
                res = g.wait_done()
                log = g.log()
            out = self.figures(res, log, g)
            if recv:
                got = {m: keyvals(stop_receiver(r)) for m, r in recv.items()}
                out["uso"] = uso_figures(res, got)
            return out

    def figures(self, res, log, g):
        if res["rc"] != 0 or "tx.mbps" not in res or "rx.mbps" not in res:
            raise RuntimeError(f"guest failed (rc {res['rc']})\n{log}")
        tx, rx = float(res["tx.mbps"]) / 1000, float(res["rx.mbps"]) / 1000
        if tx <= 0 or rx <= 0:
            raise RuntimeError(f"iperf3 moved nothing\n{log}")
        return {"tx_gbit_s": round(tx, 3), "rx_gbit_s": round(rx, 3),
                "tx_retr": int(res.get("tx.retr", "0") or 0),
                "rx_retr": int(res.get("rx.retr", "0") or 0),
                "host_uso_negotiated": G.feature_bit(res.get("features", ""), HOST_USO),
                "boot_s": round(g.boot_seconds or 0, 1), "elapsed_s": round(g.elapsed(), 1)}


def sample(d):
    """vionetd's worker CPU and byte counters, now."""
    pids = workers(d.proc.pid)
    c = d.stats()["g1/0"]["counters"]
    return {"pids": pids, "cpu": {r: proc_cpu(p) for r, p in pids.items()},
            "bytes": c.get("tx_bytes", 0) + c.get("rx_bytes", 0),
            "machine": cpu_times()}


def cost(s0, s1):
    """Worker CPU seconds and bytes moved between two samples."""
    if s0["pids"] != s1["pids"] or len(s0["pids"]) != 2 or \
            None in s0["cpu"].values() or None in s1["cpu"].values():
        return {"cpu_why": f"workers changed or gone: {s0['pids']} -> {s1['pids']}"}
    cpu = {r: round(s1["cpu"][r] - s0["cpu"][r], 2) for r in s0["cpu"]}
    moved = s1["bytes"] - s0["bytes"]
    return {"worker_cpu_s": cpu, "bytes_moved": moved,
            "cpu_s_per_gb": round(sum(cpu.values()) / (moved / 1e9), 3) if moved else None,
            "machine_busy": busy_between(s0["machine"], s1["machine"])}


def uso_figures(res, got):
    """Send rate (what the guest pushed through the device) with
    tx-udp-segmentation on and off, and what the receiver counted."""
    out = {}
    for mode in ("on", "off"):
        k = f"uso_{mode}."
        try:
            sent, secs = int(res[k + "sent_bytes"]), float(res[k + "seconds"])
        except (KeyError, ValueError):
            out[mode] = {"why": "udpgso_send gave no figures"}
            continue
        r = got.get(mode, {})
        out[mode] = {"send_gbit_s": round(sent * 8 / secs / 1e9, 3) if secs > 0 else None,
                     "ethtool_rc": res.get(k + "ethtool_rc"),
                     "gso": res.get(k + "gso"),
                     "received_bytes": int(r.get("bytes", 0)),
                     "received_fraction": round(int(r.get("bytes", 0)) / sent, 3)
                     if sent else None,
                     "bad": int(r.get("bad", 0))}
    return out


# ---- the whole run -----------------------------------------------------------------

def med(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 3) if xs else None


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def summarize(backends, runs, only):
    out = {}
    for b in BACKENDS:
        why = unavailable(b)
        if b not in backends:
            why = why or f"not run (--only {','.join(only)})"
        good = [r for r in runs if r["backend"] == b and "error" not in r]
        if not why and not good:
            errs = [r["error"].splitlines()[0] for r in runs if r["backend"] == b]
            why = "every run failed: " + "; ".join(errs)
        if why:
            out[b] = {"tx_gbit_s": None, "rx_gbit_s": None, "why": why}
            continue
        e = {"tx_gbit_s": med(r["tx_gbit_s"] for r in good),
             "rx_gbit_s": med(r["rx_gbit_s"] for r in good),
             "runs_ok": len(good)}
        if b.startswith("vionetd"):
            cpu = sum(sum(r["worker_cpu_s"].values()) for r in good if "worker_cpu_s" in r)
            moved = sum(r.get("bytes_moved", 0) for r in good)
            e["cpu_s_per_gb"] = round(cpu / (moved / 1e9), 3) if moved else None
            e["uso"], e["uso_why"] = None, USO_WHY
        if b == "qemu_tap":
            e["uso"] = uso_summary(good)
        out[b] = e
    v, nv, q = out["vionetd"], out["vionetd_nooffload"], out["qemu_tap"]
    out["ratio_tx_vs_qemu_tap"] = ratio(v["tx_gbit_s"], q["tx_gbit_s"])
    out["ratio_rx_vs_qemu_tap"] = ratio(v["rx_gbit_s"], q["rx_gbit_s"])
    out["offload_gain_tx"] = ratio(v["tx_gbit_s"], nv["tx_gbit_s"])
    out["vionetd_cpu_s_per_gb"] = v.get("cpu_s_per_gb")
    out["uso_gain"] = (q.get("uso") or {}).get("gain")
    whys = {k: "needs vionetd and qemu_tap" for k in ("ratio_tx_vs_qemu_tap",
                                                     "ratio_rx_vs_qemu_tap")
            if out[k] is None}
    if out["offload_gain_tx"] is None:
        whys["offload_gain_tx"] = "needs vionetd and vionetd_nooffload"
    if out["uso_gain"] is None:
        whys["uso_gain"] = (q.get("uso") or {}).get("why", "needs qemu_tap")
    if whys:
        out["why"] = whys
    return out


def uso_summary(good):
    us = [r["uso"] for r in good if "uso" in r]
    if not us:
        return {"gain": None, "why": "USO not measured (--uso-seconds 0)"}
    if not all(r["host_uso_negotiated"] for r in good):
        return {"gain": None, "why": "the guest did not negotiate HOST_USO"}
    if any(u[m].get("ethtool_rc") != "0" for u in us for m in ("on", "off")):
        return {"gain": None, "why": "ethtool -K tx-udp-segmentation failed in the guest"}
    on = med(u["on"].get("send_gbit_s") for u in us)
    off = med(u["off"].get("send_gbit_s") for u in us)
    return {"on_send_gbit_s": on, "off_send_gbit_s": off, "gain": ratio(on, off),
            "received_fraction_on": med(u["on"].get("received_fraction") for u in us),
            "received_fraction_off": med(u["off"].get("received_fraction") for u in us),
            "bad_datagrams": sum(u[m].get("bad", 0) for u in us for m in ("on", "off"))}


def run(rounds, seconds, only=(), uso_secs=5, log=None):
    acc = G.accel()
    backends = [b for b in BACKENDS if (not only or b in only) and not unavailable(b)]
    t0 = time.monotonic()
    runs = []
    for r in range(rounds):
        for b in backends:         # round-robin: drift hits every backend alike
            boot = Boot(b, r, seconds, uso_secs, acc)
            entry = {"round": r, "backend": b}
            try:
                entry.update(boot.run())
            except (G.GuestError, RuntimeError, TimeoutError, OSError,
                    subprocess.SubprocessError) as e:
                entry["error"] = str(e)[:4000]
                if log:
                    print(f"e2e: {b} round {r} failed:\n{e}", file=log)
            if log:
                print("e2e: round %d %-18s tx %s rx %s Gbit/s%s" % (
                    r, b, entry.get("tx_gbit_s"), entry.get("rx_gbit_s"),
                    " (failed)" if "error" in entry else ""), file=log, flush=True)
            runs.append(entry)
    out = {"accel": acc, "kernel": KERNEL, "qemu": QEMU, "rounds": rounds,
           "seconds": seconds, "uso_seconds": uso_secs, "cpus": os.cpu_count(),
           "device_props": device_props(acc)}
    out.update(summarize(backends, runs, only))
    out["wall_s"] = round(time.monotonic() - t0, 1)
    out["runs"] = runs
    return out


def table(res):
    lines = [f"accel {res['accel']}, guest {res['kernel']}, QEMU {res['qemu']}, "
             f"{res['rounds']} round(s) x {res['seconds']} s, medians",
             "%-18s %10s %10s %12s  %s" % ("backend", "tx Gbit/s", "rx Gbit/s",
                                           "CPU s/GB", "note")]
    for b in BACKENDS:
        e = res[b]
        f = lambda x: "-" if x is None else "%.3f" % x   # noqa: E731
        lines.append("%-18s %10s %10s %12s  %s" % (
            b, f(e["tx_gbit_s"]), f(e["rx_gbit_s"]), f(e.get("cpu_s_per_gb")),
            e.get("why", "")))
    for k in ("ratio_tx_vs_qemu_tap", "ratio_rx_vs_qemu_tap", "offload_gain_tx",
              "vionetd_cpu_s_per_gb", "uso_gain"):
        lines.append("%-22s %s" % (k, res[k] if res[k] is not None
                                   else "- (%s)" % res.get("why", {}).get(k, "")))
    return "\n".join(lines)


def _term(signum, frame):
    raise KeyboardInterrupt   # so every finally block runs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--uso-seconds", type=int, default=5,
                    help="each UDP_SEGMENT send in the qemu_tap boots (0: none)")
    ap.add_argument("--only", action="append", choices=BACKENDS, default=[])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.rounds < 1 or a.seconds < 1 or a.uso_seconds < 0:
        ap.error("--rounds and --seconds must be at least 1")
    if os.geteuid() != 0:
        ap.error("needs root (network namespaces, taps)")
    if not G.images_built():
        ap.error("guest images missing: run scripts/guest-image.sh")
    signal.signal(signal.SIGTERM, _term)
    try:
        res = run(a.rounds, a.seconds, a.only, a.uso_seconds, log=sys.stderr)
    except KeyboardInterrupt:
        print("e2e: interrupted; everything made was removed", file=sys.stderr)
        return 130
    print(json.dumps(res, indent=1) if a.json else table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
