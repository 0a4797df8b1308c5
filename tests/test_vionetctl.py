"""vionetctl(8) against the real daemon, in a network namespace of the test's own.

What an operator and a script rely on:
- status: one row per interface under the column names, states as they
  really are (waiting, connected, running), taps that exist, local addresses;
- show: the three sources of the feature set (policy, tap and kernel, VMM)
  and the result, the path per direction, counters that move with the
  traffic really sent (frames, bytes, passthrough, software segmentation and
  checksums, drops by reason, notifications), the real worker pids;
- stats, stats --json: the same counters, names without a doubled prefix;
- log brief|verbose changes what the daemon logs;
- access: the socket is 0660 root:<daemon group>; a member of the group may
  look (status, show, stats) but not change (reload, log); anyone else cannot
  connect at all. Checked by running vionetctl's own code as those users
  (a forked child that drops to their uid and gid).
- garbage on the socket (bytes that do not parse, an empty datagram, a huge
  one, random bytes, clients that connect and say nothing) gets an error
  reply or a closed connection, and the daemon keeps answering.
"""
import errno
import io
import json
import os
import pwd
import re
import select
import signal
import socket
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests import frames as F
from tests import netns as N
from tests.daemon import daemon
from tests.testvm import TestVM
from vionetd import features, vionetctl
from vionetd import vionetd_pb2 as pb

pytestmark = pytest.mark.root

CONF = """socket "@CTL@"
dns 192.0.2.53
vm "a" {
    interface "%(tap_a)s" {
        socket "@DIR@/a.sock"
        lladdr 52:54:00:12:34:56
    }
}
vm "b" {
    local interface {
        socket "@DIR@/b.sock"
    }
}
vm "c" {
    interface "%(tap_c)s" {
        socket "@DIR@/c.sock"
        lladdr 52:54:00:12:34:57
        offload tx csum software
        offload tx tso4 software
        offload rx csum software
        offload rx tso4 off
    }
}
"""
GUEST_A = bytes.fromhex("525400123456")
PEER = bytes.fromhex("5254009a0001")
# c's guest does not take TSO6 from the host, nor USO: the VMM's answer is a
# subset of the offer, and show must tell them apart.
C_WANT = ~(features.bit(features.HOST_TSO6) | features.bit(features.HOST_USO)
           | features.bit(features.GUEST_TSO6))


# ---- helpers shared with test_reload.py ------------------------------------

def wait_for(what, cond, timeout=10.0, step=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError("waited %.0f s for %s" % (timeout, what))
        time.sleep(step)


def status_rows(d):
    """vionetctl status as [{column: cell}], checking the header."""
    lines = d.ctl("status").stdout.splitlines()
    assert lines[0].split() == list(vionetctl.STATUS_COLUMNS), lines[0]
    return {r["VM"]: r for r in (dict(zip(vionetctl.STATUS_COLUMNS, line.split()))
                                 for line in lines[1:])}


def parse_show(text):
    """vionetctl show, as {interface: {"head", "features": {label: mask},
    "names": {label: [names]}, "path", "workers", "restarts", "counters"}}."""
    out, cur, section = {}, None, None
    for line in text.splitlines():
        m = re.match(r"^(\S+/\d+): (\w+), tap (\S+), socket (\S+)$", line)
        if m:
            cur = out[m.group(1)] = dict(state=m.group(2), tap=m.group(3),
                                         socket=m.group(4), features={}, names={},
                                         counters={})
            continue
        assert cur is not None, line
        if line.startswith("  features:"):
            section = "features"
        elif line.startswith("  counters"):
            section = "counters"
        elif m := re.match(r"^  path: tx (.+), rx (.+)$", line):
            cur["path"] = (m.group(1), m.group(2))
        elif m := re.match(r"^  session: (\d+), restarts (\d+)$", line):
            cur["session"] = int(m.group(1))
            cur["session_restarts"] = int(m.group(2))
        elif m := re.match(r"^  mtu: tap (\d+|-), guest (\d+|-)$", line):
            cur["mtu"] = (m.group(1), m.group(2))
        elif m := re.match(r"^  last drop: (.+)$", line):
            cur["reason"] = m.group(1)
        elif m := re.match(r"^  migration: dirty logging (on|off), pages marked (\d+), "
                           r"announced (\d+)$", line):
            cur["migration"] = (m.group(1), int(m.group(2)), int(m.group(3)))
        elif m := re.match(r"^  rate: tx (.+), rx (.+); tap dropped (\d+)$", line):
            cur["rate"] = (m.group(1), m.group(2))
            cur["tap_dropped"] = int(m.group(3))
        elif m := re.match(r"^  processes: (.+)$", line):
            cur["processes"] = {p.split()[0]: int(p.split()[1]) for p in m.group(1).split(", ")}
        elif m := re.match(r"^  workers: ([\d ]+), restarts (\d+)$", line):
            cur["workers"] = [int(p) for p in m.group(1).split()]
            cur["restarts"] = int(m.group(2))
        elif m := re.match(r"^  (lladdr|address) (\S+)", line):
            cur[m.group(1)] = m.group(2)
        elif section == "features" and (m := re.match(r"^    (\w+)\s+(0x[0-9a-f]+) ?(.*)$",
                                                     line)):
            cur["features"][m.group(1)] = int(m.group(2), 16)
            cur["names"][m.group(1)] = m.group(3).split()
        elif section == "counters" and (m := re.match(r"^    (\w+)\s+(\d+)$", line)):
            cur["counters"][m.group(1)] = int(m.group(2))
        else:
            raise AssertionError("unexpected line in show: %r" % line)
    return out


def process_title(pid):
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        return f.read().replace(b"\0", b" ").decode().strip()


def link_index(ns, ifname):
    """The tap's ifindex in ns, or None if there is no such link."""
    p = N.ns_run(ns, "ip", "-j", "link", "show", "dev", ifname, check=False)
    if p.returncode != 0:
        return None
    return json.loads(p.stdout)[0]["ifindex"]


def run_as(uid, gid, fn, timeout=20.0):
    """fn() in a forked child that has dropped to uid:gid with no other
    groups; returns what fn returned (JSON-able), bounded in time."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            result = fn()
            os.write(w, json.dumps(result).encode())
            code = 0
        except BaseException as e:     # report, never fall back into pytest
            os.write(w, json.dumps({"exception": repr(e)}).encode())
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                raise TimeoutError("child as uid %d did not finish" % uid)
            ready, _, _ = select.select([r], [], [], left)
            if ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return json.loads(data)


def vionetctl_as(uid, gid, socket_path, *args):
    """vionetctl's own main() as uid:gid: (exit status, stdout, stderr)."""
    def child():
        out, err = io.StringIO(), io.StringIO()
        sys.stdout, sys.stderr = out, err
        try:
            rc = vionetctl.main(["-s", socket_path, *args])
        except SystemExit as e:
            rc = e.code
        return [rc, out.getvalue(), err.getvalue()]
    res = run_as(uid, gid, child)
    assert isinstance(res, list), res
    return tuple(res)


def raw_request(path, data, timeout=5.0):
    """Send data as one datagram; the reply parsed, or None if the daemon
    closed the connection without one."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(timeout)
        s.connect(path)
        try:
            s.send(data)
            reply = s.recv(1 << 24)
        except (ConnectionResetError, BrokenPipeError):
            return None
    if not reply:
        return None
    r = pb.CtlReply()
    r.ParseFromString(reply)
    return r


# ---- the daemon all tests here share ---------------------------------------

class Rig:
    def __init__(self, d, ns, tap_a, tap_c, vm_a, vm_c):
        self.d, self.ns, self.tap_a, self.tap_c = d, ns, tap_a, tap_c
        self.vm_a, self.vm_c = vm_a, vm_c


@pytest.fixture(scope="module")
def rig():
    tap_a, tap_c = N.unique("ta"), N.unique("tc")
    with N.netns("ctl") as ns:
        N.disable_ipv6(ns)
        with daemon(CONF % dict(tap_a=tap_a, tap_c=tap_c), ns) as d:
            for vm in "abc":
                d.wait_socket("%s/%s.sock" % (d.dir, vm))
            with TestVM(d.dir + "/a.sock") as vm_a, \
                    TestVM(d.dir + "/c.sock", want=C_WANT) as vm_c:
                yield Rig(d, ns, tap_a, tap_c, vm_a, vm_c)


def show(rig, vm):
    p = rig.d.ctl("show", vm)
    return parse_show(p.stdout)


# ---- status -----------------------------------------------------------------

def test_status_table(rig):
    d = rig.d
    rows = status_rows(d)
    assert sorted(rows) == ["a", "b", "c"]
    assert rows["a"]["STATE"] == "running" and rows["c"]["STATE"] == "running"
    assert rows["b"]["STATE"] == "waiting"
    for vm in "abc":
        assert rows[vm]["SOCKET"] == "%s/%s.sock" % (d.dir, vm)
        assert rows[vm]["QUEUES"] == "1"
        assert link_index(rig.ns, rows[vm]["TAP"]) is not None, "no tap %s" % rows[vm]["TAP"]
    assert rows["a"]["TAP"] == rig.tap_a and rows["c"]["TAP"] == rig.tap_c
    assert rows["a"]["LLADDR"] == "52:54:00:12:34:56"
    assert rows["b"]["LLADDR"] == "-" and rows["a"]["ADDRESS"] == "-"
    # b is local: its guest address is in the default prefix, and the host
    # side of its /31 is on the tap.
    import ipaddress
    guest = ipaddress.IPv4Address(rows["b"]["ADDRESS"])
    assert guest in ipaddress.IPv4Network("100.64.0.0/10")
    addrs = N.ns_run(rig.ns, "ip", "-j", "addr", "show", "dev", rows["b"]["TAP"]).stdout
    host = [a["local"] for a in json.loads(addrs)[0]["addr_info"] if a["family"] == "inet"]
    assert host == [str(ipaddress.IPv4Address(int(guest) ^ 1))]


def test_status_connected_then_waiting(rig):
    """A VMM that connected but started nothing is "connected"; gone, "waiting"."""
    d = rig.d
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(d.dir + "/b.sock")
        wait_for("b connected", lambda: status_rows(d)["b"]["STATE"] == "connected")
    wait_for("b waiting", lambda: status_rows(d)["b"]["STATE"] == "waiting")


# ---- show -------------------------------------------------------------------

def test_show_features_three_sources_and_result(rig):
    for vm, tvm in (("a", rig.vm_a), ("c", rig.vm_c)):
        s = show(rig, vm)["%s/0" % vm]
        f = s["features"]
        assert set(f) == {"policy", "tap", "offered", "vmm", "negotiated"}
        # what the VMM acked is what our test VMM acked; the result is that
        # within the offer; the offer is within the policy.
        assert f["vmm"] == tvm.features
        assert f["negotiated"] == f["vmm"] & f["offered"]
        assert f["offered"] & ~f["policy"] == 0
        assert f["tap"] & ~features.TUN_F_ALL == 0 and f["tap"] & features.TUN_F_CSUM
        for label in ("policy", "offered", "vmm", "negotiated"):
            assert s["names"][label] == features.names(f[label])
        assert s["names"]["tap"] == features.tun_names(f["tap"])
    a, c = show(rig, "a")["a/0"], show(rig, "c")["c/0"]
    assert a["features"]["negotiated"] & features.bit(features.HOST_TSO6)
    assert not c["features"]["negotiated"] & features.bit(features.HOST_TSO6)
    assert c["features"]["offered"] & features.bit(features.HOST_TSO6)
    # c's policy: rx tso4 off, so GUEST_TSO4 is neither in its policy nor offered.
    assert not c["features"]["policy"] & features.bit(features.GUEST_TSO4)
    assert a["features"]["policy"] & features.bit(features.GUEST_TSO4)
    assert a["path"] == ("passthrough", "passthrough")
    assert c["path"] == ("software checksum,tso4", "software checksum")
    assert a["state"] == "running" and a["tap"] == rig.tap_a
    assert a["lladdr"] == "52:54:00:12:34:56"
    b = show(rig, "b")["b/0"]
    assert b["state"] == "waiting" and b["features"]["vmm"] == 0
    assert b["features"]["negotiated"] == 0 and "address" in b


def test_show_workers_are_the_real_ones(rig):
    s = show(rig, "a")["a/0"]
    assert len(s["workers"]) == 2
    titles = sorted(process_title(pid) for pid in s["workers"])
    assert titles == ["vionetd: rx a/0", "vionetd: tx a/0"]
    assert s["restarts"] == 0
    # the processes line names the same ones, and the session
    assert s["processes"] == {"session": s["session"], "rx": s["workers"][0],
                              "tx": s["workers"][1]}
    assert s["rate"] == ("none", "none") and s["tap_dropped"] == 0


def test_show_counters_follow_traffic(rig):
    """Counters move by what was really sent: frames, bytes, the path taken,
    software work, a refused header by its reason, notifications."""
    vm = rig.vm_a
    before = show(rig, "a")["a/0"]["counters"]
    sent = []
    for i in range(5):
        f = F.build(version=4, proto=F.UDP, payload=bytes([i]) * (100 + i), csum="full")
        vm.send(f.data, tuple(f.hdr_fields().values()))
        sent.append(len(f.data))
    bad = F.build(payload=b"f" * 100)
    hdr = dict(bad.hdr_fields(), flags=0x21)           # an unknown flag bit
    vm.send(bad.data, tuple(hdr.values()))
    # RX: frames written into the tap from the namespace reach the guest.
    vm.post_rx(8, 2048)
    with N.inside(rig.ns):
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    with tx:
        tx.bind((rig.tap_a, 0))
        rx_sent = []
        for i in range(3):
            frame = GUEST_A + PEER + F.build(version=4, proto=F.UDP, payload=b"r" * (300 + i),
                                             csum="full").data[12:]
            tx.send(frame)
            rx_sent.append(frame)
        got = vm.receive(3)
    assert [g[1] for g in got] == rx_sent

    def delta():
        after = show(rig, "a")["a/0"]["counters"]
        return {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    def rx_counted():
        dl = delta()
        return dl if dl.get("rx_frames", 0) >= 3 else None
    dl = wait_for("rx counters", rx_counted)
    assert dl["tx_frames"] == 5 and dl["tx_passthrough"] == 5
    assert dl["tx_bytes"] == sum(sent)
    assert dl["tx_refused_flags_unknown"] == 1
    assert dl["tx_notifications"] >= 1 and dl["rx_notifications"] >= 1
    assert dl["rx_frames"] == 3 and dl["rx_bytes"] == sum(map(len, rx_sent))
    assert not any(k.startswith(("rx_rx_", "tx_tx_", "tx_rx_", "rx_tx_")) for k in dl)


def test_show_software_counters(rig):
    """c does TX checksums and TSO4 in software: the counters say so."""
    vm = rig.vm_c
    before = rig.d.stats()["c/0"]["counters"]
    csum = F.build(version=4, proto=F.TCP, payload=b"c" * 999)
    tso = F.build(version=4, proto=F.TCP, payload=bytes(range(256)) * 20, gso_size=1448)
    for f in (csum, tso):
        vm.send(f.data, tuple(f.hdr_fields().values()))
    c = show(rig, "c")["c/0"]["counters"]
    assert c["tx_sw_csum"] - before["tx_sw_csum"] >= 1
    assert c["tx_sw_segmented"] - before["tx_sw_segmented"] == 1
    assert c["tx_segments_out"] - before["tx_segments_out"] == -(-len(tso.payload) // 1448)
    assert c.get("tx_passthrough", 0) == before["tx_passthrough"]


def test_show_unknown_vm(rig):
    p = rig.d.ctl("show", "nosuchvm", check=False)
    assert p.returncode == 1 and "no such VM: nosuchvm" in p.stderr and not p.stdout


# ---- stats ------------------------------------------------------------------

def test_stats_json_and_text_agree(rig):
    d = rig.d
    js = d.stats()
    assert sorted(js) == ["a/0", "b/0", "c/0"]
    a = js["a/0"]
    for key in ("vm", "state", "socket", "tap", "negotiated", "vmm", "policy", "offered",
                "tap_features", "tx_path", "rx_path", "worker_pids", "restarts", "counters"):
        assert key in a, key
    assert a["vm"] == "a" and a["tap"] == rig.tap_a and a["negotiated"] == rig.vm_a.features
    names = set(a["counters"])
    for want in ("rx_frames", "rx_bytes", "rx_no_buffers", "rx_bounced", "rx_sw_csum",
                 "tx_frames", "tx_bytes", "tx_passthrough", "tx_sw_segmented", "tx_sw_csum",
                 "tx_notifications", "tx_refused_hdr_len", "tx_ring_loop"):
        assert want in names, want
    for name in names:
        assert not name.startswith(("rx_rx_", "tx_tx_", "rx_tx_", "tx_rx_")), name
        assert not name.endswith(("ring_ok", "refused_ok")), name
    text = d.ctl("stats").stdout.splitlines()
    triples = [line.split() for line in text]
    assert all(len(t) == 3 for t in triples)
    assert {t[0] for t in triples} == set(js)
    # counters only grow between the two reads
    for iface, name, value in triples:
        assert int(value) >= js[iface]["counters"][name], (iface, name)
    assert len(triples) == sum(len(v["counters"]) for v in js.values())


# ---- log --------------------------------------------------------------------

def test_log_brief_and_verbose(rig):
    d = rig.d
    marker = "control: status from uid 0"        # logged at verbose level only
    assert d.ctl("log", "brief").stdout.strip() == "log level brief"
    n = d.log().count(marker)
    d.ctl("status")
    time.sleep(0.2)
    assert d.log().count(marker) == n, "verbose line logged at brief"
    assert d.ctl("log", "verbose").stdout.strip() == "log level verbose"
    d.ctl("status")
    wait_for("verbose log line", lambda: d.log().count(marker) == n + 1, timeout=5)
    p = d.ctl("log", "loud", check=False)
    assert p.returncode == 2                     # usage: argparse refuses the choice


# ---- access -----------------------------------------------------------------

def daemon_user():
    try:
        return pwd.getpwnam("_vionetd")
    except KeyError:
        pytest.skip("no _vionetd user (scripts/setup.sh creates it)")


def test_socket_mode_and_group(rig):
    u = daemon_user()
    st_ = os.stat(rig.d.ctl_socket)
    assert oct(st_.st_mode & 0o7777) == "0o660"
    assert st_.st_uid == 0 and st_.st_gid == u.pw_gid


def test_group_member_may_look_not_change(rig):
    u = daemon_user()
    d, path = rig.d, rig.d.ctl_socket
    for args in (("status",), ("show", "a"), ("stats",), ("stats", "--json")):
        rc, out, err = vionetctl_as(u.pw_uid, u.pw_gid, path, *args)
        assert rc == 0, (args, err)
        assert out and not err
    rc, out, _ = vionetctl_as(u.pw_uid, u.pw_gid, path, "stats", "--json")
    assert sorted(json.loads(out)) == ["a/0", "b/0", "c/0"]
    log_before = d.log()
    for args, what in ((("reload",), "reload"), (("log", "brief"), "log")):
        rc, out, err = vionetctl_as(u.pw_uid, u.pw_gid, path, *args)
        assert rc == 1 and not out
        assert err.strip() == "vionetctl: %s: permission denied, needs root" % what, err
    new_log = d.log()[len(log_before):]
    assert "reloading" not in new_log and "log level" not in new_log
    # the level did not change: verbose lines still come
    n = d.log().count("control: status from uid 0")
    d.ctl("status")
    wait_for("still verbose", lambda: d.log().count("control: status from uid 0") == n + 1)


def test_outsider_cannot_connect(rig):
    nobody = pwd.getpwnam("nobody")
    assert nobody.pw_gid != daemon_user().pw_gid
    path = rig.d.ctl_socket

    def connect():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            s.connect(path)
            return "connected"
        except OSError as e:
            return e.errno
        finally:
            s.close()
    assert run_as(nobody.pw_uid, nobody.pw_gid, connect) == errno.EACCES
    rc, out, err = vionetctl_as(nobody.pw_uid, nobody.pw_gid, path, "status")
    assert rc == 1 and not out and err.strip() == "vionetctl: %s: Permission denied" % path


# ---- garbage ----------------------------------------------------------------

def still_answers(rig):
    rows = status_rows(rig.d)
    assert sorted(rows) == ["a", "b", "c"] and rows["a"]["STATE"] == "running"


@pytest.mark.parametrize("data,expect", [
    (b"\xff" * 64, "request does not parse"),
    (b"\x0a\x05ab", "request does not parse"),      # show with a cut string
    (b"", "empty request"),
    (b"\xf8\x07\x01", "empty request"),              # only an unknown field (127)
    (pb.CtlRequest(show="a").SerializeToString() * 2000, "request longer than 4096 bytes"),
    (b"\x00" * (1 << 16), "request longer than 4096 bytes"),
])
def test_garbage_gets_an_error(rig, data, expect):
    reply = raw_request(rig.d.ctl_socket, data)
    assert reply is not None and reply.error == expect and not reply.interfaces
    still_answers(rig)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_random_bytes(rig, data):
    """Whatever the bytes, a CtlReply or a closed connection, never a stuck
    or dead daemon. (Bytes that happen to be a valid request are answered.)"""
    reply = raw_request(rig.d.ctl_socket, data)
    assert reply is None or isinstance(reply, pb.CtlReply)
    assert rig.d.proc.poll() is None


def test_silent_clients_do_not_stall_the_daemon(rig):
    """More clients than the daemon keeps, each connected and saying nothing;
    status is still answered at once, and the oldest silent ones are closed."""
    socks = []
    try:
        for _ in range(40):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.connect(rig.d.ctl_socket)
            socks.append(s)
        # one that connects and goes away at once
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.connect(rig.d.ctl_socket)
        t0 = time.monotonic()
        still_answers(rig)
        assert time.monotonic() - t0 < 5
        socks[0].settimeout(5)
        assert socks[0].recv(100) == b"", "oldest silent client not closed"
    finally:
        for s in socks:
            s.close()
    still_answers(rig)


def test_daemon_log_has_no_internal_error(rig):
    assert "internal error" not in rig.d.log()
    assert "Traceback" not in rig.d.log()
