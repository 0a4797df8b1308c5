"""Build tests/fuzz_core.c with AddressSanitizer + UBSan against the core's
sources and run it for a bounded number of rounds: no out-of-bounds access, no
undefined behaviour, and every segment of an accepted GSO frame verifies."""
import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_fuzz_core_under_asan(tmp_path):
    exe = tmp_path / "fuzz_core"
    srcs = [s for s in glob.glob(os.path.join(ROOT, "csrc", "*.c"))
            if not s.endswith("bench.c")]
    subprocess.run(["gcc", "-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Werror",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    "-I", os.path.join(ROOT, "csrc"), "-o", str(exe),
                    os.path.join(ROOT, "tests", "fuzz_core.c"), *srcs, "-luring"],
                   check=True, timeout=120)
    for seed in ("1", "12345", "987654321"):
        p = subprocess.run([str(exe), "4000", seed], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stderr[-3000:]
        accepted, segmented = map(int, p.stdout.split())
        assert accepted > 100 and segmented > 100, p.stdout
