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

from nextrap.cli import main

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
    from nextrap.hub import plan_push

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

    from nextrap.hub import push

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


@pytest.mark.parametrize("status", [400, 401, 403])
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
