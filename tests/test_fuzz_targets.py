"""Smoke run of every fuzz target (fuzz/): each is built (libFuzzer + ASan +
UBSan for fuzz/c/, atheris for fuzz/py/), replays its whole committed
corpus (fuzz/corpus/TARGET, regression inputs of fixed crashes included)
and fuzzes for a few seconds, all targets at once through fuzz/run.sh,
with a fresh work directory (what the run finds is thrown away).
A target passes if it ran, executed inputs and crashed on none.
Long runs: make fuzz (fuzz/run.sh --seconds N)."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECONDS = 3


def _targets():
    c = sorted(f[:-2] for f in os.listdir(os.path.join(ROOT, "fuzz", "c"))
               if f.startswith("fuzz_") and f.endswith(".c"))
    py = sorted("py_" + f[5:-3] for f in os.listdir(os.path.join(ROOT, "fuzz", "py"))
                if f.startswith("fuzz_") and f.endswith(".py"))
    return c + py


TARGETS = _targets()
LINE = re.compile(r"^(\S+)\s+executions (\d+)\s+coverage (\d+) edges (\d+) features\s+"
                  r"corpus (\d+)\s+crashes (\d+)(.*)$")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fuzz-work"))


@pytest.fixture(scope="module")
def smoke(work):
    p = subprocess.run([os.path.join(ROOT, "fuzz", "run.sh"), "--seconds", str(SECONDS),
                        "--work", work],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    results = {}
    for line in p.stdout.splitlines():
        m = LINE.match(line)
        if m:
            results[m.group(1)] = dict(execs=int(m.group(2)), edges=int(m.group(3)),
                                       corpus=int(m.group(5)), crashes=int(m.group(6)),
                                       note=m.group(7).strip())
    return p, results


def _log(work, target):
    path = os.path.join(work, "logs", target + ".log")
    try:
        with open(path) as f:
            return f.read()[-4000:]
    except OSError:
        return "(no log)"


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_smoke(smoke, work, target):
    p, results = smoke
    assert target in results, p.stdout + p.stderr
    r = results[target]
    assert r["crashes"] == 0 and not r["note"], _log(work, target)
    assert r["execs"] > 0 and r["edges"] > 0, _log(work, target)


def test_every_target_has_a_committed_corpus():
    for t in TARGETS:
        d = os.path.join(ROOT, "fuzz", "corpus", t)
        assert os.path.isdir(d) and 0 < len(os.listdir(d)) <= 500, t
