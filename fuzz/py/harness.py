"""Run by every atheris target (fuzz/py/fuzz_*.py): what each one's process does.

run(test_one_input) quiets vionetd's log (a target feeds it garbage on
purpose), hands libFuzzer's arguments and the target to atheris, and
fuzzes until libFuzzer stops. The target's own module imports vionetd under
atheris.instrument_imports() before calling it.
"""
import logging
import sys

import atheris


def run(test_one_input):
    logging.disable(logging.CRITICAL)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
