"""Which RLVR runs can extrapolation help? A regime study on the bundled reference policies.

For each setting (policy, task, learning rate, prompts per step, LoRA rank) this trains one plain GRPO
run (resumable: a stopped run continues from its last checkpoint) and measures on it, with
``reference_premise.py`` (beside this file), what the papers' premise rests on: ``nextrap inspect``
(rank-1 share, E1, straightness), ``nextrap backtest`` for each method, and held-out accuracy right
after a one-horizon jump from NExt's jump point (3/8 of the run: 150 of 400) with no further training,
against the real checkpoints there and one horizon later. A setting is good ground for the steps-saved
benchmark when its plain run keeps improving, its backtest beats staying, and its jumps keep accuracy.

    python benchmarks/regimes.py --out bench-data/regimes                        # every setting
    python benchmarks/regimes.py --out bench-data/regimes --only tiny-lr2e-4 smollm2-add2

Tiny settings take a few minutes each on 2 free cores; smollm2 about a minute a step on a loaded
machine (15 s on a free one). Results: ``benchmarks/results/regimes/`` (one JSON per measured part,
and ``table.md``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import reference_premise as premise

from nextrap.reference import GRPOConfig, WarmStartConfig, train
from nextrap.reference.smollm2 import SmolLM2Config

HORIZON = 5  # checkpoint intervals, as NExt's 5 x 10 steps


def _tiny(**changes: Any) -> GRPOConfig:
    task = changes.pop("task", "sort")
    base = GRPOConfig(steps=400, save_steps=10, lr=2e-4, prompts_per_step=64, eval_size=512)
    return replace(base, warm=WarmStartConfig(task=task), **changes)


def _smol(**changes: Any) -> GRPOConfig:
    base = GRPOConfig(
        steps=100, save_steps=5, lr=1e-4, prompts_per_step=8, group_size=4, temperature=0.7, eval_size=64,
        warm=SmolLM2Config(dtype="bfloat16"),
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
    "smollm2-add2": _smol(),
}


def observe_step(config: GRPOConfig) -> int:
    """NExt's jump point, 3/8 of the run (150 of 400), on a checkpoint, with a horizon of history behind it."""
    save = config.save_steps
    return max(save * (HORIZON + 1), round(0.375 * config.steps / save) * save)


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
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench-data/regimes"), help="where the runs go")
    parser.add_argument("--only", nargs="*", choices=sorted(SETTINGS), help="settings to run [all]")
    parser.add_argument("--size", type=int, default=256, help="held-out problems per jump accuracy")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "regimes")
    args = parser.parse_args()
    names = args.only or list(SETTINGS)
    for name in names:
        config = SETTINGS[name]
        print(f"== {name}", flush=True)
        run = train(args.out / name / "plain", config, resume=True)
        observe = observe_step(config)
        record = {
            "config": asdict(config),
            "policy": config.policy,
            "observe": observe,
            "curve": {str(k): v for k, v in run.eval_accuracy().items()},
        }
        (args.results / name).mkdir(parents=True, exist_ok=True)
        (args.results / name / "curve.json").write_text(json.dumps(record, indent=2) + "\n")
        premise.run_one(name, run.output, args.results, [observe], HORIZON, args.size, premise.METHODS)
        table = curve_table(args.results, names) + "\n" + premise.table(
            args.results, names, sorted({observe_step(SETTINGS[n]) for n in names}), HORIZON, args.size, premise.METHODS
        )
        (args.results / "table.md").write_text(table)
        print(table, flush=True)


if __name__ == "__main__":
    main()
