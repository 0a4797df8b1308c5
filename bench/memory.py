"""bench/memory.py: what each VM's processes cost in memory, and how long they take to start.

    memory.py [--vms N] [--json] [--namespaces both|on|off]

The real daemon (tests/daemon.py, in a network namespace of the
benchmark's own) serves N VMs (64 by default) with one interface each; a
test VMM (tests/testvm.py) connects to every one, so every interface has a
session and two running workers (idle.py's setup). It prints:

  sessions_s     from the daemon's control socket (made before any VM is
                 started) until the N sessions exist (taps, sockets and
                 forks: the parent starts all VMs in one turn of its loop)
  workers_s      from the first VMM's connection (once every session is
                 there) until the 2N workers exist
  pss_kb         per process title (parent, zygote, vhost, rx, tx): the
                 processes, their proportional set size (the Pss of
                 /proc/PID/smaps summed, smaps_rollup's figure, as smem counts) in all
                 and per process, and the same without the guest's memory
                 (the VMM's memfd, which the workers and the VMM share)

With --namespaces both (the default) it runs twice, once with sessions and
workers in the network and IPC namespaces the zygote makes for them all
(zygote.py) and once
without (VIONETD_TEST_NO_NAMESPACES=1), and prints both.

This is a benchmark: it prints figures and asserts nothing. Every process,
tap and namespace made here is gone when it returns.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.idle import conf, role   # noqa: E402
from tests import daemon as D          # noqa: E402
from tests import hostile as H         # noqa: E402
from tests import netns                # noqa: E402
from tests.testvm import TestVM        # noqa: E402

START_TIMEOUT = 300.0


def pss_kb(pid):
    """(Pss of pid in kB, Pss of its memfd mappings in kB), or None if gone."""
    total = memfd = 0
    inside_memfd = False
    try:
        with open("/proc/%d/smaps" % pid) as f:
            for line in f:
                if not line[0].isupper():            # a mapping's header line
                    inside_memfd = "/memfd:" in line
                elif line.startswith("Pss:"):
                    kb = int(line.split()[1])
                    total += kb
                    memfd += kb if inside_memfd else 0
    except OSError:
        return None
    return total, memfd


def processes(d):
    """{pid: title} of the daemon and its descendants."""
    pids = [d.proc.pid] + H.descendants(d.proc.pid)
    return {pid: H.cmdline(pid) for pid in pids}


def count(d, roles):
    return sum(role(t) in roles for t in processes(d).values())


def wait_for(d, roles, n, t0):
    """Seconds from t0 until n processes of roles exist (START_TIMEOUT at most)."""
    while time.monotonic() < t0 + START_TIMEOUT and count(d, roles) < n:
        time.sleep(0.02)
    return time.monotonic() - t0


def start(d, n):
    """Wait for the N sessions, then connect a VMM to each (not before: the
    parent starting the VMs answers no session meanwhile) and wait for the
    workers. Returns the VMMs, the seconds until every session existed and
    the seconds from the first VMM until every worker existed."""
    sessions = wait_for(d, ("vhost",), n, time.monotonic())
    for i in range(n):
        d.wait_socket(os.path.join(d.dir, "idle%d.sock" % i))
    t0 = time.monotonic()
    vms = [TestVM(os.path.join(d.dir, "idle%d.sock" % i)) for i in range(n)]
    return vms, sessions, wait_for(d, ("rx", "tx"), 2 * n, t0)


def measure(d):
    by_role = {}
    for pid, title in processes(d).items():
        got = pss_kb(pid)
        if got is None:
            continue
        r = by_role.setdefault(role(title), {"processes": 0, "pss_kb": 0, "guest_kb": 0})
        r["processes"] += 1
        r["pss_kb"] += got[0]
        r["guest_kb"] += got[1]
    for r in by_role.values():
        r["pss_kb_each"] = round(r["pss_kb"] / r["processes"])
        r["pss_kb_each_without_guest"] = round((r["pss_kb"] - r["guest_kb"]) / r["processes"])
    return by_role


def run(n, namespaces):
    env = {} if namespaces else {"VIONETD_TEST_NO_NAMESPACES": "1"}
    with netns.netns("mem") as ns:
        with D.daemon(conf(n), ns, env=env) as d:
            vms = []
            try:
                vms, sessions, workers = start(d, n)
                time.sleep(2.0)            # rings started, logs written
                result = {"vms": n, "namespaces": namespaces,
                          "sessions_s": round(sessions, 2), "workers_s": round(workers, 2),
                          "pss_kb": measure(d)}
            finally:
                for vm in vms:
                    vm.close()
    return result


def show(result):
    print("%d VMs, namespaces %s: sessions in %.2f s, workers in %.2f s" % (
        result["vms"], "on" if result["namespaces"] else "off", result["sessions_s"],
        result["workers_s"]))
    for name, r in sorted(result["pss_kb"].items()):
        print("  %-7s %4d processes  PSS %8d kB in all, %6d kB each, %6d kB each without "
              "the guest's memory" % (name, r["processes"], r["pss_kb"], r["pss_kb_each"],
                                      r["pss_kb_each_without_guest"]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=64)
    ap.add_argument("--namespaces", choices=("both", "on", "off"), default="both")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    modes = {"both": (True, False), "on": (True,), "off": (False,)}[args.namespaces]
    results = [run(args.vms, ns) for ns in modes]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            show(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
