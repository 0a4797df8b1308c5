"""A real Linux guest (6.12, QEMU 10) on a local interface of vionetd, by
IPv6 alone: nothing on its command line but its plans.

The guest's kernel takes its address from vionetd's router advertisements
(SLAAC in the interface's /64) and its default route through fe80::1,
pings the host side PREFIX::1, and moves a file each way over TCP/IPv6
with the offloads on (TSO6: the guest hands vionetd super-frames, the host
hands the guest GSO frames), sha256 checked at both ends. After vionetd is
restarted (the guest keeps running; QEMU reconnects), the host side has
the same /64 and the guest still reaches it from the same address.
"""
import ipaddress
import os
import sys

import pytest

from tests import guest
from tests import guest_peer
from tests import netns as N
from tests.daemon import daemon
from tests.test_guest_image import Peers

HERE = os.path.dirname(os.path.abspath(__file__))
MAC = "52:54:00:00:0e:01"
XFER_BYTES = 2 * 1024 * 1024
HOST_TSO6 = 12

pytestmark = [pytest.mark.guest, pytest.mark.root]

CONF = """socket "@CTL@"
local prefix6 fd00:6:7::/48
vm "v6" {
    local interface "%s" {
        socket "@DIR@/v6.sock"
        lladdr 52:54:00:00:0e:01
        mtu 1500
    }
}
"""


# after the slaac plan: the file both ways, to the host side's IPv6 address
XFER6 = "VIONET_HOST=$VIONET_HOST6 . /plans/xfer.sh\n"


def test_guest_slaac_ping_and_tcp_over_ipv6(image):
    with N.netns("v6") as ns:
        tapname = N.unique("v6")
        with daemon(CONF % tapname, ns) as d:
            d.wait_socket(d.dir + "/v6.sock")
            net = ipaddress.IPv6Network([w for w in d.ctl("status").stdout.split()
                                         if w.startswith("fd00:6:7:")][0])
            host6 = str(net.network_address + 1)
            peers = Peers(ns)
            try:
                xfer = peers.start(sys.executable, os.path.join(HERE, "guest_peer.py"),
                                   "xfer", "5301", str(XFER_BYTES), "600")
                assert peers.readline(xfer, 10) == "ready"
                g = guest.Guest(kernel="6.12", qemu="10", timeout=500,
                                netdev=guest.VhostUser(d.dir + "/v6.sock"),
                                device_props={"mac": MAC}, plan=["slaac"], snippet=XFER6,
                                params={"host6": host6, "xfer_bytes": XFER_BYTES,
                                        "timeout": 300})
                with g:
                    res = g.wait_done()
                    log = g.log() + "\n--- vionetd ---\n" + d.log()
                    show = d.ctl("show", "v6").stdout
                    c = d.stats()["v6/0"]["counters"]
                xfer_out, _ = Peers.finish(xfer)
            finally:
                for p in peers.procs:
                    Peers.finish(p, timeout=5, sig=9)
    print("\nipv6: %s via %s, ping6 %s/%s; counters %s" % (
        res.get("slaac.addr"), res.get("slaac.route"), res.get("ping6.received"),
        res.get("ping6.sent"), {k: v for k, v in c.items() if v}))
    addr = ipaddress.IPv6Interface(res["slaac.addr"])
    assert addr.network == net, log
    assert "fe80::1" in res["slaac.route"], log
    assert res["slaac.mtu"] == "1500" and res["slaac.hoplimit"] == "64", log
    assert res["ping6.sent"] == res["ping6.received"] == "3", log
    guest_peer.check_xfer(xfer_out, res, XFER_BYTES)
    assert guest.feature_bit(res["features"], HOST_TSO6), res["features"]
    assert c["tx_gso_frames"] > 0, c             # TSO6 from the guest
    assert c["rx_bytes"] > 1500 * c["rx_frames"], c   # GSO frames to the guest
    assert c["tx_v6_diverted"] >= 1, c           # its router solicitation
    assert "address6 %s" % net in show, show
