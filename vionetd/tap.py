"""Run by the parent: tap devices with a virtio_net_hdr before every frame, and
find out which offloads the running kernel lets us hand to the reader.

Only the privileged parent calls this module; workers get the finished fd.

Invariants:
 - every tap is opened IFF_TAP | IFF_NO_PI | IFF_VNET_HDR with a 12-byte
   header (TUNSETVNETHDRSZ 12: the VERSION_1 / MRG_RXBUF layout), is not
   persistent (it vanishes with its last fd) and is non-blocking;
 - the offload mask set with TUNSETOFFLOAD says what the kernel may give the
   reader (the guest's RX); frames written with a vnet header are accepted
   whatever it is. It is always a subset of what probe_offloads() found.

Numbers are from include/uapi/linux/if_tun.h; the rules for TUNSETOFFLOAD are
those of set_offload() in drivers/net/tun.c (every bit needs TUN_F_CSUM,
TSO_ECN needs TSO4 or TSO6, USO4 and USO6 only together, and any bit left
over is EINVAL: which is how a caller finds what the kernel knows).
"""
import errno
import fcntl
import os
import struct

# ioctls: _IOW/_IOR('T', n, int) from include/uapi/linux/if_tun.h
TUNSETIFF = 0x400454CA        # _IOW('T', 202, int)
TUNSETPERSIST = 0x400454CB    # _IOW('T', 203, int)
TUNGETFEATURES = 0x800454CF   # _IOR('T', 207, unsigned int)
TUNSETOFFLOAD = 0x400454D0    # _IOW('T', 208, unsigned int)
TUNSETTXFILTER = 0x400454D1   # _IOW('T', 209, unsigned int)
TUNGETIFF = 0x800454D2        # _IOR('T', 210, unsigned int)
TUNGETVNETHDRSZ = 0x800454D7  # _IOR('T', 215, int)
TUNSETVNETHDRSZ = 0x400454D8  # _IOW('T', 216, int)

# TUNSETIFF flags
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

# TUNSETOFFLOAD bits
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

OFFLOAD_NAMES = {
    TUN_F_CSUM: "csum", TUN_F_TSO4: "tso4", TUN_F_TSO6: "tso6",
    TUN_F_TSO_ECN: "tso_ecn", TUN_F_UFO: "ufo", TUN_F_USO4: "uso4",
    TUN_F_USO6: "uso6",
}

VNET_HDR_SZ = 12
IFNAMSIZ = 16
_IFREQ = "16sH22x"  # struct ifreq: name, then ifr_flags in the union (40 bytes)


class TapError(OSError):
    """A tap could not be opened or configured; the message says which step."""


def _ifreq(name: str, flags: int) -> bytes:
    raw = name.encode()
    if len(raw) >= IFNAMSIZ:
        raise TapError(errno.EINVAL, "interface name too long: %r" % name)
    return struct.pack(_IFREQ, raw, flags)


def get_features(fd: int) -> int:
    """TUNGETFEATURES: the IFF_* flags this kernel's tun driver supports."""
    buf = fcntl.ioctl(fd, TUNGETFEATURES, b"\0" * 4)
    return struct.unpack("I", buf)[0]


def open_tap(name: str = "", multi_queue: bool = False) -> tuple[int, str]:
    """Open (create) a tap and return (fd, name).

    name may be empty (the kernel picks "tap%d") or a pattern with "%d". The fd
    is non-blocking and close-on-exec; the offload mask starts at 0 (the kernel
    hands the reader only complete frames until set_offload() says otherwise).
    """
    required = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
    flags = required | (IFF_MULTI_QUEUE if multi_queue else 0)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        have = get_features(fd)
        if have & flags != flags:
            raise TapError(errno.EOPNOTSUPP,
                           "tun driver lacks flags 0x%x" % (flags & ~have))
        try:
            out = fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, flags))
        except OSError as e:
            raise TapError(e.errno, "TUNSETIFF %r: %s" % (name, e.strerror)) from e
        ifname = struct.unpack(_IFREQ, out)[0].rstrip(b"\0").decode()
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SZ))
        fcntl.ioctl(fd, TUNSETPERSIST, 0)
        fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
        return fd, ifname
    except BaseException:
        os.close(fd)
        raise


def vnet_hdr_size(fd: int) -> int:
    """TUNGETVNETHDRSZ: the header size the kernel reads and writes."""
    return struct.unpack("i", fcntl.ioctl(fd, TUNGETVNETHDRSZ, b"\0" * 4))[0]


def set_offload(fd: int, mask: int) -> None:
    """TUNSETOFFLOAD: what the kernel may hand the reader. Raises TapError
    (EINVAL) for a mask this kernel refuses."""
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, mask)
    except OSError as e:
        raise TapError(e.errno, "TUNSETOFFLOAD 0x%x: %s" % (mask, e.strerror)) from e


TUN_FLT_ALLMULTI = 0x0001


def set_rx_filter(fd: int, mac: bytes) -> None:
    """TUNSETTXFILTER: the kernel hands the reader only frames for mac, and
    broadcast or multicast (struct tun_filter: u16 flags, u16 count, then
    count addresses). For locked lladdr: a guest receives no unicast frame
    meant for another MAC, and it is never written into its memory."""
    arg = struct.pack("=HH6s", TUN_FLT_ALLMULTI, 1, mac)
    try:
        fcntl.ioctl(fd, TUNSETTXFILTER, arg)
    except OSError as e:
        raise TapError(e.errno, "TUNSETTXFILTER: %s" % e.strerror) from e


def _takes(fd: int, mask: int) -> bool:
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, mask)
        return True
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        return False


def probe_offloads(fd: int) -> int:
    """Return the TUNSETOFFLOAD bits this kernel accepts, trying each one
    with what it depends on. The tap's mask is 0 afterwards."""
    ok = 0
    try:
        if not _takes(fd, TUN_F_CSUM):
            return 0
        ok = TUN_F_CSUM
        for bit in (TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO):
            if _takes(fd, TUN_F_CSUM | bit):
                ok |= bit
        tso = ok & (TUN_F_TSO4 | TUN_F_TSO6)
        if tso and _takes(fd, TUN_F_CSUM | tso | TUN_F_TSO_ECN):
            ok |= TUN_F_TSO_ECN
        uso = TUN_F_USO4 | TUN_F_USO6  # tun.c takes them only together
        if _takes(fd, TUN_F_CSUM | uso):
            ok |= uso
        return ok
    finally:
        fcntl.ioctl(fd, TUNSETOFFLOAD, 0)


def offload_names(mask: int) -> list[str]:
    """The names of the bits in a TUNSETOFFLOAD mask, for logs and vionetctl."""
    return [n for b, n in sorted(OFFLOAD_NAMES.items()) if mask & b]


def dropped(name):
    """Frames the kernel dropped at tap name because its queue was full
    (the readers did not keep up: e.g. rx workers held by rate rx): the
    device's tx_dropped, as the host sends towards the guest. 0 if unknown."""
    try:
        with open("/sys/class/net/%s/statistics/tx_dropped" % name) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0
