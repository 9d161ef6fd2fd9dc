"""Does extrapolation save RL steps? The papers' protocols, paired by seed, with confidence intervals.

Every arm of a seed starts from that seed's plain GRPO run (``nextrap.reference.protocols`` has the
arms and their proportions: NExt's observe 3/8 of the run, jump c horizons, train 1/4 more; RELEX's
observe 3/16 and predict far ahead without training; RL-Extra's cycles; the restart control; AdamW
kept or warmed up after the jump; ``--method auto``). For each arm and seed:

* accuracy at the arm's budget of trained steps (5/8 of the run: 250 of 400) against the plain run at
  the same budget and at its end (the NExt paper's table: method@250 vs plain@250 and plain@400);
* steps to reach several targets (fractions of the plain run's final accuracy) and the steps saved.

Differences to the plain run are paired by seed: mean and 95% t interval (scipy). An arm saves steps,
or gains accuracy, only where its interval excludes zero. Finished arms are never rerun, so the
benchmark resumes after an interruption; ``--seeds`` can grow later.

Runs train without evaluating; the checkpoints the statistics use are scored afterwards, once each
(``--eval-every`` trained steps, the jump point, the budget and the end; cached in each seed's
``evaluations.json``).

    python benchmarks/rl_steps.py --seeds 0 1 2 3 4 --out bench-data/rl_steps
    # the pretrained policy (SmolLM2-135M-Instruct): the real-LLM setting of benchmarks/results/rl_steps-smollm2*
    python benchmarks/rl_steps.py --policy smollm2 --dtype bfloat16 --lr 5e-5 --prompts 8 --group-size 4 \
        --steps 80 --save-steps 5 --horizon 3 --eval-size 640 --eval-every 10 --out bench-data/smol-protocol \
        --arms restart "linear c=2" "next c=1.5 keep" "auto c=2" --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from nextrap.reference import GRPOConfig, WarmStartConfig
from nextrap.reference.endtoend import final_accuracy
from nextrap.reference.protocols import ArmResult, ProtocolConfig, arm_folder, run_seed
from nextrap.reference.smollm2 import SmolLM2Config
from nextrap.reference.stats import (
    accuracy_at,
    accuracy_standard_error,
    paired_difference,
    steps_saved,
    steps_to_reach,
)

TARGETS = (0.9, 0.95, 1.0)


def _config(args: argparse.Namespace) -> ProtocolConfig:
    if args.policy == "smollm2":
        warm = SmolLM2Config(task=args.task or "add2", dtype=args.dtype)
    else:
        warm = WarmStartConfig(task=args.task or "sort")
    grpo = GRPOConfig(
        steps=args.steps,
        save_steps=args.save_steps,
        lr=args.lr,
        prompts_per_step=args.prompts,
        group_size=args.group_size,
        eval_size=args.eval_size,
        temperature=args.temperature or (0.7 if args.policy == "smollm2" else 1.0),
        warm=warm,
        device=args.device,
    )
    return ProtocolConfig(
        grpo=grpo,
        horizon=args.horizon,
        coefs=tuple(args.coef),
        methods=tuple(args.methods),
        cycle_methods=tuple(args.cycle_methods),
        eval_every=args.eval_every,
    )


def summarize(results: dict[int, dict[str, ArmResult]], config: ProtocolConfig, baseline: str | None = None) -> dict:
    """Per arm: paired differences to the plain run at matched budgets and in steps to each target.

    Each arm is paired over the seeds it has finished in (at least 2, for an interval); ``n`` says how many.
    With ``baseline`` (an arm's name), each trained arm is also paired with that arm, seed by seed.
    """
    seeds = sorted(results)
    plain = {s: results[s]["plain"].curve for s in seeds}
    out: dict = {"seeds": seeds, "budget": config.budget, "length": config.length, "arms": {}, "baseline": baseline}
    for name in dict.fromkeys(n for s in seeds for n in results[s]):
        arms = {s: results[s][name] for s in seeds if name in results[s]}
        if len(arms) >= 2 and name != "plain":
            out["arms"][name] = _arm_row(name, arms, plain, config)
            if baseline and name != baseline and "vs_plain_same_steps" in out["arms"][name]:
                base = {s: results[s][baseline] for s in arms if baseline in results[s]}
                if len(base) >= 2:
                    out["arms"][name]["vs_baseline"] = _baseline_row(arms, base, plain, config)
    return out


def _baseline_row(
    arms: dict[int, ArmResult], base: dict[int, ArmResult], plain: dict[int, dict[int, float]], config: ProtocolConfig
) -> dict:
    """Paired with the baseline arm: accuracy at the budget, and steps saved to 95% of plain's final
    (over the seeds where both reached it)."""
    seeds = sorted(base)
    acc = paired_difference(
        [accuracy_at(arms[s].curve, config.budget) for s in seeds], [accuracy_at(base[s].curve, config.budget) for s in seeds]
    )
    ours, theirs = [], []
    for s in seeds:
        target = 0.95 * final_accuracy(plain[s])
        plain_steps = steps_to_reach(plain[s], target)
        a = steps_saved(plain_steps, steps_to_reach(arms[s].curve, target))
        b = steps_saved(plain_steps, steps_to_reach(base[s].curve, target))
        if a is not None and b is not None:
            ours.append(a)
            theirs.append(b)
    return {"accuracy": acc, "saved@0.95": paired_difference(ours, theirs) if ours else None}


def _arm_row(name: str, arms: dict[int, ArmResult], plain: dict[int, dict[int, float]], config: ProtocolConfig) -> dict:
    seeds = sorted(arms)
    row: dict = {"n": len(seeds)}
    trained = arms[seeds[0]].trained_steps
    if name.startswith("relex@") and not name.endswith("+train"):
        at = int(name.removeprefix("relex@"))
        acc = [arms[s].accuracy_after_jump for s in seeds]
        row["accuracy"] = acc
        row["vs_plain_at_target"] = paired_difference(
            acc, [accuracy_at(plain[s], min(at, config.length)) for s in seeds]
        )
        row["vs_plain_at_observe"] = paired_difference(acc, [accuracy_at(plain[s], config.relex_observe) for s in seeds])
    else:
        acc = [accuracy_at(arms[s].curve, trained) for s in seeds]
        row["accuracy"] = acc
        row["vs_plain_same_steps"] = paired_difference(acc, [accuracy_at(plain[s], trained) for s in seeds])
        row["vs_plain_end"] = paired_difference(acc, [accuracy_at(plain[s], config.length) for s in seeds])
        for frac in TARGETS:
            saved, reached = [], 0
            for s in seeds:
                target = frac * final_accuracy(plain[s])
                arm_steps = steps_to_reach(arms[s].curve, target)
                reached += arm_steps is not None
                fraction = steps_saved(steps_to_reach(plain[s], target), arm_steps)
                if fraction is not None:
                    saved.append(fraction)
            row[f"saved@{frac:g}"] = (paired_difference(saved, [0.0] * len(saved)) if saved else None, reached)
        jump = [arms[s].accuracy_after_jump for s in seeds]
        if all(j is not None for j in jump):
            row["after_jump"] = sum(jump) / len(jump)
    row["seconds"] = sum(arms[s].seconds for s in seeds) / len(seeds)
    return row


def table(summary: dict, config: ProtocolConfig) -> str:
    g = config.grpo
    se = accuracy_standard_error(0.5, g.eval_size)
    lines = [
        f"{g.policy} policy, task {g.warm.task}, lr {g.lr:g}, {g.prompts_per_step} prompts x {g.group_size} answers, "
        f"r {g.rank}; plain run {config.length} steps, checkpoint every {g.save_steps}; jump arms observe "
        f"{config.observe}, horizon {config.horizon_steps} steps, then {config.resume} steps (budget {config.budget}); "
        f"seeds {summary['seeds']}; held-out problems {g.eval_size} (accuracy standard error <= {se:.3f})",
        "differences to the plain run, paired by seed: mean [95% t interval]",
        "",
        f"{'arm':<22} {'acc. at budget':>14} {'vs plain, same steps':>34} {'vs plain at its end':>34} "
        f"{'after jump':>10} " + " ".join(f"{'saved to ' + format(t, '.0%') + ' (reached)':>36}" for t in TARGETS),
    ]
    for name, row in summary["arms"].items():
        mean_acc = sum(row["accuracy"]) / len(row["accuracy"])
        if "vs_plain_at_target" in row:
            lines.append(
                f"{name + ' (n=' + str(row['n']) + ')':<22} {mean_acc:>14.3f} {'vs plain at that step: ' + row['vs_plain_at_target'].text():>34} "
                f"{'vs plain at observe: ' + row['vs_plain_at_observe'].text():>34}"
            )
            continue
        saved = []
        for t in TARGETS:
            d, reached = row[f"saved@{t:g}"]
            saved.append(f"{(d.text('+.0%') if d else 'never'):>28} ({reached}/{row['n']})")
        after = row.get("after_jump")
        lines.append(
            f"{name + ' (n=' + str(row['n']) + ')':<22} {mean_acc:>14.3f} {row['vs_plain_same_steps'].text():>34} {row['vs_plain_end'].text():>34} "
            f"{(format(after, '.3f') if after is not None else '-'):>10} " + " ".join(saved)
        )
    rows = [(n, r["vs_baseline"]) for n, r in summary["arms"].items() if "vs_baseline" in r]
    if rows:
        lines += ["", f"paired with {summary['baseline']} (arm minus it), by seed: mean [95% t interval]"]
        lines.append(f"{'arm':<26} {'accuracy at budget':>34} {'steps saved to 95%':>34}")
        for name, vs in rows:
            saved = vs["saved@0.95"].text("+.0%") if vs["saved@0.95"] else "-"
            lines.append(f"{name:<26} {vs['accuracy'].text():>34} {saved:>34}")
    return "\n".join(lines)


def markdown(summary: dict, config: ProtocolConfig) -> str:
    """The table of benchmarks/README.md: each arm's accuracy at its budget and steps saved, paired differences with 95% CIs."""
    lines = [
        f"| arm (seeds) | accuracy at {config.budget} trained steps | vs plain at {config.budget} | vs plain at "
        f"{config.length} | accuracy right after the jump | steps saved to 90% / 95% of plain's final |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in summary["arms"].items():
        mean_acc = sum(row["accuracy"]) / len(row["accuracy"])
        if "vs_plain_at_target" in row:
            lines.append(
                f"| {name} ({row['n']}) | {mean_acc:.3f} (no training) | at step {name.split('@')[1]}: "
                f"{row['vs_plain_at_target'].text()} | at observe: {row['vs_plain_at_observe'].text()} | | |"
            )
            continue
        saved = []
        for t in (0.9, 0.95):
            d, reached = row[f"saved@{t:g}"]
            saved.append((d.text("+.0%") if d else "never") + f" ({reached}/{row['n']} reached)")
        after = row.get("after_jump")
        lines.append(
            f"| {name} ({row['n']}) | {mean_acc:.3f} | {row['vs_plain_same_steps'].text()} | "
            f"{row['vs_plain_end'].text()} | {'' if after is None else format(after, '.3f')} | {' / '.join(saved)} |"
        )
    rows = [(n, r["vs_baseline"]) for n, r in summary["arms"].items() if "vs_baseline" in r]
    if rows:
        lines += [
            "",
            f"| arm, paired with {summary['baseline']} (arm minus it) | accuracy at {config.budget} trained steps "
            "| steps saved to 95% of plain's final (seeds where both reached it) |",
            "|---|---|---|",
        ]
        for name, vs in rows:
            saved = vs["saved@0.95"].text("+.0%") if vs["saved@0.95"] else "-"
            lines.append(f"| {name} | {vs['accuracy'].text()} | {saved} |")
    return "\n".join(lines)


def plot(results: dict[int, dict[str, ArmResult]], config: ProtocolConfig, path: Path) -> bool:
    """Mean accuracy by trained steps over seeds, with a 95% band, for the plain run and the main arms."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot")
        return False
    from scipy import stats

    seeds = sorted(results)
    grid = list(range(0, config.length + 1, config.grpo.save_steps))
    fig, ax = plt.subplots(figsize=(8, 5))
    names = ["plain", "restart"] + [n for n in results[seeds[0]] if " c=" in n and len(n.split()) == 2]
    names += [n for n in results[seeds[0]] if n.startswith("cycles ")]
    for name in names:
        curves = [results[s][name] for s in seeds if name in results[s]]
        if not curves:  # an arm left out (--arms)
            continue
        xs = [x for x in grid if x <= curves[0].trained_steps and x >= min(curves[0].curve)]
        ys = [[accuracy_at(c.curve, x) for c in curves] for x in xs]
        mean = [sum(y) / len(y) for y in ys]
        ax.plot(xs, mean, label=name, lw=2 if name == "plain" else 1)
        if len(curves) > 1:
            t = stats.t.ppf(0.975, len(curves) - 1)
            half = [
                t * math.sqrt(sum((v - m) ** 2 for v in y) / (len(y) - 1)) / math.sqrt(len(y))
                for y, m in zip(ys, mean, strict=True)
            ]
            ax.fill_between(xs, [m - h for m, h in zip(mean, half, strict=True)],
                            [m + h for m, h in zip(mean, half, strict=True)], alpha=0.12)
    ax.axvline(config.budget, color="grey", ls=":", lw=1)
    ax.set(xlabel="RL steps trained", ylabel="held-out accuracy (mean over seeds, 95% band)",
           title=f"{config.grpo.policy}: plain run vs jump arms ({len(seeds)} seeds)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def recorded_arms(config: ProtocolConfig, out: Path, names: list[str] | None = None) -> list[str] | None:
    """The arms of one seed already recorded, of ``names`` (default: the configuration's arms); None when its
    plain run is not finished: nothing to compare."""
    final = out / "plain" / f"checkpoint-{config.length}"
    if not final.is_dir():
        return None
    return [n for n in (names or config.arm_names()) if (out / "arms" / f"{arm_folder(n)}.json").is_file()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--policy", choices=["tiny", "smollm2"], default="tiny")
    p.add_argument("--task", default=None, help="tiny: sort|add|reverse; smollm2: its chat tasks")
    p.add_argument("--steps", type=int, default=400, help="length L of the plain run")
    p.add_argument("--save-steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--eval-size", type=int, default=512, help="held-out problems per scored checkpoint")
    p.add_argument("--eval-every", type=int, default=None, help="trained steps between scored checkpoints [save steps]")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="smollm2: the base's dtype")
    p.add_argument("--device", default="cpu", help="where the policy runs (cpu, cuda, auto)")
    p.add_argument("--temperature", type=float, default=None, help="sampling [default: tiny 1.0, smollm2 0.7]")
    p.add_argument("--horizon", type=int, default=5, help="in checkpoint intervals")
    p.add_argument("--coef", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    p.add_argument("--methods", nargs="+", default=["next", "linear", "relex"])
    p.add_argument("--cycle-methods", nargs="+", default=["linear", "next", "relex"])
    p.add_argument("--arms", nargs="*", default=None, help="only these arms [all]")
    p.add_argument(
        "--summarize-only",
        action="store_true",
        help="train nothing: tabulate the arms already recorded (each over the seeds that have it)",
    )
    p.add_argument("--baseline", default=None, help="also pair every trained arm with this one (e.g. 'linear c=2')")
    p.add_argument("--stem", default=None, help="name of the result files [rl_steps-<policy>]")
    p.add_argument("--out", type=Path, default=Path("bench-data/rl_steps"))
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()
    config = _config(args)
    started = time.perf_counter()
    results = {}
    for seed in args.seeds:
        print(f"== seed {seed}", flush=True)
        arms = args.arms
        if args.summarize_only:
            arms = recorded_arms(config, args.out / f"seed-{seed}", args.arms)
            if arms is None:
                continue
        results[seed] = run_seed(
            config, seed, args.out / f"seed-{seed}", arms,
            on_arm=lambda a: print(f"   {a.name}: {a.seconds:.0f} s", flush=True),
        )
    summary = summarize(results, config, args.baseline)
    text = table(summary, config) + f"\n\nwall time this invocation: {time.perf_counter() - started:.0f} s"
    print(text)
    stem = args.stem or f"rl_steps-{config.grpo.policy}"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{stem}.txt").write_text(text + "\n")
    (args.results / f"{stem}.md").write_text(markdown(summary, config) + "\n")
    raw = {s: {n: a.to_dict() for n, a in arms.items()} for s, arms in results.items()}
    (args.results / f"{stem}.json").write_text(json.dumps(raw, indent=1) + "\n")
    if plot(results, config, args.results / f"{stem}.png"):
        print(f"plot: {args.results / f'{stem}.png'}")


if __name__ == "__main__":
    main()
