"""The real daemon, for tests: started in a network namespace of the test's own.

    with Daemon(conf_text, ns) as d:     # vionetd -d -f <tmp>/vionetd.conf in ns
        d.wait_socket(path)              # the vhost-user socket is listening
        d.ctl("show", "vm1")             # vionetctl against its control socket

The daemon's taps live in ns, so their far side is the test's own. Its
stderr goes to a file; the tail of it is printed under a failing test's
report (conftest.py), for every daemon that ran during the test. Stopping
sends SIGTERM and, if it has not exited within a bound, SIGKILL.

The wire(): the topology most daemon tests use. A bridge in the daemon's
namespace joins the tap to a veth whose peer is in a second namespace, and
the veth has every offload off: whatever the daemon writes into the tap with
metadata (GSO, partial checksums) is segmented and checksummed by Linux
before it reaches the far namespace, where a capture sees wire frames only.
"""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from tests import netns as nsmod

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOG_TAIL = 200          # lines of a daemon's log shown under a failing test

# The daemons started and not yet reported on: conftest.py shows their logs
# if the test fails, and forgets the stopped ones after each test.
started = []


class Daemon:
    def __init__(self, conf_text, ns, tmpdir, env=None):
        self.ns = ns
        self.env = dict(env or {})     # added to the daemon's environment
        self.dir = tmpdir
        self.conf = os.path.join(tmpdir, "vionetd.conf")
        self.ctl_socket = os.path.join(tmpdir, "ctl.sock")
        with open(self.conf, "w") as f:
            f.write(conf_text.replace("@CTL@", self.ctl_socket).replace("@DIR@", tmpdir))
        self.log_path = os.path.join(tmpdir, "vionetd.log")
        self.proc = None
        self.last_log = None            # its tail, once stopped

    def start(self):
        cmd = ["ip", "netns", "exec", self.ns, sys.executable, "-m", "vionetd.main",
               "-d", "-v", "-f", self.conf]
        env = dict(os.environ, PYTHONPATH=ROOT, **self.env)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=ROOT)
        if self not in started:         # a restarted Daemon is shown once
            started.append(self)
        self.wait_socket(self.ctl_socket)
        return self

    def wait_socket(self, path, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(path):
                return
            if self.proc.poll() is not None:
                raise RuntimeError("vionetd exited %d:\n%s" % (self.proc.returncode, self.log()))
            time.sleep(0.05)
        raise TimeoutError("%s did not appear:\n%s" % (path, self.log()))

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def ctl(self, *args, check=True):
        cmd = [sys.executable, "-m", "vionetd.vionetctl", "-s", self.ctl_socket, *args]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20,
                           env=dict(os.environ, PYTHONPATH=ROOT))
        if check and p.returncode != 0:
            raise RuntimeError("vionetctl %s: %s\n%s" % (" ".join(args), p.stderr, self.log()))
        return p

    def stats(self):
        import json
        return json.loads(self.ctl("stats", "--json").stdout)

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        self.last_log = self.log_tail()
        self.proc = None

    def log_tail(self):
        if self.last_log is not None:
            return self.last_log
        return "".join(self.log().splitlines(keepends=True)[-LOG_TAIL:])

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@contextlib.contextmanager
def daemon(conf_text, ns, env=None):
    """A started Daemon in a temporary directory; env: more environment
    variables for it (e.g. a test-only switch)."""
    with tempfile.TemporaryDirectory(prefix="vionetd-test-") as tmp:
        os.chmod(tmp, 0o755)
        d = Daemon(conf_text, ns, tmp, env)
        try:
            yield d.start()
        finally:
            d.stop()


def switched_conf(bridge, vms=("t1",), lines=""):
    """A configuration of VMs (names), each with one interface on switch
    "sw" (the Linux bridge bridge) and its socket @DIR@/NAME.sock; lines go
    into every interface block (lladdr, offload policy, ...)."""
    out = 'socket "@CTL@"\nswitch "sw" { interface "%s" }\n' % bridge
    for vm in vms:
        out += ('vm "%s" {\n    interface {\n        socket "@DIR@/%s.sock"\n'
                '        switch "sw"\n%s\n    }\n}\n' % (vm, vm, lines))
    return out


@contextlib.contextmanager
def wire():
    """Two namespaces: (dns, wns, bridge, veth_w). The daemon runs in dns,
    where bridge joins its taps to a veth without offloads; veth_w is the
    peer in wns, where tests capture and send."""
    with nsmod.netns("vd") as dns, nsmod.netns("vw") as wns:
        for ns in (dns, wns):
            nsmod.disable_ipv6(ns)
        bridge = nsmod.unique("br")
        veth_d, veth_w = nsmod.unique("vd"), nsmod.unique("vw")
        nsmod.ns_run(dns, "ip", "link", "add", bridge, "type", "bridge")
        nsmod.ns_run(dns, "ip", "link", "set", bridge, "type", "bridge", "stp_state", "0",
                     "forward_delay", "0")
        nsmod.ns_run(dns, "ip", "link", "set", bridge, "up")
        with nsmod.veth_pair(veth_d, dns, veth_w, wns):
            nsmod.ns_run(dns, "ethtool", "-K", veth_d, "tx", "off", "tso", "off", "gso", "off",
                         "tx-udp-segmentation", "off", check=False)
            nsmod.ns_run(dns, "ip", "link", "set", veth_d, "master", bridge)
            yield dns, wns, bridge, veth_w


def capture_socket(ns, ifname):
    """An AF_PACKET socket on ifname in namespace ns: every frame arriving there."""
    with nsmod.inside(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((ifname, 0))
    return s


def wait_for(what, cond, timeout=15.0):
    """cond()'s first true value, polled every 0.1 s; AssertionError naming
    what if none comes within timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)


def wait_for_frame(cap, needle, timeout=5.0):
    """The first frame captured within timeout that contains needle, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cap.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = cap.recv(70000)
        except socket.timeout:
            return None
        if needle in data:
            return data
    return None
