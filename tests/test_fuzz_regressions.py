"""Regression tests for the defects the fuzz targets (fuzz/) found, one per
defect, each named after what went wrong. The inputs are the minimal ones
the fuzzer wrote (fuzz/crashes/), decoded."""
import ipaddress
from types import SimpleNamespace

import pytest

from vionetd import dhcp, local
from vionetd import vionetd_pb2 as pb
from vionetd._core import ffi, lib


def _port():
    return SimpleNamespace(
        address=local.addresses(ipaddress.IPv4Network("100.64.0.0/10"), "vm1/0"),
        key="vm1/0", lease=None, tap_mac=bytes.fromhex("fe0000000001"),
        conf=SimpleNamespace(dns=[]), iface=SimpleNamespace(mtu=1500, hostname="guest1"))


def _request(**kw):
    port = _port()
    base = dict(op=1, xid=0x1234, flags=0, chaddr=bytes.fromhex("525400000001"),
                ciaddr=b"\0" * 4, message_type=dhcp.REQUEST,
                requested_addr=port.address.guest.packed)
    base.update(kw)
    return port, pb.DhcpRequest(**base)


# py_dhcp / py_control: a DhcpRequest comes from the tx worker as protobuf,
# whose fields are wider than DHCP's. decide() copied them into the reply
# and build(), in the rx worker, raised struct.error ('H' format) on a
# flags value above 16 bits, or built a frame with a wrong checksum from an
# address of the wrong length.
@pytest.mark.parametrize("fields", [
    dict(flags=4209664),                                    # the fuzzer's input
    dict(flags=0x10000),
    dict(chaddr=b"\x01" * 7),
    dict(chaddr=b""),
    dict(message_type=dhcp.INFORM, ciaddr=b"\x0a\0\0\x09\x01"),
    dict(message_type=dhcp.INFORM, ciaddr=b"\x0a\0"),
    dict(requested_addr=b"\x0a\0\0"),
    dict(server_id=b"\x0a"),
])
def test_dhcp_request_fields_out_of_range_get_no_reply_or_a_valid_one(fields):
    port, req = _request(**fields)
    reply = dhcp.decide(port, req)
    if reply is not None:
        frame = dhcp.build(reply)
        assert lib.rx_csum_verify(ffi.from_buffer(frame), len(frame)) == 1


def test_dhcp_well_formed_request_still_answered():
    port, req = _request()
    reply = dhcp.decide(port, req)
    assert reply is not None and reply.message_type == dhcp.ACK
    frame = dhcp.build(reply)
    assert lib.rx_csum_verify(ffi.from_buffer(frame), len(frame)) == 1
