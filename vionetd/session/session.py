"""Run by a session: the Session, which composes the parts of one.

One session serves one VM interface (the parent forks it, main.py confines
it). It is five parts on one event loop, each in its own file:
- parent: the channel to the parent (parent_link.py);
- vmm: the VMM's connection, accepted or dialed, paced (vmm_link.py);
- device: the virtio-net device the VMM sets up, the Connection's Backend
  (device.py);
- workers: the interface's rx and tx workers (workers.py);
- limits: the interface's rate limits, given to each worker (limits.py).

What the parent sees of it is one SessionState message, sent whenever it
changes.
"""
from vionetd import vionetd_pb2 as pb
from vionetd.eventloop import Loop
from vionetd.session.device import Device
from vionetd.session.limits import Limits
from vionetd.session.parent_link import ParentLink
from vionetd.session.vmm_link import VmmLink
from vionetd.session.workers import Supervisor

REASON_MAX = 300          # characters of a reason the parent takes (longer: killed)


class Session:
    def __init__(self, chan, listener, name, offered, queue_pairs=1, test_hooks=False,
                 vmm=(None, None)):
        self.name = name
        self.queue_pairs = queue_pairs
        self.loop = Loop()
        self.running = True
        self.workers = Supervisor(self, queue_pairs)
        self.limits = Limits(self.workers)
        self.device = Device(self, offered, queue_pairs)
        self.vmm = VmmLink(self, listener, vmm)
        self.parent = ParentLink(self, chan, test_hooks)

    def run(self):
        self.vmm.start()
        for w in self.workers.workers[:2]:    # other pairs' when the VMM uses them
            self.workers.ask(w)
        self.report_state()
        while self.running:
            self.loop.run_once()
        return 0

    def stop(self):
        self.running = False

    @property
    def state(self):
        conn = self.vmm.conn
        if conn is None:
            return "waiting" if self.vmm.listener is not None else "connecting"
        if any(conn.running(i) for i in range(2 * self.queue_pairs)):
            return "running"
        return "connected"

    def report_state(self):
        d = self.device
        self.parent.report_state(pb.SessionState(
            state=self.state, reason=self.vmm.reason[:REASON_MAX], vmm_features=d.vmm_features,
            worker_restarts=self.workers.restarts, mtu=d.mtu, retries=self.vmm.retries,
            logging=d.logging))
