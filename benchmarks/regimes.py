"""Which RLVR runs can extrapolation help? A regime study on the bundled reference policies.

For each setting (policy, task, learning rate, prompts per step, LoRA rank) this trains one plain GRPO
run (resumable: a stopped run continues from its last checkpoint) and measures on it, with
``reference_premise.py`` (beside this file), what the papers' premise rests on: ``nextrap inspect``
(rank-1 share, E1, straightness), ``nextrap backtest`` for each method, and held-out accuracy right
after a one-horizon jump from NExt's jump point (3/8 of the run: 150 of 400) with no further training,
against the real checkpoints there and one horizon later. A setting is good ground for the steps-saved
benchmark when its plain run keeps improving, its backtest beats staying, and its jumps keep accuracy.

    python benchmarks/regimes.py --out bench-data/regimes                        # every setting
    python benchmarks/regimes.py --out bench-data/regimes --only tiny-lr2e-4 smollm2-lr5e-5
    # measure runs trained elsewhere (or still training: --no-train scores only the finished ones)
    python benchmarks/regimes.py --only smollm2-lr5e-5 --no-train \
        --plain smollm2-lr5e-5=bench-data/smol-protocol/seed-0/plain

The SmolLM2 settings train without evaluating (``eval_size=0``): the curve is scored afterwards every
``CURVE_EVERY`` steps on ``--curve-size`` held-out problems (cached in the run's folder), and their jumps
go 3 checkpoint intervals (15 steps) from 3/8 of the run. Tiny settings take a few minutes each on 2 free
cores; smollm2 20-40 s a step at one thread. Results: ``benchmarks/results/regimes/`` (one JSON per
measured part, ``table.md`` for the tiny policy and ``table-smollm2.md``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import reference_premise as premise

from nextrap.reference import GRPOConfig, WarmStartConfig, train
from nextrap.reference.evaluation import EvaluationCache
from nextrap.reference.grpo import TrainResult, load_run_config, saved_checkpoints
from nextrap.reference.smollm2 import SmolLM2Config

HORIZON = {"tiny": 5, "smollm2": 3}  # checkpoint intervals: NExt's 5 x 10 steps; 3 x 5 of an 80-step run
CURVE_EVERY = 10  # steps between the scored checkpoints of a run trained without evaluating


def _tiny(**changes: Any) -> GRPOConfig:
    task = changes.pop("task", "sort")
    base = GRPOConfig(steps=400, save_steps=10, lr=2e-4, prompts_per_step=64, eval_size=512)
    return replace(base, warm=WarmStartConfig(task=task), **changes)


def _smol(task: str = "add2", **changes: Any) -> GRPOConfig:
    base = GRPOConfig(
        steps=80, save_steps=5, lr=1e-4, prompts_per_step=8, group_size=4, temperature=0.7, eval_size=0,
        warm=SmolLM2Config(task=task, dtype="bfloat16"),
    )
    return replace(base, **changes)


SETTINGS: dict[str, GRPOConfig] = {
    "tiny-lr2e-4": _tiny(),  # the steady probe: 0.73 -> 0.89 over 400 steps
    "tiny-lr1e-3": _tiny(lr=1e-3),  # the first benchmark's fast, saturating regime
    "tiny-lr2e-4-p16": _tiny(prompts_per_step=16),
    "tiny-lr5e-5": _tiny(lr=5e-5),
    "tiny-lr2e-4-r32": _tiny(rank=32, alpha=64.0),
    "tiny-lr2e-4-add": _tiny(task="add"),
    "tiny-lr2e-4-p128": _tiny(prompts_per_step=128),
    # the pretrained policy: which setting keeps climbing for a whole protocol (80 steps)?
    "smollm2-lr1e-4": _smol(),  # learns add2 in ~45 steps, then plateaus (the first SmolLM2 run)
    "smollm2-lr5e-5": _smol(lr=5e-5),  # the protocol's setting (its seed-0 plain run)
    "smollm2-lr3e-5": _smol(lr=3e-5),
    "smollm2-lr5e-5-p4": _smol(lr=5e-5, prompts_per_step=4),  # half the answers per step: half the cost
    # the harder task; stopped at 40 steps: its sampled reward stayed at 0-3% over the first 25, so
    # nearly every GRPO group has no signal (all answers wrong, advantage 0)
    "smollm2-add3-lr1e-4": _smol(task="add3", steps=40),
}


def observe_step(config: GRPOConfig) -> int:
    """NExt's jump point, 3/8 of the run (150 of 400), on a checkpoint, with a horizon of history behind it."""
    save = config.save_steps
    return max(save * (HORIZON[config.policy] + 1), round(0.375 * config.steps / save) * save)


def curve(run: TrainResult, config: GRPOConfig, size: int) -> dict[int, float]:
    """Held-out accuracy by step: logged during training, or scored now every ``CURVE_EVERY`` steps."""
    if config.eval_size:
        return run.eval_accuracy()
    evals = EvaluationCache(run.output / "evaluations.json", config.warm, size)
    scored = {s: p for s, p in run.checkpoints.items() if s % CURVE_EVERY == 0}
    return {0: evals.accuracy(None)} | {s: evals.accuracy(p) for s, p in scored.items()}


def finished_run(folder: Path, config: GRPOConfig) -> TrainResult | None:
    """The run in ``folder`` if it trained all its steps with these settings (None while it trains)."""
    if not (folder / "nextrap_reference.json").is_file():
        return None
    recorded, _, _ = load_run_config(folder)
    if replace(recorded, steps=config.steps) != config:
        raise SystemExit(f"{folder}: trained with other settings than {config}")
    saved = saved_checkpoints(folder)
    return TrainResult(folder, saved, []) if config.steps in saved else None


def curve_table(out: Path, names: list[str]) -> str:
    lines = [
        "| setting | policy, task | lr | prompts x answers | r | held-out accuracy: start / jump point / end |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        path = out / name / "curve.json"
        if not path.is_file():
            continue
        rec = json.loads(path.read_text())
        c, curve = rec["config"], {int(k): v for k, v in rec["curve"].items()}
        first, last = min(curve), max(curve)
        mid = max(s for s in curve if s <= rec["observe"])
        lines.append(
            f"| {name} | {rec['policy']}, {c['warm']['task']} | {c['lr']:g} | {c['prompts_per_step']} x "
            f"{c['group_size']} | {c['rank']} | {curve[first]:.3f} (step {first}) / {curve[mid]:.3f} ({mid}) / "
            f"{curve[last]:.3f} ({last}) |"
        )
    curves = [json.loads((out / n / "curve.json").read_text()) for n in names if (out / n / "curve.json").is_file()]
    steps = sorted({int(s) for rec in curves for s in rec["curve"]})
    if len(steps) <= 20:  # the whole curves, one column per scored step
        lines += ["", "| setting | " + " | ".join(map(str, steps)) + " |", "|---|" + "---|" * len(steps)]
        for n in names:
            if (out / n / "curve.json").is_file():
                rec = json.loads((out / n / "curve.json").read_text())["curve"]
                lines.append(f"| {n} | " + " | ".join(f"{rec[str(s)]:.3f}" if str(s) in rec else "" for s in steps) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench-data/regimes"), help="where the runs go")
    parser.add_argument("--only", nargs="*", choices=sorted(SETTINGS), help="settings to run [all]")
    parser.add_argument("--size", type=int, default=256, help="held-out problems per jump accuracy")
    parser.add_argument("--curve-size", type=int, default=256, help="held-out problems per curve point")
    parser.add_argument("--plain", action="append", default=[], help="NAME=RUN: that setting's plain run is here")
    parser.add_argument("--no-train", action="store_true", help="measure finished runs only, train nothing")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "regimes")
    args = parser.parse_args()
    names = args.only or list(SETTINGS)
    elsewhere = dict(spec.split("=", 1) for spec in args.plain)
    for name in names:
        config = SETTINGS[name]
        folder = Path(elsewhere.get(name, args.out / name / "plain"))
        print(f"== {name}: {folder}", flush=True)
        run = finished_run(folder, config) if args.no_train else train(folder, config, resume=True)
        if run is None:
            print("   still training: skipped", flush=True)
            continue
        observe = observe_step(config)
        record = {
            "config": asdict(config),
            "policy": config.policy,
            "observe": observe,
            "run": str(folder),
            "curve": {str(k): v for k, v in curve(run, config, args.curve_size).items()},
        }
        (args.results / name).mkdir(parents=True, exist_ok=True)
        (args.results / name / "curve.json").write_text(json.dumps(record, indent=2) + "\n")
        horizon = HORIZON[config.policy]
        premise.run_one(name, run.output, args.results, [observe], horizon, args.size, premise.METHODS)
    for policy, table_name in (("tiny", "table.md"), ("smollm2", "table-smollm2.md")):
        group = [n for n in SETTINGS if SETTINGS[n].policy == policy and (args.results / n / "curve.json").is_file()]
        if not group:
            continue
        starts = sorted({observe_step(SETTINGS[n]) for n in group})
        text = curve_table(args.results, group) + "\n" + premise.table(
            args.results, group, starts, HORIZON[policy], args.size, premise.METHODS
        )
        (args.results / table_name).write_text(text)
        print(text, flush=True)


if __name__ == "__main__":
    main()
