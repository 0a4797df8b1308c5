"""A real Linux guest on vionetd: QEMU boots the project's image with
-netdev vhost-user on the daemon's socket; the tap's host side is in a
network namespace of the test's own.

Checked from both ends: the guest's driver negotiated what vionetd offered
(/sys/class/net/eth0/device/features against the policy), ping both ways,
iperf3 TCP guest to host and host to guest, a file each way whose sha256
matches at both ends, a guest UDP GSO send (6.12 with QEMU 10) arriving as
valid datagrams, and vionetd's counters showing the path the frames took:
passthrough when the tap can, software when the policy says so, and none
of the offloaded work when the guest turned its offloads off.
"""
import os
import signal
import sys

import pytest

from tests import guest
from tests import guest_peer
from tests import netns as N
from tests.daemon import daemon
from tests.test_guest_image import Peers, keyvals

HERE = os.path.dirname(os.path.abspath(__file__))
HOST_IP, GUEST_IP = "10.0.0.1", "10.0.0.2"
MAC = "52:54:00:12:34:56"
XFER_BYTES = 2 * 1024 * 1024
CSUM, GUEST_CSUM, HOST_TSO4, HOST_USO = 0, 1, 11, 56

pytestmark = [pytest.mark.guest, pytest.mark.root]

CONF = """socket "@CTL@"
vm "g1" {
    interface "vgt0" {
        socket "@DIR@/g1.sock"
        lladdr 52:54:00:12:34:56
%s
    }
}
"""
# iperf3 a second time, host to guest (-R), as results iperf_rx.*
HOST_TO_GUEST = "VIONET_IPERF_REVERSE=1 VIONET_IPERF_NAME=iperf_rx . /plans/iperf.sh\n"
SOFTWARE = """        offload tx csum software
        offload tx tso4 software
        offload tx tso6 software
        offload tx uso software"""



def boot(image, kernel, qemu, policy="", guest_offload=None, plan=("ping", "iperf", "xfer")):
    """Boot a guest on a fresh daemon; returns (results, counters, log, peers' output)."""
    with N.netns("vg") as ns, daemon(CONF % policy, ns) as d:
        d.wait_socket(d.dir + "/g1.sock")
        N.ns_run(ns, "ip", "addr", "add", HOST_IP + "/24", "dev", "vgt0")
        peers = Peers(ns)
        try:
            peers.start("iperf3", "-s", "-p", "5201")
            xfer = peers.start(sys.executable, os.path.join(HERE, "guest_peer.py"),
                               "xfer", "5301", str(XFER_BYTES), "600")
            assert peers.readline(xfer, 10) == "ready"
            udp = peers.start(os.path.join(guest.OUT, "bin", "udpgso_send"), "recv", "5401",
                              "-t", "600", "-i", "600", "-r", str(16 << 20))
            assert peers.readline(udp, 10) == "listening=5401"
            params = {"ip": GUEST_IP + "/24", "host": HOST_IP, "iperf_secs": 3,
                      "xfer_bytes": XFER_BYTES, "udp_bytes": 1 << 20}
            if guest_offload:
                params["offload"] = guest_offload
            g = guest.Guest(kernel=kernel, qemu=qemu, timeout=600,
                            netdev=guest.VhostUser(d.dir + "/g1.sock"),
                            device_props={"mac": MAC}, plan=list(plan), params=params,
                            snippet=HOST_TO_GUEST if "iperf" in plan else None)
            with g:
                # the host pings the guest once the guest's own ping is done
                g.wait_for(r"plan\.ping\.rc=", 600)
                host_ping = N.ns_run(ns, "ping", "-c", "3", "-W", "2", GUEST_IP,
                                     check=False).stdout
                res = g.wait_done()
                log = g.log()
                counters = d.stats()["g1/0"]["counters"]
            xfer_out, _ = peers.finish(xfer)
            udp_out, _ = peers.finish(udp, sig=signal.SIGTERM)
        finally:
            peers.close()
        return res, counters, log + "\n--- vionetd ---\n" + d.log(), host_ping, xfer_out, udp_out


def check_traffic(res, log, host_ping, xfer_out):
    assert res["rc"] == 0, log
    assert res["ping.received"] == res["ping.sent"] == "3", log
    assert "3 received" in host_ping, host_ping
    assert float(res["iperf.mbps"]) > 0, log
    assert float(res["iperf_rx.mbps"]) > 0, log
    guest_peer.check_xfer(xfer_out, res, XFER_BYTES)


@pytest.mark.parametrize("kernel,qemu", [("6.12", "10"), ("6.1", "7.2")])
def test_guest_with_offloads_passthrough(image, kernel, qemu):
    plan = ("ping", "iperf", "xfer", "ethtool") + (("udpgso",) if kernel == "6.12" else ())
    res, c, log, host_ping, xfer_out, udp_out = boot(image, kernel, qemu, plan=plan)
    print("\n%s/QEMU %s on vionetd: iperf3 guest->host %s, host->guest %s Mbit/s"
          % (kernel, qemu, res.get("iperf.mbps"), res.get("iperf_rx.mbps")))
    check_traffic(res, log, host_ping, xfer_out)
    feats = res["features"]
    for bit in (CSUM, GUEST_CSUM, HOST_TSO4):
        assert guest.feature_bit(feats, bit), feats
    # QEMU (7.2 and 10 alike) never offers USO to a guest on a vhost-user
    # netdev: net/vhost-user.c has no has_uso callback, so virtio-net clears
    # HOST_USO and GUEST_USO4/6 whatever the backend offers. vionetd's USO
    # paths are exercised by the test VMM instead (test_daemon_tx.py).
    assert not guest.feature_bit(feats, HOST_USO)
    assert c["tx_passthrough"] > 0 and c["tx_sw_segmented"] == 0 and c["tx_sw_csum"] == 0
    assert c["tx_gso_frames"] > 0, c          # the guest did hand over super-frames
    assert sum(v for k, v in c.items() if "refused" in k or "ring_" in k) == 0, c
    if kernel == "6.12":
        got = keyvals(udp_out)
        assert res["udpgso.rc"] == "0", log     # UDP_SEGMENT sends, cut by the guest
        assert int(got["datagrams"]) > 0 and got["bad"] == "0", udp_out


def test_guest_with_software_offloads(image):
    res, c, log, host_ping, xfer_out, _ = boot(image, "6.12", "10", policy=SOFTWARE)
    check_traffic(res, log, host_ping, xfer_out)
    assert guest.feature_bit(res["features"], HOST_TSO4)
    assert c["tx_sw_segmented"] > 0 and c["tx_segments_out"] > c["tx_sw_segmented"], c
    assert c["tx_passthrough"] == 0 or c["tx_passthrough"] < c["tx_frames"]


def test_guest_with_its_offloads_off(image):
    res, c, log, host_ping, xfer_out, _ = boot(image, "6.12", "10",
                                               guest_offload="tx:off,tso:off,gso:off")
    check_traffic(res, log, host_ping, xfer_out)
    # Features are still negotiated; the guest just does not use them:
    # no super-frame and no partial checksum came from it.
    assert guest.feature_bit(res["features"], HOST_TSO4)
    assert c["tx_gso_frames"] == 0 and c["tx_partial_csum_frames"] == 0, c
    assert c["tx_passthrough"] == c["tx_frames"] > 0
