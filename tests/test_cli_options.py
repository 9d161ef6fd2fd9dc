"""Options from one source: dataclass metadata makes every option, the help is grouped and takes its
defaults from the presets, and --from-report reruns a recorded job exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from nextrap.cli.main import main
from nextrap.predictors.config import PRESETS


def _run(*args: str) -> str:
    out = CliRunner().invoke(main, list(args))
    assert out.exit_code == 0, out.output
    return out.output


def test_extrapolate_help_is_grouped_in_order():
    text = _run("extrapolate", "--help")
    sections = ["Input:", "What to compute:", "How far:", "NExt fit:", "Output:", "Publishing:", "Options:"]
    at = [text.index(f"\n{s}\n") for s in sections]
    assert at == sorted(at)
    # each option is in its section
    def line(flag: str) -> int:  # where the option's own line is (flags are named in other help texts too)
        return text.index(f"\n  {flag} ")

    assert line("--coef") > text.index("How far:") > line("--method") > text.index("What to compute:")
    assert line("--token") > text.index("Publishing:") > line("--overwrite") > text.index("Output:")


def test_fit_option_defaults_in_help_come_from_the_presets():
    text = " ".join(_run("extrapolate", "--help").split())
    assert f"reference: {PRESETS['reference'].lr:g}" in text and f"auto, frames: {PRESETS['auto'].lr:g}" in text
    assert f"auto, frames: {PRESETS['auto'].patience}; reference: {PRESETS['reference'].patience}" in text


def test_option_dataclasses_import_neither_click_nor_torch():
    code = (
        "import sys\n"
        "import nextrap.ops.options, nextrap.predictors.config, nextrap.publish.options\n"
        "bad = sorted(m for m in ('click', 'torch') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def test_from_report_reruns_the_recorded_job_and_options_given_replace_recorded_ones(tiny_run: Path, tmp_path: Path):
    first = tmp_path / "first"
    _run(
        "-q", "extrapolate", str(tiny_run), "-o", str(first), "--method", "next", "--coef", "1.5", "--epochs", "5",
        "--seed", "3", "--horizon", "2", "--no-residual", "--no-hash",
    )
    again = tmp_path / "again"
    _run("-q", "extrapolate", "--from-report", str(first / "nextrap.json"), "-o", str(again))
    a, b = _tensors(first), _tensors(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the same job, the same adapter
    old, new = (json.loads((f / "nextrap.json").read_text()) for f in (first, again))
    assert new["options"] == old["options"] and new["inputs"]["root"] == old["inputs"]["root"]
    assert new["options"]["predictor"]["epochs"] == 5 and new["options"]["predictor"]["residual"] is False

    changed = tmp_path / "changed"
    _run("-q", "extrapolate", "--from-report", str(first), "-o", str(changed), "--coef", "2", "--epochs", "7")
    opts = json.loads((changed / "nextrap.json").read_text())["options"]
    assert opts["coefs"] == [2.0] and opts["predictor"]["epochs"] == 7
    assert {k: v for k, v in opts.items() if k not in ("coefs", "predictor")} == {
        k: v for k, v in old["options"].items() if k not in ("coefs", "predictor")
    }
    assert opts["predictor"]["seed"] == 3 and opts["predictor"]["residual"] is False  # the rest as recorded


def test_from_report_of_something_else_is_one_line(tmp_path: Path):
    out = CliRunner().invoke(main, ["extrapolate", "--from-report", str(tmp_path), "-o", str(tmp_path / "x")])
    assert out.exit_code == 1 and "no nextrap.json" in out.output and not (tmp_path / "x").exists()


def test_from_report_takes_the_inputs_given_and_refuses_a_lone_step(tiny_run: Path, tmp_path: Path):
    first = tmp_path / "first"
    _run("-q", "extrapolate", str(tiny_run), "-o", str(first), "--no-hash")
    lone = CliRunner().invoke(main, ["extrapolate", "--from-report", str(first), "-o", str(tmp_path / "x"), "--step", "5"])
    assert lone.exit_code == 2 and "--step goes with --checkpoint" in lone.output
    # an --adapter-name given replaces the recorded one: the run has no such adapter, as without --from-report
    named = ["-o", str(tmp_path / "y"), "--adapter-name", "other"]
    plain = CliRunner().invoke(main, ["extrapolate", str(tiny_run), *named])
    rerun = CliRunner().invoke(main, ["extrapolate", "--from-report", str(first), *named])
    assert plain.exit_code == rerun.exit_code == 1 and plain.output == rerun.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_from_report_of_another_version_names_the_unknown_field(tiny_run: Path, tmp_path: Path):
    first = tmp_path / "first"
    _run("-q", "extrapolate", str(tiny_run), "-o", str(first), "--no-hash")
    report = json.loads((first / "nextrap.json").read_text())
    report["options"]["predictor"]["dropout"] = 0.1
    other = tmp_path / "other"
    other.mkdir()
    (other / "nextrap.json").write_text(json.dumps(report))
    out = CliRunner().invoke(main, ["extrapolate", "--from-report", str(other), "-o", str(tmp_path / "z")])
    assert out.exit_code == 1 and "options.predictor has dropout" in out.output and len(out.output.splitlines()) == 1
