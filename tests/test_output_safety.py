"""A user's run is never deleted, replaced or added to, whatever -o and --overwrite say."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from nextrap.cli.main import main

FAST = ["--epochs", "20"]


def _fingerprint(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256), and every folder (-> "dir")."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _refused(args: list[str]) -> str:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize(
    "where",
    [
        lambda run: run,  # the run itself
        lambda run: run / "checkpoint-30",  # one of its checkpoints
        lambda run: run / "checkpoint-30" / "adapter_model.safetensors",  # one of its files
        lambda run: run / "checkpoint-200",  # a new folder inside the run: scan would take it for a checkpoint
        lambda run: run.parent,  # a folder that contains the run
    ],
    ids=["run", "checkpoint", "weights-file", "inside-run", "parent-of-run"],
)
@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("fmt", ["peft", "trl"])
def test_extrapolate_never_writes_over_or_into_the_run(tiny_run: Path, where, overwrite: bool, fmt: str):
    before = _fingerprint(tiny_run.parent)
    out = where(tiny_run)
    args = ["extrapolate", str(tiny_run), "-o", str(out), "--format", fmt, *FAST]
    line = _refused(args + (["--overwrite"] if overwrite else []))
    assert str(out) in line and ("the input" in line or "inside the run's folder" in line), line
    assert _fingerprint(tiny_run.parent) == before


def test_explicit_checkpoints_are_protected_too(tiny_run: Path):
    ckpts = sorted(tiny_run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    before = _fingerprint(tiny_run)
    args = ["extrapolate", "-o", str(ckpts[-1]), "--overwrite", *FAST]
    for i, c in enumerate(ckpts):
        args += ["--checkpoint", str(c), "--step", str((i + 1) * 10)]
    _refused(args)
    assert _fingerprint(tiny_run) == before


def test_symlinked_output_into_the_run_is_refused(tiny_run: Path, tmp_path: Path):
    link = tmp_path / "link"
    link.symlink_to(tiny_run, target_is_directory=True)
    before = _fingerprint(tiny_run)
    _refused(["extrapolate", str(tiny_run), "-o", str(link / "jump"), *FAST])
    assert _fingerprint(tiny_run) == before


@pytest.mark.parametrize("command", ["backtest", "inspect"])
def test_plots_never_land_inside_the_run(tiny_run: Path, command: str):
    before = _fingerprint(tiny_run)
    target = tiny_run / ("scores.png" if command == "backtest" else "plots")
    _refused([command, str(tiny_run), "--plot", str(target)] + (FAST if command == "backtest" else []))
    assert _fingerprint(tiny_run) == before


def test_output_beside_the_run_still_works(tiny_run: Path):
    out = tiny_run.parent / "jump"
    result = CliRunner().invoke(main, ["extrapolate", str(tiny_run), "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert (out / "adapter_model.safetensors").is_file()


def test_reference_trainer_never_replaces_the_folder_of_its_init_adapter(tiny_run: Path):
    from nextrap.errors import UnsafeOutputError
    from nextrap.reference.grpo import train

    before = _fingerprint(tiny_run)
    with pytest.raises(UnsafeOutputError, match="contains the input"):
        train(tiny_run, init_adapter=tiny_run / "checkpoint-100", overwrite=True)
    assert _fingerprint(tiny_run) == before
