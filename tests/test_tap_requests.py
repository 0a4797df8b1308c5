"""What a VMM's requests do to the tap (tap_requests.py), without a tap."""
import pytest

from vionetd import config, features, iface, links, tap, tap_requests


def port(text):
    conf = config.parse('vm "a" { interface { socket "/s" %s } }' % text)
    p = iface.Interface(None, conf.vms["a"].interfaces[0], conf)
    p.tap_name = "vtap0"
    return p


@pytest.fixture
def mtus(monkeypatch):
    calls = []
    monkeypatch.setattr(links, "set_mtu", lambda name, mtu: calls.append((name, mtu)))
    return calls


def test_vmm_mtu_is_recorded_never_applied_and_logged_once(mtus, caplog):
    """NET_SET_MTU relayed by the session: at most the interface's mtu (1500
    without one), recorded, never set on the tap (a bridge follows its
    smallest port); one line per session for the accepted ones and one for
    the refused ones, however many the VMM sends."""
    t = port("mtu 9000").tap
    with caplog.at_level("INFO", logger="vionetd"):
        for mtu in (9000, 1400, 68) * 50:
            assert t.set_mtu(mtu) == ""
        for mtu in (9001, 65535) * 50:
            assert t.set_mtu(mtu) == "MTU %d larger than the interface's 9000" % mtu
    assert mtus == [] and t.vmm_mtu == 68
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["a/0: guest MTU 9000 recorded; tap vtap0 keeps 9000",
                     "a/0: refusing MTU 9001 from the VMM: larger than this interface's "
                     "mtu 9000"], lines
    t.vmm_gone()
    assert t.vmm_mtu == 0 and mtus == []
    q = port("").tap
    assert q.set_mtu(1501) == "MTU 1501 larger than the interface's 1500"
    q.port.tap_mtu = 9000                      # its bridge's
    assert q.set_mtu(1501) == "" and mtus == []


def test_features_set_the_taps_offloads_and_say_what_workers_do(monkeypatch):
    offloads = []
    monkeypatch.setattr(tap, "set_offload", lambda fd, mask: offloads.append((fd, mask)))
    p = port("locked lladdr 52:54:00:00:00:01 mtu 9000 offload tx csum software")
    p.tap_fds, p.tap_caps = [7], features.TUN_F_ALL
    acked = features.mask(features.CSUM, features.GUEST_CSUM, features.GUEST_TSO4)
    f = p.tap.features(acked)
    assert offloads == [(7, features.tap_offloads_for(acked, p.iface.offload,
                                                       features.TUN_F_ALL))]
    assert f.features == acked and f.software.tx_csum and not f.software.rx_csum
    assert f.locked_lladdr == bytes.fromhex("525400000001") and f.mtu == 9000


def test_rarp_is_a_padded_broadcast_from_the_mac():
    mac = bytes.fromhex("525400abcdef")
    frame = tap_requests.rarp(mac)
    assert len(frame) == 60 and frame[:6] == b"\xff" * 6 and frame[6:12] == mac
    assert frame[12:14] == b"\x80\x35" and frame[20:22] == b"\x00\x03"
