"""The session's own logic, without a daemon: a Session object on socketpairs.

The daemon tests (test_daemon_*, test_restart, test_hostile_vmm) drive a
whole session through a VMM; these pin down what only a precise order of
events shows.
"""
import threading

import pytest

from vionetd import control, session
from vionetd import vionetd_pb2 as pb


def returns_within(fn, seconds=2.0):
    """True if fn() returned within seconds (it runs in a thread)."""
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(seconds)
    return not t.is_alive()


def test_a_stale_parent_event_does_not_block_the_session():
    """The loop saw the parent's channel readable, but a VMM message handled
    earlier in the same turn waited for the parent (_wait_parent) and read
    what was there. The callback for the channel, then the timer of the
    message kept aside, must both find it empty without blocking: the
    session blocked there until the parent spoke again, and the VMM waited
    for its ack (CI: 10 s timeouts at SET_MEM_TABLE and SET_VRING_ENABLE)."""
    parent, chan = control.pair()
    s = session.Session(chan, None, "t", 0)
    control.send(parent, pb.ToSession(stats=pb.StatsRequest()))
    control.send(parent, pb.ToSession(features=pb.Features()))
    assert s._wait_parent("features") is not None       # kept the stats request aside
    s._from_parent()                                     # the stale readable event
    assert returns_within(lambda: s.loop.run_once(0))    # the timer for the one kept
    reply, _ = control.recv(parent, pb.FromSession, wait=False)
    assert reply.WhichOneof("msg") == "stats"           # it was answered, once
    with pytest.raises(BlockingIOError):
        control.recv(parent, pb.FromSession, wait=False)
    parent.close()
    chan.close()


def test_a_stale_worker_event_does_not_block_the_session():
    """The same for a worker: _ask() read the worker's message and its answer,
    and the loop then dispatches the worker's channel it saw readable."""
    theirs, mine = control.pair()
    s = session.Session(control.pair()[0], None, "t", 0)
    w = s.workers[1]
    w.chan = mine
    control.send(theirs, pb.FromWorker(error="late news"))
    control.send(theirs, pb.FromWorker(stats=pb.Stats()))
    assert s._ask(w, "stats", stats=pb.StatsRequest()) is not None
    assert returns_within(lambda: s._from_worker(w))
    assert w.chan is mine                                # not taken for dead
    theirs.close()
    mine.close()
