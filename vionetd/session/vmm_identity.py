"""Run by a session: who the VMM on a connection is, against who it must be.

vionetd.conf may name who a VM's VMM runs as (`vmm user`, `vmm group`).
Every VMM connection, accepted on the listening socket (server mode) or
dialed by the parent (client mode: who listens at the VMM's path), is
checked before its first byte is read: SO_PEERCRED gives the uid and gid
the peer had when it connected (server mode) or called listen() (client
mode), as the kernel recorded them; the peer cannot choose them. The gid
is the peer's effective gid then, not its supplementary groups.

A connection of anyone else is refused: closed at once, with a log line
and the reason that vionetctl status and show print.
"""
import socket
import struct

PEERCRED = struct.Struct("3i")       # struct ucred: pid, uid, gid


def peer(sock):
    """(pid, uid, gid) of sock's peer."""
    return PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                           PEERCRED.size))


def refusal(sock, expected):
    """None if sock's peer is who expected, (uid, gid) each None for any,
    says; else why it is refused."""
    want_uid, want_gid = expected
    if want_uid is None and want_gid is None:
        return None
    try:
        pid, uid, gid = peer(sock)
    except OSError as e:
        return "refusing a VMM whose credentials cannot be read: %s" % e.strerror
    wrong = []
    if want_uid is not None and uid != want_uid:
        wrong.append("uid %d, not the vmm user's %d" % (uid, want_uid))
    if want_gid is not None and gid != want_gid:
        wrong.append("gid %d, not the vmm group's %d" % (gid, want_gid))
    if not wrong:
        return None
    return "refused a VMM (pid %d) of %s" % (pid, " and ".join(wrong))
