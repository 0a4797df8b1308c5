"""Run by the parent and `vionetd -n`: read vionetd.conf(5) into dataclasses.

The parent loads the file at start and on every reload; `vionetd -n` only
checks it (check()). The grammar is documented in man/vionetd.conf.5;
etc/vionetd.conf is an example. It follows the spirit of OpenBSD's
vm.conf(5): macros, a few global settings, `switch` blocks naming a Linux
bridge, `vm` blocks holding `interface` blocks.

This package's __init__ is its entry point, and what the rest of vionetd
imports: parse(), load(), check() and the names below. The work is done by

    model.py    the dataclasses (Config, Vm, Interface...), ConfigError
    lexer.py    tokens, quoted strings, $macro expansion
    grammar.py  the statements, one keyword table per block
    values.py   the statements' arguments, checked one by one
    checks.py   what needs several statements: per interface, and across
                the whole file

Invariants:
- A Config returned by parse()/load() is complete and consistent: every
  check has passed, every default is filled in. The parent may use it
  without further validation (what it cannot check here, such as whether a
  bridge exists, it checks at start).
- Anything wrong in the text raises ConfigError, whose str() is
  "FILE:LINE: message" and names what was expected. Nothing else escapes
  parse(): the file is untrusted input.
- Line numbers are kept in fields excluded from ==, so that adding a comment
  does not make an unchanged VM look changed to a reload.
- Automatic tap names are left as None: naming is the parent's business.
"""
from __future__ import annotations

from vionetd.config import checks, grammar
from vionetd.config.grammar import KEYWORDS, SOCKET_OPTIONS
from vionetd.config.lexer import MAX_EXPANDED, MAX_MACRO_DEPTH
from vionetd.config.model import (DEFAULT_CHROOT, DEFAULT_PREFIX,
                                  DEFAULT_SOCKET, DEFAULT_SOCKET_MODE,
                                  DEFAULT_USER, DEFAULT_USER_RANGE,
                                  DIRECTIONS, MODES,
                                  OFF, OFFLOAD_NAMES, PASSTHROUGH, SOFTWARE,
                                  Config, ConfigError, Interface, Offload,
                                  Rate, Switch, Vm)
from vionetd.config.values import (IFNAME_MAX, MAX_QUEUES, MTU_MAX, MTU_MIN,
                                   QUEUES_AUTO, SUN_PATH_MAX)

__all__ = [
    "parse", "load", "check", "MAX_FILE_SIZE",
    "Config", "ConfigError", "Interface", "Offload", "Rate", "Switch", "Vm",
    "DEFAULT_CHROOT", "DEFAULT_PREFIX", "DEFAULT_SOCKET",
    "DEFAULT_SOCKET_MODE", "DEFAULT_USER", "DEFAULT_USER_RANGE",
    "DIRECTIONS", "MODES", "OFF", "OFFLOAD_NAMES", "PASSTHROUGH", "SOFTWARE",
    "KEYWORDS", "SOCKET_OPTIONS", "MAX_EXPANDED", "MAX_MACRO_DEPTH",
    "IFNAME_MAX", "MAX_QUEUES", "MTU_MAX", "MTU_MIN", "QUEUES_AUTO",
    "SUN_PATH_MAX",
]

MAX_FILE_SIZE = 1 << 20


def parse(text: str, filename: str = "vionetd.conf") -> Config:
    """parse() - read configuration text.
    @text: the whole file; @filename: the name errors give.

    Return: the complete Config. Raises ConfigError on any error.
    """
    if len(text) > MAX_FILE_SIZE:
        raise ConfigError(filename, None, "file larger than %d bytes"
                          % MAX_FILE_SIZE)
    conf, notes = grammar.read(text, filename)
    checks.whole_file(conf, notes)
    return conf


def load(path: str) -> Config:
    """Read and parse a configuration file; raise ConfigError on any error,
    including a file that cannot be read or is not UTF-8."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_SIZE + 1)
    except OSError as e:
        raise ConfigError(path, None, "cannot read: %s"
                          % (e.strerror or e)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError(path, line, "not valid UTF-8") from None
    return parse(text, path)


def check(path: str) -> tuple[bool, str]:
    """For vionetd -n: (True, "configuration OK") or (False, the error)."""
    try:
        load(path)
    except ConfigError as e:
        return False, str(e)
    return True, "configuration OK"
