"""A daemon restart under a running guest: traffic resumes, no reboot.

A 6.12 guest on QEMU 10, its interface on a switch, is pinged every 10 ms
from a far namespace (iputils ping -D, which stamps every reply) while
vionetd is stopped and started again twice: once as rc.d/vionetd restart
does (SIGTERM, then a start) and once killed (SIGKILL of the parent, whose
sessions and workers die with it, then a start). Both socket directions:
- listen: vionetd listens, QEMU connects with reconnect-ms=1000;
- connect: QEMU listens (server=on), vionetd connects and retries.

How it is proved: replies come back after each restart (the longest gap
between two replies around each restart is printed; the note of issue 10
reports them), the tap has the same name and is on the bridge again, and
the guest's boot id is the same before and after (it was not rebooted).
"""
import os
import re
import signal
import subprocess
import time

import pytest

from tests import guest
from tests import netns as N
from tests.daemon import wire
from tests.daemon import daemon as run_daemon

HOST_IP, GUEST_IP = "10.0.5.1", "10.0.5.2"
CONF = """socket "@CTL@"
switch "sw" { interface "%s" }
vm "r" {
    interface "%s" {
        socket "@DIR@/r.sock"%s
        switch "sw"
        lladdr 52:54:00:00:0f:01
    }
}
"""
HOLD = 45
SNIPPET = """result boot_id_before "$(cat /proc/sys/kernel/random/boot_id)"
note ready
sleep %d
result boot_id_after "$(cat /proc/sys/kernel/random/boot_id)"
""" % HOLD
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .* icmp_seq=(\d+)")


def longest_gap(lines, t0, t1):
    """The longest time between two replies around [t0, t1]."""
    stamps = [float(m.group(1)) for m in map(REPLY.match, lines) if m]
    around = [t for t in stamps if t0 - 2 <= t <= t1 + 15]
    gaps = [(b - a, a) for a, b in zip(around, around[1:])]
    return max(gaps) if gaps else (float("inf"), t0)


def restart(d, kill):
    if kill:
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        d._log.close()
        d.proc = None
    else:
        d.stop()
    d.start()


@pytest.mark.guest
@pytest.mark.root
@pytest.mark.parametrize("mode", ["listen", "connect"])
def test_restart_under_a_running_guest(mode):
    if os.geteuid() != 0:
        pytest.skip("booting guests needs root")
    with wire() as (dns, wns, bridge, veth_w):
        tap = N.unique("vr")
        N.ns_run(wns, "ip", "addr", "add", HOST_IP + "/24", "dev", veth_w)
        conf = CONF % (bridge, tap, " connect" if mode == "connect" else "")
        with run_daemon(conf, dns) as d:
            sock = d.dir + "/r.sock"
            if mode == "listen":
                d.wait_socket(sock)
            netdev = guest.VhostUser(sock, reconnect=1 if mode == "listen" else None,
                                     server=mode == "connect")
            g = guest.Guest(kernel="6.12", qemu="10", timeout=300, netdev=netdev,
                            device_props={"mac": "52:54:00:00:0f:01"}, snippet=SNIPPET,
                            params={"ip": GUEST_IP + "/24", "host": HOST_IP,
                                    "timeout": HOLD + 30})
            with g:
                g.wait_for("VIONET-NOTE ready", 240)
                ping = subprocess.Popen(["ip", "netns", "exec", wns, "ping", "-D", "-n",
                                         "-i", "0.01", "-W", "1", GUEST_IP],
                                        stdout=subprocess.PIPE, text=True,
                                        start_new_session=True)
                try:
                    times = []
                    for kill in (False, True):
                        time.sleep(4)
                        t0 = time.time()
                        restart(d, kill)
                        times.append((t0, time.time()))
                        d.wait_socket(d.ctl_socket)
                    time.sleep(8)
                finally:
                    os.killpg(ping.pid, signal.SIGINT)
                    out, _ = ping.communicate(timeout=10)
                res = g.wait_done()
                log = g.log() + "\n--- vionetd ---\n" + d.log()
            master = N.ns_run(dns, "ip", "-o", "link", "show", tap).stdout
    lines = out.splitlines()
    for (t0, t1), how in zip(times, ("rc.d restart (SIGTERM, start)", "SIGKILL, start")):
        gap, at = longest_gap(lines, t0, t1)
        print("\n%s mode, %s: longest gap between replies %.2f s" % (mode, how, gap))
        assert gap < 15, "no reply after the %s\n%s" % (how, log)
        assert any(float(m.group(1)) > t1 + 1 for m in map(REPLY.match, lines) if m), log
    assert res["boot_id_before"] == res["boot_id_after"], res
    assert "master " + bridge in master, master
