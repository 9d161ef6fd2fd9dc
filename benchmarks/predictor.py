"""NExt predictor fit: time and backtest error of the old default against the new one, side by side.

For each run the rank-1 features of the fitting prefix are computed once; then every predictor
configuration is fitted on them and scored on the held-out checkpoints (mean relative error of the
predicted update over the held-out checkpoints, all modules; staying at the last checkpoint scores 1),
``--repeats`` times, configurations interleaved (A B, B A, ...) so that a change in the machine's load
hits both. Medians are reported, with ratios. Also reported: process CPU seconds of the fit (close to
the wall time an idle core would give when the machine is shared), per-group network width, epochs and
stop reasons.

Configurations (``CONFIGS``): ``auto`` (the default: the latest move as a skip connection, stopping on
the held-out pair, frames from 2048 entries), ``frames`` (the same, frames from 512 entries),
``frames-all`` (every vector on a frame), ``plain`` (the previous default: no skip connection, stopping
on a training-loss plateau, every vector at full length), ``plain-frames`` / ``plain-frames-all`` (the
previous frames preset), ``residual-only`` (the skip connection without held-out stopping), ``reference``
(the paper's schedule). Repeat ``i`` fits with predictor seed ``i``, so the
spread of the errors over repeats is that of the networks' initialization; the table gives their mean
and standard deviation.

Runs (created when missing):

* ``ref``:  the bundled tiny-policy reference run (``nextrap train-reference --steps 100 --save-steps 5``,
  lr 1e-3: a noisy run no method predicts much better than staying);
* ``ref2e4``: the tiny policy at lr 2e-4, the steps-saved benchmark's regime (``--steps 200
  --save-steps 10``);
* ``smol``: a planted run with SmolLM2-135M's shapes (30 layers; hidden 576, intermediate 1536, k/v 192;
  r = 8; 8 checkpoints), backtested with ``--holdout 3 --horizon 2``;
* ``--run NAME=PATH[:HOLDOUT:HORIZON]``: any existing run (a real SmolLM2 run, say);
* ``qwen``: a planted run with Qwen2.5-7B's shapes (``--qwen-layers``, default 28; r = 32;
  ``--qwen-checkpoints``, default 16), backtested with the default holdout and horizon. ``auto`` takes
  hours on it on a CPU: compare on a cut (``--qwen-layers 4``, the first 4 layers of the same run) and
  time ``frames`` alone on the whole run.

Resumable: every (run, configuration, repeat) result is appended to ``--results`` (JSON lines) as it
is measured, and skipped when it is already there; the table is built from that file.

Run: ``python benchmarks/predictor.py --runs ref ref2e4 --configs auto plain --repeats 5``, then
``--runs qwen --qwen-layers 4 --configs auto plain-frames --repeats 3`` and ``--runs qwen --configs auto``
(benchmarks/README.md, "The NExt predictor fit", has the exact commands and the table).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

# Measure the checkout this file lives in, not whatever nextrap is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QWEN_7B = {"hidden": 3584, "intermediate": 18944, "kv_dim": 512}
SMOL_135M = {"hidden": 576, "intermediate": 1536, "kv_dim": 192}

# name -> (preset, overrides)
_PLAIN = {"residual": False, "stop": "train", "patience": 100}  # the fit before the skip connection and held-out stopping
CONFIGS = {
    "auto": ("auto", {}),  # the default: skip connection, held-out stopping (patience 30), frames from 2048 entries
    "frames": ("frames", {}),  # the same with frames from 512 entries
    "frames-all": ("frames", {"frame_min_dim": 2}),  # every vector but the sigmas on frames
    "auto-p100": ("auto", {"patience": 100}),  # the held-out rule with patience 100 (this round's first default)
    "frames-p100": ("frames", {"patience": 100}),
    "frames-all-p100": ("frames", {"frame_min_dim": 2, "patience": 100}),
    "plain": ("auto", {**_PLAIN, "frame": 0}),  # the previous default: full length, training-loss plateau
    "plain-frames": ("frames", _PLAIN),  # the previous frames preset
    "plain-frames-all": ("frames", {**_PLAIN, "frame_min_dim": 2}),
    "residual-only": ("auto", {"stop": "train", "frame": 0, "patience": 100}),  # skip connection, training-loss plateau
    "reference": ("reference", {}),
}


def _reference_run(path: Path, steps: int, save_steps: int, *options: str) -> Path:
    """A tiny-policy run of ``steps`` GRPO steps in ``path``, trained now unless its last checkpoint is there."""
    if not (path / f"checkpoint-{steps}").exists():
        print(f"training the reference run {path} {' '.join(options)} (a few minutes)", file=sys.stderr)
        cmd = [sys.executable, "-m", "nextrap", "-q", "train-reference", "-o", str(path), *options]
        subprocess.run([*cmd, "--steps", str(steps), "--save-steps", str(save_steps)], check=True)
    return path


def make_runs(args: argparse.Namespace) -> dict[str, tuple[Path, int | None, int | None]]:
    """``{name: (path, holdout, horizon)}``, writing the runs that are missing."""
    from nextrap.testing.synthetic import PlantSpec, llama_like_shapes, write_synthetic_run

    runs = {}
    root = args.root
    for spec in args.run:
        name, _, rest = spec.partition("=")
        path, *hh = rest.split(":")
        holdout, horizon = (int(hh[0]), int(hh[1])) if len(hh) == 2 else (None, None)
        runs[name] = (Path(path), holdout, horizon)
    if "ref" in args.runs:
        runs["ref"] = (_reference_run(args.ref or root / "ref", 100, 5), None, None)
    if "ref2e4" in args.runs:
        runs["ref2e4"] = (_reference_run(root / "ref2e4", 200, 10, "--lr", "2e-4"), None, None)
    if "smol" in args.runs:
        path = root / "smol"
        steps = [10 * (i + 1) for i in range(8)]
        if not (path / f"checkpoint-{steps[-1]}").exists():
            shapes = llama_like_shapes(30, **SMOL_135M)
            write_synthetic_run(path, steps, shapes, PlantSpec(rank=8, alpha=16.0))
        runs["smol"] = (path, 3, 2)
    if "qwen" in args.runs:
        path = root / f"qwen-{args.qwen_layers}l-{args.qwen_checkpoints}c"
        steps = [10 * (i + 1) for i in range(args.qwen_checkpoints)]
        if not (path / f"checkpoint-{steps[-1]}").exists():
            print(f"writing the 7B-shaped run into {path}", file=sys.stderr)
            shapes = llama_like_shapes(args.qwen_layers, **QWEN_7B)
            write_synthetic_run(path, steps, shapes, PlantSpec(rank=32, alpha=64.0))
        runs[f"qwen-{args.qwen_layers}l"] = (path, args.qwen_holdout, args.qwen_horizon)
    return runs


def _done(results: Path) -> list[dict]:
    if not results.is_file():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def bench_run(
    name: str, path: Path, holdout: int | None, horizon: int | None, args: argparse.Namespace
) -> None:
    """Measure every (configuration, repeat) of run ``name`` not yet in ``args.results``; append each."""
    import nextrap
    from nextrap.ops.backtest import BacktestOptions, fit_prefix_length, score_prediction
    from nextrap.predictors import NExtConfig, NExtPredictor
    from nextrap.run.open import resolve_horizon

    done = {(r["config"], r["repeat"]) for r in _done(args.results) if r["run"] == name}
    todo = [
        (rep, label)
        for rep in range(args.repeats)
        for label in (args.configs if rep % 2 == 0 else list(reversed(args.configs)))
        if (label, rep) not in done
    ]
    if not todo:
        return
    device = torch.device(args.device)
    traj = nextrap.open_run(path)
    K = len(traj.headers)
    prefix = fit_prefix_length(traj, BacktestOptions(holdout=holdout, horizon=horizon))  # as `nextrap backtest`
    holdout = K - prefix
    fit = traj.prefix(prefix)
    horizon, _ = resolve_horizon(prefix, horizon)
    horizon_steps = fit.steps[-1] - fit.steps[-1 - horizon]
    targets = list(range(prefix, K))
    coefs = [(traj.steps[j] - fit.steps[-1]) / horizon_steps for j in targets]
    t0 = time.perf_counter()
    feats = nextrap.compute_features(fit, horizon, device)
    feature_s = time.perf_counter() - t0
    for rep, label in todo:
        preset, overrides = CONFIGS[label]
        cfg = NExtConfig.from_preset(preset, **{"seed": rep, **overrides})
        if device.type == "cuda":
            torch.cuda.synchronize()
        w0, c0 = time.perf_counter(), time.process_time()
        pred = NExtPredictor(cfg).predict(fit, horizon, feats, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        rows = [r for r in score_prediction(traj, pred, prefix - 1, targets, coefs, device) if r["kind"] == "all"]
        err = sum(r["relative_error"] for r in rows) / len(rows)
        cosine = sum(r["cosine"] for r in rows) / len(rows)
        groups = [
            {k: g.get(k) for k in ("dim", "width", "rows", "parameters", "epochs_run", "seconds", "stop_reason")}
            for g in pred.diagnostics["groups"]
        ]
        record = {
            "run": name, "config": label, "repeat": rep, "wall": wall, "cpu": cpu, "err": err, "cosine": cosine,
            "groups": groups, "checkpoints": K, "holdout": holdout, "horizon": horizon,
            "pairs": feats.pairs, "feature_seconds": feature_s, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load": os.getloadavg()[0],
        }
        with args.results.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"  {name} repeat {rep} {label}: fit {wall:.1f} s (cpu {cpu:.1f} s), error {err:.4f}", file=sys.stderr)


def table(records: list[dict], runs: list[str], configs: list[str]) -> str:
    """One row per (run, configuration): median times, mean error over seeds, ratios to the first configuration."""
    lines = [
        f"{'run':<9} {'config':<14} {'n':>2} {'fit s (median)':>14} {'cpu s':>7} {'speed-up':>9} "
        f"{'rel. error (mean +- sd)':>24} {'error ratio':>11}  per group (d -> width: epochs, stop reason)"
    ]
    for run in runs:
        by_config = {c: [r for r in records if r["run"] == run and r["config"] == c] for c in configs}
        by_config = {c: rs for c, rs in by_config.items() if rs}
        if not by_config:
            continue
        base = next(iter(by_config.values()))
        base_wall = statistics.median(r["wall"] for r in base)
        base_err = statistics.mean(r["err"] for r in base)
        for label, rs in by_config.items():
            wall, cpu = (statistics.median(r[k] for r in rs) for k in ("wall", "cpu"))
            errs = [r["err"] for r in rs]
            err, sd = statistics.mean(errs), (statistics.stdev(errs) if len(errs) > 1 else 0.0)
            groups = ", ".join(
                f"{g['dim']} -> {g.get('width') or g['dim']}: {g['epochs_run']} {g['stop_reason']}"
                for g in rs[-1]["groups"]
            )
            lines.append(
                f"{run:<9} {label:<14} {len(rs):>2} {wall:>14.1f} {cpu:>7.1f} {base_wall / wall:>8.1f}x "
                f"{err:>15.4f} +- {sd:.4f} {err / base_err:>11.4f}  {groups}"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--runs", nargs="*", default=["ref", "ref2e4", "smol"], choices=["ref", "ref2e4", "smol", "qwen"]
    )
    p.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="NAME=PATH[:HOLDOUT:HORIZON]",
        help="also an existing run of yours (repeatable), e.g. a real SmolLM2 run: smolreal=runs/smol:3:2",
    )
    p.add_argument("--root", type=Path, default=Path("/tmp/nextrap-bench"), help="where runs are written")
    p.add_argument("--ref", type=Path, default=None, help="an existing reference run to use")
    p.add_argument("--qwen-layers", type=int, default=28)
    p.add_argument("--qwen-checkpoints", type=int, default=16)
    p.add_argument("--qwen-holdout", type=int, default=None, help="default: the backtest's")
    p.add_argument("--qwen-horizon", type=int, default=None, help="default: the backtest's")
    p.add_argument("--configs", nargs="+", default=["auto", "plain"], choices=sorted(CONFIGS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads for everything (0: torch's default)"
    )
    p.add_argument(
        "--results",
        type=Path,
        default=Path(__file__).parent / "results" / "predictor.jsonl",
        help="JSON lines of every measurement; measurements already there are not repeated",
    )
    args = p.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
        f"load average {os.getloadavg()[0]:.1f} at start",
        file=sys.stderr,
    )
    # Import costs (torch.optim pulls in torch._dynamo on first use) out of the timings.
    from nextrap.predictors import NExtNet

    torch.optim.AdamW(NExtNet(1, 4).parameters())
    runs = make_runs(args)
    for name, (path, holdout, horizon) in runs.items():
        bench_run(name, path, holdout, horizon, args)
    print(table(_done(args.results), list(runs), args.configs))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")

if __name__ == "__main__":
    main()
