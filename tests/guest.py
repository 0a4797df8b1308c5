"""guest.py: boot the vionetd test guest under QEMU and collect its results.

The guest (scripts/guest-image.sh, guest/init) is a kernel plus a generic
initramfs; what it does is on its kernel command line, and it reports on
the serial console with lines

    VIONET-RESULT key=value     (results, parsed into a dict)
    VIONET-DONE rc=N            (the end; N failed plans)

then powers off.  This module builds the QEMU command line (machine,
shared memfd memory that vhost-user needs, kernel, netdev, device), runs
QEMU (inside a network namespace when asked, so a tap is opened by name
there), watches the serial log and always kills QEMU at the end.

Invariants: every wait is bounded by a deadline; Guest.stop() (also run
by the context manager and on every error) leaves no QEMU behind; the
whole serial log is kept and quoted in every failure message.

Facts this relies on (measured on the CI machine, see the brief):
- /dev/kvm may exist yet be unable to boot a stock kernel: accel() probes
  once and caches "kvm" or "tcg" in guest/out/accel; VIONETD_ACCEL=kvm|tcg
  overrides it.
- QEMU 7.2 crashes under TCG when a vhost-user virtio-net-pci starts with
  MSI-X: the device gets vectors=0 there.
- QEMU's own tap backend under TCG stalls TCP unless event_idx=off.
"""

import argparse
import base64
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "guest", "out")
KERNELS = ("6.12", "6.1")
QEMUS = ("10", "7.2")
ACCEL_CACHE = os.path.join(OUT, "accel")
RESULT_RE = re.compile(r"VIONET-RESULT ([A-Za-z0-9_.-]+)=(\S*)")
DONE_RE = re.compile(r"VIONET-DONE rc=(\d+)")
# The kernel command line is at most 2048 bytes on x86 (COMMAND_LINE_SIZE).
CMDLINE_MAX = 2000


class GuestError(Exception):
    """The guest did not finish as it should; the message quotes its log."""


def images_built():
    """True when scripts/guest-image.sh has produced everything we boot."""
    need = [qemu_command("10")[0]]
    for k in KERNELS:
        need += list(image_paths(k))
    return all(os.path.exists(p) for p in need)


def image_paths(kernel):
    """(vmlinuz, initrd) of a guest kernel: "6.12" or "6.1"."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, not {kernel!r}")
    return (os.path.join(OUT, f"vmlinuz-{kernel}"),
            os.path.join(OUT, f"initrd-{kernel}.gz"))


def qemu_command(version):
    """The QEMU binary and its -L data directories for "10" or "7.2".

    QEMU 10 is unpacked from bookworm-backports under guest/out/qemu10 and
    finds its own firmware there first (newer SeaBIOS too), then falls back
    to its built-in path (the system's ipxe, seabios)."""
    if version == "10":
        q = os.path.join(OUT, "qemu10", "usr")
        return [os.path.join(q, "bin", "qemu-system-x86_64"),
                "-L", os.path.join(q, "share", "qemu"),
                "-L", os.path.join(q, "share", "seabios")]
    if version == "7.2":
        return ["/usr/bin/qemu-system-x86_64"]
    raise ValueError(f"qemu must be one of {QEMUS}, not {version!r}")


def _kvm_opens():
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def accel(probe_timeout=20.0):
    """"kvm" or "tcg": VIONETD_ACCEL if set, else a cached one-time probe.

    The probe boots the 6.12 guest with KVM and no network and waits for
    its first result line; anything else (QEMU refusing, a silent hang)
    means TCG."""
    env = os.environ.get("VIONETD_ACCEL")
    if env in ("kvm", "tcg"):
        return env
    if env:
        raise ValueError(f"VIONETD_ACCEL must be kvm or tcg, not {env!r}")
    try:
        with open(ACCEL_CACHE) as f:
            cached = f.read().strip()
        if cached in ("kvm", "tcg"):
            return cached
    except OSError:
        pass
    if not images_built():
        raise GuestError("guest images missing: run scripts/guest-image.sh")
    found = "tcg"
    if _kvm_opens():
        g = Guest(kernel="6.12", qemu="10", netdev=None, accel="kvm",
                  timeout=probe_timeout)
        try:
            g.start()
            # This machine's paravirtual KVM fails with "KVM internal
            # error" on a stock kernel and then sits paused.
            g.wait_for(r"VIONET-RESULT boot_seconds=", probe_timeout,
                       fail_stderr=r"KVM internal error")
            found = "kvm"
        except GuestError:
            pass
        finally:
            g.stop()
    os.makedirs(OUT, exist_ok=True)
    tmp = f"{ACCEL_CACHE}.{os.getpid()}"    # parallel probes may race
    with open(tmp, "w") as f:
        f.write(found + "\n")
    os.replace(tmp, ACCEL_CACHE)
    return found


@dataclasses.dataclass
class Tap:
    """QEMU's own tap backend (vhost off: the host has no vhost-net)."""
    ifname: str

    def args(self, qemu):
        return ["-netdev", f"tap,id=n0,ifname={self.ifname},script=no,"
                "downscript=no,vhost=off"]


@dataclasses.dataclass
class VhostUser:
    """A vhost-user backend (vionetd) listening on a unix socket."""
    path: str
    reconnect: int | None = None     # seconds; QEMU retries a lost backend
    queues: int | None = None        # queue pairs (the device needs mq=on too)
    server: bool = False             # QEMU listens at path; the backend connects

    def args(self, qemu):
        chardev = f"socket,id=c0,path={self.path}"
        if self.server:
            chardev += ",server=on,wait=on"
        if self.reconnect is not None:
            # QEMU 9.2 deprecated "reconnect" for "reconnect-ms".
            if qemu == "10":
                chardev += f",reconnect-ms={self.reconnect * 1000}"
            else:
                chardev += f",reconnect={self.reconnect}"
        netdev = "vhost-user,id=n0,chardev=c0"
        if self.queues:
            netdev += f",queues={self.queues}"
        return ["-chardev", chardev, "-netdev", netdev]


def device_defaults(qemu, netdev, acc):
    """The virtio-net-pci properties a netdev needs here (callers may
    override any; a value of None removes one)."""
    props = {"netdev": "n0", "mac": "52:54:00:12:34:56",
             "romfile": ""}   # no PXE option ROM: we boot with -kernel
    if isinstance(netdev, VhostUser) and qemu == "7.2" and acc == "tcg":
        props["vectors"] = "0"
    if isinstance(netdev, Tap) and acc == "tcg":
        props["event_idx"] = "off"
    return props


class Guest:
    """One test VM.  Use as a context manager, or call stop() yourself.

    kernel      "6.12" (knows USO) or "6.1" (the older guest)
    qemu        "10" or "7.2"
    netdev      Tap(...), VhostUser(...) or None (no network device)
    device_props  virtio-net-pci properties over device_defaults()
    plan        names of guest/plans/*.sh to run, in order
    params      more vionet.KEY=VALUE for the plans (ip, host, iperf_secs...)
    snippet     a shell snippet run after the plans (sent base64-encoded)
    netns       run QEMU in this network namespace (a tap is opened there)
    timeout     seconds from start() to VIONET-DONE
    kernel_args more kernel command line words, verbatim (e.g. "loglevel=7"
                to see the kernel's messages, which "quiet" hides)
    qmp         open a QMP socket (qmp.sock beside the serial log; its
                path is self.qmp_path once started)
    incoming    a migration URI ("unix:PATH"): QEMU waits for the state
                of a migrating VM there instead of booting
    """

    def __init__(self, kernel="6.12", qemu="10", netdev=None,
                 device_props=None, plan=(), params=None, snippet=None,
                 netns=None, timeout=300.0, accel=None, mem_mb=512, smp=2,
                 extra_args=(), kernel_args=(), qmp=False, incoming=None):
        self.kernel, self.qemu, self.netdev = kernel, qemu, netdev
        self.device_props = dict(device_props or {})
        self.plan, self.params = list(plan), dict(params or {})
        self.snippet, self.netns, self.timeout = snippet, netns, timeout
        self._accel, self.mem_mb, self.smp = accel, mem_mb, smp
        self.extra_args = list(extra_args)
        self.kernel_args = list(kernel_args)
        self.qmp, self.incoming = qmp, incoming
        self.qmp_path = None
        self.proc = None
        self.dir = None
        self.serial = ""
        self.started = None
        self.boot_seconds = None   # wall time from start to the first result
        self.results = None

    # -- command line ------------------------------------------------------

    @property
    def accel(self):
        if self._accel is None:
            self._accel = accel()
        return self._accel

    def cmdline(self):
        """The kernel command line: console, then vionet.* for guest/init."""
        words = ["console=ttyS0", "panic=1", "quiet"]
        for w in self.kernel_args:
            if not w or any(c.isspace() for c in w) or w.startswith("vionet."):
                raise ValueError(f"bad kernel argument {w!r}")
            words.append(w)
        params = dict(self.params)
        if self.plan:
            params["plan"] = ",".join(self.plan)
        if self.snippet is not None:
            params["sh"] = base64.b64encode(self.snippet.encode()).decode()
        for k, v in params.items():
            v = str(v)
            if not re.fullmatch(r"[a-z0-9_]+", k) or not v or \
                    any(c.isspace() for c in v):
                raise ValueError(f"bad guest parameter {k}={v!r}")
            words.append(f"vionet.{k}={v}")
        line = " ".join(words)
        if len(line) > CMDLINE_MAX:
            raise ValueError(f"kernel command line too long ({len(line)})")
        return line

    def argv(self, serial_path):
        vmlinuz, initrd = image_paths(self.kernel)
        acc = self.accel
        argv = qemu_command(self.qemu) + [
            "-accel", "kvm" if acc == "kvm" else "tcg,thread=multi",
            "-cpu", "host" if acc == "kvm" else "max",
            "-machine", "q35", "-smp", str(self.smp), "-m", f"{self.mem_mb}M",
            # Shared guest memory: a vhost-user backend maps it.
            "-object", f"memory-backend-memfd,id=mem,size={self.mem_mb}M,"
                       "share=on",
            "-numa", "node,memdev=mem",
            "-kernel", vmlinuz, "-initrd", initrd, "-append", self.cmdline(),
            "-nodefaults", "-no-reboot", "-nographic",
            "-monitor", "none", "-serial", f"file:{serial_path}",
        ]
        if self.netdev is not None:
            props = device_defaults(self.qemu, self.netdev, acc)
            props.update(self.device_props)
            dev = ",".join(f"{k}={v}" for k, v in props.items()
                           if v is not None)
            argv += self.netdev.args(self.qemu)
            argv += ["-device", "virtio-net-pci," + dev]
        if self.qmp:
            self.qmp_path = os.path.join(os.path.dirname(serial_path),
                                         "qmp.sock")
            argv += ["-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        if self.incoming:
            argv += ["-incoming", self.incoming]
        argv += self.extra_args
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns] + argv
        return argv

    # -- running -----------------------------------------------------------

    def start(self):
        if self.proc is not None:
            raise RuntimeError("guest already started")
        self.dir = tempfile.mkdtemp(prefix="vionet-guest-")
        self.serial_path = os.path.join(self.dir, "serial.log")
        open(self.serial_path, "w").close()
        self.stderr_path = os.path.join(self.dir, "qemu.stderr")
        self.argv_used = self.argv(self.serial_path)
        with open(self.stderr_path, "w") as err:
            self.started = time.monotonic()
            # ip netns exec execs QEMU: this pid is QEMU's.
            self.proc = subprocess.Popen(
                self.argv_used, stdin=subprocess.DEVNULL,
                stdout=err, stderr=err, start_new_session=True)
        if isinstance(self.netdev, VhostUser) and self.netdev.server:
            self._open_listening_socket(self.netdev.path)
        return self

    def _open_listening_socket(self, path, timeout=30.0):
        """QEMU listens (vionetd's client mode), as root here, so its socket
        is root's, mode 0755. vionetd connects as the VM's uid (vionetd(8),
        LIBVIRT), which that mode shuts out: the test opens it to everyone,
        as a VMM running as the VM's VMM user would not need to."""
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                return              # the test's own wait reports what went wrong
            time.sleep(0.02)
        os.chmod(path, 0o666)

    def _poll_serial(self):
        try:
            with open(self.serial_path, errors="replace") as f:
                self.serial = f.read()
        except OSError:
            pass
        if self.boot_seconds is None and "VIONET-RESULT" in self.serial:
            self.boot_seconds = time.monotonic() - self.started

    def stderr(self):
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()
        except (OSError, AttributeError):
            return ""

    def log(self):
        """Everything known about the run, for failure messages."""
        argv = " ".join(getattr(self, "argv_used", []))
        return (f"accel: {self._accel}\nargv: {argv}\n"
                f"--- qemu stderr ---\n{self.stderr()}\n"
                f"--- serial ---\n{self.serial}")

    def wait_for(self, pattern, timeout, fail_stderr=None):
        """Wait until the serial log matches pattern; return the match.
        fail_stderr: a pattern in QEMU's stderr that means give up now."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            self._poll_serial()
            m = rx.search(self.serial)
            if m:
                return m
            if fail_stderr and re.search(fail_stderr, self.stderr()):
                raise GuestError(f"QEMU reported {fail_stderr!r}\n"
                                 f"{self.log()}")
            if self.proc.poll() is not None:
                self._poll_serial()
                m = rx.search(self.serial)
                if m:
                    return m
                raise GuestError(f"QEMU exited ({self.proc.returncode}) "
                                 f"before {pattern!r}\n{self.log()}")
            if time.monotonic() >= deadline:
                raise GuestError(f"no {pattern!r} within {timeout:.0f}s\n"
                                 f"{self.log()}")
            time.sleep(0.1)

    def wait_done(self, timeout=None):
        """Wait for VIONET-DONE; return the results (strings) plus "rc"."""
        left = self.timeout - (time.monotonic() - self.started)
        m = self.wait_for(DONE_RE.pattern,
                          timeout if timeout is not None else max(left, 1.0))
        res = dict(RESULT_RE.findall(self.serial))
        res["rc"] = int(m.group(1))
        self.results = res
        # poweroff -f follows at once; give QEMU a moment to exit by itself.
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        return res

    def stop(self):
        """Kill QEMU if it still runs, and remove the run's files."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            self._poll_serial()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def elapsed(self):
        return time.monotonic() - self.started


def run(timeout=300.0, **kw):
    """Boot a guest (Guest's keywords), wait at most timeout seconds for
    its results, stop it: the common case.  Returns (results, serial log)."""
    with Guest(timeout=timeout, **kw) as g:
        res = g.wait_done()
        res["_boot_seconds"] = g.boot_seconds
        res["_elapsed"] = g.elapsed()
        res["_accel"] = g.accel
        return res, g.serial


def feature_bit(features, bit):
    """Bit N of /sys/class/net/*/device/features (a string of 0 and 1,
    bit 0 first)."""
    return bit < len(features) and features[bit] == "1"


def main(argv=None):
    """Boot one guest by hand and print its results as JSON, e.g.
    python3 tests/guest.py 6.12 10 --vhost-user /run/vionetd/vm0.sock \
        --plan ping --param ip=10.0.0.2/24 --param host=10.0.0.1"""
    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("kernel", choices=KERNELS)
    ap.add_argument("qemu", choices=QEMUS)
    ap.add_argument("--tap", help="QEMU's own tap backend on this ifname")
    ap.add_argument("--vhost-user", help="vhost-user socket path")
    ap.add_argument("--reconnect", type=int, help="seconds (vhost-user)")
    ap.add_argument("--netns", help="run QEMU in this network namespace")
    ap.add_argument("--plan", default="", help="comma-separated plans")
    ap.add_argument("--param", action="append", default=[],
                    help="KEY=VALUE for vionet.KEY (repeatable)")
    ap.add_argument("--prop", action="append", default=[],
                    help="virtio-net-pci KEY=VALUE (repeatable)")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--log", action="store_true", help="print the serial log")
    a = ap.parse_args(argv)
    netdev = None
    if a.tap:
        netdev = Tap(a.tap)
    elif a.vhost_user:
        netdev = VhostUser(a.vhost_user, a.reconnect)
    res, serial = run(
        timeout=a.timeout, kernel=a.kernel, qemu=a.qemu, netdev=netdev,
        netns=a.netns, plan=[p for p in a.plan.split(",") if p],
        params=dict(kv.split("=", 1) for kv in a.param),
        device_props=dict(kv.split("=", 1) for kv in a.prop))
    if a.log:
        print(serial)
    print(json.dumps(res, indent=1, sort_keys=True))
    return 0 if res["rc"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
