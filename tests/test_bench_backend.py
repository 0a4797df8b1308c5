"""Smoke run of bench/backend.py: the benchmark works on a clean checkout.

It builds tools/vhostbench.c, starts vionetd in a namespace of its own and
drives it as a VMM would, for half a second per kind; here we only check
that it ran end to end: every documented key is there and frames moved,
through vionetd (its own counters and the tap's statistics agree with what
the frontend counted) and through the bare tap (the limit).
"""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.root

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {"vionetd_gbit_s", "vionetd_mpps", "limit_gbit_s", "ratio_vs_limit", "vionetd_cpu_s"}


def bench(*kinds):
    cmd = [sys.executable, os.path.join(ROOT, "bench", "backend.py"), "--json",
           "--seconds", "0.5"]
    for k in kinds:
        cmd += ["--only", k]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def result():
    return bench("tx_1514", "rx_1514")


@pytest.mark.parametrize("kind", ["tx_1514", "rx_1514"])
def test_keys_and_frames_moved(result, kind):
    r = result[kind]
    assert KEYS <= set(r)
    assert r["vionetd_gbit_s"] > 0 and r["vionetd_mpps"] > 0
    assert r["limit_gbit_s"] > 0
    assert r["ratio_vs_limit"] == pytest.approx(r["vionetd_gbit_s"] / r["limit_gbit_s"],
                                                rel=0.02)
    assert r["vionetd_cpu_s"] > 0          # the worker pids were found and did work
    assert r["daemon_alive"]


def test_tx_frames_reached_the_tap(result):
    r = result["tx_1514"]
    done = r["frontend"]["frames"]
    # every chain the frontend saw completed was a frame vionetd passed to
    # the tap, and the tap received it (a few more may complete after the
    # frontend stopped counting)
    assert r["counters"]["tx_passthrough"] >= done
    assert r["tap"]["rx_packets"] >= done
    assert r["tap"]["rx_bytes"] >= r["frontend"]["bytes"]


def test_rx_frames_came_from_the_tap(result):
    r = result["rx_1514"]
    assert r["counters"]["rx_frames"] >= r["frontend"]["frames"]
    assert r["tap"]["tx_packets"] >= r["frontend"]["frames"]
    assert r["frontend"]["bytes"] == r["frontend"]["frames"] * 1514
    assert r["limit"]["bytes"] == r["limit"]["frames"] * 1514


def test_table_output():
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "backend.py"),
                        "--seconds", "0.3", "--only", "tx_64"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "tx_64" in p.stdout and "Gb/s" in p.stdout


def test_cpus_and_every_row_has_a_ratio(result):
    assert result["cpus"] == os.cpu_count()
    for kind in ("tx_1514", "rx_1514"):
        assert "ratio_vs_limit" in result[kind]
