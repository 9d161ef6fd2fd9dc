"""Fault injection: the CLI's writing commands against a hostile file system.

A child process runs every case through the CLI: read-only folders (as an unprivileged user when
the tests run as root, since root ignores permissions), a parent that is a file, a name over 255
bytes, a full disk (RLIMIT_FSIZE: writes fail with EFBIG past the limit), unreadable inputs. Each
must end with exactly one ``error:`` line and exit code 1, leave nothing next to the output, and
leave the run as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nextrap.testing.synthetic import write_synthetic_run

from .conftest import STEPS, TINY_SHAPES, TINY_SPEC

pytestmark = pytest.mark.slow  # every test runs the CLI's commands in subprocesses (12-25 s under load)

REPO = Path(__file__).parents[1]

_CHILD = r"""
import json, os, resource, sys
# Import everything the commands load lazily, then give up root: files are now checked as for a user.
import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot, matplotlib.backends.backend_agg
import peft, safetensors.torch, huggingface_hub, nextrap.ops.extrapolate, nextrap.ops.backtest, nextrap.ops.diagnostics
import nextrap.ops.plots, nextrap.publish.hub, nextrap.output.merge
from click.testing import CliRunner
from nextrap.cli.main import main
if os.geteuid() == 0:
    os.setgid(65534); os.setuid(65534)
results = []
for case in json.loads(sys.argv[1]):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if case.get("fsize"):
        resource.setrlimit(resource.RLIMIT_FSIZE, (case["fsize"], hard))
    try:
        r = CliRunner().invoke(main, case["args"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    trace = None
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        import traceback
        trace = "".join(traceback.format_exception(r.exception))
    results.append({"code": r.exit_code, "output": r.output, "trace": trace})
print(json.dumps(results))
"""


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def world():
    """A world-readable base folder (the child may run as nobody) with a run, a read-only folder, a file."""
    base = Path(tempfile.mkdtemp(prefix="nextrap-faults-"))
    base.chmod(0o777)
    run = write_synthetic_run(base / "run", STEPS, TINY_SHAPES, TINY_SPEC)
    for p in [run, *run.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    (base / "ro").mkdir()
    (base / "ro").chmod(0o555)
    (base / "file").write_text("not a folder")
    (base / "file").chmod(0o666)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _run_cases(cases: list[dict]) -> list[dict]:
    env = {**os.environ, "MPLCONFIGDIR": tempfile.mkdtemp(), "HF_HUB_OFFLINE": "1"}
    Path(env["MPLCONFIGDIR"]).chmod(0o777)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(cases)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_every_writing_command_fails_cleanly_on_file_system_faults(world: Path):
    run = str(world / "run")
    long_name = str(world / ("n" * 300))
    lin = ["--method", "linear"]
    cases = [
        # (args, the output that must not appear, a word the line must hold)
        (["extrapolate", run, "-o", str(world / "ro" / "out"), *lin], "ro/out", "ro"),
        (["extrapolate", run, "-o", str(world / "file" / "out"), *lin], "file/out", "file"),
        (["extrapolate", run, "-o", long_name, *lin], None, "too long"),
        (["extrapolate", run, "-o", str(world / "full"), *lin, "--no-hash"], "full", "size limit"),
        (["backtest", run, *lin, "--plot", str(world / "ro" / "p.png")], "ro/p.png", "ro"),
        (["backtest", run, *lin, "--plot", str(world / "file" / "p.png")], "file/p.png", "file"),
        (["backtest", run, *lin, "--plot", long_name + ".png"], None, "too long"),
        (["inspect", run, "--plot", str(world / "ro" / "plots")], "ro/plots", "ro"),
        (["inspect", run, "--plot", str(world / "file" / "plots")], "file/plots", "file"),
    ]
    fsize = {3: 4096}
    before = _fingerprint(world / "run")
    listing = sorted(p.name for p in world.iterdir())
    results = _run_cases([{"args": a, "fsize": fsize.get(i)} for i, (a, _, _) in enumerate(cases)])
    for (args, out, word), res in zip(cases, results, strict=True):
        lines = [line for line in res["output"].splitlines() if line.strip()]
        assert res["trace"] is None, (args, res["trace"])
        assert res["code"] == 1, (args, res["output"])
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, lines)
        assert word in lines[0], (args, lines[0])
        if out is not None:
            assert not (world / out).exists(), args
    assert sorted(p.name for p in world.iterdir()) == listing  # no lock, tmp or half-written file anywhere
    assert sorted(p.name for p in (world / "ro").iterdir()) == []
    assert _fingerprint(world / "run") == before


def test_unreadable_inputs_give_one_line_and_unreadable_folders_are_reported(world: Path):
    run = world / "run"
    (run / "checkpoint-40" / "adapter_model.safetensors").chmod(0o000)
    copy = world / "run2"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("adapter_model.safetensors"))
    for step in STEPS:
        shutil.copy(run / "checkpoint-10" / "adapter_model.safetensors", copy / f"checkpoint-{step}")
    for p in [copy, *copy.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    (copy / "checkpoint-50").chmod(0o000)
    (copy / "checkpoint-60" / "adapter_config.json").chmod(0o000)
    results = _run_cases(
        [
            {"args": ["scan", str(run)]},
            {"args": ["extrapolate", str(run), "-o", str(world / "o1"), "--method", "linear"]},
            {"args": ["scan", str(copy)]},
        ]
    )
    for res in results[:2]:
        lines = [line for line in res["output"].splitlines() if line.strip()]
        assert res["code"] == 1 and len(lines) == 1, res
        assert "checkpoint-40" in lines[0] and "Permission denied" in lines[0], lines
        assert "No such file" not in lines[0]
    lines = [line for line in results[2]["output"].splitlines() if line.strip()]
    assert results[2]["code"] == 1 and len(lines) == 1, results[2]
    assert "checkpoint-60" in lines[0] and "Permission denied" in lines[0], lines
    (copy / "checkpoint-60" / "adapter_config.json").chmod(0o644)
    results = _run_cases([{"args": ["scan", str(copy)]}])
    assert results[0]["code"] == 0, results[0]
    assert "skipped checkpoint-50: cannot read it (Permission denied)" in results[0]["output"]
    assert not (world / "o1").exists()
