"""test_guest_image.py: the test guest boots and its network works.

Boots the 6.12 guest with QEMU 10 and the 6.1 guest with QEMU 7.2 on
QEMU's own tap backend (vhost=off), the tap's host side in a network
namespace of the test's own, and checks from both ends: the negotiated
virtio feature string, ping, an iperf3 run guest to host, a TCP file
transfer each way whose sha256 match at both ends, ethtool's view, a
shell snippet from the command line, and (6.12) UDP_SEGMENT datagrams
arriving intact at a receiver in the namespace.

This validates the image and the harness (tests/guest.py) independently
of vionetd; the vhost-user end-to-end tests build on both.  The cheap
tests at the top check the harness's command line without booting.
"""

import os
import select
import signal
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import guest  # noqa: E402
import guest_peer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
HOST_IP, GUEST_IP = "10.0.0.1", "10.0.0.2"
HOST_IP6, GUEST_IP6 = "fd00:76::1", "fd00:76::2"
# Run after the plans: the command-line snippet path, IPv6, and a ping
# that must fail (nothing answers at .99), so a result can be negative.
SNIPPET = f"""
result snippet "$(uname -r)"
ping6 -c 2 -W 2 {HOST_IP6} > /dev/null 2>&1
result ping6.rc $?
if ping -c 1 -W 1 10.0.0.99 > /dev/null 2>&1; then
	result nobody answered
else
	result nobody silent
fi
"""
MAC = "52:54:00:12:34:56"
VERSION_1, CSUM, HOST_TSO4, HOST_USO = 32, 0, 11, 56
XFER_BYTES = 2 * 1024 * 1024

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


# -- the harness's command line, no QEMU -----------------------------------

def test_cmdline_carries_plan_params_and_snippet():
    g = guest.Guest(kernel="6.1", qemu="7.2", plan=["ping", "iperf"],
                    params={"ip": "10.0.0.2/24", "host": "10.0.0.1"},
                    snippet="echo hi there", accel="tcg")
    line = g.cmdline()
    assert "console=ttyS0" in line
    assert "vionet.plan=ping,iperf" in line
    assert "vionet.ip=10.0.0.2/24" in line
    assert "vionet.sh=ZWNobyBoaSB0aGVyZQ==" in line


@pytest.mark.parametrize("params", [{"Bad": "x"}, {"ok": "two words"},
                                    {"ok": ""}, {"sh": "x" * 3000}])
def test_cmdline_rejects_what_init_could_not_parse(params):
    with pytest.raises(ValueError):
        guest.Guest(params=params, accel="tcg").cmdline()


def test_accel_follows_the_environment(monkeypatch):
    monkeypatch.setenv("VIONETD_ACCEL", "tcg")
    assert guest.accel() == "tcg"
    a = guest.Guest(accel=guest.accel()).argv("/tmp/s")
    assert a[a.index("-accel") + 1] == "tcg,thread=multi"
    monkeypatch.setenv("VIONETD_ACCEL", "kvm")
    assert guest.accel() == "kvm"
    monkeypatch.setenv("VIONETD_ACCEL", "hvf")
    with pytest.raises(ValueError):
        guest.accel()


def test_kernel_args_are_checked_and_passed():
    line = guest.Guest(kernel_args=["loglevel=7"], accel="tcg").cmdline()
    assert "loglevel=7" in line.split()
    with pytest.raises(ValueError):
        guest.Guest(kernel_args=["vionet.ip=1"], accel="tcg").cmdline()


def test_device_props_follow_the_known_quirks():
    vu = guest.VhostUser("/tmp/x.sock", reconnect=1)
    a72 = " ".join(guest.Guest(qemu="7.2", netdev=vu, accel="tcg")
                   .argv("/tmp/s"))
    a10 = " ".join(guest.Guest(qemu="10", netdev=vu, accel="tcg")
                   .argv("/tmp/s"))
    assert "vectors=0" in a72 and "vectors=0" not in a10
    assert "reconnect=1" in a72 and "reconnect-ms=1000" in a10
    assert "share=on" in a10 and "memory-backend-memfd" in a10
    tap = guest.Tap("t0")
    a = guest.Guest(netdev=tap, accel="tcg",
                    device_props={"guest_csum": "off", "romfile": None},
                    netns="ns0").argv("/tmp/s")
    dev = a[a.index("-device") + 1]
    assert a[:4] == ["ip", "netns", "exec", "ns0"]
    assert "event_idx=off" in dev and "guest_csum=off" in dev
    assert "romfile" not in dev and "vhost=off" in " ".join(a)


def test_qmp_socket_and_incoming_migration():
    g = guest.Guest(accel="tcg", qmp=True, incoming="unix:/tmp/in.sock")
    a = g.argv("/tmp/run/serial.log")
    assert a[a.index("-qmp") + 1] == "unix:/tmp/run/qmp.sock,server=on,wait=off"
    assert g.qmp_path == "/tmp/run/qmp.sock"
    assert a[a.index("-incoming") + 1] == "unix:/tmp/in.sock"
    plain = guest.Guest(accel="tcg").argv("/tmp/s")
    assert "-qmp" not in plain and "-incoming" not in plain


# -- host-side fixtures ------------------------------------------------------

def sh(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True,
                          timeout=30)



_seq = [0]


@pytest.fixture
def netns_tap():
    """A fresh namespace holding a tap with the host's address on it."""
    _seq[0] += 1
    ns = f"vgn{os.getpid()}x{_seq[0]}"
    tap = f"vgt{os.getpid() % 100000}x{_seq[0]}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "ip", "tuntap", "add", "dev", tap,
           "mode", "tap")
        sh("ip", "-n", ns, "addr", "add", f"{HOST_IP}/24", "dev", tap)
        sh("ip", "-n", ns, "addr", "add", f"{HOST_IP6}/64", "dev", tap,
           "nodad")
        sh("ip", "-n", ns, "link", "set", tap, "up")
        yield ns, tap
    finally:
        # Anything still running in the namespace is ours.
        pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
        for p in pids:
            try:
                os.kill(int(p), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip", "netns", "del", ns, check=False)


class Peers:
    """Host-side processes in the namespace; all killed by close()."""

    def __init__(self, ns):
        self.ns, self.procs = ns, []

    def start(self, *argv):
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
        self.procs.append(p)
        return p

    @staticmethod
    def readline(p, timeout):
        r, _, _ = select.select([p.stdout], [], [], timeout)
        if not r:
            raise AssertionError(f"peer {p.args} said nothing in {timeout}s")
        return p.stdout.readline().strip()

    @staticmethod
    def finish(p, timeout=20, sig=None):
        if sig is not None and p.poll() is None:
            os.killpg(p.pid, sig)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate(timeout=5)
        return out, err

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)


def keyvals(text):
    return dict(line.split("=", 1) for line in text.splitlines()
                if "=" in line)


# -- the real guests -----------------------------------------------------------

@needs_root
@pytest.mark.guest
@pytest.mark.root
@pytest.mark.parametrize("kernel,qemu", [("6.12", "10"), ("6.1", "7.2")])
def test_guest_on_qemu_tap(image, netns_tap, kernel, qemu, record_property):
    ns, tap = netns_tap
    peers = Peers(ns)
    try:
        iperf = peers.start("iperf3", "-s", "-1", "-p", "5201")
        xfer = peers.start(sys.executable, os.path.join(HERE, "guest_peer.py"),
                           "xfer", "5301", str(XFER_BYTES), "600")
        assert peers.readline(xfer, 10) == "ready"
        udp = peers.start(os.path.join(guest.OUT, "bin", "udpgso_send"),
                          "recv", "5401", "-t", "600", "-i", "600",
                          "-r", str(16 << 20))
        assert peers.readline(udp, 10) == "listening=5401"

        plan = ["ping", "iperf", "xfer", "ethtool"]
        params = {"ip": f"{GUEST_IP}/24", "ip6": f"{GUEST_IP6}/64",
                  "host": HOST_IP, "iperf_secs": 3,
                  "xfer_bytes": XFER_BYTES, "udp_bytes": 1 << 20}
        if kernel == "6.12":
            plan.append("udpgso")
            # Negotiated but off by default: turn USO on so the device
            # (and the host's tap) get whole UDP_L4 super-frames.
            params["offload"] = "tx-udp-segmentation:on"
        g = guest.Guest(
            kernel=kernel, qemu=qemu, netdev=guest.Tap(tap), netns=ns,
            device_props={"mac": MAC}, plan=plan, timeout=600,
            params=params,
            snippet=SNIPPET)
        with g:
            res = g.wait_done()
            log = g.log()
        iperf_out, _ = peers.finish(iperf)
        xfer_out, _ = peers.finish(xfer)
        udp_out, _ = peers.finish(udp, sig=signal.SIGTERM)
    finally:
        peers.close()

    print(f"\n{kernel}/QEMU {qemu} ({g.accel}): boot to first result "
          f"{g.boot_seconds:.1f}s (guest uptime {res.get('boot_seconds')}s),"
          f" iperf3 guest->host {res.get('iperf.mbps')} Mbit/s")
    record_property("boot_seconds", g.boot_seconds)
    record_property("iperf_mbps", res.get("iperf.mbps"))
    assert res["rc"] == 0, log
    assert res["kernel"].startswith(kernel + "."), log
    assert res["snippet"] == res["kernel"]
    assert res["ping6.rc"] == "0" and res["nobody"] == "silent"
    assert res["mac"] == MAC and res["driver"] == "virtio_net"

    feats = res["features"]
    assert len(feats) == 64 and set(feats) <= {"0", "1"}, feats
    assert guest.feature_bit(feats, VERSION_1)
    assert guest.feature_bit(feats, CSUM) and guest.feature_bit(feats,
                                                                 HOST_TSO4)
    # Only the 6.12 driver knows USO; QEMU 10 offers it over a tap that can.
    assert guest.feature_bit(feats, HOST_USO) == (kernel == "6.12"), feats
    assert res["ethtool.tx-checksumming"] == "on"

    assert res["ping.received"] == res["ping.sent"] == "3"
    assert float(res["iperf.mbps"]) > 0
    assert "receiver" in iperf_out

    guest_peer.check_xfer(xfer_out, res, XFER_BYTES)

    if kernel == "6.12":
        got = keyvals(udp_out)
        assert res["offload.tx-udp-segmentation.rc"] == "0", log
        assert res["ethtool.tx-udp-segmentation"] == "on", log
        assert res["udpgso.gso"] == "1" and res["udpgso.rc"] == "0", log
        assert int(res["udpgso.sent_bytes"]) == 1 << 20
        assert int(got["datagrams"]) > 0 and got["bad"] == "0", udp_out
        assert int(got["bytes"]) <= 1 << 20
        # With a receive buffer larger than the burst, loss is rare (the
        # CPUs are shared); every datagram that came is intact.
        assert int(got["datagrams"]) >= int(res["udpgso.sent_datagrams"]) // 2
        print(f"udpgso: {got['datagrams']}/{res['udpgso.sent_datagrams']} "
              "datagrams arrived")


@needs_root
@pytest.mark.root
def test_udpgso_tool_counts_and_checks_on_loopback(image):
    """The receiver counts what the sender wrote, segment by segment."""
    ns = f"vgu{os.getpid()}"
    tool = os.path.join(guest.OUT, "bin", "udpgso_send")
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        peers = Peers(ns)
        try:
            r = peers.start(tool, "recv", "7000", "-t", "30", "-i", "2")
            assert peers.readline(r, 10) == "listening=7000"
            s = sh("ip", "netns", "exec", ns, tool, "send", "::1", "7000",
                   "-b", "100000", "-s", "1000")
            sent = keyvals(s.stdout)
            out, _ = peers.finish(r, timeout=20)
        finally:
            peers.close()
        got = keyvals(out)
        assert sent["gso"] == "1" and sent["sent_datagrams"] == "100"
        assert got["bad"] == "0" and int(got["datagrams"]) > 0
        assert int(got["highest_seq"]) <= 100
        bad = sh("ip", "netns", "exec", ns, tool, "send", "::1", "7000",
                 "-s", "4", check=False)
        assert bad.returncode == 1     # a segment too small is refused
    finally:
        sh("ip", "netns", "del", ns, check=False)
