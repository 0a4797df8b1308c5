"""Run by the parent and by every session: their event loop, one selector and timers.

Run by the parent and by every session (workers run the C data path's loop).
Everything such a process waits for goes through one Loop: readable fds
(watch) and deadlines (call_later). Nothing sleeps and nothing polls: a
restart that must wait is a timer, an answer that must come is a Reply
completed by the handler of the message that brings it (or by a timer that
gives up on it), and a loop with no timer due waits for its fds alone, so
an idle process is not woken.

Invariants:
- a callback that raises is logged and the loop goes on: one peer's trouble
  must not stop the others;
- an fd unwatched by an earlier callback of the same turn is not dispatched;
  one that callback read from still is, though it may be empty now: a
  callback must read without blocking;
- timers fire in deadline order, each at most once; a cancelled one never.
"""
import heapq
import itertools
import selectors
import time

from vionetd.log import log


class Timer:
    __slots__ = ("when", "fn", "cancelled")

    def __init__(self, when, fn):
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class Loop:
    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self._timers = []                 # heap of (when, seq, Timer)
        self._watched = []
        self._seq = itertools.count()

    def fileno(self):
        """The selector's own fd (a sandbox must keep it open)."""
        return self.sel.fileno()

    # What is watched is kept here too, by identity: asking the selector
    # about a socket it does not hold raises a KeyError that formats the
    # socket's repr(), whose getpeername(2) a session's seccomp forbids.

    def watch(self, fileobj, callback):
        """Call callback when fileobj is readable (again: the new callback)."""
        if self.watching(fileobj):
            self.sel.modify(fileobj, selectors.EVENT_READ, callback)
        else:
            self.sel.register(fileobj, selectors.EVENT_READ, callback)
            self._watched.append(fileobj)

    def unwatch(self, fileobj):
        if self.watching(fileobj):
            self._watched.remove(fileobj)
            self.sel.unregister(fileobj)

    def watching(self, fileobj):
        return any(f is fileobj for f in self._watched)

    def call_later(self, delay, fn):
        t = Timer(time.monotonic() + max(0.0, delay), fn)
        heapq.heappush(self._timers, (t.when, next(self._seq), t))
        return t

    def run_once(self, max_wait=None):
        """Wait for one round of events (at most max_wait seconds, None: no
        limit; less if a timer is due) and dispatch them, then every timer
        that is due."""
        wait = max_wait
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)     # a cancelled timer wakes nobody
        if self._timers:
            due = max(0.0, self._timers[0][0] - time.monotonic())
            wait = due if wait is None else min(wait, due)
        for key, _ in self.sel.select(timeout=wait):
            if self.watching(key.fileobj):      # not unwatched earlier this turn
                dispatch(self.sel.get_key(key.fileobj).data)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, t = heapq.heappop(self._timers)
            if not t.cancelled:
                dispatch(t.fn)


class Reply:
    """An answer that will come later: what a request's sender keeps.

    Whoever receives the answer calls set(value); whoever gave up on it
    (a timeout, a peer that died) calls set(None). Only the first set()
    counts. then(fn) calls fn(value) once the answer is there: at once if
    it already is. A vhost-user Backend method that must wait yields one
    (vhost_user/backend.py)."""
    __slots__ = ("done", "value", "_then")

    def __init__(self):
        self.done = False
        self.value = None
        self._then = []

    def set(self, value):
        if self.done:
            return
        self.done, self.value = True, value
        then, self._then = self._then, []
        for fn in then:
            fn(value)

    def then(self, fn):
        if self.done:
            fn(self.value)
        else:
            self._then.append(fn)


def dispatch(callback):
    try:
        callback()
    except Exception as e:
        # the type and text in the message: a session's log handler sends
        # the message alone (formatting a traceback would open source files)
        log.error("internal error: %s: %s", type(e).__name__, e, exc_info=True)
