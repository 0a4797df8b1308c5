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
- a VM that cannot start after a valid reload is reported, the rest applied;
  a changed one too, though its start waits for its old processes to exit;
- restarting a VM does not stall the others: the parent waits for no child,
  so their round trips through it stay under STALL_BOUND.
"""
import contextlib
import mmap
import os
import signal
import socket
import struct
import sys
import time

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
    """Reload, and wait until the daemon has done it: vionetctl reload
    answers once the interfaces it restarts have started; after SIGHUP, a
    restarted interface is "restarting" until its old processes have exited
    (no session dies in these tests, so that state means nothing else)."""
    if how == "vionetctl":
        return d.ctl("reload", check=False)
    n = d.log().count("reloading ") + d.log().count("reload refused")
    os.kill(d.proc.pid, signal.SIGHUP)
    wait_for("reload on SIGHUP",
             lambda: d.log().count("reloading ") + d.log().count("reload refused") > n)
    wait_for("restarts done", lambda: all(r["STATE"] != "restarting"
                                          for r in status_rows(d).values()))
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


def reload_with_a_missing_bridge(d, names, vm):
    """vionetctl reload of V2 with vm's interface on switch "unused", whose
    bridge does not exist: it exits 1 and says vm cannot start."""
    text = (V2 % names).replace('    interface "%s" {\n' % names[vm],
                                '    interface "%s" {\n        switch "unused"\n' % names[vm])
    write_conf(d, text)
    p = d.ctl("reload", check=False)
    assert p.returncode == 1
    assert p.stderr.startswith("vionetctl: configuration applied, but %s/0: cannot start:" % vm)
    assert "nobridge0" in p.stderr


def test_vm_that_cannot_start_is_reported_rest_applied(rig):
    """A valid file whose new VM cannot start (its bridge does not exist):
    vionetctl reload says which and exits 1; the rest is applied, and the
    next reload tries that VM again."""
    d, ns, names = rig
    reload_with_a_missing_bridge(d, names, "new")
    rows = status_rows(d)
    assert sorted(rows) == ["change", "keep"]
    assert link_index(ns, names["new"]) is None and not os.path.exists(d.dir + "/new.sock")
    assert link_index(ns, names["gone"]) is None
    N.ns_run(ns, "ip", "link", "add", "nobridge0", "type", "bridge")
    assert d.ctl("reload").stdout.strip() == "reloaded"
    assert sorted(status_rows(d)) == ["change", "keep", "new"]
    master = N.ns_run(ns, "ip", "-o", "link", "show", "dev", names["new"]).stdout
    assert "master nobridge0" in master


def test_changed_vm_that_cannot_start_is_reported_too(rig):
    """A changed VM starts again under its tap name once its old processes
    have exited; vionetctl reload waits for that, and says so when that
    start fails (its new bridge does not exist)."""
    d, ns, names = rig
    reload_with_a_missing_bridge(d, names, "change")
    assert sorted(status_rows(d)) == ["keep", "new"]
    assert link_index(ns, names["change"]) is None


def test_stopping_leaves_no_tap_behind(rig):
    """SIGTERM: once vionetd has exited, its taps and sockets are gone, even
    those whose workers a VMM kept busy (the parent reaps the processes it
    killed before it exits)."""
    d, ns, names = rig
    with TestVM(d.dir + "/keep.sock"):
        wait_for("keep running", lambda: status_rows(d)["keep"]["STATE"] == "running")
        d.stop()
    for vm in ("keep", "change", "gone"):
        assert link_index(ns, names[vm]) is None, vm
        assert not os.path.exists("%s/%s.sock" % (d.dir, vm))
    assert "stopped" in d.last_log


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

    def worker_pids():
        return [p for v in stats(d).values() for p in v["worker_pids"]]
    # the zygote forks them after the sessions ask: the last may still be on its way
    wait_for("every worker", lambda: len(worker_pids()) == 6)
    pids = worker_pids()
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


# ---- a restart does not stall the others -----------------------------------

FLIP = """socket "@CTL@"
vm "by" {
    interface "%(by)s" {
        socket "@DIR@/by.sock"
    }
}
vm "flip" {
    interface "%(flip)s" {
        socket "@DIR@/flip.sock"
        queues %(queues)d
        mtu %(mtu)d
    }
}
"""
STALL_BOUND = 0.050       # seconds another VM's control round trip may take
RELOADS = 8
FLIP_QUEUES = 8           # the restarted VM's queue pairs, all in use: 16 workers


class RoundTrips:
    """fn() called in a thread every pace seconds until stopped; each call
    is recorded as (start, seconds). An exception ends the thread and is
    kept."""

    def __init__(self, fn, pace=0.003):
        import threading
        self.fn, self.pace = fn, pace
        self.calls, self.error = [], None
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop_ev.is_set():
            t0 = time.monotonic()
            try:
                self.fn()
            except Exception as e:         # noqa: BLE001 - reported by the test
                self.error = e
                return
            self.calls.append((t0, time.monotonic() - t0))
            self.stop_ev.wait(self.pace)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "a round trip did not return in 30 s"

    def within(self, windows):
        """The durations of the calls that overlap one of windows [(start, end)]."""
        return [took for t0, took in self.calls
                if any(t0 <= end and t0 + took >= start for start, end in windows)]


@contextlib.contextmanager
def forked_loop(step, seconds=120.0):
    """step() over and over in a forked child for at most seconds: its own
    interpreter, so that it never holds the lock of this one's timing
    threads. Yields a function, True while the child runs; the child is
    killed by its pid at the end."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                step()
            code = 0
        finally:
            os._exit(code)
    alive = [True]

    def running():
        if alive[0] and os.waitpid(pid, os.WNOHANG)[0]:
            alive[0] = False            # reaped here
        return alive[0]
    try:
        yield running
    finally:
        if running():
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


@contextlib.contextmanager
def frames_both_ways(ns, tap, vm):
    """vm streams: one child sends its TX frames back to back
    (hostile.Sender), another writes frames into its tap from the far side
    (its rx worker reads them, and drops them: no RX buffers are posted).
    Yields a function: how many TX frames were used so far, None once the
    TX child has stopped."""
    from tests.hostile import Sender
    sender = Sender(vm, GUEST)
    count = mmap.mmap(-1, 8)               # shared with the TX child

    def tx():
        sender.send(b"stall", timeout=5)
        struct.pack_into("<Q", count, 0, sender.sent)
    with N.inside(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    frame = GUEST + PEER + F.build(version=4, proto=F.UDP, payload=b"rx" * 500,
                                   csum="full").data[12:]

    def rx():
        try:
            sock.send(frame)
        except OSError:                     # the tap's queue is full: go on
            pass
    try:
        sock.bind((tap, 0))
        with forked_loop(tx) as tx_running, forked_loop(rx):
            yield lambda: struct.unpack_from("<Q", count)[0] if tx_running() else None
    finally:
        sock.close()
        count.close()


def multiqueue_vmm(path, queue_pairs):
    """A VMM that negotiates and starts every ring of queue_pairs pairs
    (the session asks the parent for a worker per ring)."""
    from tests import vmm
    fe = vmm.Frontend.connect(path, timeout=10)
    region = vmm.GuestRegion(16 << 20)
    try:
        fe.negotiate([region], nrings=2 * queue_pairs)
    except BaseException:
        fe.close()
        region.close()
        raise
    return fe, region


def test_restarting_one_vm_does_not_stall_the_others(netns):
    """A reload that restarts one interface (its mtu changed; the same tap
    name, which the new tap can take only once the old one's processes have
    exited) while another VM streams frames both ways: that other VM's
    round trips through the parent, vionetctl status and a SET_FEATURES
    with REPLY_ACK (its session relays it to the parent and waits for the
    answer), stay under STALL_BOUND from each SIGHUP until the restarted
    interface waits for its VMM again, over RELOADS reloads. (When the
    parent waited for the old processes to exit, each reload stalled it
    for that wait and the restart together: 60-90 ms here.)"""
    ns = netns("st")
    N.disable_ipv6(ns)
    conf = dict(by=N.unique("by"), flip=N.unique("fl"), queues=FLIP_QUEUES, mtu=1500)
    with daemon(FLIP % conf, ns) as d:
        d.wait_socket(d.dir + "/by.sock")
        d.wait_socket(d.dir + "/flip.sock")
        with TestVM(d.dir + "/by.sock", mem_size=4 << 20) as by:
            worst = bystander_during_reloads(d, ns, conf, by)
        print("worst round trips during %d reloads: %s" % (RELOADS, ", ".join(
            "%s %.1f ms (of %d)" % (name, max(took) * 1e3, len(took))
            for name, took in worst.items())))
        for name, took in worst.items():
            assert took, "no %s round trip during a reload" % name
            assert max(took) < STALL_BOUND, "%s took %.1f ms during a reload" % (
                name, max(took) * 1e3)
        assert "internal error" not in d.log()


def bystander_during_reloads(d, ns, conf, by):
    """RELOADS restarts of flip while by streams frames and its round trips
    are timed; {name: durations of the round trips during the reloads}."""
    from vionetd import vionetctl
    from vionetd import vionetd_pb2 as pb
    status = pb.CtlRequest(status=True)

    def flip_row():
        reply = vionetctl.request(d.ctl_socket, status, timeout=5)
        return {i.vm: i for i in reply.interfaces}.get("flip")

    def ack():
        assert by.fe.set_features(by.features) == 0

    ctl = RoundTrips(lambda: vionetctl.request(d.ctl_socket, status, timeout=5))
    vhost = RoundTrips(ack)
    windows = []
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)         # a timing thread gets the lock at once
    try:
        with frames_both_ways(ns, conf["by"], by) as sent, ctl, vhost:
            for _ in range(RELOADS):
                windows.append(restart_flip(d, ns, conf, flip_row, sent))
    finally:
        sys.setswitchinterval(switch_interval)
    for probe in (ctl, vhost):
        assert probe.error is None, repr(probe.error)
    return {"vionetctl status": ctl.within(windows), "SET_FEATURES": vhost.within(windows)}


def restart_flip(d, ns, conf, flip_row, sent):
    """One reload that restarts flip while its VMM runs every queue pair.
    Returns the window (start, end) from the SIGHUP until the new flip
    waits for a VMM on a tap of the same name with the new MTU. The
    bystander's frames went on meanwhile."""
    fe, region = multiqueue_vmm(d.dir + "/flip.sock", FLIP_QUEUES)
    try:
        wait_for("flip's workers", lambda: flip_row().state == "running" and
                 len(flip_row().worker_pids) == 2 * FLIP_QUEUES)
        time.sleep(0.1)                   # the new workers have settled
        before = sent()
        conf["mtu"] = 9000 if conf["mtu"] == 1500 else 1500
        write_conf(d, FLIP % conf)
        start = time.monotonic()
        os.kill(d.proc.pid, signal.SIGHUP)
        assert fe.pending(5) and fe.sock.recv(1) == b""       # the VMM was dropped
    finally:
        fe.close()
        region.close()
    wait_for("flip restarted", lambda: flip_row() is not None and
             (flip_row().state, flip_row().tap) == ("waiting", conf["flip"]), step=0.02)
    end = time.monotonic()
    assert link_mtu(ns, conf["flip"]) == conf["mtu"]
    after = sent()
    assert after is not None and after > before, "the bystander's frames stopped"
    time.sleep(0.2)     # a round trip begun in the window ends before the next VMM comes
    return start, end
