"""kill -9 at chosen and at random moments of ``extrapolate``, ``backtest --plot`` and ``push --dry-run``.

After each kill the destination is absent or complete (never partial), the run is unchanged, and
the next run of the command removes whatever the killed one left (``.NAME.tmp-*``, ``.NAME.old-*``).
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # every test runs the CLI in subprocesses it kills: 9-140 s each under load

REPO = Path(__file__).parents[1]

# Runs the CLI in-process, killing itself (SIGKILL, as kill -9 would) at the n-th call of a hook.
_CHILD = r"""
import os, signal, sys
hook, n = sys.argv[1], int(sys.argv[2])
calls = [0]
def killer(real):
    def wrapped(*a, **k):
        calls[0] += 1
        if calls[0] == n and hook.endswith(":before"):
            os.kill(os.getpid(), signal.SIGKILL)
        out = real(*a, **k)
        if calls[0] == n and hook.endswith(":after"):
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    return wrapped
if hook.startswith("replace"):
    os.replace = killer(os.replace)
elif hook.startswith("write_adapter"):
    import nextrap.run.adapters  # the writers look write_adapter up there at each call
    nextrap.run.adapters.write_adapter = killer(nextrap.run.adapters.write_adapter)
from nextrap.cli.main import main
main(sys.argv[3:], prog_name="nextrap")
"""


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


def _child(hook: str, n: int, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _CHILD, hook, str(n), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _cli(args: list[str]) -> str:
    """Run the CLI in this process (cheaper than a new one); returns stderr+stdout, asserting success."""
    from click.testing import CliRunner

    from nextrap.cli.main import main

    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _complete_adapter(out: Path) -> bool:
    """The output is whole: report and weights present and loadable, the report lists what is there."""
    report = json.loads((out / "nextrap.json").read_text())
    for entry in report["outputs"]:
        load_file(str(out / entry["path"] / "adapter_model.safetensors"))
    return True


def _hidden(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


@pytest.mark.parametrize(
    ("hook", "n", "old_survives"),
    [
        ("write_adapter:after", 1, True),  # adapter written into the temporary folder, report not yet
        ("replace:before", 1, True),  # all written, nothing renamed
        ("replace:after", 1, False),  # old output moved aside, new one not yet in place
        ("replace:after", 2, False),  # new output in place, the old one not yet removed
    ],
)
def test_kill_during_extrapolate_leaves_the_output_absent_or_whole(
    tiny_run: Path, tmp_path: Path, hook: str, n: int, old_survives: bool
):
    out = tmp_path / "out"
    run_before = _fingerprint(tiny_run)
    args = ["extrapolate", str(tiny_run), "-o", str(out), "--method", "linear", "--coef", "1", "--coef", "2"]
    _cli(args)
    old = _fingerprint(out)
    killed = _child(hook, n, [*args[:-4], "--coef", "3", "--overwrite"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if out.exists():
        assert _complete_adapter(out)
        assert (_fingerprint(out) == old) == old_survives
    assert _fingerprint(tiny_run) == run_before
    leftovers = _hidden(tmp_path, "out")
    assert leftovers  # the kill left something behind...
    import logging

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("nextrap.output.atomic").addHandler(handler)
    try:
        _cli([*args, "--overwrite"])
    finally:
        logging.getLogger("nextrap.output.atomic").removeHandler(handler)
    assert _hidden(tmp_path, "out") == []  # ...which the next run removed
    assert any("removed" in r and "interrupted" in r for r in records), records
    assert _complete_adapter(out)


def _kill_after(args: list[str], delay: float) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nextrap", *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode


def _timed(args: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "nextrap", *args], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return time.perf_counter() - started


def _random_kills(run: Path, tmp_path: Path, rounds: int, seed: int) -> None:
    """extrapolate, backtest --plot and push --dry-run, each killed ``rounds`` times at random moments."""
    rng = random.Random(seed)
    run_before = _fingerprint(run)
    out, plot = tmp_path / "out", tmp_path / "plots" / "bt.png"
    extrapolate = ["extrapolate", str(run), "-o", str(out), "--method", "linear", "--overwrite"]
    backtest = ["backtest", str(run), "--method", "linear", "--plot", str(plot), "--overwrite"]
    push = ["push", str(out), "me/adapter", "--dry-run"]
    duration = _timed(extrapolate)  # one whole life, to spread the kills over
    _cli(backtest)
    for args in (extrapolate, backtest, push):
        for _ in range(rounds):
            _kill_after(args, rng.uniform(0.3, 1.0) * duration)
            assert _fingerprint(run) == run_before
            if out.exists():  # absent only if killed between moving the old one aside and the rename
                assert _complete_adapter(out)
            if plot.exists():
                assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _cli(extrapolate)
    _cli(backtest)
    assert _complete_adapter(out)
    assert _hidden(tmp_path, "out") == [] and _hidden(plot.parent, "bt.png") == []


def test_kill_at_random_moments(tiny_run: Path, tmp_path: Path):
    _random_kills(tiny_run, tmp_path, rounds=1, seed=13)


def test_kill_at_many_random_moments(tiny_run: Path, tmp_path: Path):
    _random_kills(tiny_run, tmp_path, rounds=6, seed=14)
