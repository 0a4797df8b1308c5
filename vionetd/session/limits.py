"""Run by a session: the interface's rate limits, given to each of its workers.

The parent sends them (ToSession.limits) after the fork and again when a
reload changes only them; each worker gets its direction's (ToWorker.rate:
pb.Limits.tx for the tx workers, rx for the rx workers) at once, and a new
worker when it arrives (Supervisor.arrived), so a replaced worker holds the
same limit. The C core applies it (csrc/rate.h).
"""
from vionetd import vionetd_pb2 as pb


class Limits:
    def __init__(self, supervisor):
        self.supervisor = supervisor
        self.limits = pb.Limits()           # none until the parent says

    def set(self, limits):
        """ToSession.limits: every running worker applies its direction's."""
        self.limits = limits
        for w in self.supervisor.workers:
            self.give(w)

    def give(self, w):
        """Send worker w its direction's limit."""
        rate = self.limits.tx if w.role == pb.ROLE_TX else self.limits.rx
        self.supervisor.send(w, rate=rate)
