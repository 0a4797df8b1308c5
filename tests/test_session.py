"""The session's own logic, without a daemon: a Session object on socketpairs.

The daemon tests (test_daemon_*, test_restart, test_hostile_vmm) drive a
whole session through a VMM; these pin down what only a precise order of
events shows: an answer the session waits for is a state (a Reply), never a
nested loop, so everything else goes on meanwhile.
"""
import os

import pytest

from vionetd import control, session
from vionetd import vionetd_pb2 as pb
from vionetd.session import workers as W


@pytest.fixture
def s():
    parent, chan = control.pair()
    sess = session.Session(chan, None, "t", 0)
    sess.test_parent = parent
    yield sess
    sess.workers.close()
    sess.loop.sel.close()
    parent.close()
    chan.close()


def from_session(parent):
    msgs = []
    while True:
        try:
            msg, fds = control.recv(parent, pb.FromSession, wait=False)
        except BlockingIOError:
            return msgs
        control.close_fds(fds)
        msgs.append(msg)


def give_worker(s, ring=1):
    """A worker for ring, as the parent hands one over; returns its end."""
    mine, theirs = control.pair()
    fd = os.dup(mine.fileno())
    mine.close()
    s.workers.arrived(pb.WorkerChannel(role=pb.ROLE_TX if ring % 2 else pb.ROLE_RX,
                                       pid=4242, queue_pair=ring // 2), [fd])
    return theirs


def test_the_session_goes_on_while_a_backend_method_waits_for_the_parent(s):
    """SET_FEATURES waits for the parent (it sets the tap's offloads). While
    it waits, the parent's other requests are still answered: the wait is
    a Reply, and the loop is the same loop."""
    pending = s.device.set_features(1 << 32)
    reply = next(pending)
    assert not reply.done
    assert [m.WhichOneof("msg") for m in from_session(s.test_parent)] == ["features"]
    control.send(s.test_parent, pb.ToSession(stats=pb.StatsRequest()))
    s.loop.run_once(0)
    assert [m.WhichOneof("msg") for m in from_session(s.test_parent)] == ["stats"]
    assert not reply.done
    control.send(s.test_parent, pb.ToSession(features=pb.Features(features=1 << 32)))
    s.loop.run_once(0)
    assert reply.done and reply.value.features == 1 << 32
    with pytest.raises(StopIteration):
        pending.send(reply.value)
    assert s.device.vmm_features == 1 << 32


def test_a_parent_that_does_not_answer_fails_the_request(s, monkeypatch):
    monkeypatch.setattr(session.parent_link, "PARENT_TIMEOUT", 0.05)
    pending = s.device.set_mtu(1400)
    reply = next(pending)
    s.loop.run_once(1.0)
    assert reply.done and reply.value is None
    with pytest.raises(session.device.vhost_user.BackendError):
        pending.send(None)
    # the late answer is taken by the request that gave up, not the next one
    control.send(s.test_parent, pb.ToSession(mtu=pb.MtuResult()))
    s.loop.run_once(0)
    assert not s.parent.owed


def test_worker_answers_are_matched_in_order(s):
    theirs = give_worker(s)
    w = s.workers.workers[1]
    assert w.state is W.State.RUNNING
    first = s.workers.request(w, "ring_stopped", ring_stop=pb.RingStop())
    second = s.workers.request(w, "stats", stats=pb.StatsRequest())
    control.send(theirs, pb.FromWorker(error="late news"))     # not an answer
    control.send(theirs, pb.FromWorker(ring_stopped=pb.RingStopped(last_avail=7)))
    control.send(theirs, pb.FromWorker(stats=pb.Stats()))
    s.loop.run_once(0)
    assert first.value.last_avail == 7 and second.done and second.value is not None
    assert w.state is W.State.RUNNING
    theirs.close()


def test_an_answer_nobody_asked_for_replaces_the_worker(s):
    theirs = give_worker(s)
    w = s.workers.workers[1]
    asked = s.workers.request(w, "stats", stats=pb.StatsRequest())
    control.send(theirs, pb.FromWorker(ring_enabled=True))
    s.loop.run_once(0)
    assert asked.done and asked.value is None
    assert w.state is W.State.RESTART_PENDING and s.workers.restarts == 1
    theirs.close()


def test_a_worker_that_does_not_answer_is_replaced_after_a_delay(s, monkeypatch):
    monkeypatch.setattr(W, "WORKER_TIMEOUT", 0.05)
    theirs = give_worker(s)
    w = s.workers.workers[1]
    asked = s.workers.request(w, "ring_stopped", ring_stop=pb.RingStop())
    s.loop.run_once(1.0)
    assert asked.value is None and w.state is W.State.RESTART_PENDING
    from_session(s.test_parent)
    s.loop.run_once(2.0)                  # the restart timer: a new spawn request
    assert w.state is W.State.ASKED
    assert [m.WhichOneof("msg") for m in from_session(s.test_parent)] == ["spawn"]
    theirs.close()


def test_an_idle_session_arms_no_timer(s):
    """Nothing to wait for: no deadline, so no wakeup (bench/idle.py counts
    them for a whole daemon)."""
    s.vmm.start()
    s.loop.run_once(0)
    assert not [t for _, _, t in s.loop._timers if not t.cancelled]
