"""Bad input: one-line error, exit code 1, and nothing written (the issue's list, one test each)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from nextrap.cli.main import main
from nextrap.testing.synthetic import write_synthetic_run

from .conftest import STEPS, TINY_SHAPES, TINY_SPEC, edit_config

FAST = ["--epochs", "20"]


def _run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return result.exit_code, result.output


def _assert_fails(args: list[str], match: str, out: Path | None = None) -> str:
    code, output = _run(args)
    assert code == 1, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert match in lines[0], lines[0]
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return lines[0]


def _rewrite(ckpt: Path, fn) -> None:
    path = ckpt / "adapter_model.safetensors"
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path))


def test_missing_folder(tmp_path: Path):
    _assert_fails(
        ["extrapolate", str(tmp_path / "nope"), "-o", str(tmp_path / "out")],
        "no such folder",
        tmp_path / "out",
    )


def test_empty_folder(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    _assert_fails(["scan", str(tmp_path / "empty")], "empty")


def test_no_adapters_found_names_layouts(tmp_path: Path):
    (tmp_path / "run" / "logs").mkdir(parents=True)
    (tmp_path / "run" / "logs" / "x.txt").write_text("hi")
    line = _assert_fails(["scan", str(tmp_path / "run")], "no LoRA checkpoints found")
    assert "checkpoint-N" in line and "global_step" in line


def test_single_checkpoint(tmp_path: Path, tiny_run: Path):
    for s in STEPS[1:]:
        shutil.rmtree(tiny_run / f"checkpoint-{s}")
    _assert_fails(["extrapolate", str(tiny_run), "-o", str(tmp_path / "out")], "at least 2", tmp_path / "out")


def test_fewer_checkpoints_than_horizon_needs(tmp_path: Path, tiny_run: Path):
    _assert_fails(
        ["extrapolate", str(tiny_run), "-o", str(tmp_path / "out"), "--horizon", "12"],
        "needs at least 13 checkpoints",
        tmp_path / "out",
    )


def test_module_sets_differ(tmp_path: Path, tiny_run: Path):
    def drop(t):
        for k in [k for k in t if "layers.1.mlp.up_proj" in k]:
            del t[k]

    _rewrite(tiny_run / "checkpoint-50", drop)
    line = _assert_fails(
        ["extrapolate", str(tiny_run), "-o", str(tmp_path / "out")], "step 50", tmp_path / "out"
    )
    assert "model.layers.1.mlp.up_proj" in line


def test_ranks_differ(tmp_path: Path):
    run = write_synthetic_run(tmp_path / "run", STEPS, TINY_SHAPES, TINY_SPEC)
    other = write_synthetic_run(tmp_path / "other", [70], TINY_SHAPES, type(TINY_SPEC)(rank=8, alpha=16.0))
    shutil.rmtree(run / "checkpoint-70")
    shutil.copytree(other / "checkpoint-70", run / "checkpoint-70")
    line = _assert_fails(["extrapolate", str(run), "-o", str(tmp_path / "out")], "step 70", tmp_path / "out")
    assert "(out, in, r)" in line


def test_scalings_differ(tmp_path: Path, tiny_run: Path):
    edit_config(tiny_run / "checkpoint-30", lora_alpha=32)
    _assert_fails(["extrapolate", str(tiny_run), "-o", str(tmp_path / "out")], "scaling", tmp_path / "out")


def test_duplicate_steps(tmp_path: Path, tiny_run: Path):
    a, b = tiny_run / "checkpoint-20", tiny_run / "checkpoint-30"
    line = _assert_fails(
        ["scan", "--checkpoint", str(a), "--step", "5", "--checkpoint", str(b), "--step", "5"],
        "two checkpoints for step 5",
    )
    assert str(a) in line and str(b) in line


def test_zero_size_tensor_is_zero3_placeholder(tmp_path: Path, tiny_run: Path):
    def empty(t):
        key = next(k for k in t if k.endswith("lora_A.weight"))
        t[key] = torch.empty(0)

    _rewrite(tiny_run / "checkpoint-40", empty)
    _assert_fails(["extrapolate", str(tiny_run), "-o", str(tmp_path / "out")], "ZeRO-3", tmp_path / "out")


def test_tiny_file_is_called_too_small_not_a_zero3_placeholder(tmp_path: Path, tiny_run: Path):
    # ZeRO-3's placeholders hold tensors of shape [0] (the test above); a file this small is a failed save
    save_file({}, str(tiny_run / "checkpoint-40" / "adapter_model.safetensors"))
    _assert_fails(["scan", str(tiny_run)], "too small to hold any adapter weights")


def test_nan_names_tensor_and_step(tmp_path: Path, tiny_run: Path):
    def poison(t):
        key = "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"
        t[key][0, 0] = float("nan")

    _rewrite(tiny_run / "checkpoint-60", poison)
    line = _assert_fails(
        ["extrapolate", str(tiny_run), "-o", str(tmp_path / "out")] + FAST, "NaN", tmp_path / "out"
    )
    assert "v_proj.lora_B.weight" in line and "step 60" in line


def test_lora_alpha_zero(tmp_path: Path, tiny_run: Path):
    edit_config(tiny_run / "checkpoint-10", lora_alpha=0)
    _assert_fails(["scan", str(tiny_run)], "lora_alpha is 0")


def test_unknown_device(tmp_path: Path, tiny_run: Path):
    _assert_fails(
        ["extrapolate", str(tiny_run), "-o", str(tmp_path / "out"), "--device", "tpu"],
        "unknown device",
        tmp_path / "out",
    )


def test_existing_output_without_overwrite(tmp_path: Path, tiny_run: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _assert_fails(["extrapolate", str(tiny_run), "-o", str(out)], "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_output(tmp_path: Path, tiny_run: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    code, output = _run(["extrapolate", str(tiny_run), "-o", str(out), "--overwrite"] + FAST)
    assert code == 0, output
    assert not (out / "old.txt").exists() and (out / "adapter_model.safetensors").exists()


def test_corrupt_safetensors(tmp_path: Path, tiny_run: Path):
    path = tiny_run / "checkpoint-80" / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:8] + b"{garbage" + data[16:200])
    line = _assert_fails(
        ["extrapolate", str(tiny_run), "-o", str(tmp_path / "out")], "corrupt safetensors", tmp_path / "out"
    )
    assert "checkpoint-80" in line


def test_failure_late_leaves_nothing(tmp_path: Path, tiny_run: Path, monkeypatch):
    """An error after files started to be written still leaves no output folder and no temporary."""
    import nextrap.run.adapters
    from nextrap.errors import ConfigError

    # the writers import write_adapter from nextrap.run.adapters when they write, so the patch reaches them
    real_write, calls = nextrap.run.adapters.write_adapter, []

    def boom(folder, *args, **kwargs):
        calls.append(folder)
        if len(calls) == 2:  # the first adapter is already on disk (in the temporary folder)
            raise ConfigError("simulated failure while writing")
        real_write(folder, *args, **kwargs)

    monkeypatch.setattr(nextrap.run.adapters, "write_adapter", boom)
    _assert_fails(
        ["extrapolate", str(tiny_run), "-o", str(tmp_path / "out"), "--coef", "1", "--coef", "2"] + FAST,
        "simulated",
        tmp_path / "out",
    )
    assert len(calls) == 2


def test_debug_shows_traceback(tmp_path: Path):
    from nextrap.errors import InputNotFoundError

    with pytest.raises(InputNotFoundError):
        CliRunner().invoke(main, ["--debug", "scan", str(tmp_path / "nope")], catch_exceptions=False)


def test_usage_error_exits_2(tmp_path: Path):
    code, _ = _run(["extrapolate", str(tmp_path)])  # no -o
    assert code == 2


def test_atomic_output_gets_ordinary_permissions(tmp_path: Path):
    """mkdtemp's private 0700 must not leak into the result: a shared run folder stays readable."""
    import os
    import stat

    from nextrap.output.atomic import atomic_directory

    old = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
