"""Run by the parent (root): killed processes of stopped interfaces, and the starts that wait for them.

A tap lives while one of its fds is open, and the killed session and workers
of a stopped interface hold theirs until they have exited. No new tap of
that name can be made before: TUNSETIFF says EBUSY, or, with
IFF_MULTI_QUEUE, attaches a queue to the old device. So an interface that
starts under a tap name such processes hold (a changed interface, restarted
by a reload) starts when the zygote has reported the exit of the last of
them (Parent.child_exited calls reaped()), or after EXIT_WAIT if one has
not exited by then, with a log line. The parent waits for none of them: other interfaces, vionetctl
and signals are served meanwhile. (Only when vionetd stops, with nothing
left to serve, does its loop run on until they have exited, for EXIT_WAIT at
most: Parent.shutdown.)

Invariants: a Wait ends once, by its start or by cancel(); a start whose
name no process here holds runs at once, inside when_free().
"""
from vionetd.log import log

EXIT_WAIT = 2.0               # seconds a start waits for the holders of its tap name


class Exiting:
    def __init__(self, loop):
        self.loop = loop
        self.holders = {}           # pid -> the tap name it holds
        self.waits = []             # Wait, oldest first

    def killed(self, tap_name, pids):
        """pids, killed by a stopped interface whose tap was tap_name."""
        for pid in pids:
            self.holders[pid] = tap_name

    def holding(self, tap_name):
        """How many processes here hold tap_name."""
        return sum(1 for name in self.holders.values() if name == tap_name)

    def reaped(self, pid):
        """pid has exited: True if it was one of these. The starts that
        wait for its tap name go on once no holder of it is left."""
        name = self.holders.pop(pid, None)
        if name is None:
            return False
        if not self.holding(name):
            for wait in [w for w in self.waits if w.tap_name == name]:
                wait.go()
        return True

    def when_free(self, key, tap_name, start):
        """Call start() once no process here holds tap_name (None: the
        kernel picks a new name): now, or later (see the module's doc).
        Returns None if it ran, else the Wait (cancel() forgets it)."""
        if tap_name is None or not self.holding(tap_name):
            start()
            return None
        wait = Wait(self, key, tap_name, start)
        self.waits.append(wait)
        return wait


class Wait:
    """One start waiting for a tap name; a timer gives up on the holders."""

    def __init__(self, exiting, key, tap_name, start):
        self.exiting, self.key, self.tap_name, self.start = exiting, key, tap_name, start
        self.timer = exiting.loop.call_later(EXIT_WAIT, self._late)

    def _late(self):
        log.warning("%s: %d process(es) that held tap %s have not exited after %g s; "
                    "starting anyway", self.key, self.exiting.holding(self.tap_name),
                    self.tap_name, EXIT_WAIT)
        self.go()

    def go(self):
        self.cancel()
        self.start()

    def cancel(self):
        self.timer.cancel()
        if self in self.exiting.waits:
            self.exiting.waits.remove(self)
