"""Starts that wait for the killed processes holding their tap name
(exiting.py), on a real event loop, without processes."""
import time

import pytest

from vionetd import exiting
from vionetd.eventloop import Loop


@pytest.fixture
def ex():
    return exiting.Exiting(Loop())


def test_a_free_name_starts_at_once(ex):
    started = []
    ex.killed("tapA", [101])
    assert ex.when_free("a/0", "tapB", lambda: started.append("B")) is None
    assert ex.when_free("a/0", None, lambda: started.append("auto")) is None
    assert started == ["B", "auto"] and not ex.waits


def test_a_held_name_starts_when_the_last_holder_is_reaped(ex):
    started = []
    ex.killed("tapA", [101, 102])
    wait = ex.when_free("a/0", "tapA", lambda: started.append("A"))
    assert wait is not None and not started and ex.holding("tapA") == 2
    assert not ex.reaped(999)                 # not one of these
    assert ex.reaped(101) and not started
    assert ex.reaped(102) and started == ["A"]
    assert not ex.waits and not ex.holders and wait.timer.cancelled


def test_a_holder_that_does_not_exit_delays_the_start_by_exit_wait_at_most(ex, monkeypatch,
                                                                           caplog):
    monkeypatch.setattr(exiting, "EXIT_WAIT", 0.05)
    started = []
    ex.killed("tapA", [101])
    t0 = time.monotonic()
    ex.when_free("a/0", "tapA", lambda: started.append(time.monotonic() - t0))
    with caplog.at_level("WARNING", logger="vionetd"):
        while not started and time.monotonic() - t0 < 5:
            ex.loop.run_once(0.5)
    assert started and 0.04 < started[0] < 1
    assert "a/0: 1 process(es) that held tap tapA have not exited after 0.05 s; starting anyway" \
        in caplog.text
    assert ex.reaped(101) and started == [started[0]]      # once


def test_a_cancelled_wait_never_starts_and_leaves_no_timer(ex):
    started = []
    ex.killed("tapA", [101])
    ex.when_free("a/0", "tapA", lambda: started.append("A")).cancel()
    assert ex.reaped(101) and not started and not ex.waits
    assert all(t.cancelled for _, _, t in ex.loop._timers)    # nothing wakes the loop
