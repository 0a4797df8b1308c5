"""The sandbox of sessions and workers, proved on real processes.

- Workers of a running daemon: /proc shows the VM's uid and gid from the
  user range (no account has them), no
  supplementary groups, NoNewPrivs 1, Seccomp 2 (filter), the empty root,
  and only the fds a worker needs; and frames still flow through them.
- A worker forked here exactly as the parent forks one (worker.main), with
  the test hook on: told to try each forbidden call, it reports the call's
  number over its control channel and dies by SIGSYS.
- A worker that dies is replaced by the parent and serving resumes.
- A session, forked as the parent forks one, with the test hook on: it
  cannot open files, execute, signal another process, aim SIGIO at one or
  map executable memory; each attempt is reported and kills it by SIGSYS.
- ps shows the parent, its zygote, one session and two workers per
  interface, titled for what they serve; only the parent and the zygote
  run as root, the zygote with CAP_SETUID, CAP_SETGID, CAP_SYS_CHROOT and
  CAP_KILL alone, under seccomp, in the namespaces its children share.
"""
import os
import pwd
import signal
import time

import pytest

from tests import frames as F
from tests.daemon import capture_socket, daemon, switched_conf, wait_for_frame, wire
from tests.hostile import proc_status
from tests.test_zygote import libc_base
from tests.testvm import TestVM
import socket

from vionetd import config, control, sandbox, session, worker
from vionetd import vionetd_pb2 as pb

pytestmark = pytest.mark.root


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


def own_namespaces(pid, parent):
    """pid has network and IPC namespaces other than parent's."""
    return all(os.readlink("/proc/%d/ns/%s" % (pid, ns)) !=
               os.readlink("/proc/%d/ns/%s" % (parent, ns)) for ns in ("net", "ipc"))


def sent_and_seen(vm, cap, payload):
    vm.send(F.build(version=4, proto=F.UDP, payload=payload, csum="full").data)
    return wait_for_frame(cap, payload) is not None


def test_workers_are_confined_and_still_move_frames(running):
    d, cap = running
    low, high = config.DEFAULT_USER_RANGE
    with TestVM(d.dir + "/t1.sock") as vm:
        assert sent_and_seen(vm, cap, b"after the sandbox")
        pids = worker_pids(d)
        assert len(pids) == 2
        for pid, role in zip(pids, ("rx", "tx")):
            st = proc_status(pid)
            uid = int(st["Uid"][0])
            assert low <= uid <= high
            assert st["Uid"] == [str(uid)] * 4 and st["Gid"] == [str(uid)] * 4
            with pytest.raises(KeyError):
                pwd.getpwuid(uid)
            assert st.get("Groups", []) == []
            assert st["NoNewPrivs"] == ["1"]
            assert st["Seccomp"] == ["2"]
            assert os.readlink("/proc/%d/root" % pid) == config.DEFAULT_CHROOT
            assert own_namespaces(pid, d.proc.pid)
            # channel, tap, and with a ring: kick, call, guest memory fds
            # closed; stdin, stdout, stderr are /dev/null; the tx worker
            # also has its io_uring (txuring.c)
            fds = [os.readlink("/proc/%d/fd/%s" % (pid, n))
                   for n in os.listdir("/proc/%d/fd" % pid)]
            assert [os.readlink("/proc/%d/fd/%d" % (pid, n)) for n in (0, 1, 2)] == \
                ["/dev/null"] * 3
            fds = [f for f in fds if f != "/dev/null"]
            rings = fds.count("anon_inode:[io_uring]")
            assert rings == (role == "tx") and len(fds) - rings <= 5
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


def fork_worker(test_hooks=True, role=pb.ROLE_TX):
    """A worker of role (tx unless told otherwise) exactly as the parent
    makes one (with the test hook on unless told otherwise)."""
    parent_end, child_end = control.pair()
    conf = config.parse("", "test.conf")
    pid = os.fork()
    if pid == 0:
        parent_end.close()
        code = 1
        try:
            code = worker.main(child_end, "test", sandbox.identity(conf.user), conf.chroot,
                               test_hooks=test_hooks, role=role)
        finally:
            os._exit(code)
    child_end.close()
    parent_end.settimeout(10)
    control.send(parent_end, pb.ToWorker(hello=pb.Hello(name="t", role=role)))
    return pid, parent_end


def answers_stats(chan):
    control.send(chan, pb.ToWorker(stats=pb.StatsRequest()))
    reply, _ = control.recv(chan, pb.FromWorker)
    return reply is not None and reply.WhichOneof("msg") == "stats"


@pytest.mark.parametrize("call", sandbox.FORBIDDEN_TESTS)
def test_forbidden_call_kills_the_worker(call):
    forbidden_call_kills_a_worker(call, pb.ROLE_TX)


def test_io_uring_enter_kills_an_rx_worker():
    """io_uring_enter is on the tx worker's list only."""
    forbidden_call_kills_a_worker("io_uring_enter", pb.ROLE_RX)


def test_io_uring_enter_is_a_tx_workers_call():
    pid, chan = fork_worker(role=pb.ROLE_TX)
    try:
        assert answers_stats(chan)
        control.send(chan, pb.ToWorker(test_forbidden_call="io_uring_enter"))
        assert answers_stats(chan)      # EBADF, and alive
    finally:
        end(pid, chan)


def forbidden_call_kills_a_worker(call, role):
    pid, chan = fork_worker(role=role)
    try:
        assert answers_stats(chan)      # alive and answering before the call
        control.send(chan, pb.ToWorker(test_forbidden_call=call))
        report, _ = control.recv(chan, pb.FromWorker)
        assert report is not None and report.WhichOneof("msg") == "forbidden_syscall"
        died_of(pid, report.forbidden_syscall, call)
        pid = None
    finally:
        end(pid, chan)


SYSCALL_OF = {"fork": ("fork", "clone", "clone3"), "open": ("open", "openat"),
              "io_uring_unrestricted": ("io_uring_setup",),
              "fcntl_setown": ("fcntl",), "mmap_exec": ("mmap",), "ioctl_tcgets": ("ioctl",)}


def died_of(pid, nr, call):
    """The reported call is the one tried, and the process died by SIGSYS."""
    assert sandbox.syscall_name(nr) in SYSCALL_OF.get(call, (call,))
    _, st = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGSYS


def end(pid, chan):
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


def fork_session():
    """A session exactly as the parent makes one, with the test hook on."""
    mine, theirs = control.pair()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0vionetd-test-session-%d" % os.getpid())
    listener.listen(1)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            mine.close()
            code = session.main(theirs, listener, "t/0", 1 << 32,
                                sandbox.identity(config.DEFAULT_USER),
                                config.DEFAULT_CHROOT, test_hooks=True)
        finally:
            os._exit(code)
    theirs.close()
    listener.close()
    mine.settimeout(10)
    return pid, mine


@pytest.mark.parametrize("call", ("open", "execve", "kill", "socket", "fcntl_setown",
                                  "mmap_exec"))
def test_forbidden_call_kills_the_session(call):
    pid, chan = fork_session()
    try:
        msg, _ = control.recv(chan, pb.FromSession)
        assert msg.WhichOneof("msg") == "spawn"       # alive and asking for workers
        control.send(chan, pb.ToSession(test_forbidden_call=call))
        while True:
            msg, _ = control.recv(chan, pb.FromSession)
            assert msg is not None, "the session died without reporting the call"
            if msg.WhichOneof("msg") == "forbidden_syscall":
                break
        died_of(pid, msg.forbidden_syscall, call)
        pid = None
    finally:
        end(pid, chan)


def titles(root_pid):
    """{pid: (title, uid)} of root_pid and its descendants."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            st = proc_status(int(name))
            with open("/proc/%s/cmdline" % name) as f:
                title = f.read().replace("\0", " ").strip()
        except OSError:
            continue
        out[int(name)] = (title, int(st["Uid"][0]), int(st["PPid"][0]))
    tree, todo = {}, [root_pid]
    while todo:
        p = todo.pop()
        tree[p] = out[p][:2]
        todo += [c for c, v in out.items() if v[2] == p]
    return tree


def test_process_tree_and_only_the_parent_is_root(running):
    d, cap = running
    with TestVM(d.dir + "/t1.sock") as vm:
        assert sent_and_seen(vm, cap, b"tree")
        ps = titles(d.proc.pid)      # `ip netns exec` became the daemon
        names = sorted(t for t, _ in ps.values())
        assert names == ["vionetd: parent", "vionetd: rx t1/0", "vionetd: tx t1/0",
                         "vionetd: vhost t1/0", "vionetd: zygote"], names
        for title, uid in ps.values():
            assert (uid == 0) == (title in ("vionetd: parent", "vionetd: zygote")), (title, uid)
        zygote = [p for p, (t, _) in ps.items() if t == "vionetd: zygote"][0]
        st = proc_status(zygote)
        caps = (1 << 5) | (1 << 6) | (1 << 7) | (1 << 18)   # KILL, SETGID, SETUID, SYS_CHROOT
        assert [int(st[k][0], 16) for k in ("CapEff", "CapPrm", "CapBnd")] == [caps] * 3
        assert int(st["CapInh"][0], 16) == 0 and st["Seccomp"] == ["2"]
        assert own_namespaces(zygote, d.proc.pid)
        sess = [p for p, (t, _) in ps.items() if t.startswith("vionetd: vhost")][0]
        st = proc_status(sess)
        assert st["NoNewPrivs"] == ["1"] and st["Seccomp"] == ["2"]
        assert os.readlink("/proc/%d/root" % sess) == config.DEFAULT_CHROOT
        assert own_namespaces(sess, d.proc.pid)
        # exec'd by the zygote: a layout of its own, not the parent's
        assert libc_base(sess) != libc_base(d.proc.pid)


def test_dead_session_is_replaced_and_a_vmm_reconnects(running):
    """A session killed under a connected VMM: the parent starts a new one
    on the same socket and tap; the VMM's next connection moves frames."""
    d, cap = running
    with TestVM(d.dir + "/t1.sock") as vm:
        assert sent_and_seen(vm, cap, b"before")
        ps = titles(d.proc.pid)
        old = [p for p, (t, _) in ps.items() if t == "vionetd: vhost t1/0"][0]
        os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ps = titles(d.proc.pid)
        new = [p for p, (t, _) in ps.items() if t == "vionetd: vhost t1/0"]
        if new and new[0] != old and len(ps) == 5:
            break
        time.sleep(0.1)
    assert new and new[0] != old, ps
    with TestVM(d.dir + "/t1.sock") as vm:
        assert sent_and_seen(vm, cap, b"after the new session")
    show = d.ctl("show", "t1").stdout
    assert "session: %d, restarts 1" % new[0] in show, show
    assert "killed by SIGKILL" in d.log()


def test_per_vm_user_separates_two_vms():
    """vm "b" { user nobody }: b's session and workers run as nobody, a's as
    a uid of its own from the user range, so neither VM's processes can
    signal or trace the other's even outside seccomp."""
    conf = ('socket "@CTL@"\n'
            'vm "a" { interface { socket "@DIR@/a.sock" } }\n'
            'vm "b" {\n    user "nobody"\n    interface { socket "@DIR@/b.sock" } }\n')
    with wire() as (dns, _wns, _bridge, _veth):
        with daemon(conf, dns) as d:
            d.wait_socket(d.dir + "/b.sock")
            want = {"vionetd: %s %s/0" % (r, vm) for r in ("vhost", "rx", "tx")
                    for vm in "ab"}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                # (a child just forked still bears the zygote's title)
                uids = {t: uid for t, uid in titles(d.proc.pid).values()}
                if want <= set(uids):
                    break
                time.sleep(0.1)
    default = uids["vionetd: vhost a/0"]
    assert config.DEFAULT_USER_RANGE[0] <= default <= config.DEFAULT_USER_RANGE[1]
    nobody = pwd.getpwnam("nobody").pw_uid
    for role in ("vhost", "rx", "tx"):
        assert uids["vionetd: %s a/0" % role] == default, uids
        assert uids["vionetd: %s b/0" % role] == nobody, uids


def gone(pid):
    """pid has exited (a zombie counts: it runs nothing and holds nothing)."""
    try:
        return proc_status(pid)["State"][0] == "Z"
    except OSError:
        return True


def test_every_child_dies_with_the_parent(running):
    """The zygote, the session and its workers stopped (SIGSTOP: none of
    them reads anything), the parent SIGKILLed: all are gone within a
    second (the zygote by PR_SET_PDEATHSIG, its children by theirs)."""
    d, cap = running
    with TestVM(d.dir + "/t1.sock") as vm:
        assert sent_and_seen(vm, cap, b"before the parent dies")
        ps = titles(d.proc.pid)
        children = [p for p, (t, _) in ps.items() if t != "vionetd: parent"]
        assert len(children) == 4          # zygote, session, rx, tx
        for pid in children:
            os.kill(pid, signal.SIGSTOP)
        os.kill(d.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not all(gone(p) for p in children):
            time.sleep(0.02)
        assert [p for p in children if not gone(p)] == []
