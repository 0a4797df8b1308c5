#!/usr/bin/env python3
"""atheris target: the configuration parser (vionetd/config.py).

Input: the bytes of a vionetd.conf. As config.load() does, bytes that are
not UTF-8 are refused before parsing; the text goes to config.parse().
Contract: a Config, or ConfigError; any other exception is a finding.
"""

import atheris
import harness

with atheris.instrument_imports():
    from vionetd import config


def test_one_input(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    try:
        conf = config.parse(text, "fuzz.conf")
    except config.ConfigError as e:
        str(e)
        return
    # A Config is complete: every interface has its VM and index.
    for iface in conf.interfaces():
        assert iface.vm and iface.index >= 0, iface


if __name__ == "__main__":
    harness.run(test_one_input)
