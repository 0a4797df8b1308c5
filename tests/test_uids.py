"""One uid per VM (vionetd/uids.py), its descriptor limit, and why: the fd-in-flight attack.

- Identities, alone: two VMs get two uids of the range (gid = uid), a VM
  keeps its uid, a uid that is an account's or a group's is skipped, a
  freed uid is given again only after the rest of the range, a VM with a
  user runs as that user, an exhausted range is an error.
- The real daemon: two VMs' sessions and workers run as two different
  uids of the default range (/proc/PID/status); a reload that adds a VM
  and keeps the others leaves them their uid (and their session), the new
  VM gets another; a removed VM's uid is freed.
- RLIMIT_NOFILE of a session grows with its queue pairs: a VMM of 16 queue
  pairs negotiates every pair (32 rings started and stopped, 32 workers,
  none replaced). With the fixed 64 of before, about 9 pairs was the most.
- The fd-in-flight attack between two VMs: a process running as the
  victim VM's uid (what a compromised session is) keeps more than its
  RLIMIT_NOFILE of fds in flight over SCM_RIGHTS, in a socketpair it never
  reads. The kernel counts fds in flight per uid against the sender's
  RLIMIT_NOFILE, so a session of the same uid can then pass no fd to its
  workers (ETOOMANYREFS). Under the default configuration the bystander
  VM negotiates and moves frames all the same; with both VMs given the
  same `user`, it does not (the same test, expected to fail there: it
  shows what the per-VM uid is for).
"""
import array
import contextlib
import os
import pwd
import signal
import socket
import time
from types import SimpleNamespace

import pytest

from tests import hostile as H
from tests import vmm
from tests.daemon import (capture_socket, daemon, switched_conf, wait_for, wait_for_frame,
                          wire)
from tests.hostile import proc_status
from tests.testvm import TestVM
from tests import frames as F
from vionetd import config, uids

FD_BATCH = 250                # fds per SCM_RIGHTS message (the kernel takes 253)
STUFFED = 4000                # fds the attacker tries to keep in flight


# ---- Identities ----------------------------------------------------------------

def _conf(vms, low=90000, high=90009):
    return SimpleNamespace(user_range=(low, high),
                           vms={n: SimpleNamespace(user=u) for n, u in vms.items()})


def test_two_vms_two_uids_kept_and_freed_round_robin():
    ids = uids.Identities()
    conf = _conf({"a": None, "b": None, "c": "nobody"})
    a, b = ids.of(conf, "a"), ids.of(conf, "b")
    assert a == (90000, 90000) and b == (90001, 90001)
    assert ids.of(conf, "a") == a                   # kept
    nobody = pwd.getpwnam("nobody")
    assert ids.of(conf, "c") == (nobody.pw_uid, nobody.pw_gid)
    ids.keep(conf, {"b"})                           # a removed: its uid is free
    conf.vms["d"] = SimpleNamespace(user=None)
    assert ids.of(conf, "d") == (90002, 90002)      # not a's, which waits its turn
    assert ids.of(conf, "b") == b


def test_accounts_skipped_and_range_exhausted():
    taken = pwd.getpwnam("nobody").pw_uid           # 65534: an account
    ids = uids.Identities()
    conf = _conf({"a": None, "b": None}, taken, taken + 1)
    assert ids.of(conf, "a") == (taken + 1, taken + 1)
    with pytest.raises(uids.NoFreeUid):
        ids.of(conf, "b")


def test_a_changed_range_gives_a_new_uid():
    ids = uids.Identities()
    a = ids.of(_conf({"a": None}), "a")
    assert ids.of(_conf({"a": None}, 91000, 91009), "a") == (91000, 91000) != a


# ---- the real daemon -------------------------------------------------------------

def ids_of(pid):
    """(uid, gid) of pid, all four of each alike."""
    st = proc_status(pid)
    assert st["Uid"] == [st["Uid"][0]] * 4 and st["Gid"] == [st["Gid"][0]] * 4, st
    return int(st["Uid"][0]), int(st["Gid"][0])


def pids(d, vm):
    """(session pid, [worker pids]) of vm's interface 0, from vionetctl."""
    st = d.stats()["%s/0" % vm]
    return st["session_pid"], st["worker_pids"]


def vm_uids(d, vm):
    """The (uid, gid) of vm's session and its workers, once both workers are there."""
    s, w = wait_for("%s's workers" % vm, lambda: (lambda p: p if len(p[1]) == 2 else None)(
        pids(d, vm)))
    return {ids_of(p) for p in [s] + w}


def test_each_vm_its_uid_kept_across_a_reload():
    low, high = config.DEFAULT_USER_RANGE
    with wire() as (dns, _wns, bridge, _veth):
        with daemon(switched_conf(bridge, ("a", "b")), dns) as d:
            d.wait_socket(d.dir + "/b.sock")
            ua, ub = vm_uids(d, "a"), vm_uids(d, "b")
            assert len(ua) == len(ub) == 1 and ua != ub, (ua, ub)
            for uid, gid in ua | ub:
                assert low <= uid <= high and gid == uid
            session_a = pids(d, "a")[0]
            with open(d.conf, "w") as f:        # c added, b removed, a unchanged
                f.write(switched_conf(bridge, ("a", "c")).replace("@CTL@", d.ctl_socket)
                        .replace("@DIR@", d.dir))
            assert d.ctl("reload").stdout.strip() == "reloaded"
            d.wait_socket(d.dir + "/c.sock")
            assert pids(d, "a")[0] == session_a and vm_uids(d, "a") == ua
            uc = vm_uids(d, "c")
            assert uc.isdisjoint(ua) and uc.isdisjoint(ub)   # b's freed uid waits its turn


def test_sixteen_queue_pairs_negotiate_every_pair():
    conf = switched_conf("@BR@", ("mq",), lines="        queues 16")
    with wire() as (dns, _wns, bridge, _veth):
        with daemon(conf.replace("@BR@", bridge), dns) as d:
            d.wait_socket(d.dir + "/mq.sock")
            fd = os.memfd_create("mq", 0)
            os.ftruncate(fd, 1 << 20)
            fe = vmm.Frontend.connect(d.dir + "/mq.sock", timeout=10)
            try:
                fe.negotiate([H._Region(fd, 1 << 20)], vmm.SplitLayout(0x100000, 64, 32),
                             nrings=32)
                wait_for("32 workers", lambda: len(pids(d, "mq")[1]) == 32)
                assert len(fe.stop(nrings=32)) == 32       # every ring answered
                st = d.stats()["mq/0"]
                assert st["restarts"] == 0 and not st["reason"], st
            finally:
                fe.close()
                os.close(fd)
            assert "Too many" not in d.log()


# ---- the fd-in-flight attack -----------------------------------------------------

@contextlib.contextmanager
def fds_in_flight(uid, gid):
    """A forked process running as uid:gid that keeps fds in flight in a
    socketpair it never reads, until the block ends; yields how many it
    got in flight (it stops at ETOOMANYREFS)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                    array.array("i", [b.fileno()] * FD_BATCH).tobytes())]
            n = 0
            while n < STUFFED:
                try:
                    a.sendmsg([b"x"], anc, socket.MSG_DONTWAIT)
                except OSError:
                    break                  # ETOOMANYREFS (or a full buffer)
                n += FD_BATCH
            os.write(w, b"%d\n" % n)
            time.sleep(60)                 # killed before that
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        with os.fdopen(r) as f:
            yield int(f.readline() or 0)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def serves(path, cap, tag):
    """True if a TestVM negotiates on path and a TX frame reaches cap."""
    try:
        with TestVM(path, mem_size=4 << 20) as vm:
            vm.send(F.build(version=4, proto=F.UDP, payload=tag, csum="full").data)
            return wait_for_frame(cap, tag, 5) is not None
    except (vmm.FrontendError, OSError, TimeoutError, RuntimeError):
        return False


@pytest.mark.parametrize("shared", [False, True], ids=["default", "shared-user"])
def test_fd_in_flight_attack_spares_the_bystander(shared):
    lines = '    user "%s"\n' % config.DEFAULT_USER if shared else ""
    conf = switched_conf("@BR@", ("by", "vic"))
    if shared:
        conf = conf.replace('vm "by" {\n', 'vm "by" {\n' + lines).replace(
            'vm "vic" {\n', 'vm "vic" {\n' + lines)
    with wire() as (dns, wns, bridge, veth_w):
        with daemon(conf.replace("@BR@", bridge), dns) as d:
            d.wait_socket(d.dir + "/by.sock")
            cap = capture_socket(wns, veth_w)
            try:
                (ident,) = vm_uids(d, "vic")
                assert (ident in vm_uids(d, "by")) == shared
                with fds_in_flight(*ident) as n:
                    assert n > 64 * 2, n          # more than a session's RLIMIT_NOFILE
                    ok = serves(d.dir + "/by.sock", cap, b"bystander under attack")
                refs = "Too many references" in d.log()
            finally:
                cap.close()
    if shared:          # what the per-VM uid prevents: shown, not wanted
        assert not ok and refs, "a shared uid did not let the attack through"
    else:
        assert ok and not refs, "the bystander stopped serving"
