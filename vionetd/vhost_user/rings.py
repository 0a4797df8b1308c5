"""Run by a session (the unprivileged process that speaks vhost-user with one
VM interface's VMM): the state of one connection's rings, and when each is
ready.

Ring 2i is queue pair i's RX ring, ring 2i+1 its TX ring; an interface has
1 to MAX_QUEUE_PAIRS pairs. A RingState holds everything the frontend told
us about one ring, and whether the backend was last told it runs.

Invariants
  - A ring is ready when the connection is open, the memory table and
    features are set, and it has a size, addresses that lie inside the
    memory table (one region each) and a kick fd given since the last
    GET_VRING_BASE stopped it ("Ring states" in vhost-user.rst: a ring
    starts on its kick and stops on GET_VRING_BASE).
  - edges() is the one place that compares readiness with what was last
    reported (RingState.reported) and says which rings changed; it marks
    them reported as it goes, before the backend hears of it.
  - Whether a ready ring is enabled (SET_VRING_ENABLE) is separate: see
    Connection.ring_enabled().
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from vionetd.vhost_user import checks
from vionetd.vhost_user.backend import ProtocolError


@dataclass
class RingState:
    """What the frontend told us about one ring (addresses are user addresses)."""
    num: Optional[int] = None
    desc: Optional[int] = None
    used: Optional[int] = None
    avail: Optional[int] = None
    log: Optional[int] = None   # used ring's guest address, if it is logged
    base: int = 0
    kicked: bool = False        # kick fd handed over, not stopped since
    call: bool = False          # a call fd was handed to the backend
    err: bool = False
    enabled: bool = False       # last SET_VRING_ENABLE
    reported: bool = False      # ready, as last told to ring_ready_changed

    @property
    def addr_set(self) -> bool:
        return self.desc is not None


class RingTable:
    """The rings of one connection: 2 per queue pair."""

    def __init__(self, queue_pairs: int):
        self.queue_pairs = queue_pairs
        self._rings = [RingState() for _ in range(2 * queue_pairs)]

    def __getitem__(self, i: int) -> RingState:
        return self._rings[i]

    def __len__(self) -> int:
        return len(self._rings)

    def __iter__(self) -> Iterator[RingState]:
        return iter(self._rings)

    def index(self, name: str, index: int) -> int:
        """Return index if this interface has that ring, else raise
        ProtocolError."""
        if index >= len(self._rings):
            raise ProtocolError(f"{name}: ring index {index} out of range: this "
                                f"interface has {self.queue_pairs} queue pair(s) "
                                f"(queues in vionetd.conf)")
        return index

    def stopped(self, name: str, i: int) -> None:
        """Raise ProtocolError if ring i has started (kicked, not stopped)."""
        if self._rings[i].kicked:
            raise ProtocolError(f"{name}: ring {i} is running")

    def any_started(self) -> bool:
        return any(r.kicked for r in self._rings)

    def forget(self) -> None:
        """RESET: every ring as new, except what was last reported."""
        self._rings = [RingState(reported=r.reported) for r in self._rings]

    def _ready(self, i: int, regions: Sequence, negotiated: bool) -> bool:
        """_ready() - whether ring i can move frames (module invariants)
        @i: ring index
        @regions: the memory table
        @negotiated: features are set and the connection is open
        """
        r = self._rings[i]
        return (negotiated and bool(regions) and r.kicked and
                checks.ring_fits(regions, r))

    def edges(self, regions: Sequence,
              negotiated: bool) -> Iterator[tuple[int, bool]]:
        """edges() - the rings whose readiness differs from the last report
        @regions: the memory table
        @negotiated: features are set and the connection is open

        Lazily, ring by ring (each one is computed after the previous
        change was reported): yields (index, ready) and records it as
        reported first.
        """
        for i, r in enumerate(self._rings):
            ready = self._ready(i, regions, negotiated)
            if ready != r.reported:
                r.reported = ready
                yield i, ready

    def check_layout(self, regions: Sequence) -> None:
        """Raise ProtocolError if a started ring with size and addresses
        lies outside the memory table (regions, if there is one)."""
        for i, r in enumerate(self._rings):
            if r.kicked and r.num is not None and r.addr_set and regions \
                    and not checks.ring_fits(regions, r):
                raise ProtocolError(f"ring {i} lies outside the memory table")
