"""The parent's side of an interface (iface.py), in parts that need no daemon."""
import pytest

from vionetd import config, iface, links


@pytest.fixture
def make(monkeypatch):
    calls = []
    monkeypatch.setattr(links, "set_mtu", lambda name, mtu: calls.append((name, mtu)))

    def make(mtu_line):
        text = 'vm "a" { interface { socket "/s" %s } }' % mtu_line
        conf = config.parse(text)
        p = iface.Interface(None, conf.vms["a"].interfaces[0], conf)
        p.tap_name = "vtap0"
        return p
    make.calls = calls
    return make


def test_vmm_mtu_at_most_the_interfaces_and_the_tap_follows(make, caplog):
    """NET_SET_MTU relayed by the session: at most the interface's mtu (1500
    without one); the tap follows; the configured MTU comes back when the
    VMM goes."""
    calls = make.calls
    p = make("mtu 9000")
    assert p._set_mtu(9000) == "" and calls == [("vtap0", 9000)] and p.vmm_mtu == 9000
    assert p._set_mtu(1400) == "" and calls[-1] == ("vtap0", 1400)
    with caplog.at_level("ERROR", logger="vionetd"):
        assert p._set_mtu(9001) == "MTU 9001 larger than the interface's 9000"
    assert any("refusing MTU 9001 from the VMM: larger than this interface's mtu 9000"
               in r.getMessage() for r in caplog.records), caplog.text
    assert calls[-1] == ("vtap0", 1400)
    p._restore_mtu()
    assert calls[-1] == ("vtap0", 9000) and p.vmm_mtu == 0
    q = make("")
    assert q._set_mtu(1501) == "MTU 1501 larger than the interface's 1500"
    assert q._set_mtu(1500) == "" and calls[-1] == ("vtap0", 1500)


@pytest.mark.parametrize("msg, why", [
    ({"state": {"state": "dancing"}}, "bad state message"),
    ({"state": {"state": "running", "vmm_features": 1 << 63}}, "bad state message"),
    ({"features": 1 << 63}, "not offered"),
    ({"spawn": {"role": 7}}, "no worker"),
    ({"spawn": {"role": 1, "queue_pair": 1}}, "no worker"),
    ({"dial": True}, "dial on a listening interface"),
])
def test_session_messages_that_break_the_rules(make, msg, why):
    """What a (compromised) session may say is checked: each of these gets
    it killed, with the reason."""
    from vionetd import vionetd_pb2 as pb
    p = make("")
    p.offered = 1 << 32
    assert why in p._session_message(pb.FromSession(**msg))


def test_fds_a_session_sends_are_closed_at_once(make):
    """A (compromised) session cannot make the root parent hold fds: any
    that come with its messages are closed as they arrive, 200 times over."""
    import os
    import socket
    from vionetd import control
    from vionetd import vionetd_pb2 as pb
    p = make("")
    p.offered = 1 << 32
    p.parent = type("P", (), {"watch": lambda *a: None, "unwatch": lambda *a: None})()
    p.chan, theirs = control.pair()
    p.chan.setblocking(False)
    try:
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(200):
            fds = [os.eventfd(0) for _ in range(3)]
            control.send(theirs, pb.FromSession(state=pb.SessionState(state="waiting")), fds)
            for fd in fds:
                os.close(fd)
            p._from_session()
        assert len(os.listdir("/proc/self/fd")) == before
        assert p.session.state == "waiting"
    finally:
        theirs.close()
        p.chan.close()
