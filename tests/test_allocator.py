"""The allocator setting of the CLI: chunk-sized blocks come from the heap and stay there when freed."""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys

import pytest

# A 20 MiB tensor, like a chunk of factors, and the bytes glibc holds in mmap'ed blocks while it lives
# (mallinfo2().hblkhd: such blocks go back to the kernel on free and come back as fresh, faulting pages).
_PROBE = """
import ctypes, ctypes.util, sys
import torch
from nextrap.util.allocator import keep_freed_memory

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = Info
if sys.argv[1] == "keep":
    assert keep_freed_memory()
x = torch.ones(5 * 2**20)
print(libc.mallinfo2().hblkhd)
"""


def _glibc_with_mallinfo2() -> bool:
    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc >= 2.33's malloc settings")
def test_chunk_sized_blocks_come_from_the_heap():
    def mapped(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.strip())

    assert mapped("default") >= 20 * 2**20  # glibc's default: its own mapping, unmapped again on free
    assert mapped("keep") < 20 * 2**20  # kept: from the heap, which keeps it for the next chunk


def test_a_user_setting_wins(monkeypatch):
    from nextrap.util.allocator import keep_freed_memory

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert keep_freed_memory() is False
