#!/usr/bin/env python3
"""atheris target: vionetctl request handling (vionetd/ctl.py CtlServer.answer).

Input: u8 (bit 0: the client is root; bit 1: reload fails), then the
request datagram. The server is built without its socket, over a stub
parent with two ports (one local, one not, one without workers).
Contract: answer() returns a CtlReply (serializable, an error for anything
malformed or not allowed); it never raises.
"""
import ipaddress
import logging
import sys
from types import SimpleNamespace

import atheris

with atheris.instrument_imports():
    from vionetd import config, ctl, local
    from vionetd import log as logmod
    from vionetd import vionetd_pb2 as pb


def stub_port(vm, idx, local_addr):
    iface = SimpleNamespace(vm=vm, socket="/run/%s.sock" % vm, lladdr="52:54:00:00:00:%02x" % idx,
                            offload=config.Offload())
    addr = local.addresses(ipaddress.IPv4Network("100.64.0.0/10"), "%s/%d" % (vm, idx)) \
        if local_addr else None
    workers = {0: SimpleNamespace(pid=100 + idx), 1: SimpleNamespace(pid=None)} if idx else {}
    return SimpleNamespace(
        iface=iface, key="%s/%d" % (vm, idx), state="running", tap_name="tap%d" % idx,
        address=addr, tap_caps=0x1f, vmm_features=(1 << 64) - 1 if idx else 0,
        offered=0x30006fa3, restarts=idx, workers=workers, lease=None,
        counters=lambda: {"rx_frames": 5, "tx_rx_no_buffers": 1, "tx_refused_ok": 0,
                          "rx_ring_ok": 0, "tx_frames": 3, "other": 7})


class StubParent:
    def __init__(self, reload_error):
        self.ports = {p.key: p for p in (stub_port("vm1", 0, True), stub_port("vm2", 1, False))}
        self.reload_error = reload_error

    def reload(self):
        return self.reload_error


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
    reply = SERVERS[(data[0] >> 1) & 1].answer(data[1:], uid)
    assert isinstance(reply, pb.CtlReply), reply
    reply.SerializeToString()
    logmod.log.setLevel(logging.INFO)


def main() -> None:
    logging.disable(logging.CRITICAL)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
