"""bench/backend.py: vionetd's data path at full speed, against the bare tap.

An emulated guest would hide the backend, so this benchmark plays the VMM
itself: tools/vhostbench.c (built here with gcc -O2 -pthread into
build/bench/) is a vhost-user frontend in C that keeps vionetd's rings full
(TX) or stocked (RX) as fast as vionetd serves them. In the same run, the
same frames go straight into (TX) or out of (RX) a tap of the benchmark's
own, with no backend in between: that is the limit each figure is compared
to.

    backend.py [--seconds 5] [--rounds 3] [--only KIND]... [--json]
               [--ring-tx 1024] [--ring-rx 1024]

KIND: tx_64k tx_1514 tx_64 rx_64k rx_1514 rx_64 (64k: TSO4 super-frames of
45 x 1448 bytes; all IPv4/TCP with a partial checksum), each also with a
_q2 suffix (two queue pairs) and a _rate suffix (a rate limit), and
tx_64k_log rx_64k_log rx_1514_log rx_64_log (dirty logging on).

Topology, all in one network namespace of the benchmark's own (deleted at
the end, with every tap in it):
  - vionetd runs there, one VM interface, its tap up with no address. TX:
    what it writes into the tap is addressed to a MAC that is not the
    tap's, so the kernel drops it at once (PACKET_OTHERHOST in ip_rcv), no
    segmentation, no forwarding: a cheap sink. RX: `vhostbench source`
    writes frames INTO the tap through AF_PACKET with PACKET_VNET_HDR
    (64 KiB GSO frames stay whole: vionetd sets the tap's offloads to what
    the guest negotiated), so vionetd reads them.
  - the limits use a second tap there (`vhostbench tapwrite`/`tapread`),
    with the same frames, the same sink and the same source.

The frontend is meant to cost what a real VMM's fast path and guest driver
cost, no more: it negotiates EVENT_IDX, kicks only when avail_event asks,
and sleeps until a batch is back (TX: 3/4 of the ring, as Linux's
virtio-net asks when its ring is full; RX: a quarter of the ring); its TX
chains are laid out as Linux lays out a TCP skb (headers, then 32 KiB
frags: 3 descriptors for 64 KiB), its RX buffers sized as Linux sizes its
mergeable buffers for the traffic (RX_BUF); rings are 1024 both ways
(QEMU's maximum, see RING_TX). Its CPU is in frontend.cpu_s: a few percent of a
core in every row.

Rows and their limits:
  - tx_*, rx_*: one queue pair; the limit is one process writing (reading)
    one tap, each frame from (into) one buffer. Every row also measures a
    second limit, guest_layout, the same tap work with the guest's memory
    as any backend finds it. TX: each frame written with one writev() of
    the pieces the frontend lays each chain out in (`tapwrite -G`,
    TX_PIECE); a frame in several pieces cannot be written from one buffer
    without copying it. RX: each frame read with one readv() into the next
    buffers of a pool laid out as the frontend's ring (`tapread -G`: the
    ring's size, RX_BUF bytes each, as many as a frame of the row's size
    fills, taken in turn); a backend copies into buffers spread over the
    guest's ring, which are cold by the time the ring comes round, never
    into one warm buffer.
  - tx_*: a third limit, batched_limit: the one-buffer limit with its writes
    submitted through io_uring, TX_BATCH to a submission (`tapwrite -U`),
    as vionetd's tx worker submits a batch (csrc/txuring.c): the tap work
    without a system call per frame. The limit above pays one per frame
    and vionetd does not, so ratio_vs_limit can pass 1 (small frames most);
    ratio_vs_batched_limit compares with a writer that does not pay it
    either.
  - *_q2: the interface has `queues 2` (vionetd.conf(5)): its tap is
    multiqueue, one fd and one rx and one tx worker per pair. The frontend
    negotiates MQ and drives each pair's ring from a thread of its own
    (vhostbench -Q 2). For RX the source sends 256 TCP flows (the source
    port cycles frame by frame), which the tap spreads over its two queues
    by flow hash (frontend.per_pair and counters_per_pair show the split).
    The limit is a two-queue tap with one thread per queue doing the same
    tapwrite/tapread work, fed by the same source.
  - *_log: dirty logging on, as QEMU turns it on when a live migration
    starts (vhostbench -L: LOG_SHMFD, SET_LOG_BASE with a memfd, LOG_ALL,
    the log flag on every ring, once the rings run), the log synced every
    100 ms as QEMU's migration thread does (each word taken and zeroed
    atomically, its bits counted: log_pages). log_pages_unexpected (marked
    pages the device never writes: descriptors, avail rings, TX frames) and
    log_pages_missed (pages the frontend saw written, by the used entries
    it took, that no sync found marked) should be 0. ratio_vs_nolog: the
    row's vionetd_gbit_s over the non-log row of the same size in the same
    run (null, with ratio_vs_nolog_missing, without it); cpu_ratio_vs_nolog
    the same in the workers' CPU per frame, steadier on a busy machine.
    The limit is the plain tap's: a tap has nothing to log.

  - *_rate: the interface has `rate tx|rx` (vionetd.conf(5)) at RATE, by
    frame size (2 Gbit/s for 64k, 500 Mbit/s for 1514, 50 Mbit/s for 64),
    below what the row moves without it. Only vionetd runs: limit_gbit_s is
    the configured rate and ratio_vs_limit how close the frontend's figure
    came to it (1.0: the limit held exactly; the bucket refills between
    rounds, so each round may gain one burst, 50 ms of the rate: 3 % of a
    round of 1.5 s). TX: the frontend keeps the ring full and the
    tx worker leaves chains in it while over the limit (counter
    tx_rate_held); RX: the source writes at full speed, the rx worker
    leaves the tap unread and the kernel drops the rest (tap.tx_dropped).
    The rows without a limit pay one test per frame for the feature
    (csrc/rate.h).

Figures per row: vionetd_gbit_s, vionetd_mpps (frames the frontend saw
completed / received, frame bytes without the vnet header), limit_gbit_s,
ratio_vs_limit, vionetd_cpu_s (utime+stime of vionetd's worker processes
of the row's direction, every pair's, sampled through the run from
/proc/PID/stat), vionetd_us_per_frame and limit_us_per_frame (CPU per
frame of those workers, lingering included, and of the limit's threads)
and their quotient cpu_ratio (what ratio_vs_limit would be if each side
had the cores it wants and the worker were the slowest stage);
guest_layout_gbit_s, ratio_vs_guest_layout, guest_layout_us_per_frame and
cpu_ratio_vs_guest_layout, the same against the guest-layout limit; TX rows
also batched_limit_gbit_s, ratio_vs_batched_limit,
batched_limit_us_per_frame and cpu_ratio_vs_batched_limit; and, to
read them: the daemon's counter deltas (batches, kicks, notifications, tap
full...), the tap's own statistics, the frontend's kicks and waits, and
how busy the machine was (/proc/stat) during the run and before the
benchmark started.

Rounds. Each row alternates vionetd and its limits (two for RX, three
for TX) --rounds times (default 3; --seconds is shared between the rounds of each
side), and reports the median of each side: a burst of someone else's load
on the machine then hits one round of one side instead of deciding the
ratio. Each round's figures are in rounds[]; frontend, counters, tap and
worker_cpu_s are the median vionetd round's.

Every row has ratio_vs_limit: a row whose run failed keeps its row with
ratio_vs_limit null and the error; the JSON also gives cpus (the host's,
os.cpu_count()), the load average before and after, and the machine's
busy fraction before the first row.

Reading the ratios by host size. vionetd's figure is a pipeline: the
frontend (vhostbench), vionetd's worker and the kernel's tap work run at
once, while the limit is one thread per queue doing the tap work alone.
TX: the kernel's tap work (skb build, checksum, the drop in ip_rcv) runs
in the writer's context, so vionetd's tx worker and the tapwrite thread
each want one core per queue and do the same kernel work; the worker adds
its ring work, the copy of each frame's head into its stage and the calls
that wake the frontend, and saves the system call per frame that the
limit pays (one io_uring submission per batch). RX: the source wants a core of its own in
both; the worker adds the copy into guest buffers spread over the ring
(the limit reads into one hot buffer). On a 2-core host all of that shares
two cores with whatever else runs there, so ratio_vs_limit also says how
the scheduler split them: cpu_ratio says what vionetd itself costs. On an
idle host with 4 or more cores each stage has a core of its own: the
one-pair rows should show ratio_vs_limit close to their cpu_ratio (0.9 or
more on TX, where the worker is the slowest stage; about 1 on RX, where
the single source bounds both sides). The _q2 rows on 4 cores: TX has two
workers on two cores against two tapwrite threads on two cores, about
twice the one-pair figures on both sides and the same ratio as one pair;
RX is still bound by the one source process on both sides (about the
one-pair figure, ratio near 1; RX scaling needs a source of more threads
and 6 or more cores). On 2 cores a _q2 row runs 4-5 busy threads on 2
cores: its figure is about the one-pair figure and its ratio is the
scheduler's as much as vionetd's.

TX before io_uring (up to ba69009, one write() or writev() per frame).
perf record -a over one tx_64k run (12 s a side, 2026-11-30, 2 cores), each process's samples over the frames it
moved, in ns per frame (limit / guest_layout / vionetd's tx worker):
  the kernel's copy of the frame      1939 / 1989 / 2023
  write() or writev()'s own path       135 /  223 /  203
  the rest of the kernel's tap work   2037 / 2160 / 2052
  user space                             3 /    4 /  137 (ring work)
  seccomp filter, waking the frontend    - /    - /   32 + 15
  total                               4114 / 4375 / 4462
vionetd must write its own validated copy of the header and the frame's
first bytes, so a frame longer than TX_COPY_MAX (csrc/datapath.h) is a
writev() of that copy and the guest's pieces, as guest_layout writes them;
beyond that it pays for the ring (taking the chain, the head copy,
validation, the used entry), the filter and the wakeups. Prefetching the
next chains' descriptors (virtq.c prefetch_ahead()) took the ring work from
160 to 133 ns per frame. Frames up to TX_COPY_MAX are copied whole and go
out in one write(), which took tx_1514 from 0.91 to 0.97-0.99 of the limit
and tx_64 from 0.90 to 0.95-0.98; against guest_layout they are at 1.1-1.2.

How far tx_64k moved from run to run of that code: 18 runs of the row
alone (--seconds 6 --rounds 3, 2026-11-30, 2 cores) gave ratio_vs_limit
0.81 to 0.96, mean 0.886, 13 of them under 0.9; guest_layout itself was
0.93 to 0.98 of the limit (mean 0.96), which is where a backend with no
cost of its own would sit here. vionetd took 340 ns per frame more than
guest_layout on average (7.5%): its ring work in user space (about 140
ns), the seccomp path of its one syscall per frame, the wakeups, and the
rest thinly spread over the kernel's symbols. Eight alternating pairs of
runs with and without the worker's filter loaded (a local experiment, not
an option of vionetd) gave the same mean both ways, 0.887. A system call
costs about 315 ns on this host (a writev() of 12 bytes to /dev/null),
and about 35 ns more under a seccomp filter.

TX with io_uring (d17b0a2 on): the tx worker stages a batch's frames and
writes them with one io_uring submission (csrc/txpath.c "The stage"). The
counters show 64 frames a submission in every TX row. Six runs of
tx_64k, tx_64k_log and tx_64k_q2 (--seconds 6 --rounds 3, 2026-11-30,
2 cores), ratio_vs_limit mean [range]: tx_64k 1.025 [0.99-1.05],
tx_64k_log 1.070 [1.05-1.10], tx_64k_q2 0.986 [0.94-1.06], none under
0.9; ratio_vs_batched_limit 0.940, 0.934, 0.911. CPU per tx_64k frame:
vionetd 4.08 us, the limit 4.19, guest_layout 4.35, batched_limit 3.84.
In one run of the defaults, tx_1514 was 1.28 of the limit and 0.85 of
batched_limit, tx_64 1.33 and 0.88: with the system call gone, the ring
work and the head copy are what vionetd adds to a small frame.

Where RX's gap goes: vionetd's worker copies each frame into buffers
spread over the ring, cold by the time the ring comes round, where the
limit reads into one warm buffer. perf over one rx_64k run (12 s a side,
2026-11-30): the kernel's copy was 5642 ns per frame for the rx worker and
2867 for tapread, of 9156 and 6095 in all. guest_layout pays that copy
too: in one run (--seconds 9 --rounds 3) ratio_vs_guest_layout was 0.95
(rx_64k), 0.93 (rx_1514) and 1.09 (rx_64).

Invariants: every process, tap and namespace made here is gone when main()
returns, whatever happened (finally blocks, processes killed by their own
pid); every wait is bounded.
"""
import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests import netns as N            # noqa: E402
from tests.daemon import Daemon         # noqa: E402
from tests.hostile import descendants   # noqa: E402

BASE_KINDS = ("tx_64k", "tx_1514", "tx_64", "rx_64k", "rx_1514", "rx_64")
LOG_KINDS = ("tx_64k_log", "rx_64k_log", "rx_1514_log", "rx_64_log")
Q2_KINDS = tuple(k + "_q2" for k in BASE_KINDS)
RATE_KINDS = tuple(k + "_rate" for k in BASE_KINDS)
# The order rows run in: each _log row right after its non-log row (the
# ratio between them is taken in the same run, so keep them close in time).
KINDS = tuple(x for k in BASE_KINDS for x in (k, k + "_log") if x in BASE_KINDS + LOG_KINDS) \
    + Q2_KINDS + RATE_KINDS
# The limit of a _rate row (vionetd.conf "rate tx|rx", bits per second), by
# frame size: below what the row does without one on a 2-core host.
RATE = {"64k": 2 * 10**9, "1514": 500 * 10**6, "64": 50 * 10**6}
# Ring sizes: 1024 both ways, the most QEMU allows (tx_queue_size above 256
# only with vhost-user) and what a VMM tuned for throughput sets (libvirt:
# <driver rx_queue_size='1024' tx_queue_size='1024'/>). QEMU's default, 256,
# makes the TX worker wake the frontend 4 times as often (each wakeup an IPI
# the worker pays for), and an RX ring of 4096 page buffers (this
# benchmark's earlier default, beyond QEMU's maximum; chosen against an
# rx_gather() livelock with small rings that vionetd no longer has: rings of
# 256 and 512 run rx_64k and leave the worker idle after) spreads the
# worker's copies over 16 MiB: it cost the RX worker about 25% more CPU per
# frame than 1024 (rx_64k 12.8-13.4 against 10.0-10.6 us).
RING_TX, RING_RX = 1024, 1024
# RX buffer sizes, as a Linux guest sizes its mergeable buffers from the
# average frame it receives (virtio-net get_mergeable_buf_len(): at least
# 1518 bytes plus the header, cache-aligned: 1536; a page for GSO traffic).
RX_BUF = {"64k": 4096, "1514": 1536, "64": 1536}
ROUNDS = 3              # alternations of vionetd and the limit per row (Bench.alternate)
TX_PIECE = 32768        # tx payload bytes per descriptor (vhostbench -P; Linux's 32 KiB frags)
TX_BATCH = 64           # the batched limit's writes per submission: vionetd's (DP_BATCH)
FLOWS = 256             # TCP flows of the source in _q2 rows (spread over the tap queues)
TOOL_SRC = os.path.join(ROOT, "tools", "vhostbench.c")
BUILD_DIR = os.path.join(ROOT, "build", "bench")
CLK_TCK = os.sysconf("SC_CLK_TCK")
GUEST_MAC = "52:54:00:12:34:56"          # vhostbench.c GUEST_MAC

CONF = """socket "@CTL@"
vm "bench" {
    interface "%(tap)s" {
        socket "@DIR@/bench.sock"
        lladdr %(mac)s%(queues)s%(rate)s
    }
}
"""


def is_rate(kind):
    """A row of an interface with a rate limit: "tx_64_rate"."""
    return kind.endswith("_rate")


def parse_kind(kind):
    """"rx_1514_q2" -> ("rx", "1514", 2, False); "tx_64k_log" -> ("tx", "64k", 1, True)."""
    parts = kind.split("_")
    return parts[0], parts[1], 2 if "q2" in parts[2:] else 1, "log" in parts[2:]


def build_tool(build_dir=BUILD_DIR):
    """Compile tools/vhostbench.c unless the binary is newer. Returns its path."""
    os.makedirs(build_dir, exist_ok=True)
    out = os.path.join(build_dir, "vhostbench")
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(TOOL_SRC):
        return out
    cmd = ["gcc", "-O2", "-Wall", "-Wextra", "-pthread", "-o", out + ".tmp", TOOL_SRC, "-luring"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError("building vhostbench failed:\n" + p.stderr)
    os.replace(out + ".tmp", out)
    return out


# ---- what the machine and the daemon did ----------------------------------

def cpu_times():
    """(busy, total) jiffies of all CPUs together, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)


def busy_between(a, b):
    """Fraction of the machine (all CPUs) busy between two cpu_times()."""
    total = b[1] - a[1]
    return round((b[0] - a[0]) / total, 3) if total > 0 else 0.0


def proc_cpu(pid):
    """utime+stime of pid in seconds, or None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK   # fields 14, 15 of stat(5)


def workers(daemon_pid):
    """{"rx"|"tx"|"rx.N"|"tx.N": pid} of the daemon's worker processes (its
    zygote's children, named "vionetd: rx VM/0" and "vionetd: tx VM/0" by
    setproctitle, "vionetd: rx VM/0.N" for queue pair N > 0)."""
    out = {}
    for pid in descendants(daemon_pid):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        for role in ("rx", "tx"):
            if title.startswith("vionetd: %s " % role):
                name = title.split()[2] if len(title.split()) > 2 else ""
                qp = name.rsplit("/", 1)[-1].partition(".")[2]
                out[role + ("." + qp if qp else "")] = pid
    return out


def wait_workers(daemon_pid, timeout=10.0, n=2):
    """workers(), once pair 0's two (or n in all) have named themselves
    (bounded; the workers of other pairs start when the VMM first uses
    their rings)."""
    deadline = time.monotonic() + timeout
    while True:
        w = workers(daemon_pid)
        if ({"rx", "tx"} <= set(w) and len(w) >= n) or time.monotonic() > deadline:
            return w
        time.sleep(0.05)


class WorkerCpu:
    """CPU time of the daemon's workers over a run, including those born
    during it (pair 1's) and those gone at its end: a thread samples them
    every 0.2 s (and looks for new ones every 0.6 s, and at the end); the
    figure of each is its last sample minus its first (0 for one born
    during the run)."""

    def __init__(self, daemon_pid):
        self.daemon_pid = daemon_pid
        self.pids = wait_workers(daemon_pid)
        self.first = {k: proc_cpu(pid) or 0.0 for k, pid in self.pids.items()}
        self.last = dict(self.first)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _sample(self):
        for k, pid in list(self.pids.items()):
            c = proc_cpu(pid)
            if c is not None:
                self.last[k] = c

    def _discover(self):
        for k, pid in workers(self.daemon_pid).items():
            if self.pids.get(k) != pid:
                self.pids[k] = pid
                self.first.setdefault(k, 0.0)

    def _run(self):
        n = 0
        while not self.done.wait(0.2):
            n += 1
            if n % 3 == 0:
                self._discover()
            self._sample()

    def stop(self):
        self.done.set()
        self.thread.join(5)
        self._discover()        # one born since the last look (a short run)
        self._sample()
        return {k: round(self.last[k] - self.first.get(k, 0.0), 3) for k in self.last}


def us_per_frame(cpu, counters, direction):
    """CPU microseconds the direction's workers spent per frame they moved
    (their CPU over the whole measurement, lingering and waiting for the
    frontend included; frames from the daemon's own counters)."""
    frames = counters.get(direction + "_frames", 0)
    return direction_cpu(cpu, direction) * 1e6 / frames if frames else float("inf")


def direction_cpu(cpu, direction):
    """Sum of one direction's workers ("tx", "tx.1", ...) in WorkerCpu.stop()."""
    return round(sum(v for k, v in cpu.items() if k.split(".")[0] == direction), 3)


def tap_stats(ns, tap):
    p = N.ns_run(ns, "ip", "-s", "-j", "link", "show", "dev", tap)
    s = json.loads(p.stdout)[0]["stats64"]
    return {"rx_packets": s["rx"]["packets"], "rx_bytes": s["rx"]["bytes"],
            "rx_dropped": s["rx"]["dropped"], "rx_errors": s["rx"]["errors"],
            "tx_packets": s["tx"]["packets"], "tx_bytes": s["tx"]["bytes"],
            "tx_dropped": s["tx"]["dropped"]}


def delta(before, after):
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


# ---- processes -------------------------------------------------------------

class Tool:
    """One vhostbench process; output is one JSON line, maybe after "ready"."""

    def __init__(self, exe, args, ns=None):
        cmd = ([] if ns is None else ["ip", "netns", "exec", ns]) + [exe] + args
        self.cmd = " ".join(cmd)
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)

    def wait_ready(self, timeout=15.0):
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        line = self.p.stdout.readline() if r else ""
        if line.strip() != "ready":
            err = self.kill()
            raise RuntimeError("%s: not ready: %r %s" % (self.cmd, line, err.strip()))

    def result(self, timeout):
        try:
            out, err = self.p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError("%s: no result within %.0f s" % (self.cmd, timeout))
        if self.p.returncode != 0:
            raise RuntimeError("%s: exit %d: %s" % (self.cmd, self.p.returncode, err.strip()))
        return json.loads(out.strip().splitlines()[-1])

    def kill(self):
        """Kill it if it still runs; returns what it wrote to stderr."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)     # this process only, by its pid
        try:
            return self.p.communicate(timeout=5)[1] or ""
        except (subprocess.TimeoutExpired, ValueError):   # ValueError: already collected
            return ""


@contextlib.contextmanager
def tools():
    """Collects Tool objects; kills whichever are still running at the end."""
    made = []

    def start(*a, **kw):
        t = Tool(*a, **kw)
        made.append(t)
        return t
    try:
        yield start
    finally:
        for t in made:
            t.kill()


# ---- one measurement --------------------------------------------------------

def rates(res):
    s = res["seconds"] or 1e-9
    return res["bytes"] * 8 / s / 1e9, res["frames"] / s / 1e6


class Bench:
    def __init__(self, exe, ns, daemon, tap, seconds, ring_tx=RING_TX, ring_rx=RING_RX,
                 pairs=1, log=False, rounds=ROUNDS):
        self.exe, self.ns, self.d, self.tap, self.seconds = exe, ns, daemon, tap, seconds
        self.rounds = max(1, rounds)
        self.ring_tx, self.ring_rx = ring_tx, ring_rx
        self.pairs, self.log = pairs, log
        self.sock = os.path.join(daemon.dir, "bench.sock")

    def counters(self):
        """(summed counters, [counters of each queue pair])"""
        st = self.d.stats()["bench/0"]
        return st["counters"], st.get("queue_pairs", [])

    def frontend_args(self):
        return ["-Q", str(self.pairs)] + (["-L"] if self.log else [])

    def source_args(self):
        return ["-F", str(FLOWS)] if self.pairs > 1 else []

    def measure(self, kind, run):
        """run() -> tool result; everything around it sampled before/after."""
        cpu = WorkerCpu(self.d.proc.pid)
        t0, (k0, q0), m0 = tap_stats(self.ns, self.tap), self.counters(), cpu_times()
        try:
            res = run()
        finally:
            m1 = cpu_times()
            cpu_s = cpu.stop()
        t1, (k1, q1) = tap_stats(self.ns, self.tap), self.counters()
        info = {"worker_cpu_s": cpu_s, "machine_busy": busy_between(m0, m1),
                "counters": delta(k0, k1), "tap": delta(t0, t1)}
        if self.pairs > 1:
            info["counters_per_pair"] = [delta(q0[i] if i < len(q0) else {}, q)
                                         for i, q in enumerate(q1)]
        return res, info

    def limit_tap(self):
        return N.unique("vbl")

    def tx_vionetd(self, size, s):
        """One TX round through vionetd: the frontend's result."""
        return Tool(self.exe, ["tx", "-s", self.sock, "-k", size, "-t", str(s),
                               "-q", str(self.ring_tx), "-P", str(TX_PIECE)]
                    + self.frontend_args()).result(s + 30)

    def rx_vionetd(self, size, s):
        """One RX round through vionetd: the frontend's result, the source's in it."""
        with tools() as start:
            fe = start(self.exe, ["rx", "-s", self.sock, "-t", str(s),
                                  "-q", str(self.ring_rx), "-B", str(RX_BUF[size])]
                       + self.frontend_args())
            fe.wait_ready()
            # the workers of pair 1 start when the frontend sets up its rings
            wait_workers(self.d.proc.pid, 5.0, 2 * self.pairs)
            src = start(self.exe, ["source", "-i", self.tap, "-k", size,
                                   "-t", str(s + 0.5)] + self.source_args(), ns=self.ns)
            res = fe.result(s + 30)
            res["source"] = src.result(15)
            return res

    def rated(self, direction, size, bits):
        """A _rate row: rounds of vionetd alone, its figure against the
        configured rate (limit_gbit_s), the median round's counters."""
        s = self.seconds / self.rounds
        run = self.tx_vionetd if direction == "tx" else self.rx_vionetd
        rounds = [self.measure(direction, lambda: run(size, s)) for _ in range(self.rounds)]
        res, info = sorted(rounds, key=lambda r: rates(r[0])[0])[len(rounds) // 2]
        g, mpps = rates(res)
        return {"vionetd_gbit_s": round(g, 3), "vionetd_mpps": round(mpps, 4),
                "limit_gbit_s": bits / 1e9, "ratio_vs_limit": round(g * 1e9 / bits, 3),
                "rate_bits_per_s": bits,
                "vionetd_cpu_s": direction_cpu(info["worker_cpu_s"], direction),
                "vionetd_us_per_frame": finite(us_per_frame(info["worker_cpu_s"],
                                                            info["counters"], direction)),
                "rounds": [{"vionetd_gbit_s": round(rates(r)[0], 3),
                            "machine_busy": i["machine_busy"]} for r, i in rounds],
                "frontend": res, **info}

    def tx(self, size):
        s = self.seconds / self.rounds

        def run_vionetd():
            return self.tx_vionetd(size, s)

        def run_limit(layout=()):
            return Tool(self.exe, ["tapwrite", "-i", self.limit_tap(), "-k", size,
                                   "-t", str(s), "-Q", str(self.pairs), *layout],
                        ns=self.ns).result(s + 30)
        return self.alternate("tx", run_vionetd, run_limit,
                              lambda: run_limit(["-G", "-P", str(TX_PIECE)]),
                              lambda: run_limit(["-U", str(TX_BATCH)]))

    def rx(self, size):
        s = self.seconds / self.rounds

        def run_vionetd():
            return self.rx_vionetd(size, s)

        def run_limit(layout=()):
            with tools() as start:
                name = self.limit_tap()
                rd = start(self.exe, ["tapread", "-i", name, "-t", str(s),
                                      "-Q", str(self.pairs), *layout], ns=self.ns)
                rd.wait_ready()
                src = start(self.exe, ["source", "-i", name, "-k", size, "-t", str(s + 0.5)]
                            + self.source_args(), ns=self.ns)
                lim = rd.result(s + 30)
                lim["source"] = src.result(15)
                return lim
        return self.alternate("rx", run_vionetd, run_limit,
                              lambda: run_limit(["-G", "-k", size, "-q", str(self.ring_rx),
                                                 "-B", str(RX_BUF[size])]))

    def alternate(self, direction, run_vionetd, run_limit, run_layout, run_batched=None):
        """self.rounds rounds of (vionetd, then the limit, then the
        guest-layout limit, then for TX the batched limit), seconds/rounds
        each: the figures are the medians over the rounds, so that a burst
        of someone else's load on the machine hits one round of one side,
        not the whole figure. The row's frontend/counters/tap/worker CPU are
        those of the median vionetd round."""
        rounds, batched = [], []
        for _ in range(self.rounds):
            res, info = self.measure(direction, run_vionetd)
            m0 = cpu_times()
            lim = run_limit()
            lim["machine_busy"] = busy_between(m0, cpu_times())
            rounds.append((res, info, lim, run_layout()))
            if run_batched:
                batched.append(run_batched())
        mid = len(rounds) // 2
        us = sorted(us_per_frame(i["worker_cpu_s"], i["counters"], direction)
                    for _, i, _, _ in rounds)[mid]
        by_fe = sorted(rounds, key=lambda r: rates(r[0])[0])
        res, info, _, _ = by_fe[mid]
        lim = median_tool(x for _, _, x, _ in rounds)
        lay = median_tool(y for _, _, _, y in rounds)
        g, mpps = rates(res)
        lg, lmpps = rates(lim)
        ly = rates(lay)[0]
        per = [{"vionetd_gbit_s": round(rates(r)[0], 3), "limit_gbit_s": round(rates(x)[0], 3),
                "guest_layout_gbit_s": round(rates(y)[0], 3),
                "ratio": round(rates(r)[0] / rates(x)[0], 3) if rates(x)[0] > 0 else None,
                "machine_busy": i["machine_busy"], "limit_machine_busy": x["machine_busy"]}
               for r, i, x, y in rounds]
        return {"vionetd_gbit_s": round(g, 3), "vionetd_mpps": round(mpps, 4),
               "limit_gbit_s": round(lg, 3), "limit_mpps": round(lmpps, 4),
               "ratio_vs_limit": round(g / lg, 3) if lg > 0 else None,
               "vionetd_cpu_s": direction_cpu(info["worker_cpu_s"], direction),
               "vionetd_us_per_frame": finite(us),
               "limit_us_per_frame": finite(lim["us_per_frame"]),
               "cpu_ratio": per_frame_ratio(lim, us),
               "guest_layout_gbit_s": round(ly, 3),
               "ratio_vs_guest_layout": round(g / ly, 3) if ly > 0 else None,
               "guest_layout_us_per_frame": finite(lay["us_per_frame"]),
               "cpu_ratio_vs_guest_layout": per_frame_ratio(lay, us),
               "rounds": per, "limit_machine_busy": lim["machine_busy"],
               "frontend": res, "limit": lim, "guest_layout": lay,
               **(batched_figures(median_tool(batched), g, us) if batched else {}), **info}


def batched_figures(bat, g, us):
    """A TX row against the limit that writes in io_uring batches."""
    b = rates(bat)[0]
    return {"batched_limit_gbit_s": round(b, 3),
            "ratio_vs_batched_limit": round(g / b, 3) if b > 0 else None,
            "batched_limit_us_per_frame": finite(bat["us_per_frame"]),
            "cpu_ratio_vs_batched_limit": per_frame_ratio(bat, us),
            "batched_limit": bat}


def finite(x):
    """x rounded for the JSON, or None for no figure (no frames: infinite)."""
    return None if x is None or x == float("inf") else round(x, 3)


def per_frame_ratio(lim, us):
    """A limit's CPU per frame over vionetd's workers' (None without frames)."""
    if lim["us_per_frame"] is None or not 0 < us < float("inf"):
        return None
    return round(lim["us_per_frame"] / us, 3)


def median_tool(results):
    """The median of a limit's rounds by throughput, with the median CPU per
    frame over the rounds in us_per_frame (None if that round had no frames)."""
    rs = list(results)
    mid = len(rs) // 2
    us = sorted(x["cpu_s"] * 1e6 / x["frames"] if x["frames"] else float("inf") for x in rs)
    lim = dict(sorted(rs, key=lambda x: rates(x)[0])[mid])
    lim["us_per_frame"] = finite(us[mid])
    return lim


# ---- the whole run -----------------------------------------------------------

def run(kinds, seconds, ring_tx=RING_TX, ring_rx=RING_RX, rounds=ROUNDS):
    exe = build_tool()
    m0 = cpu_times()
    time.sleep(0.5)
    out = {"seconds": seconds, "cpus": os.cpu_count(), "ring_tx": ring_tx, "ring_rx": ring_rx,
           "rounds": rounds,
           "background_busy": busy_between(m0, cpu_times()),
           "loadavg_start": os.getloadavg()[0]}
    with N.netns("vb") as ns, tempfile.TemporaryDirectory(prefix="vionetd-bench-") as tmp:
        N.disable_ipv6(ns)
        os.chmod(tmp, 0o755)
        for k in kinds:
            try:
                out[k] = run_kind(exe, ns, tmp, k, seconds, ring_tx, ring_rx, rounds)
            except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as e:
                out[k] = {"ratio_vs_limit": None, "error": str(e)[:2000]}
    for k in kinds:
        if parse_kind(k)[3]:
            add_nolog(out, k)
    out["loadavg_end"] = os.getloadavg()[0]
    return out


def add_nolog(out, kind):
    """A _log row's ratio_vs_nolog (its vionetd_gbit_s over the non-log row's
    of the same size, in this run; null, with a reason, without both) and its
    log_pages (pages the frontend found marked in the dirty log)."""
    r, base = out[kind], out.get(kind[: -len("_log")])
    r["log_pages"] = r.get("frontend", {}).get("log_pages")
    g, g0 = r.get("vionetd_gbit_s"), (base or {}).get("vionetd_gbit_s")
    r["ratio_vs_nolog"] = round(g / g0, 3) if g is not None and g0 else None
    # the same in CPU per frame of the workers (what logging costs them,
    # less sensitive to other load on the machine than the throughput)
    us, us0 = r.get("vionetd_us_per_frame"), (base or {}).get("vionetd_us_per_frame")
    r["cpu_ratio_vs_nolog"] = round(us0 / us, 3) if us and us0 else None
    if r["ratio_vs_nolog"] is None:
        r["ratio_vs_nolog_missing"] = ("this row failed" if g is None else
                                       "no %s row in this run" % kind[: -len("_log")]
                                       if base is None else "the non-log row failed")


def run_kind(exe, ns, tmp, kind, seconds, ring_tx, ring_rx, rounds=ROUNDS):
    """One figure, with a daemon of its own, so that a kind does not
    inherit what an earlier VMM session left in the workers (an rx worker
    livelocked in rx_gather() outlives its VMM: see --ring-rx)."""
    d_dir = os.path.join(tmp, kind)
    os.mkdir(d_dir)
    os.chmod(d_dir, 0o755)
    tap = N.unique("vbt")
    direction, size, pairs, log = parse_kind(kind)
    queues = "\n        queues %d" % pairs if pairs > 1 else ""
    bits = RATE[size] if is_rate(kind) else 0
    rate = "\n        rate %s %d" % (direction, bits) if bits else ""
    d = Daemon(CONF % dict(tap=tap, mac=GUEST_MAC, queues=queues, rate=rate), ns, d_dir)
    try:
        d.start()
        d.wait_socket(os.path.join(d_dir, "bench.sock"))
        b = Bench(exe, ns, d, tap, seconds, ring_tx, ring_rx, pairs, log, rounds)
        if bits:
            r = b.rated(direction, size, bits)
        else:
            r = b.tx(size) if direction == "tx" else b.rx(size)
        r["daemon_alive"] = d.proc.poll() is None
        return r
    finally:
        d.stop()


def table(out, f):
    fmt = "%-12s %11s %9s %11s %7s %7s %7s %8s %6s %6s"
    print(fmt % ("kind", "vionetd", "Mpps", "limit", "ratio", "layout", "batched", "cpu_s",
                 "busy", "nolog"), file=f)
    for k in KINDS:
        if k not in out:
            continue
        r = out[k]
        if "error" in r:
            print("%-12s failed: %s" % (k, r["error"].splitlines()[0]), file=f)
            continue
        nolog, layout = r.get("ratio_vs_nolog"), r.get("ratio_vs_guest_layout")
        batched = r.get("ratio_vs_batched_limit")
        print(fmt % (k, "%.2f Gb/s" % r["vionetd_gbit_s"], "%.3f" % r["vionetd_mpps"],
                     "%.2f Gb/s" % r["limit_gbit_s"],
                     "-" if r["ratio_vs_limit"] is None else "%.2f" % r["ratio_vs_limit"],
                     "-" if layout is None else "%.2f" % layout,
                     "-" if batched is None else "%.2f" % batched,
                     "%.2f" % r["vionetd_cpu_s"], "%.0f%%" % (100 * r["machine_busy"]),
                     "-" if nolog is None else "%.2f" % nolog),
              file=f)
    print("%g s per figure, %d CPUs, machine busy before start %.0f%%, load %.2f -> %.2f"
          % (out["seconds"], out["cpus"], 100 * out["background_busy"],
             out["loadavg_start"], out["loadavg_end"]), file=f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--only", action="append", choices=KINDS, metavar="KIND",
                   help="one of %s (repeatable)" % ", ".join(KINDS))
    p.add_argument("--json", action="store_true")
    # Ring sizes: see RING_TX, RING_RX.
    p.add_argument("--ring-tx", type=int, default=RING_TX)
    p.add_argument("--ring-rx", type=int, default=RING_RX)
    p.add_argument("--rounds", type=int, default=ROUNDS,
                   help="alternations of vionetd and the limit per row, "
                   "--seconds shared between them (default %d)" % ROUNDS)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("backend.py: needs root (network namespaces, taps)", file=sys.stderr)
        return 1
    kinds = [k for k in KINDS if not args.only or k in args.only]
    out = run(kinds, args.seconds, args.ring_tx, args.ring_rx, args.rounds)
    if args.json:
        print(json.dumps(out, indent=1, sort_keys=True))
    else:
        table(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
