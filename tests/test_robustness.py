"""Issue 13: exclusive output, stale-folder cleanup, validation at the edge, continuity, skipped folders,
push --dry-run validation and the smaller items. Each test failed before the fix."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from nextrap.cli.main import main
from nextrap.errors import NextrapError, OutputLockedError
from nextrap.output.atomic import atomic_directory, output_lock
from nextrap.testing.synthetic import PlantSpec, write_synthetic_run

from .conftest import STEPS, TINY_SHAPES, TINY_SPEC, edit_config

LINEAR = ["--method", "linear"]
REPO = Path(__file__).parents[1]


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


def _cli(args: list[str]) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


def _fails(args: list[str], *needles: str, out: Path | None = None) -> str:
    code, lines = _cli(args)
    assert code == 1, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    if out is not None:
        assert not out.exists()
        assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return lines[0]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------------------------- exclusive output


def test_second_writer_fails_with_one_line_while_the_first_holds_the_output(tiny_run: Path, tmp_path: Path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom nextrap.output.atomic import output_lock\n"
            f"with output_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        line = _fails(["extrapolate", str(tiny_run), "-o", str(out), *LINEAR], "another nextrap process")
        assert f"pid {holder.pid}" in line
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # the lock died with its holder (kill -9): the next writer goes ahead and leaves no lock file behind
    code, lines = _cli(["extrapolate", str(tiny_run), "-o", str(out), *LINEAR])
    assert code == 0, lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]


def test_lock_is_reentrant_in_one_process_and_exclusive_across_open_files(tmp_path: Path):
    out = tmp_path / "out"
    with output_lock(out), atomic_directory(out) as tmp:
        (tmp / "x").write_text("1")
    assert (out / "x").read_text() == "1"
    assert not (tmp_path / ".out.lock").exists()


def test_stale_hidden_folders_of_dead_writers_are_removed_and_reported(
    tiny_run: Path, tmp_path: Path, caplog
):
    from nextrap.output.atomic import MARKER, _host

    out = tmp_path / "out"
    pid = _dead_pid()
    dead = tmp_path / f".out.tmp-{_host()}-{pid}-abc123"
    alive = tmp_path / f".out.old-{_host()}-{os.getpid()}-abc123"
    elsewhere = tmp_path / f".out.tmp-otherhost-{pid}-abc123"
    unnamed = tmp_path / ".out.tmp-norecord"
    # A user's own folder that happens to carry such a name, without the marker nextrap writes: never removed.
    users = tmp_path / f".out.tmp-{_host()}-{pid}-mine"
    for folder in (dead, alive, elsewhere, unnamed, users):
        folder.mkdir()
        (folder / "partial.safetensors").write_bytes(b"x" * 10)
    for folder, (host, owner) in {dead: (_host(), pid), alive: (_host(), os.getpid()), elsewhere: ("otherhost", pid)}.items():
        (folder / MARKER).write_text(json.dumps({"pid": owner, "host": host}))
    with caplog.at_level(logging.WARNING, logger="nextrap"):
        code, lines = _cli(["extrapolate", str(tiny_run), "-o", str(out), *LINEAR])
    assert code == 0, lines
    assert not dead.exists()  # its writer died
    assert alive.exists() and elsewhere.exists() and unnamed.exists()  # alive, another host's, unknown: kept
    assert (users / "partial.safetensors").exists()  # no marker: not nextrap's, kept
    assert any("removed" in r.message and str(dead) in r.message for r in caplog.records)


def test_output_dot_leaves_no_hidden_folders(tiny_run: Path, tmp_path: Path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "stale.txt").write_text("old output")
    monkeypatch.chdir(work)
    code, lines = _cli(["extrapolate", str(tiny_run), "-o", ".", "--overwrite", *LINEAR])
    assert code == 0, lines
    monkeypatch.chdir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "work"]
    assert (work / "adapter_model.safetensors").is_file() and not (work / "stale.txt").exists()


# ---------------------------------------------------------------------------------- validation at the edge


def _set_raw_config(folder: Path, text_replacements: dict[str, str]) -> None:
    path = folder / "adapter_config.json"
    text = path.read_text()
    for old, new in text_replacements.items():
        assert old in text
        text = text.replace(old, new)
    path.write_text(text)


@pytest.mark.parametrize(
    ("field", "raw", "needle"),
    [
        ("r", "1e999", "'r' = inf"),
        ("lora_alpha", "NaN", "lora_alpha = nan"),
        ("lora_alpha", "Infinity", "lora_alpha = inf"),
        ("lora_alpha", "1e308", "outside"),
        ("lora_alpha", "1e-300", "outside"),
        ("r", '"four"', "expected a positive integer"),
        ("use_rslora", '"false"', "expected true or false"),
    ],
)
def test_config_numbers_must_be_finite_and_in_range(tiny_run: Path, tmp_path: Path, field, raw, needle):
    ckpt = tiny_run / "checkpoint-50"
    cfg = json.loads((ckpt / "adapter_config.json").read_text())
    cfg[field] = "@@"
    (ckpt / "adapter_config.json").write_text(json.dumps(cfg).replace('"@@"', raw))
    needle = needle.replace("'r'", "r")
    out = tmp_path / "out"
    line = _fails(
        ["extrapolate", str(tiny_run), "-o", str(out), *LINEAR], "adapter_config.json", needle, out=out
    )
    assert "checkpoint-50" in line


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("rank_pattern", {"q_proj": "x"}, "rank_pattern['q_proj']"),
        ("alpha_pattern", {"q_proj": "x"}, "alpha_pattern['q_proj']"),
        ("rank_pattern", {"(q_proj": 4}, "not a valid regular expression"),
        ("alpha_pattern", {"q_proj": 1e-300}, "outside"),
    ],
)
def test_patterns_are_checked(tiny_run: Path, tmp_path: Path, field, value, needle):
    edit_config(tiny_run / "checkpoint-30", **{field: value})
    _fails(["scan", str(tiny_run)], "checkpoint-30", needle)


def test_trainer_state_step_must_be_a_whole_number(tiny_run: Path):
    (tiny_run / "checkpoint-40" / "trainer_state.json").write_text('{"global_step": 1e999}')
    _fails(["scan", str(tiny_run)], "trainer_state.json", "global_step = inf")


@pytest.mark.parametrize(
    "state",
    [{"w": [1, 2]}, {"base_model.model.x.lora_A.weight": {"nested": torch.zeros(2, 2)}}],
    ids=["list", "nested-dict"],
)
def test_bin_with_non_tensors_is_refused(tiny_run: Path, state):
    ckpt = tiny_run / "checkpoint-20"
    (ckpt / "adapter_model.safetensors").unlink()
    torch.save(state, ckpt / "adapter_model.bin")
    _fails(["scan", str(tiny_run)], "adapter_model.bin", "not a tensor")


def test_blocked_pickle_is_one_line(tiny_run: Path, tmp_path: Path):
    ckpt = tiny_run / "checkpoint-20"
    (ckpt / "adapter_model.safetensors").unlink()
    marker = tmp_path / "ran"
    torch.save({"x": _Evil(str(marker))}, ckpt / "adapter_model.bin")
    _fails(["scan", str(tiny_run)], "Python objects besides tensors", "never runs")
    assert not marker.exists()


class _Evil:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_small_file_message_does_not_blame_zero3(tiny_run: Path):
    (tiny_run / "checkpoint-20" / "adapter_model.safetensors").write_bytes(b"\x08" + b"\0" * 20)
    line = _fails(["scan", str(tiny_run)], "too small to hold any adapter weights")
    assert "ZeRO" not in line


def test_integer_weights_are_refused(tiny_run: Path):
    path = tiny_run / "checkpoint-20" / "adapter_model.safetensors"
    tensors = {k: (v * 100).to(torch.int32) for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path))
    _fails(["scan", str(tiny_run)], "int32", "floating point")


def test_nan_in_a_middle_checkpoint_is_caught_by_every_method(tiny_run: Path, tmp_path: Path):
    path = tiny_run / "checkpoint-40" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    key = sorted(tensors)[3]
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(path))
    for method in ("linear", "relex"):
        out = tmp_path / f"out-{method}"
        _fails(
            ["extrapolate", str(tiny_run), "-o", str(out), "--method", method],
            "checkpoint-40",
            "NaN",
            out=out,
        )
    _fails(["backtest", str(tiny_run), "--method", "linear"], "NaN")


def test_backtest_with_a_nan_scaling_fails(tiny_run: Path):
    _set_raw_config(tiny_run / "checkpoint-60", {'"lora_alpha": 8.0': '"lora_alpha": NaN'})
    _fails(["backtest", str(tiny_run), "--method", "linear"], "lora_alpha = nan")


def test_output_overflow_names_the_module_and_suggests_a_smaller_coef():
    # A coefficient large enough to overflow float16 weights is refused before the work (a jump over 1000x the
    # observed span, see test_attacks); the overflow check stays behind it, for weights near their dtype's limit.
    from nextrap.errors import NonFiniteError
    from nextrap.ops.extrapolate import _finite_output

    big = torch.tensor([60000.0], dtype=torch.float32).to(torch.float16) * 2
    with pytest.raises(NonFiniteError, match=r"module model.layers.0.q_proj: .*overflow float16.*smaller --coef"):
        _finite_output(big, "model.layers.0.q_proj", 3.0)


def test_a_coefficient_that_would_overflow_is_refused_before_the_work(tmp_path: Path):
    run = write_synthetic_run(tmp_path / "run", STEPS, TINY_SHAPES, TINY_SPEC, dtype=torch.float16)
    out = tmp_path / "out"
    _fails(["extrapolate", str(run), "-o", str(out), "--coef", "1e7", *LINEAR], "--coef 1e+07", "smaller --coef", out=out)


# ---------------------------------------------------------------------------------- continuity


def _mixed_run(tmp_path: Path) -> Path:
    """Steps 10..50 from one run and 60..100 from another (other seed and amplitude) in one folder."""
    run = write_synthetic_run(tmp_path / "run", STEPS[:5], TINY_SHAPES, TINY_SPEC)
    other = write_synthetic_run(
        tmp_path / "other",
        STEPS,
        TINY_SHAPES,
        PlantSpec(curve="saturating", rank=4, alpha=8.0, tau=200.0, seed=7),
    )
    for step in STEPS[5:]:
        shutil.copytree(other / f"checkpoint-{step}", run / f"checkpoint-{step}")
    return run


def test_two_runs_mixed_in_one_folder_are_refused_naming_the_step(tmp_path: Path):
    run = _mixed_run(tmp_path)
    out = tmp_path / "out"
    _fails(["extrapolate", str(run), "-o", str(out), *LINEAR], "step 60", "from step 50", "--force", out=out)
    code, lines = _cli(["extrapolate", str(run), "-o", str(out), *LINEAR, "--force"])
    assert code == 0, lines
    report = json.loads((out / "nextrap.json").read_text())
    assert any("step 60" in n for n in report["notes"])


def test_a_continuous_run_passes_the_continuity_check(tiny_run: Path):
    from nextrap.run.open import open_run

    check = open_run(tiny_run).check
    assert check is not None and check.jumps == ()
    # the distances are the Frobenius norms of dense differences, computed independently
    from nextrap.run.adapters import open_adapter

    traj = open_run(tiny_run, verify=False)
    dense = []
    for ref in traj.refs:
        with open_adapter(ref) as reader:
            dense.append(
                {n: m.scaling * reader.get(m.b_key) @ reader.get(m.a_key) for n, m in traj.modules.items()}
            )
    expected = [
        sum(float((b[n] - a[n]).square().sum()) for n in a) ** 0.5 for a, b in itertools.pairwise(dense)
    ]
    assert check.distances == pytest.approx(expected, rel=1e-4)


def test_all_zero_run_is_said_not_to_move(tmp_path: Path):
    run = write_synthetic_run(tmp_path / "run", STEPS, TINY_SHAPES, TINY_SPEC)
    for step in STEPS:
        path = run / f"checkpoint-{step}" / "adapter_model.safetensors"
        save_file({k: torch.zeros_like(v) for k, v in load_file(str(path)).items()}, str(path))
    out = tmp_path / "out"
    code, lines = _cli(["extrapolate", str(run), "-o", str(out), "--epochs", "5"])
    assert code == 0, lines
    report = json.loads((out / "nextrap.json").read_text())
    assert any("never moved" in n for n in report["notes"])
    assert all(not g["converged"] for g in report["predictor"].get("groups", []))


# ---------------------------------------------------------------------------------- skipped checkpoints


def test_symlinked_checkpoints_are_followed_and_loops_end(tiny_run: Path, tmp_path: Path):
    picked = tmp_path / "picked"
    picked.mkdir()
    for step in (20, 40, 60, 80):
        (picked / f"checkpoint-{step}").symlink_to(tiny_run / f"checkpoint-{step}")
    (picked / "loop").symlink_to(picked)
    code, lines = _cli(["scan", str(picked), "--json"])
    assert code == 0, lines
    assert json.loads("\n".join(lines))["steps"] == [20, 40, 60, 80]


def test_checkpoint_final_is_reported_not_silently_skipped(tiny_run: Path, tmp_path: Path):
    shutil.copytree(tiny_run / "checkpoint-100", tiny_run / "checkpoint-final")
    code, lines = _cli(["scan", str(tiny_run)])
    assert code == 0, lines
    assert any("skipped checkpoint-final" in line and "--step" in line for line in lines), lines
    out = tmp_path / "out"
    code, lines = _cli(["extrapolate", str(tiny_run), "-o", str(out), *LINEAR])
    assert any("checkpoint-final" in n for n in json.loads((out / "nextrap.json").read_text())["notes"])


# ---------------------------------------------------------------------------------- push --dry-run


@pytest.fixture
def nextrap_output(tiny_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    code, lines = _cli(["extrapolate", str(tiny_run), "-o", str(out), *LINEAR])
    assert code == 0, lines
    return out


@pytest.mark.parametrize("repo_id", ["../x", "a" * 200, "owner/na$me!", "a/b/c"])
def test_push_dry_run_refuses_repo_ids_the_hub_rejects(nextrap_output: Path, repo_id: str):
    _fails(["push", str(nextrap_output), repo_id, "--dry-run"], "repository id")


@pytest.mark.parametrize("revision", ["../x", "a b", "x.lock", "feat..x", "r" * 300])
def test_push_dry_run_refuses_bad_revisions(nextrap_output: Path, revision: str):
    _fails(["push", str(nextrap_output), "me/adapter", "--dry-run", "--revision", revision], "revision")


def test_push_dry_run_refuses_folders_nextrap_did_not_write(tiny_run: Path, nextrap_output: Path):
    for folder in (tiny_run / "checkpoint-100", tiny_run):
        _fails(["push", str(folder), "me/adapter", "--dry-run"], "not written by nextrap", "--any-adapter")
    code, lines = _cli(["push", str(tiny_run / "checkpoint-100"), "me/adapter", "--dry-run", "--any-adapter"])
    assert code == 0 and lines[0].startswith("would upload"), lines
    code, lines = _cli(["push", str(nextrap_output), "me/adapter", "--dry-run", "--revision", "refs/pr/3"])
    assert code == 0, lines


# ---------------------------------------------------------------------------------- smaller items


def test_optimizer_keep_without_trl_format_is_refused(tiny_run: Path, tmp_path: Path):
    _fails(["extrapolate", str(tiny_run), "-o", str(tmp_path / "o"), "--optimizer", "keep"], "--format trl")


@pytest.mark.parametrize("coef", ["0", "-1"])
def test_zero_and_negative_coefficients_are_noted(tiny_run: Path, tmp_path: Path, coef: str):
    out = tmp_path / "out"
    code, lines = _cli(["extrapolate", str(tiny_run), "-o", str(out), f"--coef={coef}", *LINEAR])
    assert code == 0, lines
    notes = json.loads((out / "nextrap.json").read_text())["notes"]
    assert any(f"coefficient {float(coef):g}" in n for n in notes), notes


def test_usage_errors_exit_2():
    result = CliRunner().invoke(main, ["extrapolate", "--no-such-option"])
    assert result.exit_code == 2


def test_plot_paths_are_checked_before_the_work(tiny_run: Path, tmp_path: Path):
    (tmp_path / "file").write_text("x")
    _fails(
        ["backtest", str(tiny_run), "--method", "linear", "--plot", str(tmp_path / "file" / "p.png")],
        "is a file",
    )
    _fails(["backtest", str(tiny_run), "--method", "linear", "--plot", str(tmp_path / "p.pdf")], ".png")
    (tmp_path / "dir").mkdir()
    _fails(["backtest", str(tiny_run), "--method", "linear", "--plot", str(tmp_path / "dir")], "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file", "run"]


def test_library_errors_stay_nextrap_errors(tmp_path: Path):
    out = tmp_path / "out"
    with output_lock(out):
        child = textwrap.dedent(
            f"""
            from nextrap.output.atomic import output_lock
            from nextrap.errors import OutputLockedError
            try:
                with output_lock({str(out)!r}):
                    print("got it")
            except OutputLockedError:
                print("locked")
            """
        )
        done = subprocess.run([sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True)
    assert done.stdout.strip() == "locked", done.stderr
    assert issubclass(OutputLockedError, NextrapError)


@pytest.mark.slow
def test_transformers_progress_bars_stay_out_of_the_cli(tiny_run: Path, tmp_path: Path):
    from .conftest import tiny_llama

    base = tmp_path / "base"
    tiny_llama().save_pretrained(str(base))
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    done = subprocess.run(
        [sys.executable, "-m", "nextrap", "extrapolate", str(tiny_run), "-o", str(tmp_path / "m"), *LINEAR]
        + ["--merge", "--base-model", str(base)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert "Writing model shards" not in done.stderr and "Loading weights" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--coef", "1e308", *LINEAR], ("--coef 1e+308", "use a smaller --coef")),
        (["--method", "next", "--lr", "1e30", "--epochs", "5"], ("module model.layers", "lower --lr")),
    ],
    ids=["huge-coef", "huge-lr"],
)
def test_overflowing_options_are_one_line(tiny_run: Path, tmp_path: Path, args, needle):
    out = tmp_path / "out"
    _fails(["extrapolate", str(tiny_run), "-o", str(out), *args], *needle, out=out)


def test_seed_beyond_64_bits_is_a_usage_error(tiny_run: Path, tmp_path: Path):
    result = CliRunner().invoke(
        main, ["extrapolate", str(tiny_run), "-o", str(tmp_path / "o"), "--seed", str(2**65)]
    )
    assert result.exit_code == 2 and "--seed" in result.output
