"""bench/idle.py: what an idle daemon costs the host, in wakeups.

    idle.py [--vms N] [--seconds S] [--json]

The real daemon (tests/daemon.py, in a network namespace of the
benchmark's own) serves N VMs (16 by default) with one interface each. A
test VMM (tests/testvm.py) connects to every one and negotiates as QEMU
does, so every interface has a session and two running workers; then
nothing happens: no frame, no request.

Over S seconds (10 by default) it counts the context switches of the
parent and all its descendants (voluntary_ctxt_switches and
nonvoluntary_ctxt_switches of /proc/PID/status, before and after). A
process that sleeps in epoll_wait until something happens does not switch;
one that wakes on a timer to look at deadlines does. It prints:

  wakeups_per_s                  all processes together
  wakeups_per_s_per_interface    that, divided by N
  by_role                        the same per process title (parent, vhost,
                                 rx, tx), per second and per process

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

from tests import daemon as D          # noqa: E402
from tests import hostile as H         # noqa: E402
from tests import netns                # noqa: E402
from tests.testvm import TestVM        # noqa: E402


def conf(n):
    out = 'socket "@CTL@"\n'
    for i in range(n):
        out += 'vm "idle%d" {\n    interface { socket "@DIR@/idle%d.sock" }\n}\n' % (i, i)
    return out


def switches(pids):
    """{pid: (title, context switches so far)} of the pids still alive."""
    out = {}
    for pid in pids:
        try:
            st = H.proc_status(pid)
            title = H.cmdline(pid)
        except OSError:
            continue
        out[pid] = (title, int(st["voluntary_ctxt_switches"][0]) +
                    int(st["nonvoluntary_ctxt_switches"][0]))
    return out


def role(title):
    """The process's kind from its title ("vionetd: vhost idle3/0" -> vhost)."""
    words = title.replace("vionetd:", "").split()
    return words[0] if words else "?"


def measure(d, n, seconds):
    pids = [d.proc.pid] + H.descendants(d.proc.pid)
    before = switches(pids)
    time.sleep(seconds)
    after = switches(pids)
    total, by_role = 0, {}
    for pid, (title, count) in after.items():
        if pid not in before:
            continue
        delta = count - before[pid][1]
        total += delta
        r = by_role.setdefault(role(title), {"processes": 0, "switches": 0})
        r["processes"] += 1
        r["switches"] += delta
    for r in by_role.values():
        r["per_s"] = round(r["switches"] / seconds, 2)
        r["per_s_per_process"] = round(r["switches"] / seconds / r["processes"], 3)
    return {"vms": n, "seconds": seconds, "processes": len(after),
            "wakeups_per_s": round(total / seconds, 2),
            "wakeups_per_s_per_interface": round(total / seconds / n, 3),
            "by_role": by_role}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with netns.netns("idle") as ns, D.daemon(conf(args.vms), ns) as d:
        vms = []
        try:
            for i in range(args.vms):
                path = os.path.join(d.dir, "idle%d.sock" % i)
                d.wait_socket(path)
                vms.append(TestVM(path))
            time.sleep(2.0)             # workers forked, rings started, logs written
            result = measure(d, args.vms, args.seconds)
        finally:
            for vm in vms:
                vm.close()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("%d idle VMs: %.2f wakeups/s in all, %.3f per VM interface" % (
            result["vms"], result["wakeups_per_s"], result["wakeups_per_s_per_interface"]))
        for name, r in sorted(result["by_role"].items()):
            print("  %-8s %3d processes  %8.2f /s  %.3f /s each" % (
                name, r["processes"], r["per_s"], r["per_s_per_process"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
