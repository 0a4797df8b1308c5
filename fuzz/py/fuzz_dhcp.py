#!/usr/bin/env python3
"""atheris target: the DHCP code (vionetd/dhcp.py), all three steps.

Input: u8 mode, then bytes. Mode even: the bytes are an Ethernet frame the
tx worker diverted: fields() gives a DhcpRequest or None. Mode odd: the
bytes are a serialized DhcpRequest, as a (possibly compromised) worker may
send the parent. Either request goes to decide() for a local port, and a
reply to build().
Contract: fields() returns None or a request; decide() None or a reply;
build() a frame whose IPv4 and UDP checksums verify (checked by the C
core's rx_csum_verify); no exception other than a protobuf DecodeError on
a mode-odd input that does not parse.
"""
import ipaddress
from types import SimpleNamespace

import atheris
import harness

with atheris.instrument_imports():
    from google.protobuf.message import DecodeError
    from vionetd import dhcp, local
    from vionetd import vionetd_pb2 as pb
    from vionetd._core import ffi, lib

ADDR = local.addresses(ipaddress.IPv4Network("100.64.0.0/10"), "vm1/0")


def fake_port(mtu, hostname, dns):
    return SimpleNamespace(address=ADDR, key="vm1/0", lease=None,
                           tap_mac=bytes.fromhex("fe0000000001"),
                           conf=SimpleNamespace(dns=dns),
                           iface=SimpleNamespace(mtu=mtu, hostname=hostname))


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    if mode & 1:
        req = pb.DhcpRequest()
        try:
            req.ParseFromString(body)
        except DecodeError:
            return
    else:
        req = dhcp.fields(body)
        if req is None:
            return
        assert isinstance(req, pb.DhcpRequest)
    dns = [] if mode & 2 else ["192.0.2.53", "192.0.2.54"]
    port = fake_port(1500 if mode & 4 else None, "guest-1" if mode & 8 else None, dns)
    reply = dhcp.decide(port, req)
    if reply is None:
        return
    frame = dhcp.build(reply)
    assert lib.rx_csum_verify(ffi.from_buffer(frame), len(frame)) == 1, frame.hex()


if __name__ == "__main__":
    harness.run(test_one_input)
