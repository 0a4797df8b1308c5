"""Multiqueue with a real guest: a 2-vCPU Linux guest on QEMU 10 with
mq=on and two queue pairs on vionetd (queues 2).

How it is proved: the guest turns both pairs on (ethtool -L combined 2),
runs four parallel TCP streams each way (iperf3 -P 4) and a hash-checked
file each way; vionetd's counters show frames on both pairs in both
directions. Then, while four streams run, the guest drops to one pair and
back to two (ethtool -L combined 1, then 2): the streams end cleanly
(iperf3's exit status: TCP lost nothing it could not resend) and a second
hash-checked file crosses after the changes.
"""
import json
import os
import re
import sys

import pytest

from tests import guest
from tests import netns as N
from tests.daemon import daemon
from tests.test_guest_image import Peers

HERE = os.path.dirname(os.path.abspath(__file__))
XFER = 2 * 1024 * 1024
HOST_IP, GUEST_IP = "10.0.4.1", "10.0.4.2"
CONF = """socket "@CTL@"
vm "mq" {
    interface "%s" {
        socket "@DIR@/mq.sock"
        lladdr 52:54:00:00:0e:01
        queues 2
    }
}
"""
SNIPPET = r"""
ethtool -L "$IF" combined 2; result mq.combined2_rc $?
for dir in "" -R; do
    iperf3 -c "$VIONET_HOST" -p 5201 -P 4 -t 3 $dir --connect-timeout 5000 > /tmp/p4.out 2>&1
    result "mq.p4${dir}_rc" $?
    grep -E 'SUM.*receiver' /tmp/p4.out
done
. /plans/xfer.sh
iperf3 -c "$VIONET_HOST" -p 5201 -P 4 -t 8 --connect-timeout 5000 > /tmp/bg.out 2>&1 &
bg=$!
sleep 2; ethtool -L "$IF" combined 1; result mq.combined1_rc $?
sleep 2; ethtool -L "$IF" combined 2; result mq.combined2_again_rc $?
wait $bg; result mq.bg_rc $?
grep -E 'SUM.*receiver' /tmp/bg.out
VIONET_XFER_PORT=5303 . /plans/xfer.sh
"""

@pytest.mark.guest
@pytest.mark.root
def test_two_queue_pairs_with_a_real_guest():
    if os.geteuid() != 0:
        pytest.skip("booting guests needs root")
    with N.netns("vq") as ns:
        N.disable_ipv6(ns)
        tapname = N.unique("vt")
        with daemon(CONF % tapname, ns) as d:
            d.wait_socket(d.dir + "/mq.sock")
            N.ns_run(ns, "ip", "addr", "add", HOST_IP + "/24", "dev", tapname)
            peers = Peers(ns)
            try:
                peers.start("iperf3", "-s", "-p", "5201")
                xfers = []
                for port in (5301, 5303):
                    x = peers.start(sys.executable, os.path.join(HERE, "guest_peer.py"),
                                    "xfer", str(port), str(XFER), "600")
                    assert peers.readline(x, 10) == "ready"
                    xfers.append(x)
                g = guest.Guest(kernel="6.12", qemu="10", timeout=900, smp=2,
                                netdev=guest.VhostUser(d.dir + "/mq.sock", queues=2),
                                device_props={"mac": "52:54:00:00:0e:01", "mq": "on",
                                              "vectors": "6"},
                                snippet=SNIPPET,
                                params={"ip": GUEST_IP + "/24", "host": HOST_IP,
                                        "xfer_bytes": XFER})
                with g:
                    res = g.wait_done()
                    pairs = d.stats()["mq/0"]["queue_pairs"]
                    log = g.log() + "\n--- vionetd ---\n" + d.log()
                hosts = [json.loads(peers.finish(x)[0].strip().splitlines()[-1])
                         for x in xfers]
            finally:
                peers.close()
    assert res["mq.combined2_rc"] == "0", log
    assert res["mq.combined1_rc"] == "0" and res["mq.combined2_again_rc"] == "0", log
    assert res["mq.bg_rc"] == "0", log
    assert res["mq.p4_rc"] == "0" and res["mq.p4-R_rc"] == "0", log
    # both files, before and after the changes, as each end hashed them
    # (the serial log has both runs' results; res keeps the last)
    for key in ("tx", "rx"):
        guest_side = re.findall(r"VIONET-RESULT xfer\.%s_sha256=(\w+)" % key, log)
        assert guest_side == [h["guest_%s_sha256" % key] for h in hosts], (key, hosts)
    assert all(h["guest_tx_bytes"] == h["guest_rx_bytes"] == XFER for h in hosts), hosts
    assert len(pairs) == 2, pairs
    for qp, c in enumerate(pairs):
        assert c.get("tx_frames", 0) > 0 and c.get("rx_frames", 0) > 0, (qp, pairs)
