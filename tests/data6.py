"""Frames of IPv6 tools and of the kernel, captured here for the unit
tests of ra.py and dhcp6.py (tests/data/*.hex say by what and how)."""
import os

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def load(name):
    """The frame of tests/data/NAME: hex lines after the # comments."""
    with open(os.path.join(DATA, name)) as f:
        return bytes.fromhex("".join(line.strip() for line in f if not line.startswith("#")))
