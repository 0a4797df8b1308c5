"""Kick suppression and signal coalescing of the data paths (linger_us).

tx_run()/rx_run() run in a thread (cffi releases the GIL), while this test
plays the guest on the ring, following the guest's side of virtio 1.2
2.7.10: after making a chain available it kicks only if the device asks
(without EVENT_IDX: used->flags lacks NO_NOTIFY; with it: avail_event lies
in [old avail idx, new avail idx), the vring_need_event rule of 2.7.10.1).
Checked: while the worker lingers after the ring ran dry the guest is not
asked to kick, a chain added then is served all the same, what was
completed is published at once, a completion after a quiet spell
signalled at once and later ones held while the last signal is recent; and no chain is ever left
unserved whatever moment the guest picks (a chain added just as the worker
stops lingering must get a kick or be found by the worker's look after its
offer).
"""
import os
import random
import threading
import time

import pytest

from tests import frames as F
from tests.test_datapath import RX_FEATS, Rig, vnet
from tests.vqglue import counters, eventfd_count
from vionetd._core import lib


def need_event(event, new, old):
    return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF


def guest_wants_to_kick(r, old, new, event_idx):
    if event_idx:
        return need_event(r.ring.avail_event, new, old)
    return not (r.ring.used_flags & lib.VRING_USED_F_NO_NOTIFY)


def guest_send(r, data, event_idx):
    """Add a TX chain as a driver does; kick only if asked. True if kicked."""
    old = r.ring.avail_idx
    r.tx_send(vnet(), data)
    if guest_wants_to_kick(r, old, r.ring.avail_idx, event_idx):
        os.eventfd_write(r.kick, 1)
        return True
    return False


def wait_until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


class Worker:
    """*_run() in a thread until stop(); at most one run."""

    def __init__(self, r):
        self.r, self.rc = r, []
        fn = lib.tx_run if r.kind == "tx" else lib.rx_run
        self.t = threading.Thread(target=lambda: self.rc.append(fn(r.c, r.ctl.fileno())),
                                  daemon=True)
        self.t.start()

    def stop(self):
        self.r.ctl_peer.send(b"x")
        self.t.join(10)
        assert not self.t.is_alive()
        self.r.ctl.recv(16)
        return self.rc[0]


@pytest.fixture
def rigs():
    made = []

    def make(kind, **kw):
        r = Rig(kind, **kw)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


FRAME = F.build(4, F.UDP, b"x" * 100, csum="full").data


@pytest.mark.parametrize("event_idx", [False, True])
def test_tx_busy_worker_suppresses_kicks_and_serves_unkicked_chains(rigs, event_idx):
    r = rigs("tx", event_idx=event_idx)
    r.c.linger_us = 400_000                 # long enough to look at it lingering
    w = Worker(r)
    try:
        assert guest_send(r, FRAME, event_idx)          # idle worker: asks for a kick
        assert wait_until(lambda: len(r.recv_all()) == 1 or None)
        # A lone completion after a quiet spell: published and signalled at once.
        assert wait_until(lambda: r.ring.used_idx == 1)
        assert wait_until(lambda: eventfd_count(r.call) == 1 or None)
        if event_idx:
            r.ring.set_used_event(r.ring.used_idx)     # the guest: call me after this
        # Lingering: kicks are off.
        if not event_idx:
            assert r.ring.used_flags == lib.VRING_USED_F_NO_NOTIFY
        assert not guest_send(r, FRAME, event_idx)      # the guest need not kick...
        assert wait_until(lambda: len(r.recv_all()) == 1 or None)   # ...it is served
        assert wait_until(lambda: r.ring.used_idx == 2)  # published at once,
        assert eventfd_count(r.call) == 0                # signal held: the last is recent
        # Idle after the linger: kicks asked for, the held signal sent.
        assert wait_until(lambda: guest_wants_to_kick(r, r.ring.avail_idx,
                                                       (r.ring.avail_idx + 1) & 0xFFFF,
                                                       event_idx), 3)
        assert wait_until(lambda: eventfd_count(r.call) == 1 or None, 3)
        assert len(r.ring.get_used()) == 2
    finally:
        assert w.stop() == lib.DP_CTL
    cnt = counters(r.c)
    assert cnt["kicks"] == 1 and cnt["frames"] == 2
    assert cnt["linger_found"] >= 1 and cnt["notifications"] == 2
    assert cnt["notify_deferred"] >= 1


@pytest.mark.parametrize("event_idx", [False, True])
def test_tx_no_chain_lost_around_going_idle(rigs, event_idx):
    """Chains at random moments around the end of the linger (0.5 ms): each
    is served, by a kick or by the worker's look after its offer."""
    rnd = random.Random(11)
    r = rigs("tx", event_idx=event_idx)
    r.c.linger_us = 500
    w = Worker(r)
    sent = got = kicked = 0
    deadline = time.monotonic() + 20
    try:
        while sent < 300 and time.monotonic() < deadline:
            if len(r.ring.free) < 4:
                r.ring.get_used()
                if len(r.ring.free) < 4:
                    time.sleep(0.001)
                    continue
            kicked += guest_send(r, FRAME, event_idx)
            sent += 1
            got += len(r.recv_all())
            time.sleep(rnd.choice((0, 0, 0.0002, 0.0004, 0.0005, 0.0006, 0.001, 0.002)))

        def all_in():
            nonlocal got
            got += len(r.recv_all())
            return got == sent
        assert wait_until(all_in, 5), (sent, got)
    finally:
        assert w.stop() == lib.DP_CTL
    assert sent == 300 and counters(r.c)["frames"] == sent
    assert 0 < kicked < sent              # some chains needed no kick


def test_tx_return_to_python_leaves_ring_asking_for_kicks(rigs):
    r = rigs("tx")
    r.c.linger_us = 10_000_000
    r.tx_send(vnet(), FRAME)
    r.run()                                # returns after one batch
    assert len(r.recv_all()) == 1
    assert r.ring.used_flags == 0 and eventfd_count(r.call) == 1


def test_tx_linger_off_is_a_signal_per_batch(rigs):
    r = rigs("tx")
    r.c.linger_us = -1
    w = Worker(r)
    try:
        for _ in range(2):
            assert guest_send(r, FRAME, False)
            assert wait_until(lambda: eventfd_count(r.call) == 1 or None)
            assert wait_until(lambda: r.ring.used_flags == 0)
    finally:
        w.stop()
    assert counters(r.c)["kicks"] == 2


def test_rx_lone_frame_at_once_stream_frames_share_a_signal(rigs):
    """A frame after a quiet spell is signalled at once; frames soon after
    that signal share the next one, sent linger_us after the first of
    them."""
    r = rigs("rx", features=RX_FEATS)
    r.c.frame_max = 1518
    r.c.linger_us = 400_000
    r.rx_post([12, 1518], count=8)
    w = Worker(r)
    try:
        r.peer.send(vnet() + FRAME)
        assert wait_until(lambda: r.ring.used_idx == 1)
        assert wait_until(lambda: eventfd_count(r.call) == 1 or None)
        t0 = time.monotonic()
        r.peer.send(vnet() + FRAME)
        r.peer.send(vnet() + FRAME)
        assert wait_until(lambda: r.ring.used_idx == 3)     # published at once
        assert eventfd_count(r.call) == 0                  # the signal waits
        assert wait_until(lambda: eventfd_count(r.call) == 1 or None, 3)
        assert time.monotonic() - t0 > 0.2
        time.sleep(0.05)
        assert eventfd_count(r.call) == 0
    finally:
        assert w.stop() == lib.DP_CTL
    cnt = counters(r.c)
    assert cnt["frames"] == 3 and cnt["notifications"] == 2


def test_rx_out_of_buffers_signals_at_once(rigs):
    r = rigs("rx", features=RX_FEATS)
    r.c.frame_max = 1518
    r.c.linger_us = 10_000_000
    r.rx_post([12, 1518], count=1)
    w = Worker(r)
    try:
        r.peer.send(vnet() + FRAME)
        r.peer.send(vnet() + FRAME)                        # no buffer for this one
        assert wait_until(lambda: eventfd_count(r.call) == 1 or None)
        assert r.ring.used_flags == 0                      # and asks for a kick
        r.rx_post([12, 1518], count=1)
        os.eventfd_write(r.kick, 1)
        assert wait_until(lambda: r.ring.used_idx == 2)
    finally:
        w.stop()                                           # flushes the signal
    assert eventfd_count(r.call) == 1
