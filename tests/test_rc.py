"""rc.d/vionetd, the rc script, driving the real daemon.

The script is run with sh, its environment pointing at this tree's daemon
(`python -m vionetd.main`), a configuration with no VM at all (so nothing
touches the network), a pidfile and a control socket in a temporary
directory. The daemon detaches, as it does at boot, so it is not our child:
it is found through the pidfile and /proc, and every test kills whatever it
started in a finally, whatever the script did.

Static checks of the script (sh -n, dash -n, checkbashisms and shellcheck
where installed) are here too.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

pytestmark = pytest.mark.root

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "rc.d", "vionetd")
TIMEOUT = 20          # seconds, bound of any one script run


# ---- helpers ----------------------------------------------------------------

def alive(pid):
    """True if pid is a process that has not exited (zombies count as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def read_pid(path):
    with open(path) as f:
        return int(f.read().strip())


class Env:
    """A temporary directory with a configuration, and the script's environment."""

    def __init__(self, tmp):
        self.dir = tmp
        self.conf = os.path.join(tmp, "vionetd.conf")
        self.pidfile = os.path.join(tmp, "vionetd.pid")
        self.socket = os.path.join(tmp, "ctl.sock")
        self.write_conf('socket "%s"\n' % self.socket)
        self.env = dict(os.environ,
                        PYTHONPATH=ROOT,
                        VIONETD="%s -m vionetd.main" % sys.executable,
                        VIONETD_CONF=self.conf,
                        VIONETD_PIDFILE=self.pidfile,
                        VIONETD_FLAGS="-v",
                        VIONETD_TIMEOUT="10")
        self.pids = set()           # every daemon pid seen, for the final kill

    def write_conf(self, text):
        with open(self.conf, "w") as f:
            f.write(text)

    def rc(self, action, **env):
        p = subprocess.run(["sh", SCRIPT, action], capture_output=True, text=True,
                           timeout=TIMEOUT, env=dict(self.env, **env), cwd=self.dir)
        if os.path.exists(self.pidfile):
            try:
                self.pids.add(read_pid(self.pidfile))
            except ValueError:
                pass
        return p

    def ctl(self, *args):
        return subprocess.run([sys.executable, "-m", "vionetd.vionetctl", "-s", self.socket,
                               *args], capture_output=True, text=True, timeout=TIMEOUT,
                              env=dict(os.environ, PYTHONPATH=ROOT))

    def kill_all(self):
        """SIGKILL every daemon seen and its workers (they do not die with it)."""
        for pid in self.pids:
            if not (alive(pid) and "vionetd" in cmdline(pid)):
                continue
            for child in children(pid):
                if cmdline(child).startswith("vionetd:"):
                    os.kill(child, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not alive(pid), 5)


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        try:
            with open("/proc/%s/stat" % d) as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    return out


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture
def env():
    tmp = tempfile.mkdtemp(prefix="vionetd-rc-%d-" % os.getpid())
    e = Env(tmp)
    try:
        yield e
    finally:
        try:
            e.kill_all()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def ok(p):
    return "exit %d\nstdout: %s\nstderr: %s" % (p.returncode, p.stdout, p.stderr)


# ---- the script as a file -----------------------------------------------------

def test_script_is_posix_sh():
    for shell in ("sh", "dash", "busybox"):
        path = shutil.which(shell)
        if path is None:
            continue
        argv = [path, "sh", "-n", SCRIPT] if shell == "busybox" else [path, "-n", SCRIPT]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        assert p.returncode == 0 and p.stderr == "", (shell, p.stderr)
    if shutil.which("checkbashisms"):
        p = subprocess.run(["checkbashisms", SCRIPT], capture_output=True, text=True,
                           timeout=30)
        assert p.returncode == 0, p.stdout + p.stderr
    if shutil.which("shellcheck"):
        p = subprocess.run(["shellcheck", "-s", "sh", SCRIPT], capture_output=True,
                           text=True, timeout=30)
        assert p.returncode == 0, p.stdout + p.stderr


def test_usage(env):
    for argv in ([], ["bogus"]):
        p = subprocess.run(["sh", SCRIPT, *argv], capture_output=True, text=True,
                           timeout=TIMEOUT, env=env.env)
        assert p.returncode == 2 and "usage:" in p.stderr, ok(p)


# ---- check ----------------------------------------------------------------------

def test_config_without_vm_is_valid(env):
    # the lifecycle test below relies on it: a daemon that serves nothing
    from vionetd import config
    c = config.load(env.conf)
    assert c.vms == {} and c.socket == env.socket


def test_check(env):
    p = env.rc("check")
    assert p.returncode == 0 and "configuration OK" in p.stdout, ok(p)
    env.write_conf('socket "%s"\nvm "a" {\n\tinterface { mtu 1 }\n}\n' % env.socket)
    p = env.rc("check")
    assert p.returncode == 1, ok(p)
    assert "%s:3:" % env.conf in p.stderr, ok(p)
    assert not os.path.exists(env.pidfile)


def test_start_refuses_bad_config(env):
    env.write_conf('socket "%s"\nvm {\n' % env.socket)
    p = env.rc("start")
    assert p.returncode == 1, ok(p)
    assert "%s:2:" % env.conf in p.stderr and "start refused" in p.stderr, ok(p)
    assert not os.path.exists(env.pidfile) and not os.path.exists(env.socket)
    assert env.rc("status").returncode == 3


# ---- the life of a daemon -----------------------------------------------------

def test_lifecycle(env):
    p = env.rc("status")
    assert p.returncode == 3 and "not running" in p.stdout, ok(p)

    # start: pidfile, a live detached parent, an answering control socket
    p = env.rc("start")
    assert p.returncode == 0, ok(p)
    pid = read_pid(env.pidfile)
    assert alive(pid) and "vionetd: parent" in cmdline(pid)
    assert ("(pid %d)" % pid) in p.stdout
    assert os.getppid() != pid and os.getpid() != pid
    assert wait_for(lambda: os.path.exists(env.socket)), "no control socket"
    c = env.ctl("status")
    assert c.returncode == 0 and c.stdout.split()[:2] == ["VM", "STATE"], ok(c)

    # start again: refused, the first daemon untouched
    p = env.rc("start")
    assert p.returncode == 1 and "already running (pid %d)" % pid in p.stderr, ok(p)
    assert read_pid(env.pidfile) == pid and alive(pid)

    p = env.rc("status")
    assert p.returncode == 0 and "running (pid %d)" % pid in p.stdout, ok(p)
    assert env.rc("check").returncode == 0

    # reload of a good file: SIGHUP, the same daemon goes on serving
    p = env.rc("reload")
    assert p.returncode == 0 and "reloading" in p.stdout, ok(p)
    time.sleep(0.3)
    assert alive(pid) and read_pid(env.pidfile) == pid
    assert env.ctl("status").returncode == 0

    # reload of a broken file: the script refuses, the daemon keeps running
    env.write_conf('socket "%s"\nuser "root"\n' % env.socket)
    p = env.rc("reload")
    assert p.returncode == 1, ok(p)
    assert "%s:2:" % env.conf in p.stderr and "reload refused" in p.stderr, ok(p)
    assert alive(pid) and read_pid(env.pidfile) == pid
    assert env.ctl("status").returncode == 0
    env.write_conf('socket "%s"\n' % env.socket)

    # stop: the process, its pidfile and its control socket are gone
    p = env.rc("stop")
    assert p.returncode == 0 and "stopped" in p.stdout, ok(p)
    assert not alive(pid)
    assert not os.path.exists(env.pidfile)
    assert not os.path.exists(env.socket)
    assert sorted(os.listdir(env.dir)) == ["vionetd.conf"]

    p = env.rc("status")
    assert p.returncode == 3 and "not running" in p.stdout, ok(p)
    p = env.rc("stop")
    assert p.returncode == 0 and "not running" in p.stdout, ok(p)
    p = env.rc("reload")
    assert p.returncode == 1 and "not running" in p.stderr, ok(p)


def test_restart(env):
    assert env.rc("start").returncode == 0
    first = read_pid(env.pidfile)
    p = env.rc("restart")
    assert p.returncode == 0, ok(p)
    second = read_pid(env.pidfile)
    assert second != first and not alive(first) and alive(second)
    assert wait_for(lambda: env.ctl("status").returncode == 0)
    assert env.rc("stop").returncode == 0
    assert not alive(second) and not os.path.exists(env.socket)


def test_relative_config_path(env):
    # the daemon changes to / when it detaches: the script must hand it an
    # absolute path, or a reload would read another file (or none)
    rel = dict(VIONETD_CONF="vionetd.conf", VIONETD_PIDFILE="vionetd.pid")
    p = env.rc("start", **rel)
    assert p.returncode == 0, ok(p)
    pid = read_pid(env.pidfile)
    p = env.rc("reload", **rel)
    assert p.returncode == 0, ok(p)
    time.sleep(0.3)
    assert alive(pid)
    # the daemon's own reload names the file it reads: break it and ask
    env.write_conf('socket "%s"\nvm {\n' % env.socket)
    c = env.ctl("reload")
    assert c.returncode == 1 and "%s:2:" % env.conf in c.stderr, ok(c)
    assert alive(pid)
    assert env.rc("stop", **rel).returncode == 0
    assert not alive(pid) and not os.path.exists(env.pidfile)


# ---- pidfiles that lie --------------------------------------------------------

def test_stale_pidfile_of_a_dead_process(env):
    p = subprocess.Popen(["true"])
    p.wait(10)
    with open(env.pidfile, "w") as f:
        f.write("%d\n" % p.pid)
    s = env.rc("status")
    assert s.returncode == 1 and "stale pidfile" in s.stdout, ok(s)
    s = env.rc("stop")
    assert s.returncode == 0 and "stale pidfile removed" in s.stdout, ok(s)
    assert not os.path.exists(env.pidfile)


def test_pidfile_naming_another_process(env):
    # after a crash and a reboot the pid may belong to anything: never signal it
    other = subprocess.Popen(["sleep", "30"])
    try:
        with open(env.pidfile, "w") as f:
            f.write("%d\n" % other.pid)
        assert env.rc("status").returncode == 1
        s = env.rc("stop")
        assert s.returncode == 0, ok(s)
        assert other.poll() is None, "the script signalled an unrelated process"
        assert not os.path.exists(env.pidfile)
        # and start goes ahead, replacing the stale pidfile
        with open(env.pidfile, "w") as f:
            f.write("%d\n" % other.pid)
        s = env.rc("start")
        assert s.returncode == 0, ok(s)
        pid = read_pid(env.pidfile)
        assert pid != other.pid and alive(pid)
        assert env.rc("stop").returncode == 0 and not alive(pid)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait(10)


def test_stop_kills_a_daemon_that_ignores_sigterm(env):
    # a stand-in with "vionetd" in its command line that ignores SIGTERM:
    # stop must give up waiting after VIONETD_TIMEOUT and SIGKILL it
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    stub = subprocess.Popen([sys.executable, "-c", code, "vionetd"])
    try:
        assert wait_for(lambda: "vionetd" in cmdline(stub.pid))
        time.sleep(0.2)   # let it install the handler
        with open(env.pidfile, "w") as f:
            f.write("%d\n" % stub.pid)
        assert env.rc("status").returncode == 0
        t0 = time.monotonic()
        s = env.rc("stop", VIONETD_TIMEOUT="1")
        took = time.monotonic() - t0
        assert s.returncode == 0 and "SIGKILL" in s.stderr, ok(s)
        assert stub.wait(5) == -signal.SIGKILL
        assert 1.0 <= took < 8, took
        assert not os.path.exists(env.pidfile)
    finally:
        if stub.poll() is None:
            stub.kill()
            stub.wait(10)


# ---- reload really rereads the file -------------------------------------------

def titled(title):
    """Pids of live processes whose command line is exactly title."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and cmdline(int(d)).strip() == title and alive(int(d)):
            out.append(int(d))
    return out


def test_reload_starts_a_new_vm(env, netns):
    # The daemon runs in a namespace of the test's own, so the tap that the
    # reload creates lives and dies there. A VM added to the file before
    # SIGHUP must appear: its vhost-user socket, its line in vionetctl
    # status, its two workers under their documented process titles.
    from tests import netns as nsmod
    ns = netns("rc")
    vm = "rc%d" % os.getpid()
    tap = nsmod.unique("rct")
    vsock = os.path.join(env.dir, "vm.sock")
    p = subprocess.run(["ip", "netns", "exec", ns, "sh", SCRIPT, "start"], capture_output=True,
                       text=True, timeout=TIMEOUT, env=env.env)
    assert p.returncode == 0, ok(p)
    pid = read_pid(env.pidfile)
    env.pids.add(pid)
    env.write_conf('socket "%s"\nvm "%s" {\n\tsocket "%s"\n\tinterface "%s" { }\n}\n'
                   % (env.socket, vm, vsock, tap))
    p = env.rc("reload")
    assert p.returncode == 0, ok(p)
    assert wait_for(lambda: os.path.exists(vsock)), "reload did not start the VM"
    c = env.ctl("status")
    assert c.returncode == 0, ok(c)
    assert [line.split()[:4] for line in c.stdout.splitlines()[1:]] == \
        [[vm, "waiting", vsock, tap]], c.stdout
    assert wait_for(lambda: titled("vionetd: rx %s/0" % vm) and titled("vionetd: tx %s/0" % vm))
    assert titled("vionetd: parent").count(pid) == 1
    assert read_pid(env.pidfile) == pid

    p = env.rc("stop")
    assert p.returncode == 0, ok(p)
    assert not alive(pid) and not os.path.exists(vsock) and not os.path.exists(env.socket)
    assert wait_for(lambda: not titled("vionetd: rx %s/0" % vm)
                    and not titled("vionetd: tx %s/0" % vm)), "workers left behind"
    links = nsmod.run("ip", "netns", "exec", ns, "ip", "-o", "link").stdout
    assert tap not in links
