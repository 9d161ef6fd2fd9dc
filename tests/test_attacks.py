"""The second adversarial round: what an attacker (a planted link, a hostile folder or endpoint) or a careless
user could do to a run, to other files on the disk, or to a token, and what nextrap does instead.

Each test names the row of the round's table it holds; each fails on the code before the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import traceback
from pathlib import Path

import pytest
from click.testing import CliRunner

from nextrap.cli.main import main

LINEAR = ["--method", "linear"]


def _fingerprint(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: files by content, links by target, folders as such."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "link -> " + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "special"
    return out


def _refused(args: list[str], *needles: str) -> str:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _ok(args: list[str]) -> str:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


# ------------------------------------------------------------------------ row 1: the lock never follows links


@pytest.mark.parametrize("target_name", ["adapter_model.safetensors", "adapter_config.json"])
def test_a_link_planted_as_the_lock_file_is_refused_and_its_target_untouched(tiny_run: Path, tmp_path: Path, target_name):
    out_parent = tmp_path / "shared"
    out_parent.mkdir()
    victim = tiny_run / "checkpoint-50" / target_name
    (out_parent / ".jump.lock").symlink_to(victim)
    before = _fingerprint(tiny_run)
    _refused(["extrapolate", str(tiny_run), "-o", str(out_parent / "jump"), *LINEAR], ".jump.lock", "link")
    assert _fingerprint(tiny_run) == before
    assert not (out_parent / "jump").exists()
    assert (out_parent / ".jump.lock").is_symlink()  # not ours to remove


def test_backtest_plot_lock_planted_as_a_link_leaves_the_run_alone(tiny_run: Path, tmp_path: Path):
    (tmp_path / ".scores.png.lock").symlink_to(tiny_run / "checkpoint-100" / "adapter_config.json")
    before = _fingerprint(tiny_run)
    _refused(["backtest", str(tiny_run), *LINEAR, "--plot", str(tmp_path / "scores.png")], "link")
    assert _fingerprint(tiny_run) == before
    assert not (tmp_path / "scores.png").exists()


@pytest.mark.parametrize("kind", ["hardlink", "fifo"])
def test_a_lock_name_taken_by_a_second_name_or_a_fifo_is_refused(tiny_run: Path, tmp_path: Path, kind: str):
    victim = tmp_path / "precious.txt"
    victim.write_text("precious")
    lock = tmp_path / ".jump.lock"
    if kind == "hardlink":
        os.link(victim, lock)
    else:
        os.mkfifo(lock)
    _refused(["extrapolate", str(tiny_run), "-o", str(tmp_path / "jump"), *LINEAR], ".jump.lock")
    assert victim.read_text() == "precious"
    assert not (tmp_path / "jump").exists()


def test_filelock_opens_the_lock_without_following_a_link_nor_truncating(tmp_path: Path):
    """Why nextrap's output lock may be built on filelock: checked here, on the installed version."""
    from filelock import FileLock

    victim = tmp_path / "victim"
    victim.write_bytes(b"x" * 100)
    (tmp_path / "planted.lock").symlink_to(victim)
    with pytest.raises(OSError):
        FileLock(tmp_path / "planted.lock", blocking=False, fallback_to_soft=False).acquire()
    assert victim.read_bytes() == b"x" * 100
    (tmp_path / "stale.lock").write_bytes(b"left by a killed writer")
    lock = FileLock(tmp_path / "stale.lock", blocking=False, fallback_to_soft=False)
    with lock:
        assert (tmp_path / "stale.lock").read_bytes() == b"left by a killed writer"  # opened, never truncated


# ------------------------------------------------------------------- row 2: the base model is an input


@pytest.fixture
def base_model(tmp_path: Path) -> Path:
    from .conftest import tiny_llama

    folder = tmp_path / "base"
    tiny_llama().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("where", ["itself", "inside", "parent"])
def test_merge_never_writes_over_or_into_the_base_model(tiny_run: Path, base_model: Path, where: str):
    out = {"itself": base_model, "inside": base_model / "merged", "parent": base_model.parent}[where]
    before = _fingerprint(base_model)
    args = ["extrapolate", str(tiny_run), "-o", str(out), "--merge", "--base-model", str(base_model), *LINEAR]
    _refused([*args, "--overwrite"], "the input")
    assert _fingerprint(base_model) == before


# ---------------------------------------------------- row 3: push publishes only the folder's own adapters


@pytest.fixture
def pushed(tmp_path: Path, tiny_run: Path) -> Path:
    _ok(["extrapolate", str(tiny_run), "-o", str(tmp_path / "out"), *LINEAR, "--coef", "1", "--coef", "2"])
    return tmp_path / "out"


def _plan(folder: Path) -> dict[str, Path]:
    from nextrap.publish.hub import plan_push

    return plan_push(folder, "alice/jump").files


@pytest.mark.parametrize("bad_path", ["../other", "ABSOLUTE"])
def test_push_never_takes_the_files_to_publish_from_the_reports_paths(pushed: Path, tmp_path: Path, bad_path: str):
    other = tmp_path / "other"
    shutil.copytree(pushed / "coef-2.0", other)  # another adapter on the disk
    report = json.loads((pushed / "nextrap.json").read_text())
    report["outputs"][0]["path"] = str(other) if bad_path == "ABSOLUTE" else bad_path
    (pushed / "nextrap.json").write_text(json.dumps(report))
    files = _plan(pushed)
    assert set(files) == {
        "coef-1.0/adapter_model.safetensors", "coef-1.0/adapter_config.json",
        "coef-2.0/adapter_model.safetensors", "coef-2.0/adapter_config.json", "nextrap.json",
    }  # fmt: skip
    root = pushed.resolve()
    assert all(Path(os.path.realpath(f)).is_relative_to(root) for f in files.values())


def test_push_refuses_a_weights_file_linked_from_outside_the_folder(pushed: Path, tmp_path: Path):
    secret = tmp_path / "someone-elses" / "adapter_model.safetensors"
    secret.parent.mkdir()
    shutil.copy(pushed / "coef-1.0" / "adapter_model.safetensors", secret)
    weights = pushed / "coef-2.0" / "adapter_model.safetensors"
    weights.unlink()
    weights.symlink_to(secret)
    line = _refused(["push", str(pushed), "alice/jump", "--dry-run"], "outside the folder")
    assert str(weights) in line


def test_push_refuses_an_adapter_file_that_is_not_a_safetensors_adapter(pushed: Path, tmp_path: Path):
    weights = pushed / "coef-2.0" / "adapter_model.safetensors"
    weights.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + b"A" * 400)
    _refused(["push", str(pushed), "alice/jump", "--dry-run"], str(weights))


def test_push_to_a_local_hub_commits_only_files_inside_the_folder(pushed: Path, tmp_path: Path, monkeypatch):
    from huggingface_hub import HfApi

    from nextrap.publish.hub import push

    from .hub_server import LocalHub

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    other = tmp_path / "other"
    shutil.copytree(pushed / "coef-2.0", other)
    report = json.loads((pushed / "nextrap.json").read_text())
    report["outputs"].append({**report["outputs"][0], "path": "../other"})
    (pushed / "nextrap.json").write_text(json.dumps(report))
    with LocalHub("hf_tok", "alice") as hub:
        push(pushed, "alice/jump", token="hf_tok", api=HfApi(endpoint=hub.url))
        committed = hub.state.repos["alice/jump"]["commits"][0]["files"]
    assert not any(".." in name or name.startswith("/") for name in committed)
    assert committed["coef-2.0/adapter_model.safetensors"] == (pushed / "coef-2.0" / "adapter_model.safetensors").read_bytes()
    assert sorted(committed) == sorted([*_plan(pushed), "README.md"])


# --------------------------------------------------------------------- row 4: the token is never shown

TOKEN = "hf_SECRET_never_shown_0123456789"
VERBOSITY = {"quiet": ["-q"], "default": [], "verbose": ["-v"], "debug-messages": ["-vv"], "traceback": ["--debug"]}


def _everything_shown(result) -> str:
    """What a user would see: stdout and stderr, and the traceback Python prints for an escaping exception."""
    shown = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        shown += "".join(traceback.format_exception(result.exception))
    return shown


@pytest.mark.parametrize("status", [pytest.param(400, marks=pytest.mark.slow), pytest.param(401, marks=pytest.mark.slow), 403])
@pytest.mark.parametrize("verbosity", list(VERBOSITY))
@pytest.mark.parametrize("source", ["option", "environment"])
def test_the_token_is_never_shown_even_when_the_endpoint_echoes_it(
    pushed: Path, tmp_path: Path, monkeypatch, status: int, verbosity: str, source: str
):
    from .hub_server import LocalHub

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    token_args = ["--token", TOKEN] if source == "option" else []
    if source == "environment":
        monkeypatch.setenv("HF_TOKEN", TOKEN)
    runner = CliRunner()
    with LocalHub(TOKEN, "alice") as hub:
        hub.state.echo_headers_with = status
        commands = {
            "push": ["push", str(pushed), "alice/jump", *token_args, "--hub-endpoint", hub.url],
            "extrapolate": [
                "extrapolate", str(pushed.parent / "run"), "-o", str(tmp_path / f"pushed-{status}"), *LINEAR,
                "--push-to-hub", "alice/jump", *token_args, "--hub-endpoint", hub.url,
            ],
        }  # fmt: skip
        for name, args in commands.items():
            result = runner.invoke(main, [*VERBOSITY[verbosity], *args])
            shown = _everything_shown(result)
            assert result.exit_code != 0, shown
            assert "refused" in shown or "rejected" in shown or "permission" in shown, shown
            assert TOKEN not in shown, f"{name} {verbosity}: {shown}"
            assert hub.state.requests, "the endpoint was never contacted"
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


# ------------------------------------ row 5: checkpoints' parents and the recorder's folder are inputs


def _explicit(run: Path) -> list[str]:
    args = []
    for step in (10, 20, 30, 40, 50, 60):
        args += ["--checkpoint", str(run / f"checkpoint-{step}")]
    return args


def test_an_output_among_explicit_checkpoints_is_refused(tiny_run: Path):
    before = _fingerprint(tiny_run)
    _refused(["extrapolate", *_explicit(tiny_run), "-o", str(tiny_run / "checkpoint-999"), *LINEAR], "the input")
    assert _fingerprint(tiny_run) == before


def test_extrapolate_into_never_writes_into_the_recorders_folder(tmp_path: Path):
    import torch
    from peft import LoraConfig, get_peft_model

    import nextrap
    from nextrap.errors import UnsafeOutputError

    from .conftest import tiny_llama

    model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    recorder = nextrap.TrajectoryRecorder(tmp_path / "rec", every=1)
    for step in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.01 * step)
        recorder.record(model, step)
    before = _fingerprint(tmp_path / "rec")
    with pytest.raises(UnsafeOutputError, match="the input"):
        nextrap.extrapolate_into(
            model, recorder, options=nextrap.ExtrapolateOptions(method="linear"), output=tmp_path / "rec" / "jump"
        )
    assert _fingerprint(tmp_path / "rec") == before


# ------------------------------------------------- row 6 and 15: trainer records are regular, bounded files


def _scan(run: Path) -> dict:
    """``nextrap scan --json`` in a child with a deadline: a FIFO read would hang it, /dev/zero fill memory."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "nextrap", "scan", str(run), "--json"],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "folder", "list", "bad-bytes"])
def test_an_unreadable_trainer_state_is_noted_never_hangs(tiny_run: Path, kind: str):
    state = tiny_run / "checkpoint-30" / "trainer_state.json"
    state.unlink()
    if kind == "fifo":
        os.mkfifo(state)
    elif kind == "dev-zero":
        state.symlink_to("/dev/zero")
    elif kind == "folder":
        state.mkdir()
    elif kind == "list":
        state.write_text("[30]")
    else:
        state.write_bytes(b"\xff\xfe{garbage")
    summary = _scan(tiny_run)
    assert summary["steps"] == list(range(10, 101, 10))  # the step from the folder name
    assert any(str(state) in note and "folder name" in note for note in summary["notes"]), summary["notes"]


# --------------------------------------------------------------------- row 7: steps stay in range


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--to-step", str(10**20)], "--to-step 100000000000000000000"),
        (["--to-step", str(10**13), "--format", "trl"], "--to-step 10000000000000"),
        (["--to-step", "200000"], "--to-step 200000: jumps"),
        (["--coef", "5000"], "--coef 5000: jumps"),
    ],
    ids=["1e20", "trl-past-max-step", "far-past-span", "huge-coef"],
)
def test_jumps_outside_the_step_range_or_absurdly_far_are_refused(tiny_run: Path, tmp_path: Path, args, needle):
    _refused(["extrapolate", str(tiny_run), "-o", str(tmp_path / "out"), *LINEAR, *args], needle)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------- row 8: one line each, before the work


def test_an_output_through_a_link_loop_is_one_line(tiny_run: Path, tmp_path: Path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    _refused(["extrapolate", str(tiny_run), "-o", str(tmp_path / "loop" / "out"), *LINEAR], "loop")


def test_merge_onto_a_base_model_of_other_shapes_fails_before_the_work(tiny_run: Path, tmp_path: Path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=61, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "other-base")
    line = _refused(
        ["extrapolate", str(tiny_run), "-o", str(tmp_path / "merged"), "--merge", "--base-model",
         str(tmp_path / "other-base"), "--method", "next", "--epochs", "100000"],
        "other-base", "layer model.layers.",
    )  # fmt: skip
    assert "weight shape" in line
    assert not (tmp_path / "merged").exists()


@pytest.mark.slow
def test_train_reference_from_an_adapter_of_another_architecture_is_one_line(
    tiny_run: Path, tmp_path: Path, reference_cache
):
    adapter = tiny_run / "checkpoint-50"
    config = json.loads((adapter / "adapter_config.json").read_text())
    config.pop("base_model_name_or_path")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    out = tmp_path / "trained"
    _refused(["train-reference", "-o", str(out), "--init-adapter", str(adapter), "--steps", "1", "--eval-size", "0"],
             "has weight shape", str(adapter))  # fmt: skip
    assert not out.exists()


# ------------------------------------------------------------- row 9: SIGTERM/SIGHUP clean up like Ctrl-C

_SIGNALLED = r"""
import os, signal, sys
import nextrap.run.adapters
real = nextrap.run.adapters.write_adapter
def write_then_signal(*a, **k):
    real(*a, **k)
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
nextrap.run.adapters.write_adapter = write_then_signal
from nextrap.cli.main import main
main(sys.argv[2:], prog_name="nextrap")
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_termination_signals_leave_nothing_behind(tiny_run: Path, tmp_path: Path, name: str):
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", _SIGNALLED, name, "extrapolate", str(tiny_run), "-o", str(out), *LINEAR],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert done.returncode == 128 + getattr(signal, name), done.stderr
    assert "nothing was written" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no output, no .out.tmp-*, no .out.lock


# ---------------------------------------------------------- row 10: two runs' checkpoints alternating


def test_alternating_checkpoints_of_two_runs_are_detected(tmp_path: Path):
    from nextrap.testing.synthetic import PlantSpec, write_synthetic_run

    from .conftest import TINY_SHAPES

    a = write_synthetic_run(tmp_path / "a", range(10, 101, 10), TINY_SHAPES, PlantSpec(rank=4, seed=1))
    b = write_synthetic_run(tmp_path / "b", range(10, 101, 10), TINY_SHAPES, PlantSpec(rank=4, seed=2))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for step in range(10, 101, 10):
        shutil.copytree((a if step % 20 else b) / f"checkpoint-{step}", mixed / f"checkpoint-{step}")
    _refused(["extrapolate", str(mixed), "-o", str(tmp_path / "out"), *LINEAR], "two runs", "--force")
    forced = _ok(["extrapolate", str(mixed), "-o", str(tmp_path / "out"), *LINEAR, "--force"])
    assert "alternate" in forced
    plain = _ok(["extrapolate", str(a), "-o", str(tmp_path / "one"), *LINEAR])
    assert "alternate" not in plain


# --------------------------------------------------------------- row 11: plots replace only on request


def test_plots_never_replace_an_existing_file_without_overwrite(tiny_run: Path, tmp_path: Path):
    plot = tmp_path / "bt.png"
    plot.write_bytes(b"a user's file")
    _refused(["backtest", str(tiny_run), *LINEAR, "--plot", str(plot)], "already exists", "--overwrite")
    assert plot.read_bytes() == b"a user's file"
    _ok(["backtest", str(tiny_run), *LINEAR, "--plot", str(plot), "--overwrite"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "coefficients.png").write_bytes(b"a user's file")
    _refused(["inspect", str(tiny_run), "--plot", str(tmp_path / "plots")], "coefficients.png", "--overwrite")
    assert (tmp_path / "plots" / "coefficients.png").read_bytes() == b"a user's file"


# ------------------------------------------------------------------- row 13: one lock per output


def test_outputs_whose_long_names_share_a_prefix_have_their_own_locks(tmp_path: Path):
    from nextrap.output.atomic import _lock_path

    a, b = tmp_path / ("x" * 130 + "-a"), tmp_path / ("x" * 130 + "-b")
    assert _lock_path(a) != _lock_path(b)
    wide = tmp_path / ("é" * 127)  # 254 bytes: the lock's name must still fit in 255
    assert len(os.fsencode(_lock_path(wide).name)) <= 255
    assert _lock_path(tmp_path / "out").name == ".out.lock"  # short names keep their readable lock


# ---------------------------------------------------------- row 14: a full disk at lock time names it

_FULL_DISK = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
from nextrap.output.atomic import output_lock
try:
    with output_lock(sys.argv[1]):
        print("locked")
except OSError as exc:
    print("error", exc.filename)
"""


def test_a_full_disk_when_locking_names_the_lock_and_leaves_nothing(tmp_path: Path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert done.stdout.strip() == f"error {tmp_path / '.out.lock'}", done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ row 16: offline fails up front


def test_offline_push_to_hub_fails_before_the_work(tiny_run: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    _refused(["extrapolate", str(tiny_run), "-o", str(tmp_path / "out"), *LINEAR, "--push-to-hub", "alice/x"],
             "offline")  # fmt: skip
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------- row 17: branch names as git has them


@pytest.mark.parametrize("revision", ["-x", "HEAD", "-"])
def test_revisions_git_refuses_as_branches_are_refused(pushed: Path, revision: str):
    _refused(["push", str(pushed), "alice/jump", "--dry-run", "--revision", revision], "not a valid branch name")


# ----------------------------------------------------------------- row 18: values out of range


def test_a_negative_explicit_step_is_refused(tiny_run: Path, tmp_path: Path):
    args = ["extrapolate", "-o", str(tmp_path / "out"), *LINEAR]
    for step, c in zip((-5, 20, 30, 40), ("checkpoint-10", "checkpoint-20", "checkpoint-30", "checkpoint-40"), strict=True):
        args += ["--checkpoint", str(tiny_run / c), "--step", str(step)]
    _refused(args, "--step -5")
    assert not (tmp_path / "out").exists()


def test_a_relex_rank_beyond_the_checkpoints_is_noted(tiny_run: Path, tmp_path: Path):
    text = _ok(["extrapolate", str(tiny_run), "-o", str(tmp_path / "out"), "--method", "relex", "--relex-rank", "1000"])
    assert "--relex-rank 1000 is more than the run's 10 checkpoints" in text


def test_train_reference_refuses_an_absurd_recorded_virtual_step(pushed: Path, tmp_path: Path):
    report = json.loads((pushed / "nextrap.json").read_text())
    report["outputs"][1]["virtual_step"] = 1e300
    (pushed / "nextrap.json").write_text(json.dumps(report))
    out = tmp_path / "trained"
    _refused(["train-reference", "-o", str(out), "--init-adapter", str(pushed / "coef-2.0")], "virtual_step = 1e+300")
    assert not out.exists()


# ----------------------------------------------------------------- row 19: API misuse is one error


def test_api_misuse_raises_one_nextrap_error(tmp_path: Path):
    import torch
    from peft import LoraConfig, get_peft_model

    import nextrap
    from nextrap.errors import ConfigError

    from .conftest import tiny_llama

    with pytest.raises(ConfigError, match="no LoRA adapter"):
        nextrap.TrajectoryRecorder(tmp_path / "r").record(torch.nn.Linear(2, 2), 10)
    model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match=r"no adapter named 'other'.*'default'"):
        nextrap.TrajectoryRecorder(tmp_path / "r", adapter_name="other").record(model, 10)
    with pytest.raises(ConfigError, match=r"TrajectoryRecorder\.every"):
        nextrap.TrajectoryRecorder(every="10")
    for make, field_name in [
        (lambda: nextrap.ExtrapolateOptions(horizon="5"), "ExtrapolateOptions.horizon"),
        (lambda: nextrap.ExtrapolateOptions(coefs="12"), "ExtrapolateOptions.coefs"),
        (lambda: nextrap.NExtConfig(epochs=None), "NExtConfig.epochs"),
        (lambda: nextrap.OutputOptions(overwrite="yes"), "OutputOptions.overwrite"),
        (lambda: nextrap.BacktestOptions(holdout=1.5), "BacktestOptions.holdout"),
    ]:
        with pytest.raises(ConfigError, match=field_name):
            make()
    with pytest.raises(ConfigError, match="ExtrapolateOptions"):
        nextrap.extrapolate(tmp_path / "run", tmp_path / "out", {"coefs": (1.0,)})


# ---------------------------------------------------------------- row 20: F8 named as unsupported


def test_an_f8_adapter_is_named_as_an_unsupported_dtype(tiny_run: Path):
    import torch
    from safetensors.torch import load_file, save_file

    path = tiny_run / "checkpoint-40" / "adapter_model.safetensors"
    tensors = {k: v.to(torch.float8_e4m3fn) for k, v in load_file(path).items()}
    save_file(tensors, path)
    _refused(["scan", str(tiny_run)], "dtype F8_E4M3 is not supported", "float32")


# ------------------------------------------------------------ row 21: byte-identical adapter configs


def test_target_modules_are_written_sorted(tiny_run: Path, tmp_path: Path):
    modules = ["v_proj", "q_proj", "o_proj", "k_proj", "gate_proj", "up_proj", "down_proj", "lm_head_x"]
    for ckpt in tiny_run.iterdir():
        cfg = json.loads((ckpt / "adapter_config.json").read_text())
        (ckpt / "adapter_config.json").write_text(json.dumps({**cfg, "target_modules": modules}))
    _ok(["extrapolate", str(tiny_run), "-o", str(tmp_path / "out"), *LINEAR])
    written = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert written["target_modules"] == sorted(modules)
