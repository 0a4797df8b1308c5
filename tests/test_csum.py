"""csum.c against a pure-Python RFC 1071 / RFC 1624 reference: random buffers,
lengths, alignments, starting sums, scatter lists with odd splits."""
import random
import struct

from hypothesis import given, settings, strategies as st

from tests.frames import c_iov, inet_csum, split
from vionetd._core import ffi, lib

SETTINGS = settings(max_examples=150, deadline=None)


def c_csum(data: bytes, align: int = 0, start: int = 0) -> int:
    """csum_fold(csum_partial()) on data placed at a chosen alignment, as the
    big-endian number the bytes in memory spell."""
    buf = bytearray(align) + bytearray(data) + bytearray(8)
    p = ffi.from_buffer(buf)
    c = lib.csum_fold(lib.csum_partial(p + align, len(data), start))
    return struct.unpack("!H", struct.pack("=H", c))[0]


def host_word(be: int) -> int:
    """A big-endian 16-bit number as the memory-order word the C core uses."""
    return struct.unpack("=H", struct.pack("!H", be))[0]


@SETTINGS
@given(st.binary(max_size=3000), st.integers(0, 31))
def test_partial_matches_reference(data, align):
    assert c_csum(data, align) == inet_csum(data)


def test_large_and_all_lengths():
    rng = random.Random(1)
    for n in list(range(0, 300)) + [65535, 65536, 65553, 200001]:
        data = rng.randbytes(n)
        assert c_csum(data, n % 13) == inet_csum(data), n


def test_extremes():
    for n in (0, 1, 2, 63, 64, 65, 127, 128, 129, 4096, 65553):
        assert c_csum(b"\xff" * n) == inet_csum(b"\xff" * n)
        assert c_csum(b"\x00" * n) == 0xFFFF  # ~0
    # a sum near 2^64 must keep its carries
    # a start of 2^64 - 1 is one's complement zero: only the word counts
    word = ffi.new("char[2]", b"\x00\x01")
    assert lib.csum_fold(lib.csum_partial(word, 2, 2**64 - 1)) == (~0x0100 & 0xFFFF)
    assert lib.csum_fold(lib.csum_partial(word, 2, 2**64 - 2)) == (~0x0100 & 0xFFFF) + 1


@SETTINGS
@given(st.binary(max_size=600), st.integers(0, 2**64 - 1))
def test_starting_sum(data, start):
    folded = start
    while folded > 0xFFFF:
        folded = (folded & 0xFFFF) + (folded >> 16)
    buf = ffi.from_buffer(bytearray(data) + bytearray(1))
    c = lib.csum_fold(lib.csum_partial(buf, len(data), start))
    # the start is a host-order (memory-order) value: convert its fold
    expect = inet_csum(data, host_word(folded) if folded != 0xFFFF else 0xFFFF)
    assert struct.pack("=H", c) == struct.pack("!H", expect)


@SETTINGS
@given(st.binary(max_size=4000), st.lists(st.integers(0, 4000), max_size=12),
       st.integers(0, 50), st.integers(0, 4000))
def test_iov_with_odd_splits(data, cuts, skip, length):
    pieces = split(data, cuts)
    iov, keep = c_iov(pieces)
    skip = min(skip, len(data))
    length = min(length, len(data) - skip)
    c = lib.csum_fold(lib.csum_iov(iov, len(pieces), skip, length, 0))
    assert struct.pack("=H", c) == struct.pack("!H", inet_csum(data[skip:skip + length]))


def test_iov_every_split_of_short_buffer():
    rng = random.Random(2)
    data = rng.randbytes(37)
    for a in range(len(data) + 1):
        for b in range(a, len(data) + 1):
            pieces = split(data, [a, b])
            iov, keep = c_iov(pieces)
            for skip in (0, 1, 2, 3):
                c = lib.csum_fold(lib.csum_iov(iov, len(pieces), skip, len(data) - skip, 0))
                assert struct.pack("=H", c) == struct.pack("!H", inet_csum(data[skip:]))


def test_iov_range_beyond_list_sums_what_is_there():
    iov, keep = c_iov([b"\x12\x34", b"\x56"])
    c = lib.csum_fold(lib.csum_iov(iov, 2, 0, 1000, 0))
    assert struct.pack("=H", c) == struct.pack("!H", inet_csum(b"\x12\x34\x56"))


@SETTINGS
@given(st.binary(max_size=5000), st.integers(0, 31), st.integers(0, 31))
def test_copy(data, sa, da):
    src = bytearray(sa) + bytearray(data)
    dst = bytearray(da + len(data) + 16)
    ps, pd = ffi.from_buffer(src), ffi.from_buffer(dst)
    c = lib.csum_fold(lib.csum_copy(pd + da, ps + sa, len(data), 0))
    assert bytes(dst[da:da + len(data)]) == data
    assert dst[da + len(data):] == bytearray(16)  # nothing written past the end
    assert struct.pack("=H", c) == struct.pack("!H", inet_csum(data))


@SETTINGS
@given(st.integers(0, 2**64 - 1))
def test_fold(v):
    s = v % 0xFFFF  # the one's complement value, 0 written as 0xffff when v != 0
    folded = s if s else (0xFFFF if v else 0)
    assert lib.csum_fold(v) == (~folded & 0xFFFF)


@SETTINGS
@given(st.binary(min_size=2, max_size=200).filter(lambda b: any(b)),
       st.integers(0, 99), st.integers(0, 0xFFFF))
def test_update16_matches_recompute(data, pos, new):
    data = bytearray(data + (b"\0" if len(data) % 2 else b""))
    pos = (pos * 2) % len(data)
    check = inet_csum(bytes(data))
    old = struct.unpack_from("!H", data, pos)[0]
    struct.pack_into("!H", data, pos, new)
    if not any(data):
        return
    got = lib.csum_update16(host_word(check), host_word(old), host_word(new))
    assert struct.pack("=H", got) == struct.pack("!H", inet_csum(bytes(data)))


def test_generic_loops_too():
    """The portable loops (aarch64, or VIONETD_CSUM_GENERIC=1) pass the same tests."""
    import os
    import subprocess
    import sys
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, VIONETD_CSUM_GENERIC="1", PYTHONPATH=here)
    code = ("from vionetd._core import ffi, lib; "
            "assert ffi.string(lib.csum_impl()) == b'generic'")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-k", "not generic_loops",
                        os.path.join(here, "tests", "test_csum.py"),
                        os.path.join(here, "tests", "test_offload.py")],
                       env=env, cwd=here, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:]
