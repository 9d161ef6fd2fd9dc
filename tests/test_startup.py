"""Start-up is part of the interface: importing nextrap must not import torch (it costs over a second)."""

from __future__ import annotations

import subprocess
import sys

import nextrap


def _imports_torch(code: str) -> bool:
    probe = f"{code}\nimport sys\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1] == "True"


def test_import_nextrap_does_not_import_torch():
    assert not _imports_torch("import nextrap")
    assert not _imports_torch("import nextrap\nnextrap.NextrapError, nextrap.__version__")


def test_every_public_name_resolves():
    assert _imports_torch("import nextrap\nnextrap.scan")  # the lazy names do load their modules
    for name in nextrap.__all__:
        assert getattr(nextrap, name) is not None, name
