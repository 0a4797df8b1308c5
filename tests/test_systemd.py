"""rc.d/vionetd.service: systemd-analyze verify finds nothing to say about
it, and the daemon runs with only the capabilities its CapabilityBoundingSet
keeps and with no_new_privs (setpriv(1) sets both up as systemd would), its
workers started and its socket given the group asked for."""
import grp
import os
import re
import shutil
import stat
import subprocess
import sys

import pytest

from tests import netns as N
from tests.daemon import Daemon
from tests.testvm import TestVM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(ROOT, "rc.d", "vionetd.service")
VENV_VIONETD = os.path.join(ROOT, ".venv", "bin", "vionetd")


def analyze():
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd; "
                    "scripts/setup.sh installs it)")
    return tool


def verify(tool, text, tmp_path):
    # The unit names /usr/sbin/vionetd; verify checks that each command
    # exists, so the copy names the one this checkout installed.
    path = tmp_path / "vionetd.service"
    path.write_text(text.replace("/usr/sbin/vionetd", VENV_VIONETD))
    return subprocess.run([tool, "verify", "--man=no", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_unit_verifies_clean(tmp_path):
    tool = analyze()
    assert os.access(VENV_VIONETD, os.X_OK), VENV_VIONETD
    text = open(UNIT).read()
    r = verify(tool, text, tmp_path)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stdout + r.stderr
    # the check can fail: a misspelt directive and a missing command are reported
    bad = verify(tool, text.replace("ProtectHome=yes", "ProtectHomes=yes"), tmp_path)
    assert "ProtectHomes" in bad.stderr, bad.stderr
    gone = verify(tool, text.replace("ExecStart=/usr/sbin/vionetd",
                                     "ExecStart=/nonexistent/vionetd"), tmp_path)
    assert gone.returncode != 0 and "/nonexistent/vionetd" in gone.stderr, gone.stderr


def unit_settings():
    out = {}
    for line in open(UNIT):
        m = re.match(r"([A-Za-z]+)=(.*)", line.strip())
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def test_unit_says_what_the_brief_of_a_unit_needs():
    s = unit_settings()
    assert s["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert s["ExecStartPre"] == ["/usr/sbin/vionetd -n -f /etc/vionetd.conf"]
    for key, value in (("ProtectSystem", "full"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("NoNewPrivileges", "yes")):
        assert s[key] == [value], key
    caps = set(s["CapabilityBoundingSet"][0].split())
    assert caps == {"CAP_NET_ADMIN", "CAP_SETUID", "CAP_SETGID", "CAP_SYS_CHROOT",
                    "CAP_CHOWN", "CAP_FOWNER", "CAP_KILL", "CAP_DAC_OVERRIDE"}


class ConfinedDaemon(Daemon):
    """The daemon under setpriv: the unit's capability bounding set and
    no_new_privs, otherwise as tests/daemon.py starts it."""

    def start(self):
        caps = unit_settings()["CapabilityBoundingSet"][0].split()
        bset = "-all," + ",".join("+" + c[4:].lower() for c in caps)
        cmd = ["ip", "netns", "exec", self.ns, "setpriv", "--no-new-privs",
               "--bounding-set", bset, "--inh-caps", "-all",
               sys.executable, "-m", "vionetd.main", "-d", "-v", "-f", self.conf]
        env = dict(os.environ, PYTHONPATH=ROOT)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, cwd=ROOT)
        self.wait_socket(self.ctl_socket)
        return self


@pytest.mark.root
def test_daemon_runs_with_the_units_capabilities_only(tmp_path):
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    conf = ('socket "@CTL@"\nvm "c1" {\n interface {\n  socket "@DIR@/c1.sock" '
            'group nogroup mode 0660\n }\n}\n')
    os.chmod(tmp_path, 0o755)
    with N.netns("vs") as ns:
        d = ConfinedDaemon(conf, ns, str(tmp_path))
        try:
            d.start()
            sock = str(tmp_path / "c1.sock")
            d.wait_socket(sock)
            st = os.stat(sock)
            assert st.st_gid == grp.getgrnam("nogroup").gr_gid
            assert stat.S_IMODE(st.st_mode) == 0o660
            pid = d.proc.pid
            status = open("/proc/%d/status" % pid).read()
            assert re.search(r"NoNewPrivs:\s+1", status), status
            bnd = int(re.search(r"CapBnd:\s+([0-9a-f]+)", status).group(1), 16)
            assert bnd & (1 << 21) == 0            # no CAP_SYS_ADMIN
            with TestVM(sock) as vm:
                assert vm.features
                show = d.ctl("show", "c1").stdout
            assert "running" in show, show
            # both workers answered for their counters, and none died
            counters = d.stats()["c1/0"]["counters"]
            assert any(k.startswith("rx_") for k in counters), counters
            assert any(k.startswith("tx_") for k in counters), counters
            log = d.log()
            assert "worker" not in log or "killed" not in log, log
            assert "Operation not permitted" not in log, log
        finally:
            d.stop()
