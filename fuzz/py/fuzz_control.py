#!/usr/bin/env python3
"""atheris target: the worker -> parent control channel (vionetd/control.py
recv) and the checks the parent makes of what it got.

Input: u8 (bits 0-1: fds to attach, each an eventfd, as a compromised
worker might), then one datagram sent on a SOCK_SEQPACKET socketpair.
control.recv(sock, FromWorker) must give a message and its fds, or raise
ChannelError (closing the fds). A message is then validated as the parent
does: its kind (WhichOneof), a DHCP or DHCPv6 request decided for a local
port and the reply built, stats counter names made readable (ctl.counter_names).
Contract: no exception but ChannelError; no fd leak.
"""
import ipaddress
import os
import socket
import tempfile
from types import SimpleNamespace

import atheris
import harness

with atheris.instrument_imports():
    from vionetd import control, ctl, dhcp, dhcp6, leases, local, local6
    from vionetd import vionetd_pb2 as pb

PORT = SimpleNamespace(address=local.addresses(ipaddress.IPv4Network("100.64.0.0/10"), "vm/0"),
                       address6=local6.addresses6(ipaddress.IPv6Network("fd00::/48"), "vm/0"),
                       key="vm/0", lease=None, lease6=None, tap_mac=b"\xfe\0\0\0\0\1",
                       conf=SimpleNamespace(dns=[], dns6=[]),
                       iface=SimpleNamespace(mtu=1500, hostname="g"))
KINDS = (None, "ring_stopped", "stats", "dhcp", "error", "forbidden_syscall", "ring_enabled",
         "ring_failed", "router_solicit", "dhcp6")
PARENT, WORKER = control.pair()
# DHCPv6 leases go to a store of the run's own, never the daemon's file
STORE = tempfile.TemporaryDirectory(prefix="fuzz-control-")
leases.set_default(leases.Leases(STORE.name + "/leases", monotonic=lambda: 0.0))


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_one_input(data: bytes) -> None:
    if not data:
        return
    before = open_fds()
    fds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(data[0] & 3)]
    try:
        WORKER.sendmsg([data[1:]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                     bytes(memoryview(bytearray().join(
                                         fd.to_bytes(4, "little") for fd in fds))))]
                       if fds else [])
    finally:
        for fd in fds:
            os.close(fd)
    try:
        msg, got = control.recv(PARENT, pb.FromWorker)
    except control.ChannelError:
        assert open_fds() == before
        return
    control.close_fds(got)
    assert open_fds() == before
    if msg is None:
        return
    kind = msg.WhichOneof("msg")
    assert kind in KINDS, kind
    if kind == "dhcp":
        reply = dhcp.decide(PORT, msg.dhcp)
        if reply is not None:
            dhcp.build(reply)
    elif kind == "dhcp6":
        reply = dhcp6.decide(PORT, msg.dhcp6)
        if reply is not None:
            dhcp6.build(reply)
    elif kind == "stats":
        ctl.counter_names({"tx_" + c.name: c.value for c in msg.stats.counters})


if __name__ == "__main__":
    harness.run(test_one_input)
