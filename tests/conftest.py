"""Shared test fixtures: skip root-only tests cleanly, and a factory of network
namespaces that are all deleted when the test ends (see tests/netns.py)."""
import contextlib
import os
import subprocess
import tempfile

import pytest

from tests import netns as _netns

IS_ROOT = os.geteuid() == 0

# DHCP leases (vionetd/leases.py) go to a directory of the test run's own,
# for the daemons the tests start too (they inherit the environment), never
# to the host's /var/db/vionetd.
_LEASES_DIR = tempfile.TemporaryDirectory(prefix="vionetd-leases-")
os.environ["VIONETD_LEASES"] = os.path.join(_LEASES_DIR.name, "leases")


def pytest_collection_modifyitems(config, items):
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root (taps, network namespaces)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under a failing test, the log of every vionetd it ran (tests/daemon.py):
    what the daemon did is half of what went wrong."""
    from tests import daemon
    report = (yield).get_result()
    if report.failed:
        for d in daemon.started:
            title = "vionetd log %s (last %d lines)" % (d.log_path, daemon.LOG_TAIL)
            report.sections.append((title, d.log_tail()))
    if report.when == "teardown":
        daemon.started[:] = [d for d in daemon.started if d.proc is not None]


@pytest.fixture
def netns():
    """Call it to get a new namespace name: netns() or netns("prefix").
    Every namespace made is deleted at teardown, with the links inside it."""
    with contextlib.ExitStack() as stack:
        yield lambda prefix="vt": stack.enter_context(_netns.netns(prefix))


@pytest.fixture(scope="module")
def image():
    """The guest images, built (or found current: a stamp makes this quick);
    the accelerator guests get ("kvm" or "tcg")."""
    if not IS_ROOT:
        pytest.skip("building and booting guests needs root")
    from tests import guest
    subprocess.run(["sh", os.path.join(guest.ROOT, "scripts", "guest-image.sh")],
                   check=True, timeout=1800)
    assert guest.images_built()
    return guest.accel()
