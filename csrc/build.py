"""Build the C core with cffi (API mode), when the package is installed.

Every csrc/*.c is compiled into one extension, vionetd._core. The cdef is the
part of each csrc/*.h between the "CDEF BEGIN" and "CDEF END" markers, so a
header is the single statement of a module's interface for C and Python alike.
"""
import glob
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ORDER = ["core.h", "sysdecl.h", "virtq.h", "txuring.h", "rate.h"]  # headers whose declarations others use come first


def _headers():
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(HERE, "*.h")))
    return ORDER + [n for n in names if n not in ORDER]


def _cdef():
    parts = []
    for name in _headers():
        with open(os.path.join(HERE, name)) as f:
            text = f.read()
        m = re.search(r"/\* CDEF BEGIN \*/(.*?)/\* CDEF END \*/", text, re.S)
        if m:
            parts.append(m.group(1))
    return "\n".join(parts)


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "vionetd._core",
    "\n".join('#include "%s"' % n for n in _headers()),
    sources=sorted(os.path.relpath(p, os.path.dirname(HERE)) for p in glob.glob(os.path.join(HERE, "*.c"))),
    include_dirs=[HERE],
    libraries=["uring"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-fno-strict-aliasing"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
