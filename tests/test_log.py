"""The log cannot be flooded: repeats beyond a burst are counted, not written."""
import logging

from vionetd import log as logmod


def records(filt, texts, clock, fmt="%s"):
    out = []
    for t in texts:
        args = t if isinstance(t, tuple) else (t,)
        r = logging.LogRecord("vionetd", logging.INFO, __file__, 1, fmt, args, None)
        if filt.filter(r):
            out.append(r.getMessage())
    return out


def test_repeats_beyond_the_burst_are_counted_then_reported(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(logmod.time, "monotonic", lambda: now[0])
    f = logmod.Collapse()
    written = records(f, ["t1/0: VMM connected"] * 1000, now)
    written += records(f, ["other"], now, fmt="other %s")
    assert written == ["t1/0: VMM connected"] * logmod.BURST + ["other other"]
    now[0] += logmod.WINDOW + 1
    (line,) = records(f, ["t1/0: VMM connected"], now)
    assert line == "t1/0: VMM connected (and %d more like it, not logged)" % (1000 - logmod.BURST)


def test_repeats_collapse_by_format_and_source_not_text():
    """A guest asking for a thousand addresses is one DHCP line of its
    interface, three times; another interface's lines are its own."""
    f = logmod.Collapse()
    fmt = "%s: DHCP NAK for %s"
    naks = [("t1/0", "10.0.0.%d" % i) for i in range(200)]
    assert len(records(f, naks, None, fmt)) == logmod.BURST
    assert len(records(f, [("t2/0", "10.0.0.1")] * 5, None, fmt)) == logmod.BURST
    texts = ["line %d" % i for i in range(100)]
    assert len(records(f, texts, None)) == logmod.BURST      # one format, no source
    r = logging.LogRecord("vionetd", logging.INFO, __file__, 1, "%s: %s", ("t3/0", "x"), None)
    r.form, r.source = "session's format %d", "t3/0"
    assert f.filter(r)
