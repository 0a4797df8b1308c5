"""Run by vionetctl: `vionetctl top`, a live view of the VM interfaces, one line each.

Each refresh (-d, 1 s by default) asks the daemon for counters (one stats
request, as `vionetctl stats` makes) and shows, per interface, what moved
since the previous refresh: its state, receive and transmit Mbit/s and
frames/s (rx: to the guest, tx: from it), drops/s (frames refused or lost
by vionetd, counters.is_drop, and by the kernel at the tap) and the CPU of
its processes (session and workers, percent of one CPU).

On a terminal the view is drawn with curses: q quits, the keys of SORT_KEYS
sort (pressed again: the other way round). Otherwise, or with -b (batch, as
top -b), each refresh prints the table as plain lines after a blank one;
-n stops after that many refreshes.
"""
import sys
import time

from vionetd import counters

COLUMNS = ("INTERFACE", "STATE", "RX_Mbps", "RX_pps", "TX_Mbps", "TX_pps", "DROPS/s", "CPU%")
# -o names and keys of the interactive view: the column each sorts by
SORTS = {"vm": 0, "state": 1, "rx": 2, "rxpps": 3, "tx": 4, "txpps": 5, "drops": 6, "cpu": 7}
SORT_KEYS = {"v": "vm", "s": "state", "r": "rx", "R": "rxpps", "t": "tx", "T": "txpps",
             "d": "drops", "c": "cpu"}
MIN_DELAY = 0.1       # seconds between refreshes, at least
HELP_LINE = "q quit  sort: v vm  s state  r/R rx  t/T tx  d drops  c cpu (again: reverse)"


def totals(i):
    """What top takes from one InterfaceStatus: {name: number}, cpu by pid."""
    c = {x.name: x.value for x in i.counters}
    return {"rx_bytes": c.get("rx_bytes", 0), "rx_frames": c.get("rx_frames", 0),
            "tx_bytes": c.get("tx_bytes", 0), "tx_frames": c.get("tx_frames", 0),
            "drops": sum(v for k, v in c.items() if counters.is_drop(k)) + i.tap_dropped,
            "cpu": {p.pid: p.cpu_seconds for p in i.processes}}


def rows(prev, cur, dt):
    """One row per interface of cur (a CtlReply): [name, state, then the
    rates since prev (None for the first refresh)]."""
    before = {i.name: totals(i) for i in prev.interfaces} if prev else {}
    out = []
    for i in cur.interfaces:
        now, was = totals(i), before.get(i.name)
        if was is None or dt <= 0:
            out.append([i.name, i.state] + [None] * 6)
            continue
        per_s = {k: max(0, now[k] - was[k]) / dt for k in now if k != "cpu"}
        cpu = sum(max(0.0, s - was["cpu"][pid]) for pid, s in now["cpu"].items()
                  if pid in was["cpu"])
        out.append([i.name, i.state, per_s["rx_bytes"] * 8e-6, per_s["rx_frames"],
                    per_s["tx_bytes"] * 8e-6, per_s["tx_frames"], per_s["drops"],
                    100 * cpu / dt])
    return out


def ordered(table, sort, reverse):
    """Rows sorted by a SORTS column: numbers largest first, names A to Z."""
    col = SORTS[sort]
    if col < 2:
        return sorted(table, key=lambda r: r[col], reverse=reverse)
    return sorted(table, key=lambda r: (-(r[col] or 0.0), r[0]), reverse=reverse)


def lines(table):
    """The header and the rows, in aligned columns."""
    cells = [list(COLUMNS)] + [[r[0], r[1]] + [cell(v, k) for k, v in enumerate(r[2:])]
                               for r in table]
    widths = [max(len(row[c]) for row in cells) for c in range(len(COLUMNS))]
    return ["  ".join(x.rjust(w) if c >= 2 else x.ljust(w)
                      for c, (x, w) in enumerate(zip(row, widths))).rstrip()
            for row in cells]


def cell(v, k):
    if v is None:
        return "-"
    return "%.1f" % v if k in (0, 2, 5) else "%d" % round(v)


class Sampler:
    """Two consecutive stats replies and the time between them."""

    def __init__(self, fetch):
        self.fetch = fetch
        self.prev = self.cur = None
        self.at = self.dt = 0.0

    def next(self):
        reply, now = self.fetch(), time.monotonic()
        if reply.error:
            raise RuntimeError(reply.error)
        self.prev, self.cur = self.cur, reply
        self.dt, self.at = now - self.at, now
        return rows(self.prev, self.cur, self.dt)


def batch(args, sampler, out):
    """Plain tables, one per refresh after the first (which has no rates)."""
    sampler.next()
    n = 0
    while not args.n or n < args.n:
        time.sleep(args.d)
        table = ordered(sampler.next(), args.o, False)
        print("\n".join([""] + lines(table)), file=out, flush=True)
        n += 1
    return 0


def main(args, fetch):
    """vionetctl top; fetch() -> a stats CtlReply. Exit status as vionetctl's."""
    if args.o not in SORTS or args.d < MIN_DELAY:
        print("vionetctl: top: -o is one of %s, -d at least %g" % (", ".join(SORTS), MIN_DELAY),
              file=sys.stderr)
        return 2
    sampler = Sampler(fetch)
    try:
        if args.b or not sys.stdout.isatty():
            return batch(args, sampler, sys.stdout)
        from vionetd import top_screen
        return top_screen.run(args, sampler)
    except KeyboardInterrupt:
        return 0
    except (OSError, RuntimeError) as e:
        print("vionetctl: %s: %s" % (args.s, getattr(e, "strerror", None) or e),
              file=sys.stderr)
        return 1
