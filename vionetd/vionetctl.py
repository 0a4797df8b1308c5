"""Run by vionetctl(8), the operator's command: ask a running vionetd what it does.

    vionetctl [-s socket] status | show VM | stats [--json | --prometheus]
                          | top [-b] [-n N] [-d SECONDS] [-o COLUMN]
                          | reload | log brief|verbose

One request, one reply (ctl.py has the server side); top asks for the
counters once a second (top.py). Exit status: 0 done,
1 the daemon could not be reached or refused or failed the request (the
reason on stderr), 2 usage (argparse).
"""
import argparse
import json
import socket
import sys

from vionetd import features
from vionetd import vionetd_pb2 as pb

DEFAULT_SOCKET = "/run/vionetd.sock"
MAX_REPLY = 16 << 20


def request(path, req, timeout=10.0):
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.send(req.SerializeToString())
        data = s.recv(MAX_REPLY)
    # An empty datagram is a valid reply (status of a daemon without
    # interfaces serializes to nothing) and looks like a closed connection;
    # every other command's reply carries a message, an error or interfaces.
    if not data and req.WhichOneof("msg") not in ("status", "stats"):
        raise ConnectionResetError(0, "the daemon closed the connection without a reply")
    reply = pb.CtlReply()
    reply.ParseFromString(data)
    return reply


STATUS_COLUMNS = ("VM", "STATE", "SOCKET", "TAP", "LLADDR", "ADDRESS", "ADDRESS6", "QUEUES",
                  "MTU", "DROPPED")


def print_status(reply, out):
    """A table like vmctl status: columns as wide as their widest cell."""
    rows = [STATUS_COLUMNS] + [(i.vm, state_cell(i), i.socket, i.tap or "-", i.lladdr or "-",
                                i.address or "-", i.address6 or "-", str(i.queues),
                                mtu_cell(i), i.reason or "-")
                               for i in reply.interfaces]
    widths = [max(len(r[c]) for r in rows) for c in range(len(STATUS_COLUMNS))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip(), file=out)


def state_cell(i):
    """The state, and in client mode the failed attempts: connecting(12)."""
    return "%s(%d)" % (i.state, i.retries) if i.retries else i.state


def mtu_cell(i):
    """The tap's MTU, and the guest's when its VMM set one: 1500(1400)."""
    return ("%d(%d)" % (i.mtu, i.guest_mtu) if i.guest_mtu else str(i.mtu or "-"))


def print_show(reply, out):
    for i in reply.interfaces:
        print("%s: %s, tap %s, socket %s" % (i.name, state_cell(i), i.tap, i.socket), file=out)
        if i.lladdr:
            print("  lladdr %s" % i.lladdr, file=out)
        if i.address:
            print("  address %s%s" % (i.address, ", lease " + i.lease if i.lease else ""),
                  file=out)
        if i.address6:
            print("  address6 %s%s" % (i.address6, ", lease " + i.lease6 if i.lease6 else ""),
                  file=out)
        print("  features:", file=out)
        for label, mask, names in (
                ("policy", i.policy_features, features.names),
                ("tap", i.tap_features, features.tun_names),
                ("offered", i.offered, features.names),
                ("vmm", i.vmm_features, features.names),
                ("negotiated", i.negotiated, features.names)):
            print("    %-10s %#018x %s" % (label, mask, " ".join(names(mask))), file=out)
        print("  mtu: tap %s, guest %s" % (i.mtu or "-", i.guest_mtu or "-"), file=out)
        print("  path: tx %s, rx %s" % (i.tx_path, i.rx_path), file=out)
        print("  session: %s, restarts %d" % (i.session_pid or "-", i.session_restarts),
              file=out)
        print("  workers: %s, restarts %d" % (" ".join(map(str, i.worker_pids)) or "-",
                                             i.restarts), file=out)
        if i.reason:
            print("  last drop: %s" % i.reason, file=out)
        print("  migration: dirty logging %s, pages marked %d, announced %d" %
              ("on" if i.logging else "off", pages_marked(i), i.announced), file=out)
        print_usage(i, out)
        for q in i.queue_pairs or [pb.QueueCounters()]:
            print("  counters of queue pair %d (not zero):" % q.queue_pair, file=out)
            for c in q.counters:
                if c.value:
                    print("    %-32s %d" % (c.name, c.value), file=out)


def print_usage(i, out):
    """show's lines of the rate limits, the tap's drops and the processes."""
    print("  rate: tx %s, rx %s; tap dropped %d" % (
        rate_text(i.limits.tx, counter(i, "tx_rate_held")),
        rate_text(i.limits.rx, counter(i, "rx_rate_held")), i.tap_dropped), file=out)
    if i.processes:
        print("  processes: %s" % ", ".join(
            "%s %d %.2fs %dK" % (p.role, p.pid, p.cpu_seconds, p.rss_bytes >> 10)
            for p in i.processes), file=out)


def rate_text(r, held):
    """One direction's limit as vionetd.conf writes it, and how often it held."""
    if not (r.bytes_per_s or r.frames_per_s):
        return "none"
    words = [scaled(r.bytes_per_s * 8, 1000)] if r.bytes_per_s else []
    words += ["burst %s" % (scaled(r.burst_bytes, 1024) if r.burst_bytes else "auto")] \
        if r.bytes_per_s else []
    words += ["pps %s" % scaled(r.frames_per_s, 1000)] if r.frames_per_s else []
    return "%s (held %d times)" % (" ".join(words), held)


def scaled(n, base):
    """200000000 -> 200M (base 1000), 1048576 -> 1M (base 1024), as exactly as it goes."""
    for unit in ("G", "M", "K"):
        size = base ** ("KMG".index(unit) + 1)
        if n >= size and n % size == 0:
            return "%d%s" % (n // size, unit)
    return str(n)


def counter(i, name):
    return sum(c.value for c in i.counters if c.name == name)


def pages_marked(i):
    """Dirty-log bits the workers set (counters rx_log_marked, tx_log_marked)."""
    return sum(c.value for c in i.counters if c.name.endswith("_log_marked"))


def as_dict(reply):
    return {i.name: {"vm": i.vm, "state": i.state, "socket": i.socket, "tap": i.tap,
                     "lladdr": i.lladdr, "address": i.address, "address6": i.address6,
                     "lease6": i.lease6, "queues": i.queues,
                     "policy": i.policy_features, "tap_features": i.tap_features,
                     "offered": i.offered, "vmm": i.vmm_features,
                     "negotiated": i.negotiated, "tx_path": i.tx_path, "rx_path": i.rx_path,
                     "worker_pids": list(i.worker_pids), "restarts": i.restarts,
                     "session_pid": i.session_pid, "session_restarts": i.session_restarts,
                     "reason": i.reason, "retries": i.retries,
                     "mtu": i.mtu, "guest_mtu": i.guest_mtu,
                     "migration": {"logging": i.logging, "pages_marked": pages_marked(i),
                                   "announced": i.announced},
                     "rate": {d: {"bits_per_s": r.bytes_per_s * 8, "burst_bytes": r.burst_bytes,
                                  "pps": r.frames_per_s}
                              for d, r in (("tx", i.limits.tx), ("rx", i.limits.rx))},
                     "tap_dropped": i.tap_dropped,
                     "processes": {p.role: {"pid": p.pid, "cpu_seconds": p.cpu_seconds,
                                            "rss_bytes": p.rss_bytes} for p in i.processes},
                     "counters": {c.name: c.value for c in i.counters},
                     "queue_pairs": [{c.name: c.value for c in q.counters}
                                     for q in i.queue_pairs]}
            for i in reply.interfaces}


def parser():
    p = argparse.ArgumentParser(prog="vionetctl")
    p.add_argument("-s", metavar="socket", default=DEFAULT_SOCKET)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("status")
    sub.add_parser("show").add_argument("vm")
    stats = sub.add_parser("stats").add_mutually_exclusive_group()
    stats.add_argument("--json", action="store_true")
    stats.add_argument("--prometheus", action="store_true",
                       help="Prometheus's text exposition format")
    top = sub.add_parser("top")
    top.add_argument("-b", action="store_true", help="batch mode: plain lines, no terminal")
    top.add_argument("-n", type=int, default=0, metavar="N",
                     help="stop after N refreshes (0: until q or interrupted)")
    top.add_argument("-d", type=float, default=1.0, metavar="SECONDS",
                     help="between refreshes (default 1)")
    top.add_argument("-o", default="rx", metavar="COLUMN",
                     help="sort by: vm, state, rx, tx, rxpps, txpps, drops, cpu (default rx)")
    sub.add_parser("reload")
    sub.add_parser("log").add_argument("level", choices=("brief", "verbose"))
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.cmd == "top":
        from vionetd import top
        return top.main(args, lambda: request(args.s, pb.CtlRequest(stats=True)))
    req = {"status": lambda: pb.CtlRequest(status=True),
           "show": lambda: pb.CtlRequest(show=args.vm),
           "stats": lambda: pb.CtlRequest(stats=True),
           "reload": lambda: pb.CtlRequest(reload=True),
           "log": lambda: pb.CtlRequest(log_level=args.level)}[args.cmd]()
    try:
        reply = request(args.s, req)
    except OSError as e:
        print("vionetctl: %s: %s" % (args.s, e.strerror or e), file=sys.stderr)
        return 1
    except Exception as e:             # a reply that does not parse
        print("vionetctl: %s: bad reply: %s" % (args.s, e), file=sys.stderr)
        return 1
    if reply.error:
        print("vionetctl: %s" % reply.error, file=sys.stderr)
        return 1
    if args.cmd == "status":
        print_status(reply, sys.stdout)
    elif args.cmd == "show":
        print_show(reply, sys.stdout)
    elif args.cmd == "stats" and args.prometheus:
        from vionetd import prometheus
        sys.stdout.write(prometheus.exposition(reply))
    elif args.cmd == "stats":
        d = as_dict(reply)
        if args.json:
            print(json.dumps(d, indent=1, sort_keys=True))
        else:
            for name, v in d.items():
                for k, val in sorted(v["counters"].items()):
                    print("%s %s %d" % (name, k, val))
    elif reply.message:
        print(reply.message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
