#!/usr/bin/env python3
"""atheris target: vionetctl request handling (vionetd/ctl.py CtlServer.answer).

Input: u8 (bit 0: the client is root; bit 1: reload fails; bit 2: the
sessions answer with counters), then the request datagram. The server is
built without its socket, over a stub parent with two interfaces (one
local, one not, one without workers) whose sessions answer at once or never
(then the stats timer, fired here, answers).
Contract: answer() calls respond exactly once with a CtlReply
(serializable, an error for anything malformed or not allowed); it never
raises.
"""
import ipaddress
import logging
from types import SimpleNamespace

import atheris
import harness

with atheris.instrument_imports():
    from vionetd import config, ctl, local, local6
    from vionetd import log as logmod
    from vionetd import vionetd_pb2 as pb
    from vionetd.eventloop import Reply


def stub_port(vm, idx, local_addr):
    iface = SimpleNamespace(vm=vm, socket="/run/%s.sock" % vm, lladdr="52:54:00:00:00:%02x" % idx,
                            offload=config.Offload())
    addr = local.addresses(ipaddress.IPv4Network("100.64.0.0/10"), "%s/%d" % (vm, idx)) \
        if local_addr else None
    workers = {(1, 0): 100 + idx, (2, 0): 200 + idx} if idx else {}
    counters = {"0/rx_frames": 5, "0/tx_rx_no_buffers": 1, "0/tx_refused_ok": 0,
                "1/rx_ring_ok": 0, "1/tx_frames": 3, "x/other": 7, "other": 1}
    return SimpleNamespace(
        iface=iface, key="%s/%d" % (vm, idx), state="running", tap_name="tap%d" % idx,
        address=addr, tap_caps=0x1f, offered=0x30006fa3, lease=None, queue_pairs=1 + idx,
        address6=local6.addresses6(ipaddress.IPv6Network("fd00::/48"), "%s/%d" % (vm, idx))
        if local_addr else None, lease6=None,
        reason="", children=SimpleNamespace(workers=workers, session_pid=300 + idx,
                                            session_restarts=0),
        tap=SimpleNamespace(announced=idx, mtu=1500, vmm_mtu=1400 if idx else 0),
        limits=pb.Limits(tx=pb.Rate(bytes_per_s=25_000_000 * idx)),
        session=SimpleNamespace(retries=idx, logging=bool(idx), worker_restarts=idx,
                                vmm_features=(1 << 64) - 1 if idx else 0),
        request_stats=lambda done: PENDING.append((done, counters)))


PENDING = []           # (done, counters) of stats asked for


class StubLoop:
    timers = []

    def call_later(self, delay, fn):
        t = SimpleNamespace(fn=fn, cancel=lambda: None)
        self.timers.append(t)
        return t


class StubParent:
    def __init__(self, reload_error):
        self.ports = {p.key: p for p in (stub_port("vm1", 0, True), stub_port("vm2", 1, False))}
        self.reload_error = reload_error
        self.loop = StubLoop()

    def reload(self):
        done = Reply()              # Parent.reload: set once the restarts are done
        done.set(self.reload_error)
        return done


def server(reload_error):
    s = ctl.CtlServer.__new__(ctl.CtlServer)
    s.parent = StubParent(reload_error)
    s.path = "/nonexistent"
    s.clients = []
    return s


SERVERS = (server(None), server("vionetd.conf:3: syntax error"))


def test_one_input(data: bytes) -> None:
    if not data:
        return
    uid = 0 if data[0] & 1 else 1000
    replies = []
    PENDING.clear()
    StubLoop.timers.clear()
    SERVERS[(data[0] >> 1) & 1].answer(data[1:], uid, replies.append)
    if data[0] & 4:
        for done, counters in PENDING:        # the sessions answer
            done(counters)
    for t in list(StubLoop.timers):           # then the deadline passes
        t.fn()
    assert len(replies) == 1 and isinstance(replies[0], pb.CtlReply), replies
    replies[0].SerializeToString()
    logmod.log.setLevel(logging.INFO)


if __name__ == "__main__":
    harness.run(test_one_input)
