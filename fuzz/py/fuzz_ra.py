#!/usr/bin/env python3
"""atheris target: router advertisements (vionetd/ra.py) and the tx
worker's diversion (vionetd/divert.py).

Input: u8 mode, then bytes, an Ethernet frame the tx worker diverted.
Mode even: ra.fields() gives a RouterSolicit or None; for one, the
parent's check (iface6.Inet6.solicited's lengths) holds, and the
advertisement of a local port (mode bit 1: an MTU, bit 2: dns6) is built
and its ICMPv6 checksum verifies. Mode odd: divert.Diverter.message()
(any of dhcp, ra, dhcp6 by the frame's kind) gives None or a FromWorker
field and message, never an exception.
"""
import ipaddress
from types import SimpleNamespace

import atheris
import harness

with atheris.instrument_imports():
    from vionetd import divert, frame6, local6, ra
    from vionetd import vionetd_pb2 as pb

A6 = local6.addresses6(ipaddress.IPv6Network("fd00:1:2::/48"), "vm1/0")
COUNTS = {}


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    if mode & 1:
        d = divert.Diverter(lambda n: COUNTS.__setitem__(n, COUNTS.get(n, 0) + 1),
                            clock=lambda: 0.0)
        out = d.message(body)
        assert out is None or out[0] in pb.FromWorker.DESCRIPTOR.fields_by_name
        return
    rs = ra.fields(body)
    if rs is None:
        return
    assert len(rs.src_mac) == 6 and len(rs.src_ip) == 16 and len(rs.lladdr) in (0, 6)
    port = SimpleNamespace(address6=A6, key="vm1/0", tap_mac=rs.src_mac,
                           conf=SimpleNamespace(dns6=[A6.lease] if mode & 4 else []),
                           iface=SimpleNamespace(mtu=1500 if mode & 2 else None))
    frame = ra.build(ra.advert(port, dst_ip=rs.src_ip if rs.src_ip[0] == 0xFE
                               else frame6.ALL_NODES))
    assert frame6.verify(frame6.packet(frame)), frame.hex()


if __name__ == "__main__":
    harness.run(test_one_input)
