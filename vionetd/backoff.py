"""Run by the parent, every session and every tx worker: the backoff and rate limits they share.

Two small policies that were written out again wherever they were needed:

- Backoff: a delay that doubles with each failure in a row, from `first` up
  to `largest`, and falls back to `first` after a success. Restarting a
  session, restarting a worker, dialing a VMM's socket and accepting after
  short VMM connections all wait this way.
- take_slot: a sliding-window budget ("at most N events in S seconds"), for
  worker forks and RARP announcements.
- Bucket: a token bucket (a burst, then a steady rate) that counts what it
  refuses, for a session's log lines and forbidden-call reports, and for
  the router solicitations and DHCPv6 messages a tx worker passes on
  (divert.py).

None sleeps: each returns a delay or a refusal, and the caller arms a timer
with it or drops what it refused.
"""
import time


class Backoff:
    """A delay of first * 2**(n-1) for the n-th failure in a row, at most
    largest."""

    def __init__(self, first, largest):
        self.first = first
        self.largest = largest
        self.failures = 0

    def delay(self, failures):
        """The delay after `failures` failures in a row (0: none)."""
        if failures <= 0:
            return 0.0
        return min(self.largest, self.first * 2 ** min(failures - 1, 32))

    def fail(self):
        """Count one more failure; return the delay before the next try."""
        self.failures += 1
        return self.delay(self.failures)

    def reset(self):
        self.failures = 0


def take_slot(times, budget):
    """A sliding-window rate limit: budget is (count, seconds), times the
    deque of past events. Records now and returns 0 if fewer than count
    fall in the window; else the seconds until the oldest leaves it."""
    now = time.monotonic()
    count, window = budget
    while times and now - times[0] > window:
        times.popleft()
    if len(times) >= count:
        return window - (now - times[0]) or 1e-6
    times.append(now)
    return 0


class Bucket:
    """A token bucket: burst tokens, refilled at rate per second. take()
    is True while a token is left; what it refuses is counted in dropped
    until the caller takes the count (refused())."""

    def __init__(self, burst, rate, clock=time.monotonic):
        self.burst, self.rate, self.clock = burst, rate, clock
        self.tokens = float(burst)
        self.last = clock()
        self.dropped = 0

    def take(self):
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.dropped += 1
        return False

    def refused(self):
        """How many take() refused since the last call; the count restarts."""
        n, self.dropped = self.dropped, 0
        return n
