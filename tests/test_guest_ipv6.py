"""A real Linux guest (6.12, QEMU 10) on a local interface of vionetd, by
IPv6 alone: nothing on its command line but its plans.

The guest's kernel takes its address from vionetd's router advertisements
(SLAAC in the interface's /64) and its default route through fe80::1,
pings the host side PREFIX::1, and moves a file each way over TCP/IPv6
with the offloads on (TSO6: the guest hands vionetd super-frames, the host
hands the guest GSO frames), sha256 checked at both ends. After vionetd is
restarted (the guest keeps running; QEMU reconnects), the host side has
the same /64 and the guest still reaches it from the same address.
The first guest's interface is locked: all it sends comes from its
link-local and SLAAC addresses, and nothing is refused.
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
        locked lladdr 52:54:00:00:0e:01
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
    assert c.get("tx_locked_ip6_drop", 0) == 0 and c.get("tx_locked_mac_drop", 0) == 0, c
    assert "address6 %s" % net in show, show


# ---- DHCPv6 in the guest, and a restart of vionetd under it ---------------------------

CONF_ULA = """socket "@CTL@"
vm "d6" {
    local interface "%s" {
        socket "@DIR@/d6.sock"
        lladdr 52:54:00:00:0e:02
    }
}
"""
HOLD = 25
# After the plans: say so, wait while the host restarts vionetd, then look
# again: the addresses, the route, dhcpcd once more (results dhcp6b.*),
# ping6 the host side.
AFTER_RESTART = """note ready
sleep %d
result after.addrs "$(ip -6 -o addr show dev "$IF" scope global | awk '{ print $4 }' | sort | tr '\\n' ',')"
result after.route "$(ip -6 route show default | head -n 1)"
sed 's/dhcp6\\./dhcp6b./g' /plans/dhcp6.sh > /tmp/dhcp6b.sh
(VIONET_DHCP6_WAIT=20 . /tmp/dhcp6b.sh)
out=$(ping6 -c 3 -W 2 "$VIONET_HOST6" 2>&1)
result ping6b.received "$(echo "$out" | sed -n 's/.* \\([0-9]*\\) packets received.*/\\1/p')"
""" % HOLD


def status_slash64(d, vm):
    return [w for ln in d.ctl("status").stdout.splitlines() if ln.startswith(vm + " ")
            for w in ln.split() if w.startswith("fd") and w.endswith("/64")][0]


def test_guest_dhcpv6_lease_and_addresses_kept_across_a_restart(image):
    """dhcpcd in the guest gets the stateful lease PREFIX::2 and the name
    server (the host side, no dns6 given); the /64 comes from the host's
    ULA prefix, kept in the lease file. vionetd is restarted under the
    running guest (SIGTERM, start; QEMU reconnects): the host side has the
    same /64, vionetctl the same lease, and the guest, which kept its
    addresses, gets the same lease again from the new daemon and still
    reaches the host side."""
    with N.netns("d6") as ns:
        tapname = N.unique("d6")
        with daemon(CONF_ULA % tapname, ns) as d:
            d.wait_socket(d.dir + "/d6.sock")
            net = ipaddress.IPv6Network(status_slash64(d, "d6"))
            host6, lease6 = str(net.network_address + 1), str(net.network_address + 2)
            g = guest.Guest(kernel="6.12", qemu="10", timeout=500,
                            netdev=guest.VhostUser(d.dir + "/d6.sock", reconnect=1),
                            device_props={"mac": "52:54:00:00:0e:02"},
                            plan=["slaac", "dhcp6"], snippet=AFTER_RESTART,
                            params={"host6": host6, "timeout": HOLD + 90})
            with g:
                g.wait_for("VIONET-NOTE ready", 400)
                before = d.ctl("show", "d6").stdout
                d.stop()
                d.start()
                d.wait_socket(d.ctl_socket)
                after_net = status_slash64(d, "d6")
                res = g.wait_done()
                log = g.log() + "\n--- vionetd ---\n" + d.log()
                after = d.ctl("show", "d6").stdout
    print("\ndhcp6: %s (dns %s, T1 %s, T2 %s); after the restart: %s, lease again %s" % (
        res.get("dhcp6.addr"), res.get("dhcp6.dns"), res.get("dhcp6.t1"),
        res.get("dhcp6.t2"), res.get("after.addrs"), res.get("dhcp6b.addr")))
    assert net.network_address.packed[0] == 0xFD and after_net == str(net), log
    assert res["dhcp6.reason"] == "BOUND6" and res["dhcp6.addr"] == lease6, log
    assert res["dhcp6.dns"] == host6, log
    assert (res["dhcp6.t1"], res["dhcp6.t2"]) == ("7200", "11520"), log
    assert (res["dhcp6.pltime"], res["dhcp6.vltime"]) == ("14400", "86400"), log
    assert res["dhcp6.kernel_addr"] == lease6 + "/128", log
    assert "lease %s" % lease6 in before and "lease %s" % lease6 in after, after
    kept = res["after.addrs"].strip(",").split(",")
    assert lease6 + "/128" in kept and len(kept) == 2, log       # the lease and SLAAC's
    assert all(ipaddress.IPv6Interface(a).ip in net for a in kept), log
    assert "fe80::1" in res["after.route"], log
    assert res["dhcp6b.rc"] == "0" and res["dhcp6b.addr"] == lease6, log
    assert res["ping6b.received"] == "3", log
