"""Network namespaces for tests: every tap, veth and bridge a test makes lives
in a namespace of the test's own, and goes away with it.

Helpers (all context managers clean up in `finally`, whatever happened):
  unique(prefix)            a link/namespace name unique to this process (<= 15 chars)
  netns(prefix)             create a named namespace (ip netns add), yield its name
  inside(ns)                run Python code (sockets, /dev/net/tun, IPRoute()) in ns:
                            setns() on the calling thread, switched back afterwards
  ns_run(ns, *argv)         run a command in ns (ip netns exec), bounded in time
  veth_pair(a, ns_a, b, ns_b)  a veth pair, each end in its namespace, both up
  move_link(ifname, ns, from_ns=None)

Deleting a namespace deletes the virtual links inside it, and a tap goes with
its last fd, so cleanup is: close fds, then delete namespaces.
"""
import contextlib
import ctypes
import itertools
import os
import subprocess

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count()


def unique(prefix: str) -> str:
    """prefix + pid + a counter, cut to fit IFNAMSIZ (15 characters)."""
    tail = "%x%x" % (os.getpid() & 0xFFFFF, next(_counter))
    return (prefix[: 15 - len(tail)] + tail)[:15]


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "setns: %s" % os.strerror(e))


@contextlib.contextmanager
def inside(ns: str):
    """Switch the calling thread into namespace ns, and back afterwards.
    Sockets and fds opened here stay bound to ns after the switch back."""
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open("/run/netns/%s" % ns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(back)
    finally:
        os.close(target)
        os.close(back)


def run(*argv, timeout: float = 10, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with a time bound; a failure raises with its stderr."""
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(argv), p.returncode, p.stderr.strip()))
    return p


def ns_run(ns: str, *argv, timeout: float = 10, check: bool = True):
    """Run a command inside ns (ip netns exec)."""
    return run("ip", "netns", "exec", ns, *argv, timeout=timeout, check=check)


@contextlib.contextmanager
def netns(prefix: str = "vt"):
    """A fresh named network namespace with lo up; deleted on exit."""
    name = unique(prefix)
    run("ip", "netns", "add", name)
    try:
        ns_run(name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)


def move_link(ifname: str, ns: str, from_ns: str | None = None) -> None:
    """Move a link into namespace ns (from from_ns, or the current one)."""
    cmd = ("ip", "link", "set", ifname, "netns", ns)
    if from_ns:
        ns_run(from_ns, *cmd)
    else:
        run(*cmd)


@contextlib.contextmanager
def veth_pair(a: str, ns_a: str, b: str, ns_b: str):
    """A veth pair a (in ns_a) <-> b (in ns_b), both up. Deleted on exit
    (deleting one end deletes both; a deleted namespace takes them too)."""
    ns_run(ns_a, "ip", "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns_b)
    try:
        ns_run(ns_a, "ip", "link", "set", a, "up")
        ns_run(ns_b, "ip", "link", "set", b, "up")
        yield a, b
    finally:
        ns_run(ns_a, "ip", "link", "del", a, check=False)


def disable_ipv6(ns: str) -> None:
    """Keep IPv6 autoconfiguration chatter (RS, MLD, DAD) off a namespace's
    links, so captures see only what a test sends."""
    for key in ("net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"):
        ns_run(ns, "sysctl", "-qw", key + "=1")
