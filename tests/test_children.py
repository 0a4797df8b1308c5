"""The processes of one interface (children.py): the session's restart
delay and the exits tracked, with real children that only sleep."""
import os
import signal
import time
from types import SimpleNamespace

import pytest

from vionetd import children, config, iface
from vionetd.eventloop import Loop


@pytest.fixture
def port():
    conf = config.parse('vm "a" { interface { socket "/s" } }')
    parent = SimpleNamespace(loop=Loop(), watch=lambda *a: None, unwatch=lambda *a: None)
    return iface.Interface(parent, conf.vms["a"].interfaces[0], conf)


def sleeper():
    pid = os.fork()
    if pid == 0:
        try:
            time.sleep(60)
        finally:
            os._exit(0)
    return pid


def test_session_delay_doubles_while_it_dies_young(port, monkeypatch):
    """SESSION_DELAY's first delay, doubled for each session in a row that
    dies younger than SESSION_YOUNG, at most the largest; one that lived
    longer starts the count again."""
    c = port.children
    delays = []
    port.parent.loop.call_later = lambda d, fn: delays.append(d)
    now = [1000.0]
    monkeypatch.setattr(children.time, "monotonic", lambda: now[0])
    for _ in range(9):
        c.session_started = now[0] - 1
        c.session_died("exited with status 1")
    first, largest = children.SESSION_DELAY
    assert delays == [first * 2 ** n for n in range(6)] + [largest] * 3
    c.session_started = now[0] - children.SESSION_YOUNG - 1
    c.session_died("exited with status 1")
    c.session_started = now[0] - 1
    c.session_died("exited with status 1")
    assert delays[-2:] == [first, first] and c.session_restarts == 11
    assert port.reason == "session exited with status 1"


def test_killed_processes_are_tracked_until_reaped(port):
    """end_session kills the workers and the session without waiting; each
    is in `exiting` until SIGCHLD's reaping reports it."""
    c = port.children
    pids = [sleeper() for _ in range(3)]
    try:
        c.workers = {(1, 0): pids[0], (2, 0): pids[1]}
        c.session_pid = pids[2]
        t0 = time.monotonic()
        c.stop()
        assert time.monotonic() - t0 < 0.5
        assert c.exiting == set(pids) and not c.workers and c.session_pid is None
        for pid in pids:
            done, status = os.waitpid(pid, 0)
            assert os.WTERMSIG(status) == signal.SIGKILL
            assert c.child_died(pid, status)
        assert not c.exiting and not c.child_died(pids[0], status)
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def test_describe_exit():
    assert children.describe_exit(signal.SIGKILL) == "killed by SIGKILL"
    assert children.describe_exit(3 << 8) == "exited with status 3"


def test_spawns_one_per_ring_one_fork_per_turn_forgotten_with_the_session(port, monkeypatch):
    """However often a session asks, one fork waits per (role, queue pair);
    one fork per timer run (a zero delay between: other VMs' messages are
    served between forks); the session's end cancels what waits."""
    c = port.children
    timers = []
    port.parent.loop.call_later = lambda d, fn: timers.append((d, fn)) or SimpleNamespace(
        cancel=lambda: timers.remove((d, fn)))
    forked = []
    monkeypatch.setattr(c, "_fork_worker", lambda role, qp: forked.append((role, qp)) or
                        c.workers.__setitem__((role, qp), 0) or SimpleNamespace(
                            fileno=lambda: -1, close=lambda: None))
    port.channel = SimpleNamespace(sock=True, send=lambda *a, **kw: True, close=lambda: None)
    for _ in range(1000):
        for role in (1, 2):
            c.spawn_worker(role, 0)
    assert c.asked == {(1, 0): True, (2, 0): True} and len(timers) == 1
    d, fn = timers.pop()
    fn()
    assert forked == [(1, 0)] and timers[0][0] == 0
    c.end_session()
    assert not c.asked and not timers
