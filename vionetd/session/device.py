"""Run by a session: the virtio-net device a VMM sets up over vhost-user.

The Device is the session's vhost_user.Backend: the Connection checks every
request and calls it; the Device keeps what the workers need and hands it to
them. It holds:
- the features the VMM acked, and what the parent made of them for the
  workers (pb.Features: software offloads, locked MAC, MTU): the parent sets
  the tap's offloads first, so SET_FEATURES waits for its answer;
- the MTU the VMM gave the guest (NET_SET_MTU, checked by the parent);
- the guest memory table and the dirty log (memory.py);
- one Slot per ring: its kick and call eventfds and where its worker
  stopped it.

Whether a ring runs is the Connection's (Connection.running(i), reported
through ring_ready_changed); the Device starts and stops the ring's worker
accordingly. Stopping waits for the worker to say where it stopped (its next
avail index), which GET_VRING_BASE returns to the VMM: a Backend method that
must wait yields a Reply (vhost_user/backend.py), and the Connection holds
the VMM's next message until the Reply is complete. Without the worker's
answer the index is unknown and GET_VRING_BASE fails: the VMM must not
resume a ring from a guess.

Every fd the Device is given is closed when it is replaced or forgotten.
"""
import os

from vionetd import control, vhost_user
from vionetd import features as F
from vionetd import vionetd_pb2 as pb
from vionetd.session.memory import Memory
from vionetd.session.workers import State


class Slot:
    """What the Device keeps of one ring for its worker (a replaced worker
    gets it again)."""

    def __init__(self):
        self.kick = None
        self.call = None
        self.last_avail = None      # from the worker when it stopped the ring
        self.base_lost = False      # stopped without the worker's answer

    def set(self, which, fd):
        old = getattr(self, which)
        if old is not None:
            os.close(old)
        setattr(self, which, fd)

    def forget(self):
        self.set("kick", None)
        self.set("call", None)
        self.last_avail = None
        self.base_lost = False


class Device(vhost_user.Backend):
    def __init__(self, session, offered, queue_pairs):
        self.session = session
        self.workers = session.workers
        self.offered = offered                 # feature bits, from the parent
        self.slots = [Slot() for _ in range(2 * queue_pairs)]
        self.vmm_features = 0
        self.worker_features = None            # pb.Features from the parent
        self.mtu = 0
        self.memory = Memory(session.workers)

    @property
    def conn(self):
        return self.session.vmm.conn

    def running(self, i):
        return self.conn is not None and self.conn.running(i)

    @property
    def logging(self):
        """The VMM is migrating: LOG_ALL acked and a log to mark."""
        return F.has(self.vmm_features, F.LOG_ALL) and self.memory.dirty_log is not None

    # ---- features and MTU: the parent decides -----------------------------

    def get_features(self):
        return self.offered

    def set_features(self, value):
        reply = yield self.session.parent.request("features", features=value)
        if reply is None:
            raise vhost_user.BackendError("the parent did not apply the features")
        self.vmm_features = value
        self.worker_features = reply
        self.workers.send_all(features=reply)
        self.session.report_state()

    def set_mtu(self, mtu):
        """NET_SET_MTU: the parent checks it and the tap follows."""
        reply = yield self.session.parent.request("mtu", set_mtu=mtu)
        if reply is None or reply.error:
            raise vhost_user.BackendError(reply.error if reply else "the parent did not answer")
        self.mtu = mtu

    def send_rarp(self, mac):
        """The guest now runs here: the parent announces its MAC."""
        self.session.parent.send(announce=mac)

    def reset(self):
        for slot in self.slots:
            slot.forget()
        self.memory.forget()
        self.vmm_features = 0
        self.mtu = 0

    def disconnected(self):
        self.reset()

    # ---- memory and dirty log (memory.py) ------------------------------------

    def set_mem_table(self, regions, fds):
        """A new table: running rings are stopped first (memory hotplug),
        their workers remap, and the rings start again where they stopped."""
        if self.memory.same(regions, fds):
            control.close_fds(fds)      # QEMU sends the table once per pair
            return
        running = [i for i in range(len(self.slots)) if self.running(i)]
        for i in running:
            yield from self._stop_ring(i)
        self.memory.set_table(regions, fds)
        for i in running:
            self._start_ring(i, base=self.slots[i].last_avail)

    def set_log_base(self, size, offset, fd):
        self.memory.set_log(size, offset, fd)
        self.session.report_state()

    def set_log_fd(self, fd):
        self.memory.set_log_notify(fd)

    # ---- rings ------------------------------------------------------------

    def get_vring_base(self, i):
        slot = self.slots[i]
        if slot.base_lost:
            raise vhost_user.BackendError(
                "ring %d: its worker did not say where it stopped" % i)
        if slot.last_avail is not None:
            return slot.last_avail
        return self.conn.rings[i].base

    def set_vring_base(self, i, base):
        self.slots[i].last_avail = None    # the VMM's base wins from now on
        self.slots[i].base_lost = False

    def set_vring_addr(self, i, desc, used, avail, log):
        """Only a running ring's log can change (migration starts or ends):
        its worker restarts the ring with the new one."""
        if self.running(i):
            yield from self._restart_ring(i)

    def set_vring_kick(self, i, fd):
        yield from self._replace_fd(i, "kick", fd)

    def set_vring_call(self, i, fd):
        yield from self._replace_fd(i, "call", fd)

    def _replace_fd(self, i, which, fd):
        """A new kick or call eventfd: a running ring's worker must use the
        new one from now on, so it is stopped, then started with it."""
        running = self.running(i)
        if running:
            yield from self._stop_ring(i)
        self.slots[i].set(which, fd)
        if running:
            self._start_ring(i, base=self.slots[i].last_avail)

    def set_vring_enable(self, i, enabled):
        """The VMM's ack (REPLY_ACK) must mean the worker holds it."""
        if self.running(i):
            yield self.workers.request(self.workers.workers[i], "ring_enabled",
                                       ring_enable=pb.RingEnable(enabled=enabled))

    def ring_ready_changed(self, i, ready):
        if ready:
            self.session.vmm.ran = True
            self._start_ring(i)
        else:
            yield from self._stop_ring(i)

    def _restart_ring(self, i):
        yield from self._stop_ring(i)
        self._start_ring(i, base=self.slots[i].last_avail)

    def _start_ring(self, i, base=None, resume=False):
        """Give ring i to its worker (asked for on the ring's first use: it
        starts the ring when it arrives, restore())."""
        slot, conn = self.slots[i], self.conn
        if conn is None or slot.kick is None or self.memory.table is None:
            return
        w = self.workers.workers[i]
        if w.state is not State.RUNNING:
            self.workers.wanted(w)
            return
        state = conn.rings[i]
        fds = [slot.kick] + ([slot.call] if slot.call is not None else [])
        msg = pb.RingStart(num=state.num, desc_user_addr=state.desc,
                           avail_user_addr=state.avail, used_user_addr=state.used,
                           base=state.base if base is None else base,
                           has_call=slot.call is not None,
                           enabled=conn.ring_enabled(i), resume=resume,
                           log_used=state.log is not None, log_guest_addr=state.log or 0)
        slot.last_avail = None
        slot.base_lost = False
        self.workers.send(w, fds, ring_start=msg)

    def _stop_ring(self, i):
        """Stop ring i in its worker and keep its next avail index."""
        reply = yield self.workers.request(self.workers.workers[i], "ring_stopped",
                                           ring_stop=pb.RingStop())
        if reply is None:
            self.slots[i].base_lost = True
        else:
            self.slots[i].last_avail = reply.last_avail

    def restore(self, w):
        """Bring a new worker to where its predecessor was."""
        if self.worker_features is not None and self.vmm_features:
            self.workers.send(w, features=self.worker_features)
        self.memory.restore(w)
        if self.running(w.ring):
            self._start_ring(w.ring, resume=True)

    def close(self):
        self.reset()
