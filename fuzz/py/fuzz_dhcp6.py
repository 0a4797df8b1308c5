#!/usr/bin/env python3
"""atheris target: the DHCPv6 code (vionetd/dhcp6.py), all three steps.

Input: u8 mode, then bytes. Mode even: the bytes are an Ethernet frame the
tx worker diverted: fields() gives a Dhcp6Request or None. Mode odd: the
bytes are a serialized Dhcp6Request, as a (possibly compromised) worker
may send the parent. Either request goes to decide() for a local port
(mode bit 1: with dns6, bit 2: a lease in the store first), and a reply to
build().
Contract: fields() returns None or a request; decide() None or a reply;
build() a frame whose UDP checksum verifies (frame6.verify) and whose
message fields() of a client would not take for its own (a server's type);
no exception other than a protobuf DecodeError on a mode-odd input that
does not parse.
"""
import ipaddress
import tempfile
from types import SimpleNamespace

import atheris
import harness

with atheris.instrument_imports():
    from google.protobuf.message import DecodeError
    from vionetd import dhcp6, frame6, leases, local6
    from vionetd import vionetd_pb2 as pb

A6 = local6.addresses6(ipaddress.IPv6Network("fd00:1:2::/48"), "vm1/0")
STORE = tempfile.TemporaryDirectory(prefix="fuzz-dhcp6-")


def fake_port(dns6):
    return SimpleNamespace(address6=A6, key="vm1/0", lease6=None,
                           tap_mac=bytes.fromhex("fe0000000001"),
                           conf=SimpleNamespace(dns6=dns6), iface=SimpleNamespace(mtu=1500))


def request(mode, body):
    if mode & 1:
        req = pb.Dhcp6Request()
        try:
            req.ParseFromString(body)
        except DecodeError:
            return None
        return req
    req = dhcp6.fields(body)
    assert req is None or isinstance(req, pb.Dhcp6Request)
    return req


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    req = request(mode, body)
    if req is None:
        return
    leases.set_default(leases.Leases(STORE.name + "/leases", monotonic=lambda: 0.0))
    if mode & 4:
        leases.default().record6("vm1/0", A6.lease, b"\x00\x03\x00\x01" + bytes(6), 1, 60)
    dns = [ipaddress.IPv6Address("fd00::53")] if mode & 2 else []
    reply = dhcp6.decide(fake_port(dns), req)
    if reply is None:
        return
    assert reply.msg_type in (dhcp6.ADVERTISE, dhcp6.REPLY)
    frame = dhcp6.build(reply)
    assert frame6.verify(frame6.packet(frame)), frame.hex()


if __name__ == "__main__":
    harness.run(test_one_input)
