"""The parent's end of a session's channel (session_channel.py): what a
(compromised) session may say, checked message by message, without a daemon."""
import os
import socket
from types import SimpleNamespace

import pytest

from vionetd import config, control, features, iface, session_channel, tap
from vionetd import vionetd_pb2 as pb
from vionetd.session_channel import SessionChannel


@pytest.fixture
def channel(monkeypatch):
    """A SessionChannel of an interface offering VERSION_1 only; what it
    sends, the workers it forks and the sessions it kills are recorded."""
    monkeypatch.setattr(tap, "set_offload", lambda fd, mask: None)
    conf = config.parse('vm "a" { interface { socket "/s" } }')
    p = iface.Interface(SimpleNamespace(watch=lambda *a: None, unwatch=lambda *a: None),
                        conf.vms["a"].interfaces[0], conf)
    p.offered, p.tap_fds = features.bit(features.VERSION_1), [-1]
    ours, theirs = control.pair()
    ours.setblocking(False)
    ch = p.channel = SessionChannel(p, ours)
    ch.sent, ch.spawned, ch.killed = [], [], []
    ch.send = lambda fds=(), **kw: ch.sent.append(kw) or True
    p.children.spawn_worker = lambda role, qp: ch.spawned.append((role, qp))
    p.children.session_died = ch.killed.append
    ch.theirs = theirs
    yield ch
    theirs.close()
    ours.close()


@pytest.mark.parametrize("msg, why", [
    ({"state": {"state": "dancing"}}, "bad state message"),
    ({"state": {"state": "running", "vmm_features": 1 << 63}}, "bad state message"),
    ({"features": 1 << 63}, "not offered"),
    ({"spawn": {"role": 7}}, "no worker"),
    ({"spawn": {"role": 1, "queue_pair": 1}}, "no worker"),
    ({"dial": True}, "dial on a listening interface"),
    ({"announce": bytes.fromhex("010000000001")}, "not a unicast MAC"),
    ({"announce": b"\x02"}, "not a unicast MAC"),
    ({}, "unexpected message None"),
    ({"state": {"state": "waiting", "reason": "r" * 301}}, "bad state message"),
    ({"state": {"state": "running", "mtu": 65536}}, "bad state message"),
    ({"set_mtu": 67}, "MTU 67 out of range"),
    ({"set_mtu": 1 << 31}, "out of range"),
    ({"log": {"level": 30, "text": "x" * 301}}, "log line over 300"),
    ({"log": {"level": 30, "text": "x", "format": "f" * 301}}, "log line over 300"),
    ({"log": {"level": 0, "text": "x"}}, "of level 0"),
    ({"log": {"level": 99, "text": "x"}}, "of level 99"),
    ({"forbidden_syscall": 59}, "forbidden system call 59"),
    ({"stats": {}}, "counters nobody asked for"),
    ({"dhcp": {}}, "DHCP on an interface that is not local"),
])
def test_session_messages_that_break_the_rules(channel, msg, why):
    """Each of these gets the session killed, with the reason, and does
    nothing else."""
    assert why in channel.handle(pb.FromSession(**msg), [])
    assert not channel.sent and not channel.spawned


def test_features_a_vmm_may_ack_are_accepted_log_all_too(channel):
    """features.vmm_may_ack: the offer, PROTOCOL_FEATURES and LOG_ALL (a
    VMM that migrates acks it); the parent answers with what the workers do."""
    acked = features.vmm_may_ack(channel.port.offered)
    assert acked & features.bit(features.LOG_ALL)
    assert channel.handle(pb.FromSession(features=acked), []) is None
    assert channel.sent[-1]["features"].features == acked
    st = pb.SessionState(state="running", vmm_features=acked, logging=True)
    assert channel.handle(pb.FromSession(state=st), []) is None
    assert channel.port.state == "restarting"      # (no session pid in this test)
    assert channel.port.session.logging and channel.port.session.vmm_features == acked


def test_a_valid_spawn_forks_a_worker(channel):
    assert channel.handle(pb.FromSession(spawn=pb.Spawn(role=pb.ROLE_TX)), []) is None
    assert channel.spawned == [(pb.ROLE_TX, 0)]


def test_text_from_the_session_is_made_printable(channel, caplog):
    line = pb.LogLine(level=30, text="bad\x1b[2Jthing" + "x" * 288)
    with caplog.at_level("WARNING", logger="vionetd"):
        assert channel.handle(pb.FromSession(log=line), []) is None
    text = caplog.records[-1].getMessage()
    assert text.startswith("a/0: bad?[2Jthing") and len(text) == len("a/0: ") + 300
    got = []
    channel.pending_stats.append(got.append)
    stats = pb.Stats(counters=[pb.Counter(name="n\x00" * 32, value=i) for i in range(600)])
    assert channel.handle(pb.FromSession(stats=stats), []) is None
    assert got == [{"n?" * 32: 599}]
    channel.pending_stats.append(got.append)
    stats.counters.add(name="x" * 65)
    assert "a name over 64" in channel.handle(pb.FromSession(stats=stats), [])
    st = pb.SessionState(state="waiting", reason="gone\n")
    assert channel.handle(pb.FromSession(state=st), []) is None
    assert channel.port.reason == "gone?"


def test_a_sessions_log_lines_are_bounded_by_its_bucket(channel, caplog):
    """A burst of LOG_BUDGET lines, then one per refill; what is dropped is
    counted and said in the next line written."""
    from vionetd import backoff
    now = [1000.0]
    channel.log_budget = backoff.Bucket(*session_channel.LOG_BUDGET, clock=lambda: now[0])
    burst, rate = session_channel.LOG_BUDGET
    with caplog.at_level("INFO", logger="vionetd"):
        for i in range(1000):
            assert channel.handle(pb.FromSession(log=pb.LogLine(level=30, text="l%d" % i))) \
                is None
        assert len(caplog.records) == burst
        now[0] += 1 / rate
        channel.handle(pb.FromSession(log=pb.LogLine(level=30, text="after")))
    assert [r.getMessage() for r in caplog.records[-2:]] == [
        "a/0: %d log lines of session None dropped (over its budget)" % (1000 - burst),
        "a/0: after"]


def test_fds_a_session_sends_never_reach_the_parent(channel):
    """A (compromised) session cannot make the root parent hold, or close,
    an fd: the parent reads without a control buffer, so the kernel drops
    them, and the message kills the session; 200 times over."""
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(200):
        fds = [os.eventfd(0) for _ in range(3)]
        control.send(channel.theirs, pb.FromSession(state=pb.SessionState(state="waiting")),
                     fds)
        for fd in fds:
            os.close(fd)
        channel.readable()
    assert len(os.listdir("/proc/self/fd")) == before
    assert channel.killed == ["killed: message with fds, or truncated"] * 200


@pytest.mark.parametrize("data, why", [
    (b"", "empty datagram"),
    (pb.FromSession(dial=True).SerializeToString() + b"\xf8\x07\x01", "unknown or repeated"),
    (b"\xff\xff", "does not parse"),
    (b"x" * (control.MAX_MESSAGE + 1), "truncated"),
])
def test_datagrams_that_break_the_channel_kill_the_session(channel, data, why):
    channel.theirs.send(data)
    channel.readable()
    assert len(channel.killed) == 1 and why in channel.killed[0], channel.killed


def test_closing_answers_whoever_waits_for_counters(channel):
    got = []
    channel.request_stats(got.append)
    channel.request_stats(got.append)
    assert channel.sent == [{"stats": pb.StatsRequest()}] * 2
    channel.close()
    assert got == [{}, {}] and channel.sock is None
    assert SessionChannel.send(channel, stats=pb.StatsRequest()) is False
    channel.request_stats = SessionChannel.request_stats.__get__(channel)
    channel.send = SessionChannel.send.__get__(channel)
    channel.request_stats(got.append)                   # no session: {} at once
    assert got == [{}, {}, {}]


def test_dialing_is_rate_limited(channel, monkeypatch):
    """Client mode: at most DIAL_BUDGET connection attempts per window,
    whatever the session asks; beyond it the answer is an error, and the
    dial is made as the VM's uid with the VMM's group."""
    from vionetd import session_channel, vmmsocket
    calls = []
    monkeypatch.setattr(vmmsocket, "connect", lambda path, **kw: calls.append(kw) or
                        (_ for _ in ()).throw(FileNotFoundError(2, "No such file")))
    channel.port.iface.connect = True
    channel.port.ident = (70001, 70001)
    count = session_channel.DIAL_BUDGET[0]
    for _ in range(count + 5):
        assert channel.handle(pb.FromSession(dial=True), []) is None
    assert len(calls) == count
    assert calls[0] == {"timeout": 0, "ident": (70001, 70001), "groups": []}
    errors = [kw["dialed"].error for kw in channel.sent]
    assert errors == ["No such file"] * count + ["dialing too often"] * 5


def test_the_parents_end_refuses_fds_where_the_kernel_can(channel):
    """SO_PASSRIGHTS off (Linux 6.16): a session's sendmsg() with fds fails
    at once, so no fd is even in flight towards the parent."""
    control.refuse_fds(channel.sock)
    try:
        if channel.sock.getsockopt(socket.SOL_SOCKET, control.SO_PASSRIGHTS) != 0:
            pytest.skip("no SO_PASSRIGHTS on this kernel")
    except OSError:
        pytest.skip("no SO_PASSRIGHTS on this kernel")
    r, w = os.pipe()
    try:
        with pytest.raises(PermissionError):
            control.send(channel.theirs, pb.FromSession(dial=True), [r])
    finally:
        os.close(r)
        os.close(w)
