"""Who the VMM is: client mode never connects as root, and `vmm user` refuses others.

Hostile VMMs against the real daemon (tests/hostile.py's Rig), with the
bystander VM "by" watched throughout (handshake round trips under
RTT_BOUND_S, its frames arriving) and a second, unconnected VM "other":

- client mode (session/vmm_link.py, vmmsocket.connect): VM "cli"'s VMM
  replaces the path vionetd dials by a symbolic link
  - to a socket in a directory only root may enter (mode 0700), which
    listens and counts connections: vionetd keeps trying and failing
    (it dials as the VM's uid), the socket sees no connection;
  - to another VM's vionetd socket ("other"): that VM sees no connection
    (it stays "waiting") and its own VMM still gets in.
  Before, the root parent followed the link, so the first socket was
  reached as root and "other" was taken (its session serving the dialed
  connection, which its real VMM then found taken).
- `vmm user 0` (session/vmm_identity.py): a VMM that connects to VM
  "vic"'s socket (mode 0666, so the file system lets it) with its
  effective uid set to another uid, in a forked child, is closed before
  its first request is answered, and `vionetctl show vic` says why; a VMM
  of uid 0 then negotiates and moves frames there.
"""
import os
import socket
import tempfile

import pytest

from tests import hostile as H
from tests import vmm
from tests.daemon import wait_for

pytestmark = pytest.mark.root

RTT_BOUND_S = 0.05        # the bystander's handshake round trips stay under this
STRANGER = 12346          # a uid that is not vic's vmm user (0)
EXTRA = """
vm "cli" {
    interface {
        socket "@DIR@/cli.sock" connect
        switch "sw"
    }
}
vm "vic" {
    vmm user 0
    interface {
        socket "@DIR@/vic.sock" mode 0666
        switch "sw"
    }
}
"""


@pytest.fixture(scope="module")
def rig():
    with H.Rig(("by", "other"), extra=EXTRA) as r:
        r.d.wait_socket(r.path("vic"))
        yield r


def retries(rig):
    return rig.d.stats()["cli/0"]["retries"]


def dials_through(rig, target, more=2):
    """Put a symlink to target at cli's path, let vionetd dial it `more`
    times (each attempt fails, or the first succeeds and the count goes
    to 0), watching the bystander; returns its problems."""
    link = rig.path("cli")
    os.symlink(target, link)
    try:
        with rig.monitor() as mon:
            start = retries(rig)
            wait_for("%d more dials" % more, lambda: retries(rig) >= start + more
                     or rig.d.stats()["cli/0"]["state"] != "connecting", timeout=10)
    finally:
        os.unlink(link)
    return mon.problems(rtt_bound=RTT_BOUND_S)


def test_client_path_swapped_for_a_root_only_socket(rig):
    rig.ensure()
    with tempfile.TemporaryDirectory(prefix="vionetd-root-only-") as private:
        os.chmod(private, 0o700)
        target = os.path.join(private, "service.sock")
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lsock.bind(target)
            os.chmod(target, 0o666)     # only the directory keeps others out
            lsock.listen(8)
            lsock.setblocking(False)
            problems = dials_through(rig, target)
            with pytest.raises(BlockingIOError):
                conn, _ = lsock.accept()
                conn.close()            # (reached: the assertion fails)
        finally:
            lsock.close()
    assert rig.d.stats()["cli/0"]["state"] == "connecting"
    assert "Permission denied" in rig.d.log()
    assert problems == [], problems


def test_client_path_swapped_for_another_vms_socket(rig):
    rig.ensure()
    problems = dials_through(rig, rig.path("other"))
    assert rig.d.stats()["other/0"]["state"] == "waiting"
    assert "other/0: VMM connected" not in rig.d.log()
    assert problems == [], problems
    assert rig.recover("other") is None      # its real VMM is not locked out


def connect_as(path, uid):
    """In a forked child whose effective uid and gid are uid: connect to
    path and ask GET_FEATURES. Returns "answered", "closed" (the
    connection was closed first) or "no connection"."""
    pid = os.fork()
    if pid == 0:
        code = 9
        try:
            os.setgroups([])
            os.setresgid(-1, uid, -1)
            os.setresuid(-1, uid, -1)
            try:
                fe = vmm.Frontend.connect(path, timeout=5)
            except OSError:
                code = 2
            else:
                try:
                    fe.get_features()
                    code = 0
                except (vmm.FrontendError, OSError, ValueError):
                    code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return {0: "answered", 1: "closed", 2: "no connection"}.get(
        os.WEXITSTATUS(status), "child failed %d" % status)


def test_vmm_of_the_wrong_uid_is_refused(rig):
    rig.ensure()
    with rig.monitor() as mon:
        assert connect_as(rig.path("vic"), STRANGER) == "closed"
    assert mon.problems(rtt_bound=RTT_BOUND_S) == []
    show = rig.d.ctl("show", "vic").stdout
    assert "refused a VMM" in show and "uid %d, not the vmm user's 0" % STRANGER in show, show
    assert "vic/0: refused a VMM" in rig.d.log()
    assert rig.recover("vic") is None        # uid 0, the vmm user, gets in
