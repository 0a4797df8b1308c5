"""Offloads across topologies, with real guests on vionetd (issue 6, items 4
and 5): where a frame goes decides who must finish it, and each test here
checks the frames where the proof is, not only that data arrived.

1. VM to VM through a switch (two guests, one Linux bridge): the offload
   metadata travels with the frame from one guest's TX ring, through two
   taps and the bridge, into the other guest's RX ring; nobody computes a
   checksum or cuts a segment on the way.
2. VM to a namespace outside the bridge, through a veth without offloads:
   every frame that arrives there was finished by Linux on the way out of
   the bridge, and a capture checks every TCP checksum independently.
3. A guest that cannot take partial checksums (no GUEST_CSUM) gets only
   complete ones and verifies them itself; vionetd's "rx csum software"
   completes them for a guest that has GUEST_CSUM; and a guest that turns
   an RX offload off at run time (ethtool) is held to what it asked for.
4. A local interface: busybox udhcpc in the guest takes its lease from
   vionetd's DHCP server, the guest reaches the host, and vionetctl shows
   the lease.
Also: `vionetd -n -f etc/vionetd.conf` accepts the example configuration.

Every test boots 6.12 guests on QEMU 10 (TCG here: a boot is a few seconds,
the transfers are kept to a few MiB) and cleans up its namespaces, daemon
and QEMU whatever happens (netns(), daemon() and Guest are context
managers).
"""
import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import threading

import pytest

from tests import guest
from tests import netns as N
from tests.daemon import daemon
from tests.test_guest_image import Peers

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
XFER = 2 * 1024 * 1024
GUEST_CSUM, GUEST_TSO4 = 1, 7
ETH_MAX = 1514                  # an untagged Ethernet frame at MTU 1500
NO_GUEST_RX_OFFLOADS = {"guest_csum": "off", "guest_tso4": "off", "guest_tso6": "off",
                        "guest_ecn": "off", "guest_ufo": "off"}




def counters(d, key):
    return d.stats()[key]["counters"]


def nonzero(c):
    return {k: v for k, v in c.items() if v}


def assert_clean(c):
    """No frame refused, no ring error, no software fallback that failed."""
    bad = {k: v for k, v in c.items()
           if v and ("refused" in k or "ring_" in k or k.endswith("_fail")
                     or k.endswith("bad_hdr"))}
    assert not bad, c


def snmp_clean(res, prefix="snmp"):
    """The guest verified what it received and found no bad checksum."""
    assert res[prefix + ".tcp_incsumerrors"] == "0", res
    assert res[prefix + ".udp_incsumerrors"] == "0", res
    assert res[prefix + ".ip_inhdrerrors"] == "0", res


# ---- RFC 1071, written here: an implementation independent of vionetd's C ----

def ones_sum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def frame_ok(frame):
    """(is IPv4 TCP, checksums right) for one Ethernet frame as captured.
    A right checksum makes the one's complement sum of what it covers
    (with the checksum in place) 0xffff (RFC 1071)."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return False, True
    ihl = (frame[14] & 0xF) * 4
    total = struct.unpack("!H", frame[16:18])[0]
    ip = frame[14:14 + ihl]
    seg = frame[14 + ihl:14 + total]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, len(seg))
    return True, (ones_sum(ip) == 0xFFFF and ones_sum(pseudo + seg) == 0xFFFF
                  and len(frame) <= ETH_MAX)


class Capture(threading.Thread):
    """AF_PACKET capture of the frames arriving on ifname in ns (frames the
    namespace sends itself are skipped: they are not what we check). Keeps
    a summary per TCP frame, not the frames."""

    def __init__(self, ns, ifname, src_ip):
        super().__init__(daemon=True)
        with N.inside(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)    # SO_RCVBUFFORCE
        self.sock.bind((ifname, 0))
        self.sock.settimeout(0.2)
        self.src = socket.inet_aton(src_ip)
        self.tcp = self.bad = self.payload = self.biggest = 0
        self.examples = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                frame, addr = self.sock.recvfrom(70000)
            except socket.timeout:
                continue
            except OSError:
                return
            if addr[2] == socket.PACKET_OUTGOING or frame[26:30] != self.src:
                continue
            is_tcp, ok = frame_ok(frame)
            if not is_tcp:
                continue
            self.tcp += 1
            self.biggest = max(self.biggest, len(frame))
            ihl = (frame[14] & 0xF) * 4
            total = struct.unpack("!H", frame[16:18])[0]
            self.payload += total - ihl - (frame[14 + ihl + 12] >> 4) * 4
            if not ok:
                self.bad += 1
                if len(self.examples) < 3:
                    self.examples.append(frame[:80].hex())

    def finish(self):
        self.stop.set()
        self.join(5)
        self.sock.close()


# ---- 1. VM to VM through a switch ---------------------------------------------

PAIR_CONF = """socket "@CTL@"
switch "sw" { interface "%s" }
vm "a" { interface { socket "@DIR@/a.sock"  lladdr 52:54:00:00:0a:01  switch "sw" } }
vm "b" { interface { socket "@DIR@/b.sock"  lladdr 52:54:00:00:0a:02  switch "sw" } }
"""


@pytest.mark.guest
@pytest.mark.root
def test_vm_to_vm_through_a_switch(image):
    """Two guests on one bridge: each serves a file over HTTP and fetches the
    other's (sha256 at both ends), and b runs iperf3 to a both ways.

    How the frames are proved right: both guests' kernels verify nothing
    they need not (the frames arrive partially checksummed or as GSO
    super-frames), so the proof is that the metadata travelled intact:
    vionetd's counters show each sender handed over GSO super-frames
    (tx_gso_frames > 0) and vionetd neither completed a checksum nor cut a
    segment on the way (tx_sw_csum == tx_sw_segmented == 0, rx_sw_csum == 0),
    the receiving side was given frames larger than the MTU (rx bytes per
    frame above 1514: the bridge did not segment, the super-frame went
    through), and the data arrived whole (sha256) with no checksum error
    counted by either guest (/proc/net/snmp InCsumErrors 0)."""
    with N.netns("vp") as ns:
        N.disable_ipv6(ns)
        br = N.unique("br")
        N.ns_run(ns, "ip", "link", "add", br, "type", "bridge")
        N.ns_run(ns, "ip", "link", "set", br, "type", "bridge", "stp_state", "0",
                 "forward_delay", "0")
        N.ns_run(ns, "ip", "link", "set", br, "up")
        with daemon(PAIR_CONF % br, ns) as d:
            d.wait_socket(d.dir + "/a.sock")
            d.wait_socket(d.dir + "/b.sock")
            ga, gb = ("10.0.1.2", "10.0.1.3")
            common = {"xfer_bytes": XFER, "iperf_secs": 3, "timeout": 800, "pair_wait": 300}
            a = guest.Guest(kernel="6.12", qemu="10", timeout=900,
                            netdev=guest.VhostUser(d.dir + "/a.sock"),
                            device_props={"mac": "52:54:00:00:0a:01"},
                            plan=["vmpair", "snmp"],
                            params=dict(common, ip=ga + "/24", peer=gb, role="server"))
            b = guest.Guest(kernel="6.12", qemu="10", timeout=900,
                            netdev=guest.VhostUser(d.dir + "/b.sock"),
                            device_props={"mac": "52:54:00:00:0a:02"},
                            plan=["vmpair", "snmp"],
                            params=dict(common, ip=gb + "/24", peer=ga, role="client"))
            with a, b:
                ra = a.wait_done()
                rb = b.wait_done()
                log = "--- a ---\n%s\n--- b ---\n%s\n--- vionetd ---\n%s" % (
                    a.log(), b.log(), d.log())
                ca, cb = counters(d, "a/0"), counters(d, "b/0")
    print("\nVM to VM: iperf3 b->a %s, a->b %s Mbit/s; a: %s\nb: %s"
          % (rb.get("iperf.mbps"), rb.get("iperf_rx.mbps"), nonzero(ca), nonzero(cb)))
    assert ra["rc"] == 0 and rb["rc"] == 0, log
    for src, dst in ((ra, rb), (rb, ra)):
        assert int(src["pair.tx_bytes"]) == int(dst["pair.rx_bytes"]) == XFER, log
        assert src["pair.tx_sha256"] == dst["pair.rx_sha256"], log
        snmp_clean(src)
    assert float(rb["iperf.mbps"]) > 0 and float(rb["iperf_rx.mbps"]) > 0, log
    for c in (ca, cb):
        assert_clean(c)
        assert c["tx_gso_frames"] > 0, c          # the metadata left the guest
        assert c.get("tx_sw_csum", 0) == 0 and c.get("tx_sw_segmented", 0) == 0, c
        assert c["tx_passthrough"] == c["tx_frames"], c
        assert c.get("rx_sw_csum", 0) == 0, c
        # ... and reached the other guest unsegmented
        assert c["rx_bytes"] > ETH_MAX * c["rx_frames"], c


# ---- 2. VM to a namespace outside the bridge -----------------------------------

OUT_CONF = """socket "@CTL@"
switch "sw" { interface "%s" }
vm "g" { interface { socket "@DIR@/g.sock"  lladdr 52:54:00:00:0b:01  switch "sw" } }
"""


@pytest.mark.guest
@pytest.mark.root
def test_vm_to_host_outside_the_bridge(image):
    """The guest sends a file to a host in another namespace, reached through
    the bridge and a veth pair whose bridge end has every offload off.

    How the frames are proved right: the guest hands vionetd GSO
    super-frames with partial checksums (tx_gso_frames > 0) and vionetd
    passes them to the tap as they are (tx_sw_csum == 0): the only place
    they can be finished is the way out of the bridge. The bridge end of
    the veth has tx-checksumming, TSO and GSO off, so the kernel must
    segment each super-frame and complete every checksum in software
    before the veth carries it (validate_xmit_skb); had the veth kept tx
    checksumming, the frame would cross into the other namespace still
    CHECKSUM_PARTIAL and the capture would see an unfinished checksum. The
    capture is an AF_PACKET socket on the far end of the veth, in the
    outside namespace, where no metadata is left: it reads the bytes as a
    physical wire would carry them. Every TCP frame from the guest is
    checked there with this file's RFC 1071 sum (IPv4 header and TCP with
    its pseudo-header) and for its size (no frame above 1514 bytes), the
    captured payload covers the whole file, and the file's sha256 matches
    at both ends."""
    with N.netns("vo") as dns, N.netns("vw") as wns:
        for ns in (dns, wns):
            N.disable_ipv6(ns)
        br, vd, vw = N.unique("br"), N.unique("vd"), N.unique("vw")
        N.ns_run(dns, "ip", "link", "add", br, "type", "bridge")
        N.ns_run(dns, "ip", "link", "set", br, "type", "bridge", "stp_state", "0",
                 "forward_delay", "0")
        N.ns_run(dns, "ip", "link", "set", br, "up")
        with N.veth_pair(vd, dns, vw, wns):
            N.ns_run(dns, "ethtool", "-K", vd, "tx", "off", "tso", "off", "gso", "off")
            k = N.ns_run(dns, "ethtool", "-k", vd).stdout
            assert "tx-checksumming: off" in k and "tcp-segmentation-offload: off" in k, k
            N.ns_run(dns, "ip", "link", "set", vd, "master", br)
            N.ns_run(wns, "ip", "addr", "add", "10.0.2.1/24", "dev", vw)
            cap = Capture(wns, vw, "10.0.2.2")
            peers = Peers(wns)
            try:
                xfer = peers.start(sys.executable, os.path.join(HERE, "guest_peer.py"),
                                   "xfer", "5301", str(XFER), "600")
                assert peers.readline(xfer, 10) == "ready"
                cap.start()
                with daemon(OUT_CONF % br, dns) as d:
                    d.wait_socket(d.dir + "/g.sock")
                    g = guest.Guest(kernel="6.12", qemu="10", timeout=600,
                                    netdev=guest.VhostUser(d.dir + "/g.sock"),
                                    device_props={"mac": "52:54:00:00:0b:01"},
                                    plan=["xfer", "snmp"],
                                    params={"ip": "10.0.2.2/24", "host": "10.0.2.1",
                                            "xfer_bytes": XFER, "timeout": 500})
                    with g:
                        res = g.wait_done()
                        log = g.log() + "\n--- vionetd ---\n" + d.log()
                        c = counters(d, "g/0")
                host_out, _ = peers.finish(xfer)
            finally:
                cap.finish()
                peers.close()
    print("\noutside: %d TCP frames captured, %d bad, largest %d bytes, payload %d; %s"
          % (cap.tcp, cap.bad, cap.biggest, cap.payload, nonzero(c)))
    assert res["rc"] == 0, log
    host = json.loads(host_out.strip().splitlines()[-1])
    assert host["guest_tx_bytes"] == int(res["xfer.tx_bytes"]) == XFER, (host, log)
    assert host["guest_tx_sha256"] == res["xfer.tx_sha256"], (host, log)
    assert host["guest_rx_sha256"] == res["xfer.rx_sha256"], (host, log)
    snmp_clean(res)
    assert_clean(c)
    assert c["tx_gso_frames"] > 0 and c["tx_partial_csum_frames"] > 0, c
    assert c.get("tx_sw_csum", 0) == 0 and c.get("tx_sw_segmented", 0) == 0, c
    assert cap.bad == 0, cap.examples
    assert cap.payload >= XFER and cap.biggest <= ETH_MAX, vars(cap)


# ---- 3. guests and receive checksums ---------------------------------------------

ONE_CONF = """socket "@CTL@"
vm "g" {
    interface "%s" {
        socket "@DIR@/g.sock"
        lladdr 52:54:00:00:0c:01
%s
    }
}
"""
HOST_IP, GUEST_IP = "10.0.3.1", "10.0.3.2"
# iperf3 host to guest, then the guest's counters (after every transfer)
IPERF_RX = "VIONET_IPERF_REVERSE=1 VIONET_IPERF_NAME=iperf_rx . /plans/iperf.sh\n" \
    ". /plans/snmp.sh\n"


def host_to_guest(policy="", props=None, snippet=IPERF_RX, plan=("xfer",),
                  marks=(), timeout=600):
    """One guest on a tap with an address in the daemon's namespace; the
    host runs the xfer peer and an iperf3 server. marks: serial-log notes
    at which to snapshot the counters (returned by name, plus "end")."""
    with N.netns("vc") as ns:
        N.disable_ipv6(ns)
        tapname = N.unique("vt")
        with daemon(ONE_CONF % (tapname, policy), ns) as d:
            d.wait_socket(d.dir + "/g.sock")
            N.ns_run(ns, "ip", "addr", "add", HOST_IP + "/24", "dev", tapname)
            peers = Peers(ns)
            try:
                peers.start("iperf3", "-s", "-p", "5201")
                xfer = peers.start(sys.executable, os.path.join(HERE, "guest_peer.py"),
                                   "xfer", "5301", str(XFER), "600")
                assert peers.readline(xfer, 10) == "ready"
                g = guest.Guest(kernel="6.12", qemu="10", timeout=timeout,
                                netdev=guest.VhostUser(d.dir + "/g.sock"),
                                device_props=dict({"mac": "52:54:00:00:0c:01"}, **(props or {})),
                                plan=list(plan), snippet=snippet,
                                params={"ip": GUEST_IP + "/24", "host": HOST_IP,
                                        "xfer_bytes": XFER, "iperf_secs": 3,
                                        "timeout": timeout - 60})
                snaps = {}
                with g:
                    # the first plan starts once the driver is up: features are set
                    g.wait_for("VIONET-NOTE plan ", timeout)
                    show = d.ctl("show", "g").stdout
                    tap_k = N.ns_run(ns, "ethtool", "-k", tapname).stdout
                    for m in marks:
                        g.wait_for("VIONET-NOTE " + m, timeout)
                        snaps[m] = counters(d, "g/0")
                    res = g.wait_done()
                    snaps["end"] = counters(d, "g/0")
                    log = g.log() + "\n--- vionetd ---\n" + d.log()
                host_out, _ = peers.finish(xfer)
            finally:
                peers.close()
    host = json.loads(host_out.strip().splitlines()[-1])
    assert res["rc"] == 0, log
    assert "error" not in host, host
    assert int(res["xfer.rx_bytes"]) == host["guest_rx_bytes"] == XFER, log
    assert res["xfer.rx_sha256"] == host["guest_rx_sha256"], log
    assert res["xfer.tx_sha256"] == host["guest_tx_sha256"], log
    return res, snaps, tap_k, show, log


@pytest.mark.guest
@pytest.mark.root
def test_guest_without_guest_csum_gets_complete_checksums(image):
    """QEMU's device with guest_csum=off (and the receive GSO bits off, which
    QEMU would otherwise keep): the guest does not negotiate GUEST_CSUM.

    How the frames are proved right: without GUEST_CSUM vionetd turns the
    tap's offloads off, so the kernel completes every checksum before it
    hands a frame to vionetd (the tap shows tx-checksumming off), vionetd
    never sees a partial one (rx_sw_csum 0) and sends every frame with a
    zero header, so the guest's stack verifies every checksum itself
    (CHECKSUM_NONE): TCP and UDP InCsumErrors stay 0 over thousands of
    segments received (iperf3 -R and a 2 MiB file whose sha256 matches;
    InSegs counts after the guest's GRO, which verifies each segment's
    checksum before merging)."""
    res, snaps, tap_k, show, log = host_to_guest(props=NO_GUEST_RX_OFFLOADS)
    c = snaps["end"]
    assert not guest.feature_bit(res["features"], GUEST_CSUM), res["features"]
    assert not guest.feature_bit(res["features"], GUEST_TSO4), res["features"]
    assert "tx-checksumming: off" in tap_k, tap_k
    assert float(res["iperf_rx.mbps"]) > 0, log
    snmp_clean(res)
    assert int(res["snmp.tcp_insegs"]) > 1000, res
    assert c.get("rx_sw_csum", 0) == 0, c
    assert_clean(c)


@pytest.mark.guest
@pytest.mark.root
def test_rx_csum_software_completes_partial_checksums(image):
    """Policy "offload rx csum software": the guest has GUEST_CSUM, the tap
    has TUN_F_CSUM, so the host's own stack hands the tap partially
    checksummed frames, and vionetd completes each one and marks it
    DATA_VALID before the guest sees it.

    How the frames are proved right: rx_sw_csum counts every completion
    (> 0: the kernel did give partial frames) and none failed
    (rx_sw_csum_fail 0); no receive GSO was offered (the policy allows none
    with software checksums), so every frame was a single segment; the
    data arrived whole (sha256, iperf3 -R) and the guest counted no
    checksum error. (A DATA_VALID frame is not re-verified by the guest:
    the checksum values themselves are checked against an independent
    implementation in the tests of the C core, test_daemon_rx.py.)"""
    res, snaps, tap_k, show, log = host_to_guest(policy="        offload rx csum software")
    c = snaps["end"]
    assert guest.feature_bit(res["features"], GUEST_CSUM), res["features"]
    assert not guest.feature_bit(res["features"], GUEST_TSO4), res["features"]
    assert "tx-checksumming: on" in tap_k, tap_k
    assert "rx software checksum" in show, show
    assert c["rx_sw_csum"] > XFER // 1500, c
    assert c["rx_bytes"] <= ETH_MAX * c["rx_frames"], c
    snmp_clean(res)
    assert_clean(c)


# The guest turns receive offloads off at run time, then receives a file.
# "rx off" (NETIF_F_RXCSUM) is fixed in virtio_net (not in hw_features), so
# ethtool refuses it; "rx-gro-hw off" is what the driver turns into
# VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET (clearing GUEST_TSO4/6, ECN, UFO, USO),
# the same command an XDP program sends (with GUEST_CSUM cleared too).
RX_OFF = """ethtool -K "$IF" rx off; result ethtool_rx_off.rc $?
ethtool -K "$IF" rx-gro-hw off; result ethtool_gro_hw_off.rc $?
ethtool -k "$IF" | grep -E '^(rx-checksumming|rx-gro-hw):'
note offloads-set
. /plans/xfer.sh
VIONET_SNMP_NAME=snmp . /plans/snmp.sh
"""


def run_rx_off(props=None):
    res, snaps, tap_k, show, log = host_to_guest(props=props, snippet=RX_OFF, plan=(),
                                                 marks=("offloads-set",))
    before, after = snaps["offloads-set"], snaps["end"]
    frames = after["rx_frames"] - before["rx_frames"]
    nbytes = after["rx_bytes"] - before["rx_bytes"]
    print("\nafter ethtool (%s): rx off rc %s, rx-gro-hw off rc %s; %d frames, %d bytes "
          "to the guest (%.0f per frame)" % (props, res["ethtool_rx_off.rc"],
                                             res["ethtool_gro_hw_off.rc"], frames, nbytes,
                                             nbytes / max(frames, 1)))
    snmp_clean(res)
    assert frames > 0
    return res, frames, nbytes, log


@pytest.mark.guest
@pytest.mark.root
@pytest.mark.xfail(strict=True, reason=(
    "QEMU handles VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET itself and tells a vhost-user "
    "backend nothing (net/vhost-user.c has no set_offload): vionetd keeps the tap's "
    "TUN_F_TSO4/6 and the guest still gets GSO frames it turned off"))
def test_guest_turning_rx_offloads_off_gets_no_gso(image):
    """After the guest turns its receive offloads off (ethtool rx-gro-hw off:
    VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET without the GUEST_TSO bits) it must
    be given no GSO super-frame. Proved on vionetd's side of the guest: the
    bytes per frame delivered after the change (counter deltas from the
    guest's "offloads-set" note to the end) stay at or under 1514, the
    largest single frame; checksums verified by the guest (InCsumErrors 0)
    and the file's sha256 match either way. Fails today: see the xfail."""
    res, frames, nbytes, log = run_rx_off()
    assert res["ethtool_gro_hw_off.rc"] == "0", log    # the guest's driver accepted it
    assert nbytes <= ETH_MAX * frames, (frames, nbytes)


@pytest.mark.guest
@pytest.mark.root
def test_guest_offload_changes_refused_without_ctrl_guest_offloads(image):
    """The way to keep the guest and vionetd in agreement with today's QEMU:
    ctrl_guest_offloads=off on the device. The guest then cannot change its
    receive offloads (ethtool fails for rx and for rx-gro-hw), so whatever
    GSO and partial checksums it receives are what it negotiated; the data
    arrives whole and the guest counts no checksum error."""
    res, frames, nbytes, log = run_rx_off(props={"ctrl_guest_offloads": "off"})
    assert res["ethtool_rx_off.rc"] != "0", log
    assert res["ethtool_gro_hw_off.rc"] != "0", log


# ---- 4. a local interface and a real DHCP client -----------------------------------

LOCAL_CONF = """socket "@CTL@"
local prefix 100.80.0.0/24
vm "loc" {
    local interface "%s" {
        socket "@DIR@/loc.sock"
        lladdr 52:54:00:00:0d:01
        hostname "loc-guest"
    }
}
"""


@pytest.mark.guest
@pytest.mark.root
def test_local_interface_with_udhcpc(image):
    """The guest has no address on its command line: busybox udhcpc gets one
    from vionetd (DISCOVER/OFFER/REQUEST/ACK through the tx worker, the
    parent and the rx worker), the plan's script applies it, and the guest
    pings its router, the host side of the tap.

    How it is proved: the lease the guest reports is the /31 the host side
    has (router = the tap's address, guest = the next one, mask
    255.255.255.254, the hostname of the configuration), the kernel in the
    guest has that address and a default route through the router, three
    pings get three answers from the host's stack, and `vionetctl show`
    lists the same lease. (udhcpc sends from a raw socket and checks the
    replies' UDP checksums itself: a bad one would leave it without a
    lease.)"""
    with N.netns("vl") as ns:
        N.disable_ipv6(ns)
        tapname = N.unique("vl")
        with daemon(LOCAL_CONF % tapname, ns) as d:
            d.wait_socket(d.dir + "/loc.sock")
            addrs = N.ns_run(ns, "ip", "-4", "-o", "addr", "show", "dev", tapname).stdout
            host_ip = addrs.split()[3].split("/")[0]
            g = guest.Guest(kernel="6.12", qemu="10", timeout=400,
                            netdev=guest.VhostUser(d.dir + "/loc.sock"),
                            device_props={"mac": "52:54:00:00:0d:01"},
                            plan=["dhcp"], snippet="VIONET_HOST=$(ip route | "
                            "awk '/^default/ { print $3 }') . /plans/ping.sh\n",
                            params={"timeout": 120})
            with g:
                res = g.wait_done()
                log = g.log() + "\n--- vionetd ---\n" + d.log()
                show = d.ctl("show", "loc").stdout
                c = counters(d, "loc/0")
    print("\nlocal: lease %s via %s; %s" % (res.get("dhcp.ip"), res.get("dhcp.router"), show))
    assert "%s/31" % host_ip in addrs, addrs
    guest_ip = str(ipaddress.IPv4Address(host_ip) + 1)
    assert res["dhcp.rc"] == "0", log
    assert res["dhcp.ip"] == guest_ip, log
    assert res["dhcp.router"] == host_ip, log
    assert res["dhcp.mask"] == "31" and res["dhcp.subnet"] == "255.255.255.254", log
    assert res["dhcp.hostname"] == "loc-guest", log
    assert res["dhcp.serverid"] == host_ip, log
    assert res["dhcp.addr"] == guest_ip + "/31", log
    assert host_ip in res["dhcp.route"], log
    assert res["ping.sent"] == res["ping.received"] == "3", log
    assert res["rc"] == 0, log
    assert "lease %s" % guest_ip in show, show
    assert c["tx_dhcp_diverted"] >= 2, c        # at least DISCOVER and REQUEST
    assert_clean(c)


# ---- the example configuration -------------------------------------------------------

@pytest.mark.parametrize("path", [os.path.join(ROOT, "etc", "vionetd.conf")])
def test_example_configuration_checks(path):
    """`vionetd -n -f etc/vionetd.conf` (the command the rc script and an
    operator run) accepts the example, which has a local-interface VM and a
    switched VM."""
    p = subprocess.run([sys.executable, "-m", "vionetd.main", "-n", "-f", path],
                       capture_output=True, text=True, timeout=30, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "configuration OK" in p.stdout + p.stderr
    from vionetd import config
    c = config.load(path)
    ifaces = list(c.interfaces())
    assert any(i.local for i in ifaces if not c.vms[i.key.split("/")[0]].disabled)
    assert any(i.switch for i in ifaces if not c.vms[i.key.split("/")[0]].disabled)
