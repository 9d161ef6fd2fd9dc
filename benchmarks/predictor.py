"""NExt predictor fit: time and backtest error of the old default against the new one, side by side.

For each run the rank-1 features of the fitting prefix are computed once; then every predictor
configuration is fitted on them and scored on the held-out checkpoints (mean relative error of the
predicted update over the held-out checkpoints, all modules; staying at the last checkpoint scores 1),
``--repeats`` times, configurations interleaved (A B, B A, ...) so that a change in the machine's load
hits both. Medians are reported, with ratios. Also reported: process CPU seconds of the fit (close to
the wall time an idle core would give when the machine is shared), per-group epochs and stop reasons.

Runs (created when missing):

* ``ref``:  the bundled tiny-policy reference run (``nextrap train-reference --steps 100 --save-steps 5``);
* ``smol``: a planted run with SmolLM2-135M's shapes (30 layers; hidden 576, intermediate 1536, k/v 192;
  r = 8; 8 checkpoints), backtested with ``--holdout 3 --horizon 2``;
* ``qwen``: a planted run with Qwen2.5-7B's shapes (``--qwen-layers``, default 28; r = 32;
  ``--qwen-checkpoints``, default 16), backtested with the default holdout and horizon.

Run: ``python benchmarks/predictor.py --runs ref smol qwen --root /tmp/nextrap-bench``.
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

# name -> (preset, overrides); "old" is the default before this benchmark existed
CONFIGS = {
    "old": ("auto", {}),
    "new": ("fast", {}),
    "new-bf16": ("fast", {"precision": "bfloat16"}),
    "new-1thread": ("fast", {"threads": 1}),
    "new-2threads": ("fast", {"threads": 2}),
}


def make_runs(args: argparse.Namespace) -> dict[str, tuple[Path, int | None, int | None]]:
    """``{name: (path, holdout, horizon)}``, writing the runs that are missing."""
    from nextrap.synthetic import PlantSpec, llama_like_shapes, write_synthetic_run

    runs = {}
    root = args.root
    if "ref" in args.runs:
        path = args.ref or root / "ref"
        if not (path / "checkpoint-100").exists():
            print(f"training the reference run into {path} (a few minutes)", file=sys.stderr)
            cmd = [sys.executable, "-m", "nextrap", "-q", "train-reference", "-o", str(path)]
            subprocess.run([*cmd, "--steps", "100", "--save-steps", "5"], check=True)
        runs["ref"] = (path, None, None)
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
        runs["qwen"] = (path, args.qwen_holdout, args.qwen_horizon)
    return runs


def bench_run(
    name: str, path: Path, holdout: int | None, horizon: int | None, args: argparse.Namespace
) -> dict:
    import nextrap
    from nextrap.backtest import BacktestOptions, score_prediction
    from nextrap.predictors import NExtConfig, NExtPredictor
    from nextrap.runs import resolve_horizon

    device = torch.device(args.device)
    traj = nextrap.open_run(path)
    K = len(traj.headers)
    opts = BacktestOptions(holdout=holdout, horizon=horizon)
    holdout = opts.holdout if opts.holdout is not None else min(5, K - 4)
    prefix = K - holdout
    fit = traj.prefix(prefix)
    horizon, _ = resolve_horizon(prefix, horizon)
    horizon_steps = fit.steps[-1] - fit.steps[-1 - horizon]
    targets = list(range(prefix, K))
    coefs = [(traj.steps[j] - fit.steps[-1]) / horizon_steps for j in targets]
    t0 = time.perf_counter()
    feats = nextrap.compute_features(fit, horizon, device)
    feature_s = time.perf_counter() - t0

    results: dict[str, dict] = {c: {"wall": [], "cpu": [], "err": [], "groups": None} for c in args.configs}
    for rep in range(args.repeats):
        order = args.configs if rep % 2 == 0 else list(reversed(args.configs))
        for label in order:
            preset, overrides = CONFIGS[label]
            cfg = NExtConfig.from_preset(preset, **overrides)
            if device.type == "cuda":
                torch.cuda.synchronize()
            w0, c0 = time.perf_counter(), time.process_time()
            pred = NExtPredictor(cfg).predict(fit, horizon, feats, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            rows = [
                r
                for r in score_prediction(traj, pred, prefix - 1, targets, coefs, device)
                if r["kind"] == "all"
            ]
            err = sum(r["relative_error"] for r in rows) / len(rows)
            res = results[label]
            res["wall"].append(wall)
            res["cpu"].append(cpu)
            res["err"].append(err)
            res["groups"] = [
                {k: g[k] for k in ("dim", "rows", "parameters", "epochs_run", "seconds", "stop_reason")}
                for g in pred.diagnostics["groups"]
            ]
            print(
                f"  {name} repeat {rep} {label}: fit {wall:.1f} s (cpu {cpu:.1f} s), error {err:.4f}",
                file=sys.stderr,
            )
    return {
        "run": name,
        "path": str(path),
        "checkpoints": K,
        "holdout": holdout,
        "horizon": horizon,
        "pairs": feats.pairs,
        "feature_seconds": feature_s,
        "results": results,
    }


def table(all_runs: list[dict], configs: list[str]) -> str:
    base = configs[0]
    lines = [
        f"{'run':<6} {'config':<13} {'fit s (median)':>14} {'cpu s':>7} {'speed-up':>9} {'rel. error':>10} "
        f"{'error ratio':>11}  epochs per group (d: epochs, stop reason)"
    ]
    for r in all_runs:
        b = r["results"][base]
        for label in configs:
            res = r["results"][label]
            wall, cpu, err = (statistics.median(res[k]) for k in ("wall", "cpu", "err"))
            groups = ", ".join(f"{g['dim']}: {g['epochs_run']} {g['stop_reason']}" for g in res["groups"])
            lines.append(
                f"{r['run']:<6} {label:<13} {wall:>14.1f} {cpu:>7.1f} {statistics.median(b['wall']) / wall:>8.1f}x "
                f"{err:>10.4f} {err / statistics.median(b['err']):>11.4f}  {groups}"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=["ref", "smol", "qwen"], choices=["ref", "smol", "qwen"])
    p.add_argument("--root", type=Path, default=Path("/tmp/nextrap-bench"), help="where runs are written")
    p.add_argument("--ref", type=Path, default=None, help="an existing reference run to use")
    p.add_argument("--qwen-layers", type=int, default=28)
    p.add_argument("--qwen-checkpoints", type=int, default=16)
    p.add_argument("--qwen-holdout", type=int, default=None, help="default: the backtest's")
    p.add_argument("--qwen-horizon", type=int, default=None, help="default: the backtest's")
    p.add_argument("--configs", nargs="+", default=["old", "new"], choices=sorted(CONFIGS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads for everything (0: torch's default)"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
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
    out = []
    for name, (path, holdout, horizon) in make_runs(args).items():
        out.append(bench_run(name, path, holdout, horizon, args))
    print(table(out, args.configs))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
