"""Rate limits with real guests (TCG or KVM): iperf3 against `rate tx|rx 200M`.

Two VMs on one daemon, each on a tap of its own in a namespace of the
test's: "lim" with `rate tx 200M` and `rate rx 200M`, "free" without a
limit. One after the other, so that on a small host the guests do not
share the CPU their emulation needs:
1. lim's guest runs iperf3 to the host (its transmit) and from the host
   (-R, its receive), then waits for a host port to open;
2. free's guest boots and runs the same both ways;
3. the host removes lim's limit by reload and opens the port: lim's guest
   runs both again.

Checked: lim's limited runs within 10 % of 200 Mbit/s (TCP payload: the
limit counts whole frames, headers too), with no TCP retransmit on
transmit (the tx worker leaves frames in the ring: no drop), and the
limit held both directions (rate_held); free is never held and beats the
limit by half again; after the reload lim does too, on the same VMM
connection, session and workers (the log says the VMM connected once).
"""
import os

import pytest

from tests import guest
from tests import netns as N
from tests.daemon import daemon
from tests.test_guest_image import Peers

pytestmark = [pytest.mark.guest, pytest.mark.root]

LIMIT = 200.0                 # Mbit/s
RATES = "        rate tx 200M\n        rate rx 200M\n"
CONF = """socket "@CTL@"
vm "lim" {
    interface "vgl0" {
        socket "@DIR@/lim.sock"
        lladdr 52:54:00:12:34:56
%s    }
}
vm "free" {
    interface "vgf0" {
        socket "@DIR@/free.sock"
        lladdr 52:54:00:12:34:57
    }
}
"""
IPERF_SECS = 6
FREE_PORT = 5203              # opened by the host once the limit is gone
# lim's guest: iperf (its transmit) then its receive, limited; then it
# waits (at most 300 s) until FREE_PORT answers, and runs both there
LIM_SNIPPET = """VIONET_IPERF_REVERSE=1 VIONET_IPERF_NAME=iperf_rx . /plans/iperf.sh
result limited done
i=0
until iperf3 -c "$VIONET_HOST" -p %d -t 1 >/dev/null 2>&1 || [ $i -ge 300 ]; do
	sleep 1
	i=$((i + 1))
done
VIONET_IPERF_PORT=%d VIONET_IPERF_NAME=iperf_free . /plans/iperf.sh
VIONET_IPERF_PORT=%d VIONET_IPERF_REVERSE=1 VIONET_IPERF_NAME=iperf_free_rx . /plans/iperf.sh
""" % (FREE_PORT, FREE_PORT, FREE_PORT)
FREE_SNIPPET = "VIONET_IPERF_REVERSE=1 VIONET_IPERF_NAME=iperf_rx . /plans/iperf.sh\n"


def start_guest(d, name, net, snippet, port):
    g = guest.Guest(kernel="6.12", qemu="10", timeout=900,
                    netdev=guest.VhostUser("%s/%s.sock" % (d.dir, name)),
                    device_props={"mac": "52:54:00:12:34:5%d" % (6 if name == "lim" else 7)},
                    plan=["iperf"], snippet=snippet,
                    params={"ip": "10.0.%d.2/24" % net, "host": "10.0.%d.1" % net,
                            "iperf_secs": IPERF_SECS, "iperf_port": port})
    g.start()
    return g


def remove_limit(d):
    with open(d.conf, "w") as f:
        f.write((CONF % "").replace("@CTL@", d.ctl_socket).replace("@DIR@", d.dir))
    d.ctl("reload")


def test_rate_limits_with_real_guests(image):
    with N.netns("vr") as ns, daemon(CONF % RATES, ns) as d:
        for name, tap, net in (("lim", "vgl0", 1), ("free", "vgf0", 2)):
            d.wait_socket("%s/%s.sock" % (d.dir, name))
            N.ns_run(ns, "ip", "addr", "add", "10.0.%d.1/24" % net, "dev", tap)
        peers = Peers(ns)
        lim = free = None
        try:
            for port in (5201, 5202):
                peers.start("iperf3", "-s", "-p", str(port))
            lim = start_guest(d, "lim", 1, LIM_SNIPPET, 5201)
            lim.wait_for(r"VIONET-RESULT limited=done", 900)
            limited = d.stats()
            free = start_guest(d, "free", 2, FREE_SNIPPET, 5202)
            res_free = free.wait_done()
            before = d.stats()
            remove_limit(d)
            peers.start("iperf3", "-s", "-p", str(FREE_PORT))
            res = lim.wait_done()
            after = d.stats()
            iperf_lines = "\n".join(x for x in lim.log().splitlines() if "bits/sec" in x)
        finally:
            for g in (lim, free):
                if g is not None:
                    g.stop()
            peers.close()
        log = d.log()
    mbps = {k: float(res.get(k + ".mbps", 0)) for k in
            ("iperf", "iperf_rx", "iperf_free", "iperf_free_rx")}
    free_mbps = {k: float(res_free.get(k + ".mbps", 0)) for k in ("iperf", "iperf_rx")}
    print("\nlim (rate 200M): tx %(iperf).0f, rx %(iperf_rx).0f; after the reload: "
          "tx %(iperf_free).0f, rx %(iperf_free_rx).0f Mbit/s" % mbps)
    print("free: tx %(iperf).0f, rx %(iperf_rx).0f Mbit/s" % free_mbps)
    print(iperf_lines)
    print("lim: tx retransmits %s; held tx %d, rx %d times; tap dropped %d" % (
        res.get("iperf.retr"), limited["lim/0"]["counters"].get("tx_rate_held", 0),
        limited["lim/0"]["counters"].get("rx_rate_held", 0), limited["lim/0"]["tap_dropped"]))
    # what holds however busy the host is
    assert res["rc"] == 0 and res_free["rc"] == 0, (res, res_free)
    for k in ("iperf", "iperf_rx"):
        assert mbps[k] <= LIMIT * 1.1, (k, mbps[k], iperf_lines)
    assert res["iperf.retr"] == "0"
    c = limited["lim/0"]["counters"]
    assert c["tx_rate_held"] > 0 and c["rx_rate_held"] > 0
    cf = after["free/0"]["counters"]
    assert cf.get("tx_rate_held", 0) == 0 and cf.get("rx_rate_held", 0) == 0
    assert after["lim/0"]["session_pid"] == before["lim/0"]["session_pid"]
    assert after["lim/0"]["worker_pids"] == before["lim/0"]["worker_pids"]
    assert after["lim/0"]["rate"]["tx"]["bits_per_s"] == 0
    assert log.count("lim/0: VMM connected") == 1, log
    assert "lim/0: rate limits changed" in log
    # The rest needs guests that can go faster than the limit: under TCG on
    # a host whose CPUs others keep busy they may not (their emulation is
    # the bottleneck), and then a limited run below the limit says nothing.
    capacity = {"lim tx": mbps["iperf_free"], "lim rx": mbps["iperf_free_rx"],
                "free tx": free_mbps["iperf"], "free rx": free_mbps["iperf_rx"]}
    slow = {k: v for k, v in capacity.items() if v < LIMIT * 1.5}
    if slow:
        pytest.skip("without a limit the guests reached only %s Mbit/s (load %.1f): too "
                    "busy a host to check the limited runs against 200 Mbit/s +-10 %%"
                    % (slow, os.getloadavg()[0]))
    for k in ("iperf", "iperf_rx"):
        assert LIMIT * 0.9 <= mbps[k], (k, mbps[k], iperf_lines)
