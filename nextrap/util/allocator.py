"""Keep freed memory in the process: glibc's defaults make every large tensor cost page faults.

glibc's ``malloc`` serves large blocks with ``mmap`` and returns them to the kernel on ``free``, and it
trims the heap top as soon as 128 KiB are free. nextrap works in chunks of a few to a few tens of MiB,
allocated and freed once per chunk and step, so with the defaults every chunk comes back as fresh,
zeroed pages and the kernel's page faults become a large part of the run: on a 7B-shaped run (one
thread) the linear backtest spent 2.4 s of system time against 6.2 s of user time, and 0.4-0.5 s with
the settings below (wall 8.4 s -> 6.4 s; peak memory +2%; ``benchmarks/results/scale.txt``). Blocks up
to glibc's largest allowed ``mmap`` threshold (32 MiB on 64-bit) now come from the heap, and the heap is
kept, so a freed chunk serves the next one. The process's resident memory then stays near its peak
until it exits, which is fine for a command; a long-lived process that imports nextrap as a library is
left alone unless it calls :func:`keep_freed_memory` itself.

Environment variables a user set (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``) win. Other C
libraries (musl, macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory"]

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 2**20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: it refuses more
_TRIM_THRESHOLD = 1 * 2**30


def keep_freed_memory() -> bool:
    """Raise glibc's ``mmap`` and trim thresholds for this process; True when they were set."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
