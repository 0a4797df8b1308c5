"""Run by the parent and by sessions and workers: feature bits, offer and answer.

Three sets meet here (vionetd(8), "Offloads"): the operator's policy per
direction, what the kernel's tap accepts (a TUN_F_* mask probed at start with
TUNSETOFFLOAD), and what the guest acks (SET_FEATURES). This module turns them
into
  - offer(policy, tap_offloads): the feature bits we answer GET_FEATURES with;
  - tap_offloads_for(negotiated, policy): the TUN_F_* mask to set on the tap
    once the guest has answered (what the kernel may hand us for the guest);
  - software_mode(policy, negotiated): which jobs the worker does itself.

Invariants of offer():
  - VERSION_1, MRG_RXBUF, RING_INDIRECT_DESC, RING_EVENT_IDX and
    VHOST_USER_F_PROTOCOL_FEATURES are always offered: the C core always has
    the 12-byte little-endian header and implements the split ring fully.
  - MQ is offered when the interface has more than one queue pair (queues
    in vionetd.conf); QEMU's vhost-user filter passes it through, and QEMU
    itself answers the guest's control-queue command that picks how many
    pairs it uses, telling us with SET_VRING_ENABLE per ring.
  - MTU is always offered, and accepted in SET_FEATURES: QEMU (and so the
    guest) has it only when given host_mtu, and it lists MTU among the bits
    it passes on to the backend, so a guest's ack reaches us; the value
    comes with NET_SET_MTU (the NET_MTU protocol feature, which we offer),
    where the backend may refuse it.
  - Other device-config bits are not offered. With vhost-user net, QEMU owns the
    config space: its vhost-user feature filter (user_feature_bits, in
    hw/net/vhost_net.c, net/vhost-user.c in newer trees, since QEMU commit
    72018d1e1917 "vhost-user: ignore qemu-only features") leaves MAC, STATUS,
    CTRL_VQ, CTRL_RX, CTRL_MAC_ADDR, CTRL_GUEST_OFFLOADS to QEMU alone, so
    QEMU offers them whatever we say and handles the control queue itself.
    Bits that *are* filtered through the backend and that we leave out on
    purpose: GUEST_ANNOUNCE (without it QEMU announces by itself),
    RSS/HASH_REPORT/RSC_EXT, RING_PACKED, IN_ORDER, ACCESS_PLATFORM (IOMMU),
    NOTIFICATION_DATA, RING_RESET, the UFO bits (deprecated, Linux >= 4.14
    guests do not use them), CTRL_VLAN (we do no VLAN filtering).
  - Dependencies (virtio 1.2 5.1.3.1) hold on the result: HOST_TSO4/6 and
    HOST_USO need CSUM; GUEST_TSO4/6 and GUEST_USO4/6 need GUEST_CSUM;
    HOST_ECN needs a HOST_TSO; GUEST_ECN needs a GUEST_TSO.

Policy values, per direction and per offload (csum, tso4, tso6, ecn, uso):
  "passthrough" the kernel does it: headers go to/come from the tap as they are;
  "software"    vionetd does it (TX: complete checksums, cut super-frames;
                RX csum: complete partial checksums from the tap and mark the
                frame DATA_VALID, so a guest needs no partial-csum support
                beyond GUEST_CSUM's DATA_VALID);
  "off"         not offered.
RX segmentation cannot be done "in software" (vionetd does not coalesce), so
rx tso4/tso6/ecn/uso "software" means the same as "off": the kernel segments
before the frame reaches the tap. An RX GSO frame always carries a partial
checksum, so RX TSO/USO passthrough also needs rx csum passthrough.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# ---- virtio-net feature bits (virtio 1.2 section 5.1.3, 6; vhost-user.rst) ----
CSUM = 0
GUEST_CSUM = 1
CTRL_GUEST_OFFLOADS = 2
MTU = 3
MAC = 5
GUEST_TSO4 = 7
GUEST_TSO6 = 8
GUEST_ECN = 9
GUEST_UFO = 10
HOST_TSO4 = 11
HOST_TSO6 = 12
HOST_ECN = 13
HOST_UFO = 14
MRG_RXBUF = 15
STATUS = 16
CTRL_VQ = 17
CTRL_RX = 18
CTRL_VLAN = 19
CTRL_RX_EXTRA = 20
GUEST_ANNOUNCE = 21
MQ = 22
CTRL_MAC_ADDR = 23
NOTIFY_ON_EMPTY = 24
LOG_ALL = 26                     # VHOST_F_LOG_ALL (migration dirty logging)
ANY_LAYOUT = 27
RING_INDIRECT_DESC = 28
RING_EVENT_IDX = 29
VHOST_USER_F_PROTOCOL_FEATURES = 30
VERSION_1 = 32
ACCESS_PLATFORM = 33
RING_PACKED = 34
IN_ORDER = 35
ORDER_PLATFORM = 36
SR_IOV = 37
NOTIFICATION_DATA = 38
RING_RESET = 40
GUEST_USO4 = 54
GUEST_USO6 = 55
HOST_USO = 56
HASH_REPORT = 57
GUEST_HDRLEN = 59
RSS = 60
RSC_EXT = 61
STANDBY = 62

# ---- vhost-user protocol feature bits (vhost-user.rst, "Protocol features") ----
PROTOCOL_F_MQ = 0
PROTOCOL_F_LOG_SHMFD = 1
PROTOCOL_F_RARP = 2
PROTOCOL_F_REPLY_ACK = 3
PROTOCOL_F_NET_MTU = 4
PROTOCOL_F_BACKEND_REQ = 5
PROTOCOL_F_CROSS_ENDIAN = 6
PROTOCOL_F_CRYPTO_SESSION = 7
PROTOCOL_F_PAGEFAULT = 8
PROTOCOL_F_CONFIG = 9
PROTOCOL_F_BACKEND_SEND_FD = 10
PROTOCOL_F_HOST_NOTIFIER = 11
PROTOCOL_F_INFLIGHT_SHMFD = 12
PROTOCOL_F_RESET_DEVICE = 13
PROTOCOL_F_INBAND_NOTIFICATIONS = 14
PROTOCOL_F_CONFIGURE_MEM_SLOTS = 15
PROTOCOL_F_STATUS = 16
PROTOCOL_F_SHARED_OBJECT = 17
PROTOCOL_F_DEVICE_STATE = 18

# ---- TUNSETOFFLOAD bits (include/uapi/linux/if_tun.h) ----
from vionetd.tap import (TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN,  # noqa: E402
                         TUN_F_UFO, TUN_F_USO4, TUN_F_USO6)
TUN_F_ALL = 0x7f

POLICY_KEYS = ("csum", "tso4", "tso6", "ecn", "uso")
POLICY_VALUES = ("passthrough", "software", "off")


def bit(n: int) -> int:
    return 1 << n


def mask(*bits: int) -> int:
    m = 0
    for b in bits:
        m |= 1 << b
    return m


def has(features: int, b: int) -> bool:
    return bool(features >> b & 1)


def vmm_may_ack(offered: int) -> int:
    """What a VMM may ack in SET_FEATURES: the device's offer and the two
    vhost bits every connection offers besides (PROTOCOL_FEATURES, and
    LOG_ALL for migration). The session checks the VMM against it, the
    parent checks the session, and the fuzz oracle checks the parent."""
    return offered | mask(VHOST_USER_F_PROTOCOL_FEATURES, LOG_ALL)


# Always offered, whatever the policy (see the block comment).
BASE = mask(VERSION_1, MRG_RXBUF, RING_INDIRECT_DESC, RING_EVENT_IDX,
            VHOST_USER_F_PROTOCOL_FEATURES, MTU)

# Everything offer() can ever return: SET_FEATURES outside it is refused.
OFFERABLE = BASE | mask(CSUM, HOST_TSO4, HOST_TSO6, HOST_ECN, HOST_USO,
                        GUEST_CSUM, GUEST_TSO4, GUEST_TSO6, GUEST_ECN,
                        GUEST_USO4, GUEST_USO6)

# The protocol features vhost_user.Connection implements.
PROTOCOL_OFFER = mask(PROTOCOL_F_MQ, PROTOCOL_F_LOG_SHMFD, PROTOCOL_F_RARP,
                      PROTOCOL_F_REPLY_ACK, PROTOCOL_F_NET_MTU)

_NAMES = {
    CSUM: "CSUM", GUEST_CSUM: "GUEST_CSUM",
    CTRL_GUEST_OFFLOADS: "CTRL_GUEST_OFFLOADS", MTU: "MTU", MAC: "MAC",
    GUEST_TSO4: "GUEST_TSO4", GUEST_TSO6: "GUEST_TSO6", GUEST_ECN: "GUEST_ECN",
    GUEST_UFO: "GUEST_UFO", HOST_TSO4: "HOST_TSO4", HOST_TSO6: "HOST_TSO6",
    HOST_ECN: "HOST_ECN", HOST_UFO: "HOST_UFO", MRG_RXBUF: "MRG_RXBUF",
    STATUS: "STATUS", CTRL_VQ: "CTRL_VQ", CTRL_RX: "CTRL_RX",
    CTRL_VLAN: "CTRL_VLAN", CTRL_RX_EXTRA: "CTRL_RX_EXTRA",
    GUEST_ANNOUNCE: "GUEST_ANNOUNCE", MQ: "MQ", CTRL_MAC_ADDR: "CTRL_MAC_ADDR",
    NOTIFY_ON_EMPTY: "NOTIFY_ON_EMPTY", LOG_ALL: "LOG_ALL",
    ANY_LAYOUT: "ANY_LAYOUT", RING_INDIRECT_DESC: "RING_INDIRECT_DESC",
    RING_EVENT_IDX: "RING_EVENT_IDX",
    VHOST_USER_F_PROTOCOL_FEATURES: "PROTOCOL_FEATURES",
    VERSION_1: "VERSION_1", ACCESS_PLATFORM: "ACCESS_PLATFORM",
    RING_PACKED: "RING_PACKED", IN_ORDER: "IN_ORDER",
    ORDER_PLATFORM: "ORDER_PLATFORM", SR_IOV: "SR_IOV",
    NOTIFICATION_DATA: "NOTIFICATION_DATA", RING_RESET: "RING_RESET",
    GUEST_USO4: "GUEST_USO4", GUEST_USO6: "GUEST_USO6", HOST_USO: "HOST_USO",
    HASH_REPORT: "HASH_REPORT", GUEST_HDRLEN: "GUEST_HDRLEN", RSS: "RSS",
    RSC_EXT: "RSC_EXT", STANDBY: "STANDBY",
}

_PROTOCOL_NAMES = {
    PROTOCOL_F_MQ: "MQ", PROTOCOL_F_LOG_SHMFD: "LOG_SHMFD",
    PROTOCOL_F_RARP: "RARP", PROTOCOL_F_REPLY_ACK: "REPLY_ACK",
    PROTOCOL_F_NET_MTU: "NET_MTU", PROTOCOL_F_BACKEND_REQ: "BACKEND_REQ",
    PROTOCOL_F_CROSS_ENDIAN: "CROSS_ENDIAN",
    PROTOCOL_F_CRYPTO_SESSION: "CRYPTO_SESSION",
    PROTOCOL_F_PAGEFAULT: "PAGEFAULT", PROTOCOL_F_CONFIG: "CONFIG",
    PROTOCOL_F_BACKEND_SEND_FD: "BACKEND_SEND_FD",
    PROTOCOL_F_HOST_NOTIFIER: "HOST_NOTIFIER",
    PROTOCOL_F_INFLIGHT_SHMFD: "INFLIGHT_SHMFD",
    PROTOCOL_F_RESET_DEVICE: "RESET_DEVICE",
    PROTOCOL_F_INBAND_NOTIFICATIONS: "INBAND_NOTIFICATIONS",
    PROTOCOL_F_CONFIGURE_MEM_SLOTS: "CONFIGURE_MEM_SLOTS",
    PROTOCOL_F_STATUS: "STATUS", PROTOCOL_F_SHARED_OBJECT: "SHARED_OBJECT",
    PROTOCOL_F_DEVICE_STATE: "DEVICE_STATE",
}

_TUN_NAMES = {TUN_F_CSUM: "CSUM", TUN_F_TSO4: "TSO4", TUN_F_TSO6: "TSO6",
              TUN_F_TSO_ECN: "TSO_ECN", TUN_F_UFO: "UFO", TUN_F_USO4: "USO4",
              TUN_F_USO6: "USO6"}


def _names(m: int, table: dict[int, str]) -> list[str]:
    out = []
    n = 0
    while m >> n:
        if m >> n & 1:
            out.append(table.get(n, f"bit{n}"))
        n += 1
    return out


def names(m: int) -> list[str]:
    """Names of the virtio-net feature bits set in m, lowest bit first."""
    return _names(m, _NAMES)


def protocol_names(m: int) -> list[str]:
    """Names of the vhost-user protocol feature bits set in m."""
    return _names(m, _PROTOCOL_NAMES)


def tun_names(m: int) -> list[str]:
    """Names of the TUN_F_* bits set in m."""
    return [name for b, name in sorted(_TUN_NAMES.items()) if m & b] + \
        [f"0x{m & ~TUN_F_ALL:x}"] * bool(m & ~TUN_F_ALL)


@dataclass
class Policy:
    """Offload policy of one interface; missing keys mean "passthrough"."""
    tx: dict[str, str] = field(default_factory=dict)
    rx: dict[str, str] = field(default_factory=dict)


def _mode(side: dict[str, str], key: str) -> str:
    v = side.get(key, "passthrough")
    if v not in POLICY_VALUES:
        raise ValueError(f"offload policy {key}: {v!r} is not one of "
                         f"{', '.join(POLICY_VALUES)}")
    return v


def check_policy(policy) -> None:
    """Raise ValueError for an unknown key or value in policy.tx / policy.rx."""
    for side_name in ("tx", "rx"):
        side = getattr(policy, side_name)
        for k in side:
            if k not in POLICY_KEYS:
                raise ValueError(f"offload policy {side_name}: unknown "
                                 f"offload {k!r} (expected one of "
                                 f"{', '.join(POLICY_KEYS)})")
        for k in POLICY_KEYS:
            _mode(side, k)


def enforce_dependencies(f: int) -> int:
    """Clear every bit whose prerequisite is missing (virtio 1.2 5.1.3.1)."""
    if not has(f, CSUM):
        f &= ~mask(HOST_TSO4, HOST_TSO6, HOST_ECN, HOST_USO, HOST_UFO)
    if not (has(f, HOST_TSO4) or has(f, HOST_TSO6)):
        f &= ~bit(HOST_ECN)
    if not has(f, GUEST_CSUM):
        f &= ~mask(GUEST_TSO4, GUEST_TSO6, GUEST_ECN, GUEST_USO4, GUEST_USO6,
                   GUEST_UFO)
    if not (has(f, GUEST_TSO4) or has(f, GUEST_TSO6)):
        f &= ~bit(GUEST_ECN)
    return f


def dependencies_ok(f: int) -> bool:
    """True when f (e.g. what a guest acked) respects the dependencies."""
    return enforce_dependencies(f) == f


_TX_BITS = {"csum": CSUM, "tso4": HOST_TSO4, "tso6": HOST_TSO6,
            "ecn": HOST_ECN, "uso": HOST_USO}
_RX_SEG = {"tso4": ((GUEST_TSO4,), TUN_F_TSO4),
           "tso6": ((GUEST_TSO6,), TUN_F_TSO6),
           "ecn": ((GUEST_ECN,), TUN_F_TSO_ECN),
           "uso": ((GUEST_USO4, GUEST_USO6), TUN_F_USO4 | TUN_F_USO6)}


def offer(policy, tap_offloads: int, queue_pairs: int = 1) -> int:
    """The virtio-net features to offer for this policy and tap.

    tap_offloads is the TUN_F_* mask the kernel accepts on this tap.
    """
    check_policy(policy)
    f = BASE
    # TX: the kernel takes any vnet header written to a tap, so passthrough
    # needs nothing from it; software is done by the worker.
    for key, b in _TX_BITS.items():
        if _mode(policy.tx, key) != "off":
            f |= bit(b)
    # RX checksum.
    rx_csum = _mode(policy.rx, "csum")
    if rx_csum == "software" or (rx_csum == "passthrough"
                                 and tap_offloads & TUN_F_CSUM):
        f |= bit(GUEST_CSUM)
    # RX segmentation: only passed through, only where the tap can deliver
    # it, and only with partial checksums passed through as well.
    if rx_csum == "passthrough" and tap_offloads & TUN_F_CSUM:
        for key, (bits, tun) in _RX_SEG.items():
            if _mode(policy.rx, key) == "passthrough" and \
                    tap_offloads & tun == tun:
                f |= mask(*bits)
    if queue_pairs > 1:
        f |= bit(MQ)
    return enforce_dependencies(f)


def tap_offloads_for(negotiated: int, policy=None,
                     tap_offloads: int = TUN_F_ALL) -> int:
    """The TUNSETOFFLOAD mask once the guest's features are known.

    It says what the kernel may hand us for the guest: partial checksums if
    the guest took GUEST_CSUM (in rx csum "software" mode the worker then
    completes them), TSO4/TSO6/ECN/USO if it took the matching GUEST_ bit
    (USO4 and USO6 only together), minus what the policy keeps off and what
    the tap does not accept; the kernel's own rules (everything needs CSUM,
    ECN needs a TSO) hold on the result.
    """
    t = 0
    if has(negotiated, GUEST_CSUM):
        t |= TUN_F_CSUM
    if has(negotiated, GUEST_TSO4):
        t |= TUN_F_TSO4
    if has(negotiated, GUEST_TSO6):
        t |= TUN_F_TSO6
    if has(negotiated, GUEST_ECN):
        t |= TUN_F_TSO_ECN
    if has(negotiated, GUEST_USO4) and has(negotiated, GUEST_USO6):
        t |= TUN_F_USO4 | TUN_F_USO6
    if policy is not None:
        check_policy(policy)
        if _mode(policy.rx, "csum") == "off":
            t &= ~TUN_F_CSUM
        for key, (_bits, tun) in _RX_SEG.items():
            if _mode(policy.rx, key) != "passthrough":
                t &= ~tun
    t &= tap_offloads
    if not t & TUN_F_CSUM:
        return 0
    if not t & (TUN_F_TSO4 | TUN_F_TSO6):
        t &= ~TUN_F_TSO_ECN
    if t & (TUN_F_USO4 | TUN_F_USO6) != TUN_F_USO4 | TUN_F_USO6:
        t &= ~(TUN_F_USO4 | TUN_F_USO6)
    return t


@dataclass(frozen=True)
class SoftwareMode:
    """What the worker does itself for one interface.

    tx_csum: complete the partial checksum (NEEDS_CSUM) of every non-GSO
      frame the guest sends before it reaches the tap (a GSO frame keeps
      NEEDS_CSUM for the kernel, unless it is segmented in software);
    tx_segment: the GSO kinds ("tso4", "tso6", "uso") the worker cuts into
      MSS-sized frames itself (with complete checksums) instead of handing
      the super-frame to the kernel; ECN follows its TSO kind;
    rx_csum: complete partial checksums read from the tap and deliver the
      frame marked DATA_VALID.
    """
    tx_csum: bool = False
    tx_segment: frozenset = frozenset()
    rx_csum: bool = False

    @property
    def any(self) -> bool:
        return self.tx_csum or bool(self.tx_segment) or self.rx_csum


def software_mode(policy, negotiated: int) -> SoftwareMode:
    check_policy(policy)
    tx_csum = has(negotiated, CSUM) and _mode(policy.tx, "csum") == "software"
    seg = set()
    for key in ("tso4", "tso6", "uso"):
        if has(negotiated, _TX_BITS[key]) and \
                _mode(policy.tx, key) == "software":
            seg.add(key)
    rx_csum = has(negotiated, GUEST_CSUM) and \
        _mode(policy.rx, "csum") == "software"
    return SoftwareMode(tx_csum=tx_csum, tx_segment=frozenset(seg),
                        rx_csum=rx_csum)
