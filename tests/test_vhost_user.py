"""The vhost-user protocol layer (vionetd/vhost_user/) against tests/vmm.py.

A Connection runs over a real unix socketpair with a recording Backend; the
frontend calls conn.handle_readable after each message it sends (pump), so
everything runs in the test's thread and a ProtocolError reaches the test.
One test runs the Connection in a thread behind a listening socket, as the
daemon will. Every test checks that no file descriptor leaked.
"""
from __future__ import annotations

import os
import re
import socket
import struct
import time
import threading

import pytest

from vionetd import features as F
from vionetd import vhost_user as V
from vionetd.eventloop import Reply
from vionetd.vhost_user import ProtocolError
from vionetd.vhost_user import requests as R
from tests.vmm import Frontend, GuestRegion, SplitLayout, eventfd

MiB = 1 << 20


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


class RecBackend(V.Backend):
    """Records every call; owns and closes the fds it is given."""

    def __init__(self, offer: int | None = None):
        self.offer = F.offer(F.Policy(), F.TUN_F_ALL) if offer is None else offer
        self.calls: list[tuple] = []
        self.owned: dict[tuple, int] = {}
        self.mem_fds: list[int] = []
        self.next_base: dict[int, int] = {}
        self.ready: dict[int, bool] = {}
        self.fail: set[str] = set()

    def _rec(self, *call):
        self.calls.append(call)
        if call[0] in self.fail:
            raise V.BackendError(f"{call[0]} refused by test")

    def _own(self, key, fd):
        if key in self.owned:
            os.close(self.owned.pop(key))
        if fd is not None:
            os.fstat(fd)                    # a real, open descriptor
            self.owned[key] = fd

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def get_features(self):
        self._rec("get_features")
        return self.offer

    def set_features(self, f):
        self._rec("set_features", f)

    def set_owner(self):
        self._rec("set_owner")

    def reset(self):
        self._rec("reset")
        self.close_all()

    def set_mem_table(self, regions, fds):
        self._rec("set_mem_table", list(regions), len(fds))
        for fd in self.mem_fds:
            os.close(fd)
        for fd in fds:
            os.fstat(fd)
        self.mem_fds = list(fds)

    def set_vring_num(self, i, n):
        self._rec("set_vring_num", i, n)

    def set_vring_addr(self, i, desc, used, avail, log):
        self._rec("set_vring_addr", i, desc, used, avail, log)

    def set_log_base(self, size, offset, fd):
        self._rec("set_log_base", size, offset)
        self._own(("log",), fd)

    def set_log_fd(self, fd):
        self._rec("set_log_fd")
        self._own(("log_fd",), fd)

    def send_rarp(self, mac):
        self._rec("send_rarp", mac)

    def set_vring_base(self, i, base):
        self._rec("set_vring_base", i, base)

    def get_vring_base(self, i):
        self._rec("get_vring_base", i)
        return self.next_base.get(i, 0)

    def set_vring_kick(self, i, fd):
        self._rec("set_vring_kick", i, fd is not None)
        self._own(("kick", i), fd)

    def set_vring_call(self, i, fd):
        self._rec("set_vring_call", i, fd is not None)
        self._own(("call", i), fd)

    def set_vring_err(self, i, fd):
        self._rec("set_vring_err", i, fd is not None)
        self._own(("err", i), fd)

    def set_vring_enable(self, i, on):
        self._rec("set_vring_enable", i, on)

    def ring_ready_changed(self, i, ready):
        self.calls.append(("ready", i, ready))
        self.ready[i] = ready

    def disconnected(self):
        self.calls.append(("disconnected",))

    def close_all(self):
        for fd in self.owned.values():
            os.close(fd)
        self.owned.clear()
        for fd in self.mem_fds:
            os.close(fd)
        self.mem_fds = []


class Rig:
    def __init__(self, timeout=2.0, offer=None, backend=None):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.backend = RecBackend(offer) if backend is None else backend
        self.resumed: list = []             # what resumed() was called with
        self.conn = V.Connection(a, self.backend, name="test", timeout=timeout,
                                 resumed=self.resumed.append)
        self.fe = Frontend(b, pump=self.conn.handle_readable)
        self.mem = GuestRegion(4 * MiB, guest_addr=0)
        self.extra: list[int] = []

    def fds(self, n):
        new = [eventfd() for _ in range(n)]
        self.extra += new
        return new

    def close(self):
        self.conn.close()
        self.fe.close()
        self.backend.close_all()
        self.mem.close()
        for fd in self.extra:
            os.close(fd)


@pytest.fixture
def rig():
    before = open_fds()
    r = Rig()
    try:
        yield r
    finally:
        r.close()
    assert open_fds() == before, "file descriptor leak"


def owned(rig, *calls):
    """Bring the connection to: protocol features (REPLY_ACK), owner."""
    fe = rig.fe
    fe.get_features()
    fe.set_protocol_features(fe.get_protocol_features())
    fe.set_owner()


def ring0_but_kick(rig):
    """owned(), features, memory, and ring 0 set up but for its kick."""
    fe = rig.fe
    owned(rig)
    fe.set_features(fe.offered)
    fe.set_memory([rig.mem])
    desc, avail, used = SplitLayout(0, 64).addresses(0)
    fe.set_vring_num(0, 64)
    fe.set_vring_addr(0, fe.gpa_to_user(desc), fe.gpa_to_user(used),
                      fe.gpa_to_user(avail))


# ---- full negotiations ---------------------------------------------------------

@pytest.mark.parametrize("style", ["qemu72", "qemu10"])
def test_negotiation_like_qemu(rig, style):
    fe, conn, be = rig.fe, rig.conn, rig.backend
    layout = SplitLayout(0x10000, 256)
    acked = fe.negotiate([rig.mem], layout, style=style)
    assert acked == be.offer | F.bit(F.VHOST_USER_F_PROTOCOL_FEATURES)
    assert conn.features == acked and conn.protocol_negotiated
    assert conn.protocol_features == F.PROTOCOL_OFFER and conn.reply_ack
    assert conn.running(0) and conn.running(1)
    assert be.ready == {0: True, 1: True}
    names = be.names()
    # the order the backend saw: owner before memory, memory before rings,
    # ready (started) at the kick, enabled after
    assert names.index("set_owner") < names.index("set_mem_table")
    assert names.index("set_features") < names.index("set_vring_kick")
    assert names.index("set_vring_kick") < names.index("ready")
    assert ("set_mem_table", [V.MemRegion(*rig.mem.region)], 1) in be.calls
    assert ("set_vring_num", 1, 256) in be.calls
    assert ("set_vring_err", 0, True) in be.calls
    # every need_reply got exactly its ack, nothing more is pending
    assert fe.acks == {"qemu72": 1, "qemu10": 4}[style]
    assert not fe.pending()
    # ring addresses translate back to the guest addresses of the layout
    for i in (0, 1):
        desc, avail, used = layout.addresses(i)
        r = conn.rings[i]
        assert conn.user_to_guest(r.desc, 16 * 256) == desc
        assert conn.user_to_guest(r.avail) == avail
        assert conn.user_to_guest(r.used) == used
    # the kick fd the backend holds is the frontend's eventfd, and the call
    # fd the frontend holds is the backend's
    fe.kick_ring(1)
    assert os.eventfd_read(be.owned[("kick", 1)]) == 1
    os.eventfd_write(be.owned[("call", 0)], 5)
    assert os.eventfd_read(fe.call[0]) == 5
    # memory: the backend's fd maps the same memfd
    import mmap
    rig.mem.mem[100:104] = b"ping"
    m = mmap.mmap(be.mem_fds[0], 4 * MiB)
    try:
        assert m[100:104] == b"ping"
    finally:
        m.close()


def test_stop_returns_backend_base_after_not_ready(rig):
    fe, conn, be = rig.fe, rig.conn, rig.backend
    fe.negotiate([rig.mem])
    be.next_base = {0: 17, 1: 0xffff}
    assert fe.stop() == [17, 0xffff]
    assert not conn.running(0) and not conn.running(1)
    names = be.names()
    # ring 0 reported not ready (disabled) before its base is asked for
    assert be.calls.index(("ready", 0, False)) < \
        be.calls.index(("get_vring_base", 0))
    assert names.count("get_vring_base") == 2
    # restart: base, kick and enable again make it ready
    fe.set_vring_base(0, 17)
    assert not conn.running(0)
    fe.set_vring_kick(0, fe._eventfd(fe.kick, 0))
    fe.set_vring_enable(0, True)
    assert conn.running(0) and be.ready[0]


def test_get_vring_base_of_running_ring_reports_stop_first(rig):
    fe, be = rig.fe, rig.backend
    fe.negotiate([rig.mem])
    be.next_base = {1: 3}
    assert fe.get_vring_base(1) == 3
    assert be.calls[-2:] == [("ready", 1, False), ("get_vring_base", 1)]


def test_without_protocol_features_ring_starts_on_kick(rig):
    fe, conn, be = rig.fe, rig.conn, rig.backend
    offered = fe.get_features()
    fe.set_owner()                      # no REPLY_ACK: no reply comes
    fe.set_features(offered & ~F.bit(F.VHOST_USER_F_PROTOCOL_FEATURES))
    fe.set_memory([rig.mem])
    lay = SplitLayout(0, 64)
    for i in (0, 1):
        desc, avail, used = lay.addresses(i)
        fe.set_vring_num(i, 64)
        fe.set_vring_base(i, 0)
        fe.set_vring_addr(i, fe.gpa_to_user(desc), fe.gpa_to_user(used),
                          fe.gpa_to_user(avail))
        fe.set_vring_call(i, None)
        assert not conn.running(i)
        fe.set_vring_kick(i, fe._eventfd(fe.kick, i))
        assert conn.running(i)
    assert be.ready == {0: True, 1: True}
    assert not fe.pending()


def test_with_protocol_features_ring_waits_for_enable(rig):
    fe, conn = rig.fe, rig.conn
    ring0_but_kick(rig)
    fe.set_vring_kick(0, fe._eventfd(fe.kick, 0))
    # started (a TX ring would be drained and discarded) but not enabled
    assert conn.running(0) and not conn.ring_enabled(0)
    assert fe.set_vring_enable(0, True, need_reply=True) == 0
    assert conn.running(0) and conn.ring_enabled(0)
    fe.set_vring_enable(0, False)
    assert conn.running(0) and not conn.ring_enabled(0)
    assert ("set_vring_enable", 0, False) in rig.backend.calls


def test_reply_ack(rig):
    fe = rig.fe
    fe.get_features()
    # need_reply before REPLY_ACK was negotiated: no answer
    fe.set_owner(need_reply=True)
    assert not fe.pending()
    assert fe.get_protocol_features() == F.PROTOCOL_OFFER
    fe.set_protocol_features(F.mask(F.PROTOCOL_F_REPLY_ACK))
    assert fe.get_queue_num() == 1
    assert fe.set_owner(need_reply=True) == 0
    assert fe.set_features(fe.offered, need_reply=True) == 0
    assert fe.set_vring_num(0, 128, need_reply=True) == 0
    # a GET_* keeps its own reply, no extra ack
    fe.send(V.GET_FEATURES, need_reply=True)
    assert struct.unpack("<Q", fe.recv_reply(V.GET_FEATURES))[0] == fe.offered
    assert not fe.pending()


def test_backend_refusal_acked_or_fatal(rig):
    fe, be = rig.fe, rig.backend
    owned(rig)
    be.fail.add("set_vring_call")
    (fd,) = rig.fds(1)
    assert fe.set_vring_call(0, fd, need_reply=True) == 1
    assert ("call", 0) not in be.owned     # fd closed by the Connection
    with pytest.raises(ProtocolError, match="backend refused"):
        fe.set_vring_call(0, fd)


def test_reset_owner_stops_and_clears(rig):
    fe, conn, be = rig.fe, rig.conn, rig.backend
    fe.negotiate([rig.mem])
    fe.reset_owner()
    assert be.ready == {0: False, 1: False}
    assert "reset" in be.names()
    assert conn.features is None and conn.regions == []
    assert conn.rings[0].num is None


def test_memory_hotplug_while_running(rig):
    fe, conn, be = rig.fe, rig.conn, rig.backend
    fe.negotiate([rig.mem])
    more = GuestRegion(1 * MiB, guest_addr=0x100000000)
    try:
        assert fe.set_memory([rig.mem, more]) == 0
        assert len(conn.regions) == 2 and conn.running(0)
        assert be.calls[-1][0] == "set_mem_table" and be.calls[-1][2] == 2
        # a table without the rings' memory is a protocol error
        with pytest.raises(ProtocolError, match="outside the memory table"):
            fe.set_memory([more])
        assert len(conn.regions) == 2
    finally:
        more.close()


def test_soft_refusals_keep_the_connection(rig):
    fe = rig.fe
    owned(rig)
    (fd,) = rig.fds(1)
    # SET_BACKEND_REQ_FD with an fd and no need_reply: logged, fd closed, ignored
    fe.send(V.SET_BACKEND_REQ_FD, b"", [fd])
    assert not fe.pending()
    # with need_reply: a failure ack
    fe.send(V.SET_VRING_ENDIAN, b"\x00" * 8, need_reply=True)
    assert struct.unpack("<Q", fe.recv_reply(V.SET_VRING_ENDIAN))[0] != 0
    fe.send(99, b"xyz", need_reply=True)
    assert struct.unpack("<Q", fe.recv_reply(99))[0] != 0
    fe.send(99, b"xyz")
    # still talking
    assert fe.get_features() == rig.backend.offer | \
        F.mask(F.VHOST_USER_F_PROTOCOL_FEATURES, F.LOG_ALL)


# ---- NET_SET_MTU ----------------------------------------------------------------

def set_mtu(fe, mtu, **kw):
    fe.send(V.NET_SET_MTU, struct.pack("<Q", mtu), **kw)
    if kw.get("need_reply"):
        return struct.unpack("<Q", fe.recv_reply(V.NET_SET_MTU))[0]
    return None


def test_net_mtu_offered_and_the_backend_decides(rig):
    fe, conn, be = rig.fe, rig.conn, rig.backend
    assert F.has(F.PROTOCOL_OFFER, F.PROTOCOL_F_NET_MTU)
    assert F.has(be.offer, F.MTU)              # QEMU passes the guest's ack on
    owned(rig)
    assert F.has(conn.protocol_features, F.PROTOCOL_F_NET_MTU)
    asked = []

    def accept_up_to_9000(mtu):
        asked.append(mtu)
        if mtu > 9000:
            raise V.BackendError("too large")
    be.set_mtu = accept_up_to_9000
    assert set_mtu(fe, 9000, need_reply=True) == 0
    assert conn.mtu == 9000
    assert set_mtu(fe, 9001, need_reply=True) == 1       # refused, still talking
    assert conn.mtu == 9000 and asked == [9000, 9001]
    assert fe.set_features(fe.offered | F.bit(F.MTU), need_reply=True) == 0
    # a refusal the frontend cannot hear about is fatal
    with pytest.raises(ProtocolError, match="NET_SET_MTU: backend refused"):
        set_mtu(fe, 9001)


def test_net_mtu_default_backend_refuses(rig):
    owned(rig)
    assert "set_mtu" not in type(rig.backend).__dict__
    assert set_mtu(rig.fe, 1500, need_reply=True) == 1
    assert rig.conn.mtu is None


@pytest.mark.parametrize("payload,protocol,match", [
    (struct.pack("<Q", 1500), F.mask(F.PROTOCOL_F_REPLY_ACK), "without the NET_MTU"),
    (struct.pack("<Q", 67), F.PROTOCOL_OFFER, "MTU 67 out of range 68..65535"),
    (struct.pack("<Q", 65536), F.PROTOCOL_OFFER, "MTU 65536 out of range"),
    (struct.pack("<I", 1500), F.PROTOCOL_OFFER, "payload of 4 bytes, expected 8"),
])
def test_net_mtu_malformed(rig, payload, protocol, match):
    fe = rig.fe
    fe.get_features()
    fe.set_protocol_features(protocol)
    fe.set_owner()
    rig.backend.set_mtu = lambda mtu: None
    with pytest.raises(ProtocolError, match=match):
        fe.send(V.NET_SET_MTU, payload, need_reply=True)


# ---- migration: dirty log, log flag, RARP ---------------------------------------

def test_offer_has_log_all_and_migration_protocol_features(rig):
    assert F.has(rig.fe.get_features(), F.LOG_ALL)
    pf = rig.fe.get_protocol_features()
    assert F.has(pf, F.PROTOCOL_F_LOG_SHMFD) and F.has(pf, F.PROTOCOL_F_RARP)


def test_migration_start_and_end_like_qemu(rig):
    """QEMU's sequence on a running device (vhost_migration_log): the log,
    LOG_ALL, then every ring's address again with the log flag; at the
    end the reverse. Rings keep running throughout."""
    fe, conn, be = rig.fe, rig.conn, rig.backend
    layout = SplitLayout(0x10000, 256)
    acked = fe.negotiate([rig.mem], layout)
    log = GuestRegion(4096, guest_addr=0)       # a memfd to stand for QEMU's log
    try:
        fe.set_log_base(64, log.fd)
        assert be.calls[-1] == ("set_log_base", 64, 0)
        assert fe.set_features(acked | F.bit(F.LOG_ALL), need_reply=True) == 0
        for i in (0, 1):
            desc, avail, used = layout.addresses(i)
            assert fe.set_vring_addr(i, fe.gpa_to_user(desc), fe.gpa_to_user(used),
                                     fe.gpa_to_user(avail), flags=V.VRING_F_LOG,
                                     log=used, need_reply=True) == 0
            assert conn.rings[i].log == used and conn.running(i)
            assert be.calls[-1] == ("set_vring_addr", i, fe.gpa_to_user(desc),
                                    fe.gpa_to_user(used), fe.gpa_to_user(avail), used)
        assert be.ready == {0: True, 1: True}
        fe.set_features(acked, need_reply=True)
        desc, avail, used = layout.addresses(0)
        fe.set_vring_addr(0, fe.gpa_to_user(desc), fe.gpa_to_user(used),
                          fe.gpa_to_user(avail))
        assert conn.rings[0].log is None and be.calls[-1][-1] is None
        assert not fe.pending()
    finally:
        log.close()


def test_running_ring_cannot_move(rig):
    fe = rig.fe
    layout = SplitLayout(0x10000, 256)
    fe.negotiate([rig.mem], layout)
    desc, avail, used = layout.addresses(0)
    with pytest.raises(ProtocolError, match="running"):
        fe.set_vring_addr(0, fe.gpa_to_user(desc) + 4096, fe.gpa_to_user(used),
                          fe.gpa_to_user(avail), flags=V.VRING_F_LOG, log=used)


def test_running_features_change_only_log_all(rig):
    fe = rig.fe
    acked = fe.negotiate([rig.mem], SplitLayout(0x10000, 256))
    with pytest.raises(ProtocolError, match="other than LOG_ALL"):
        fe.set_features(acked & ~F.bit(F.GUEST_CSUM) | F.bit(F.LOG_ALL))


@pytest.mark.parametrize("size,filesize,offset,match", [
    (0, 4096, 0, "log of 0 bytes"),
    (V.LOG_MAX + 1, 4096, 0, "log of"),
    (8192, 4096, 0, "beyond the file"),
    (64, 8192, 100, "not page-aligned"),
])
def test_log_base_refused(rig, size, filesize, offset, match):
    fe = rig.fe
    owned(rig)
    log = GuestRegion(filesize, guest_addr=0)
    try:
        with pytest.raises(ProtocolError, match=match):
            fe.send(V.SET_LOG_BASE, V.LOG.pack(size, offset), [log.fd])
        assert "set_log_base" not in rig.backend.names()
    finally:
        log.close()


def test_log_base_needs_log_shmfd(rig):
    fe = rig.fe
    fe.get_features()
    fe.set_protocol_features(F.mask(F.PROTOCOL_F_REPLY_ACK))
    fe.set_owner()
    log = GuestRegion(4096, guest_addr=0)
    try:
        with pytest.raises(ProtocolError, match="LOG_SHMFD"):
            fe.send(V.SET_LOG_BASE, V.LOG.pack(64, 0), [log.fd])
    finally:
        log.close()


def test_log_fd_must_be_an_eventfd(rig):
    fe = rig.fe
    owned(rig)
    (fd,) = rig.fds(1)
    fe.send(V.SET_LOG_FD, b"", [fd])
    assert rig.backend.calls[-1] == ("set_log_fd",)
    r, w = os.pipe()
    try:
        with pytest.raises(ProtocolError, match="SET_LOG_FD"):
            fe.send(V.SET_LOG_FD, b"", [r])
    finally:
        os.close(r)
        os.close(w)


def test_send_rarp(rig):
    fe = rig.fe
    owned(rig)
    fe.send(V.SEND_RARP, bytes.fromhex("525400123456") + b"\0\0")
    assert rig.backend.calls[-1] == ("send_rarp", bytes.fromhex("525400123456"))


def test_send_rarp_needs_the_rarp_feature(rig):
    fe = rig.fe
    fe.get_features()
    fe.set_protocol_features(F.mask(F.PROTOCOL_F_REPLY_ACK))
    fe.set_owner()
    fe.send(V.SEND_RARP, bytes.fromhex("525400123456") + b"\0\0")
    fe.send(V.SEND_RARP, bytes(8), need_reply=True)
    assert struct.unpack("<Q", fe.recv_reply(V.SEND_RARP))[0] != 0
    assert "send_rarp" not in rig.backend.names()


def test_real_socket_with_server_thread(tmp_path):
    before = open_fds()
    path = str(tmp_path / f"vu-{os.getpid()}.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(1)
    be = RecBackend()
    result = {}

    def serve():
        s, _ = lsock.accept()
        conn = V.Connection(s, be, name="thread")
        try:
            while conn.handle_readable():
                pass
            result["end"] = "eof"
        except ProtocolError as e:
            result["end"] = str(e)
        finally:
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    mem = GuestRegion(2 * MiB, guest_addr=0)
    fe = Frontend.connect(path)
    try:
        fe.negotiate([mem], SplitLayout(0, 128))
        assert fe.stop() == [0, 0]
    finally:
        fe.close()
        t.join(5)
        mem.close()
        be.close_all()
        lsock.close()
    assert not t.is_alive()
    assert result["end"] == "eof"
    assert ("disconnected",) in be.calls
    assert open_fds() == before


# ---- malformed input ---------------------------------------------------------

def raw(req, payload=b"", flags=V.VERSION, size=None):
    return struct.pack("<III", req, flags, len(payload) if size is None
                       else size) + payload


def _prep_running(rig):
    rig.fe.negotiate([rig.mem])


MALFORMED = {
    # name: (setup, action(rig), expected message part)
    "short SET_FEATURES": (owned, lambda r: r.fe.send(V.SET_FEATURES, b"\0" * 4),
                           "payload of 4 bytes"),
    "long SET_VRING_NUM": (owned, lambda r: r.fe.send(
        V.SET_VRING_NUM, struct.pack("<III", 0, 256, 0)), "expected 8"),
    "GET_FEATURES with payload": (None, lambda r: r.fe.send(
        V.GET_FEATURES, b"\0" * 8), "expected 0"),
    "bad version": (None, lambda r: r.fe.send(V.GET_FEATURES, flags=2),
                    "bad version"),
    "reply flag": (None, lambda r: r.fe.send(V.GET_FEATURES, flags=5),
                   "reply flag"),
    "huge payload": (None, lambda r: r.fe.send(V.SET_CONFIG, b"\0" * 5000),
                     "too large"),
    "ring index 2": (owned, lambda r: r.fe.set_vring_num(2, 256),
                     "out of range"),
    "kick index 5": (owned, lambda r: r.fe.set_vring_kick(5, r.fds(1)[0]),
                     "out of range"),
    "kick unknown bits": (owned, lambda r: r.fe.send(
        V.SET_VRING_KICK, struct.pack("<Q", 0x1000), r.fds(1)), "unknown bits"),
    "num 3": (owned, lambda r: r.fe.set_vring_num(0, 3), "power of 2"),
    "num 0": (owned, lambda r: r.fe.set_vring_num(0, 0), "power of 2"),
    "num 65536": (owned, lambda r: r.fe.set_vring_num(1, 65536), "power of 2"),
    "base too big": (owned, lambda r: r.fe.set_vring_base(0, 0x10000),
                     "16-bit"),
    "misaligned desc": (owned, lambda r: r.fe.set_vring_addr(
        0, 0x1008, 0x2000, 0x3000), "misaligned"),
    "vring addr flags": (owned, lambda r: r.fe.set_vring_addr(
        0, 0x1000, 0x2000, 0x3000, flags=2), "unknown flags"),
    "overlap guest": (owned, lambda r: r.fe.set_mem_table(
        [(0, 0x2000, 0x10000, 0), (0x1000, 0x2000, 0x20000, 0)],
        r.fds(2)), "overlap in guest"),
    "overlap user": (owned, lambda r: r.fe.set_mem_table(
        [(0, 0x2000, 0x10000, 0), (0x10000, 0x2000, 0x11000, 0)],
        r.fds(2)), "overlap in user"),
    "empty region": (owned, lambda r: r.fe.set_mem_table(
        [(0, 0, 0x10000, 0)], r.fds(1)), "empty"),
    "wrapping region": (owned, lambda r: r.fe.set_mem_table(
        [((1 << 64) - 0x1000, 0x2000, 0x10000, 0)], r.fds(1)), "wraps"),
    "zero regions": (owned, lambda r: r.fe.set_mem_table([], []), "0 regions"),
    "nine regions": (owned, lambda r: r.fe.send(
        V.SET_MEM_TABLE, struct.pack("<II", 9, 0) + b"\0" * 32 * 9), "9 regions"),
    "region count vs size": (owned, lambda r: r.fe.send(
        V.SET_MEM_TABLE, struct.pack("<II", 2, 0) + b"\0" * 32, r.fds(2)),
        "expected 72"),
    "missing region fd": (owned, lambda r: r.fe.set_mem_table(
        [(0, 0x1000, 0x10000, 0), (0x1000, 0x1000, 0x11000, 0)], r.fds(1)),
        "expected 2"),
    "mem table before owner": (None, lambda r: r.fe.set_mem_table(
        [(0, 0x1000, 0x10000, 0)], r.fds(1)), "before SET_OWNER"),
    "kick without fd": (owned, lambda r: r.fe.send(
        V.SET_VRING_KICK, struct.pack("<Q", 0)), "expected 1"),
    "kick polling": (owned, lambda r: r.fe.set_vring_kick(0, None), "polling"),
    "call with two fds": (owned, lambda r: r.fe.send(
        V.SET_VRING_CALL, struct.pack("<Q", 0), r.fds(2)), "expected 1"),
    "call nofd but fd": (owned, lambda r: r.fe.send(
        V.SET_VRING_CALL, struct.pack("<Q", 0x100), r.fds(1)), "expected 0"),
    "nine fds": (owned, lambda r: r.fe.send(
        V.SET_VRING_CALL, struct.pack("<Q", 0), r.fds(9)), "more than 8"),
    "features not offered": (owned, lambda r: r.fe.set_features(
        F.bit(F.MQ) | F.bit(F.VERSION_1)), "not offered: MQ"),
    "packed ring not offered": (owned, lambda r: r.fe.set_features(
        F.bit(F.RING_PACKED)), "RING_PACKED"),
    "protocol features not offered": (None, lambda r: r.fe.set_protocol_features(
        F.mask(F.PROTOCOL_F_PAGEFAULT)), "PAGEFAULT"),
    "enable value 2": (owned, lambda r: r.fe.send(
        V.SET_VRING_ENABLE, struct.pack("<II", 0, 2)), "value 2"),
    "num on running ring": (_prep_running, lambda r: r.fe.set_vring_num(0, 64),
                            "running"),
    "features change while running": (_prep_running, lambda r: r.fe.set_features(
        F.BASE), "while a ring"),
    "GET_CONFIG": (owned, lambda r: r.fe.send(V.GET_CONFIG, b"\0" * 12),
                   "never offered"),
    "GET_MAX_MEM_SLOTS": (owned, lambda r: r.fe.send(V.GET_MAX_MEM_SLOTS),
                          "never offered"),
    "SET_LOG_BASE without ack": (owned, lambda r: r.fe.send(
        V.SET_LOG_BASE, b"\0" * 16, r.fds(1)), "SET_LOG_BASE"),
    "ADD_MEM_REG without ack": (owned, lambda r: r.fe.send(
        V.ADD_MEM_REG, b"\0" * 40, r.fds(1)), "ADD_MEM_REG"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed(rig, case):
    setup, action, match = MALFORMED[case]
    if setup is not None:
        setup(rig)
    with pytest.raises(ProtocolError, match=match):
        action(rig)


def test_message_cut_by_eof(rig):
    rig.fe.send_raw(raw(V.SET_FEATURES, b"\0" * 4, size=8))
    rig.fe.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError, match="closed inside"):
        rig.conn.handle_readable()


def test_partial_message_waits_then_is_overdue(rig):
    """A message cut short never blocks the reader: handle_readable returns
    at once, the fds that came are held, and after `timeout` seconds
    overdue() tells the caller to drop the VMM; close() closes the fds."""
    fd = rig.fds(1)[0]
    assert not rig.conn.message_pending
    rig.fe.send_raw(raw(V.SET_FEATURES, b"", size=8), [fd])
    t0 = time.monotonic()
    assert rig.conn.handle_readable() is True
    assert time.monotonic() - t0 < 0.5
    assert rig.conn.message_pending
    assert not rig.conn.overdue(time.monotonic())
    assert rig.conn.overdue(time.monotonic() + rig.conn.timeout + 0.1)
    held = set(os.listdir("/proc/self/fd"))
    rig.conn.close()
    assert len(set(os.listdir("/proc/self/fd"))) == len(held) - 2   # the fd and the socket


def test_message_in_single_bytes_is_reassembled(rig):
    """A VMM that writes one byte at a time: each read takes what is there,
    and the message is handled once it is complete."""
    data = raw(V.GET_QUEUE_NUM, b"")
    for b in data[:-1]:
        rig.fe.sock.send(bytes([b]))
        assert rig.conn.handle_readable() is True
        assert rig.conn.messages == 0
    rig.fe.sock.send(data[-1:])
    assert rig.conn.handle_readable() is True
    assert rig.conn.messages == 1
    assert rig.fe.recv_reply(V.GET_QUEUE_NUM) == struct.pack("<Q", 1)


def test_clean_eof(rig):
    rig.fe.sock.shutdown(socket.SHUT_WR)
    assert rig.conn.handle_readable() is False


def test_ring_outside_memory_at_kick(rig):
    fe = rig.fe
    owned(rig)
    fe.set_features(fe.offered)
    fe.set_memory([rig.mem])
    fe.set_vring_num(0, 256)
    # desc table inside, used ring past the end of the only region
    u = rig.mem.user_addr
    fe.set_vring_addr(0, u, u + 4 * MiB - 16, u + 0x2000)
    with pytest.raises(ProtocolError, match="outside the memory table"):
        fe.set_vring_kick(0, fe._eventfd(fe.kick, 0))


def test_backend_failing_to_start_a_ring_closes(rig):
    be = rig.backend

    def refuse(i, ready):
        be.calls.append(("ready", i, ready))
        if ready:
            raise V.BackendError("no worker")
    be.ring_ready_changed = refuse
    with pytest.raises(ProtocolError, match="could not start"):
        rig.fe.negotiate([rig.mem])


def test_refusals_are_logged(rig, caplog):
    owned(rig)
    with caplog.at_level("WARNING", logger="vionetd.vhost_user"):
        rig.fe.send(V.SET_VRING_ENDIAN, struct.pack("<II", 0, 0))
    assert any("SET_VRING_ENDIAN ignored" in r.getMessage()
               for r in caplog.records)


def test_refusals_are_logged_once_per_connection(rig, caplog):
    """A VMM repeating a request we do not do, or sending every number we
    do not know, makes one line each for what we know and one in all for
    what we do not."""
    owned(rig)
    with caplog.at_level("WARNING", logger="vionetd.vhost_user"):
        for i in range(200):
            rig.fe.send(V.SET_VRING_ENDIAN, struct.pack("<II", 0, 0))
            rig.fe.send(1000 + i)
        assert rig.fe.get_queue_num() >= 1         # all of them handled
    lines = [r.getMessage() for r in caplog.records]
    assert sum("SET_VRING_ENDIAN ignored" in t for t in lines) == 1, lines
    assert sum("further unknown requests are not logged" in t for t in lines) == 1, lines
    assert len(lines) == 2, lines


def test_fds_with_a_message_that_takes_none_are_closed(rig):
    """GET_QUEUE_NUM with three eventfds: the fds are closed at once (the
    daemon holds no more fds than before) and the request is answered."""
    before = open_fds()
    sent = rig.fds(3)
    rig.fe.send(V.GET_QUEUE_NUM, b"", sent)
    assert rig.fe.recv_reply(V.GET_QUEUE_NUM) == struct.pack("<Q", 1)
    assert rig.conn.stray_fds == 3
    for fd in sent:                       # ours are still open; theirs went
        os.close(fd)
    rig.extra = [fd for fd in rig.extra if fd not in sent]
    assert open_fds() == before


# ---- the request table and its documentation --------------------------------

REFUSAL_TEXT = {R.SOFT: "refused softly",
                R.UNLESS_REPLY: "refused unless a failure reply is possible",
                R.FATAL: "refused, always fatal"}


def documented_requests() -> dict[int, tuple[str, str]]:
    """The per-request table of vionetd/vhost_user/__init__.py's docstring:
    number -> (name, what we do, continuation lines joined)."""
    lines = V.__doc__.split("Requests (number, name, what we do)\n", 1)[1].splitlines()
    rows: dict[int, tuple[str, str]] = {}
    last = None
    for line in lines:
        m = re.match(r"^ {1,3}(\d+) ([A-Z_]+) +(.*)$", line)
        if m:
            last = int(m.group(1))
            assert last not in rows, f"request {last} documented twice"
            rows[last] = (m.group(2), m.group(3))
        elif line.startswith(" " * 20) and last is not None:
            name, text = rows[last]
            rows[last] = (name, text + " " + line.strip())
        else:
            break
    return rows


def test_documentation_table_matches_the_request_table():
    doc = documented_requests()
    table = {row.req: row for row in R.TABLE}
    assert len(table) == len(R.TABLE), "a request has two rows"
    assert sorted(doc) == sorted(table), "documented and handled requests differ"
    assert list(doc) == sorted(doc), "the documentation is not in request order"
    for req, row in table.items():
        name, text = doc[req]
        assert name == row.name == V.request_name(req), req
        if row.refuse is None:
            assert row.handler is not None and not text.startswith("refused"), name
        else:
            assert row.handler is None and text.startswith(REFUSAL_TEXT[row.refuse]), name
    assert "Any other number is refused softly" in V.__doc__
    assert R.lookup(99).refuse == R.SOFT


def test_request_table_rows_are_consistent():
    for row in R.TABLE:
        assert row.reply in (R.ACK, R.PAYLOAD, R.EMPTY), row
        assert row.refuse in (None, R.SOFT, R.UNLESS_REPLY, R.FATAL), row
    takes_fds = {row.req for row in R.TABLE if row.fds}
    assert takes_fds == {V.SET_MEM_TABLE, V.SET_LOG_BASE, V.SET_LOG_FD,
                         V.SET_VRING_KICK, V.SET_VRING_CALL, V.SET_VRING_ERR}


# ---- Backend methods that wait -----------------------------------------------

class WaitBackend(RecBackend):
    """RecBackend whose methods are generators; those named in wait_in yield
    a Reply the test sets (a value: go on; None: refuse), recorded first as
    ("wait", method, args)."""

    def __init__(self, wait_in=()):
        super().__init__()
        self.wait_in = set(wait_in)
        self.replies: list[Reply] = []
        self.abandoned: list[str] = []      # closed while waiting
        self.given_fds: list[int] = []

    def _wait(self, name, *args):
        if name not in self.wait_in:
            return
        self.calls.append(("wait", name) + args)
        r = Reply()
        self.replies.append(r)
        try:
            value = yield r
        except GeneratorExit:
            self.abandoned.append(name)
            raise
        if value is None:
            raise V.BackendError(f"{name}: no answer")

    def set_features(self, f):
        yield from self._wait("set_features", f)
        super().set_features(f)

    def set_mem_table(self, regions, fds):
        self.given_fds = list(fds)
        yield from self._wait("set_mem_table")   # before it takes the fds
        super().set_mem_table(regions, fds)

    def set_vring_enable(self, i, on):
        yield from self._wait("set_vring_enable", i, on)
        super().set_vring_enable(i, on)

    def ring_ready_changed(self, i, ready):
        yield from self._wait("ring_ready_changed", i, ready)
        super().ring_ready_changed(i, ready)


@pytest.fixture
def wrig():
    before = open_fds()
    r = Rig(backend=WaitBackend())
    try:
        yield r
    finally:
        r.close()
    assert open_fds() == before, "file descriptor leak"


def ack(fe, req):
    return struct.unpack("<Q", fe.recv_reply(req))[0]


def test_generator_backend_without_waiting_negotiates(wrig):
    assert wrig.fe.negotiate([wrig.mem]) & F.bit(F.VERSION_1)
    assert wrig.conn.running(0) and wrig.conn.running(1)
    assert not wrig.conn.waiting and wrig.resumed == []


def test_ack_waits_for_the_reply(wrig):
    fe, conn, be = wrig.fe, wrig.conn, wrig.backend
    owned(wrig)
    be.wait_in = {"set_features"}
    fe.send(V.SET_FEATURES, struct.pack("<Q", fe.offered), need_reply=True)
    assert conn.waiting and be.calls[-1] == ("wait", "set_features", fe.offered)
    assert not fe.pending(0.05)
    n = conn.messages
    # more comes; nothing is read while waiting
    fe.send(V.GET_QUEUE_NUM)
    assert conn.messages == n and conn.handle_readable() is True
    assert conn.messages == n and not fe.pending()
    be.replies[0].set(True)                 # the answer: the message finishes
    assert not conn.waiting and wrig.resumed == [None]
    assert ack(fe, V.SET_FEATURES) == 0
    assert conn.features == fe.offered and ("set_features", fe.offered) in be.calls
    # the Connection did not read on by itself: the caller does
    assert conn.messages == n and not fe.pending(0.05)
    assert conn.handle_readable() is True
    assert fe.recv_reply(V.GET_QUEUE_NUM) == struct.pack("<Q", 1)


def test_reply_already_done_does_not_suspend(wrig):
    fe, conn, be = wrig.fe, wrig.conn, wrig.backend
    owned(wrig)
    done = Reply()
    done.set(7)
    seen = []

    def set_features(f):
        seen.append((yield done))
        return None
    be.set_features = set_features
    assert fe.set_features(fe.offered, need_reply=True) == 0
    assert seen == [7] and not conn.waiting and wrig.resumed == []


def test_no_answer_is_a_failure_ack_with_reply_ack(wrig):
    fe, conn, be = wrig.fe, wrig.conn, wrig.backend
    owned(wrig)
    be.wait_in = {"set_features"}
    fe.send(V.SET_FEATURES, struct.pack("<Q", fe.offered), need_reply=True)
    be.replies[0].set(None)                 # no answer: the backend refuses
    assert ack(fe, V.SET_FEATURES) == 1
    assert wrig.resumed == [None] and conn.features is None
    assert fe.get_queue_num() == 1          # still talking


def test_no_answer_without_reply_ack_ends_the_connection(wrig):
    fe, conn, be = wrig.fe, wrig.conn, wrig.backend
    fe.get_features()
    fe.set_owner()
    be.wait_in = {"set_features"}
    fe.send(V.SET_FEATURES, struct.pack("<Q", fe.offered))
    assert conn.waiting
    be.replies[0].set(None)
    assert not conn.waiting
    (error,) = wrig.resumed
    assert isinstance(error, ProtocolError)
    assert str(error).startswith("test: SET_FEATURES: backend refused")


def test_set_vring_enable_waits(wrig):
    fe, conn, be = wrig.fe, wrig.conn, wrig.backend
    owned(wrig)
    be.wait_in = {"set_vring_enable"}
    fe.send(V.SET_VRING_ENABLE, struct.pack("<II", 1, 1), need_reply=True)
    assert conn.waiting and not fe.pending(0.05)
    assert not conn.rings[1].enabled
    be.replies[0].set(True)
    assert ack(fe, V.SET_VRING_ENABLE) == 0 and conn.rings[1].enabled
    assert wrig.resumed == [None]


def test_waiting_stop_comes_before_get_vring_base(wrig):
    """GET_VRING_BASE reports the stop first; a stop that waits holds the
    base (and the reply) back until the worker has answered."""
    fe, conn, be = wrig.fe, wrig.conn, wrig.backend
    fe.negotiate([wrig.mem])
    be.next_base = {1: 5}
    be.wait_in = {"ring_ready_changed"}
    fe.send(V.GET_VRING_BASE, struct.pack("<II", 1, 0))
    assert conn.waiting and not conn.running(1) and conn.running(0)
    assert be.calls[-1] == ("wait", "ring_ready_changed", 1, False)
    assert "get_vring_base" not in be.names() and not fe.pending(0.05)
    be.replies[0].set(True)
    assert fe.recv_reply(V.GET_VRING_BASE) == struct.pack("<II", 1, 5)
    assert be.calls[-2:] == [("ready", 1, False), ("get_vring_base", 1)]
    assert wrig.resumed == [None]


def test_ack_is_sent_before_the_readiness_report(wrig):
    """The order of a message's effects: handler, ack, then the report. A
    start that waits comes after the kick's ack."""
    fe, conn, be = wrig.fe, wrig.conn, wrig.backend
    ring0_but_kick(wrig)
    be.wait_in = {"ring_ready_changed"}
    fe.send(V.SET_VRING_KICK, struct.pack("<Q", 0), [fe._eventfd(fe.kick, 0)],
            need_reply=True)
    assert ack(fe, V.SET_VRING_KICK) == 0      # already, while the start waits
    assert conn.waiting and conn.running(0)
    assert be.calls[-1] == ("wait", "ring_ready_changed", 0, True)
    be.replies[0].set(None)                    # the worker did not start
    (error,) = wrig.resumed
    assert "ring 0: backend could not start it" in str(error)


def test_close_while_waiting_closes_the_fds_and_stops_rings(wrig):
    fe, conn, be = wrig.fe, wrig.conn, wrig.backend
    fe.negotiate([wrig.mem])
    more = GuestRegion(1 * MiB, guest_addr=0x100000000)
    try:
        be.wait_in = {"set_mem_table", "ring_ready_changed"}
        before = len(open_fds())
        fe.send(V.SET_MEM_TABLE, struct.pack("<II", 2, 0) + b"".join(
            struct.pack("<QQQQ", *r.region) for r in (wrig.mem, more)),
            [wrig.mem.fd, more.fd])
        assert conn.waiting and len(be.given_fds) == 2
        assert len(open_fds()) == before + 2        # the message's fds, held
        for fd in be.given_fds:
            os.fstat(fd)
        conn.close()
        assert be.abandoned[0] == "set_mem_table"
        for fd in be.given_fds:
            with pytest.raises(OSError):
                os.fstat(fd)
        assert len(open_fds()) == before - 1        # and the socket
        # every ring reported stopped; the stops' Replies are not waited for
        assert [c for c in be.calls if c[0] == "wait"][-2:] == [
            ("wait", "ring_ready_changed", 0, False),
            ("wait", "ring_ready_changed", 1, False)]
        assert be.abandoned[1:] == ["ring_ready_changed"] * 2
        assert be.calls[-1] == ("disconnected",)
        assert not conn.waiting and not conn.running(0) and not conn.running(1)
        for r in be.replies:                        # a late answer: nothing
            r.set(True)
        assert wrig.resumed == []
    finally:
        more.close()


def test_handle_readable_reads_nothing_while_waiting(wrig):
    fe, conn, be = wrig.fe, wrig.conn, wrig.backend
    owned(wrig)
    be.wait_in = {"set_features"}
    fe.send(V.SET_FEATURES, struct.pack("<Q", fe.offered))
    fe.sock.shutdown(socket.SHUT_WR)          # EOF is not seen either
    for _ in range(3):
        assert conn.handle_readable() is True
    be.replies[0].set(True)
    assert wrig.resumed == [None]
    assert conn.handle_readable() is False


def test_a_bug_after_waiting_drops_the_vmm_not_the_caller(wrig, caplog):
    """An exception other than BackendError from a method that waited ends
    the message as a ProtocolError given to resumed(); whoever set the
    Reply is not hit by it."""
    fe, conn, be = wrig.fe, wrig.conn, wrig.backend
    owned(wrig)
    r = Reply()

    def set_features(f):
        yield r
        raise RuntimeError("oops")
    be.set_features = set_features
    fe.send(V.SET_FEATURES, struct.pack("<Q", fe.offered), need_reply=True)
    assert conn.waiting
    with caplog.at_level("ERROR", logger="vionetd.vhost_user"):
        r.set(1)
    (error,) = wrig.resumed
    assert isinstance(error, ProtocolError) and "internal error: RuntimeError: oops" in str(error)
    assert not conn.waiting and any("oops" in rec.getMessage() for rec in caplog.records)
