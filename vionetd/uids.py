"""Run by the parent (root): the uid and gid each VM's processes run as.

A VM that names a user (vionetd.conf `user`: its own, or the global one
when that is written) runs as that user's uid and primary gid, looked up
here in the parent (its chrooted children could not). A VM that names none
gets a uid of its own from the user range (`user range`, default
70000-79999) and the gid of the same number, neither of which needs a
passwd or group entry:
- never held by two VMs at once: a VM keeps its uid from its first start
  until a reload removes it, disables it or gives it a user; its session
  restarts and the reloads that keep it keep the uid;
- a number that belongs to an account (getpwuid finds it) or to a group
  (getgrgid) is skipped;
- the range is walked round-robin from after the last uid given, so a
  freed uid is given again only after the rest of the range: a killed
  process of the VM it belonged to that has not exited yet is not
  mistaken for the next VM's.

Why: the kernel counts the fds a uid has in flight over SCM_RIGHTS against
the sender's RLIMIT_NOFILE; with one uid for every VM, one VM's session
could fill that count and stop every other session from passing memory,
kick and call fds to its workers (ETOOMANYREFS). It also keeps a
compromised VM's processes from signalling or ptracing another VM's.
"""
import grp
import pwd


class NoFreeUid(LookupError):
    """Every uid of the range is held by a VM or belongs to an account."""


class Identities:
    def __init__(self):
        self.given = {}         # VM name -> (uid, gid) from the range
        self.last = None        # the uid given last

    def of(self, conf, vm_name):
        """The (uid, gid) VM vm_name runs as under conf: its user's, or its
        uid from conf's range (kept if it has one in the range, else a new
        one). Raises KeyError (an unknown user) or NoFreeUid."""
        vm = conf.vms[vm_name]
        if vm.user is not None:
            pw = pwd.getpwnam(vm.user)
            return pw.pw_uid, pw.pw_gid
        low, high = conf.user_range
        ident = self.given.get(vm_name)
        if ident is not None and low <= ident[0] <= high:
            return ident
        uid = self._free(low, high)
        self.given[vm_name] = (uid, uid)
        self.last = uid
        return uid, uid

    def keep(self, conf, names):
        """Free the uids of the VMs not in names (removed or disabled) and
        of those that now name a user."""
        for name in list(self.given):
            if name not in names or conf.vms[name].user is not None:
                del self.given[name]

    def _free(self, low, high):
        held = {uid for uid, _ in self.given.values()}
        start = low if self.last is None or not low <= self.last < high else self.last + 1
        size = high - low + 1
        for i in range(size):
            uid = low + (start - low + i) % size
            if uid not in held and not _taken(uid):
                return uid
        raise NoFreeUid("no free uid in the user range %d-%d" % (low, high))


def _taken(uid):
    """True if uid is an account's, or uid as a gid is a group's."""
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False
