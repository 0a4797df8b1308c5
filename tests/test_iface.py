"""The parent's side of an interface (iface.py): its life cycle, in parts
that need no daemon. (Its parts have their own tests: test_children.py,
test_session_channel.py, test_tap_requests.py, test_exiting.py.)"""
import fcntl
import os
import time
from types import SimpleNamespace

import pytest

from vionetd import config, exiting, iface
from vionetd.eventloop import Loop


@pytest.fixture
def parent():
    p = SimpleNamespace(loop=Loop(), ports={}, watch=lambda *a: None, unwatch=lambda *a: None)
    p.exiting = exiting.Exiting(p.loop)
    return p


def port(parent, name="vt0"):
    conf = config.parse('vm "a" { interface "%s" { socket "/s" } }' % name)
    return iface.Interface(parent, conf.vms["a"].interfaces[0], conf)


def is_open(fd):
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
        return True
    except OSError:
        return False


def test_a_start_under_a_tap_name_still_held_waits_for_its_holders(parent, monkeypatch):
    """The killed processes of the interface that had the tap's name hold it
    until they exit: the new one starts once SIGCHLD has reaped the last of
    them, and meanwhile is "restarting"; the parent waited for nothing."""
    p = port(parent)
    opened = []
    monkeypatch.setattr(p, "_open", lambda: opened.append(p.key))
    parent.exiting.killed("vt0", [101, 102])
    p.start()
    assert not opened and not p.started.done and p.state == "restarting"
    parent.exiting.reaped(101)
    assert not opened
    parent.exiting.reaped(102)
    assert opened == ["a/0"] and p.started.done and p.started.value is None


def test_a_start_that_fails_says_why_and_a_stopped_wait_says_nothing(parent, monkeypatch):
    p = port(parent)

    def fail():
        raise OSError(16, "Device or resource busy")
    monkeypatch.setattr(p, "_open", fail)
    p.start()
    assert p.started.value == "a/0: cannot start: Device or resource busy"
    assert p.state == "stopped"
    q = port(parent)
    parent.exiting.killed("vt0", [101])
    q.start()
    q.stop()
    assert q.started.done and q.started.value is None and not parent.exiting.waits


def test_a_socket_directory_others_can_write_stops_the_start(parent, monkeypatch, tmp_path):
    """vmmsocket refuses a world-writable directory: the interface does not
    start, and says why."""
    os.chmod(tmp_path, 0o777)
    parent.ids = SimpleNamespace(of=lambda conf, vm: (70000, 70000))
    conf = config.parse('vm "a" { interface "vt0" { socket "%s/a.sock" } }' % tmp_path)
    p = iface.Interface(parent, conf.vms["a"].interfaces[0], conf)
    for part in ("_open_tap", "_configure_link"):
        monkeypatch.setattr(p, part, lambda: None)
    monkeypatch.setattr(p.children, "spawn_session", lambda: pytest.fail("started"))
    p.start()
    assert p.started.value == ("a/0: cannot start: socket directory %s is writable by "
                               "others without the sticky bit: not listening there"
                               % tmp_path)
    assert os.listdir(tmp_path) == []


def test_stop_closes_the_tap_before_the_kill_and_hands_over_the_killed(parent, monkeypatch):
    """The tap's fds are closed before the workers sharing them are killed
    (the last close, which deletes the tap, is then theirs), and the pids
    not reaped yet go to the parent's Exiting; nothing is waited for."""
    p = port(parent)
    p.tap_name = "vt0"
    p.tap_fds = [os.eventfd(0), os.eventfd(0)]
    fds = list(p.tap_fds)
    seen = []
    real_stop = p.children.stop

    def stop():
        seen.append([is_open(fd) for fd in fds])
        p.children.exiting.add(4242)        # a worker killed and not reaped yet
        real_stop()
    monkeypatch.setattr(p.children, "stop", stop)
    t0 = time.monotonic()
    p.stop()
    assert time.monotonic() - t0 < 0.1
    assert seen == [[False, False]] and p.tap_fds == []
    assert parent.exiting.holders == {4242: "vt0"} and p.state == "stopped"
