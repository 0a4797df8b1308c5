"""Reload (SIGHUP and vionetctl reload) against the real daemon, in a network
namespace of the test's own.

The promise (vionetd.conf(5), vionetd(8) SIGNALS):
- VMs added are started, VMs removed are torn down (tap deleted, socket
  removed, workers gone), changed ones are restarted;
- unchanged ones are not touched, so their guests see nothing: a test VMM
  connected to an unchanged VM keeps its connection, the same workers serve
  it, and frames go on flowing through the same session, both ways. Changes
  that are not its own (another VM, a switch it does not use, dns, the order
  of the blocks) do not count;
- a file with an error is refused as a whole: the error is logged with its
  file and line, vionetctl reload prints it and exits 1, and everything runs
  as before, even the parts of the file before the error;
- a VM that cannot start after a valid reload is reported, the rest applied.
"""
import os
import signal
import socket

import pytest

from tests import frames as F
from tests import netns as N
from tests.daemon import daemon
from tests.test_vionetctl import link_index, process_title, status_rows, wait_for
from tests.testvm import TestVM

pytestmark = pytest.mark.root

GUEST = bytes.fromhex("525400123456")
PEER = bytes.fromhex("5254009a0001")

V1 = """socket "@CTL@"
vm "keep" {
    interface "%(keep)s" {
        socket "@DIR@/keep.sock"
        lladdr 52:54:00:12:34:56
    }
}
vm "change" {
    interface "%(change)s" {
        socket "@DIR@/change.sock"
        mtu 1500
    }
}
vm "gone" {
    interface "%(gone)s" {
        socket "@DIR@/gone.sock"
    }
}
"""

# keep's block is the same, moved and commented; what changes around it is
# not its own: a new VM, a switch it does not use, dns.
V2 = """socket "@CTL@"
dns 192.0.2.1
switch "unused" { interface "nobridge0" }
vm "new" {
    interface "%(new)s" {
        socket "@DIR@/new.sock"
    }
}
vm "change" {
    interface "%(change)s" {
        socket "@DIR@/change.sock"
        mtu 9000
    }
}
# keep, moved down
vm "keep" {
    interface "%(keep)s" {
        lladdr 52:54:00:12:34:56      # same address
        socket "@DIR@/keep.sock"
    }
}
"""


def write_conf(d, text):
    """Replace the daemon's configuration file at once (rename), with the
    placeholders tests/daemon.py knows."""
    text = text.replace("@CTL@", d.ctl_socket).replace("@DIR@", d.dir)
    tmp = d.conf + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, d.conf)


def stats(d):
    return d.stats()


def pids_of(st, key):
    return sorted(st[key]["worker_pids"])


def gone(pid):
    """The process is no more (not even a zombie of ours)."""
    try:
        return not process_title(pid).startswith("vionetd:")
    except FileNotFoundError:
        return True


def link_mtu(ns, ifname):
    import json
    p = N.ns_run(ns, "ip", "-j", "link", "show", "dev", ifname)
    return json.loads(p.stdout)[0]["mtu"]


class Traffic:
    """Frames both ways through one TestVM session on the tap in ns."""

    def __init__(self, ns, tap, vm):
        self.vm = vm
        with N.inside(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.sock.bind((tap, 0))

    def close(self):
        self.sock.close()

    def both_ways(self, tag):
        f = F.build(version=4, proto=F.UDP, payload=tag * 50, csum="full")
        used = self.vm.send(f.data, tuple(f.hdr_fields().values()))
        assert used[1] == 0                        # TX: consumed, nothing written
        self.vm.post_rx(1, 2048)
        frame = GUEST + PEER + F.build(version=4, proto=F.UDP, payload=tag * 60,
                                       csum="full").data[12:]
        self.sock.send(frame)
        (_hdr, got), = self.vm.receive(1)
        assert got == frame


@pytest.fixture
def rig():
    names = {k: N.unique(k[:2]) for k in ("keep", "change", "gone", "new")}
    with N.netns("rl") as ns:
        N.disable_ipv6(ns)
        with daemon(V1 % names, ns) as d:
            for vm in ("keep", "change", "gone"):
                d.wait_socket("%s/%s.sock" % (d.dir, vm))
            yield d, ns, names


def trigger(d, how):
    """Reload, and wait until the daemon has done it."""
    if how == "vionetctl":
        return d.ctl("reload", check=False)
    n = d.log().count("reloading ") + d.log().count("reload refused")
    os.kill(d.proc.pid, signal.SIGHUP)
    wait_for("reload on SIGHUP",
             lambda: d.log().count("reloading ") + d.log().count("reload refused") > n)
    status_rows(d)        # answered: the reload (one loop turn) is over
    return None


@pytest.mark.parametrize("how", ["sighup", "vionetctl"])
def test_reload_adds_removes_restarts_and_leaves_the_rest(rig, how):
    d, ns, names = rig
    assert process_title(d.proc.pid) == "vionetd: parent"   # SIGHUP goes to the daemon
    with TestVM(d.dir + "/keep.sock") as vm_keep, TestVM(d.dir + "/change.sock") as vm_change:
        keep = Traffic(ns, names["keep"], vm_keep)
        try:
            keep.both_ways(b"before")
            st1 = stats(d)
            assert sorted(st1) == ["change/0", "gone/0", "keep/0"]
            idx = {k: link_index(ns, names[k]) for k in ("keep", "change", "gone")}
            log_at = len(d.log())

            write_conf(d, V2 % names)
            p = trigger(d, how)
            if p is not None:
                assert p.returncode == 0 and p.stdout.strip() == "reloaded", p.stderr

            rows = status_rows(d)
            assert sorted(rows) == ["change", "keep", "new"]
            st2 = stats(d)
            log = d.log()[log_at:]

            # keep: not touched; its guest sees nothing.
            assert pids_of(st2, "keep/0") == pids_of(st1, "keep/0")
            assert rows["keep"]["STATE"] == "running"
            assert link_index(ns, names["keep"]) == idx["keep"]
            assert not vm_keep.fe.pending(0.2), "keep's VMM connection got EOF or data"
            assert "keep/0" not in log, log
            keep.both_ways(b"after")
            st3 = stats(d)
            assert st3["keep/0"]["counters"]["tx_frames"] == \
                st1["keep/0"]["counters"]["tx_frames"] + 1
            assert st3["keep/0"]["counters"]["rx_frames"] >= \
                st1["keep/0"]["counters"]["rx_frames"] + 1

            # change: restarted with its new MTU; its old VMM was dropped.
            assert set(pids_of(st2, "change/0")).isdisjoint(pids_of(st1, "change/0"))
            assert all(gone(pid) for pid in pids_of(st1, "change/0"))
            assert vm_change.fe.pending(5) and vm_change.fe.sock.recv(1) == b""
            assert link_index(ns, names["change"]) not in (None, idx["change"])
            assert link_mtu(ns, names["change"]) == 9000
            assert rows["change"]["STATE"] == "waiting"
            assert "change/0: stopping (changed)" in log

            # gone: tap, socket and workers gone.
            assert link_index(ns, names["gone"]) is None
            assert not os.path.exists(d.dir + "/gone.sock")
            assert all(gone(pid) for pid in pids_of(st1, "gone/0"))
            assert "gone/0: stopping (removed)" in log

            # new: started, and serves a VMM.
            assert rows["new"]["STATE"] == "waiting" and rows["new"]["TAP"] == names["new"]
            assert link_index(ns, names["new"]) is not None
            titles = sorted(process_title(p) for p in pids_of(st2, "new/0"))
            assert titles == ["vionetd: rx new/0", "vionetd: tx new/0"]
            for vm in ("new", "change"):
                with TestVM("%s/%s.sock" % (d.dir, vm)):
                    wait_for(vm + " running", lambda: status_rows(d)[vm]["STATE"] == "running")
        finally:
            keep.close()
    assert "internal error" not in d.log()


BAD_LINE = 12


def bad_file():
    """V2 up to its change block, then an error at line BAD_LINE."""
    lines = (V2.splitlines()[:BAD_LINE - 1]) + ["        mtu lots", "    }", "}"]
    return "\n".join(lines) + "\n"


def test_bad_file_refused_as_a_whole(rig):
    d, ns, names = rig
    assert bad_file().splitlines()[BAD_LINE - 1].strip() == "mtu lots"
    with TestVM(d.dir + "/keep.sock") as vm_keep:
        keep = Traffic(ns, names["keep"], vm_keep)
        try:
            wait_for("keep running", lambda: status_rows(d)["keep"]["STATE"] == "running")
            before_rows, before = status_rows(d), stats(d)
            write_conf(d, bad_file() % names)

            p = d.ctl("reload", check=False)
            assert p.returncode == 1 and not p.stdout
            assert p.stderr.startswith("vionetctl: %s:%d: " % (d.conf, BAD_LINE)), p.stderr
            wait_for("logged", lambda: "reload refused, configuration unchanged: %s:%d: "
                     % (d.conf, BAD_LINE) in d.log())

            n = d.log().count("reload refused")
            trigger(d, "sighup")
            assert d.log().count("reload refused") == n + 1

            os.unlink(d.conf)                         # no file at all: refused too
            p = d.ctl("reload", check=False)
            assert p.returncode == 1 and d.conf in p.stderr and "cannot read" in p.stderr

            # Nothing of the file was applied, not even before the error.
            assert status_rows(d) == before_rows
            after = stats(d)
            assert {k: v["worker_pids"] for k, v in after.items()} == \
                {k: v["worker_pids"] for k, v in before.items()}
            assert link_index(ns, names["new"]) is None
            assert link_mtu(ns, names["change"]) == 1500
            assert os.path.exists(d.dir + "/gone.sock")
            assert not vm_keep.fe.pending(0.1)
            keep.both_ways(b"still")
            assert "reloading" not in d.log()

            # A good file is applied after all that.
            write_conf(d, V2 % names)
            assert d.ctl("reload").stdout.strip() == "reloaded"
            assert sorted(status_rows(d)) == ["change", "keep", "new"]
            keep.both_ways(b"later")
        finally:
            keep.close()


def test_vm_that_cannot_start_is_reported_rest_applied(rig):
    """A valid file whose new VM cannot start (its bridge does not exist):
    vionetctl reload says which and exits 1; the rest is applied, and the
    next reload tries that VM again."""
    d, ns, names = rig
    text = (V2 % names).replace('    interface "%s" {\n' % names["new"],
                                '    interface "%s" {\n        switch "unused"\n' % names["new"])
    write_conf(d, text)
    p = d.ctl("reload", check=False)
    assert p.returncode == 1
    assert p.stderr.startswith("vionetctl: configuration applied, but new/0: cannot start:")
    assert "nobridge0" in p.stderr
    rows = status_rows(d)
    assert sorted(rows) == ["change", "keep"]
    assert link_index(ns, names["new"]) is None and not os.path.exists(d.dir + "/new.sock")
    assert link_index(ns, names["gone"]) is None
    N.ns_run(ns, "ip", "link", "add", "nobridge0", "type", "bridge")
    assert d.ctl("reload").stdout.strip() == "reloaded"
    assert sorted(status_rows(d)) == ["change", "keep", "new"]
    master = N.ns_run(ns, "ip", "-o", "link", "show", "dev", names["new"]).stdout
    assert "master nobridge0" in master


def test_control_socket_moves_with_the_file(rig):
    d, ns, names = rig
    old = d.ctl_socket
    new = os.path.join(d.dir, "ctl2.sock")
    write_conf(d, (V1 % names).replace('socket "@CTL@"', 'socket "%s"' % new))
    assert d.ctl("reload").stdout.strip() == "reloaded"    # answered on the old socket
    assert not os.path.exists(old)
    st = os.stat(new)
    assert oct(st.st_mode & 0o777) == "0o660"
    d.ctl_socket = new
    assert sorted(status_rows(d)) == ["change", "gone", "keep"]


def test_reload_to_no_vm_and_back(rig):
    """Every VM removed: all taps, sockets and workers go, status and stats
    answer with nothing (an empty reply is a reply); then they come back."""
    d, ns, names = rig
    pids = [p for v in stats(d).values() for p in v["worker_pids"]]
    write_conf(d, 'socket "@CTL@"\n')
    assert d.ctl("reload").stdout.strip() == "reloaded"
    assert status_rows(d) == {}
    assert stats(d) == {}
    assert d.ctl("stats").stdout == ""
    for vm in ("keep", "change", "gone"):
        assert link_index(ns, names[vm]) is None
        assert not os.path.exists("%s/%s.sock" % (d.dir, vm))
    assert len(pids) == 6 and all(gone(p) for p in pids)
    write_conf(d, V1 % names)
    trigger(d, "sighup")
    assert sorted(status_rows(d)) == ["change", "gone", "keep"]
    with TestVM(d.dir + "/keep.sock"):
        wait_for("keep running", lambda: status_rows(d)["keep"]["STATE"] == "running")
