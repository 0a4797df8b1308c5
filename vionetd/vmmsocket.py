"""Run by the parent: the listening vhost-user socket of one interface, and who may use it.

listen(path, owner, group, mode) creates the socket a VMM connects to:
  - the directory is created (mode 0755) if missing;
  - the socket is bound under a temporary name in the same directory, given
    its owner, group and mode there, and only then renamed to path, so the
    path never names a socket with other permissions than asked, and a stale
    socket of an earlier run is replaced in one step (when the temporary
    name would not fit in sun_path, the socket is bound at path directly,
    after unlinking a stale one, and chown/chmod follow);
  - something at path that is not a socket (a file, a directory) is never
    removed: listen() raises FileExistsError;
  - the socket is returned listening and non-blocking.

apply_ownership(path, owner, group, mode) sets owner, group and mode of an
existing socket file again (a reload that changed only these), without
recreating it, so a connected VMM is not disturbed.

owner and group are names (looked up here; the configuration checked that
they existed) or numeric ids; None leaves that part as it is (root's, for a
socket root creates). mode None leaves the mode alone.

connect(path, timeout, ident, groups) is the other direction (an interface
written "socket PATH connect"): the VMM listens, vionetd connects. The path
is the VMM's, which it may replace at any time (by a symlink to the system
bus, to systemd's or libvirt's socket, to another VM's vionetd socket), so
the root parent never connects to it as root: it connects with its
effective uid and gid set to the VM's, ident, and its supplementary groups
set to groups (the VM's `vmm group` when there is one, else none), then
takes root's back (setresuid/setresgid: the saved ids stay 0). While the
effective uid is not 0 the kernel clears the effective capabilities, so
the path is looked up and the socket's write permission checked as the
VM's uid (a socket only root, or only another VM's VMM, may use is out of
reach: EACCES), and the peer's SO_PEERCRED shows the VM's uid, not 0. The
VMM must therefore let the VM's uid (or its `vmm group`) write to its
socket. The session then checks who listens there (session/vmm_link.py).

same_but_ownership(old, new) tells the parent whether two config.Interface
objects differ in the socket's owner, group or mode only.
"""
import contextlib
import dataclasses
import grp
import os
import pwd
import socket
import stat

SUN_PATH_MAX = 107
BACKLOG = 1


def _uid(owner):
    if owner is None:
        return -1
    if isinstance(owner, int):
        return owner
    return pwd.getpwnam(owner).pw_uid


def _gid(group):
    if group is None:
        return -1
    if isinstance(group, int):
        return group
    return grp.getgrnam(group).gr_gid


def _set(path, uid, gid, mode):
    # chmod first, while root may still own the file (chmod of another
    # user's file needs CAP_FOWNER; a reload may still meet one, see
    # rc.d/vionetd.service)
    if mode is not None:
        os.chmod(path, mode)
    if uid != -1 or gid != -1:
        os.chown(path, uid, gid, follow_symlinks=False)


def _check_not_other(path):
    """Raise FileExistsError if path exists and is not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError("%s exists and is not a socket: not replacing it"
                              % path)
    return True


def listen(path, owner=None, group=None, mode=0o660):
    """A non-blocking AF_UNIX stream socket listening at path, with the
    given owner, group (names or ids; None: unchanged) and mode."""
    if not os.path.isabs(path):
        raise ValueError("socket path must be absolute: %r" % path)
    uid, gid = _uid(owner), _gid(group)    # KeyError before anything is made
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    _check_not_other(path)
    tmp = os.path.join(directory, ".vionetd-%d.tmp" % os.getpid())
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if len(os.fsencode(tmp)) <= SUN_PATH_MAX:
            if _check_not_other(tmp):
                os.unlink(tmp)             # our own leftover
            s.bind(tmp)
            try:
                _set(tmp, uid, gid, mode)
                os.rename(tmp, path)       # replaces a stale socket atomically
            except BaseException:
                _unlink_quietly(tmp)
                raise
        else:
            if _check_not_other(path):
                os.unlink(path)            # a stale socket of an earlier run
            s.bind(path)
            _set(path, uid, gid, mode)
        s.listen(BACKLOG)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def connect(path, timeout=5.0, ident=None, groups=()):
    """A stream socket connected to the VMM's listening socket at path
    (client mode), blocking with timeout (0: not at all; a VMM whose
    listen queue is full is then an error like any other), connected as
    ident, (uid, gid), with the supplementary groups groups (see above;
    None: as the caller is). Raises OSError (for instance
    FileNotFoundError or ConnectionRefusedError while the VMM is not
    listening yet: the caller retries; PermissionError where the VM's uid
    may not connect)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(timeout)
        with acting_as(ident, groups):
            s.connect(path)
    except BaseException:
        s.close()
        raise
    return s


@contextlib.contextmanager
def acting_as(ident, groups=()):
    """Run the block with effective uid and gid ident (None: unchanged)
    and supplementary groups groups; root's are restored after, whatever
    happens (saved ids stay 0, which lets the process take them back)."""
    if ident is None:
        yield
        return
    uid, gid = ident
    if uid == 0:
        raise PermissionError("refusing to act as root for a VM")
    saved, euid, egid = os.getgroups(), os.geteuid(), os.getegid()
    os.setgroups(list(groups))
    try:
        os.setresgid(-1, gid, -1)
        try:
            os.setresuid(-1, uid, -1)
            try:
                yield
            finally:
                os.setresuid(-1, euid, -1)
        finally:
            os.setresgid(-1, egid, -1)
    finally:
        os.setgroups(saved)


def apply_ownership(path, owner=None, group=None, mode=None):
    """Set owner, group and mode of the existing socket file at path."""
    st = os.lstat(path)
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError("%s is not a socket" % path)
    _set(path, _uid(owner), _gid(group), mode)


def same_but_ownership(old, new):
    """True if two config.Interface objects are equal except for the
    socket's owner, group or mode, and differ in at least one of these:
    a reload then calls apply_ownership() instead of restarting the port."""
    fields = ("socket_owner", "socket_group", "socket_mode")
    if all(getattr(old, f) == getattr(new, f) for f in fields):
        return False
    return dataclasses.replace(old, **{f: getattr(new, f) for f in fields}) == new


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass
