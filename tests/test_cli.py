"""The command line: summaries, --json, multi-coefficient output folders, the demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from nextrap.cli.main import main


def _ok(args: list[str]) -> str:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_scan_text_and_json(tiny_run: Path):
    text = _ok(["scan", str(tiny_run)])
    assert "layout:       trl" in text and "10 (steps 10, 20" in text and "28 LoRA modules" not in text
    data = json.loads(_ok(["scan", str(tiny_run), "--json"]))
    assert data["steps"] == list(range(10, 101, 10))
    assert data["modules"] == 14 and data["rank"] == 4 and data["dtype"] == "float32"
    assert data["scalings"] == [2.0]


def test_extrapolate_two_coefficients(tmp_path: Path, tiny_run: Path):
    out = tmp_path / "jump"
    text = _ok(
        ["extrapolate", str(tiny_run), "-o", str(out), "--coef", "1.0", "--coef", "2.0", "--epochs", "30"]
    )
    assert (out / "coef-1.0" / "adapter_model.safetensors").exists()
    assert (out / "coef-2.0" / "adapter_config.json").exists()
    report = json.loads((out / "nextrap.json").read_text())
    assert [o["path"] for o in report["outputs"]] == ["coef-1.0", "coef-2.0"]
    assert report["options"]["predictor"]["epochs"] == 30
    assert "virtual step" in text and "report:" in text


def test_explicit_checkpoints_and_json_report(tmp_path: Path, tiny_run: Path):
    args = ["extrapolate", "-o", str(tmp_path / "out"), "--epochs", "5", "--json", "--horizon", "2"]
    for step in (30, 40, 50, 60):
        args += ["--checkpoint", str(tiny_run / f"checkpoint-{step}"), "--step", str(step)]
    report = json.loads(_ok(args))
    assert report["inputs"]["layout"] == "explicit"
    assert report["horizon"] == {"intervals": 2, "steps": 20, "requested": 2, "training_pairs": 2}
    assert report["outputs"][0]["virtual_step"] == 80


def test_reference_preset_from_cli(tmp_path: Path, tiny_run: Path):
    out = tmp_path / "out"
    _ok(["extrapolate", str(tiny_run), "-o", str(out), "--preset", "reference", "--epochs", "3"])
    cfg = json.loads((out / "nextrap.json").read_text())["options"]["predictor"]
    assert (cfg["preset"], cfg["lr"], cfg["epochs"], cfg["normalize"]) == ("reference", 2e-5, 3, False)


def test_summary_warns_only_when_a_group_ran_out_of_epochs(tmp_path: Path, tiny_run: Path):
    # The reference schedule runs its fixed 3 epochs (no warning); a budget of 3 under the held-out rule,
    # which needs 100 epochs without improvement to stop, runs out (a warning per group).
    nxt = ["--method", "next"]
    fixed = _ok(["extrapolate", str(tiny_run), "-o", str(tmp_path / "a"), *nxt, "--preset", "reference", "--epochs", "3"])
    short = _ok(["extrapolate", str(tiny_run), "-o", str(tmp_path / "b"), *nxt, "--epochs", "3"])
    groups = [line for line in short.splitlines() if line.strip().startswith("predictor d=")]
    assert groups and all("max_epochs" in line and "(ran out of epochs)" in line for line in groups)
    assert "fixed_epochs" in fixed and "ran out of epochs" not in fixed


@pytest.mark.slow
def test_demo_beats_staying_put(tmp_path: Path):
    text = _ok(["demo", "-o", str(tmp_path / "demo"), "--coef", "1.0", "--synthetic"])
    table = text.split("error against the planted future")[1].splitlines()
    coef, _, stay, jump, ratio = (float(x) for x in table[-1].split())
    assert coef == 1.0 and jump < stay and ratio == pytest.approx(jump / stay, abs=0.01)
