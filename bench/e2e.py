"""bench/e2e.py: TCP throughput of a real guest on vionetd, against QEMU's own tap.

One Linux guest (the project's image: 6.12 kernel, QEMU 10 from
guest/out/qemu10, booted by tests/guest.py) measures with iperf3, guest to
host (tx) and host to guest (rx), on each backend:

  vionetd            vionetd, default offload policy
  vionetd_nooffload  vionetd, the guest's offloads off
                     (vionet.offload=tx:off,tso:off,gso:off)
  qemu_tap           QEMU's own tap backend, vhost=off
  qemu_tap_nooffload QEMU's own tap backend, the guest's offloads off
  vhost_net          a tap with kernel vhost-net (-netdev tap,vhost=on);
                     null with a why where /dev/vhost-net is absent

    e2e.py [--rounds 3] [--seconds 10] [--only BACKEND]... [--json]

The guest runs as a user's 1-vCPU VM is run: -smp 1 and the accelerator's
default CPU model (no -cpu; tests/guest.py's -smp 2 -cpu max let the
guest's second vCPU compete with the backend on a 2-core host and hid the
guest-side cost this benchmark is about). "guest" in the JSON says so.

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

The guest's cost, per direction (tx: the guest sends; rx: it receives), on
every backend alike: around each iperf3 run the guest prints its counters
(guest/plans/netcount.sh, sent inline as the images are prebuilt): the
virtio MSI-X lines of /proc/interrupts, its driver's per-queue kick counts
(ethtool -S rxN_kicks/txN_kicks) and its interface's bytes and packets;
the host samples QEMU's threads (vCPU threads by name, debug-threads=on)
and vionetd's workers and counters at markers between the runs. Per
backend (medians over rounds), GB = bytes through the guest's interface
both ways:
  guest_irqs_per_gb        {tx, rx}: virtio interrupts the guest took
  kicks_per_gb             {tx, rx}: kicks the guest sent, all queues (the
                           guest's count: QEMU's tap backend has none
                           host-side without tracing; kicks_why)
  frames_per_notification  {tx, rx}: {tx,rx}_per_{kick,irq}: frames the
                           guest sent/received per kick or interrupt of
                           that queue
  host_cpu_s_per_gb        {tx, rx}: vcpu (QEMU's vCPU thread = the guest),
                           qemu_other (QEMU's other threads: there QEMU's
                           tap backend runs), vionetd (workers), backend
                           (the two), total
  device_per_gb            vionetd only: its counters per GB and per frame
                           (kick eventfd wake-ups, notifications, batches)
ratio_{tx,rx}_nooffload_vs_qemu_tap compare the two _nooffload backends;
irqs_vs_qemu_tap is vionetd's guest_irqs_per_gb over QEMU tap's.

USO (informational): in each qemu_tap boot the guest also sends UDP with
UDP_SEGMENT (guest/out/bin/udpgso_send) with its tx-udp-segmentation on and
then off (order alternating by round); uso_gain is the ratio of the send
rates (QEMU 10's tap backend offers HOST_USO, host_uso=on). vionetd gets
null there: QEMU never offers USO over vhost-user (see USO_WHY).

What the C core's changes did to these figures (this 2-core host, shared:
machine 55-100 % busy in every run, load average 2-18; vionetd medians;
irq, kick: guest interrupts and kicks per GB):
  before (6936008; 3 x 10 s): tx 1.31 rx 1.63 Gbit/s, ratios vs qemu_tap
    tx 0.69 rx 0.82, offloads off tx 1.33 rx 0.81; irq tx 7.9k rx 8.1k
    (qemu_tap 17.0k, 7.0k); kick tx 16.5k rx 3.9k (qemu_tap 14.5k, 2.7k):
    about one kick per frame sent (1.02 frames per kick), one signal per
    batch of 1.3-2.5 frames.
  linger 100 us (625c88b; 2 x 5 s): kicks stay off while the worker lingers
    after the ring runs dry, signals wait for it to go idle: kick tx 4.4k
    rx 2.6k (6.2 frames per kick), irq tx 8.1k rx 5.6k (qemu_tap 12.6k,
    7.6k); ratios tx 1.02 rx 1.20, offloads off tx 1.94 rx 1.34.
  linger 250 us (771adaa; 2 x 5 s, vionetd and qemu_tap only): kick tx
    1.5k rx 2.2k, irq tx 7.6k rx 4.7k (qemu_tap 13.5k, 9.0k); ratios tx
    1.14 rx 1.47. Kept as the default.
  same, 3 x 10 s, defaults (771adaa): tx 2.44 rx 2.88 Gbit/s; ratios
    tx 1.30 rx 1.24, offloads off tx 2.00 rx 1.46; irq tx 7.2k rx 4.8k
    (qemu_tap 14.5k, 6.9k), offloads off 11.3k, 4.7k (qemu_tap 15.6k,
    7.0k); kick tx 2.8k rx 2.4k (qemu_tap 9.7k, 2.5k). But a lone frame
    (a ping reply) waited up to 250 us for its signal.
  signals throttled instead (5777e0b; 2 x 5 s, vionetd and qemu_tap): at
    once unless the last is under 250 us old: every burst of a stream
    began with a signal: irq tx 9.8k rx 7.5k (qemu_tap 18.0k, 7.8k);
    ratios tx 0.88 rx 0.90. Dropped.
  signals at once after a quiet spell (no signal for 4 x 250 us), else
    up to 250 us after the first unsignalled completion (87918af, the
    code then): two runs of 3 x 10 s, defaults (6 rounds, medians): tx 2.96
    rx 2.65 Gbit/s; ratios tx 1.42 rx 1.36, offloads off tx 1.60 rx 1.08
    (per round: tx 0.86-1.56, rx 0.92-1.44, off tx 1.46-1.78, off rx
    0.78-1.19); irq tx 6.5k rx 4.8k (qemu_tap 16.5k, 7.1k), offloads off
    14.2k, 5.2k (qemu_tap 20.1k, 9.6k); kick tx 1.7k rx 2.3k (qemu_tap
    14.5k, 2.9k); guest vCPU s/GB (second run) tx 2.57 rx 1.91 (qemu_tap
    2.45, 2.40);
    vionetd's workers 0.8, 0.6 CPU s/GB (0.50, 0.57 before: the looks
    while lingering cost host CPU).
  the tx worker writes each batch with one io_uring submission (d17b0a2
    on, 2026-11-30; 3 x 10 s): ratios tx 1.65 rx 1.62, offloads off tx
    2.60 rx 1.37; irq tx 8.3k rx 4.0k (qemu_tap 32.9k, 15.2k). vionetd
    alone with io_uring refused by the kernel (kernel.io_uring_disabled=2,
    so one writev() per frame) and then allowed, one run of 3 x 10 s
    each: tx 3.42 and 4.42 Gbit/s (rounds 3.1-5.1 and 2.9-4.6), vionetd's
    workers 0.78 and 0.61 CPU s/GB on tx.
Throughput moved by 30 % between rounds of one backend here: read the
ratios with that in mind; the interrupt and kick counts are steadier.

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

from bench.backend import CLK_TCK, busy_between, cpu_times, proc_cpu, workers  # noqa: E402
from tests import guest as G                                          # noqa: E402
from tests import netns as N                                          # noqa: E402
from tests.daemon import daemon                                       # noqa: E402

BACKENDS = ("vionetd", "vionetd_nooffload", "qemu_tap", "qemu_tap_nooffload",
            "vhost_net")
KERNEL, QEMU = "6.12", "10"
HOST_IP, GUEST_IP = "10.0.0.1", "10.0.0.2"
MAC = "52:54:00:12:34:56"
IPERF_PORT, USO_PORTS = 5201, {"on": 5401, "off": 5402}
HOST_USO = 56                     # virtio feature bit (virtio 1.3, 5.1.3)
NO_OFFLOAD = "tx:off,tso:off,gso:off"
USO_WHY = ("QEMU (7.2 and 10) never offers USO to a guest over vhost-user: "
           "net/vhost-user.c has no has_uso callback, so virtio-net clears "
           "HOST_USO/GUEST_USO4/GUEST_USO6")
VHOST_NET = "/dev/vhost-net"
TAP = "vbe0"                      # inside the boot's own namespace: no clash
SMP, MEM_MB = 1, 512              # a user's 1-vCPU VM (see GuestAsUsers)
NETCOUNT = os.path.join(ROOT, "guest", "plans", "netcount.sh")
KICKS_WHY = ("the guest's own count (ethtool -S *_kicks, virtio_net) on every "
             "backend; host-side, QEMU's tap backend counts no kicks without "
             "tracing, vionetd's eventfd wake-ups are in device_per_gb")
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


class GuestAsUsers(G.Guest):
    """tests/guest.py's Guest with SMP vCPUs and the accelerator's default
    CPU model (no -cpu: qemu64 for q35 under TCG and KVM alike), as a
    user's VM is run; tests/guest.py itself asks for -cpu max/host."""

    def argv(self, serial_path):
        a = super().argv(serial_path)
        i = a.index("-cpu")
        # thread names ("CPU 0/TCG"), so the vCPU's CPU time is told apart
        return a[:i] + a[i + 2:] + ["-name", "g1,debug-threads=on"]


def guest_config(accel):
    """What the guest ran on, for the JSON."""
    return {"smp": SMP, "cpu": "accelerator default (no -cpu option)",
            "accel": "kvm" if accel == "kvm" else "tcg,thread=multi",
            "machine": "q35", "mem_mb": MEM_MB, "kernel": KERNEL, "qemu": QEMU}


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

def netcount_fn():
    """guest/plans/netcount.sh as a shell function (the guest images are
    prebuilt: the plan is sent inline, comments dropped)."""
    with open(NETCOUNT) as f:
        body = [ln for ln in f.read().splitlines() if ln and not ln.startswith("#")]
    return "netcount(){\n" + "\n".join(body) + "\n}"


def snippet(backend, seconds, uso_secs, uso_first):
    """Shell run by the guest (after init has set up eth0): for each of a
    tx and an rx iperf3 run (each in a subshell, so the plan's variables do
    not leak), the guest's counters before and after (netcount) and a
    marker after which it pauses so the host samples its own (bench-begin,
    bench-mid, bench-end); then for qemu_tap the USO sends."""
    s = [netcount_fn(), "fail=0", "note bench-begin", "sleep 2"]
    for name, rev, mark in (("tx", 0, "mid"), ("rx", 1, "end")):
        s += [f"netcount {name}0",
              f"( export VIONET_IPERF_NAME={name} VIONET_IPERF_REVERSE={rev} "
              f"VIONET_IPERF_SECS={seconds}; . /plans/iperf.sh ) || fail=1",
              f"netcount {name}1", f"note bench-{mark}", "sleep 2"]
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
        if self.backend.endswith("_nooffload"):
            p["offload"] = NO_OFFLOAD
        return p

    def guest(self, netdev, netns=None):
        uso_first = "on" if self.round % 2 == 0 else "off"
        return GuestAsUsers(kernel=KERNEL, qemu=QEMU, netdev=netdev, netns=netns,
                       accel=self.accel, device_props=device_props(self.accel),
                       smp=SMP, mem_mb=MEM_MB,
                       params=self.params(), timeout=self.timeout(),
                       snippet=snippet(self.backend, self.seconds, self.uso_secs,
                                       uso_first))

    def samples(self, g, d=None):
        """Host samples at the guest's three markers: {mark: sample}."""
        out = {}
        for i, mark in enumerate(("begin", "mid", "end")):
            g.wait_for(r"VIONET-NOTE bench-" + mark,
                       self.timeout() if i == 0 else 2 * self.seconds + 60)
            out[mark] = sample(g.proc.pid, d)
        return out

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
                smp = self.samples(g, d)
                res = g.wait_done()
                log = g.log()
            out = self.figures(res, log, g)
            out.update(cost(smp["begin"], smp["end"]))
            out.update(guest_cost(res, smp))
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
                smp = self.samples(g)
                res = g.wait_done()
                log = g.log()
            out = self.figures(res, log, g)
            out.update(guest_cost(res, smp))
            out["machine_busy"] = busy_between(smp["begin"]["machine"],
                                               smp["end"]["machine"])
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


def qemu_threads(pid):
    """(vCPU threads' CPU s, the whole process's CPU s) of QEMU, or None.
    vCPU threads are named "CPU n/TCG" or "CPU n/KVM"; the rest (main
    loop, where QEMU's tap backend runs; I/O threads) is the backend's."""
    total = proc_cpu(pid)
    if total is None:
        return None
    vcpu = 0.0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if name.startswith("CPU "):
            vcpu += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return vcpu, total


def sample(qemu_pid, d=None):
    """CPU of QEMU's threads and, on vionetd, its workers' CPU and all of
    its counters, now."""
    s = {"qemu": qemu_threads(qemu_pid), "machine": cpu_times(), "pids": {}}
    if d is not None:
        pids = workers(d.proc.pid)
        c = d.stats()["g1/0"]["counters"]
        s.update({"pids": pids, "cpu": {r: proc_cpu(p) for r, p in pids.items()},
                  "counters": c,
                  "bytes": c.get("tx_bytes", 0) + c.get("rx_bytes", 0)})
    return s


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


def per(a, b, nd=1):
    return round(a / b, nd) if a is not None and b else None


def guest_cost(res, smp):
    """Per direction (tx: the guest sends, rx: it receives), from the
    guest's netcount before/after the run and the host's samples at the
    markers around it: guest interrupts, guest kicks, frames per kick and
    per interrupt, host CPU per GB; on vionetd its own counters too.
    GB: bytes through the guest's interface both ways (payload + ACKs)."""
    out = {"guest_irqs_per_gb": {}, "kicks_per_gb": {},
           "frames_per_notification": {}, "host_cpu_s_per_gb": {}}
    for d, (a, b) in (("tx", ("begin", "mid")), ("rx", ("mid", "end"))):
        try:
            g = {k: int(res[f"{d}1.{k}"]) - int(res[f"{d}0.{k}"])
                 for k in ("irq_in", "irq_out", "irq_cfg", "kick_rx", "kick_tx",
                           "rx_bytes", "tx_bytes", "rx_packets", "tx_packets")}
        except (KeyError, ValueError):
            out["guest_why"] = "netcount gave no figures"
            return out
        gb = (g["rx_bytes"] + g["tx_bytes"]) / 1e9
        irqs = g["irq_in"] + g["irq_out"] + g["irq_cfg"]
        kicks = g["kick_rx"] + g["kick_tx"]
        out["guest"] = out.get("guest", {})
        out["guest"][d] = g
        out["guest_irqs_per_gb"][d] = per(irqs, gb)
        out["kicks_per_gb"][d] = per(kicks, gb)
        # frames the guest sent per kick of its tx queue and per interrupt
        # of that queue; the same for what it received on its rx queue
        out["frames_per_notification"][d] = {
            "tx_per_kick": per(g["tx_packets"], g["kick_tx"], 2),
            "tx_per_irq": per(g["tx_packets"], g["irq_out"], 2),
            "rx_per_irq": per(g["rx_packets"], g["irq_in"], 2),
            "rx_per_kick": per(g["rx_packets"], g["kick_rx"], 2)}
        s0, s1 = smp[a], smp[b]
        h = {}
        if s0["qemu"] and s1["qemu"]:
            h["vcpu"] = per(s1["qemu"][0] - s0["qemu"][0], gb, 3)
            h["qemu_other"] = per((s1["qemu"][1] - s1["qemu"][0]) -
                                  (s0["qemu"][1] - s0["qemu"][0]), gb, 3)
        if s0.get("cpu") and s1.get("cpu") and s0["pids"] == s1["pids"] and \
                None not in s0["cpu"].values() and None not in s1["cpu"].values():
            h["vionetd"] = per(sum(s1["cpu"].values()) - sum(s0["cpu"].values()), gb, 3)
        if "vcpu" in h:
            h["backend"] = round(h["qemu_other"] + h.get("vionetd", 0.0), 3)
            h["total"] = round(h["vcpu"] + h["backend"], 3)
        out["host_cpu_s_per_gb"][d] = h
        if "counters" in s0 and "counters" in s1:
            c = {k: s1["counters"].get(k, 0) - s0["counters"].get(k, 0)
                 for k in s1["counters"]}
            out.setdefault("device", {})[d] = {
                "kick_wakeups_per_gb": per(c.get("tx_kicks", 0) + c.get("rx_kicks", 0), gb),
                "notifications_per_gb": per(c.get("tx_notifications", 0) +
                                            c.get("rx_notifications", 0), gb),
                "tx_frames_per_kick": per(c.get("tx_frames", 0), c.get("tx_kicks", 0), 2),
                "tx_frames_per_notification": per(c.get("tx_frames", 0),
                                                  c.get("tx_notifications", 0), 2),
                "rx_frames_per_notification": per(c.get("rx_frames", 0),
                                                  c.get("rx_notifications", 0), 2),
                "tx_frames_per_batch": per(c.get("tx_frames", 0), c.get("tx_batches", 0), 2),
                "rx_frames_per_batch": per(c.get("rx_frames", 0), c.get("rx_batches", 0), 2),
                "counters": {k: v for k, v in c.items() if v}}
    return out


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


def med_tree(trees):
    """Medians, key by key, of dicts of numbers nested alike."""
    trees = [t for t in trees if isinstance(t, dict)]
    if not trees:
        return None
    out = {}
    for k in trees[0]:
        vals = [t.get(k) for t in trees]
        if isinstance(vals[0], dict):
            out[k] = med_tree(vals)
        elif all(isinstance(v, (int, float)) or v is None for v in vals):
            out[k] = med(vals)
    return out


GUEST_FIGURES = ("guest_irqs_per_gb", "kicks_per_gb", "frames_per_notification",
                 "host_cpu_s_per_gb")


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
            out[b].update({k: None for k in GUEST_FIGURES})
            continue
        e = {"tx_gbit_s": med(r["tx_gbit_s"] for r in good),
             "rx_gbit_s": med(r["rx_gbit_s"] for r in good),
             "runs_ok": len(good)}
        for k in GUEST_FIGURES:
            e[k] = med_tree([r.get(k) for r in good])
        e["kicks_why"] = KICKS_WHY
        if b.startswith("vionetd"):
            e["device_per_gb"] = med_tree([{d: {x: y for x, y in v.items()
                                                if x != "counters"}
                                            for d, v in r.get("device", {}).items()}
                                           for r in good])
        if b.startswith("vionetd"):
            cpu = sum(sum(r["worker_cpu_s"].values()) for r in good if "worker_cpu_s" in r)
            moved = sum(r.get("bytes_moved", 0) for r in good)
            e["cpu_s_per_gb"] = round(cpu / (moved / 1e9), 3) if moved else None
            e["uso"], e["uso_why"] = None, USO_WHY
        if b == "qemu_tap":
            e["uso"] = uso_summary(good)
        out[b] = e
    v, nv, q = out["vionetd"], out["vionetd_nooffload"], out["qemu_tap"]
    nq = out["qemu_tap_nooffload"]
    out["ratio_tx_vs_qemu_tap"] = ratio(v["tx_gbit_s"], q["tx_gbit_s"])
    out["ratio_rx_vs_qemu_tap"] = ratio(v["rx_gbit_s"], q["rx_gbit_s"])
    out["ratio_tx_nooffload_vs_qemu_tap"] = ratio(nv["tx_gbit_s"], nq["tx_gbit_s"])
    out["ratio_rx_nooffload_vs_qemu_tap"] = ratio(nv["rx_gbit_s"], nq["rx_gbit_s"])
    # guest interrupts per GB, vionetd's over QEMU tap's (below 1: fewer)
    out["irqs_vs_qemu_tap"] = {
        f"{d}{suf}": ratio((a["guest_irqs_per_gb"] or {}).get(d),
                           (c["guest_irqs_per_gb"] or {}).get(d))
        for a, c, suf in ((v, q, ""), (nv, nq, "_nooffload")) for d in ("tx", "rx")}
    out["offload_gain_tx"] = ratio(v["tx_gbit_s"], nv["tx_gbit_s"])
    out["vionetd_cpu_s_per_gb"] = v.get("cpu_s_per_gb")
    out["uso_gain"] = (q.get("uso") or {}).get("gain")
    whys = {k: "needs vionetd and qemu_tap" for k in ("ratio_tx_vs_qemu_tap",
                                                     "ratio_rx_vs_qemu_tap")
            if out[k] is None}
    whys.update({k: "needs vionetd_nooffload and qemu_tap_nooffload"
                 for k in ("ratio_tx_nooffload_vs_qemu_tap",
                           "ratio_rx_nooffload_vs_qemu_tap") if out[k] is None})
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
    t0, load0 = time.monotonic(), list(os.getloadavg())
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
           "guest": guest_config(acc), "device_props": device_props(acc),
           "loadavg_start": load0}
    out.update(summarize(backends, runs, only))
    out["loadavg_end"] = list(os.getloadavg())
    out["wall_s"] = round(time.monotonic() - t0, 1)
    out["runs"] = runs
    return out


def table(res):
    g = res["guest"]
    lines = [f"accel {res['accel']}, guest {res['kernel']} ({g['smp']} vCPU, "
             f"{g['cpu']}), QEMU {res['qemu']}, "
             f"{res['rounds']} round(s) x {res['seconds']} s, medians",
             "%-18s %9s %9s %9s %9s %9s %9s  %s" % (
                 "backend", "tx Gb/s", "rx Gb/s", "tx irq/GB", "rx irq/GB",
                 "tx kick/GB", "rx kick/GB", "note")]
    for b in BACKENDS:
        e = res[b]
        f = lambda x: "-" if x is None else "%.3f" % x   # noqa: E731
        n = lambda x: "-" if x is None else "%.0f" % x   # noqa: E731
        irq, kick = e.get("guest_irqs_per_gb") or {}, e.get("kicks_per_gb") or {}
        lines.append("%-18s %9s %9s %9s %9s %9s %9s  %s" % (
            b, f(e["tx_gbit_s"]), f(e["rx_gbit_s"]), n(irq.get("tx")), n(irq.get("rx")),
            n(kick.get("tx")), n(kick.get("rx")), e.get("why", "")))
    for k in ("ratio_tx_vs_qemu_tap", "ratio_rx_vs_qemu_tap",
              "ratio_tx_nooffload_vs_qemu_tap", "ratio_rx_nooffload_vs_qemu_tap",
              "offload_gain_tx", "vionetd_cpu_s_per_gb", "uso_gain"):
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
