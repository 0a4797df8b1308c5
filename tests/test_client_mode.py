"""Client mode (socket "PATH" connect): the VMM listens, vionetd connects.

Through the real daemon: while nothing listens at the path, the interface
is "connecting" and counts its attempts; a VMM that starts listening gets
vionetd's connection within the backoff (at most 2 s between attempts),
negotiates and moves frames; when the VMM goes away and comes back (as a
restarted QEMU would), vionetd connects again by itself.
"""
import os
import re
import time

import pytest

from tests import frames as F
from tests.daemon import capture_socket, daemon, wait_for_frame, wire
from tests.testvm import TestVM

pytestmark = pytest.mark.root

CONF = """socket "@CTL@"
switch "sw" { interface "%s" }
vm "c1" {
    interface {
        socket "@DIR@/qemu.sock" connect
        switch "sw"
        lladdr 52:54:00:12:34:56
    }
}
"""


def state(d):
    return d.stats()["c1/0"]


def wait(what, cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)


def sent_and_seen(vm, cap, payload):
    vm.send(F.build(version=4, proto=F.UDP, payload=payload, csum="full").data)
    return wait_for_frame(cap, payload) is not None


def test_connects_retries_and_reconnects():
    with wire() as (dns, wns, bridge, veth_w):
        with daemon(CONF % bridge, dns) as d:
            path = d.dir + "/qemu.sock"
            cap = capture_socket(wns, veth_w)
            try:
                wait("failed attempts", lambda: state(d)["retries"] >= 2)
                st = state(d)
                assert st["state"] == "connecting", st
                assert re.search(r"\bconnecting\(\d+\)", d.ctl("status").stdout)
                assert not os.path.exists(path)       # the VMM's socket: vionetd makes none
                for round in ("first", "after the VMM came back"):
                    with TestVM(path, listen=True) as vm:
                        wait("running", lambda: state(d)["state"] == "running")
                        assert state(d)["retries"] == 0
                        assert sent_and_seen(vm, cap, ("frame, %s" % round).encode())
                    wait("connecting again", lambda: state(d)["state"] == "connecting")
                assert "cannot connect to the VMM" in d.log()
            finally:
                cap.close()
