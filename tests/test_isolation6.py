"""A hostile guest floods router solicitations and DHCPv6 Solicits; a
second VM of the same daemon keeps its figures.

Two local interfaces with IPv6: "hos", where tests/flood6.py (a separate
process, a TestVM) sends both as fast as the daemon takes them, and "by",
the bystander, a TestVM measured the same way before and during the flood:
TX frames a second (UDP over IPv6 to its host side, 32 chains a kick,
counted when used) and the time its own DHCPv6 Solicit takes to be
answered. Also measured: the parent's CPU time during the flood (it may
only see what the tx worker's buckets let through) and the hostile
interface's counters (most of the flood counted as limited, a bounded
number of answers).
"""
import ipaddress
import os
import subprocess
import sys
import time

import pytest
from scapy.layers.dhcp6 import DHCP6_Reply

from tests import netns as N
from tests.daemon import daemon
from tests.test_dhcp6 import ia_na, message, opt
from tests.test_iface6 import replies, udp6
from tests.testvm import TestVM
from vionetd import dhcp6, local6

pytestmark = pytest.mark.root
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECONDS = 5.0
BATCH = 32

CONF = """socket "@CTL@"
local prefix6 fd00:6:8::/48
vm "hos" {
    local interface { socket "@DIR@/hos.sock"
        lladdr 52:54:00:12:34:56 }
}
vm "by" {
    local interface { socket "@DIR@/by.sock"
        lladdr 52:54:00:00:0b:01 }
}
"""


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def figures(vm, host, seconds):
    """(frames a second, seconds to a DHCPv6 answer) of the bystander: UDP
    frames from an address of its /64 to its host side, BATCH chains a kick."""
    src = (ipaddress.IPv6Address(host) + 0xFF).packed
    frame = udp6(src, host)
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(BATCH):
            vm.post_tx(frame, kick=False)
        vm.fe.kick_ring(1)
        vm.wait_used(1, BATCH, timeout=10)
        n += BATCH
    t0 = time.monotonic()
    vm.send(message(dhcp6.SOLICIT, opt(1, bytes.fromhex("0003000152540000") + b"\x0b\x01")
                    + ia_na() + opt(14, b""), xid=n & 0xFFFFFF))
    replies(vm, DHCP6_Reply, 1, timeout=5)
    return n / seconds, time.monotonic() - t0


def test_a_flood_of_solicitations_leaves_the_other_vm_its_figures():
    with N.netns("i6") as ns, daemon(CONF, ns) as d:
        d.wait_socket(d.dir + "/hos.sock")
        d.wait_socket(d.dir + "/by.sock")
        net = local6.addresses6(ipaddress.IPv6Network("fd00:6:8::/48"), "by/0")
        host = net.host.packed
        with TestVM(d.dir + "/by.sock") as vm:
            vm.post_rx(256, 2048)
            figures(vm, host, 1.0)                       # warm up, unmeasured
            before = figures(vm, host, SECONDS)
            p = subprocess.Popen([sys.executable, "-m", "tests.flood6", d.dir + "/hos.sock",
                                  str(SECONDS + 2)], cwd=ROOT, stdout=subprocess.PIPE,
                                 text=True, start_new_session=True)
            try:
                assert p.stdout.readline().strip() == "ready"
                time.sleep(1)
                cpu0 = cpu_seconds(d.proc.pid)
                during = figures(vm, host, SECONDS)
                parent_cpu = cpu_seconds(d.proc.pid) - cpu0
                out = p.communicate(timeout=SECONDS + 30)[0]
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait(5)
        hostile = d.stats()["hos/0"]["counters"]
    sent = int(out.split("sent=")[1])
    print("\nbystander: %.0f frames/s, DHCPv6 in %.0f ms undisturbed; %.0f frames/s, "
          "%.0f ms during a flood of %d frames (%.0f/s); parent CPU %.2f s of %.0f s; "
          "hostile: rs_limited %d, dhcp6_limited %d, rx_injected %d" % (
              before[0], before[1] * 1000, during[0], during[1] * 1000, sent,
              sent / (SECONDS + 2), parent_cpu, SECONDS,
              hostile.get("tx_rs_limited", 0), hostile.get("tx_dhcp6_limited", 0),
              hostile.get("rx_injected", 0)))
    assert sent > 1000
    limited = hostile.get("tx_rs_limited", 0) + hostile.get("tx_dhcp6_limited", 0)
    assert limited >= sent - (3 + 10 + (1 + 5) * (SECONDS + 3)), hostile
    assert during[0] >= 0.5 * before[0], (before, during)
    assert during[1] < 1.0, (before, during)
    assert parent_cpu < 0.5, parent_cpu
