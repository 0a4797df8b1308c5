"""Run by the parent (root): the CPU and memory of an interface's processes, from /proc.

vionetctl show, stats and the metrics process report, per VM interface, what
its session and workers cost the host: user + system CPU seconds
(/proc/PID/stat fields 14 and 15) and resident memory (/proc/PID/statm,
pages). The parent reads them when it answers, a few small files per
process; a process that has just exited is left out.
"""
import os

from vionetd import vionetd_pb2 as pb
from vionetd.control import ROLE_NAME

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def usage(pid):
    """(cpu seconds, rss bytes) of pid, or None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/%d/statm" % pid) as f:
            rss_pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, rss_pages * PAGE


def processes(port):
    """[pb.ProcessUsage] of port's session and workers ("session", "rx",
    "tx", "rx1", "tx1", ... by queue pair)."""
    kids = port.children
    named = [("session", kids.session_pid)] if kids.session_pid else []
    named += [("%s%s" % (ROLE_NAME[role], qp or ""), pid)
              for (role, qp), pid in sorted(kids.workers.items())]
    out = []
    for role, pid in named:
        u = usage(pid)
        if u is not None:
            out.append(pb.ProcessUsage(role=role, pid=pid, cpu_seconds=u[0], rss_bytes=u[1]))
    return out
