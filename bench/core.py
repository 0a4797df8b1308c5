"""Benchmark of the C core's per-byte work, against memcpy of the same bytes.

    python bench/core.py [--json] [--seconds S]

memcpy is measured in the same run, on the same buffers, in C (csrc/bench.c),
and is the physical limit every ratio is taken against:
  csum       csum_partial() over 64 KiB             csum_ratio = csum / memcpy
  copy+csum  csum_copy() of 64 KiB                  copy_csum_ratio = copy_csum / memcpy
  TSO        gso_segment() of a 64 KiB IPv4 TCP super-frame (timestamps, 1448-byte
             segments) read from 4 KiB guest pages; payload bytes per second
  USO        the same with an IPv4 UDP_L4 super-frame
tso_ratio and uso_ratio are payload bytes/s divided by memcpy bytes/s; the Gbit/s
figures count payload bits on one core. Each figure is the best of several runs
(other work on the machine only slows a run down). Every loop runs in C.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.frames import TCP, UDP, build, c_hdr, c_iov, c_validate  # noqa: E402
from vionetd._core import ffi, lib  # noqa: E402

SIZE = 65536
MSS = 1448


def aligned(n, align=64):
    raw = ffi.new("uint8_t[]", n + align)
    off = (-int(ffi.cast("uintptr_t", raw))) % align
    return raw, raw + off


def calibrate(fn, slot=0.01):
    """A repeat count that makes fn(reps) last about slot seconds."""
    reps = 1
    while True:
        t = time.perf_counter()
        fn(reps)
        dt = time.perf_counter() - t
        if dt > slot / 4:
            return max(1, int(reps * slot / dt))
        reps *= 4


def best_rates(jobs, seconds):
    """jobs: name -> (fn(reps), bytes per rep). The runs are interleaved in
    short slots, round after round, and each keeps its best rate: other load
    on the machine then hits all of them alike instead of one in particular."""
    reps = {name: calibrate(fn) for name, (fn, _) in jobs.items()}
    best = dict.fromkeys(jobs, 0.0)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for name, (fn, nbytes) in jobs.items():
            t = time.perf_counter()
            fn(reps[name])
            best[name] = max(best[name], nbytes * reps[name] / (time.perf_counter() - t))
    return best


def gso_job(proto):
    payload = bytes(i * 13 & 0xFF for i in range(MSS * 45))
    f = build(4, proto, payload, tcp_opts=3 if proto == TCP else 0, gso_size=MSS)
    r, fi = c_validate(f)
    assert r == lib.VR_OK, r
    cuts = [f.hdrs_len] + list(range(f.hdrs_len + 4096, len(f.data), 4096))
    pieces = [f.data[a:b] for a, b in zip([0] + cuts, cuts + [len(f.data)])]
    iov, keep = c_iov(pieces)
    for i, p in enumerate(pieces):  # page-aligned guest buffers, as virtio gives them
        raw, buf = aligned(max(len(p), 1), 4096)
        ffi.memmove(buf, p, len(p))
        keep.append(raw)
        iov[i].iov_base = buf
    head = ffi.from_buffer("uint8_t[]", f.data[:256])
    cap = 64 * f.hdrs_len + len(payload)
    out_raw, out = aligned(cap)
    lens = ffi.new("uint32_t[]", 64)
    h = c_hdr(f)

    def run(reps):
        if lib.bench_gso(h, fi, head, iov, len(pieces), len(f.data), out, cap, lens, 64, reps) < 0:
            raise SystemExit("gso_segment failed")
    return run, len(payload), keep + [iov, head, out_raw, lens, h, fi]


def measure(seconds):
    src_raw, src = aligned(SIZE)
    dst_raw, dst = aligned(SIZE)
    ffi.memmove(src, bytes(i * 7 & 0xFF for i in range(SIZE)), SIZE)
    tso_fn, tso_bytes, keep_t = gso_job(TCP)
    uso_fn, uso_bytes, keep_u = gso_job(UDP)
    r = best_rates({
        "memcpy": (lambda n: lib.bench_memcpy(dst, src, SIZE, n), SIZE),
        "csum": (lambda n: lib.bench_csum(src, SIZE, n), SIZE),
        "copy": (lambda n: lib.bench_csum_copy(dst, src, SIZE, n), SIZE),
        "tso": (tso_fn, tso_bytes),
        "uso": (uso_fn, uso_bytes),
    }, seconds)
    mem, cs, cc, tso, uso = r["memcpy"], r["csum"], r["copy"], r["tso"], r["uso"]
    return {
        "memcpy_gbytes_s": round(mem / 1e9, 2),
        "csum_gbytes_s": round(cs / 1e9, 2),
        "csum_ratio": round(cs / mem, 3),
        "copy_csum_gbytes_s": round(cc / 1e9, 2),
        "copy_csum_ratio": round(cc / mem, 3),
        "tso_gbit_s": round(tso * 8 / 1e9, 1),
        "tso_ratio": round(tso / mem, 3),
        "uso_gbit_s": round(uso * 8 / 1e9, 1),
        "uso_ratio": round(uso / mem, 3),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--seconds", type=float, default=5.0, help="total measuring time")
    a = ap.parse_args()
    res = measure(a.seconds)
    if a.json:
        print(json.dumps(res))
        return
    mem = res["memcpy_gbytes_s"]
    impl = ffi.string(lib.csum_impl()).decode()
    print(f"{'operation (64 KiB, one core, ' + impl + ')':34} {'rate':>14} {'vs memcpy':>10}")
    print(f"{'memcpy':34} {mem:>9.2f} GB/s {1.0:>10.3f}")
    print(f"{'csum_partial':34} {res['csum_gbytes_s']:>9.2f} GB/s {res['csum_ratio']:>10.3f}")
    print(f"{'csum_copy':34} {res['copy_csum_gbytes_s']:>9.2f} GB/s {res['copy_csum_ratio']:>10.3f}")
    print(f"{'TSO 64 KiB -> 1448 (payload)':34} {res['tso_gbit_s']:>7.1f} Gbit/s {res['tso_ratio']:>10.3f}")
    print(f"{'USO 64 KiB -> 1448 (payload)':34} {res['uso_gbit_s']:>7.1f} Gbit/s {res['uso_ratio']:>10.3f}")


if __name__ == "__main__":
    main()
