"""Rate limits with real guests (TCG or KVM): iperf3 against `rate tx|rx 200M`.

Two VMs on one daemon, each on a tap of its own in a namespace of the
test's: "lim" with `rate tx 200M` and `rate rx 200M`, "free" without a
limit, both booted at once. lim's guest runs iperf3 to the host (its
transmit) and from the host (-R, its receive); the daemon's counters say
the limit held traffic back; then the host removes the limit by reload
while the guest waits, and the guest runs both again. free's guest runs
iperf3 both ways meanwhile.

Checked: lim's four runs, within 10 % of 200 Mbit/s while limited (TCP
payload: the limit counts whole frames, headers too), with no TCP
retransmit on transmit (the tx worker leaves frames in the ring: no drop);
after the reload, faster than the limit by half again, on the same VMM
connection, session and workers (the log says the VMM connected once);
free's runs are never held (its rate_held counters are 0) and beat the
limit too.
"""
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
# lim's guest: iperf (its transmit) then its receive, a pause while the host
# reloads without the limit, both again
# (the guest cannot hear the host: it gives the reload RELOAD_PAUSE seconds)
RELOAD_PAUSE = 5
LIM_SNIPPET = """VIONET_IPERF_REVERSE=1 VIONET_IPERF_NAME=iperf_rx . /plans/iperf.sh
result limited done
sleep %d
VIONET_IPERF_NAME=iperf_free . /plans/iperf.sh
VIONET_IPERF_REVERSE=1 VIONET_IPERF_NAME=iperf_free_rx . /plans/iperf.sh
""" % RELOAD_PAUSE
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
            free = start_guest(d, "free", 2, FREE_SNIPPET, 5202)
            lim.wait_for(r"VIONET-RESULT limited=done", 900)
            before = d.stats()
            with open(d.conf, "w") as f:
                f.write((CONF % "").replace("@CTL@", d.ctl_socket).replace("@DIR@", d.dir))
            d.ctl("reload")
            res, res_free = lim.wait_done(), free.wait_done()
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
        res.get("iperf.retr"), before["lim/0"]["counters"].get("tx_rate_held", 0),
        before["lim/0"]["counters"].get("rx_rate_held", 0), before["lim/0"]["tap_dropped"]))
    assert res["rc"] == 0 and res_free["rc"] == 0, (res, res_free)
    for k in ("iperf", "iperf_rx"):
        assert LIMIT * 0.9 <= mbps[k] <= LIMIT * 1.1, (k, mbps[k], iperf_lines)
    assert res["iperf.retr"] == "0"
    c = before["lim/0"]["counters"]
    assert c["tx_rate_held"] > 0 and c["rx_rate_held"] > 0
    for k in ("iperf_free", "iperf_free_rx"):
        assert mbps[k] > LIMIT * 1.5, (k, mbps[k])
    for k in ("iperf", "iperf_rx"):
        assert free_mbps[k] > LIMIT * 1.5, (k, free_mbps[k])
    cf = after["free/0"]["counters"]
    assert cf.get("tx_rate_held", 0) == 0 and cf.get("rx_rate_held", 0) == 0
    assert after["lim/0"]["session_pid"] == before["lim/0"]["session_pid"]
    assert after["lim/0"]["worker_pids"] == before["lim/0"]["worker_pids"]
    assert after["lim/0"]["rate"]["tx"]["bits_per_s"] == 0
    assert log.count("lim/0: VMM connected") == 1, log
    assert "lim/0: rate limits changed" in log
