"""vionetd.tap and vionetd.links against the real kernel: taps opened with a
vnet header, the offload probe, and link configuration over rtnetlink. Every
tap and link lives in a namespace of the test's own."""
import contextlib
import errno
import os
import select
import struct

import pytest
from pyroute2 import IPRoute

from tests.netns import inside, ns_run, unique
from vionetd import links, tap

pytestmark = pytest.mark.root


@contextlib.contextmanager
def open_in(ns, name=""):
    with inside(ns):
        fd, ifname = tap.open_tap(name)
    try:
        yield fd, ifname
    finally:
        os.close(fd)


def link_info(ns, ifname):
    with inside(ns):
        with IPRoute() as r:
            return r.get_links(r.link_lookup(ifname=ifname)[0])[0]


def test_open_named_tap(netns):
    ns = netns()
    name = unique("vtap")
    with open_in(ns, name) as (fd, ifname):
        assert ifname == name
        assert tap.vnet_hdr_size(fd) == 12
        assert os.get_blocking(fd) is False
        info = link_info(ns, name)
        assert info.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "tun"
        # Nothing to read yet: non-blocking read says so at once.
        with pytest.raises(BlockingIOError):
            os.read(fd, 65536)
    # Not persistent: the link went with its fd.
    assert "vtap" not in ns_run(ns, "ip", "-o", "link").stdout


def test_kernel_chosen_name(netns):
    ns = netns()
    with open_in(ns) as (fd1, n1), open_in(ns, "vt%d") as (fd2, n2):
        assert n1.startswith("tap") and n1[3:].isdigit()
        assert n2.startswith("vt") and n2[2:].isdigit()


def test_name_too_long(netns):
    with pytest.raises(tap.TapError):
        tap.open_tap("x" * 16)


def test_features():
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        feats = tap.get_features(fd)
    finally:
        os.close(fd)
    want = tap.IFF_TAP | tap.IFF_NO_PI | tap.IFF_VNET_HDR | tap.IFF_MULTI_QUEUE
    assert feats & want == want


def test_probe_offloads(netns):
    ns = netns()
    with open_in(ns) as (fd, ifname):
        mask = tap.probe_offloads(fd)
        # Every kernel we run on (>= 6.2) knows all seven bits.
        assert mask & 0x7F == 0x7F, tap.offload_names(mask)
        assert mask == tap.TUN_F_CSUM | tap.TUN_F_TSO4 | tap.TUN_F_TSO6 | \
            tap.TUN_F_TSO_ECN | tap.TUN_F_UFO | tap.TUN_F_USO4 | tap.TUN_F_USO6
        # set_offload takes what the probe found, and the kernel shows it.
        tap.set_offload(fd, mask)
        out = ns_run(ns, "ethtool", "-k", ifname).stdout
        assert "tcp-segmentation-offload: on" in out
        assert "tx-udp-segmentation: on" in out
        tap.set_offload(fd, 0)
        out = ns_run(ns, "ethtool", "-k", ifname).stdout
        assert "tx-tcp-segmentation: off" in out


@pytest.mark.parametrize("bad", [
    0x8000,                                 # a bit nobody defined
    tap.TUN_F_TSO4,                         # without CSUM
    tap.TUN_F_CSUM | tap.TUN_F_TSO_ECN,     # ECN without TSO
    tap.TUN_F_CSUM | tap.TUN_F_USO4,        # USO4 without USO6
])
def test_set_offload_refused(netns, bad):
    ns = netns()
    with open_in(ns) as (fd, ifname):
        with pytest.raises(tap.TapError) as e:
            tap.set_offload(fd, bad)
        assert e.value.errno == errno.EINVAL


def test_write_read_through_vnet_header(netns):
    """A frame written with a 12-byte header comes back out of a second tap
    bridged to the first, with a 12-byte header in front."""
    ns = netns()
    br = unique("vbr")
    ns_run(ns, "ip", "link", "add", br, "type", "bridge")
    ns_run(ns, "ip", "link", "set", br, "up")
    with open_in(ns) as (fa, na), open_in(ns) as (fb, nb):
        with inside(ns):
            for n in (na, nb):
                links.attach_to_bridge(n, br)
                links.set_up(n)
        frame = bytes.fromhex("ffffffffffff" "020000000001" "88b5") + b"vionetd" * 10
        os.write(fa, bytes(12) + frame)
        deadline = 50
        got = None
        while deadline and got is None:
            deadline -= 1
            if not select.select([fb], [], [], 0.1)[0]:
                continue
            data = os.read(fb, 65536)
            if data[12:] == frame:
                got = data
        assert got is not None, "frame not seen on the other tap"
        flags, gso_type = struct.unpack_from("BB", got)
        assert gso_type == 0


def test_links(netns):
    ns = netns()
    br = unique("vbr")
    ns_run(ns, "ip", "link", "add", br, "type", "bridge")
    with open_in(ns) as (fd, ifname), inside(ns):
        links.set_mtu(ifname, 9000)
        links.set_mac(ifname, "02:11:22:33:44:55")
        links.set_up(ifname)
        links.add_address(ifname, "100.64.0.0", 31)
        links.add_address(ifname, "100.64.0.0", 31)  # again: not an error
        links.add_address(ifname, "fd00::1", 64)
        with IPRoute() as r:
            info = r.get_links(r.link_lookup(ifname=ifname)[0])[0]
            addrs = {a.get_attr("IFA_ADDRESS") for a in
                     r.get_addr(index=r.link_lookup(ifname=ifname)[0])}
        assert info.get_attr("IFLA_MTU") == 9000
        assert info.get_attr("IFLA_ADDRESS") == "02:11:22:33:44:55"
        assert info["flags"] & 1  # IFF_UP
        assert "100.64.0.0" in addrs and "fd00::1" in addrs

        assert links.master_of(ifname) is None
        links.attach_to_bridge(ifname, br)
        assert links.master_of(ifname) == br
        with pytest.raises(links.LinkError, match="does not exist"):
            links.attach_to_bridge(ifname, "nosuchbr0")
        with pytest.raises(links.LinkError, match="not a bridge"):
            links.attach_to_bridge(ifname, "lo")
        with pytest.raises(links.LinkError, match="no such link"):
            links.set_up("nosuchlink0")
        with pytest.raises(links.LinkError):
            links.set_mtu(ifname, 10)  # below the minimum MTU

        links.delete_link(br)
        links.delete_link(br)  # gone already: fine
        assert links.master_of(ifname) is None


def _read_all(fd, limit=1.0, idle=0.2):
    """Frames read from a tap until idle seconds pass without one."""
    import time
    got, start, last = [], time.monotonic(), time.monotonic()
    while time.monotonic() - last < idle and time.monotonic() - start < limit:
        if select.select([fd], [], [], 0.05)[0]:
            got.append(os.read(fd, 70000))
            last = time.monotonic()
    return got


@pytest.mark.parametrize("mask, whole", [(0, False), (0x03, True)])
def test_offload_mask_governs_reader(netns, mask, whole):
    """A TSO4 super-frame written into tap A and bridged to tap B reaches B's
    reader whole (gso_type TCPV4 in its header) only if B's mask has
    CSUM|TSO4; with mask 0 the kernel cuts it first."""
    from tests.test_kernel_segmentation import tcp_superframe, pattern
    ns = netns()
    br = unique("vbr")
    ns_run(ns, "ip", "link", "add", br, "type", "bridge")
    ns_run(ns, "ip", "link", "set", br, "up")
    with open_in(ns) as (fa, na), open_in(ns) as (fb, nb):
        tap.set_offload(fb, mask)
        with inside(ns):
            for n in (na, nb):
                links.attach_to_bridge(n, br)
                links.set_up(n)
        payload = pattern(3000, 1)
        hdr, frame = tcp_superframe(False, payload, 1000)
        for _ in range(20):  # the ports come up asynchronously
            os.write(fa, hdr + frame)
            got = [g for g in _read_all(fb) if g[12 + 6:12 + 12] == frame[6:12]]
            if got:
                break
        if whole:
            assert len(got) == 1 and got[0][12:] == frame
            assert got[0][1] == 1 and struct.unpack_from("<H", got[0], 4)[0] == 1000
        else:
            assert len(got) == 3
            assert all(g[1] == 0 for g in got)
            assert b"".join(g[12 + 66:] for g in got) == payload
