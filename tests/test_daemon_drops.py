"""Hostile guests and VMMs against the real daemon: every bad header or bad
chain is a counted drop, and the worker serves the next good frame; a VMM
that breaks the protocol is dropped and no other VM notices.
"""
import socket
import struct
import time

import pytest

from tests import frames as F
from tests import guestmem as G
from tests.daemon import capture_socket, daemon, switched_conf, wait_for_frame, wire
from tests.testvm import TestVM
from tests import vmm

pytestmark = pytest.mark.root



@pytest.fixture(scope="module")
def rig():
    with wire() as (dns, wns, bridge, veth_w):
        with daemon(switched_conf(bridge, ("t1", "t2")), dns) as d:
            d.wait_socket(d.dir + "/t1.sock")
            cap = capture_socket(wns, veth_w)
            try:
                with TestVM(d.dir + "/t1.sock") as vm:
                    yield d, vm, cap
            finally:
                cap.close()


def counters(d, key="t1/0"):
    return d.stats()[key]["counters"]


def good_frame_arrives(vm, cap, tag):
    """The next good frame still goes through."""
    vm.send(F.build(version=4, proto=F.UDP, payload=tag, csum="full").data)
    return wait_for_frame(cap, tag) is not None


def delta(d, before, name):
    return counters(d).get(name, 0) - before.get(name, 0)


BAD_HEADERS = {
    # counter: (frames.build args, header changes)
    "tx_refused_gso_size_zero": (dict(gso_size=1000, payload=b"z" * 3000), dict(gso_size=0)),
    "tx_refused_gso_proto": (dict(version=6, gso_size=1000, payload=b"p" * 3000),
                             dict(gso_type=F.GSO_TCPV4)),
    "tx_refused_gso_csum_start": (dict(gso_size=1000, payload=b"s" * 3000),
                                  dict(csum_start=38)),
    "tx_refused_tcp_csum_offset": (dict(gso_size=1000, payload=b"o" * 3000),
                                   dict(csum_offset=10)),
    "tx_refused_csum_offset_range": (dict(payload=b"r" * 100), dict(csum_offset=4000)),
    "tx_refused_flags_unknown": (dict(payload=b"f" * 100), dict(flags=0x21)),
    "tx_refused_hdr_len": (dict(payload=b"h" * 100), dict(hdr_len=9000)),
    "tx_refused_ecn_not_tcp": (dict(proto=F.UDP, gso_size=500, payload=b"e" * 2000),
                               dict(gso_type=F.GSO_UDP_L4 | F.GSO_ECN)),
    "tx_refused_uso_segments": (dict(proto=F.UDP, gso_size=8, payload=b"u" * 1200), {}),
}


@pytest.mark.parametrize("counter", sorted(BAD_HEADERS))
def test_bad_header_is_counted_and_next_frame_served(rig, counter):
    d, vm, cap = rig
    args, change = BAD_HEADERS[counter]
    f = F.with_fields(F.build(**args), **change)
    before = counters(d)
    used = vm.send(f.data, tuple(f.hdr_fields().values()))
    assert used[1] == 0
    assert delta(d, before, counter) == 1
    assert delta(d, before, "tx_frames") == 0
    assert good_frame_arrives(vm, cap, b"after " + counter.encode())


def test_bad_chains_are_counted_and_next_frame_served(rig):
    d, vm, cap = rig
    ring, mem = vm.tx, vm.mem
    hdr_frame = b"\0" * 12 + F.build(version=4, proto=F.UDP, payload=b"c" * 64, csum="full").data
    good = ring.alloc_buffer(len(hdr_frame), hdr_frame)
    cases = []

    def chain(counter, descs):
        """Write raw descriptors into free slots and post the first."""
        slots = [ring.free.pop(0) for _ in descs]
        for k, (addr, length, flags, nxt) in enumerate(descs):
            if isinstance(nxt, tuple):       # ("raw", index): any index at all
                nxt = nxt[1]
            elif nxt is not None:
                nxt = slots[nxt]
            ring.write_desc(slots[k], addr, length, flags, nxt or 0)
        ring.chains[slots[0]] = slots
        ring.post_head(slots[0])
        cases.append(counter)

    before = counters(d)
    chain("tx_ring_loop", [(good[0], 12, G.DESC_F_NEXT, 1), (good[0], 12, G.DESC_F_NEXT, 0)])
    chain("tx_ring_addr", [(0xdead0000000, len(hdr_frame), 0, None)])
    chain("tx_ring_addr", [(mem.gpa + mem.size - 8, 64, 0, None)])
    chain("tx_ring_addr", [(2**64 - 0x1000, 0x2000, 0, None)])         # address + length wraps
    chain("tx_ring_too_long", [(good[0], 0xFFFFFFFF, 0, None)])
    chain("tx_ring_write_on_tx", [(good[0], len(hdr_frame), G.DESC_F_WRITE, None)])
    chain("tx_ring_next_range", [(good[0], 12, G.DESC_F_NEXT, ("raw", ring.num + 3))])
    ring.write_desc(ring.free[0], good[0], 16, G.DESC_F_INDIRECT | G.DESC_F_NEXT)
    chain("tx_ring_indirect_next", [(good[0], 16, G.DESC_F_INDIRECT | G.DESC_F_NEXT, None)])
    vm.fe.kick_ring(1)
    vm.wait_used(1, len(cases))
    for name in set(cases):
        assert delta(d, before, name) == cases.count(name), name
    assert good_frame_arrives(vm, cap, b"after the bad chains")


def test_head_index_out_of_range_is_counted(rig):
    d, vm, cap = rig
    before = counters(d)
    vm.tx.post_head(vm.tx.num + 5)
    vm.fe.kick_ring(1)
    deadline = time.monotonic() + 5
    while delta(d, before, "tx_ring_head_range") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert delta(d, before, "tx_ring_head_range") == 1
    vm.tx.last_used = vm.tx.used_idx        # nothing to return for that head
    assert good_frame_arrives(vm, cap, b"after a bad head")


def test_rx_read_only_descriptor_is_counted(rig):
    d, vm, cap = rig
    before = counters(d)
    vm.rx.add_chain([vm.rx.alloc_buffer(2048, writable=False)])
    vm.fe.kick_ring(0)
    deadline = time.monotonic() + 5
    while delta(d, before, "rx_ring_read_on_rx") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert delta(d, before, "rx_ring_read_on_rx") == 1
    assert vm.rx.get_used() and True


def test_vmm_breaking_protocol_is_dropped_others_unaffected(rig):
    d, vm, cap = rig
    # t2's VMM puts its used ring outside guest memory: refused, dropped
    region = vmm.GuestRegion(1 << 20, guest_addr=0x100000)
    fe = vmm.Frontend.connect(d.dir + "/t2.sock")
    try:
        layout = vmm.SplitLayout(region.guest_addr, 64)
        with pytest.raises((vmm.FrontendError, OSError, ConnectionError)):
            fe.negotiate([region], layout)
            desc, avail, used = layout.addresses(1)
            fe.set_vring_addr(1, fe.gpa_to_user(desc), region.user_addr + (8 << 20),
                              fe.gpa_to_user(avail), need_reply=True)
            fe.set_vring_kick(1, vmm.eventfd(), need_reply=True)
            fe.get_features()
    finally:
        fe.close()
        region.close()
    time.sleep(0.2)
    assert "t2/0: dropping VMM" in d.log()
    assert good_frame_arrives(vm, cap, b"t1 never noticed")
    status = d.ctl("status").stdout
    assert "t2" in status and "waiting" in status.split("t2")[1]
    # garbage on the socket: dropped as well
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(d.dir + "/t2.sock")
    s.send(struct.pack("<III", 5, 1, 100000) + b"x" * 64)
    s.settimeout(5)
    try:
        assert s.recv(16) == b""
    except ConnectionResetError:
        pass                                # closed with our bytes unread: dropped too
    s.close()
    assert good_frame_arrives(vm, cap, b"t1 still fine")


def test_disabled_tx_ring_is_drained_and_discarded(rig):
    """vhost-user.rst, ring states: a started but disabled ring still takes
    TX buffers and discards them; enabled again, frames flow."""
    d, vm, cap = rig
    before = counters(d)
    vm.fe.set_vring_enable(1, False, need_reply=True)
    vm.send(F.build(version=4, proto=F.UDP, payload=b"while disabled", csum="full").data)
    assert delta(d, before, "tx_disabled_drop") == 1
    vm.fe.set_vring_enable(1, True, need_reply=True)
    assert good_frame_arrives(vm, cap, b"enabled again")
