"""Smoke run of bench/backend.py: the benchmark works on a clean checkout.

It builds tools/vhostbench.c, starts vionetd in a namespace of its own and
drives it as a VMM would, for half a second per kind; here we only check
that it ran end to end: every documented key is there and frames moved,
through vionetd (its own counters and the tap's statistics agree with what
the frontend counted) and through the bare tap (the limit, the same
with the guest's memory layout, and for TX the same in io_uring batches);
with two queue
pairs, on both pairs; with dirty logging, pages were marked and none
wrongly. Figures are not checked: they are the benchmark's to report.
"""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.root

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {"vionetd_gbit_s", "vionetd_mpps", "limit_gbit_s", "ratio_vs_limit", "vionetd_cpu_s"}


def bench(*kinds, rounds=None):
    cmd = [sys.executable, os.path.join(ROOT, "bench", "backend.py"), "--json",
           "--seconds", "0.5"] + (["--rounds", str(rounds)] if rounds else [])
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


@pytest.mark.parametrize("kind", ["tx_1514", "rx_1514"])
def test_guest_layout_limit(result, kind):
    """Rows also measure the bare tap with the guest's memory layout: TX
    written in the frontend's pieces, RX read into a ring's worth of its
    buffers, one per 1514-byte frame."""
    r = result[kind]
    assert r["limit"]["guest_layout"] == 0 and r["guest_layout"]["guest_layout"] == 1
    assert r["guest_layout"]["frames"] > 0 and r["guest_layout"]["errors"] == 0
    assert r["guest_layout"]["bytes"] == r["guest_layout"]["frames"] * 1514
    assert r["ratio_vs_guest_layout"] == pytest.approx(
        r["vionetd_gbit_s"] / r["guest_layout_gbit_s"], rel=0.02)
    assert r["cpu_ratio_vs_guest_layout"] > 0
    assert all(x["guest_layout_gbit_s"] > 0 for x in r["rounds"])
    if kind.startswith("rx"):
        assert r["guest_layout"]["buffers_per_frame"] == 1
        assert r["guest_layout"]["buffers"] == 1024


def test_tx_batched_limit(result):
    """TX rows also measure the bare tap written through io_uring, as many
    frames per submission as vionetd's tx worker submits; RX rows do not."""
    r = result["tx_1514"]
    bat = r["batched_limit"]
    assert bat["batch"] == 64 and bat["guest_layout"] == 0
    assert bat["frames"] > 0 and bat["errors"] == 0 and bat["bytes"] == bat["frames"] * 1514
    assert r["ratio_vs_batched_limit"] == pytest.approx(
        r["vionetd_gbit_s"] / r["batched_limit_gbit_s"], rel=0.02)
    assert r["cpu_ratio_vs_batched_limit"] > 0
    assert "batched_limit" not in result["rx_1514"]


def test_tx_worker_writes_batches_through_io_uring(result):
    c = result["tx_1514"]["counters"]
    assert c["tx_tap_submits"] > 0 and c.get("tx_tap_uring_off", 0) == 0
    assert c["tx_passthrough"] > 2 * c["tx_tap_submits"]     # several frames a call


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


def test_row_names():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import backend
    finally:
        sys.path.pop(0)
    base = ["tx_64k", "tx_1514", "tx_64", "rx_64k", "rx_1514", "rx_64"]
    assert set(base + [k + "_q2" for k in base]) <= set(backend.KINDS)
    assert {"tx_64k_log", "rx_64k_log", "rx_1514_log"} <= set(backend.KINDS)
    assert set(k + "_rate" for k in base) <= set(backend.KINDS)
    # a _log row runs right after its non-log row (ratio_vs_nolog)
    for k in backend.KINDS:
        if k.endswith("_log"):
            assert backend.KINDS.index(k) == backend.KINDS.index(k[:-4]) + 1


@pytest.fixture(scope="module")
def more():
    """Two queue pairs both ways, logging without and with its non-log
    row, and 64 KiB frames received, one round each (keeps the test short)."""
    return bench("tx_1514_q2", "rx_1514_q2", "tx_64k_log", "rx_1514", "rx_1514_log",
                 "rx_64k", rounds=1)


@pytest.mark.parametrize("kind", ["tx_1514_q2", "rx_1514_q2"])
def test_two_queue_pairs_both_used(more, kind):
    r = more[kind]
    assert KEYS <= set(r), r.get("error")
    assert r["ratio_vs_limit"] == pytest.approx(r["vionetd_gbit_s"] / r["limit_gbit_s"],
                                                rel=0.02)
    fe, lim = r["frontend"], r["limit"]
    assert fe["pairs"] == 2 and len(fe["per_pair"]) == 2
    assert all(p["frames"] > 0 for p in fe["per_pair"])         # both rings moved frames
    assert lim["pairs"] == 2 and all(p["frames"] > 0 for p in lim["per_pair"])
    direction = kind[:2]
    assert all(c.get(direction + "_frames", 0) > 0 for c in r["counters_per_pair"])
    assert {direction, direction + ".1"} <= set(r["worker_cpu_s"])
    assert r["daemon_alive"]


@pytest.mark.parametrize("kind", ["tx_64k_log", "rx_1514_log"])
def test_logging_rows(more, kind):
    r = more[kind]
    assert KEYS <= set(r), r.get("error")
    assert r["log_pages"] > 0
    assert r["frontend"]["log_pages_unexpected"] == 0
    assert r["frontend"]["log_pages_missed"] == 0
    assert r["daemon_alive"]
    assert "ratio_vs_nolog" in r
    if kind == "rx_1514_log":       # its non-log row ran too
        assert r["ratio_vs_nolog"] == pytest.approx(
            r["vionetd_gbit_s"] / more["rx_1514"]["vionetd_gbit_s"], rel=0.02)
    else:
        assert r["ratio_vs_nolog"] is None and r["ratio_vs_nolog_missing"]


def test_rx_guest_layout_limit_spreads_a_64k_frame(more):
    """A 64 KiB frame and its header fill 16 page buffers of the pool, and
    arrive whole."""
    lay = more["rx_64k"]["guest_layout"]
    assert lay["buffers_per_frame"] == 16 and lay["buffer_bytes"] == 4096
    assert lay["frames"] > 0 and lay["bytes"] == lay["frames"] * (54 + 45 * 1448)


def test_rate_rows_hold_their_rate():
    """A limited interface moves its configured rate (RATE), within what a
    short run's first burst adds; TX holds chains back, RX leaves the tap."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import backend
    finally:
        sys.path.pop(0)
    out = bench("tx_1514_rate", "rx_1514_rate", rounds=1)
    for kind in ("tx_1514_rate", "rx_1514_rate"):
        r = out[kind]
        assert KEYS <= set(r), r.get("error")
        assert r["limit_gbit_s"] == backend.RATE["1514"] / 1e9
        assert 0.85 <= r["ratio_vs_limit"] <= 1.15, r["ratio_vs_limit"]
        assert r["counters"][kind[:2] + "_rate_held"] > 0


def test_rounds(result):
    r = result["tx_1514"]
    assert len(r["rounds"]) == result["rounds"] == 3
    assert r["vionetd_gbit_s"] in [x["vionetd_gbit_s"] for x in r["rounds"]]   # a median
