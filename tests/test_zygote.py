"""The zygote (zygote.py) and the parent's side of it (zygote_link.py), with
a real zygote and real workers, the test standing in for the parent:

- a worker it forks has a memory layout of its own (libc elsewhere than in
  the parent), and its exit reaches the parent with its status while the
  zygote still holds the pid (a zombie: no other process can take it);
- a fork asked of a zygote that has gone fails with ZygoteError; one it
  was asked before it died is answered None, its children are reported
  killed, and a new zygote is started.
"""
import os
import signal
import time
from types import SimpleNamespace

import pytest

from tests.hostile import proc_status
from vionetd import config, control, zygote_link
from vionetd import vionetd_pb2 as pb
from vionetd.eventloop import Loop

pytestmark = pytest.mark.root


def libc_base(pid):
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            if "libc.so" in line:
                return int(line.split("-")[0], 16)
    raise AssertionError("no libc in %d" % pid)


@pytest.fixture
def zygote():
    loop = Loop()
    parent = SimpleNamespace(loop=loop, watch=loop.watch, unwatch=loop.unwatch, running=True,
                             exits=[])
    z = zygote_link.Zygote(parent)

    def child_exited(pid, status):
        try:
            state = proc_status(pid)["State"][0]
        except OSError:
            state = "gone"
        parent.exits.append((pid, status, state))
    parent.child_exited = child_exited
    z.start()
    try:
        yield z, parent
    finally:
        z.close()
        if z.pid is not None:
            os.waitpid(z.pid, 0)


def fork_worker(z, parent):
    """A worker forked by z: its pid, and our end of its channel."""
    mine, theirs = control.pair()
    got = []
    z.fork_worker(theirs, "rx test", pb.ROLE_RX, (65534, 65534), config.DEFAULT_CHROOT,
                  got.append)
    theirs.close()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        parent.loop.run_once(0.1)           # the answer comes with the loop
    return got[0], mine


def test_a_worker_has_its_own_layout_and_its_exit_comes_back(zygote):
    z, parent = zygote
    pid, mine = fork_worker(z, parent)
    try:
        assert proc_status(pid)["PPid"] == [str(z.pid)]
        assert libc_base(pid) != libc_base(os.getpid())
    finally:
        mine.close()                # the session has gone: the worker exits 0
    deadline = time.monotonic() + 10
    while not parent.exits and time.monotonic() < deadline:
        parent.loop.run_once(0.1)
    assert parent.exits == [(pid, 0, "Z")]     # reported, not reaped yet
    while os.path.exists("/proc/%d" % pid) and time.monotonic() < deadline:
        parent.loop.run_once(0.05)  # reaped once the parent has handled it
    assert not os.path.exists("/proc/%d" % pid)


def test_no_zygote_no_fork(zygote):
    z, _ = zygote
    os.kill(z.pid, signal.SIGKILL)
    os.waitpid(z.pid, 0)
    mine, theirs = control.pair()
    with pytest.raises(zygote_link.ZygoteError):
        z.fork_worker(theirs, "rx test", pb.ROLE_RX, (65534, 65534), config.DEFAULT_CHROOT,
                      lambda pid: None)
    mine.close()
    theirs.close()
    z.pid = None                    # (reaped above: nothing for the fixture to wait for)


def test_a_zygote_that_dies_fails_what_it_was_asked(zygote):
    """Forks asked of a zygote that then dies are answered None, its
    children reported killed, and a new zygote started."""
    z, parent = zygote
    pid, mine = fork_worker(z, parent)
    got = []
    os.kill(z.pid, signal.SIGSTOP)          # it cannot answer the next one
    _, theirs = control.pair()
    z.fork_worker(theirs, "rx test", pb.ROLE_RX, (65534, 65534), config.DEFAULT_CHROOT,
                  got.append)
    old = z.pid
    os.kill(old, signal.SIGKILL)
    _, status = os.waitpid(old, 0)
    z.died(status)
    assert got == [None] and parent.exits[0][:2] == (pid, signal.SIGKILL)
    assert z.pid != old and z.sock is not None
    mine.close()
    theirs.close()
