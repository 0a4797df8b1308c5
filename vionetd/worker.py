"""Run by a worker: one direction of one queue pair, moved by the C core.

The parent has the zygote (zygote.py) fork one worker per ring when the
session asks (rx: tap to guest, tx: guest to tap) and hands its channel to
the session, which
handles what it says from then on. The worker confines itself (sandbox.py) before it holds anything of a guest, then
only ever receives: its tap, the guest's memory regions and the ring's
eventfds arrive as fds on its channel (control.py), each message through
the worker's dispatch table (Worker.table). It opens nothing
after that; a tx worker opens its io_uring (csrc/txuring.c) just before.

The loop: the C data path (csrc/txpath.c, csrc/rxpath.c) runs until the
control channel becomes readable, returns here, the message is handled, and
the data path is entered again. So the rings are always consistent when
Python looks at them: no chain is half-taken when a stop is answered (a tx
worker may hold staged chains while its tap is full: txpath.c).

A worker writes nothing to stderr (it is /dev/null): what it has to say
(no io_uring, cannot confine itself, why it exits) goes to its session as
FromWorker.error (tell), which the session logs through the parent.
"""
import os
import signal

import setproctitle

from vionetd import control, dhcp, dhcp6, ra, sandbox
from vionetd.divert import Diverter
from vionetd import vionetd_pb2 as pb
from vionetd.core import ffi, lib
from vionetd.datapath import Datapath, RingFailed, set_rate

DEFAULT_ROOT = "/var/empty"
LOG_TEXT_MAX = 300            # characters of a diagnostic (FromWorker.error)

# What the data path of either role needs beyond sandbox.COMMON (and nothing
# of a session's: no accept, no sendmsg, so a worker cannot pass an fd anywhere).
SYSCALLS = {
    "read": "eventfd kicks; tap reads (rxpath.c)",
    "readv": "tap frames straight into guest buffers (rxpath.c)",
    "write": "eventfd calls to the guest (virtq.c vq_notify)",
    "writev": "frames into the tap: header + guest buffers, one call (txpath.c)",
    "ppoll": "glibc may implement the data path's poll() with it",
}
# A tx worker's only, on top of SYSCALLS. io_uring_setup and io_uring_register
# stay forbidden: the ring is made and restricted to WRITEV before the filter
# is loaded (txuring.c). An rx worker has no ring, so no io_uring call at all.
TX_SYSCALLS = {
    "io_uring_enter": "a batch's frames into the tap in one call (txpath.c stage_flush)",
}


def syscalls(role):
    """The allow-list of a worker of role, beyond sandbox.COMMON."""
    return {**SYSCALLS, **TX_SYSCALLS} if role == pb.ROLE_TX else dict(SYSCALLS)


class Worker:
    def __init__(self, chan, name, test_hooks=False, uring=None):
        self.chan = chan
        self.name = name
        self.uring = uring      # a TX worker's io_uring (open_uring), or None
        self.role = None
        self.dp = None
        self.diverter = None    # a Diverter once hello made the data path
        rows = {
            "hello": self._hello,
            "tap": control.with_fds(self._tap),
            "mem_table": control.with_fds(lambda body, fds: self.dp.set_memory(body.regions,
                                                                              fds)),
            "dirty_log": control.with_fds(self._dirty_log),
            "features": lambda body: self.dp.set_features(body),
            "ring_start": control.with_fds(self._ring_start),
            "ring_stop": self._ring_stop,
            "ring_enable": self._ring_enable,
            "stats": self._stats,
            "dhcp_reply": lambda body: self.dp.inject(dhcp.build(body)),
            "router_advert": lambda body: self.dp.inject(ra.build(body)),
            "dhcp6_reply": lambda body: self.dp.inject(dhcp6.build(body)),
            "rate": lambda body: set_rate(self.dp.ctx, body),
        }
        if test_hooks:
            rows["test_forbidden_call"] = sandbox.test_forbidden_call
        self.table = control.Table(rows)

    def handle(self, msg, fds):
        """One message from the session, through the table. Every message
        but the first (hello) needs the data path hello made."""
        if self.dp is None and msg.WhichOneof("msg") != "hello":
            control.close_fds(fds)
            raise control.ChannelError("%s before hello" % msg.WhichOneof("msg"))
        self.table.dispatch(msg, fds)

    def _reply(self, **kw):
        control.send(self.chan, pb.FromWorker(**kw))

    def _hello(self, body):
        self.role = body.role
        rx = body.role == pb.ROLE_RX
        self.dp = Datapath(rx=rx, uring=None if rx else self.uring)
        self.diverter = Diverter(self.dp.count)

    def _tap(self, body, fds):
        if len(fds) != 1:
            control.close_fds(fds)
            raise control.ChannelError("expected one fd, got %d" % len(fds))
        self.dp.set_tap(fds[0])

    def _dirty_log(self, body, fds):
        want = (1 + body.has_notify) if body.size else 0
        if len(fds) != want:
            control.close_fds(fds)
            raise control.ChannelError("dirty_log with %d fds" % len(fds))
        self.dp.set_log(body.size, body.offset, list(fds))

    def _ring_start(self, body, fds):
        if len(fds) != (2 if body.has_call else 1):
            control.close_fds(fds)
            raise control.ChannelError("ring_start with %d fds" % len(fds))
        self.dp.start_ring(body, fds[0], fds[1] if body.has_call else None)

    def _ring_stop(self, body):
        self._reply(ring_stopped=pb.RingStopped(last_avail=self.dp.stop_ring()))

    def _ring_enable(self, body):
        self.dp.enable(body.enabled)
        self._reply(ring_enabled=body.enabled)

    def _stats(self, body):
        counters = [pb.Counter(name=k, value=v) for k, v in self.dp.counters()]
        self._reply(stats=pb.Stats(counters=counters))

    def run(self):
        chan_fd = self.chan.fileno()
        while True:
            if self.dp is not None and self.dp.running:
                try:
                    event = self.dp.run(chan_fd)
                except RingFailed as e:
                    # the VMM's fd or the tap: stop, say so, and wait for orders
                    self.dp.stop_ring()
                    control.send(self.chan, pb.FromWorker(ring_failed=str(e)))
                    continue
                if event == "divert":
                    self._divert()
                    continue
            msg, fds = control.recv(self.chan, pb.ToWorker)
            if msg is None:
                return 0        # the session has gone: so do we
            self.handle(msg, fds)

    def _divert(self):
        """A DHCP, DHCPv6 or router solicitation frame from the guest: send
        its fields, not the frame (divert.py)."""
        out = self.diverter.message(self.dp.diverted())
        if out is not None:
            control.send(self.chan, pb.FromWorker(**{out[0]: out[1]}))


def open_uring(chan):
    """A TX worker's restricted io_uring, or None where the kernel has none
    or refuses it (kernel.io_uring_disabled): then one writev() per frame."""
    u = lib.txu_open()
    if u == ffi.NULL:
        tell(chan, "io_uring: %s; one write per frame" % os.strerror(ffi.errno))
        return None
    return u


def tell(chan, text):
    """A diagnostic for the session, which logs it (FromWorker.error): a
    worker's stderr is /dev/null (sandbox.enter)."""
    try:
        control.send(chan, pb.FromWorker(error=text[:LOG_TEXT_MAX]))
    except (OSError, control.ChannelError):
        pass


def main(chan, name, ident, root, test_hooks=False, role=None):
    """Entry point in the forked child (zygote.py): ident is the (uid, gid)
    it runs as, root the empty directory. Returns the exit status."""
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)     # the parent's handlers are not ours
    signal.set_wakeup_fd(-1)
    setproctitle.setproctitle("vionetd: %s" % name)
    uring = open_uring(chan) if role == pb.ROLE_TX else None
    keep = [chan.fileno()] + ([lib.txu_fd(uring)] if uring else [])
    try:
        sandbox.enter(syscalls(role), keep, ident, root or DEFAULT_ROOT)
    except OSError as e:
        tell(chan, "cannot confine worker: %s" % e)
        return 1
    try:
        return Worker(chan, name, test_hooks, uring).run()
    except (control.ChannelError, OSError, ValueError) as e:
        # No traceback: printing one would open source files, which seccomp forbids.
        tell(chan, str(e))
        return 1
