"""Run by the zygote: the capabilities it keeps, every other one dropped for good.

The zygote stays uid 0 so that its children can become the VMs' users, but
holds only what a child needs between the fork and the end of
sandbox.enter, where it drops them all with its uid:

- CAP_SETUID: setresuid() to the VM's user;
- CAP_SETGID: setgroups([]) and setresgid() to the VM's group;
- CAP_SYS_CHROOT: chroot() to the empty directory;
- CAP_KILL: not for a kill of its own (its seccomp list has neither kill
  nor tkill), but because the kernel sends a child's PR_SET_PDEATHSIG with
  the credentials of the parent that dies: without CAP_KILL, a dying
  zygote's SIGKILL to a child of another uid is refused (EPERM, silently)
  and its children would outlive it, and the parent
  (tests/test_sandbox.py test_every_child_dies_with_the_parent).

Nothing else: the empty directory belongs to root, whose owner rights
suffice to make and list it (no CAP_DAC_OVERRIDE); rlimits are only
lowered (no CAP_SYS_RESOURCE); no_new_privs, seccomp and a tx worker's
io_uring need no capability; the namespaces are made before the drop
(CAP_SYS_ADMIN goes with it). Every other capability leaves the bounding set too, so no
exec could bring it back, where the zygote holds CAP_SETPCAP to drop them;
under rc.d/vionetd.service, whose bounding set lacks it, the bounding set
stays the unit's, and no_new_privs (the unit's, and libseccomp's at the
load of the zygote's list) and a list that forbids exec keep the others
out of reach.
"""
import ctypes
import errno
import struct

CAP_KILL = 5
CAP_SETGID = 6
CAP_SETUID = 7
CAP_SYS_CHROOT = 18
ZYGOTE = (CAP_SETUID, CAP_SETGID, CAP_SYS_CHROOT, CAP_KILL)

PR_CAPBSET_DROP = 24
LINUX_CAPABILITY_VERSION_3 = 0x20080522


def last_cap():
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def keep_only(keep):
    """Drop every capability but keep from the bounding set, then from the
    effective, permitted and inheritable sets. Raises OSError."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(last_cap() + 1):
        if cap not in keep and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() == errno.EPERM:
                break           # no CAP_SETPCAP: see the module's doc
            raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP %d" % cap)
    mask = sum(1 << cap for cap in keep)
    header = ctypes.create_string_buffer(struct.pack("Ii", LINUX_CAPABILITY_VERSION_3, 0))
    # two struct __user_cap_data_struct {effective, permitted, inheritable}:
    # capabilities 0-31, then 32-63
    data = ctypes.create_string_buffer(struct.pack("6I", mask, mask, 0, 0, 0, 0))
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
