"""A worker: one direction of one queue pair, run by the C core.

The parent forks a worker per ring (rx: tap to guest, tx: guest to tap). The
worker confines itself (sandbox.py) before it holds anything of a guest, then
only ever receives: its tap, the guest's memory regions and the ring's
eventfds arrive as fds on the control channel (control.py). It opens nothing
after that; a tx worker opens its io_uring (csrc/txuring.c) just before.

The loop: the C data path (csrc/txpath.c, csrc/rxpath.c) runs until the
control channel becomes readable, returns here, the message is handled, and
the data path is entered again. So the rings are always consistent when
Python looks at them: no chain is half-taken when a stop is answered (a tx
worker may hold staged chains while its tap is full: txpath.c).
"""
import os
import signal
import sys

import setproctitle

from vionetd import control, dhcp, sandbox
from vionetd import vionetd_pb2 as pb
from vionetd.core import ffi, lib
from vionetd.datapath import Datapath, RingFailed

DEFAULT_ROOT = "/var/empty"

# What the data path needs beyond sandbox.COMMON (and nothing of a session's:
# no accept, no sendmsg, so a worker cannot pass an fd anywhere).
SYSCALLS = {
    "read": "eventfd kicks; tap reads (rxpath.c)",
    "readv": "tap frames straight into guest buffers (rxpath.c)",
    "write": "eventfd calls to the guest (virtq.c vq_notify)",
    "writev": "frames into the tap: header + guest buffers, one call (txpath.c)",
    "ppoll": "glibc may implement the data path's poll() with it",
    # io_uring_setup and io_uring_register stay forbidden: the ring is made
    # and restricted to WRITEV before the filter is loaded (txuring.c).
    "io_uring_enter": "a batch's frames into the tap in one call (txpath.c stage_flush)",
}


class Worker:
    def __init__(self, chan, name, test_hooks=False, uring=None):
        self.chan = chan
        self.name = name
        self.test_hooks = test_hooks
        self.uring = uring      # a TX worker's io_uring (open_uring), or None
        self.role = None
        self.dp = None

    def handle(self, msg, fds):
        kind = msg.WhichOneof("msg")
        body = getattr(msg, kind) if kind else None
        if kind == "hello":
            self.role = body.role
            rx = body.role == pb.ROLE_RX
            self.dp = Datapath(rx=rx, uring=None if rx else self.uring)
        elif self.dp is None:
            raise control.ChannelError("%s before hello" % kind)
        elif kind == "tap":
            self.dp.set_tap(self._one_fd(fds))
            return
        elif kind == "mem_table":
            self.dp.set_memory(body.regions, fds)
            return
        elif kind == "dirty_log":
            want = (1 + body.has_notify) if body.size else 0
            if len(fds) != want:
                raise control.ChannelError("dirty_log with %d fds" % len(fds))
            self.dp.set_log(body.size, body.offset, list(fds))
            return
        elif kind == "features":
            self.dp.set_features(body)
        elif kind == "ring_start":
            want = 2 if body.has_call else 1
            if len(fds) != want:
                raise control.ChannelError("ring_start with %d fds" % len(fds))
            self.dp.start_ring(body, fds[0], fds[1] if body.has_call else None)
            return
        elif kind == "ring_stop":
            last = self.dp.stop_ring()
            control.send(self.chan, pb.FromWorker(ring_stopped=pb.RingStopped(last_avail=last)))
        elif kind == "ring_enable":
            self.dp.enable(body.enabled)
            control.send(self.chan, pb.FromWorker(ring_enabled=body.enabled))
        elif kind == "stats":
            counters = [pb.Counter(name=k, value=v) for k, v in self.dp.counters()]
            control.send(self.chan, pb.FromWorker(stats=pb.Stats(counters=counters)))
        elif kind == "dhcp_reply":
            self.dp.inject(dhcp.build(body))
        elif kind == "test_forbidden_call" and self.test_hooks:
            sandbox.test_forbidden_call(body)
        else:
            raise control.ChannelError("unknown message %r" % kind)
        control.close_fds(fds)   # messages above carry none; refuse to keep strays

    @staticmethod
    def _one_fd(fds):
        if len(fds) != 1:
            control.close_fds(fds)
            raise control.ChannelError("expected one fd, got %d" % len(fds))
        return fds[0]

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
                return 0        # the parent has gone: so do we
            self.handle(msg, fds)

    def _divert(self):
        """A DHCP frame from the guest: send its fields, not the frame."""
        fields = dhcp.fields(self.dp.diverted())
        if fields is not None:
            control.send(self.chan, pb.FromWorker(dhcp=fields))
        else:
            self.dp.count("dhcp_malformed")


def open_uring(name):
    """A TX worker's restricted io_uring, or None where the kernel has none
    or refuses it (kernel.io_uring_disabled): then one writev() per frame."""
    u = lib.txu_open()
    if u == ffi.NULL:
        print("vionetd: %s: io_uring: %s; one write per frame"
              % (name, os.strerror(ffi.errno)), file=sys.stderr)
        return None
    return u


def main(chan, name, conf, test_hooks=False, user=None, role=None):
    """Entry point in the forked child. Returns the exit status."""
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)     # the parent's handlers are not ours
    signal.set_wakeup_fd(-1)
    setproctitle.setproctitle("vionetd: %s" % name)
    uring = open_uring(name) if role == pb.ROLE_TX else None
    keep = [chan.fileno()] + ([lib.txu_fd(uring)] if uring else [])
    try:
        sandbox.enter(SYSCALLS, keep, user or conf.user, conf.chroot or DEFAULT_ROOT)
    except OSError as e:
        print("vionetd: %s: cannot confine worker: %s" % (name, e), file=sys.stderr)
        return 1
    try:
        return Worker(chan, name, test_hooks, uring).run()
    except (control.ChannelError, OSError, ValueError) as e:
        # No traceback: printing one would open source files, which seccomp forbids.
        print("vionetd: %s: %s" % (name, e), file=sys.stderr)
        return 1
