"""Shared test fixtures: skip root-only tests cleanly, and a factory of network
namespaces that are all deleted when the test ends (see tests/netns.py)."""
import contextlib
import os

import pytest

from tests import netns as _netns

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config, items):
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root (taps, network namespaces)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def netns():
    """Call it to get a new namespace name: netns() or netns("prefix").
    Every namespace made is deleted at teardown, with the links inside it."""
    with contextlib.ExitStack() as stack:
        yield lambda prefix="vt": stack.enter_context(_netns.netns(prefix))
