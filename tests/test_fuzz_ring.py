"""Build tests/fuzz_ring.c with AddressSanitizer + UBSan against the ring
engine and data paths (and the core they call), and run it for a bounded
number of rounds with a few seeds: a hostile guest's rings and frames must
never make the C read or write outside what it owns."""
import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_fuzz_ring_under_asan(tmp_path):
    exe = tmp_path / "fuzz_ring"
    srcs = [p for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "*.c")))
            if not os.path.basename(p).startswith("zz_")]
    subprocess.run(["gcc", "-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Werror",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    "-I", os.path.join(ROOT, "csrc"), "-o", str(exe),
                    os.path.join(ROOT, "tests", "fuzz_ring.c"), *srcs, "-luring"],
                   check=True, capture_output=True, text=True)
    for seed in ("1", "0xdeadbeef", "424242"):
        p = subprocess.run([str(exe), "1500", seed], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "ok 1500 rounds" in p.stdout
        stats = dict(zip(*[iter(p.stdout.split("\n")[1].split())] * 2))
        # not vacuous: chains were taken, frames went both ways, some refused
        assert all(int(stats[k]) > 0 for k in ("pops", "tx_frames", "tx_refused", "rx_frames")), stats
