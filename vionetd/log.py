"""Logging: stderr in the foreground (-d), syslog (daemon facility) otherwise.

Two levels an operator can switch at run time (vionetctl log brief|verbose):
brief logs what changes state (connections, workers, drops of a peer),
verbose also what every control message does.
"""
import logging
import logging.handlers
import os

log = logging.getLogger("vionetd")


def setup(foreground, verbose=False):
    log.handlers.clear()
    if foreground:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s vionetd[%(process)d]: %(message)s",
                                               "%H:%M:%S"))
    else:
        address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        handler = logging.handlers.SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter("vionetd[%(process)d]: %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    set_level("verbose" if verbose else "brief")


def set_level(level):
    if level not in ("brief", "verbose"):
        raise ValueError("log level is brief or verbose, not %r" % level)
    log.setLevel(logging.DEBUG if level == "verbose" else logging.INFO)
