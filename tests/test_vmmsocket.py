"""Tests of vionetd/vmmsocket.py: the VMM's listening socket and its
ownership. Run as root (chown to other users); otherwise the ownership
cases are skipped."""
import grp
import os
import pathlib
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile

import pytest

from vionetd import config, vmmsocket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the system's interpreter: the one running the tests may sit under a
# directory other users cannot enter
PYTHON = "/usr/bin/python3"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


def info(path):
    st = os.lstat(path)
    return stat.S_ISSOCK(st.st_mode), st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_listen_creates_directory_and_listens(tmp_path):
    path = str(tmp_path / "run" / "vionetd" / "a.sock")
    s = vmmsocket.listen(path, mode=0o600)
    try:
        assert info(path)[0] and info(path)[3] == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o755
        assert not s.getblocking()
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(path)
        conn, _ = s.accept()
        c.sendall(b"x")
        assert conn.recv(1) == b"x"
        conn.close()
        c.close()
        # no temporary name is left behind
        assert os.listdir(os.path.dirname(path)) == ["a.sock"]
    finally:
        s.close()


def test_stale_socket_replaced_other_files_kept(tmp_path):
    path = str(tmp_path / "a.sock")
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(path)
    old.close()                       # a stale socket: nobody listens
    ino = os.lstat(path).st_ino
    s = vmmsocket.listen(path)
    try:
        assert os.lstat(path).st_ino != ino
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(path)               # the new one listens
        c.close()
    finally:
        s.close()
    plain = tmp_path / "file"
    plain.write_text("data")
    with pytest.raises(FileExistsError):
        vmmsocket.listen(str(plain))
    assert plain.read_text() == "data"
    with pytest.raises(FileExistsError):
        vmmsocket.listen(str(tmp_path))          # a directory
    with pytest.raises(ValueError):
        vmmsocket.listen("relative.sock")


def test_long_path_binds(tmp_path):
    # no room in sun_path for a private directory's name under d: bound
    # through /proc/self/fd, then renamed to path
    d = tmp_path / ("d" * (100 - len(str(tmp_path))))
    path = str(d / "s")
    assert len(path) <= 107 and len(str(d / ".vionetd-12345-abcdabcd" / "s")) > 107
    d.mkdir()
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(path)
    old.close()
    s = vmmsocket.listen(path, mode=0o640)
    try:
        assert info(path)[3] == 0o640
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(path)
        c.close()
    finally:
        s.close()


@pytest.fixture
def open_dir():
    """A directory every user may traverse (pytest's tmp_path is 0700)."""
    d = tempfile.mkdtemp(prefix="vmmsocket-")
    os.chmod(d, 0o755)
    yield pathlib.Path(d)
    shutil.rmtree(d)


@as_root
def test_owner_group_mode_applied_and_reapplied(open_dir):
    tmp_path = open_dir
    path = str(tmp_path / "a.sock")
    nobody = pwd.getpwnam("nobody")
    nogroup = grp.getgrnam("nogroup").gr_gid
    s = vmmsocket.listen(path, owner="nobody", group="nogroup", mode=0o660)
    try:
        assert info(path) == (True, nobody.pw_uid, nogroup, 0o660)
        # a user in the group can connect; another cannot
        probe = ("import socket,sys; c=socket.socket(socket.AF_UNIX);"
                 "c.connect(sys.argv[1]); print('ok')")

        def connect_as(uid, gid):
            return subprocess.run(
                [PYTHON, "-c", probe, path], capture_output=True, text=True,
                timeout=30, user=uid, group=gid, extra_groups=[])
        assert connect_as(1, nogroup).stdout == "ok\n"        # daemon, group nogroup
        assert connect_as(1, 1).returncode != 0              # daemon, group daemon
        # a reload changing only ownership: same socket file, new owner/mode
        ino = os.lstat(path).st_ino
        vmmsocket.apply_ownership(path, owner=0, group="daemon", mode=0o600)
        assert info(path) == (True, 0, 1, 0o600)
        assert os.lstat(path).st_ino == ino
        assert connect_as(1, nogroup).returncode != 0
    finally:
        s.close()
    with pytest.raises(KeyError):
        vmmsocket.listen(str(tmp_path / "b.sock"), group="no_such_group_x")
    assert not os.path.exists(tmp_path / "b.sock")


def test_apply_ownership_refuses_non_socket(tmp_path):
    f = tmp_path / "f"
    f.write_text("")
    os.chmod(f, 0o644)
    with pytest.raises(FileExistsError):
        vmmsocket.apply_ownership(str(f), mode=0o666)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o644


@as_root
def test_chmod_never_follows_a_symlink_the_vmm_planted(open_dir, monkeypatch):
    """A VMM that owns the socket directory (socket owner "nobody") swaps
    every entry there for a symlink to a root-only file right after the
    bind: the file keeps its mode and owner; the socket is still made."""
    victim = open_dir.parent / ("victim-%d" % os.getpid())
    victim.write_text("secret")
    os.chmod(victim, 0o600)
    os.chown(open_dir, pwd.getpwnam("nobody").pw_uid, -1)
    swap = ("import os,sys; d,v=sys.argv[1:]\n"
            "for n in os.listdir(d):\n"
            "    os.rename(os.path.join(d,n), os.path.join(d,n+'.moved'))\n"
            "    os.symlink(v, os.path.join(d,n))\n")
    real = socket.socket

    class Attacked(real):
        def bind(self, addr):
            super().bind(addr)
            subprocess.run([PYTHON, "-c", swap, str(open_dir), str(victim)], check=True,
                           timeout=30, user="nobody", group="nogroup", extra_groups=[])
    monkeypatch.setattr(vmmsocket.socket, "socket", Attacked)
    path = str(open_dir / "a.sock")
    try:
        s = vmmsocket.listen(path, owner="nobody", group="nogroup", mode=0o666)
        s.close()
        st = os.stat(victim)
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 0)
        assert info(path)[0] and info(path)[3] == 0o666
    finally:
        victim.unlink()


def test_apply_ownership_never_follows_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("")
    os.chmod(victim, 0o600)
    os.symlink(victim, tmp_path / "a.sock")         # the VMM swapped the socket
    with pytest.raises(OSError):
        vmmsocket.apply_ownership(str(tmp_path / "a.sock"), owner=65534, mode=0o666)
    st = os.stat(victim)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, os.getuid())


@as_root
@pytest.mark.parametrize("mode, owner, sock_owner, sock_group, refused", [
    (0o777, 0, None, None, "writable by others without the sticky bit"),
    (0o1777, 0, None, None, None),                    # /tmp: the sticky bit
    (0o775, 0, None, None, "writable by group 1"),    # group daemon, not the socket's
    (0o775, 0, None, "daemon", None),
    (0o755, "nobody", None, None, "owned by uid 65534, neither root nor"),
    (0o755, "nobody", "nobody", None, None),          # the socket's owner (the VMM's user)
])
def test_a_socket_directory_others_can_write_is_refused(open_dir, mode, owner, sock_owner,
                                                         sock_group, refused):
    d = open_dir / "run"
    d.mkdir()
    os.chown(d, pwd.getpwnam(owner).pw_uid if owner else 0, 1)
    os.chmod(d, mode)
    path = str(d / "a.sock")
    if refused:
        with pytest.raises(vmmsocket.UnsafeDirectory, match=refused):
            vmmsocket.listen(path, owner=sock_owner, group=sock_group)
        assert os.listdir(d) == []
    else:
        vmmsocket.listen(path, owner=sock_owner, group=sock_group).close()
        assert os.listdir(d) == ["a.sock"]


def test_same_but_ownership():
    base = 'vm "a" { interface { socket "/s" %s mtu 1500 } }'
    a = config.parse(base % "").vms["a"].interfaces[0]
    b = config.parse(base % "group nogroup mode 0600").vms["a"].interfaces[0]
    c = config.parse((base % "group nogroup").replace("1500", "9000")).vms["a"].interfaces[0]
    assert vmmsocket.same_but_ownership(a, b)
    assert not vmmsocket.same_but_ownership(a, a)        # no change at all
    assert not vmmsocket.same_but_ownership(a, c)        # the mtu changed too


@as_root
def test_interface_listen_uses_its_settings(tmp_path):
    # iface.py's _listen passes the interface's settings through
    from vionetd import iface as ifmod
    text = 'vm "a" { interface { socket "%s/p.sock" group nogroup mode 0640 } }' % tmp_path
    conf = config.parse(text)
    iface = conf.vms["a"].interfaces[0]
    p = ifmod.Interface(None, iface, conf)
    p._listen()
    try:
        assert info(iface.socket) == (True, 0, grp.getgrnam("nogroup").gr_gid, 0o640)
    finally:
        p.listener.close()


def test_connect_to_a_listening_vmm(tmp_path):
    path = str(tmp_path / "qemu.sock")
    with pytest.raises(FileNotFoundError):
        vmmsocket.connect(path, timeout=1)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    with pytest.raises(ConnectionRefusedError):
        vmmsocket.connect(path, timeout=1)        # bound, not listening yet
    srv.listen(1)
    c = vmmsocket.connect(path, timeout=1)
    try:
        conn, _ = srv.accept()
        conn.sendall(b"hi")
        assert c.recv(2) == b"hi"
        conn.close()
    finally:
        c.close()
        srv.close()


VM = (70999, 70999)         # a VM's uid and gid, as uids.py gives them (no account)


def _listening(path, mode):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chmod(path, mode)
    srv.listen(4)
    return srv


def _peer(conn):
    import struct
    return struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))


@pytest.mark.skipif(os.geteuid() != 0, reason="changes its effective uid")
def test_connect_as_the_vm_never_as_root():
    """Client mode dials as the VM: a socket only root may reach (a
    directory of mode 0700 on the way, or the socket's own mode) is out of
    reach, also through a symlink; the peer sees the VM's uid; root's ids
    and groups are back after, failure or not."""
    with tempfile.TemporaryDirectory(prefix="vionetd-test-") as tmp:
        os.chmod(tmp, 0o755)            # (pytest's tmp_path is in a 0700 directory)
        _connect_as_the_vm(pathlib.Path(tmp))


def _connect_as_the_vm(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    hidden = _listening(str(private / "s.sock"), 0o666)
    closed = _listening(str(tmp_path / "root.sock"), 0o600)
    open_ = _listening(str(tmp_path / "vmm.sock"), 0o666)
    os.symlink(private / "s.sock", tmp_path / "link.sock")
    before = (os.getresuid(), os.getresgid(), os.getgroups())
    try:
        for path in ("private/s.sock", "link.sock", "root.sock"):
            with pytest.raises(PermissionError):
                vmmsocket.connect(str(tmp_path / path), timeout=0, ident=VM)
            assert (os.getresuid(), os.getresgid(), os.getgroups()) == before
        for srv in (hidden, closed):
            srv.setblocking(False)
            with pytest.raises(BlockingIOError):
                srv.accept()
        c = vmmsocket.connect(str(tmp_path / "vmm.sock"), timeout=0, ident=VM)
        conn, _ = open_.accept()
        assert _peer(conn)[1:] == VM
        conn.close()
        c.close()
        # the VMM's group, as the only supplementary group, opens a group socket
        os.chmod(tmp_path / "root.sock", 0o660)
        os.chown(tmp_path / "root.sock", 0, 4242)
        vmmsocket.connect(str(tmp_path / "root.sock"), timeout=0, ident=VM,
                          groups=[4242]).close()
        assert (os.getresuid(), os.getresgid(), os.getgroups()) == before
        with pytest.raises(PermissionError):
            vmmsocket.connect(str(tmp_path / "vmm.sock"), ident=(0, 0))
    finally:
        for srv in (hidden, closed, open_):
            srv.close()
