"""benchmarks/device_check.py runs on the CPU (tiny run) end to end, so CI keeps the GPU check working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_check_runs_on_the_cpu_and_records_every_part(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--device", "cpu", "--out", str(tmp_path),
         "--threads", "1", "--budget", "1200"],
        capture_output=True, text=True, env=env, timeout=1500,
    )  # fmt: skip  (the budget is generous: this checks what is recorded, not how fast a loaded machine is)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert report["device"] == "cpu" and report["device_name"].startswith("cpu")
    assert set(report["parts"]) == {"gpu-tests", "rank1", "scale", "next-fit"}
    failed = {k: v.get("error") or v.get("tail") for k, v in report["parts"].items() if not v.get("ok")}
    assert not failed, failed
    rank1 = report["parts"]["rank1"]
    # the same features computed twice on the CPU agree exactly: the comparison itself works
    assert rank1["max_sigma_rel_diff"] < 1e-6 and rank1["min_abs_cos"] > 1 - 1e-6
    scale = json.loads((tmp_path / "scale.json").read_text())
    assert {r["command"] for r in scale["rows"]} >= {"floor", "backtest-linear"}
    assert all(r.get("seconds") for r in scale["rows"] if r["command"] != "floor")
    assert "device check on cpu" in done.stdout and "| tiny |" in done.stdout


def test_a_failing_part_is_recorded_not_fatal(tmp_path: Path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import device_check
    finally:
        sys.path.pop(0)
    result = device_check._run_part("boom", [sys.executable, "-c", "raise SystemExit('broken part')"], 30, tmp_path)
    assert result["ok"] is False and "broken part" in result["tail"]
    slow = device_check._run_part("slow", [sys.executable, "-c", "import time; time.sleep(30)"], 1, tmp_path)
    assert slow["ok"] is False and "timed out" in slow["error"]
