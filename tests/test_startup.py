"""Start-up is part of the interface: importing nextrap, ``nextrap --help`` and ``nextrap scan`` of a
safetensors run must not import torch (it costs over a second)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

import nextrap
from nextrap.testing.synthetic import write_synthetic_run

from .conftest import STEPS, TINY_SHAPES, TINY_SPEC


def _imports_torch(code: str) -> bool:
    probe = f"{code}\nimport sys\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1] == "True"


def test_import_nextrap_does_not_import_torch():
    assert not _imports_torch("import nextrap")
    assert not _imports_torch("import nextrap\nnextrap.NextrapError, nextrap.__version__")


def test_every_public_name_resolves():
    assert _imports_torch("import nextrap\nnextrap.open_run")  # the lazy names do load their modules
    for name in nextrap.__all__:
        assert getattr(nextrap, name) is not None, name


def test_cli_help_and_its_options_import_no_torch():
    # The CLI module, with every command registered (the reference trainer's too), builds its options
    # from the option dataclasses without importing torch or transformers.
    assert not _imports_torch("import nextrap.cli.main")
    probe = (
        "import sys\nfrom click.testing import CliRunner\nfrom nextrap.cli.main import main\n"
        "for args in (['--help'], ['extrapolate', '--help'], ['train-reference', '--help']):\n"
        "    assert CliRunner().invoke(main, args).exit_code == 0, args\n"
        "print('torch' in sys.modules or 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_scan_of_a_safetensors_run_imports_no_torch_and_reads_what_torch_reads(tmp_path: Path):
    # bfloat16 and the verl layout: the dtype name and the folder rules are part of what scan reports.
    run = write_synthetic_run(tmp_path / "run", STEPS, TINY_SHAPES, TINY_SPEC, torch.bfloat16, "verl")
    probe = (
        "import sys\nfrom click.testing import CliRunner\nfrom nextrap.cli.main import main\n"
        f"result = CliRunner().invoke(main, ['scan', {str(run)!r}, '--json'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(result.output)\nprint('torch' in sys.modules or 'numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    *summary, loaded = out.strip().splitlines()
    assert loaded == "False"
    scanned = json.loads("\n".join(summary))
    # What torch and the safetensors library read from the last checkpoint's tensors, counted here.
    from safetensors.torch import load_file

    tensors = load_file(str(run / f"global_step_{STEPS[-1]}" / "actor" / "lora_adapter" / "adapter_model.safetensors"))
    factors_a = [t for k, t in tensors.items() if k.endswith("lora_A.weight")]
    assert scanned["layout"] == "verl" and scanned["steps"] == STEPS
    assert scanned["modules"] == len(factors_a) == len(TINY_SHAPES)
    assert scanned["rank"] == factors_a[0].shape[0] == TINY_SPEC.rank
    assert scanned["dtype"] == str(factors_a[0].dtype).removeprefix("torch.") == "bfloat16"
    assert scanned["lora_parameters"] == sum(t.numel() for t in tensors.values())
    assert scanned["scalings"] == [TINY_SPEC.alpha / TINY_SPEC.rank]
    # The torch path (reading every tensor, as extrapolate does) describes the run the same way.
    assert nextrap.open_run(run).summary() == scanned


def _cli_without(module: str, *args: str) -> subprocess.CompletedProcess:
    """``nextrap ARGS`` in a process where ``module`` cannot be found (an install without that extra)."""
    code = (
        "import importlib.util as u, sys\n"
        "found = u.find_spec\n"
        f"u.find_spec = lambda name, *a, **k: None if name == {module!r} else found(name, *a, **k)\n"
        "from nextrap.cli.main import main\n"
        "main(prog_name='nextrap')\n"
    )
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_reference_commands_appear_only_with_the_reference_extra():
    """Without nextrap[reference] (scipy), --help lists the post-processing commands only, and asking for
    a reference command says which extra to install; with it, all are there."""
    from nextrap.cli.reference import NAMES

    bare = _cli_without("scipy", "--help")
    assert bare.returncode == 0, bare.stderr
    listed = {line.split()[0] for line in bare.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == {"backtest", "extrapolate", "inspect", "push", "scan", "truncate"}
    asked = _cli_without("scipy", "train-reference", "-o", "x", "--steps", "1")
    assert asked.returncode == 1 and "pip install 'nextrap[reference]'" in asked.stderr
    full = subprocess.run([sys.executable, "-m", "nextrap", "--help"], capture_output=True, text=True, timeout=120)
    assert set(NAMES) <= {line.split()[0] for line in full.stdout.split("Commands:")[1].splitlines() if line.strip()}


def test_core_install_needs_neither_scipy_nor_gguf():
    """pyproject: the post-processor's dependencies hold neither; the reference extra is what its check looks for."""
    import re

    import tomllib

    from nextrap.cli.reference import EXTRA

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=\[ ;]", d)[0].lower() for d in project["dependencies"]}
    assert not names & {"scipy", "gguf"}
    extra = {re.split(r"[<>=\[ ;]", d)[0].lower() for d in project["optional-dependencies"]["reference"]}
    assert extra == set(EXTRA)
