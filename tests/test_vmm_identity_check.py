"""session/vmm_identity.py alone: SO_PEERCRED against the VM's vmm user and group."""
import os
import socket

from vionetd.session import vmm_identity


def test_refusal_names_what_is_wrong():
    a, b = socket.socketpair()
    try:
        pid, uid, gid = vmm_identity.peer(a)
        assert (pid, uid, gid) == (os.getpid(), os.geteuid(), os.getegid())
        assert vmm_identity.refusal(a, (None, None)) is None
        assert vmm_identity.refusal(a, (uid, None)) is None
        assert vmm_identity.refusal(a, (uid, gid)) is None
        why = vmm_identity.refusal(a, (uid + 1, gid))
        assert why == "refused a VMM (pid %d) of uid %d, not the vmm user's %d" % (
            pid, uid, uid + 1)
        why = vmm_identity.refusal(a, (uid + 1, gid + 1))
        assert "uid %d, not the vmm user's" % uid in why and \
            "gid %d, not the vmm group's %d" % (gid, gid + 1) in why
    finally:
        a.close()
        b.close()
