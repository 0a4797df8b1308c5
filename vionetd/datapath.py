"""Run by a worker: its handle on the C data path (csrc/datapath.h, csrc/virtq.h).

One Datapath per worker: a TX context (guest ring -> tap) or an RX context
(tap -> guest ring), the guest memory table it maps, the ring's eventfds.
Python only sets things up and reads counters; C moves every frame.

Invariants: the memory table is never replaced under a running ring (the
session stops the ring first; set_memory() stops it too if it did not); every fd this
object was given is closed when it is replaced or the ring stops. The ring
marks the dirty log (ctx.q.log) exactly while the negotiated features have
LOG_ALL and a log is mapped: _apply_log() decides, after every change.
"""
import os

from vionetd import features as F
from vionetd.core import ffi, lib

RX_GSO_FEATURES = F.mask(F.GUEST_TSO4, F.GUEST_TSO6, F.GUEST_UFO, F.GUEST_USO4, F.GUEST_USO6)


class DatapathError(ValueError):
    pass


class RingFailed(DatapathError):
    """The kick eventfd or the tap is in error: the ring cannot be served."""


def _name(i):
    return ffi.string(lib.dp_counter_name(i)).decode()


def rx_flags(enabled, sw):
    """The RX context's flags (RXF_*) for the ring's state and the software
    offloads the parent asked for."""
    flags = lib.RXF_ENABLED if enabled else 0
    if sw is not None and sw.rx_csum:
        flags |= lib.RXF_SW_CSUM
    return flags


def tx_flags(enabled, sw, locked, local, inet6=False, locked_ip6=False):
    """The TX context's flags (TXF_*): software offloads, the locked MAC
    (and IPv6 sources), DHCP diverted on a local interface, and router
    solicitations and DHCPv6 too when it has IPv6."""
    flags = lib.TXF_ENABLED if enabled else 0
    if sw is not None:
        for on, flag in ((sw.tx_csum, lib.TXF_SW_CSUM), (sw.tx_tso4, lib.TXF_SW_TSO4),
                         (sw.tx_tso6, lib.TXF_SW_TSO6), (sw.tx_uso, lib.TXF_SW_USO)):
            if on:
                flags |= flag
    if locked:
        flags |= lib.TXF_LOCKED_MAC
    if local:
        flags |= lib.TXF_DHCP_DIVERT
    if local and inet6:
        flags |= lib.TXF_INET6
    if locked_ip6:
        flags |= lib.TXF_LOCKED_IP6
    return flags


def set_rate(ctx, msg):
    """The limit of a context's direction (pb.Rate; zeros: none), at once,
    even while its ring runs: the next frame waits for it."""
    lib.rate_set(ffi.addressof(ctx, "rate"), msg.bytes_per_s, msg.burst_bytes,
                 msg.frames_per_s, 0)


class Datapath:
    def __init__(self, rx, uring=None):
        self.rx = rx
        self.ctx = ffi.new("struct rx_ctx *" if rx else "struct tx_ctx *")
        if uring is not None:
            self.ctx.uring = uring       # TX: a batch's frames in one submission
        self.mem = ffi.new("struct guest_mem *")
        self.log = ffi.new("struct dirty_log *")
        self.log.notify_fd = -1
        # Test-only switch: the migration test's negative control runs
        # without dirty logging to show that its checks can fail.
        self.log_disabled = os.environ.get("VIONETD_TEST_NO_DIRTY_LOG") == "1"
        self.ctx.kick_fd = -1
        self.ctx.tap_fd = -1
        self.ctx.q.call_fd = -1
        if (lib.rx_init if rx else lib.tx_init)(self.ctx) != 0:
            raise MemoryError("data path scratch")
        self.ring_started = False
        self.enabled = True
        self.features = 0
        self.software = None
        self.local = False
        self.inet6 = False
        self.mtu = 1500
        self.locked = b""
        self.locked_ip6 = []
        self.extra = {}                  # counters kept in Python (divert.py)
        self.names = [_name(i) for i in range(lib.DC_MAX)]

    @property
    def running(self):
        return self.ring_started and self.ctx.tap_fd >= 0

    # ---- setup from control messages ---------------------------------------

    def set_tap(self, fd):
        if self.ctx.tap_fd >= 0:
            os.close(self.ctx.tap_fd)
        self.ctx.tap_fd = fd

    def set_memory(self, regions, fds):
        if self.ring_started:
            self.stop_ring()
        lib.gmem_unmap_all(self.mem)
        try:
            if len(fds) != len(regions):
                raise DatapathError("%d regions with %d fds" % (len(regions), len(fds)))
            for r, fd in zip(regions, fds):
                err = lib.gmem_map(self.mem, fd, r.guest_addr, r.size, r.user_addr,
                                   r.mmap_offset)
                if err != 0:
                    lib.gmem_unmap_all(self.mem)
                    raise DatapathError("memory region %#x+%#x: error %d"
                                        % (r.guest_addr, r.size, err))
        finally:
            for fd in fds:               # the mappings keep the memory
                os.close(fd)

    def set_log(self, size, offset, fds):
        """Map the VMM's dirty log (size 0: forget it); fds: [log] or
        [log, notify eventfd], none for size 0 (a list: it is emptied)."""
        self.ctx.q.log = ffi.NULL
        lib.dlog_unmap(self.log)
        if self.log.notify_fd >= 0:
            os.close(self.log.notify_fd)
            self.log.notify_fd = -1
        try:
            if size and fds:
                err = lib.dlog_map(self.log, fds[0], size, offset)
                if err != 0:
                    raise DatapathError("dirty log of %#x bytes: error %d" % (size, err))
                if len(fds) > 1:
                    self.log.notify_fd = fds.pop()   # kept; the log fd is not
        finally:
            for fd in fds:
                os.close(fd)
        self._apply_log()

    def _apply_log(self):
        on = (self.ring_started and self.log.bits != ffi.NULL and
              F.has(self.features, F.LOG_ALL) and not self.log_disabled)
        self.ctx.q.log = self.log if on else ffi.NULL

    def set_features(self, msg):
        self.features = msg.features
        self.software = msg.software
        self.locked = msg.locked_lladdr
        self.locked_ip6 = [a for a in msg.locked_ip6 if len(a) == 16][:lib.LOCKED_IP6_MAX]
        self.local = msg.local
        self.inet6 = msg.inet6
        self.mtu = msg.mtu or 1500
        self._apply_flags()
        self._apply_log()

    def _apply_flags(self):
        c = self.ctx
        c.features = self.features
        if self.rx:
            # Without receive GSO no frame exceeds the MTU (+ Ethernet and a
            # tag), so one small buffer is enough; with it, up to 64 KiB.
            gso = self.features & RX_GSO_FEATURES
            c.frame_max = 0 if gso else self.mtu + 18
            c.flags = rx_flags(self.enabled, self.software)
        else:
            if len(self.locked) == 6:
                c.locked_mac = list(self.locked)
            for i in range(lib.LOCKED_IP6_MAX):
                c.locked_ip6[i] = list(self.locked_ip6[i] if i < len(self.locked_ip6)
                                       else bytes(16))
            c.flags = tx_flags(self.enabled, self.software, len(self.locked) == 6,
                               self.local, self.inet6, bool(self.locked_ip6))

    def start_ring(self, msg, kick, call):
        if self.ring_started:
            self.stop_ring()
        c = self.ctx
        err = lib.vq_setup(ffi.addressof(c.q), self.mem, msg.num, msg.desc_user_addr,
                           msg.avail_user_addr, msg.used_user_addr, msg.base & 0xFFFF,
                           int(F.has(self.features, F.RING_EVENT_IDX)),
                           int(F.has(self.features, F.RING_INDIRECT_DESC)),
                           call if call is not None else -1)
        if err != 0:
            for fd in (kick, call):
                if fd is not None:
                    os.close(fd)
            raise DatapathError("ring setup: error %d" % err)
        behind = (c.q.used_idx - c.q.last_avail) & 0xFFFF
        if msg.resume:
            # A replaced worker: what its predecessor completed is in the
            # used ring; everything after it is taken again.
            c.q.last_avail = c.q.used_idx
        elif 0 < behind <= msg.num:
            # The VMM's base is behind what the guest was already given
            # back (chains are completed in the order they are taken, so a
            # base is never behind the used index but when the VMM read it
            # while a device still ran): taking those chains again would
            # complete them twice. The used index wins.
            c.q.last_avail = c.q.used_idx
            self.count("base_behind_used")
        c.kick_fd = kick
        self.enabled = msg.enabled
        self._apply_flags()
        self.ring_started = True
        c.q.log_used = msg.log_used
        c.q.log_used_gpa = msg.log_guest_addr
        self._apply_log()

    def stop_ring(self):
        """Stop serving the ring; returns its next avail index."""
        c = self.ctx
        (lib.rx_reset if self.rx else lib.tx_reset)(c)
        last = lib.vq_last_avail(ffi.addressof(c.q))
        for fd in (c.kick_fd, c.q.call_fd):
            if fd >= 0:
                os.close(fd)
        c.kick_fd = -1
        c.q.call_fd = -1
        self.ring_started = False
        self._apply_log()
        return last

    def enable(self, enabled):
        self.enabled = enabled
        self._apply_flags()

    # ---- running ---------------------------------------------------------

    def run(self, ctl_fd):
        """Serve the ring until the control channel needs us. Returns "ctl"
        or "divert" (a DHCP, DHCPv6 or router solicitation frame is
        waiting: diverted())."""
        r = (lib.rx_run if self.rx else lib.tx_run)(self.ctx, ctl_fd)
        if r == lib.DP_DIVERT:
            return "divert"
        if r == lib.DP_ERROR:
            raise OSError(ffi.errno, "data path: %s" % os.strerror(ffi.errno))
        if r == lib.DP_FD_ERROR:
            raise RingFailed("the tap or the kick eventfd failed")
        return "ctl"

    def diverted(self):
        return bytes(ffi.buffer(self.ctx.divert, self.ctx.divert_len))

    def inject(self, frame):
        if not self.rx or not self.ring_started:
            self.count("inject_dropped")
            return
        lib.rx_inject(self.ctx, frame, len(frame))

    def count(self, name):
        self.extra[name] = self.extra.get(name, 0) + 1

    def counters(self):
        out = [(n, self.ctx.cnt[i]) for i, n in enumerate(self.names)]
        out += [("log_marked", self.log.marked), ("log_outside", self.log.outside)]
        return out + sorted(self.extra.items())
