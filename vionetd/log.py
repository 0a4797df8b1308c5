"""Run by the parent, and by sessions through their parent: logging, with repeats bounded.

The parent writes to stderr in the foreground (-d), to syslog (daemon
facility) otherwise. A session's lines go to its parent (session/
parent_link.py, ParentLog), which writes them.

Two levels an operator can switch at run time (vionetctl log brief|verbose):
brief logs what changes state (connections, workers, drops of a peer),
verbose also what every control message does.

No input may fill a disk: a line of the brief level whose format repeats,
for the same source, more than BURST times within WINDOW seconds is counted
instead of written (Collapse), and the next time it is written it says how
many were left out, as syslogd's "last message repeated N times" does. A
line's format is its record.msg (a session's line: the format it sends,
session_channel.py), so "%s: DHCP NAK for %s" with a thousand addresses is
one line; its source is the interface it names (its first argument when the
format begins "%s:", or record.source). What a session sends is bounded
before that too, by a token bucket per session (session_channel.py).
Verbose lines, which an operator asks for, are all written.
"""
import logging
import logging.handlers
import os
import time

BURST = 3          # identical lines written per window
WINDOW = 60.0      # seconds
MAX_LINES = 4096   # distinct lines remembered

log = logging.getLogger("vionetd")


def setup(foreground, verbose=False):
    log.handlers.clear()
    if foreground:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(
            "%(asctime)s.%(msecs)03d vionetd[%(process)d]: %(message)s", "%H:%M:%S"))
    else:
        address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        handler = logging.handlers.SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter("vionetd[%(process)d]: %(message)s"))
    handler.addFilter(Collapse())
    log.addHandler(handler)
    log.propagate = False
    set_level("verbose" if verbose else "brief")


def printable(text, limit=None):
    """text with every unprintable character replaced by "?", cut to limit:
    what other processes send is logged through this."""
    text = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return text


def set_level(level):
    if level not in ("brief", "verbose"):
        raise ValueError("log level is brief or verbose, not %r" % level)
    log.setLevel(logging.DEBUG if level == "verbose" else logging.INFO)


def source_of(record):
    """The interface a line is about: record.source, or the first argument
    of a format that begins "%s:", else ""."""
    src = getattr(record, "source", None)
    if src is None and isinstance(record.msg, str) and record.msg.startswith("%s:") \
            and isinstance(record.args, tuple) and record.args:
        src = record.args[0]
    return str(src or "")


class Collapse(logging.Filter):
    def __init__(self):
        super().__init__()
        self.seen = {}      # (format, source) -> [window start, written, left out]

    def filter(self, record):
        if record.levelno < logging.INFO:
            return True
        key = (str(getattr(record, "form", None) or record.msg), source_of(record))
        now = time.monotonic()
        entry = self.seen.get(key)
        if entry is None or now - entry[0] > WINDOW:
            left_out = entry[2] if entry else 0
            if len(self.seen) >= MAX_LINES:
                self.seen.clear()
            self.seen[key] = [now, 1, 0]
            if left_out:
                record.msg, record.args = ("%s (and %d more like it, not logged)",
                                           (record.getMessage(), left_out))
            return True
        entry[1] += 1
        if entry[1] <= BURST:
            return True
        entry[2] += 1
        return False
