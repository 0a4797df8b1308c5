"""The workers' sandbox, proved on real worker processes.

- Workers of a running daemon: /proc shows the unprivileged user, no
  supplementary groups, NoNewPrivs 1, Seccomp 2 (filter), the empty root,
  and only the fds a worker needs; and frames still flow through them.
- A worker forked here exactly as the parent forks one (worker.main), with
  the test hook on: told to try each forbidden call, it reports the call's
  number over its control channel and dies by SIGSYS.
- A worker that dies is replaced by the parent and serving resumes.
"""
import os
import pwd
import signal
import time

import pytest

from tests import frames as F
from tests.daemon import capture_socket, daemon, switched_conf, wait_for_frame, wire
from tests.testvm import TestVM
from vionetd import config, control, sandbox, worker
from vionetd import vionetd_pb2 as pb

pytestmark = pytest.mark.root



def status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.split()
    return out


def worker_pids(d):
    out = d.ctl("show", "t1").stdout
    line = [l for l in out.splitlines() if "workers:" in l][0]
    return [int(p) for p in line.split("workers:")[1].split(",")[0].split()]


@pytest.fixture
def running():
    with wire() as (dns, wns, bridge, veth_w):
        with daemon(switched_conf(bridge), dns) as d:
            d.wait_socket(d.dir + "/t1.sock")
            cap = capture_socket(wns, veth_w)
            cap.settimeout(5)
            try:
                yield d, cap
            finally:
                cap.close()


def sent_and_seen(vm, cap, payload):
    vm.send(F.build(version=4, proto=F.UDP, payload=payload, csum="full").data)
    return wait_for_frame(cap, payload) is not None


def test_workers_are_confined_and_still_move_frames(running):
    d, cap = running
    user = pwd.getpwnam(config.DEFAULT_USER)
    with TestVM(d.dir + "/t1.sock") as vm:
        assert sent_and_seen(vm, cap, b"after the sandbox")
        pids = worker_pids(d)
        assert len(pids) == 2
        for pid in pids:
            st = status(pid)
            assert st["Uid"] == [str(user.pw_uid)] * 4
            assert st["Gid"] == [str(user.pw_gid)] * 4
            assert st.get("Groups", []) == []
            assert st["NoNewPrivs"] == ["1"]
            assert st["Seccomp"] == ["2"]
            assert os.readlink("/proc/%d/root" % pid) == config.DEFAULT_CHROOT
            # channel, stderr, tap, and with a ring: kick, call, guest memory fds closed
            assert len(os.listdir("/proc/%d/fd" % pid)) <= 5
            with open("/proc/%d/cmdline" % pid) as f:
                assert f.read().startswith("vionetd: ")


def test_dead_worker_is_replaced_and_serving_resumes(running):
    d, cap = running
    with TestVM(d.dir + "/t1.sock") as vm:
        assert sent_and_seen(vm, cap, b"before")
        tx = worker_pids(d)[1]
        os.kill(tx, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = worker_pids(d)
            if len(pids) == 2 and tx not in pids:
                break
            time.sleep(0.1)
        assert tx not in worker_pids(d)
        assert sent_and_seen(vm, cap, b"after the restart")
        assert "restarts 1" in d.ctl("show", "t1").stdout
    assert "killed by SIGKILL" in d.log()


def fork_worker(test_hooks=True):
    """A worker exactly as the parent makes one (with the test hook on unless
    told otherwise), told it is a tx worker."""
    parent_end, child_end = control.pair()
    conf = config.parse("", "test.conf")
    pid = os.fork()
    if pid == 0:
        parent_end.close()
        code = 1
        try:
            code = worker.main(child_end, "test", conf, test_hooks=test_hooks)
        finally:
            os._exit(code)
    child_end.close()
    parent_end.settimeout(10)
    control.send(parent_end, pb.ToWorker(hello=pb.Hello(name="t", role=pb.ROLE_TX)))
    return pid, parent_end


@pytest.mark.parametrize("call", sandbox.FORBIDDEN_TESTS)
def test_forbidden_call_kills_the_worker(call):
    pid, chan = fork_worker()
    try:
        # the worker is alive and answers before the forbidden call
        control.send(chan, pb.ToWorker(stats=pb.StatsRequest()))
        reply, _ = control.recv(chan, pb.FromWorker)
        assert reply.WhichOneof("msg") == "stats"
        control.send(chan, pb.ToWorker(test_forbidden_call=call))
        report, _ = control.recv(chan, pb.FromWorker)
        assert report is not None and report.WhichOneof("msg") == "forbidden_syscall"
        name = sandbox.syscall_name(report.forbidden_syscall)
        expect = {"fork": ("fork", "clone", "clone3"), "open": ("open", "openat"),
                  "fcntl_setown": ("fcntl",), "mmap_exec": ("mmap",)}
        assert name in expect.get(call, (call,))
        _, st = os.waitpid(pid, 0)
        pid = None
        assert os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGSYS
    finally:
        chan.close()
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_hook_is_off_in_daemon_workers():
    """Without test_hooks the message is refused: the worker exits with an
    error instead of making the call."""
    pid, parent_end = fork_worker(test_hooks=False)
    try:
        control.send(parent_end, pb.ToWorker(test_forbidden_call="open"))
        _, st = os.waitpid(pid, 0)
        assert os.WIFEXITED(st) and os.WEXITSTATUS(st) == 1
    finally:
        parent_end.close()
