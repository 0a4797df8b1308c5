"""Run by the workers (and sessions, for the SIGSYS reporter): the C core for Python.

Everything per frame happens in C (csrc/); this module only loads it.
"""
from vionetd._core import ffi, lib  # noqa: F401  (built by csrc/build.py)


def reason_name(reason: int) -> str:
    """The name of a vnet_validate() reason code, for counters and logs."""
    return ffi.string(lib.vnet_reason_name(reason)).decode()
