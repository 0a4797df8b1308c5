"""vionetctl top: the live view under tmux, and its batch mode.

A daemon with two VMs, one of which streams TX frames (hostile.Sender, in a
forked loop). Under tmux (a server of the test's own, -L, killed at the
end) `vionetctl top` shows both interfaces with their state, the streaming
one with frames per second and Mbit/s above zero; a key sorts (the title
says by what) and q quits. `top -b` prints plain tables, one per refresh.
"""
import os
import subprocess
import sys
import time

import pytest

from tests import netns as N
from tests.daemon import ROOT, daemon
from tests.hostile import Sender
from tests.test_reload import forked_loop
from tests.test_vionetctl import wait_for
from tests.testvm import TestVM
from vionetd import top

pytestmark = pytest.mark.root

GUEST = bytes.fromhex("525400123456")
CONF = """socket "@CTL@"
vm "streamer" {
    interface {
        socket "@DIR@/s.sock"
        lladdr 52:54:00:12:34:56
    }
}
vm "idle" {
    interface {
        socket "@DIR@/i.sock"
    }
}
"""


@pytest.fixture(scope="module")
def streaming():
    """(daemon, namespace) while streamer's guest sends frames back to back."""
    with N.netns("top") as ns:
        N.disable_ipv6(ns)
        with daemon(CONF, ns) as d:
            d.wait_socket(d.dir + "/s.sock")
            with TestVM(d.dir + "/s.sock") as vm:
                sender = Sender(vm, GUEST)
                with forked_loop(lambda: sender.send(b"top", timeout=5), seconds=60):
                    yield d, ns


class Tmux:
    """A tmux server of our own (-L name) running one command in a window."""

    def __init__(self, cmd, width=120, height=30):
        self.name = N.unique("vtop")
        self.run("new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height),
                 "-e", "PYTHONPATH=" + ROOT, cmd)

    def run(self, *args, check=True):
        return subprocess.run(["tmux", "-L", self.name, *args], capture_output=True,
                              text=True, timeout=10, check=check)

    def screen(self):
        return self.run("capture-pane", "-p", "-t", "t").stdout

    def alive(self):
        return self.run("has-session", "-t", "t", check=False).returncode == 0

    def close(self):
        self.run("kill-server", check=False)


def rows_of(text):
    """{interface: [cells]} of the table on a screen."""
    return {line.split()[0]: line.split() for line in text.splitlines()
            if line.split() and "/" in line.split()[0]}


def test_top_under_tmux_shows_the_vms_and_their_rates(streaming):
    d, _ = streaming
    t = Tmux("%s -m vionetd.vionetctl -s %s top" % (sys.executable, d.ctl_socket))
    try:
        def streaming_row():
            rows = rows_of(t.screen())
            s = rows.get("streamer/0")
            return rows if s and "idle/0" in rows and s[5] not in ("-", "0") else None
        rows = wait_for("top showing the stream", streaming_row, timeout=15, step=0.2)
        screen = t.screen()
        print(screen)
        assert screen.splitlines()[2].split() == list(top.COLUMNS)
        s = rows["streamer/0"]
        assert s[1] == "running" and float(s[4]) > 0 and int(s[5]) > 100
        assert rows["idle/0"][1] == "waiting"
        t.run("send-keys", "-t", "t", "t")
        wait_for("sorted by tx", lambda: "sorted by tx" in t.screen(), timeout=5)
        t.run("send-keys", "-t", "t", "t")
        wait_for("reversed", lambda: "(reversed)" in t.screen(), timeout=5)
        lines = [x for x in t.screen().splitlines() if "/0" in x]
        assert lines[0].startswith("idle/0")          # reversed: the quiet one first
        t.run("send-keys", "-t", "t", "q")
        wait_for("top to quit", lambda: not t.alive(), timeout=5)
    finally:
        t.close()


def test_top_batch_mode(streaming):
    d, _ = streaming
    t0 = time.monotonic()
    out = d.ctl("top", "-b", "-n", "2", "-d", "0.5", "-o", "tx").stdout
    assert time.monotonic() - t0 < 10
    tables = [b for b in out.split("\n\n") if b.strip()]
    assert len(tables) == 2
    for table in tables:
        lines = table.strip().splitlines()
        assert lines[0].split() == list(top.COLUMNS)
        assert lines[1].startswith("streamer/0")     # sorted by tx, largest first
        assert int(lines[1].split()[5]) > 100


def test_top_bad_sort_and_no_daemon():
    p = subprocess.run([sys.executable, "-m", "vionetd.vionetctl", "-s", "/nonexistent/s",
                        "top", "-b", "-n", "1"], capture_output=True, text=True, timeout=20,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 1 and "vionetctl:" in p.stderr
    p = subprocess.run([sys.executable, "-m", "vionetd.vionetctl", "top", "-o", "nope"],
                       capture_output=True, text=True, timeout=20,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 2
