"""Jumbo frames with a real guest: QEMU 10 gives the guest MTU 9000
(host_mtu=9000, the virtio config space), vionetd is told so by
NET_SET_MTU and accepts it because the interface says "mtu 9000".

Checked end to end, with the guest's TSO on and off:
- the guest's interface came up with MTU 9000 by itself (no "ip link set
  mtu" in the guest: it read the config space);
- the guest pings the host with 8972 bytes of payload and the host pings
  the guest with -M do (never fragmented): both succeed, and a capture on
  the tap sees unfragmented 9000-byte IPv4 packets both ways;
- a file each way whose sha256 matches at both ends; without TSO, the
  guest's TCP segments seen on the tap are larger than 1500-byte MTU ones.
And refused: host_mtu=9000 on an interface without "mtu" (1500) is refused
by vionetd with a log line naming both MTUs, and QEMU reports that the
backend does not support that MTU.
"""
import os
import socket
import struct
import sys
import threading
import time

import pytest

from tests import guest
from tests import guest_peer
from tests import netns as N
from tests.daemon import capture_socket, daemon
from tests.test_guest_image import Peers

HERE = os.path.dirname(os.path.abspath(__file__))
HOST_IP, GUEST_IP = "10.0.0.1", "10.0.0.2"
MAC = "52:54:00:12:34:56"
TAP = "vmt0"
XFER_BYTES = 2 * 1024 * 1024
JUMBO_PAYLOAD = 8972            # + 8 ICMP + 20 IPv4 = 9000

pytestmark = [pytest.mark.guest, pytest.mark.root]

CONF = """socket "@CTL@"
vm "j1" {
    interface "%s" {
        socket "@DIR@/j1.sock"
        lladdr 52:54:00:12:34:56
%s
    }
}
"""

# After the xfer plan: the MTU the guest has, its jumbo ping, then time
# for the host's.
SNIPPET = """result mtu "$(cat /sys/class/net/$IF/mtu)"
ping -c 3 -W 2 -s %d "$VIONET_HOST"
result jping.rc $?
sleep 8
""" % JUMBO_PAYLOAD


class Capture:
    """IPv4 packets on the tap, in a thread: (from_guest, proto, total
    length, fragmented) for each."""

    def __init__(self, ns, ifname):
        self.sock = capture_socket(ns, ifname)
        self.sock.settimeout(0.2)
        self.seen = []
        self.stop_at = time.monotonic() + 900
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        guest_mac = bytes.fromhex(MAC.replace(":", ""))
        while not self.done.is_set() and time.monotonic() < self.stop_at:
            try:
                data = self.sock.recv(70000)
            except socket.timeout:
                continue
            except OSError:
                return
            if len(data) < 34 or data[12:14] != b"\x08\x00":
                continue
            total, frag = struct.unpack_from("!H2xH", data, 16)
            self.seen.append((data[6:12] == guest_mac, data[23], total,
                              bool(frag & 0x3FFF)))

    def close(self):
        self.done.set()
        self.thread.join(5)
        self.sock.close()


def boot(host_mtu, iface_lines, guest_offload=None, plan=("xfer",), snippet=SNIPPET,
         host_ping=True):
    with N.netns("vm") as ns, daemon(CONF % (TAP, iface_lines), ns) as d:
        d.wait_socket(d.dir + "/j1.sock")
        N.ns_run(ns, "ip", "addr", "add", HOST_IP + "/24", "dev", TAP)
        peers = Peers(ns)
        cap = Capture(ns, TAP)
        try:
            xfer = peers.start(sys.executable, os.path.join(HERE, "guest_peer.py"),
                               "xfer", "5301", str(XFER_BYTES), "600")
            assert peers.readline(xfer, 10) == "ready"
            params = {"ip": GUEST_IP + "/24", "host": HOST_IP, "xfer_bytes": XFER_BYTES}
            if guest_offload:
                params["offload"] = guest_offload
            g = guest.Guest(kernel="6.12", qemu="10", timeout=600,
                            netdev=guest.VhostUser(d.dir + "/j1.sock"),
                            device_props={"mac": MAC, "host_mtu": str(host_mtu)},
                            plan=list(plan), params=params, snippet=snippet)
            ping = ""
            with g:
                if host_ping:
                    g.wait_for(r"jping\.rc=", 600)
                    ping = N.ns_run(ns, "ping", "-c", "3", "-W", "2", "-M", "do", "-s",
                                    str(JUMBO_PAYLOAD), GUEST_IP, check=False).stdout
                res = g.wait_done()
                log, stderr = g.log(), g.stderr()
                tap_mtu = N.ns_run(ns, "cat", "/sys/class/net/%s/mtu" % TAP).stdout.strip()
            xfer_out, _ = peers.finish(xfer, timeout=20)
        finally:
            cap.close()
            peers.close()
        return dict(res=res, log=log + "\n--- vionetd ---\n" + d.log(), ping=ping,
                    xfer=xfer_out, seen=cap.seen, tap_mtu=tap_mtu, vionetd=d.log(),
                    stderr=stderr)


def check_jumbo(out):
    res, log = out["res"], out["log"]
    assert res["rc"] == 0, log
    assert res["mtu"] == "9000", log                   # learnt from the config space
    assert out["tap_mtu"] == "9000"
    assert res["jping.rc"] == "0", log
    assert "3 received" in out["ping"], out["ping"] + log
    guest_peer.check_xfer(out["xfer"], res, XFER_BYTES)
    icmp = [s for s in out["seen"] if s[1] == 1]
    # unfragmented 9000-byte ICMP both ways: guest's requests and replies
    # to the host's, the host's requests and replies to the guest's
    assert sum(1 for g, _, n, fr in icmp if g and n == 9000 and not fr) >= 6, icmp
    assert sum(1 for g, _, n, fr in icmp if not g and n == 9000 and not fr) >= 6, icmp
    assert "guest MTU 9000" in out["vionetd"], out["vionetd"]


def test_jumbo_frames_with_tso(image):
    out = boot(9000, "        mtu 9000")
    check_jumbo(out)


def test_jumbo_frames_without_tso(image):
    out = boot(9000, "        mtu 9000", guest_offload="tso:off,gso:off")
    check_jumbo(out)
    tcp_from_guest = [n for g, proto, n, _ in out["seen"] if g and proto == 6]
    # no super-frames, but segments of the jumbo MTU
    assert max(tcp_from_guest) <= 9000, max(tcp_from_guest)
    assert any(1500 < n for n in tcp_from_guest), sorted(set(tcp_from_guest))[-5:]


def test_host_mtu_above_the_interfaces_is_refused(image):
    out = boot(9000, "", plan=(), snippet='result mtu "$(cat /sys/class/net/$IF/mtu)"\n',
               host_ping=False)
    assert "refusing MTU 9000 from the VMM: larger than this interface's mtu 1500" \
        in out["vionetd"], out["vionetd"]
    assert "MTU not supported by the backend" in out["stderr"], out["log"]
    assert out["tap_mtu"] == "1500"
