"""The log cannot be flooded: repeats beyond a burst are counted, not written."""
import logging

from vionetd import log as logmod


def records(filt, texts, clock):
    out = []
    for t in texts:
        r = logging.LogRecord("vionetd", logging.INFO, __file__, 1, "%s", (t,), None)
        if filt.filter(r):
            out.append(r.getMessage())
    return out


def test_repeats_beyond_the_burst_are_counted_then_reported(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(logmod.time, "monotonic", lambda: now[0])
    f = logmod.Collapse()
    written = records(f, ["t1/0: VMM connected"] * 1000 + ["other"], now)
    assert written == ["t1/0: VMM connected"] * logmod.BURST + ["other"]
    now[0] += logmod.WINDOW + 1
    (line,) = records(f, ["t1/0: VMM connected"], now)
    assert line == "t1/0: VMM connected (and %d more like it, not logged)" % (1000 - logmod.BURST)


def test_distinct_lines_are_all_written():
    f = logmod.Collapse()
    texts = ["line %d" % i for i in range(100)]
    assert records(f, texts, None) == texts
