"""The rate limit of the data paths (csrc/rate.c, its use in txpath.c and rxpath.c).

The bucket alone: a frame goes while both buckets hold credit, the debt of
the last one is paid before the next, the wait is exact. Then the paths,
driven as test_datapath.py drives them (a socketpair for the tap): a TX
ring over the limit keeps its chains (none dropped, none lost) and the
bytes that leave in a given time are the burst plus the rate; an RX path
leaves the frames in the tap; both sleep meanwhile (their thread's CPU is a
small part of the time), and without a limit nothing is held.
"""
import resource
import socket
import threading
import time

import pytest

from tests import frames as F
from tests.test_datapath import Rig, vnet
from vionetd._core import ffi, lib

SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
NS = 1_000_000_000


def bucket(bps=0, burst=0, pps=0, pburst=0):
    r = ffi.new("struct dp_rate *")
    lib.rate_set(r, bps, burst, pps, pburst)
    return r


def test_no_limit_is_off():
    r = bucket()
    assert r.on == 0 and lib.rate_wait_ns(r, r.at + 1) == 0


def test_bytes_bucket_debt_and_wait():
    r = bucket(bps=1_000_000, burst=100_000)        # 1 MB/s, 100 kB
    t = r.at
    assert lib.rate_wait_ns(r, t) == 0
    lib.rate_charge(r, 150_000)                     # beyond the burst: a debt of 50 kB
    wait = lib.rate_wait_ns(r, t)
    assert abs(wait - 50_000_000) <= 1000           # 50 ms at 1 MB/s
    assert lib.rate_wait_ns(r, t + wait) == 0       # exactly then, not before
    assert lib.rate_wait_ns(r, t + 10 * NS) == 0
    assert r.bytes.credit == r.bytes.size           # a long pause fills it, no more


def test_frames_bucket():
    r = bucket(pps=1000, pburst=2)
    t = r.at
    lib.rate_charge(r, 64)
    lib.rate_charge(r, 64)
    assert lib.rate_wait_ns(r, t) <= 1              # empty: the next goes a jot later
    lib.rate_charge(r, 64)                          # and leaves a debt of a frame
    assert lib.rate_wait_ns(r, t) == pytest.approx(1_000_000, abs=1000)   # 1 ms


def test_default_burst_is_50_ms_at_least_one_big_frame():
    assert bucket(bps=100_000_000).bytes.size == 5_000_000 * NS
    assert bucket(bps=1_000_000).bytes.size == 65536 * NS
    assert bucket(pps=10).frames.size == 1 * NS
    assert bucket(pps=1000).frames.size == 50 * NS


def test_limits_are_clamped():
    r = bucket(bps=1 << 62, burst=1 << 62, pps=1 << 62, pburst=1 << 62)
    assert r.bytes.rate == 12_500_000_000 and r.bytes.size == (1 << 30) * NS
    assert r.frames.rate == 100_000_000
    lib.rate_wait_ns(r, r.at + 100 * NS)            # no overflow past the size
    assert r.bytes.credit == r.bytes.size


# ---- the paths -------------------------------------------------------------

def big_buffers(rig):
    for s, opt in ((rig.tap, SO_SNDBUFFORCE), (rig.peer, SO_RCVBUFFORCE),
                   (rig.peer, SO_SNDBUFFORCE), (rig.tap, SO_RCVBUFFORCE)):
        s.setsockopt(socket.SOL_SOCKET, opt, 16 << 20)


def run_for(rig, seconds):
    """*_run() until the control fd says stop after seconds; the thread's CPU
    time in that while."""
    timer = threading.Timer(seconds, lambda: rig.ctl_peer.send(b"x"))
    fn = lib.tx_run if rig.kind == "tx" else lib.rx_run
    c0 = resource.getrusage(resource.RUSAGE_THREAD)
    timer.start()
    try:
        assert fn(rig.c, rig.ctl.fileno()) == lib.DP_CTL
    finally:
        timer.cancel()
    c1 = resource.getrusage(resource.RUSAGE_THREAD)
    rig.ctl.recv(16)
    return (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)


@pytest.fixture
def tx_rig():
    r = Rig("tx", num=256)
    big_buffers(r)
    yield r
    r.close()


@pytest.fixture
def rx_rig():
    r = Rig("rx", num=1024, features=F.ALL_HOST | (1 << 32), memsize=16 << 20)
    big_buffers(r)
    yield r
    r.close()


def tx_fill(rig, n, size):
    f = F.build(4, F.UDP, b"t" * (size - 42), csum="full")
    for _ in range(n):
        rig.tx_send(vnet(), f.data, indirect=True)
    return len(f.data)


def test_tx_limit_holds_chains_in_the_ring(tx_rig):
    r = tx_rig
    frame = tx_fill(r, 250, 4000)                   # 1 MB waiting
    lib.rate_set(ffi.addressof(r.c, "rate"), 2_000_000, 65536, 0, 0)
    cpu = run_for(r, 0.3)
    sent = r.c.cnt[lib.DC_BYTES]
    expect = 65536 + 2_000_000 * 0.3
    assert expect * 0.85 <= sent <= expect * 1.1 + frame, sent
    got = r.recv_all()
    assert len(got) == r.c.cnt[lib.DC_FRAMES] == len(r.ring.get_used())
    assert lib.vq_pending(r.q) == 250 - len(got)    # the rest waits, nothing dropped
    assert r.c.cnt[lib.DC_RATE_HELD] >= 1
    assert cpu < 0.3 * 0.3, "the held path must sleep, not spin (%.3f s CPU)" % cpu
    # the limit lifted: the rest goes at once
    lib.rate_set(ffi.addressof(r.c, "rate"), 0, 0, 0, 0)
    r.run()
    assert lib.vq_pending(r.q) == 0 and r.c.cnt[lib.DC_FRAMES] == 250


def test_tx_packet_rate(tx_rig):
    r = tx_rig
    tx_fill(r, 250, 100)
    lib.rate_set(ffi.addressof(r.c, "rate"), 0, 0, 500, 10)
    run_for(r, 0.2)
    assert 10 + 100 * 0.85 <= r.c.cnt[lib.DC_FRAMES] <= 10 + 100 * 1.1 + 1


def test_tx_without_limit_holds_nothing(tx_rig):
    r = tx_rig
    tx_fill(r, 250, 1500)
    r.run()
    assert r.c.cnt[lib.DC_FRAMES] == 250 and r.c.cnt[lib.DC_RATE_HELD] == 0


def test_rx_limit_leaves_frames_in_the_tap(rx_rig):
    r = rx_rig
    r.rx_post([1536], count=1000)
    f = F.build(4, F.UDP, b"r" * 958, csum="full")     # 1000-byte frames
    for _ in range(900):
        r.peer.send(vnet() + f.data)
    lib.rate_set(ffi.addressof(r.c, "rate"), 1_000_000, 65536, 0, 0)
    cpu = run_for(r, 0.3)
    frames = r.c.cnt[lib.DC_FRAMES]
    expect = (65536 + 1_000_000 * 0.3) / len(f.data)
    assert expect * 0.85 <= frames <= expect * 1.1 + 1, frames
    assert len(r.rx_frames()) == frames
    assert r.c.cnt[lib.DC_RATE_HELD] >= 1 and cpu < 0.3 * 0.3
    lib.rate_set(ffi.addressof(r.c, "rate"), 0, 0, 0, 0)
    r.run(kick=False)
    assert r.c.cnt[lib.DC_FRAMES] == 900               # none was lost meanwhile


# ---- the daemon: vionetd.conf to the workers, and reloads in place -----------

DAEMON_CONF = """socket "@CTL@"
vm "a" {
    interface {
        socket "@DIR@/a.sock"
        lladdr 52:54:00:12:34:56
%s
    }
}
"""


def tx_fps(d, seconds=1.5):
    """TX frames per second of a/0 over seconds, from its counters."""
    def sample():
        t0 = time.monotonic()
        c = d.stats()["a/0"]["counters"]
        return (t0 + time.monotonic()) / 2, c   # when the counters were read, about
    t0, c0 = sample()
    time.sleep(seconds)
    t1, c1 = sample()
    return (c1["tx_frames"] - c0["tx_frames"]) / (t1 - t0), c1["tx_rate_held"]


def reload_with(d, line):
    with open(d.conf, "w") as f:
        f.write((DAEMON_CONF % line).replace("@CTL@", d.ctl_socket).replace("@DIR@", d.dir))
    d.ctl("reload")


@pytest.mark.root
def test_daemon_rate_follows_reloads_without_a_reconnect():
    """rate tx pps 500 holds a guest that sends back to back at 500 frames
    a second; a reload to 1500 and then to no limit applies at once, with
    the same session, workers and VMM connection."""
    from tests import netns as N
    from tests.daemon import daemon
    from tests.hostile import Sender
    from tests.test_reload import forked_loop
    from tests.testvm import TestVM
    with N.netns("rate") as ns:
        N.disable_ipv6(ns)
        with daemon(DAEMON_CONF % "        rate tx pps 500", ns) as d:
            d.wait_socket(d.dir + "/a.sock")
            with TestVM(d.dir + "/a.sock") as vm:
                sender = Sender(vm, bytes.fromhex("525400123456"))
                with forked_loop(lambda: sender.send(b"rate", timeout=5), seconds=60):
                    time.sleep(0.5)
                    before = d.stats()["a/0"]
                    fps, held = tx_fps(d)
                    assert 500 * 0.9 <= fps <= 500 * 1.1 and held > 0, fps
                    reload_with(d, "        rate tx pps 1500")
                    time.sleep(0.3)
                    fps2, _ = tx_fps(d)
                    assert 1500 * 0.9 <= fps2 <= 1500 * 1.1, fps2
                    reload_with(d, "")
                    time.sleep(0.3)
                    fps3, _ = tx_fps(d)
                    after = d.stats()["a/0"]
                print("pps 500: %.0f, pps 1500: %.0f, no limit: %.0f frames/s" % (fps, fps2, fps3))
                assert fps3 > 2 * fps2
                assert after["session_pid"] == before["session_pid"]
                assert after["worker_pids"] == before["worker_pids"]
                assert after["rate"]["tx"]["pps"] == 0
                assert vm.fe.get_features() == vm.fe.get_features()   # the connection lives
            assert d.log().count("VMM connected") == 1
            assert d.log().count("rate limits changed") == 2
