"""Where each method wins: backtest every method on real runs, with the error split into the move's parts.

For each run and method this runs the library's backtest (``nextrap backtest``: fit on a prefix, score
the held-out checkpoints in factored form) and records, per held-out checkpoint (all modules), the
relative error and cosine of the predicted move, and their split along each module's true top singular
direction (docs/method.md, "The parts of the move"): the true move's top share, each method's error on
the top part and on the rest. Per module kind too, so per-module differences show.

Runs: ``--run NAME=PATH[:UNTIL[:HOLDOUT:HORIZON]]`` (repeatable): only the checkpoints up to step
``UNTIL`` are used (the steps-saved benchmark's jump point plus the held-out ones: ``tiny@200`` fits on
10..150 and holds out 160..200, NExt's jump from 150 by up to one horizon); ``--glob NAME=PATTERN`` adds
every run matching a pattern (``seed-*``), one per match. ``--seeds``: NExt's predictor seeds (each one
refits every NExt-based method). ``auto`` is what ``--method auto`` would have chosen from the fit
prefix alone (its own backtest there, every method, the last horizon held out), scored like the
others. Resumable: every (run, method, seed) is one JSON line in ``--results``,
skipped when it is there; the table is rebuilt from that file.

    python benchmarks/combined.py --glob 'tiny2e-4@200=bench-data/rl_steps/seed-*/plain:200:5:5' \\
        --results benchmarks/results/combined/backtest.jsonl
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time
from pathlib import Path

# Measure the checkout this file lives in, not whatever nextrap is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = ("linear", "next", "next+linear", "relex-anchored", "auto")
PARTS = ("relative_error", "cosine", "top_share", "top_error", "rest_error", "top_cosine", "rest_cosine")


def parse_runs(args: argparse.Namespace) -> dict[str, tuple[Path, int | None, int | None, int | None]]:
    """``{name: (path, until, holdout, horizon)}`` from ``--run`` and ``--glob``."""
    specs: list[tuple[str, str]] = []
    for spec in args.run:
        name, _, rest = spec.partition("=")
        specs.append((name, rest))
    for spec in args.glob:
        name, _, rest = spec.partition("=")
        pattern, _, tail = rest.partition(":")
        for i, path in enumerate(sorted(glob.glob(pattern))):
            seed = next((p for p in Path(path).parts if p.startswith("seed-")), f"{i}")
            specs.append((f"{name}/{seed}", path + (":" + tail if tail else "")))
    runs = {}
    for name, rest in specs:
        path, *nums = rest.split(":")
        until = int(nums[0]) if nums else None
        holdout, horizon = (int(nums[1]), int(nums[2])) if len(nums) == 3 else (None, None)
        runs[name] = (Path(path), until, holdout, horizon)
    return runs


def _done(results: Path) -> list[dict]:
    if not results.is_file():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def bench_run(name: str, path: Path, until: int | None, holdout: int | None, horizon: int | None, args) -> None:
    import torch

    import nextrap
    from nextrap.ops.backtest import BacktestOptions, backtest, fit_prefix_length
    from nextrap.predictors import NExtConfig

    done = {(r["method"], r["seed"]) for r in _done(args.results) if r["run"] == name}
    traj = nextrap.open_run(path, verify=False)
    if until is not None:
        keep = sum(1 for s in traj.steps if s <= until)
        if traj.steps[-1] < until:
            print(f"  {name}: only up to step {traj.steps[-1]}, needs {until}: skipped for now", file=sys.stderr)
            return
        traj = traj.prefix(keep)
    traj = nextrap.open_run(traj)  # every tensor read once and checked, as the CLI does
    for seed in args.seeds:
        methods = [m for m in args.methods if (m, seed) not in done and (seed == args.seeds[0] or "next" in m or m == "auto")]
        if not methods:
            continue
        started = time.perf_counter()
        chosen = None
        scored = [m for m in methods if m != "auto"]
        if "auto" in methods:  # what --method auto would have chosen from the fit prefix alone
            prefix = fit_prefix_length(traj, BacktestOptions(holdout=holdout, horizon=horizon))
            inner = backtest(traj.prefix(prefix), BacktestOptions(horizon=horizon, predictor=NExtConfig(seed=seed)))
            chosen = inner.recommendation["method"]
            scored = list(dict.fromkeys([*scored, chosen]))
        options = BacktestOptions(
            holdout=holdout, horizon=horizon, methods=tuple(scored), predictor=NExtConfig(seed=seed)
        )
        result = backtest(traj, options, torch.device("cpu"))
        seconds = time.perf_counter() - started
        for method in methods:
            rows = [s for s in result.scores if s["method"] == (chosen if method == "auto" else method)]
            record = {
                "run": name,
                "method": method,
                "chosen": chosen if method == "auto" else None,
                "seed": seed,
                "fit_steps": [result.fit_steps[0], result.fit_steps[-1]],
                "heldout_steps": list(result.heldout_steps),
                "horizon": result.horizon,
                "rows": [{k: r[k] for k in ("step", "coef", "kind", *PARTS)} for r in rows],
                "seconds_all_methods": seconds,
                "load": os.getloadavg()[0],
            }
            with args.results.open("a") as f:
                f.write(json.dumps(record) + "\n")
        errs = {m: result.recommendation["mean_relative_error"][m] for m in scored}
        print(f"  {name} seed {seed}: " + ", ".join(f"{m} {e:.3f}" for m, e in errs.items()), file=sys.stderr)


def _mean(rows: list[dict], key: str, kind: str = "all") -> float:
    return statistics.mean(r[key] for r in rows if r["kind"] == kind)


def summarize(records: list[dict]) -> dict:
    """Per run and method: the means over held-out checkpoints (and NExt seeds) of every part."""
    out: dict = {}
    for r in records:
        cell = out.setdefault(r["run"], {}).setdefault(r["method"], [])
        cell.append({k: _mean(r["rows"], k) for k in PARTS} | {"kinds": _kinds(r["rows"])})
    return {
        run: {
            m: {k: statistics.mean(c[k] for c in cells) for k in PARTS}
            | {"n_seeds": len(cells), "kinds": _merge_kinds([c["kinds"] for c in cells])}
            for m, cells in methods.items()
        }
        for run, methods in out.items()
    }


def _kinds(rows: list[dict]) -> dict[str, dict[str, float]]:
    kinds = sorted({r["kind"] for r in rows} - {"all"})
    return {k: {p: _mean(rows, p, k) for p in ("relative_error", "top_error", "rest_error", "top_share")} for k in kinds}


def _merge_kinds(many: list[dict]) -> dict:
    return {k: {p: statistics.mean(m[k][p] for m in many) for p in many[0][k]} for k in many[0]}


def table(summary: dict, methods: list[str]) -> str:
    lines = [
        "Mean over held-out checkpoints (and NExt seeds) per run; relative error 1 = staying. top share: the true "
        "move's energy in its top singular direction; top / rest error: the error on each part relative to the "
        "part (staying = 1 on both).",
        "",
        f"{'run':<28} {'method':<20} {'error':>7} {'cosine':>7} {'top share':>9} {'top err':>8} {'rest err':>8} "
        f"{'top cos':>8} {'rest cos':>8}",
    ]
    groups: dict[str, list[str]] = {}
    for run in summary:
        groups.setdefault(run.split("/")[0], []).append(run)
    for run, cells in summary.items():
        for m in methods:
            if m in cells:
                c = cells[m]
                lines.append(
                    f"{run:<28} {m:<20} {c['relative_error']:>7.3f} {c['cosine']:>7.3f} {c['top_share']:>9.3f} "
                    f"{c['top_error']:>8.3f} {c['rest_error']:>8.3f} {c['top_cosine']:>8.3f} {c['rest_cosine']:>8.3f}"
                )
    lines += ["", "Mean over the runs of each group, and over every run (each run weighs the same)", ""]
    lines.append(f"{'group':<28} {'method':<20} {'error':>7} {'cosine':>7} {'top err':>8} {'rest err':>8} {'runs':>5}")
    for label, runs in [*groups.items(), ("every run", list(summary))]:
        for m in methods:
            have = [summary[r][m] for r in runs if m in summary[r]]
            if len(have) < len(runs):
                continue
            lines.append(
                f"{label:<28} {m:<20} {statistics.mean(c['relative_error'] for c in have):>7.3f} "
                f"{statistics.mean(c['cosine'] for c in have):>7.3f} {statistics.mean(c['top_error'] for c in have):>8.3f} "
                f"{statistics.mean(c['rest_error'] for c in have):>8.3f} {len(have):>5}"
            )
    lines += ["", "Mean relative error by module kind, over every run", ""]
    kinds = sorted({k for cells in summary.values() for c in cells.values() for k in c["kinds"]})
    lines.append(f"{'method':<20} " + " ".join(f"{k[:9]:>9}" for k in kinds))
    for m in methods:
        have = [cells[m]["kinds"] for cells in summary.values() if m in cells]
        if have:
            lines.append(
                f"{m:<20} "
                + " ".join(f"{statistics.mean(h[k]['relative_error'] for h in have if k in h):>9.3f}" for k in kinds)
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", default=[], metavar="NAME=PATH[:UNTIL[:HOLDOUT:HORIZON]]")
    p.add_argument("--glob", action="append", default=[], metavar="NAME=PATTERN[:UNTIL[:HOLDOUT:HORIZON]]")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="NExt predictor seeds")
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "combined" / "backtest.jsonl")
    p.add_argument("--table-only", action="store_true", help="measure nothing; tabulate --results")
    args = p.parse_args()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    runs = parse_runs(args)
    if not args.table_only:
        for name, (path, until, holdout, horizon) in runs.items():
            bench_run(name, path, until, holdout, horizon, args)
    records = [r for r in _done(args.results) if not runs or r["run"] in runs]
    text = table(summarize(records), args.methods)
    print(text)
    args.results.with_suffix(".txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
