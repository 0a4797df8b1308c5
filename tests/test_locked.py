"""locked lladdr through the real daemon: a guest cannot send as another MAC
(Ethernet source or ARP sender), and frames for another MAC never reach it;
nor can a compromised tx worker writing to the tap itself (the kernel's
nftables filter, removed when the interface stops).
"""
import ctypes
import os
import struct
import time

import pytest

from tests import frames as F
from tests import netns as nsmod
from tests.daemon import capture_socket, daemon, switched_conf, wait_for_frame, wire
from tests.test_daemon_rx import Peer
from tests.test_sandbox import worker_pids
from tests.testvm import TestVM

pytestmark = pytest.mark.root

GUEST = bytes.fromhex("525400123456")
OTHER = bytes.fromhex("5254000000ee")


def arp(sha, src=GUEST, op=1):
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sha, b"\x0a\0\0\x02",
                       b"\0" * 6, b"\x0a\0\0\x01")
    return b"\xff" * 6 + src + b"\x08\x06" + body + b"\0" * 18


def udp_from(src, tag):
    f = F.build(version=4, proto=F.UDP, payload=tag, csum="full")
    return f.data[:6] + src + f.data[12:]


LOCKED = "        locked lladdr 52:54:00:12:34:56"
SYS_PIDFD_GETFD = 438


@pytest.fixture(scope="module")
def rig():
    with wire() as (dns, wns, bridge, veth_w):
        with daemon(switched_conf(bridge, lines=LOCKED), dns) as d:
            d.wait_socket(d.dir + "/t1.sock")
            cap = capture_socket(wns, veth_w)
            peer = Peer(wns, veth_w)
            try:
                with TestVM(d.dir + "/t1.sock") as vm:
                    vm.post_rx(128, 2048)
                    yield d, vm, cap, peer
            finally:
                cap.close()
                peer.sock.close()


def seen(cap, needle):
    return wait_for_frame(cap, needle, timeout=1.5) is not None


def counter(d, name):
    return d.stats()["t1/0"]["counters"][name]


def test_spoofed_source_is_dropped(rig):
    d, vm, cap, _ = rig
    before = counter(d, "tx_locked_mac_drop")
    vm.send(udp_from(OTHER, b"spoofed source"))
    assert not seen(cap, b"spoofed source")
    assert counter(d, "tx_locked_mac_drop") == before + 1
    vm.send(udp_from(GUEST, b"own source"))
    assert seen(cap, b"own source")


def test_arp_claiming_another_address_is_dropped(rig):
    d, vm, cap, _ = rig
    before = counter(d, "tx_locked_arp_drop")
    vm.send(arp(OTHER))
    vm.send(arp(OTHER, op=2))
    assert counter(d, "tx_locked_arp_drop") == before + 2
    vm.send(arp(GUEST))
    assert seen(cap, GUEST + b"\x0a\0\0\x02")


def test_unicast_for_another_mac_never_reaches_the_guest(rig):
    d, vm, cap, peer = rig
    vm.rx.get_used()
    vm.rx_pending.clear()
    f = F.build(version=4, proto=F.UDP, payload=b"not yours", csum="full")
    bcast = F.build(version=4, proto=F.UDP, payload=b"everyone", csum="full")
    peer.sock.send(b"\0" * 10 + OTHER + bytes.fromhex("5254009a0001") + f.data[12:])
    peer.sock.send(b"\0" * 10 + b"\xff" * 6 + bytes.fromhex("5254009a0001") + bcast.data[12:])
    peer.send(F.build(version=4, proto=F.UDP, payload=b"yours", csum="full"))
    frames = [fr for _, fr in vm.receive(2)]
    time.sleep(0.3)
    assert vm.rx.get_used() == [] and not vm.rx_pending      # nothing else came
    assert any(b"everyone" in fr for fr in frames)
    assert any(b"yours" in fr and fr[:6] == GUEST for fr in frames)
    assert not any(b"not yours" in fr for fr in frames)
    # and not in guest memory at all: the kernel filtered it before the read
    assert b"not yours" not in bytes(vm.mem.map)


def tap_of(pid):
    """A copy of the tap fd process pid holds (pidfd_getfd(2)): what that
    process could write to if a guest compromised it."""
    fd = [int(n) for n in os.listdir("/proc/%d/fd" % pid)
          if os.readlink("/proc/%d/fd/%s" % (pid, n)) == "/dev/net/tun"][0]
    pidfd = os.pidfd_open(pid)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        got = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        assert got >= 0, os.strerror(ctypes.get_errno())
        return got
    finally:
        os.close(pidfd)


def test_a_tx_worker_writing_to_the_tap_cannot_spoof_either(rig):
    """The tx worker's own check bypassed: a frame written to its tap fd
    with another source MAC never reaches the far side of the bridge; one
    with the locked MAC does."""
    d, vm, cap, _ = rig
    fd = tap_of(worker_pids(d)[1])
    try:
        os.write(fd, b"\0" * 12 + udp_from(OTHER, b"straight to the tap, spoofed"))
        assert not seen(cap, b"straight to the tap, spoofed")
        os.write(fd, b"\0" * 12 + udp_from(GUEST, b"straight to the tap, own"))
        assert seen(cap, b"straight to the tap, own")
    finally:
        os.close(fd)


def nft_tables(ns):
    return nsmod.ns_run(ns, "nft", "list", "tables").stdout


def test_the_filter_goes_with_the_interface():
    with wire() as (dns, _wns, bridge, _veth):
        t2 = switched_conf(bridge, vms=("t2",), lines=LOCKED.replace(":56", ":57"))
        both = switched_conf(bridge, vms=("t1",), lines=LOCKED) + t2.split("}\n", 1)[1]
        with daemon(both, dns) as d:
            d.wait_socket(d.dir + "/t2.sock")
            assert nft_tables(dns).count("table netdev vionetd-") == 2
            with open(d.conf, "w") as f:         # t2 goes
                f.write(switched_conf(bridge, vms=("t1",), lines=LOCKED)
                        .replace("@CTL@", d.ctl_socket).replace("@DIR@", d.dir))
            assert d.ctl("reload").stdout.strip() == "reloaded"
            assert nft_tables(dns).count("table netdev vionetd-") == 1
        assert "vionetd-" not in nft_tables(dns)           # and t1 with the daemon
