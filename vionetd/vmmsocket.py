"""Run by the parent: the listening vhost-user socket of one interface, and who may use it.

listen(path, owner, group, mode) creates the socket a VMM connects to:
  - the directory is created (mode 0755) if missing, and refused
    (UnsafeDirectory: the interface does not start) if someone other than
    root and the socket's owner could replace what is in it: writable by
    others or by a group other than root's and the socket's group, without
    the sticky bit, or owned by a user other than root and the socket's
    owner (check_directory);
  - the socket is bound in a private directory that root makes in the same
    directory (mode 0700, reached through an fd of it, so nobody else can
    plant a symlink in it or swap it under us), given its owner, group and
    mode there, and only then renamed to path: chmod never follows a
    symlink a VMM planted, the path never names a socket with other
    permissions than asked, and a stale socket of an earlier run is
    replaced in one step;
  - something at path that is not a socket (a file, a directory) is never
    removed: listen() raises FileExistsError;
  - the socket is returned listening and non-blocking.

apply_ownership(path, owner, group, mode) sets owner, group and mode of an
existing socket file again (a reload that changed only these), without
recreating it, so a connected VMM is not disturbed: through an O_PATH fd of
path opened without following a symlink and checked to be a socket, so a
VMM that replaced the socket by a symlink gets a FileExistsError, not root's
chmod of the symlink's target.

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


class UnsafeDirectory(Exception):
    """A socket directory that someone else could write into."""


def _set(path, uid, gid, mode, dir_fd=None):
    # chmod first, while root may still own the file (chmod of another
    # user's file needs CAP_FOWNER; a reload may still meet one, see
    # rc.d/vionetd.service). Only ever given a path no other user can
    # change: a name in our private directory, or /proc/self/fd/N of a
    # socket we checked (which must be followed).
    if mode is not None:
        os.chmod(path, mode, dir_fd=dir_fd)
    if uid != -1 or gid != -1:
        os.chown(path, uid, gid, dir_fd=dir_fd)


def _check_not_other(name, dir_fd):
    """Raise FileExistsError if name exists in dir_fd and is not a socket."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError("%s exists and is not a socket: not replacing it" % name)


def check_directory(st, directory, uid, gid):
    """Raise UnsafeDirectory unless only root and the socket's owner (uid)
    can replace entries of the directory whose stat is st. The sticky bit
    (/tmp) lets each user replace only its own entries."""
    sticky = st.st_mode & stat.S_ISVTX
    why = None
    if st.st_uid not in (0, uid):
        why = "owned by uid %d, neither root nor the socket's owner" % st.st_uid
    elif st.st_mode & stat.S_IWOTH and not sticky:
        why = "writable by others without the sticky bit"
    elif st.st_mode & stat.S_IWGRP and not sticky and st.st_gid not in (0, gid):
        why = ("writable by group %d (neither root's nor the socket's) without the "
               "sticky bit" % st.st_gid)
    if why:
        raise UnsafeDirectory("socket directory %s is %s: not listening there"
                              % (directory, why))


def listen(path, owner=None, group=None, mode=0o660):
    """A non-blocking AF_UNIX stream socket listening at path, with the
    given owner, group (names or ids; None: unchanged) and mode."""
    if not os.path.isabs(path):
        raise ValueError("socket path must be absolute: %r" % path)
    uid, gid = _uid(owner), _gid(group)    # KeyError before anything is made
    directory, name = os.path.split(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        check_directory(os.fstat(dfd), directory, uid, gid)
        _check_not_other(name, dfd)
        return _bind_privately(dfd, name, uid, gid, mode)
    finally:
        os.close(dfd)


def _bind_privately(dfd, name, uid, gid, mode):
    """Bind, set up and listen in a private directory of dfd, then rename
    the socket to name in dfd."""
    private = ".vionetd-%d-%s" % (os.getpid(), os.urandom(4).hex())
    os.mkdir(private, 0o700, dir_fd=dfd)
    try:
        pfd = os.open(private, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                      dir_fd=dfd)
    except OSError:
        os.rmdir(private, dir_fd=dfd)
        raise
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind("/proc/self/fd/%d/s" % pfd)  # short, whatever the directory's length
        _set("s", uid, gid, mode, dir_fd=pfd)
        os.rename("s", name, src_dir_fd=pfd, dst_dir_fd=dfd)   # replaces a stale socket
        s.listen(BACKLOG)
        s.setblocking(False)
    except BaseException:
        s.close()
        _unlink_quietly("s", pfd)
        raise
    finally:
        os.close(pfd)
        try:
            os.rmdir(private, dir_fd=dfd)
        except OSError:
            pass
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
    """Set owner, group and mode of the existing socket file at path,
    never of what a symlink there points to."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise FileExistsError("%s is not a socket" % path)
        # the fd pins the inode: /proc/self/fd/N is that socket, whatever
        # is at path by now
        _set("/proc/self/fd/%d" % fd, _uid(owner), _gid(group), mode)
    finally:
        os.close(fd)


def same_but_ownership(old, new):
    """True if two config.Interface objects are equal except for the
    socket's owner, group or mode, and differ in at least one of these:
    a reload then calls apply_ownership() instead of restarting the port."""
    fields = ("socket_owner", "socket_group", "socket_mode")
    if all(getattr(old, f) == getattr(new, f) for f in fields):
        return False
    return dataclasses.replace(old, **{f: getattr(new, f) for f in fields}) == new


def _unlink_quietly(path, dir_fd=None):
    try:
        os.unlink(path, dir_fd=dir_fd)
    except OSError:
        pass
