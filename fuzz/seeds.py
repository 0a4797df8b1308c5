"""Write the seed inputs of every fuzz target into fuzz/corpus/TARGET/.

Seeds are the frames and messages the tests already build: tests/frames.py
(GSO and checksum-offload frames of every kind), tests/test_dhcp.py's
request frames, a vhost-user session as tests/vmm.py's Frontend sends it,
etc/vionetd.conf, vionetctl requests and worker messages. Each is encoded in
the input format its target's header comment describes. Seed files are
named seed-*; run from the repository root: .venv/bin/python fuzz/seeds.py
"""
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests import frames as Fr  # noqa: E402
from tests.test_dhcp import request_frame  # noqa: E402
from vionetd import dhcp, vhost_user as vu  # noqa: E402
from vionetd import vionetd_pb2 as pb  # noqa: E402

CORPUS = os.path.join(ROOT, "fuzz", "corpus")
ALL_FEATURES = (1 << 64) - 1
GPA, UVA = 0x100000, 0x7F0000000000
LOCKED = bytes.fromhex("525400123456")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def hdr10(f):
    return f.vnet_hdr()[:10]


def frame_set():
    """(name, Frame) pairs: every offload shape the tests use."""
    out = []
    for v in (4, 6):
        for proto in (Fr.TCP, Fr.UDP):
            p = "v%d%s" % (v, "tcp" if proto == Fr.TCP else "udp")
            out.append((p + "-gso", Fr.build(v, proto, payload=bytes(range(256)) * 12, gso_size=1000)))
            out.append((p + "-gso-small", Fr.build(v, proto, payload=b"abc" * 50, gso_size=7)))
            out.append((p + "-partial", Fr.build(v, proto, payload=b"x" * 300)))
            out.append((p + "-full", Fr.build(v, proto, payload=b"y" * 60, csum="full")))
            out.append((p + "-vlan-gso", Fr.build(v, proto, payload=b"z" * 3000, vlan=5, gso_size=1448)))
    out.append(("v4tcp-opts-gso", Fr.build(4, Fr.TCP, payload=b"o" * 2000, ip_opts=2, tcp_opts=3,
                                           gso_size=500, ecn=True)))
    out.append(("v6-exts-gso", Fr.build(6, Fr.TCP, payload=b"e" * 2000, exts=[(60, 8), (0, 16)],
                                        gso_size=600)))
    return out


def ring_frame(f, pad=0):
    """vnet header + frame, as a guest puts it in one TX buffer."""
    return f.vnet_hdr() + f.data + b"\0" * pad


def ring_image(chains, num=8, write_flag=0, base=0):
    """Guest memory in ringmem.h's layout: each chain (list of byte buffers)
    made of descriptors pointing at buffers placed from 1024 on."""
    mem = bytearray(1024)
    descs = []
    off = 1024
    heads = []
    for pieces in chains:
        heads.append(len(descs))
        for k, p in enumerate(pieces):
            nxt = len(descs) + 1
            flags = (1 if k + 1 < len(pieces) else 0) | write_flag
            descs.append(struct.pack("<QIHH", GPA + off, len(p), flags, nxt if flags & 1 else 0))
            mem += p
            off += len(p)
            pad = (-off) % 16
            mem += b"\0" * pad
            off += pad
    for i, d in enumerate(descs[:num]):
        mem[16 * i:16 * i + 16] = d
    idx = (base + len(heads)) & 0xFFFF
    struct.pack_into("<HH", mem, 256, 0, idx)
    for i, h in enumerate(heads):
        struct.pack_into("<H", mem, 260 + 2 * ((base + i) % num), h)
    struct.pack_into("<HH", mem, 512, 0, base)
    return bytes(mem)


def c_seeds():
    fs = frame_set()
    for name, f in fs:
        feat = struct.pack("<Q", Fr.ALL_HOST)
        write("fuzz_validate", name, feat + hdr10(f) + b"\0" + f.data)
        write("fuzz_segment", name, hdr10(f) + b"\x01\x02" + struct.pack("<HH", 20, 700) + f.data)
    dhcp_frames = [request_frame(t) for t in (dhcp.DISCOVER, dhcp.REQUEST, dhcp.INFORM)]
    for i, d in enumerate(dhcp_frames):
        write("fuzz_validate", "dhcp%d" % i, struct.pack("<Q", 0) + b"\0" * 10 + b"\0" + d)

    # TX: small chains of whole frames, split ones, and DHCP requests
    tx_frames = [f for _, f in fs[:22:2]]       # every family, GSO or not
    for i, f in enumerate(tx_frames):
        data = ring_frame(f)
        chains = [[data], [data[:12], data[12:40], data[40:]]]
        # b: batch bits (tx_run with a kick 8, small tap 16, io_uring 32)
        for flags, b in ((0x1, 0), (0x1 | 0x2 | 0x4 | 0x20 | 0x40, 0), (0x1 | 0x8 | 0x10, 8),
                         (0x1 | 0x2 | 0x4 | 0x20 | 0x40, 16), (0x1, 32), (0x1, 32 | 16 | 8),
                         (0x1 | 0x2 | 0x4 | 0x20 | 0x40, 32 | 16)):
            img = ring_image(chains, num=8)
            write("fuzz_tx", "f%d-%x-%d" % (i, flags, b),
                  struct.pack("<QIBBB", Fr.ALL_HOST, flags, 3, 0, b) + img)
    for i, d in enumerate(dhcp_frames):
        img = ring_image([[b"\0" * 12 + d]], num=8)
        write("fuzz_tx", "dhcp%d" % i, struct.pack("<QIBBB", 0, 0x11, 3, 0, 0) + img)
    # TXF_INET6 (0x80): solicitations and DHCPv6 diverted, router messages dropped
    from tests.data6 import DATA, load
    for name in sorted(os.listdir(DATA)):
        img = ring_image([[b"\0" * 12 + load(name)]], num=8)
        write("fuzz_tx", "v6-" + name.split(".")[0],
              struct.pack("<QIBBB", 0, 0x91, 3, 0, 0) + img)
        # and locked (MAC and IPv6 sources, 0x8 | 0x100)
        write("fuzz_tx", "v6-locked-" + name.split(".")[0],
              struct.pack("<QIBBB", 0, 0x199, 3, 0, 0) + img)

    # the filters' blind spots (txpath.c filter_unreadable): an RA and a
    # DHCPv6 reply behind nine extension headers, and partial checksums that
    # would write an RA's type (ICMPv6) or DHCP's port 68 (IPv4 UDP)
    for kind in ("ra", "dhcp6_reply"):
        img = ring_image([[b"\0" * 12 + Fr.router_message(kind, 9)]], num=8)
        for flags in (0x91, 0x199):
            write("fuzz_tx", "%s-deep-%x" % (kind, flags), struct.pack("<QIBBB", 0, flags, 3, 0, 0) + img)
    for name, make, flags in (("echo-csum-ra", Fr.echo_becoming_ra, 0x81),
                              ("udp-csum-dhcp", Fr.udp_becoming_dhcp, 0x11)):
        frame, start, off = make()
        img = ring_image([[struct.pack("<BBHHHHH", Fr.NEEDS_CSUM, 0, 0, 0, start, off, 0) + frame]], num=8)
        for sw in (0, 0x2):
            write("fuzz_tx", "%s-%x" % (name, flags | sw),
                  struct.pack("<QIBBB", Fr.ALL_HOST, flags | sw, 3, 0, 0) + img)

    # RX: frames from the "tap", buffers posted by the guest
    rx_features = (1 << 0) | (1 << 1) | (1 << 7) | (1 << 8) | (1 << 15) | (1 << 54)
    for i, f in enumerate(tx_frames):
        frames = [f.vnet_hdr() + f.data[:1400], b"\0" * 12 + f.data[:200]]
        rec = b"".join(struct.pack("<H", len(x)) + x for x in frames)
        for mrg in (0, 1):
            feats = rx_features if mrg else rx_features & ~(1 << 15)
            bufs = [[b"\0" * 2048]] * 4 if not mrg else [[b"\0" * 512]] * 8
            img = ring_image(bufs, num=8, write_flag=2)
            write("fuzz_rx", "f%d-m%d" % (i, mrg),
                  struct.pack("<QBHBBB", feats, 3, 1518, 0, 3, 2) + bytes([len(frames)]) + rec +
                  struct.pack("<H", 60) + dhcp_frames[0][:60] + img)

    # the hostile guest: the same rings, both directions
    for i, f in enumerate(tx_frames):
        img = ring_image([[ring_frame(f)], [ring_frame(f)[:50], ring_frame(f)[50:]]], num=16)
        write("fuzz_hostile", "tx%d" % i,
              struct.pack("<BQIIB", 0, Fr.ALL_HOST, 0x1 | (0x64 if i % 2 else 0), 1000 + i, 15) + img)
        rx = ring_image([[b"\0" * 2048]] * 4, num=16, write_flag=2)
        frame = f.vnet_hdr() + f.data[:1000]
        write("fuzz_hostile", "rx%d" % i,
              struct.pack("<BQIIB", 1, rx_features, 3, 2000 + i, 7) + b"\x01" +
              struct.pack("<H", len(frame)) + frame + rx)

    # the ring engine alone: one region, a ring at its start, chains after
    for i, (write_flag, num) in enumerate(((0, 8), (2, 8), (0, 16))):
        chains = [[b"a" * 100], [b"b" * 12, b"c" * 300], [b"d" * 64] * 3]
        img = ring_image(chains, num=num, write_flag=write_flag)
        region = struct.pack("<BQHQ", 0, GPA, len(img) + 4096 - 1, UVA)
        ring = struct.pack("<BB", num.bit_length() - 1, 0x2 | 0x8 | (4 if write_flag else 0))
        parts = struct.pack("<BHBHBH", 0, 0, 0, 256, 0, 512)
        ops = bytes([0, 0, 2, 0, 4, 2, 5, 0, 3, 0, 2, 2, 4, 7 | 8, 0, 6, 4])
        write("fuzz_ring", "r%d" % i, region + ring + parts + struct.pack("<HI", 0, 1 << 20) +
              bytes([len(ops)]) + ops + img)
    # an indirect chain
    mem = bytearray(ring_image([[b"x" * 32]], num=8))
    table = struct.pack("<QIHH", GPA + 1024, 16, 1, 1) + struct.pack("<QIHH", GPA + 1040, 16, 0, 0)
    tab_off = len(mem)
    mem += table
    mem[0:16] = struct.pack("<QIHH", GPA + tab_off, len(table), 4, 0)
    write("fuzz_ring", "indirect", struct.pack("<BQHQ", 0, GPA, len(mem) - 1, UVA) +
          struct.pack("<BB", 3, 0x2) + struct.pack("<BHBHBH", 0, 0, 0, 256, 0, 512) +
          struct.pack("<HI", 0, 1 << 20) + bytes([4, 0, 0, 2, 4]) + bytes(mem))


def vu_msg(req, payload=b"", flags=1):
    return struct.pack("<III", req, flags, len(payload)) + payload


def vu_record(data, nfds=0, kinds=0):
    return bytes([nfds | kinds << 2]) + struct.pack("<H", len(data)) + data


def py_seeds():
    # vhost-user: the handshake QEMU makes, one record per message
    session = [
        (vu_msg(vu.GET_FEATURES), 0, 0),
        (vu_msg(vu.GET_PROTOCOL_FEATURES), 0, 0),
        (vu_msg(vu.SET_PROTOCOL_FEATURES, struct.pack("<Q", 0b1001)), 0, 0),
        (vu_msg(vu.GET_QUEUE_NUM), 0, 0),
        (vu_msg(vu.SET_OWNER), 0, 0),
        (vu_msg(vu.SET_FEATURES, struct.pack("<Q", 1 << 30 | 1 << 28 | 1 << 32)), 0, 0),
        (vu_msg(vu.SET_MEM_TABLE, struct.pack("<II", 1, 0) +
                struct.pack("<QQQQ", 0, 65536, 0x7F0000000000, 0)), 1, 1),
    ]
    for i in (0, 1):
        session += [
            (vu_msg(vu.SET_VRING_NUM, struct.pack("<II", i, 256)), 0, 0),
            (vu_msg(vu.SET_VRING_BASE, struct.pack("<II", i, 0)), 0, 0),
            (vu_msg(vu.SET_VRING_ADDR, struct.pack("<IIQQQQ", i, 0, 0x7F0000000000 + 0x4000 * i,
                                                   0x7F0000000000 + 0x4000 * i + 0x2000,
                                                   0x7F0000000000 + 0x4000 * i + 0x1000, 0)), 0, 0),
            (vu_msg(vu.SET_VRING_CALL, struct.pack("<Q", i)), 1, 0),
            (vu_msg(vu.SET_VRING_KICK, struct.pack("<Q", i)), 1, 0),
            (vu_msg(vu.SET_VRING_ENABLE, struct.pack("<II", i, 1), flags=9), 0, 0),
        ]
    session += [(vu_msg(vu.GET_VRING_BASE, struct.pack("<II", 0, 0)), 0, 0),
                (vu_msg(vu.RESET_DEVICE), 0, 0)]
    rec = [vu_record(m, n, k) for m, n, k in session]
    write("py_vhost_user", "session", b"\0" + b"".join(rec))
    write("py_vhost_user", "session-refusing", b"\x5a" + b"".join(rec))
    write("py_vhost_user", "one-chunk", b"\0" + vu_record(b"".join(m for m, _, _ in session[:8]), 1, 1))
    # a migration starting on the running device (QEMU's order), then SEND_RARP
    migration = [(vu_msg(vu.SET_PROTOCOL_FEATURES, struct.pack("<Q", 0b11111)), 0, 0),
                 (vu_msg(vu.SET_LOG_BASE, struct.pack("<QQ", 8, 0)), 1, 1),
                 (vu_msg(vu.SET_LOG_FD), 1, 0),
                 (vu_msg(vu.SET_FEATURES, struct.pack("<Q", 1 << 30 | 1 << 28 | 1 << 32 |
                                                     1 << 26), flags=9), 0, 0)]
    for i in (0, 1):
        migration.append((vu_msg(vu.SET_VRING_ADDR, struct.pack(
            "<IIQQQQ", i, 1, 0x7F0000000000 + 0x4000 * i, 0x7F0000000000 + 0x4000 * i + 0x2000,
            0x7F0000000000 + 0x4000 * i + 0x1000, 0x4000 * i + 0x2000), flags=9), 0, 0))
    migration.append((vu_msg(vu.SEND_RARP, LOCKED + b"\0\0"), 0, 0))
    write("py_vhost_user", "migration", b"\0" + b"".join(rec[:-2]) +
          b"".join(vu_record(m, n, k) for m, n, k in migration))
    for req in (vu.SET_LOG_BASE, vu.SEND_RARP, vu.GET_CONFIG, vu.ADD_MEM_REG, 99):
        write("py_vhost_user", "req%d" % req, b"\0" + b"".join(rec[:7]) +
              vu_record(vu_msg(req, b"\0" * 8, flags=9), 1, 2))

    with open(os.path.join(ROOT, "etc", "vionetd.conf"), "rb") as f:
        write("py_config", "example", f.read())
    write("py_config", "macros", b'a = "x"\nb = "$a $a"\nsocket "/run/v.sock"\n'
          b'switch "sw" { bridge "br0" }\nvm "v1" {\n interface { switch "sw"\n'
          b' lladdr 52:54:00:00:00:01 locked lladdr\n mtu 9000\n offload tx tso4 software }\n'
          b' local interface { hostname "g1" }\n}\n')

    for t in (dhcp.DISCOVER, dhcp.REQUEST, dhcp.INFORM, dhcp.RELEASE, dhcp.DECLINE):
        write("py_dhcp", "frame%d" % t, b"\0" + request_frame(t))
    req = dhcp.fields(request_frame(dhcp.REQUEST))
    write("py_dhcp", "proto", b"\x01" + req.SerializeToString())

    for name, r in (("status", pb.CtlRequest(status=True)), ("show", pb.CtlRequest(show="vm1")),
                    ("stats", pb.CtlRequest(stats=True)), ("reload", pb.CtlRequest(reload=True)),
                    ("log", pb.CtlRequest(log_level="verbose"))):
        write("py_ctl", name, b"\x01" + r.SerializeToString())

    for name, m in (("stopped", pb.FromWorker(ring_stopped=pb.RingStopped(last_avail=5))),
                    ("stats", pb.FromWorker(stats=pb.Stats(counters=[pb.Counter(name="frames", value=1)]))),
                    ("dhcp", pb.FromWorker(dhcp=req)),
                    ("error", pb.FromWorker(error="x")),
                    ("sys", pb.FromWorker(forbidden_syscall=41))):
        write("py_control", name, b"\0" + m.SerializeToString())


def ipv6_seeds():
    """py_ra and py_dhcp6: the frames captured from the kernel, radvd,
    dhcpcd and dnsmasq (tests/data), and the tests' own."""
    from tests.data6 import DATA, load
    from tests.test_dhcp6 import CLIENT_DUID, ia_na, message, opt
    from tests.test_ra import rs_frame
    from vionetd import dhcp6
    for name in sorted(os.listdir(DATA)):
        frame = load(name)
        stem = name.split(".")[0]
        write("py_ra", stem, (b"\0" if name.startswith("rs") else b"\1") + frame)
        if name.startswith("dhcp6"):
            write("py_dhcp6", stem, b"\0" + frame)
    write("py_ra", "rs_unspecified", b"\2" + rs_frame(src=bytes(16), opts=b""))
    for t in (dhcp6.SOLICIT, dhcp6.REQUEST, dhcp6.RENEW, dhcp6.REBIND, dhcp6.RELEASE,
              dhcp6.CONFIRM, dhcp6.INFORMATION_REQUEST):
        body = opt(1, CLIENT_DUID) + (ia_na(iaid=t) if t != dhcp6.INFORMATION_REQUEST else b"")
        write("py_dhcp6", "msg%d" % t, bytes([2 * t % 8]) + message(t, body + opt(14, b"")))
    req = dhcp6.fields(message(dhcp6.SOLICIT, opt(1, CLIENT_DUID) + ia_na()))
    write("py_dhcp6", "proto", b"\x01" + req.SerializeToString())
    from vionetd import ra
    write("py_control", "dhcp6", b"\0" + pb.FromWorker(dhcp6=req).SerializeToString())
    write("py_control", "router_solicit", b"\0" + pb.FromWorker(
        router_solicit=ra.fields(rs_frame())).SerializeToString())


if __name__ == "__main__":
    c_seeds()
    py_seeds()
    ipv6_seeds()
    for t in sorted(os.listdir(CORPUS)):
        print(t, len(os.listdir(os.path.join(CORPUS, t))))
