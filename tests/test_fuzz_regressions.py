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


# fuzz_tx (fuzz/corpus/fuzz_tx/crash-v6-length-past-unparsed-exts-sw-csum):
# an IPv6 frame whose payload length ran past the frame passed validation
# because its extension headers did not parse; the software checksum, written
# over a next-header byte, made it parse, and the tap got a frame that fails
# validation (gso_ip_length). Tested where the data path and validation are:
# tests/test_datapath.py
# test_tx_sw_csum_over_a_next_header_never_writes_a_frame_that_fails_validation
# and tests/test_validate.py rows ip_length_exts_unparsed*.


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


# py_vhost_user: Connection.close() reported the rings stopped through
# _report(), which turned a BackendError of ring_ready_changed(i, False)
# into a ProtocolError that escaped close(), so backend.disconnected() was
# never called. close() now logs it and goes on.
def test_vhost_user_close_tells_the_backend_even_if_a_stop_is_refused():
    import os
    import socket
    import struct

    from vionetd import vhost_user as vu

    class Refusing(vu.Backend):
        disconnected_called = False

        def get_features(self):
            return 1 << 32

        def set_features(self, f):
            pass

        def set_mem_table(self, regions, fds):
            self.fds = fds

        def set_vring_kick(self, i, fd):
            os.close(fd)

        def set_vring_call(self, i, fd):
            pass

        def ring_ready_changed(self, i, ready):
            if not ready:
                raise vu.BackendError("cannot stop")

        def disconnected(self):
            self.disconnected_called = True

    def msg(req, payload=b""):
        return struct.pack("<III", req, 1, len(payload)) + payload

    ours, vmm = socket.socketpair()
    backend = Refusing()
    conn = vu.Connection(ours, backend, name="t")
    mfd = os.memfd_create("t")
    os.ftruncate(mfd, 65536)
    efd = os.eventfd(0)
    base = 0x7F0000000000
    try:
        for m, fds in ((msg(vu.SET_OWNER), []),
                       (msg(vu.SET_FEATURES, struct.pack("<Q", 1 << 32)), []),
                       (msg(vu.SET_MEM_TABLE, struct.pack("<II", 1, 0) +
                            struct.pack("<QQQQ", 0, 65536, base, 0)), [mfd]),
                       (msg(vu.SET_VRING_NUM, struct.pack("<II", 0, 16)), []),
                       (msg(vu.SET_VRING_ADDR, struct.pack("<IIQQQQ", 0, 0, base, base + 0x2000,
                                                           base + 0x1000, 0)), []),
                       (msg(vu.SET_VRING_KICK, struct.pack("<Q", 0)), [efd])):
            vmm.sendmsg([m], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                               struct.pack("%di" % len(fds), *fds))] if fds else [])
            assert conn.handle_readable()
        assert conn.running(0)
        try:
            conn.close()
        except vu.ProtocolError:
            pass
        assert backend.disconnected_called
    finally:
        vmm.close()
        os.close(mfd)
        os.close(efd)
        for fd in getattr(backend, "fds", []):
            os.close(fd)
