"""Does jumping along the predicted trajectory save RL steps? Plain GRPO against extrapolate-and-resume.

For each seed, on the bundled reference task (``nextrap.reference``):

* plain:             GRPO for ``observe + max(c) * H + resume`` steps, evaluated at every checkpoint;
* restart, no jump:  the plain run's checkpoint at ``observe``, resumed with a fresh optimizer (the
                     control: every jump arm also restarts AdamW's moments);
* <method> c=...:    nextrap extrapolates the plain run's first ``observe`` steps with each method
                     (next, linear, relex, relex-anchored) and coefficient; training resumes from the jump (its
                     step counter at the virtual step) for ``resume`` steps.

A curve's x axis is the number of RL steps actually trained. The target accuracy is
``--target-fraction`` of the plain run's final accuracy (mean of its last 3 evaluations); the table
gives the steps each arm needed to first reach it, the fraction saved against the plain run, the
final accuracy and the wall time. Curves of all seeds go into one PNG (needs matplotlib:
``pip install matplotlib``; the table is printed without it).

Run: ``python benchmarks/rl_steps.py --seeds 0 1 2`` (about 8 minutes per seed on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from nextrap.reference import (
    EndToEndConfig,
    GRPOConfig,
    final_accuracy,
    jump_arm,
    plain_run,
    reset_arm,
    steps_to_reach,
)


def run_seed(seed: int, args: argparse.Namespace, out: Path) -> dict:
    grpo = GRPOConfig(
        seed=seed,
        save_steps=args.save_steps,
        prompts_per_step=args.prompts,
        lr=args.lr,
        eval_size=args.eval_size,
    )
    base = EndToEndConfig(observe=args.observe, resume=args.resume, horizon=args.horizon, grpo=grpo)
    started = time.perf_counter()
    plain = plain_run(out / "plain", base, extra_steps=round(max(args.coef) * base.horizon_steps))
    arms = {"plain": (plain.eval_accuracy(), time.perf_counter() - started, None)}
    control = reset_arm(plain, out / "restart", base)
    arms[control.name] = (control.curve, control.seconds, control.accuracy_at_jump)
    for method in args.methods:
        for coef in args.coef:
            arm = jump_arm(plain, out / f"{method}-c{coef:g}", base, coef, method)
            arms[arm.name] = (arm.curve, arm.seconds, arm.accuracy_at_jump)
    target = args.target_fraction * final_accuracy(arms["plain"][0])
    plain_steps = steps_to_reach(arms["plain"][0], target)
    rows = {}
    for name, (curve, seconds, at_jump) in arms.items():
        steps = steps_to_reach(curve, target)
        saved = None if steps is None or not plain_steps else 1 - steps / plain_steps
        rows[name] = {
            "steps_to_target": steps,
            "saved": saved,
            "final_accuracy": final_accuracy(curve),
            "trained_steps": max(curve),
            "accuracy_after_jump": at_jump,
            "seconds": seconds,
            "curve": curve,
        }
    return {
        "seed": seed,
        "target": target,
        "accuracy_before_jump": arms["plain"][0][args.observe],
        "arms": rows,
    }


def _fmt(x, spec: str, none: str = "never") -> str:
    return none if x is None else format(x, spec)


def print_table(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"reference task, {args.prompts} prompts x 8 answers per step, lr {args.lr:g}, checkpoints every "
        f"{args.save_steps} steps; jump after {args.observe} steps, horizon {args.horizon} intervals "
        f"({args.horizon * args.save_steps} steps), then {args.resume} steps; target = "
        f"{args.target_fraction:.0%} of the plain run's final accuracy",
        "",
        f"{'seed':>4}  {'arm':<18} {'acc. after jump':>15} {'steps to target':>15} {'saved':>7} "
        f"{'final acc.':>10} {'steps':>6} {'wall s':>7}",
    ]
    for res in results:
        for name, row in res["arms"].items():
            lines.append(
                f"{res['seed']:>4}  {name:<18} {_fmt(row['accuracy_after_jump'], '.3f', '-'):>15} "
                f"{_fmt(row['steps_to_target'], 'd'):>15} {_fmt(row['saved'], '+.0%', '-'):>7} "
                f"{row['final_accuracy']:>10.3f} {row['trained_steps']:>6d} {row['seconds']:>7.0f}"
            )
    lines += [
        "",
        "over seeds (the median of steps saved leaves out seeds where the arm never reached the target)",
    ]
    for name in results[0]["arms"]:
        saved = [r["arms"][name]["saved"] for r in results if r["arms"][name]["saved"] is not None]
        reached = sum(r["arms"][name]["steps_to_target"] is not None for r in results)
        final = statistics.median(r["arms"][name]["final_accuracy"] for r in results)
        lines.append(
            f"      {name:<18} reached target in {reached}/{len(results)} seeds, median steps saved "
            f"{_fmt(statistics.median(saved) if saved else None, '+.0%', '-')}, median final accuracy {final:.3f}"
        )
    text = "\n".join(lines)
    print(text)
    return text


def plot(results: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot")
        return False
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), sharey=True, squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        for name, row in res["arms"].items():
            xs = sorted(row["curve"])
            ax.plot(xs, [row["curve"][x] for x in xs], label=name, lw=1.5 if name == "plain" else 1)
        ax.axhline(res["target"], color="grey", ls=":", lw=1)
        ax.set_title(f"seed {res['seed']}")
        ax.set_xlabel("RL steps trained")
    axes[0][0].set_ylabel("held-out accuracy")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--observe", type=int, default=50)
    parser.add_argument("--resume", type=int, default=100)
    parser.add_argument("--horizon", type=int, default=5, help="in checkpoint intervals")
    parser.add_argument("--coef", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["next", "linear", "relex", "relex-anchored"],
        choices=["next", "linear", "relex", "relex-anchored"],
    )
    parser.add_argument("--save-steps", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-size", type=int, default=512)
    parser.add_argument("--target-fraction", type=float, default=0.95)
    parser.add_argument("--out", type=Path, default=Path("rl_steps_out"))
    args = parser.parse_args()

    results = []
    for seed in args.seeds:
        results.append(run_seed(seed, args, args.out / f"seed-{seed}"))
        print(f"seed {seed} done", flush=True)
    text = print_table(results, args)
    (args.out / "table.txt").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    if plot(results, args.out / "rl_steps.png"):
        print(f"plot: {args.out / 'rl_steps.png'}")


if __name__ == "__main__":
    main()
