"""Run by vionetctl and the metrics process: counters as Prometheus's text exposition format.

`vionetctl stats --prometheus` prints it (for node exporter's textfile
collector) and the metrics process serves it at /metrics (metrics.py); both
render one CtlReply of a stats request (ctl.py) with exposition(). Names
follow Prometheus's conventions: a "vionetd_" prefix, counters end in
"_total", units in the name (bytes, seconds), HELP and TYPE before the
samples of each family. Labels: vm, interface (its index in the VM block)
and, for the workers' counters, queue (the queue pair); counters.py says
which family each counter belongs to.

Invariants: every family's samples are written together, under one HELP and
one TYPE line; label values are escaped as the format says (backslash,
double quote, newline); the text ends with a newline.
"""
from vionetd import counters, features

STATES = ("waiting", "connecting", "connected", "running", "restarting", "stopped")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Families:
    """Samples collected by family, written in name order."""

    def __init__(self):
        self.fams = {}          # name -> [type, help, [(labels, value)]]

    def add(self, name, kind, help_text, labels, value):
        name = "vionetd_" + name + ("_total" if kind == "counter" else "")
        fam = self.fams.setdefault(name, [kind, help_text, []])
        fam[2].append((labels, value))

    def text(self):
        out = []
        for name in sorted(self.fams):
            kind, help_text, samples = self.fams[name]
            out.append("# HELP %s %s" % (name, help_text.replace("\\", "\\\\")
                                          .replace("\n", "\\n")))
            out.append("# TYPE %s %s" % (name, kind))
            out += ["%s%s %s" % (name, label_text(labels), number(v)) for labels, v in samples]
        return "\n".join(out) + "\n"


def label_text(labels):
    if not labels:
        return ""
    return "{%s}" % ",".join('%s="%s"' % (k, escape(v)) for k, v in labels.items())


def escape(v):
    return str(v).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def number(v):
    return repr(float(v)) if isinstance(v, float) else str(int(v))


def exposition(reply):
    """The text of a stats CtlReply (every interface, with counters)."""
    f = Families()
    for i in reply.interfaces:
        base = {"vm": i.vm, "interface": i.name.rpartition("/")[2]}
        interface_families(f, i, base)
        for q in i.queue_pairs:
            for c in q.counters:
                fam, extra, help_text = counters.family(c.name)
                f.add(fam, "counter", help_text, {**base, "queue": str(q.queue_pair), **extra},
                      c.value)
    return f.text()


def interface_families(f, i, base):
    """What is known of the interface as a whole."""
    f.add("interface_info", "gauge", "A VM interface: its tap and vhost-user socket",
          {**base, "tap": i.tap, "socket": i.socket, "lladdr": i.lladdr}, 1)
    for s in STATES:
        f.add("session_state", "gauge", "The interface's state (1 for the current one)",
              {**base, "state": s}, int(i.state == s))
    f.add("offloads_info", "gauge", "Negotiated features and the path of each direction",
          {**base, "negotiated": " ".join(features.names(i.negotiated)),
           "tx_path": i.tx_path, "rx_path": i.rx_path}, 1)
    f.add("queue_pairs", "gauge", "Queue pairs the VMM may use", base, i.queues)
    f.add("worker_restarts", "counter", "Workers replaced since the session began",
          base, i.restarts)
    f.add("session_restarts", "counter", "Sessions replaced", base, i.session_restarts)
    f.add("tap_dropped_frames", "counter",
          "Frames the kernel dropped at the tap, its queue full (e.g. held by rate rx)",
          base, i.tap_dropped)
    f.add("dirty_logging", "gauge", "1 while the VMM migrates the guest", base,
          int(i.logging))
    f.add("rarp_announced", "counter", "RARP announcements written for the VMM", base,
          i.announced)
    limit_families(f, i, base)
    for p in i.processes:
        labels = {**base, "process": p.role}
        f.add("process_cpu_seconds", "counter", "CPU time of the interface's processes",
              labels, p.cpu_seconds)
        f.add("process_resident_memory_bytes", "gauge",
              "Resident memory of the interface's processes", labels, p.rss_bytes)


def limit_families(f, i, base):
    """rate tx|rx, 0 where there is none."""
    for direction in ("tx", "rx"):
        r = getattr(i.limits, direction)
        labels = {**base, "direction": direction}
        f.add("rate_limit_bits_per_second", "gauge", "rate limit (0: none)", labels,
              r.bytes_per_s * 8)
        f.add("rate_limit_burst_bytes", "gauge", "rate limit's burst (0: the default)",
              labels, r.burst_bytes)
        f.add("rate_limit_packets_per_second", "gauge", "rate limit in frames (0: none)",
              labels, r.frames_per_s)
