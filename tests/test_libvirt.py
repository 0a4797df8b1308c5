"""libvirt on vionetd: a domain built from etc/libvirt/vionetd-interface.xml
boots the project's guest on a vionetd interface, pings and moves a file
each way whose sha256 matches at both ends, and is destroyed and undefined.

Debian's libvirt is installed by scripts/libvirt.sh (also run by
scripts/setup.sh). Where no libvirt daemon answers (no systemd to start
one), the fixture starts virtlogd and libvirtd in the background and stops
them at the end; daemons it did not start are used and left alone.

QEMU is Debian's 7.2 (the one libvirt 9.0 knows), under TCG: the NIC gets
vectors=0 through <qemu:override> (QEMU 7.2 crashes under TCG when a
vhost-user virtio-net-pci starts with MSI-X, see tests/guest.py). QEMU runs
as user libvirt-qemu, group libvirt-qemu, and is also in group kvm (Debian's
defaults), so vionetd's socket is given "socket group kvm".

Two tests:
- mode='client' (QEMU connects, vionetd listens): the whole run;
- mode='server' (QEMU listens, vionetd connects, "socket PATH connect"):
  skipped while the daemon has no connecting side (no caller of
  vmmsocket.connect in vionetd/).
"""
import glob
import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET

import pytest

from tests import guest
from tests import guest_peer
from tests import netns as N
from tests.daemon import daemon
from tests.test_guest_image import Peers

pytestmark = [pytest.mark.guest, pytest.mark.root]

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SNIPPET = os.path.join(ROOT, "etc", "libvirt", "vionetd-interface.xml")
URI = "qemu:///system"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
EMULATOR = "/usr/bin/qemu-system-x86_64"
HOST_IP, GUEST_IP = "10.0.0.1", "10.0.0.2"
MAC = "52:54:00:12:34:56"
XFER_BYTES = 1024 * 1024
BOOT_TIMEOUT = 600

CONF = """socket "@CTL@"
socket group kvm mode 0660
vm "lv1" {
    interface "vlv0" {
        socket "%s"%s
        lladdr 52:54:00:12:34:56
    }
}
"""


# libvirt 9.0 probes QEMU's capabilities again on most calls on a host whose
# /dev/kvm only root may open (its cache says KVM, its check says the QEMU
# user cannot use it): each call may take a minute here.
VIRSH_TIMEOUT = 300


def virsh(*args, timeout=VIRSH_TIMEOUT, check=True):
    r = subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError("virsh %s: %s%s" % (" ".join(args), r.stdout, r.stderr))
    return r


def answering():
    try:
        return virsh("version", timeout=120, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Daemons:
    """libvirt's daemons: the running ones, or ours (started, then stopped)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="vionetd-libvirtd-")
        self.ours = []                 # (name, pid)

    def start(self):
        if answering():
            return self
        for name in ("virtlogd", "libvirtd"):
            pidfile = os.path.join(self.dir, name + ".pid")
            subprocess.run([name, "--daemon", "--pid-file", pidfile], check=True,
                           timeout=30, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not os.path.exists(pidfile):
                time.sleep(0.1)
            with open(pidfile) as f:
                self.ours.append((name, int(f.read().strip())))
        deadline = time.monotonic() + 60
        while not answering():
            if time.monotonic() > deadline:
                raise AssertionError("libvirtd did not answer within 60s")
            time.sleep(0.5)
        return self

    def stop(self):
        for name, pid in reversed(self.ours):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 15
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.ours = []
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def libvirt():
    if os.geteuid() != 0:
        pytest.skip("libvirt's system daemon needs root")
    subprocess.run(["sh", os.path.join(ROOT, "scripts", "libvirt.sh")], check=True,
                   timeout=1800)
    subprocess.run(["sh", os.path.join(ROOT, "scripts", "guest-image.sh")], check=True,
                   timeout=1800)
    assert guest.images_built()
    d = Daemons()
    try:
        yield d.start()
    finally:
        d.stop()


def qemu_group():
    """The group libvirt's QEMU runs as, which owns the sockets it makes:
    the libvirt-qemu user's own group where it has one (Debian), else kvm."""
    try:
        return grp.getgrnam("libvirt-qemu").gr_name
    except KeyError:
        return "kvm"


def qemu_uid_gid():
    pw = pwd.getpwnam("libvirt-qemu")
    return pw.pw_uid, grp.getgrnam("kvm").gr_gid


def domain_xml(name, workdir, sock, mode, cmdline):
    """The test domain: the snippet's memoryBacking and interface, a
    direct kernel boot of the 6.12 guest, its serial console in a file."""
    ET.register_namespace("qemu", QEMU_NS)
    snip = ET.parse(SNIPPET).getroot()
    iface = snip.find("devices/interface")
    iface.find("mac").set("address", MAC)
    src = iface.find("source")
    src.set("path", sock)
    src.set("mode", mode)
    if mode == "server":
        for r in src.findall("reconnect"):     # a client's setting only
            src.remove(r)
    ET.SubElement(iface, "alias", name="ua-vionet0")
    ET.SubElement(iface, "rom", enabled="no")  # no PXE option ROM: -kernel boot

    dom = ET.Element("domain", type="qemu")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = "512"
    ET.SubElement(dom, "vcpu").text = "1"
    dom.append(snip.find("memoryBacking"))
    os_ = ET.SubElement(dom, "os")
    ET.SubElement(os_, "type", arch="x86_64", machine="q35").text = "hvm"
    vmlinuz, initrd = guest.image_paths("6.12")
    for tag, src_path in (("kernel", vmlinuz), ("initrd", initrd)):
        dst = os.path.join(workdir, os.path.basename(src_path))
        shutil.copy(src_path, dst)              # libvirt may relabel what it boots
        os.chmod(dst, 0o644)
        ET.SubElement(os_, tag).text = dst
    ET.SubElement(os_, "cmdline").text = cmdline
    ET.SubElement(dom, "cpu", mode="maximum", check="none")
    ET.SubElement(ET.SubElement(dom, "features"), "acpi")
    for ev in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(dom, ev).text = "destroy"
    dev = ET.SubElement(dom, "devices")
    ET.SubElement(dev, "emulator").text = EMULATOR
    dev.append(iface)
    serial = ET.SubElement(dev, "serial", type="file")
    ET.SubElement(serial, "source", path=os.path.join(workdir, "serial.log"))
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(dev, "memballoon", model="none")
    # QEMU 7.2 under TCG: no MSI-X on a vhost-user virtio-net-pci
    ov = ET.SubElement(dom, "{%s}override" % QEMU_NS)
    qd = ET.SubElement(ov, "{%s}device" % QEMU_NS, alias="ua-vionet0")
    fe = ET.SubElement(qd, "{%s}frontend" % QEMU_NS)
    ET.SubElement(fe, "{%s}property" % QEMU_NS, name="vectors", type="unsigned", value="0")
    return ET.tostring(dom, encoding="unicode")


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def domstate(name):
    """The domain's state, from libvirt's status file when there is one
    (no virsh call, which may take long here), else from virsh."""
    status = "/run/libvirt/qemu/%s.xml" % name
    if os.path.exists(status):
        return "running"
    return virsh("domstate", name, check=False).stdout.strip()


def wait_serial(path, pattern, deadline, name):
    rx = re.compile(pattern)
    while True:
        text = read(path)
        m = rx.search(text)
        if m:
            return m, text
        state = domstate(name)
        if state not in ("running", "paused", "in shutdown"):
            text = read(path)
            m = rx.search(text)
            if m:
                return m, text
            raise AssertionError("domain %s is %r before %r\n%s" % (name, state, pattern, text))
        if time.monotonic() > deadline:
            raise AssertionError("no %r within the time allowed\n%s" % (pattern, text))
        time.sleep(0.5)


def qemu_process(name):
    """(pid, uid, groups) of the domain's QEMU: groups are its group and
    supplementary groups."""
    for status in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            cmd = open(status, "rb").read().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"qemu-system-x86_64") and \
                any(("guest=%s," % name).encode() in a for a in cmd):
            pid = int(status.split("/")[2])
            st = open("/proc/%d/status" % pid).read()
            uid = int(re.search(r"Uid:\s+(\d+)", st).group(1))
            gid = int(re.search(r"Gid:\s+(\d+)", st).group(1))
            groups = {int(g) for g in re.search(r"Groups:(.*)", st).group(1).split()}
            return pid, uid, groups | {gid}
    return None


def remove_domain(name):
    """Destroy (if it runs) and undefine; bounded retries, since the guest
    may be powering itself off at that moment."""
    errors = []
    for _ in range(5):
        virsh("destroy", name, check=False)
        r = virsh("undefine", name, check=False)
        if r.returncode == 0:
            return
        if virsh("dominfo", name, check=False).returncode != 0:
            return                            # already gone
        errors.append(r.stderr.strip())
        time.sleep(2)
    raise AssertionError("could not undefine %s: %s" % (name, errors))


def run_domain(d, ns, sock, mode):
    """Define, start, check traffic, destroy and undefine one domain."""
    name = "vionetd-test-%s" % uuid.uuid4().hex[:8]
    workdir = tempfile.mkdtemp(prefix="vionetd-libvirt-")
    uid, gid = qemu_uid_gid()
    os.chmod(workdir, 0o755)
    os.chown(workdir, uid, gid)                 # QEMU writes the serial log here
    serial = os.path.join(workdir, "serial.log")
    params = {"ip": GUEST_IP + "/24", "host": HOST_IP, "xfer_bytes": XFER_BYTES}
    # the snippet keeps the guest up while the host pings it, restarts
    # vionetd under it and pings it again
    cmdline = guest.Guest(plan=["ping", "xfer"], params=params,
                          snippet="note held; sleep 40").cmdline()
    xml = domain_xml(name, workdir, sock, mode, cmdline)
    xml_path = os.path.join(workdir, "domain.xml")
    with open(xml_path, "w") as f:
        f.write(xml)
    peers = Peers(ns)
    defined = False
    try:
        xfer = peers.start(sys.executable, os.path.join(HERE, "guest_peer.py"),
                           "xfer", "5301", str(XFER_BYTES), str(BOOT_TIMEOUT))
        assert peers.readline(xfer, 10) == "ready"
        virsh("define", xml_path)
        defined = True
        virsh("start", name)
        deadline = time.monotonic() + BOOT_TIMEOUT
        proc = qemu_process(name)
        assert proc is not None, virsh("list", "--all").stdout
        _, quid, qgroups = proc
        wait_serial(serial, r"plan\.ping\.rc=", deadline, name)
        host_ping = N.ns_run(ns, "ping", "-c", "3", "-W", "2", GUEST_IP, check=False).stdout
        show = d.ctl("show", "lv1").stdout
        wait_serial(serial, r"VIONET-NOTE held", deadline, name)
        restarted_at = time.monotonic()
        d.stop()                               # as rc.d/vionetd restart does
        d.start()
        after_restart = ""
        while time.monotonic() < restarted_at + 25 and " 0% packet loss" not in after_restart:
            # the new tap has no address of the test's until the test gives it
            N.ns_run(ns, "ip", "addr", "replace", HOST_IP + "/24", "dev", "vlv0", check=False)
            after_restart = N.ns_run(ns, "ping", "-c", "2", "-W", "1", GUEST_IP,
                                     check=False).stdout
        resumed_s = time.monotonic() - restarted_at
        m, text = wait_serial(serial, guest.DONE_RE.pattern, deadline, name)
        res = dict(guest.RESULT_RE.findall(text))
        res["rc"] = int(m.group(1))
        xfer_out, _ = peers.finish(xfer)
        return dict(res=res, serial=text, host_ping=host_ping, xfer=xfer_out, show=show,
                    after_restart=after_restart, resumed_s=resumed_s,
                    qemu_ids=(quid, qgroups), xml=xml, log=d.log())
    finally:
        peers.close()
        if defined:
            remove_domain(name)
        shutil.rmtree(workdir, ignore_errors=True)


def check_run(out, name_absent=True):
    res, log = out["res"], out["serial"] + "\n--- vionetd ---\n" + out["log"]
    assert res["rc"] == 0, log
    assert res["mac"] == MAC, log
    assert res["ping.received"] == res["ping.sent"] == "3", log
    assert "3 received" in out["host_ping"], out["host_ping"]
    guest_peer.check_xfer(out["xfer"], res, XFER_BYTES)
    # QEMU ran as libvirt's unprivileged user, not root, and only group kvm
    # (the socket's) let it in
    uid, kvm = qemu_uid_gid()
    quid, qgroups = out["qemu_ids"]
    assert quid == uid != 0 and kvm in qgroups and 0 not in qgroups, out["qemu_ids"]
    assert "running" in out["show"], out["show"]
    # vionetd restarted under the running guest: pings answered again
    print("\ntraffic resumed %.1f s after the restart began" % out["resumed_s"])
    assert " 0% packet loss" in out["after_restart"], out["after_restart"] + "\n" + log


def test_snippet_is_what_the_manual_says():
    root = ET.parse(SNIPPET).getroot()
    mb = root.find("memoryBacking")
    assert mb.find("source").get("type") == "memfd"
    assert mb.find("access").get("mode") == "shared"
    iface = root.find("devices/interface")
    assert iface.get("type") == "vhostuser"
    src = iface.find("source")
    assert (src.get("type"), src.get("mode")) == ("unix", "client")
    assert iface.find("model").get("type") == "virtio"
    assert iface.find("driver").get("queues") == "1"


def test_libvirt_client_mode(libvirt):
    with N.netns("vl") as ns:
        tmp = tempfile.mkdtemp(prefix="vionetd-lv-")
        try:
            os.chmod(tmp, 0o755)
            sock = os.path.join(tmp, "lv1.sock")
            with daemon(CONF % (sock, ""), ns) as d:
                d.wait_socket(sock)
                st = os.stat(sock)
                assert st.st_gid == grp.getgrnam("kvm").gr_gid and st.st_mode & 0o777 == 0o660
                N.ns_run(ns, "ip", "addr", "add", HOST_IP + "/24", "dev", "vlv0")
                out = run_domain(d, ns, sock, "client")
            check_run(out)
            # the domain is gone
            assert "vionetd-test-" not in virsh("list", "--all", "--name").stdout
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def client_mode_implemented():
    """Whether the daemon has a connecting side: something in vionetd/
    besides vmmsocket.py calls vmmsocket.connect()."""
    for path in glob.glob(os.path.join(ROOT, "vionetd", "*.py")):
        if os.path.basename(path) == "vmmsocket.py":
            continue
        if "vmmsocket.connect(" in open(path).read():
            return True
    return False


def test_libvirt_server_mode(libvirt):
    # the grammar is there (config.py parses "socket PATH connect")...
    from vionetd import config
    conf = config.parse(CONF.replace("@CTL@", "/run/x.sock") % ("/run/q.sock", " connect"))
    assert conf.vms["lv1"].interfaces[0].connect
    # ...the daemon's connecting side may not be
    if not client_mode_implemented():
        pytest.skip("vionetd has no client mode yet: \"socket PATH connect\" parses, "
                    "but no port connects to the VMM's socket (nothing in vionetd/ "
                    "calls vmmsocket.connect)")
    uid, gid = qemu_uid_gid()
    with N.netns("vl") as ns:
        tmp = tempfile.mkdtemp(prefix="vionetd-lv-")
        try:
            os.chmod(tmp, 0o755)
            os.chown(tmp, uid, gid)             # QEMU creates its socket here
            sock = os.path.join(tmp, "qemu.sock")
            # vionetd connects as the VM's uid with the VMM's group as its
            # only supplementary group: QEMU's socket (srwxrwxr-x, its own
            # user and group) lets it in, and the session checks QEMU's
            # credentials against the same names (vionetd(8), LIBVIRT)
            conf = CONF.replace("socket group kvm mode 0660\n", "").replace(
                'vm "lv1" {\n', 'vm "lv1" {\n    vmm user "libvirt-qemu"\n'
                '    vmm group "%s"\n' % qemu_group())
            with daemon(conf % (sock, " connect"), ns) as d:
                N.ns_run(ns, "ip", "addr", "add", HOST_IP + "/24", "dev", "vlv0")
                out = run_domain(d, ns, sock, "server")
            check_run(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
