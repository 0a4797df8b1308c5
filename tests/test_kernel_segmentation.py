"""The kernel cross-check of software segmentation.

We write TSO/USO super-frames, with their virtio_net_hdr exactly as a Linux
guest's virtio-net driver sends them, into a tap, and let Linux cut them; then
we cut the same super-frames with vionetd's gso_segment() (csrc/) and compare
the two, field by field.

The recipe that makes Linux segment in software, and finish every checksum:

    namespace S:  bridge br  <- tap (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, hdr 12)
                             <- veth va, with  ethtool -K va tx off tso off
                                gso off tx-udp-segmentation off
    namespace C:  veth vb (va's peer, gro off), an AF_PACKET socket bound to it

A frame written to the tap is received by the bridge and forwarded to va; at
va's transmit (validate_xmit_skb) the GSO skb meets a device without TSO/USO
and is segmented by the stack (skb_gso_segment), and since va cannot checksum
either, every segment's checksums are completed in software. vb receives wire
frames. With va's offloads left on, the super-frame crosses the veth whole:
test_recipe_control shows it, so a count above 1 really is Linux's doing.
(There is no "ufo" to turn off: devices lost UFO in Linux 4.14; "tx off"
alone would do, as TSO and USO depend on checksum offload, but each is named.)
The tap's own TUNSETOFFLOAD mask plays no part: it governs what the tap's
reader gets, and frames written with a vnet header are taken whatever it is.
Tags: the receive path moves an 802.1Q tag into skb metadata, so the capture
puts it back from PACKET_AUXDATA.

Fields Linux is free to choose differently: LINUX_MAY_DIFFER below, each with
its reason; only those are excluded from the comparison.
"""
import math
import os
import random
import select
import socket
import struct
import time

import pytest

from tests.netns import disable_ipv6, inside, netns, ns_run, unique, veth_pair
from vionetd import links, tap

pytestmark = pytest.mark.root

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SRC_MAC = bytes.fromhex("02766e000001")
DST_MAC = bytes.fromhex("02766e000002")
IP4_SRC, IP4_DST = bytes([100, 64, 0, 1]), bytes([100, 64, 0, 2])
IP6_SRC = bytes.fromhex("fd00000000000000000000000000000a")
IP6_DST = bytes.fromhex("fd00000000000000000000000000000b")

# virtio_net_hdr (include/uapi/linux/virtio_net.h)
NEEDS_CSUM = 1
GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, GSO_ECN = 1, 4, 5, 0x80
TCP_FIN, TCP_PSH, TCP_ACK, TCP_ECE, TCP_CWR = 0x01, 0x08, 0x10, 0x40, 0x80

# Fields Linux may set differently from us, and why: field name (as dissect()
# gives it) -> (reason, when the freedom applies, given Linux's and our
# dissected segment). Every other field must be equal; where a freedom does
# not apply, the field is compared like the others.
LINUX_MAY_DIFFER = {
    "ip.id": (
        "IPv4 identification of a segment with DF set: RFC 6864 section 4.1 says "
        "the ID of an atomic datagram has no meaning and a source may set any "
        "value. Linux increments it per segment (inet_gso_segment) unless the "
        "skb says SKB_GSO_TCP_FIXEDID, and both are correct.",
        lambda lx, us: lx.get("ip.flags") == 2 and us.get("ip.flags") == 2),
    "ip.csum": (
        "IPv4 header checksum: it covers ip.id, so it differs when ip.id does; "
        "it must still verify (ip.csum_ok is compared).",
        lambda lx, us: lx.get("ip.id") != us.get("ip.id")),
    "trailer": (
        "Ethernet padding after the IP packet of a frame shorter than 60 bytes "
        "(IEEE 802.3 minimum): which device adds it is an implementation choice "
        "(veth never pads, a NIC driver does); receivers ignore bytes past the "
        "IP length. Ours may pad with zeros up to 60 bytes, no further.",
        lambda lx, us: lx["trailer"] == b"" and set(us["trailer"]) <= {0}
        and _wire_len(us) <= 60 + (4 if "eth.vlan" in us else 0)),
}


def _wire_len(d: dict) -> int:
    """A dissected frame's length: Ethernet (and tag), IP packet, trailer."""
    ip = d["ip.len"] + (40 if d["ip.version"] == 6 else 0)
    return 14 + (4 if "eth.vlan" in d else 0) + ip + len(d["trailer"])


# ---- checksums (RFC 1071) --------------------------------------------------

def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def inet_csum(data: bytes) -> int:
    return ~_sum16(data) & 0xFFFF


def pseudo(v6: bool, src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if v6:
        return src + dst + struct.pack("!IxxxB", length, proto)
    return src + dst + struct.pack("!xBH", proto, length)


# ---- super-frames as a Linux guest sends them ------------------------------

def _eth(v6: bool, vlan: int | None = None) -> bytes:
    tag = b"" if vlan is None else struct.pack("!HH", 0x8100, vlan)
    return DST_MAC + SRC_MAC + tag + struct.pack("!H", 0x86DD if v6 else 0x0800)


def _ip(v6: bool, proto: int, l4_len: int, tos: int, opts: bytes) -> bytes:
    """IPv4 (DF, options opts) or IPv6 (opts: extension headers, already
    chained to end in proto) in front of l4_len bytes of TCP/UDP."""
    if v6:
        nh = 60 if opts else proto  # destination options header
        return struct.pack("!IHBB", (6 << 28) | (tos << 20) | 0x12345,
                           len(opts) + l4_len, nh, 64) + IP6_SRC + IP6_DST + opts
    ihl = 5 + len(opts) // 4
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, ihl * 4 + l4_len, 0x1234,
                    0x4000, 64, proto, 0, IP4_SRC, IP4_DST) + opts
    return h[:10] + struct.pack("!H", inet_csum(h)) + h[12:]


def _vnet(gso_type: int, hdr_len: int, gso_size: int, csum_start: int, csum_off: int) -> bytes:
    return struct.pack("<BBHHHHH", NEEDS_CSUM, gso_type, hdr_len, gso_size,
                       csum_start, csum_off, 0)


def _dstopts(proto: int) -> bytes:
    """An 8-byte IPv6 destination options header: next header, length 0, PadN."""
    return struct.pack("!BB", proto, 0) + b"\x01\x04\0\0\0\0"


def tcp_superframe(v6, payload, mss, flags=TCP_ACK | TCP_PSH, ecn=False, opts=b"", vlan=None):
    """(vnet header, frame): what virtio-net's start_xmit hands the device for
    a TSO skb: the IP header complete for the whole super-frame, the TCP
    checksum field holding the folded pseudo-header sum of the whole TCP
    length (tcp_v4_send_check / tcp_v6_send_check), NEEDS_CSUM at the TCP
    header, offset 16."""
    tcp_opts = b"\x01\x01\x08\x0a" + struct.pack("!II", 0xA1B2C3D4, 0x01020304)
    thl = 20 + len(tcp_opts)
    l4_len = thl + len(payload)
    tos = 0x02 if ecn else 0  # ECT(0)
    if v6 and opts:
        opts = _dstopts(6)
    ip = _ip(v6, 6, l4_len, tos, opts)
    src, dst = (IP6_SRC, IP6_DST) if v6 else (IP4_SRC, IP4_DST)
    check = _sum16(pseudo(v6, src, dst, 6, l4_len))
    th = struct.pack("!HHIIBBHHH", 40000, 5201, 0x11223344, 0x55667788,
                     (thl // 4) << 4, flags, 502, check, 0) + tcp_opts
    eth = _eth(v6, vlan)
    l4_off = len(eth) + len(ip)
    gso = (GSO_TCPV6 if v6 else GSO_TCPV4) | (GSO_ECN if ecn else 0)
    return _vnet(gso, l4_off + thl, mss, l4_off, 16), eth + ip + th + payload


def udp_superframe(v6, payload, gso_size, opts=b"", vlan=None):
    """(vnet header, frame) for a UDP_SEGMENT (USO) send: the UDP length and
    the pseudo-header sum in the checksum field cover the whole datagram
    (udp_send_skb), NEEDS_CSUM at the UDP header, offset 6."""
    l4_len = 8 + len(payload)
    if v6 and opts:
        opts = _dstopts(17)
    ip = _ip(v6, 17, l4_len, 0, opts)
    src, dst = (IP6_SRC, IP6_DST) if v6 else (IP4_SRC, IP4_DST)
    check = _sum16(pseudo(v6, src, dst, 17, l4_len))
    uh = struct.pack("!HHHH", 40001, 9000, l4_len, check)
    eth = _eth(v6, vlan)
    l4_off = len(eth) + len(ip)
    return _vnet(GSO_UDP_L4, l4_off + 8, gso_size, l4_off, 6), eth + ip + uh + payload


def pattern(n: int, seed: int) -> bytes:
    """Payload bytes no two segments share, so a misplaced slice shows."""
    return bytes((i * 7 + seed + (i >> 8)) & 0xFF for i in range(n))


IP4_RA = b"\x94\x04\x00\x00"  # Router Alert (RFC 2113): one 4-byte IPv4 option

# name: (kind, v6, payload length, gso_size, extra)
CASES = {
    "tso4":         ("tcp", False, 4000, 1000, {}),
    "tso4-big":     ("tcp", False, 60000, 1448, {}),
    "tso4-fin":     ("tcp", False, 3001, 1000, {"flags": TCP_ACK | TCP_PSH | TCP_FIN}),
    "tso4-ecn-cwr": ("tcp", False, 4500, 1400, {"ecn": True,
                                               "flags": TCP_ACK | TCP_PSH | TCP_CWR | TCP_ECE}),
    "tso4-ipopts":  ("tcp", False, 2500, 1000, {"opts": IP4_RA}),
    "tso4-vlan":    ("tcp", False, 4000, 1000, {"vlan": 0x2005}),  # PCP 1, VID 5
    "tso6":         ("tcp", True, 4000, 1000, {}),
    "tso6-big":     ("tcp", True, 30000, 1428, {}),
    "tso6-ecn-cwr": ("tcp", True, 4500, 1400, {"ecn": True,
                                              "flags": TCP_ACK | TCP_PSH | TCP_CWR}),
    "tso6-dstopts": ("tcp", True, 2500, 1000, {"opts": True}),
    "uso4":         ("udp", False, 5000, 1200, {}),
    "uso4-exact":   ("udp", False, 4800, 1200, {}),
    "uso4-tinytail": ("udp", False, 2401, 1200, {}),  # last frame: 43 bytes
    "uso4-ipopts":  ("udp", False, 3000, 1000, {"opts": IP4_RA}),
    "uso6":         ("udp", True, 5000, 1200, {}),
    "uso6-big":     ("udp", True, 40000, 1400, {}),
    "uso6-dstopts": ("udp", True, 3000, 1000, {"opts": True}),
    "uso6-vlan":    ("udp", True, 3000, 1000, {"vlan": 7}),
}


def _random_cases(seed: int, count: int) -> dict:
    """More cases, drawn from a fixed seed (so a failure can be replayed):
    any protocol mix, odd sizes, tags, options, TCP flags that matter for
    segmentation. Kept within 2..64 segments and the 1500-byte MTU."""
    rng = random.Random(seed)
    out = {}
    for i in range(count):
        kind, v6 = rng.choice(("tcp", "udp")), rng.random() < 0.5
        gso = rng.randint(1, 1400)
        n = rng.randint(gso + 1, min(gso * 64, 60000))
        extra = {}
        if rng.random() < 0.3:
            extra["vlan"] = rng.randint(1, 4094)
        if rng.random() < 0.3:
            extra["opts"] = True if v6 else IP4_RA
        if kind == "tcp":
            extra["flags"] = TCP_ACK | rng.choice((0, TCP_PSH, TCP_PSH | TCP_FIN))
            if rng.random() < 0.3:
                extra["ecn"] = True
                extra["flags"] |= TCP_CWR | rng.choice((0, TCP_ECE))
        out["rand%d-%s%d" % (i, kind, 6 if v6 else 4)] = (kind, v6, n, gso, extra)
    return out


CASES.update(_random_cases(seed=0x766E, count=16))


def nsegs(name):
    """How many segments a correct cut of case name makes."""
    return math.ceil(CASES[name][2] / CASES[name][3])


def build(name):
    kind, v6, n, gso, extra = CASES[name]
    payload = pattern(n, len(name))
    if kind == "tcp":
        hdr, frame = tcp_superframe(v6, payload, gso, **extra)
    else:
        hdr, frame = udp_superframe(v6, payload, gso, **extra)
    return hdr, frame, payload, gso


# ---- dissecting a wire frame into named fields ------------------------------

def dissect(f: bytes) -> dict:
    """Every field of an Ethernet/IPv4-or-IPv6/TCP-or-UDP frame, by name.
    Bytes past the IP length are 'trailer'."""
    d = {"eth.dst": f[0:6], "eth.src": f[6:12], "eth.type": struct.unpack_from("!H", f, 12)[0]}
    if d["eth.type"] == 0x8100:
        d["eth.vlan"], d["eth.type"] = struct.unpack_from("!HH", f, 14)
        f = f[:12] + f[16:]  # the rest as if untagged (offsets below assume 14)
    if d["eth.type"] == 0x0800:
        vihl, tos, tlen, ipid, frag, ttl, proto, hcs = struct.unpack_from("!BBHHHBBH", f, 14)
        ihl = (vihl & 15) * 4
        d.update({"ip.version": vihl >> 4, "ip.ihl": ihl, "ip.tos": tos, "ip.len": tlen,
                  "ip.id": ipid, "ip.flags": frag >> 13, "ip.frag": frag & 0x1FFF,
                  "ip.ttl": ttl, "ip.proto": proto, "ip.csum": hcs,
                  "ip.src": f[26:30], "ip.dst": f[30:34], "ip.opts": f[34:14 + ihl],
                  "ip.csum_ok": inet_csum(f[14:14 + ihl]) == 0})
        l4 = 14 + ihl
        end = 14 + tlen
        v6 = False
    elif d["eth.type"] == 0x86DD:
        vtf, plen, nh, hlim = struct.unpack_from("!IHBB", f, 14)
        d.update({"ip.version": vtf >> 28, "ip.tclass": (vtf >> 20) & 0xFF,
                  "ip.flow": vtf & 0xFFFFF, "ip.len": plen, "ip.hlim": hlim,
                  "ip.nexthdr": nh, "ip.src": f[22:38], "ip.dst": f[38:54]})
        l4, proto, ext = 54, nh, b""
        while proto in (0, 43, 60):  # hop-by-hop, routing, destination options
            hl = (f[l4 + 1] + 1) * 8
            ext += f[l4:l4 + hl]
            proto = f[l4]
            l4 += hl
        d["ip.ext"] = ext
        d["ip.proto"] = proto
        end = 54 + plen
        v6 = True
    else:
        raise AssertionError("not IP: ethertype 0x%04x" % d["eth.type"])
    src, dst = d["ip.src"], d["ip.dst"]
    seg = f[l4:end]
    l4_ok = inet_csum(pseudo(v6, src, dst, proto, len(seg)) + seg) == 0
    if proto == 6:
        sp, dp, seq, ack, off, flags, win, cs, urg = struct.unpack_from("!HHIIBBHHH", f, l4)
        thl = (off >> 4) * 4
        d.update({"tcp.sport": sp, "tcp.dport": dp, "tcp.seq": seq, "tcp.ack": ack,
                  "tcp.doff": thl, "tcp.res": off & 15, "tcp.flags": flags,
                  "tcp.window": win, "tcp.csum": cs, "tcp.urg": urg,
                  "tcp.opts": f[l4 + 20:l4 + thl], "l4.csum_ok": l4_ok})
        d["payload"] = f[l4 + thl:end]
    elif proto == 17:
        sp, dp, ulen, cs = struct.unpack_from("!HHHH", f, l4)
        d.update({"udp.sport": sp, "udp.dport": dp, "udp.len": ulen, "udp.csum": cs,
                  "l4.csum_ok": l4_ok and cs != 0})
        d["payload"] = f[l4 + 8:end]
    else:
        raise AssertionError("not TCP/UDP: %d" % proto)
    d["trailer"] = f[end:]
    return d


# ---- the lab: tap -> bridge -> veth without offloads -> capture -------------

class Lab:
    def __init__(self, fd, sock):
        self.fd, self.sock = fd, sock

    def drain(self):
        while select.select([self.sock], [], [], 0)[0]:
            self.sock.recv(70000)

    def send(self, hdr: bytes, frame: bytes, idle: float = 0.3, limit: float = 3.0,
             expect: int = 0):
        """Write one vnet header + frame in one write; return the frames
        from SRC_MAC that reach the capture, until idle seconds pass
        without one (at most limit seconds). Once expect frames are in,
        a tenth of idle is enough to see whether more follow."""
        self.drain()
        n = os.write(self.fd, hdr + frame)
        assert n == len(hdr) + len(frame)
        got = []
        start = last = time.monotonic()
        while True:
            now = time.monotonic()
            wait = idle / 10 if expect and len(got) >= expect else idle
            if now - last > wait or now - start > limit:
                return got
            if not select.select([self.sock], [], [], 0.05)[0]:
                continue
            data, anc, _, addr = self.sock.recvmsg(70000, 256)
            if addr[2] == PACKET_OUTGOING or data[6:12] != SRC_MAC:
                continue
            data = _untagged_back(data, anc)
            got.append(data)
            last = time.monotonic()


SOL_PACKET, PACKET_AUXDATA = 263, 8
TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_TPID_VALID = 0x10, 0x40


def _untagged_back(data: bytes, anc) -> bytes:
    """Put an 802.1Q tag back where it was on the wire. The receive path
    moves a tag out of the frame into skb metadata (skb_vlan_untag), and
    AF_PACKET gives it in struct tpacket_auxdata (include/uapi/linux/
    if_packet.h) rather than in the bytes."""
    for level, kind, raw in anc:
        if level != SOL_PACKET or kind != PACKET_AUXDATA:
            continue
        status, _, _, _, _, tci, tpid = struct.unpack_from("IIIHHHH", raw)
        if status & TP_STATUS_VLAN_VALID:
            if not status & TP_STATUS_VLAN_TPID_VALID:
                tpid = 0x8100
            return data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
    return data


VETH_OFF = ("tx", "off", "tso", "off", "gso", "off", "tx-udp-segmentation", "off")


@pytest.fixture(scope="module")
def lab():
    with netns("vks") as ns_s, netns("vkc") as ns_c:
        for ns in (ns_s, ns_c):
            disable_ipv6(ns)
        br, va, vb = unique("vkbr"), unique("vka"), unique("vkb")
        ns_run(ns_s, "ip", "link", "add", br, "type", "bridge")
        ns_run(ns_s, "ip", "link", "set", br, "up")
        with veth_pair(va, ns_s, vb, ns_c):
            ns_run(ns_s, "ethtool", "-K", va, *VETH_OFF)
            ns_run(ns_c, "ethtool", "-K", vb, "gro", "off")
            with inside(ns_s):
                fd, tname = tap.open_tap(unique("vkt"))
            sock = None
            try:
                with inside(ns_s):
                    links.attach_to_bridge(va, br)
                    links.attach_to_bridge(tname, br)
                    links.set_up(tname)
                with inside(ns_c):
                    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                         socket.htons(ETH_P_ALL))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
                sock.bind((vb, 0))
                lab = Lab(fd, sock)
                lab.ns_s, lab.va = ns_s, va
                _wait_forwarding(lab)
                yield lab
            finally:
                if sock is not None:
                    sock.close()
                os.close(fd)


def _wait_forwarding(lab, limit=5.0):
    """Send a small plain frame until one crosses the bridge (ports come up
    asynchronously), bounded in time."""
    hdr = bytes(12)
    frame = DST_MAC + SRC_MAC + b"\x88\xb5" + b"warmup" * 10
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if any(f == frame for f in lab.send(hdr, frame, idle=0.2, limit=0.5)):
            return
    raise AssertionError("the bridge never forwarded a frame from the tap")


# ---- Linux's segments on their own ------------------------------------------

def check_linux_segments(name, segs, payload, gso):
    """What must hold of any correct segmentation, checked on Linux's."""
    kind = CASES[name][0]
    want = math.ceil(len(payload) / gso)
    assert len(segs) == want > 1, "%s: %d frames captured, %d expected" % (name, len(segs), want)
    ds = [dissect(s) for s in segs]
    assert b"".join(d["payload"] for d in ds) == payload
    sent = dissect(build(name)[1])
    for i, d in enumerate(ds):
        assert d["trailer"] == b""
        for k in ("eth.dst", "eth.src", "eth.type", "eth.vlan", "ip.src", "ip.dst"):
            assert d.get(k) == sent.get(k), "%s: segment %d: %s" % (name, i, k)
        assert len(d["payload"]) == (gso if i < want - 1 else len(payload) - gso * (want - 1))
        assert d["l4.csum_ok"], "%s: segment %d L4 checksum" % (name, i)
        if d["ip.version"] == 4:
            assert d["ip.csum_ok"], "%s: segment %d IP checksum" % (name, i)
        if kind == "tcp":
            assert d["tcp.seq"] == (0x11223344 + i * gso) & 0xFFFFFFFF
            # tcp_gso_segment: FIN and PSH only on the last segment, CWR only
            # on the first (RFC 3168 6.1.2: CWR once per window reduction).
            last, first = i == want - 1, i == 0
            orig = sent["tcp.flags"]
            want_flags = orig & ~((TCP_FIN | TCP_PSH) if not last else 0) \
                & ~(TCP_CWR if not first else 0)
            assert d["tcp.flags"] == want_flags, "%s: segment %d flags" % (name, i)
        else:
            assert d["udp.len"] == 8 + len(d["payload"])
    return ds


@pytest.mark.parametrize("name", sorted(CASES))
def test_linux_segments(lab, name):
    hdr, frame, payload, gso = build(name)
    check_linux_segments(name, lab.send(hdr, frame, expect=nsegs(name)), payload, gso)


def test_recipe_control(lab):
    """With va's offloads on, Linux does not segment: the super-frame arrives
    whole. So the segmentation seen above is the recipe's doing."""
    hdr, frame, payload, gso = build("tso4")
    ns_run(lab.ns_s, "ethtool", "-K", lab.va, "tx", "on", "tso", "on", "gso", "on",
           "tx-udp-segmentation", "on")
    try:
        got = lab.send(hdr, frame)
    finally:
        ns_run(lab.ns_s, "ethtool", "-K", lab.va, *VETH_OFF)
    assert len(got) == 1 and len(got[0]) == len(frame)
    assert dissect(got[0])["payload"] == payload


# ---- ours against Linux's -----------------------------------------------------

# Virtio feature bits (virtio 1.2, 5.1.3): what a device offering every
# host-side offload negotiates with a Linux guest.
FEATURES = sum(1 << b for b in (0, 11, 12, 13, 32, 56))  # CSUM HOST_TSO4/TSO6/ECN VERSION_1 HOST_USO


def _core():
    """The C core, or a skip that says why it is not there."""
    try:
        from vionetd.core import ffi, lib
    except ImportError as e:
        pytest.skip("gso_segment not built: %s" % e)
    if not hasattr(lib, "gso_segment"):
        pytest.skip("gso_segment not built: no such function in vionetd._core")
    return ffi, lib


def our_segments(hdr: bytes, frame: bytes) -> list[bytes]:
    """Validate the super-frame as the TX path would, then cut it with
    gso_segment(); the frame reaches it as a two-piece scatter list, as guest
    buffers would (the split falls inside the payload)."""
    ffi, lib = _core()
    h = ffi.new("struct vnet_hdr *")
    ffi.memmove(h, hdr, 12)
    head_len = min(len(frame), lib.HEAD_MAX)
    head = ffi.new("uint8_t[]", frame[:head_len])
    fi = ffi.new("struct frame_info *")
    r = lib.vnet_validate(h, head, head_len, len(frame), FEATURES, fi)
    assert r == lib.VR_OK, "our validator refuses a Linux guest's frame: %s" % \
        ffi.string(lib.vnet_reason_name(r)).decode()
    cut = len(frame) - 777
    pieces = [ffi.new("uint8_t[]", frame[:cut]), ffi.new("uint8_t[]", frame[cut:])]
    iov = ffi.new("struct iovec[2]")
    for v, p, n in zip(iov, pieces, (cut, len(frame) - cut)):
        v.iov_base, v.iov_len = p, n
    cap, max_segs = 1 << 19, 256
    out = ffi.new("uint8_t[]", cap)
    lens = ffi.new("uint32_t[]", max_segs)
    n = lib.gso_segment(h, fi, head, iov, 2, len(frame), out, cap, lens, max_segs)
    assert n > 0, "gso_segment returned %d" % n
    segs, off = [], 0
    for i in range(n):
        segs.append(bytes(ffi.buffer(out + off, lens[i])))
        off += lens[i]
    return segs


def compare(name, linux: list[bytes], ours: list[bytes]) -> None:
    assert len(ours) == len(linux), "%s: we cut %d segments, Linux %d" % (
        name, len(ours), len(linux))
    for i, (lf, of) in enumerate(zip(linux, ours)):
        lx, us = dissect(lf), dissect(of)
        assert lx.keys() == us.keys(), "%s: segment %d: different protocols" % (name, i)
        diff = []
        for key in lx:
            if lx[key] == us[key]:
                continue
            freedom = LINUX_MAY_DIFFER.get(key)
            if freedom and freedom[1](lx, us):
                continue
            diff.append("%s: Linux %r, ours %r" % (key, lx[key], us[key]))
        assert not diff, "%s: segment %d: %s" % (name, i, "; ".join(diff))


@pytest.mark.parametrize("name", sorted(CASES))
def test_ours_equals_linux(lab, name):
    _core()
    hdr, frame, payload, gso = build(name)
    linux = lab.send(hdr, frame, expect=nsegs(name))
    check_linux_segments(name, linux, payload, gso)
    compare(name, linux, our_segments(hdr, frame))


def test_compare_catches_a_difference(lab):
    """compare() is not vacuous: one flipped bit in a TCP option fails it."""
    hdr, frame, payload, gso = build("tso4")
    linux = lab.send(hdr, frame)
    bad = [linux[0][:60] + bytes([linux[0][60] ^ 1]) + linux[0][61:]] + linux[1:]
    with pytest.raises(AssertionError, match="tcp.opts"):
        compare("tso4", linux, bad)
    # Another IPv4 id with DF set is a freedom, but the header must still verify.
    bad = [linux[0]] + [linux[1][:18] + b"\xff\xff" + linux[1][20:]] + linux[2:]
    with pytest.raises(AssertionError, match="ip.csum_ok"):
        compare("tso4", linux, bad)
    ip = bytearray(bad[1][14:34])
    ip[10:12] = b"\0\0"
    ip[10:12] = struct.pack("!H", inet_csum(bytes(ip)))
    compare("tso4", linux, [linux[0], bad[1][:14] + bytes(ip) + bad[1][34:]] + linux[2:])
    bad = linux[:-1] + [linux[-1][:-1] + bytes([linux[-1][-1] ^ 0x80])]
    with pytest.raises(AssertionError, match="payload"):
        compare("tso4", linux, bad)
