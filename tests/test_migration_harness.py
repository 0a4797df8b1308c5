"""The live-migration harness (tests/migration.py) without a guest: its QMP
client against a fake QEMU, ping's output parsed into the longest gap, and
a run's verdict from the figures, so that test_migration.py's assertions
rest on parts that are known to work and to fail."""
import json
import os
import socket
import tempfile
import threading

import pytest

from tests import migration as M


def fake_qemu(path, answers):
    """A QMP server at path: the greeting, then for each command the next
    of answers (a dict, sent as one line), with an event before each."""
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    ls.listen(1)
    got = []

    def serve():
        c, _ = ls.accept()
        with c, c.makefile("rwb") as f:
            f.write(b'{"QMP": {"version": {}, "capabilities": []}}\n')
            f.flush()
            for answer in answers:
                line = f.readline()
                if not line:
                    return
                got.append(json.loads(line))
                f.write(b'{"event": "MIGRATION", "data": {"status": "active"}}\n')
                f.write(json.dumps(answer).encode() + b"\n")
                f.flush()
        ls.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return got, t


def test_qmp_commands_answers_errors_and_events():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "qmp.sock")
        got, t = fake_qemu(path, [{"return": {}},
                                  {"return": {"status": "running"}},
                                  {"error": {"class": "GenericError", "desc": "blocked"}}])
        q = M.Qmp(path, timeout=5)
        assert q.cmd("query-status") == {"status": "running"}
        with pytest.raises(M.QmpError, match="migrate: blocked"):
            q.cmd("migrate", uri="unix:/x")
        q.close()
        t.join(5)
    assert got[0] == {"execute": "qmp_capabilities"}
    assert got[2] == {"execute": "migrate", "arguments": {"uri": "unix:/x"}}
    assert len(q.events) == 3


def test_qmp_gives_up_on_a_silent_qemu():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "qmp.sock")
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ls.bind(path)
        ls.listen(1)
        with ls, pytest.raises(M.QmpError, match="no answer"):
            M.Qmp(path, timeout=0.5)     # connects, but no greeting comes


PING = """PING 10.77.0.2 (10.77.0.2) 56(84) bytes of data.
[99.990000] From 10.77.0.1 icmp_seq=0 Destination Host Unreachable
[100.000000] 64 bytes from 10.77.0.2: icmp_seq=1 ttl=64 time=0.5 ms
[100.010000] 64 bytes from 10.77.0.2: icmp_seq=2 ttl=64 time=0.5 ms
[100.020000] 64 bytes from 10.77.0.2: icmp_seq=3 ttl=64 time=0.5 ms
[100.020500] 64 bytes from 10.77.0.2: icmp_seq=3 ttl=64 time=0.9 ms (DUP!)
[100.450000] 64 bytes from 10.77.0.2: icmp_seq=40 ttl=64 time=0.5 ms
[100.460000] 64 bytes from 10.77.0.2: icmp_seq=41 ttl=64 time=0.5 ms

--- 10.77.0.2 ping statistics ---
42 packets transmitted, 5 received, +1 errors, 88.0952% packet loss, time 460ms
"""


def test_ping_output_gives_the_longest_gap_and_replies_after_a_time():
    p = M.Pinger("ns", "10.77.0.2")
    p.parse(PING)
    assert len(p.replies) == 5            # the duplicate is left out
    gap = p.longest_gap()
    assert round(gap[0], 3) == 0.43 and gap[1] == 100.02 and gap[2] == 100.45
    assert p.replies_after(100.2) == 2 and p.sent() == 42
    f = M.ping_figures(p, (100.0, 100.3))
    assert f["longest_gap_ms"] == 430.0 and f["replies_after_migration"] == 2
    assert f["median_interval_ms"] == 10.0
    # a silence that lasts until ping is stopped counts too
    p.stopped = 101.5
    assert round(p.longest_gap()[0], 2) == 1.04


def good_run():
    r = M.Run(False, 100, 2)
    r.migrated = True
    r.peer = {"up": {"bytes": 100, "sha256": "u", "error": None},
              "down0": {"bytes": 100, "sha256": "d0", "error": None},
              "down1": {"bytes": 100, "sha256": "d1", "error": None}}
    r.guest = {"mig.tx_sha256": "u", "mig.rx0_sha256": "d0", "mig.rx0_bytes": "100",
               "mig.rx1_sha256": "d1", "mig.rx1_bytes": "100"}
    r.ping = {"replies_after_migration": 5}
    return r


def test_a_run_succeeds_only_when_everything_arrived():
    assert good_run().ok()
    r = good_run()
    r.guest["mig.rx1_sha256"] = "other"
    assert r.guest_visible_failures() == [
        "peer->guest stream 1 sha256 differs: guest other, peer d1"]
    r = good_run()
    r.peer["down0"]["error"] = "TimeoutError after 40 bytes: timed out"
    assert not r.ok() and r.guest_visible_failures()
    r = good_run()
    r.guest["mig.rx0_bytes"] = "99"
    assert r.guest_visible_failures()
    r = good_run()
    r.ping = {"replies_after_migration": 0}
    assert r.guest_visible_failures() == ["the guest answered no ping after the migration"]
    r = good_run()
    r.migrated = False
    assert not r.ok() and not r.guest_visible_failures()
