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


def test_cli_help_and_its_options_import_no_torch():
    # The CLI module, with every command registered (the reference trainer's too), builds its options
    # from the option dataclasses without importing torch or transformers.
    assert not _imports_torch("import nextrap.cli")
    probe = (
        "import sys\nfrom click.testing import CliRunner\nfrom nextrap.cli import main\n"
        "for args in (['--help'], ['extrapolate', '--help'], ['train-reference', '--help']):\n"
        "    assert CliRunner().invoke(main, args).exit_code == 0, args\n"
        "print('torch' in sys.modules or 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
