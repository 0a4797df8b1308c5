"""vionetd/leases.py: DHCP leases of local interfaces across restarts, and
the hooks in dhcp.py (written on ACK and RELEASE, read back by restore)."""
import ipaddress
import json
import os
from types import SimpleNamespace

import pytest

from vionetd import dhcp, leases, local
from vionetd.leases import Leases

MAC = bytes.fromhex("525400123456")


class Clock:
    def __init__(self, t=1_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def store(tmp_path, wall=None, mono=None):
    return Leases(str(tmp_path / "db" / "leases"), clock=wall or Clock(),
                  monotonic=mono or Clock(0.0))


def test_record_persists_and_a_new_store_reads_it(tmp_path):
    s = store(tmp_path)
    assert s.load() == 0                                  # no file yet
    assert s.record("vm1/0", "100.64.0.3", MAC, 86400)
    path = tmp_path / "db" / "leases"
    assert oct(os.stat(path.parent).st_mode & 0o777) == "0o700"
    doc = json.loads(path.read_text())
    assert doc == {"version": 1, "leases": {"vm1/0": {
        "address": "100.64.0.3", "lladdr": "52:54:00:12:34:56",
        "expires": 1_000_000 + 86400}}}
    again = store(tmp_path)
    assert again.load() == 1
    assert again.get("vm1/0")["address"] == "100.64.0.3"
    assert again.describe("vm1/0") == "100.64.0.3 (86400s)"
    assert again.get("vm2/0") is None
    # no temporary file left behind
    assert os.listdir(path.parent) == ["leases"]


def test_release_removes_and_expired_are_dropped(tmp_path):
    wall, mono = Clock(), Clock(0.0)
    s = store(tmp_path, wall=wall, mono=mono)
    s.record("a/0", "100.64.0.1", MAC, 100)
    s.record("b/0", "100.64.0.5", MAC, 10_000)
    assert not s.release("a/0")          # right after a write of a/0: deferred
    assert s.dirty and "a/0" in json.load(open(s.path))["leases"]
    mono.t += leases.MIN_WRITE_INTERVAL
    assert not s.release("a/0")                          # nothing to release
    assert s.flush() and "a/0" not in json.load(open(s.path))["leases"]
    wall.t += 20_000                                     # b's lease ran out
    later = store(tmp_path, wall=wall)
    assert later.load() == 0 and later.get("b/0") is None


@pytest.mark.parametrize("content", [
    b"{not json", b"\xff\xfe", b"[]", b'{"version": 2, "leases": {}}',
    b'{"version": 1, "leases": []}', b"",
])
def test_corrupt_file_is_logged_and_ignored(tmp_path, content, caplog):
    s = store(tmp_path)
    os.makedirs(os.path.dirname(s.path))
    with open(s.path, "wb") as f:
        f.write(content)
    with caplog.at_level("WARNING", logger="vionetd"):
        assert s.load() == 0
    assert "corrupt, ignored" in caplog.text
    # and the next ACK writes a good file over it
    assert s.record("a/0", "100.64.0.1", MAC, 100)
    assert store(tmp_path).load() == 1


def test_bad_entries_skipped_good_ones_kept(tmp_path, caplog):
    s = store(tmp_path)
    os.makedirs(os.path.dirname(s.path))
    good = {"address": "100.64.0.7", "lladdr": "52:54:00:00:00:01", "expires": 2_000_000}
    bad = [("x/0", dict(good, address="300.1.1.1")), ("y/0", dict(good, lladdr="nope")),
           ("z/0", dict(good, expires="soon")), ("../etc", good), ("w/0", "str")]
    doc = {"version": 1, "leases": dict([("ok/1", good)] + bad)}
    with open(s.path, "w") as f:
        json.dump(doc, f)
    with caplog.at_level("WARNING", logger="vionetd"):
        assert s.load() == 1
    assert s.get("ok/1")["address"] == "100.64.0.7"
    assert caplog.text.count("bad entry") == len(bad)


def test_writes_are_bounded(tmp_path):
    wall, mono = Clock(), Clock(0.0)
    s = store(tmp_path, wall=wall, mono=mono)
    assert s.record("a/0", "100.64.0.1", MAC, 86400) and s.writes == 1
    # a renewal early in the lease changes nothing on disk
    wall.t += 60
    assert not s.record("a/0", "100.64.0.1", MAC, 86400) and s.writes == 1
    # a guest changing its MAC in a loop: at most one write per interval
    for i in range(50):
        s.record("a/0", "100.64.0.1", bytes([0x52, 0, 0, 0, 0, i]), 86400)
    assert s.writes == 1 and s.dirty
    assert s.flush() and s.writes == 2 and not s.dirty
    assert json.load(open(s.path))["leases"]["a/0"]["lladdr"] == "52:00:00:00:00:31"
    mono.t += leases.MIN_WRITE_INTERVAL
    assert s.record("a/0", "100.64.0.1", MAC, 86400) and s.writes == 3


def test_unwritable_path_is_logged_not_fatal(tmp_path, caplog):
    (tmp_path / "file").write_text("")
    s = Leases(str(tmp_path / "file" / "leases"))        # its directory is a file
    with caplog.at_level("WARNING", logger="vionetd"):
        assert not s.record("a/0", "100.64.0.1", MAC, 100)
    assert "cannot write" in caplog.text
    assert s.get("a/0") is not None                      # the lease still stands


def test_dhcp_ack_and_release_go_to_the_file(tmp_path):
    # dhcp.decide in the parent writes through leases.default()
    s = Leases(str(tmp_path / "leases"))
    leases.set_default(s)
    try:
        addr = local.addresses(ipaddress.IPv4Network("100.64.0.0/10"), "vm1/0")
        port = SimpleNamespace(key="vm1/0", address=addr, lease=None, tap_mac=MAC,
                               iface=SimpleNamespace(mtu=None, hostname=None),
                               conf=SimpleNamespace(dns=[]))
        from vionetd import vionetd_pb2 as pb
        # as dhcp.fields() makes them: ciaddr always 4 bytes
        req = pb.DhcpRequest(op=dhcp.BOOTREQUEST, xid=1, message_type=dhcp.REQUEST,
                             ciaddr=bytes(4),
                             requested_addr=addr.guest.packed, chaddr=MAC)
        assert dhcp.decide(port, req).message_type == dhcp.ACK
        on_disk = json.load(open(s.path))["leases"]["vm1/0"]
        assert on_disk["address"] == str(addr.guest)
        # a restarted daemon: a new store reads it; restore() shows it
        fresh = Leases(s.path)
        fresh.load()
        leases.set_default(fresh)
        port2 = SimpleNamespace(key="vm1/0", address=addr, lease=None)
        assert dhcp.restore(port2)["lladdr"] == "52:54:00:12:34:56"
        assert port2.lease.startswith(str(addr.guest) + " (")
        # a port now holding another address does not take the old lease
        other = SimpleNamespace(key="vm1/0", lease=None,
                                address=local.Addresses(addr.host + 2, addr.guest + 2))
        assert dhcp.restore(other) is None and other.lease is None
        rel = pb.DhcpRequest(op=dhcp.BOOTREQUEST, xid=2, message_type=dhcp.RELEASE,
                             ciaddr=addr.guest.packed, chaddr=MAC)
        fresh.last_write.clear()
        assert dhcp.decide(port, rel) is None
        assert json.load(open(s.path))["leases"] == {}
    finally:
        leases.set_default(None)


def test_default_path_comes_from_the_environment():
    # conftest points VIONETD_LEASES at the test run's own directory
    leases.set_default(None)
    try:
        assert leases.default().path == os.environ["VIONETD_LEASES"]
        assert leases.DEFAULT_PATH == "/var/db/vionetd/leases"
    finally:
        leases.set_default(None)
