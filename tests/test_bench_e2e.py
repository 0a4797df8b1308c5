"""Smoke test of bench/e2e.py: one short round on vionetd with a real guest.

Runs the benchmark as the operator would (a subprocess, --json), bounded in
time, and checks the report's shape: every key there, vionetd's figures
measured (> 0, with the CPU cost per GB from its workers), the backends not
run reported null with a reason, and vhost_net's reason naming the missing
/dev/vhost-net on a host without it. Also checks, without booting, that
every backend gets the same virtio-net-pci properties.
"""
import json
import os
import subprocess
import sys

import pytest

from bench import e2e
from tests import guest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {"accel", "vionetd", "vionetd_nooffload", "qemu_tap", "qemu_tap_nooffload",
        "vhost_net", "ratio_tx_vs_qemu_tap", "ratio_rx_vs_qemu_tap",
        "ratio_tx_nooffload_vs_qemu_tap", "ratio_rx_nooffload_vs_qemu_tap",
        "irqs_vs_qemu_tap", "offload_gain_tx", "vionetd_cpu_s_per_gb", "uso_gain",
        "runs", "device_props", "guest"}
# per backend, per direction ("tx", "rx")
GUEST_KEYS = ("guest_irqs_per_gb", "kicks_per_gb", "frames_per_notification",
              "host_cpu_s_per_gb")


def test_every_backend_gets_the_same_device():
    for acc in ("tcg", "kvm"):
        argvs = []
        for b, nd in (("vionetd", guest.VhostUser("/tmp/x.sock")),
                      ("qemu_tap", guest.Tap("t0")), ("qemu_tap_nooffload", guest.Tap("t0")),
                      ("vhost_net", e2e.VhostNetTap("t0"))):
            boot = e2e.Boot(b, 0, 2, 0, acc)
            a = boot.guest(nd).argv("/tmp/s")
            argvs.append(a[a.index("-device") + 1])
            # a user's 1-vCPU VM with the accelerator's default CPU model
            assert a[a.index("-smp") + 1] == "1" and "-cpu" not in a, a
        assert len(set(argvs)) == 1, argvs
        assert ("event_idx=off" in argvs[0]) == (acc == "tcg")
    a = e2e.Boot("vhost_net", 0, 2, 0, "tcg").guest(e2e.VhostNetTap("t0")).argv("/tmp/s")
    assert "vhost=on" in " ".join(a)


def test_snippet_runs_both_directions_and_uso_only_on_qemu_tap():
    s = e2e.snippet("vionetd", 7, 3, "on")
    assert "VIONET_IPERF_REVERSE=0" in s and "VIONET_IPERF_REVERSE=1" in s
    assert "VIONET_IPERF_SECS=7" in s and "udpgso_send" not in s
    s = e2e.snippet("qemu_tap", 7, 3, "off")
    assert s.index("segmentation off") < s.index("segmentation on")
    # the guest's counters around each run, markers for the host's samples
    assert s.index("netcount tx0") < s.index("REVERSE=0") < s.index("netcount tx1") \
        < s.index("bench-mid") < s.index("netcount rx0") < s.index("REVERSE=1") \
        < s.index("netcount rx1") < s.index("bench-end")
    assert "/proc/interrupts" in s and "ethtool -S" in s


def test_guest_cost_from_counters():
    res = {}
    for d, n in (("tx", 0), ("rx", 1)):
        for k, v0, v1 in (("irq_in", 10, 20), ("irq_out", 5, 105), ("irq_cfg", 0, 0),
                          ("kick_rx", 0, 10), ("kick_tx", 0, 200), ("rx_bytes", 0, 10**8),
                          ("tx_bytes", 0, 4 * 10**8), ("rx_packets", 0, 500),
                          ("tx_packets", 0, 1000)):
            res[f"{d}0.{k}"], res[f"{d}1.{k}"] = str(v0), str(v1)
    smp = {m: {"qemu": (1.0 * i, 2.0 * i), "pids": {}, "machine": (0, 1)}
           for i, m in enumerate(("begin", "mid", "end"))}
    c = e2e.guest_cost(res, smp)
    assert c["guest_irqs_per_gb"]["tx"] == 220.0         # 110 irqs / 0.5 GB
    assert c["kicks_per_gb"]["rx"] == 420.0
    f = c["frames_per_notification"]["tx"]
    assert f["tx_per_kick"] == 5.0 and f["tx_per_irq"] == 10.0 and f["rx_per_irq"] == 50.0
    assert c["host_cpu_s_per_gb"]["tx"] == {"vcpu": 2.0, "qemu_other": 2.0,
                                            "backend": 2.0, "total": 4.0}


@pytest.mark.guest
@pytest.mark.root
def test_bench_e2e_smoke():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not guest.images_built():
        pytest.skip("guest images missing: run scripts/guest-image.sh")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "e2e.py"), "--json",
                        "--rounds", "1", "--seconds", "2", "--only", "vionetd"],
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert KEYS <= set(res), set(res)
    assert res["accel"] in ("kvm", "tcg")
    assert res["guest"]["smp"] == 1
    v = res["vionetd"]
    assert v["tx_gbit_s"] > 0 and v["rx_gbit_s"] > 0, (v, p.stderr)
    for k in GUEST_KEYS:
        assert set(v[k]) == {"tx", "rx"}, (k, v[k])
    assert v["guest_irqs_per_gb"]["rx"] > 0 and v["kicks_per_gb"]["tx"] > 0
    assert v["frames_per_notification"]["tx"]["tx_per_kick"] > 0
    assert v["host_cpu_s_per_gb"]["tx"]["vcpu"] > 0
    assert v["device_per_gb"]["tx"]["tx_frames_per_notification"] > 0
    assert v["cpu_s_per_gb"] > 0 and res["vionetd_cpu_s_per_gb"] == v["cpu_s_per_gb"]
    assert v["uso"] is None and "has_uso" in v["uso_why"]
    for b in ("vionetd_nooffload", "qemu_tap", "qemu_tap_nooffload", "vhost_net"):
        assert res[b]["tx_gbit_s"] is None and res[b]["rx_gbit_s"] is None
        assert res[b]["why"], res[b]
        assert all(res[b][k] is None for k in GUEST_KEYS)
    if not os.path.exists("/dev/vhost-net"):
        assert "vhost-net" in res["vhost_net"]["why"]
    assert res["ratio_tx_vs_qemu_tap"] is None and "ratio_tx_vs_qemu_tap" in res["why"]
    [run] = res["runs"]
    assert run["backend"] == "vionetd" and run["bytes_moved"] > 0
    assert run["tx_gbit_s"] == v["tx_gbit_s"]
