"""A rig for hostile-VMM tests and the isolation benchmark: the real daemon
with a bystander VM and a victim interface, and what watches the bystander.

    with Rig(("by", "vic")) as rig:     # wire() + daemon(switched_conf(...))
        rig.ensure()                     # daemon alive, bystander healthy, else restart
        with rig.monitor() as mon:       # bystander probed while the block runs
            ...attack rig.path("vic")...
        mon.problems()                   # [] if the bystander stayed live
        rig.recover("vic")               # None if a good VMM works there again

Everything is observed from outside the daemon: real sockets, frames
captured in the far namespace, /proc of the daemon's processes, its log file.

- Bystander: a TestVM connected to its own interface before any attack. The
  monitor runs two threads on it: one does GET_FEATURES /
  GET_PROTOCOL_FEATURES / GET_QUEUE_NUM round trips on its established
  connection (harmless while the rings run) and records each round trip's
  duration; the other sends TX frames one at a time (post, kick, wait for the
  used entry) with a tag "HVT:by:N" that the sniffer looks for in the far
  namespace.
- Sniffer: one thread per rig reading an AF_PACKET socket on the veth in
  the far namespace, recording when each frame carrying "HVT:" arrived.
- recover(): a well-behaved TestVM connects to an interface (retried until a
  deadline: the daemon may still hold, or just have dropped, the previous
  connection), sends a tagged TX frame that must reach the far namespace and
  receives a tagged broadcast from there.
- Processes: the daemon's pid is the one Popen started (ip netns exec
  execs it); its processes are its descendants in /proc. Every descendant
  seen is remembered (pid and start time) and killed by pid after the
  daemon stops, should one outlive it.
"""
import collections
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time

from tests import frames as F
from tests import netns as N
from tests import vmm
from tests.daemon import capture_socket, daemon, switched_conf, wire
from tests.testvm import TestVM
from vionetd import vhost_user as V

BY_MAC = bytes.fromhex("52540000b101")
VIC_MAC = bytes.fromhex("5254000cc101")
PEER_MAC = bytes.fromhex("5254000dd001")
BROADCAST = b"\xff" * 6
TAG = b"HVT:"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def tagged(tag, src, dst=None):
    """A full-checksum UDP/IPv4 frame with payload tag, from MAC src to MAC
    dst (default PEER_MAC: the bridge has learnt it on the veth, so the
    frame goes there only and is not flooded to the other VMs' taps)."""
    data = F.build(version=4, proto=F.UDP, payload=tag, csum="full").data
    return (dst or PEER_MAC) + src + data[12:]


# ---- processes ---------------------------------------------------------------

def _stat_fields(pid):
    """/proc/PID/stat's fields from the third (state) on, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return None
    return s[s.rindex(")") + 2:].split()


def alive(pid):
    """pid runs (a zombie has exited)."""
    rest = _stat_fields(pid)
    return rest is not None and rest[0] not in ("Z", "X")


def _stat(pid):
    """(ppid, utime+stime, cutime+cstime, starttime) from /proc/PID/stat, or None."""
    rest = _stat_fields(pid)
    if rest is None:
        return None
    # rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15,
    # cutime 16, cstime 17, starttime 22
    return (int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14]),
            int(rest[19]))


def descendants(root):
    """Pids of root's descendants (not root), from /proc."""
    children = collections.defaultdict(list)
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st:
                children[st[0]].append(int(name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def proc_status(pid):
    """/proc/PID/status as {key: [words]}."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.split()
    return out


def fd_targets(pid):
    """readlink of every fd of pid ([] if it is gone)."""
    out = []
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return out
    for n in names:
        try:
            out.append(os.readlink("/proc/%d/fd/%s" % (pid, n)))
        except OSError:
            pass
    return out


def cpu_seconds(root):
    """CPU seconds of root and its descendants: utime+stime of each live one,
    plus root's cutime+cstime (the children it has reaped)."""
    st = _stat(root)
    if st is None:
        return None
    ticks = st[1] + st[2]
    for pid in descendants(root):
        s = _stat(pid)
        if s:
            ticks += s[1]
    return ticks / CLK_TCK


def process_named(rig, title, other_than=None, timeout=40.0):
    """The pid of the daemon's process titled title ("vionetd: vhost
    vic/0"), other than other_than, waited for up to timeout; None if none.
    rig: a Rig (its processes are remembered for cleanup) or the daemon's pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = rig.processes() if isinstance(rig, Rig) else [
            (p, cmdline(p)) for p in descendants(rig)]
        for pid, cmd in found:
            if cmd == title and pid != other_than:
                return pid
        time.sleep(0.05)
    return None


def parent_figures(pid):
    """(open fds, VmRSS in KiB) of a process."""
    return len(os.listdir("/proc/%d/fd" % pid)), int(proc_status(pid)["VmRSS"][0])


SYS_PIDFD_GETFD = 438         # the same number on every architecture


def grab_fd(pid, fd):
    """A dup of process pid's fd (pidfd_getfd(2); root)."""
    pidfd = os.pidfd_open(pid)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        n = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if n < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd(%d, %d)" % (pid, fd))
        return n
    finally:
        os.close(pidfd)


def socket_inodes(pid):
    """{inode: fd number} of pid's sockets."""
    out = {}
    for name in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, name))
        except OSError:
            continue
        if target.startswith("socket:["):
            out[int(target[8:-1])] = int(name)
    return out


def unix_peers(ns):
    """{inode: peer inode} of the unix sockets of namespace ns (ss -x)."""
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-xnaH"], capture_output=True,
                         text=True, check=True).stdout
    peers = {}
    for line in out.splitlines():
        w = line.split()
        if len(w) >= 8 and w[5].isdigit() and w[7].isdigit():
            peers[int(w[5])] = int(w[7])
    return peers


def session_channel(parent, ns, pid):
    """A dup of session pid's end of its channel to the parent (pid parent,
    in namespace ns): what a compromised session would write to. It is the
    session's socket whose peer the parent holds (its workers' channels
    have theirs in the workers)."""
    theirs = socket_inodes(pid)
    parents = set(socket_inodes(parent))
    for inode, peer in unix_peers(ns).items():
        if inode in theirs and peer in parents:
            return socket.socket(fileno=grab_fd(pid, theirs[inode]))
    raise LookupError("session %d has no channel to the parent" % pid)


# ---- the far side --------------------------------------------------------------

class Sniffer:
    """Records (arrival time, 48 bytes from "HVT:") of frames seen on ifname in ns."""

    def __init__(self, ns, ifname):
        self.sock = capture_socket(ns, ifname)
        self.sock.settimeout(0.2)
        self.seen = collections.deque(maxlen=200000)
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop_ev.is_set():
            try:
                data = self.sock.recv(70000)
            except socket.timeout:
                continue
            except OSError:
                return
            i = data.find(TAG)
            if i >= 0:
                self.seen.append((time.monotonic(), data[i:i + 48]))

    def arrivals(self, prefix, since=0.0):
        """Arrival times of frames whose tag starts with prefix, since a time."""
        return [t for t, d in list(self.seen) if t >= since and d.startswith(prefix)]

    def wait(self, tag, timeout, since=0.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.arrivals(tag, since):
                return True
            time.sleep(0.01)
        return bool(self.arrivals(tag, since))

    def close(self):
        self.stop_ev.set()
        self.thread.join(2)
        self.sock.close()


class Peer:
    """Sends plain frames into the far namespace's veth (towards the VMs)."""

    def __init__(self, ns, ifname):
        with N.inside(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.sock.bind((ifname, 0))

    def send(self, frame):
        self.sock.send(frame)

    def announce(self):
        """A broadcast from PEER_MAC, so the bridge learns where it is."""
        self.send(BROADCAST + PEER_MAC + b"\x88\xb5" + b"HVT:announce".ljust(46, b"\0"))

    def close(self):
        self.sock.close()


# ---- a VM that sends one frame at a time, reusing one buffer --------------

class Sender:
    """TX frames on a TestVM, one at a time, from one reused guest buffer
    (TestVM.send allocates a new one per frame)."""

    def __init__(self, vm, src):
        self.vm, self.src = vm, src
        self.buf = vm.tx.alloc_buffer(2048)
        self.sent = 0

    def send(self, tag, timeout=5.0):
        data = b"\0" * 12 + tagged(tag, self.src)
        gpa = self.buf[0]
        self.vm.mem.write(gpa, data)
        # EVENT_IDX: ask for a call when this chain is used (the used
        # entry it will get is the next one we read); without it the wait
        # below would fall back to polling every 50 ms
        self.vm.tx.set_used_event(self.vm.tx.last_used)
        head = self.vm.tx.add_chain([(gpa, len(data), False)])
        self.vm.fe.kick_ring(1)
        used = self.vm.wait_used(1, 1, timeout)
        if used[0][0] != head:
            raise RuntimeError("used entry for another chain")
        self.sent += 1


class Bystander:
    def __init__(self, path):
        self.vm = TestVM(path, mem_size=4 << 20)
        self.vm.fe.sock.settimeout(30)        # a slow answer is measured, not fatal
        self.sender = Sender(self.vm, BY_MAC)
        self.seq = 0
        self.healthy = True

    def handshake(self, req=V.GET_FEATURES):
        t0 = time.monotonic()
        self.vm.fe._get_u64(req)
        return time.monotonic() - t0

    def send(self, timeout=5.0):
        self.seq += 1
        tag = b"HVT:by:%d:" % self.seq
        self.sender.send(tag, timeout)
        return tag

    def close(self):
        self.vm.close()


class Monitor:
    """Probes a bystander from two threads while a block runs (see module
    doc). frame_pace: seconds between TX frames (0: back to back).
    newcomer: a socket path on which a third thread makes a full new
    negotiation (a TestVM, then closed) every newcomer_pace seconds,
    timing each, failures included."""

    HANDSHAKES = (V.GET_FEATURES, V.GET_PROTOCOL_FEATURES, V.GET_QUEUE_NUM)

    def __init__(self, rig, pace=0.02, frame_pace=None, newcomer=None, newcomer_pace=0.2):
        self.rig, self.by, self.pace = rig, rig.bystander, pace
        self.frame_pace = pace if frame_pace is None else frame_pace
        self.newcomer, self.newcomer_pace = newcomer, newcomer_pace
        self.stop_ev = threading.Event()
        self.rtts = []              # (time, seconds)
        self.done = []              # completion times of TX frames
        self.negotiations = []      # (seconds, error or None)
        self.errors = []
        self.t0 = self.t1 = None

    def __enter__(self):
        self.t0 = time.monotonic()
        self.threads = [threading.Thread(target=self._handshakes, daemon=True),
                        threading.Thread(target=self._frames, daemon=True)]
        if self.newcomer:
            self.threads.append(threading.Thread(target=self._newcomers, daemon=True))
        for t in self.threads:
            t.start()
        return self

    def _newcomers(self):
        while not self.stop_ev.is_set():
            t0 = time.monotonic()
            err = None
            try:
                TestVM(self.newcomer, mem_size=1 << 20).close()
            except Exception as e:     # noqa: BLE001 - counted
                err = repr(e)
            self.negotiations.append((time.monotonic() - t0, err))
            self.stop_ev.wait(self.newcomer_pace)

    def __exit__(self, *exc):
        self.t1 = time.monotonic()
        self.stop_ev.set()
        for t in self.threads:
            t.join(40)
        if any(t.is_alive() for t in self.threads) or self.errors:
            self.by.healthy = False

    def _handshakes(self):
        k = 0
        while not self.stop_ev.is_set():
            req = self.HANDSHAKES[k % len(self.HANDSHAKES)]
            k += 1
            try:
                self.rtts.append((time.monotonic(), self.by.handshake(req)))
            except Exception as e:     # noqa: BLE001 - reported, not raised
                self.errors.append("handshake %s: %r" % (V.request_name(req), e))
                return
            self.stop_ev.wait(self.pace)

    def _frames(self):
        while not self.stop_ev.is_set():
            try:
                self.by.send()
            except Exception as e:     # noqa: BLE001
                self.errors.append("TX frame: %r" % (e,))
                return
            self.done.append(time.monotonic())
            if self.frame_pace:
                self.stop_ev.wait(self.frame_pace)

    @property
    def max_rtt(self):
        return max((r for _, r in self.rtts), default=None)

    def arrivals(self):
        return self.rig.sniffer.arrivals(b"HVT:by:", self.t0)

    def problems(self, rtt_bound=1.0, gap_bound=2.0):
        """What went wrong for the bystander, as strings ([] if nothing)."""
        out = list(self.errors)
        if not self.rtts:
            out.append("no handshake round trip completed")
        elif self.max_rtt > rtt_bound:
            out.append("bystander handshake round trip took %.3f s (bound %g s)"
                       % (self.max_rtt, rtt_bound))
        time.sleep(0.2)                 # let the sniffer see the last frames
        seen = self.arrivals()
        if not seen:
            out.append("no bystander frame arrived in the far namespace")
        else:
            edges = [self.t0] + sorted(seen) + [self.t1]
            gap = max(b - a for a, b in zip(edges, edges[1:]))
            if gap > gap_bound:
                out.append("bystander frames stalled for %.2f s (bound %.1f s)"
                           % (gap, gap_bound))
            if len(seen) < len(self.done) * 0.9:
                out.append("only %d of %d bystander frames arrived" % (len(seen), len(self.done)))
        return out


# ---- the rig -----------------------------------------------------------------

class Rig:
    def __init__(self, names=("by", "vic"), bystander="by", extra=""):
        """extra: more configuration after the switched VMs' (other VMs)."""
        self.names = names
        self.extra = extra
        self.by_name = bystander
        self.stack = contextlib.ExitStack()
        self.dstack = None
        self.d = None
        self.bystander = None
        self.known = {}              # pid -> start time, every daemon process seen
        self.dirty = False           # set by a test that left an interface broken
        self.restarts = 0

    def __enter__(self):
        try:
            self.dns, self.wns, self.bridge, self.veth_w = self.stack.enter_context(wire())
            self.sniffer = Sniffer(self.wns, self.veth_w)
            self.stack.callback(self.sniffer.close)
            self.peer = Peer(self.wns, self.veth_w)
            self.stack.callback(self.peer.close)
            self.peer.announce()
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        self._stop()
        self.stack.close()

    def path(self, name):
        return os.path.join(self.d.dir, name + ".sock")

    def _start(self):
        self.dstack = contextlib.ExitStack()
        self.d = self.dstack.enter_context(daemon(
            switched_conf(self.bridge, self.names) + self.extra, self.dns))
        for n in self.names:
            self.d.wait_socket(self.path(n))
        self.bystander = Bystander(self.path(self.by_name))
        self.dirty = False

    def _stop(self):
        if self.bystander is not None:
            with contextlib.suppress(Exception):
                self.bystander.close()
            self.bystander = None
        if self.dstack is not None:
            self.track()
            self.dstack.close()
            self.dstack = None
        self.kill_leftovers()

    @property
    def pid(self):
        return self.d.proc.pid

    def alive(self):
        return self.d is not None and self.d.proc is not None and self.d.proc.poll() is None

    def processes(self):
        """The daemon's live descendants: [(pid, cmdline)], remembered for cleanup."""
        out = []
        for pid in descendants(self.pid):
            st = _stat(pid)
            if st:
                self.known[pid] = st[3]
                out.append((pid, cmdline(pid)))
        return out

    def track(self):
        if self.alive():
            self.processes()

    def kill_leftovers(self):
        """Kill, by pid, any daemon process seen earlier that outlived the daemon."""
        for pid, start in list(self.known.items()):
            st = _stat(pid)
            if st and st[3] == start and cmdline(pid).startswith("vionetd: "):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.known.pop(pid, None)

    def restart(self):
        self.restarts += 1
        self._stop()
        self._start()

    def healthy(self):
        if not self.alive() or self.bystander is None or not self.bystander.healthy:
            return False
        try:
            old = self.bystander.vm.fe.sock.gettimeout()
            self.bystander.vm.fe.sock.settimeout(2)
            try:
                self.bystander.handshake()
            finally:
                self.bystander.vm.fe.sock.settimeout(old)
            tag = self.bystander.send(timeout=2)
        except Exception:               # noqa: BLE001
            return False
        return self.sniffer.wait(tag, 2)

    def ensure(self):
        """A live daemon, a healthy bystander and interfaces left in a good
        state by the last test; otherwise start the daemon afresh."""
        self.peer.announce()
        if self.dirty or not self.healthy():
            self.restart()
        self.track()

    def monitor(self, **kw):
        return Monitor(self, **kw)

    # ---- the attacked interface --------------------------------------------

    def good_vm(self, name, timeout=15.0, mem_size=4 << 20):
        """A TestVM that negotiated on name's socket, retried until timeout."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                return TestVM(self.path(name), mem_size=mem_size)
            except (vmm.FrontendError, OSError) as e:
                last = e
            time.sleep(0.2)
        raise TimeoutError("no good VMM could negotiate on %s in %.0f s: %r"
                           % (name, timeout, last))

    def recover(self, name, timeout=15.0):
        """None if a good VMM negotiates on name and moves frames both ways
        within timeout (polling), else what failed."""
        deadline = time.monotonic() + timeout
        last = None
        n = 0
        while time.monotonic() < deadline:
            n += 1
            try:
                vm = self.good_vm(name, max(0.5, deadline - time.monotonic()))
            except TimeoutError as e:
                last = e
                break
            try:
                tag = b"HVT:rec:%d:%d:" % (os.getpid(), time.monotonic_ns())
                since = time.monotonic()
                Sender(vm, VIC_MAC).send(tag, timeout=3)
                if not self.sniffer.wait(tag, 3, since):
                    raise AssertionError("its TX frame did not reach the far side")
                vm.post_rx(64, 2048)
                rtag = b"HVT:rx:%d:" % time.monotonic_ns()
                self.peer.send(tagged(rtag, PEER_MAC, BROADCAST))
                got = False
                rx_deadline = time.monotonic() + 3
                while not got and time.monotonic() < rx_deadline:
                    for _, frame in vm.receive(1, timeout=max(0.05, rx_deadline - time.monotonic())):
                        got = got or rtag in frame
                if not got:
                    raise AssertionError("a broadcast from the far side did not reach it")
                return None
            except Exception as e:          # noqa: BLE001
                last = e
            finally:
                vm.close()
            time.sleep(0.2)
        return "%s did not recover in %.0f s (%d attempts): %r" % (name, timeout, n, last)

    def log_tail(self, lines=30):
        try:
            return "\n".join(self.d.log().splitlines()[-lines:])
        except Exception:                   # noqa: BLE001
            return ""


def closed_by_peer(sock, timeout):
    """True if the other end closes sock within timeout (what arrives
    before is read and dropped)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(min(left, 1.0))
        try:
            if sock.recv(65536) == b"":
                return True
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
        except OSError:
            return True


class _Region:
    """A region as vmm.Frontend.negotiate wants one, over any fd: its
    fields may lie about the fd (mmap_offset, size)."""

    def __init__(self, fd, size, mmap_offset=0, guest_addr=0x100000,
                 user_addr=0x7f0000100000):
        self.fd, self.size = fd, size
        self.guest_addr, self.user_addr = guest_addr, user_addr
        self.region = (guest_addr, size, user_addr, mmap_offset)

    def contains(self, gpa, n=1):
        return self.guest_addr <= gpa and gpa + n <= self.guest_addr + self.size

    def gpa_to_user(self, gpa):
        return self.user_addr + gpa - self.guest_addr


def bad_region_frontend(path, mmap_offset=0, shrink_to=None, size=1 << 20):
    """(Frontend, memfd): a full negotiation on path whose one region is a
    memfd mapped at mmap_offset, or a memfd of shrink_to bytes while the
    region says size; both rings then kicked. The caller closes both."""
    fd = os.memfd_create("hostile-region", 0)
    try:
        os.ftruncate(fd, size + mmap_offset if shrink_to is None else shrink_to)
        fe = vmm.Frontend.connect(path, timeout=5)
    except BaseException:
        os.close(fd)
        raise
    try:
        fe.negotiate([_Region(fd, size, mmap_offset)],
                     vmm.SplitLayout(0x100000 + size // 2, 64))
        for i in (0, 1):
            with contextlib.suppress(OSError):
                fe.kick_ring(i)
    except (vmm.FrontendError, OSError):
        pass                # refused on the way (failure ack, or closed): fine too
    except BaseException:
        fe.close()
        os.close(fd)
        raise
    return fe, fd


def reconnect_loop(path, count=None, seconds=60.0):
    """connect/close as fast as possible, count times or for seconds."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end and (count is None or n < count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError:
            pass
        s.close()
        n += 1
    return n
