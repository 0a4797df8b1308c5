"""Dirty logging and the RARP announcement through the real daemon, with the
test VMM playing QEMU during a migration.

The VMM hands the daemon a log (a memfd, one bit per 4 KiB guest page),
acks LOG_ALL and sets the log flag on both rings while they run, as QEMU
does when a migration starts. Frames then cross in both directions, and
the bitmap must show every page the daemon wrote (RX buffers, both used
rings) and nothing it only read (TX buffers). The same run with the
test-only switch VIONETD_TEST_NO_DIRTY_LOG=1 leaves the bitmap empty:
that is what the migration test's negative control relies on.
"""
import contextlib
import mmap
import os
import struct
import time

import pytest

from tests import frames as F
from tests.daemon import capture_socket, daemon, switched_conf, wait_for_frame, wire
from tests.testvm import TestVM
from vionetd import vhost_user as V

pytestmark = pytest.mark.root

GUEST_MAC = bytes.fromhex("525400123456")
PEER_MAC = bytes.fromhex("5254009a0001")
LLADDR = "        lladdr 52:54:00:12:34:56\n"
PAGE = 4096


def pages_of(gpa, length):
    return set(range(gpa // PAGE, (gpa + length - 1) // PAGE + 1))


def marked(log):
    """The pages whose bit is set in the bitmap."""
    return {8 * i + b for i, byte in enumerate(bytes(log)) if byte for b in range(8) if byte >> b & 1}


@contextlib.contextmanager
def migration_started():
    """A daemon and a TestVM whose migration has started (logging on):
    (daemon, vm, the log as an mmap, a raw socket in the far namespace)."""
    with wire() as (dns, wns, bridge, veth_w):
        with daemon(switched_conf(bridge, lines=LLADDR), dns) as d:
            d.wait_socket(d.dir + "/t1.sock")
            peer = capture_socket(wns, veth_w)
            fd = os.memfd_create("dirty-log")
            try:
                with TestVM(d.dir + "/t1.sock") as vm:
                    os.ftruncate(fd, vm.log_size())
                    with mmap.mmap(fd, vm.log_size()) as log:
                        vm.start_logging(fd)
                        yield d, vm, log, peer
            finally:
                os.close(fd)
                peer.close()


@pytest.fixture
def migrating():
    with migration_started() as rig:
        yield rig


@pytest.fixture
def migrating_without_log(monkeypatch):
    monkeypatch.setenv("VIONETD_TEST_NO_DIRTY_LOG", "1")
    with migration_started() as rig:
        yield rig


def frame(tag, dst=GUEST_MAC, src=PEER_MAC):
    data = F.build(version=4, proto=F.UDP, payload=tag * 40, csum="full").data
    return dst + src + data[12:]


def exchange(vm, peer, n=8):
    """n frames each way."""
    vm.post_rx(2 * n, 2048)
    for i in range(n):
        peer.send(frame(b"rx%d" % i))
    assert len(vm.receive(n)) == n
    for i in range(n):
        vm.send(frame(b"tx%d" % i, dst=PEER_MAC, src=GUEST_MAC))


def ring_pages(ring):
    return pages_of(ring.used, 6 + 8 * ring.num)


def take_used(vm):
    """Read every used RX chain receive() has not: vm.rx_written has them all."""
    for head, length in vm.rx_pending + vm.rx.get_used():
        vm._chain_bytes(head, length)
    vm.rx_pending.clear()


def pages_written(chains):
    out = set()
    for bufs, length in chains:
        for gpa, size, _ in bufs:
            if length > 0:
                out |= pages_of(gpa, min(size, length))
            length -= size
    return out


def test_rx_and_used_rings_are_marked(migrating):
    d, vm, log, peer = migrating
    exchange(vm, peer)
    # What the device wrote: each used chain's length, multicast frames the
    # namespaces send now and then included (receive() reads, then drops
    # them). The device marks a chain's pages before it publishes the
    # chain, and one may come at any time: so the log is read after the
    # used entries, and the used ring once more after that, for a chain
    # marked meanwhile.
    time.sleep(0.2)
    take_used(vm)
    before = len(vm.rx_written)
    got = marked(log)
    time.sleep(0.2)
    take_used(vm)
    assert vm.rx_written, "no RX chain was used"
    written = pages_written(vm.rx_written[:before])
    rings = ring_pages(vm.rx) | ring_pages(vm.tx)
    assert written <= got, "RX pages written but not marked: %s" % sorted(written - got)
    assert ring_pages(vm.rx) & got and ring_pages(vm.tx) & got, "a used ring is not marked"
    # nothing else: not the buffers the guest posted and the device left
    # alone, not the TX frames it only read (they share no page with these)
    written = pages_written(vm.rx_written)
    assert got <= written | rings, "pages marked that the device did not write: %s" \
        % sorted(got - written - rings)
    show = d.ctl("show", "t1").stdout
    line = [l for l in show.splitlines() if "migration:" in l][0]
    assert "dirty logging on" in line, show
    assert int(line.split("pages marked ")[1].split(",")[0]) >= len(got), show


def test_logging_stops_when_the_vmm_says(migrating):
    d, vm, log, peer = migrating
    fe = vm.fe
    fe.set_features(vm.features)                 # LOG_ALL off: migration over
    for i, ring in enumerate((vm.rx, vm.tx)):
        fe.set_vring_addr(i, fe.gpa_to_user(ring.desc), fe.gpa_to_user(ring.used),
                          fe.gpa_to_user(ring.avail))
    fe.get_features()
    log[:] = bytes(len(log))
    exchange(vm, peer)
    assert not marked(log), "pages marked after logging was turned off"
    assert "dirty logging off" in d.ctl("show", "t1").stdout


def test_the_test_switch_disables_marking(migrating_without_log):
    d, vm, log, peer = migrating_without_log
    exchange(vm, peer)
    assert not marked(log), "the test switch did not disable dirty logging"


def test_send_rarp_announces_the_guest(migrating):
    d, vm, log, peer = migrating
    vm.fe.send(V.SEND_RARP, GUEST_MAC + b"\0\0")
    f = wait_for_frame(peer, GUEST_MAC + b"\x80\x35")
    assert f is not None, "no RARP frame reached the far namespace"
    assert f[:6] == b"\xff" * 6 and f[6:12] == GUEST_MAC
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", f[14:22])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 3)
    assert f[22:28] == GUEST_MAC and f[32:38] == GUEST_MAC
    assert "announced 1" in d.ctl("show", "t1").stdout
