"""The papers' premise on both reference policies: rank-1 dominance, backtest, accuracy right after a jump.

For each plain run given (``NAME=RUN_DIR``, written by ``nextrap train-reference``) this runs, through
the CLI, ``nextrap inspect`` (rank-1 energy share, straightness), ``nextrap backtest`` for each method,
and for each ``--jump-from S``: ``nextrap extrapolate`` on the checkpoints up to S by one horizon
(``--horizon`` checkpoint intervals) with each method, then ``nextrap evaluate-reference`` on the jump
and on the run's real checkpoints at S and at S + horizon. No training after the jump.

Resumable: every part is one JSON file under ``--out`` (default ``benchmarks/results/premise/``),
skipped when it exists, so the script can be stopped and rerun while a run is still training (parts
whose checkpoints do not exist yet are left for a later call). The table goes to ``--out``/table-NAMES.md.

    python benchmarks/reference_premise.py --run tiny=runs/tiny-seed0 \\
        --run smollm2=runs/smol-seed0 --jump-from 50 --jump-from 75 --horizon 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("linear", "relex", "next")


def _nextrap(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(
        [sys.executable, "-m", "nextrap", "-q", *args], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"nextrap {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def _part(path: Path, compute) -> dict | None:
    """Load ``path`` or compute it (None = not possible yet) and write it; prints what it did."""
    if path.is_file():
        return json.loads(path.read_text())
    started = time.perf_counter()
    value = compute()
    if value is None:
        print(f"  {path.name}: not yet (checkpoints missing)")
        return None
    value["seconds"] = round(time.perf_counter() - started, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")
    print(f"  {path.name}: done in {value['seconds']} s")
    return value


def _checkpoints(run: Path) -> dict[int, Path]:
    found = {}
    for folder in run.glob("checkpoint-*"):
        step = folder.name.removeprefix("checkpoint-")
        if step.isdigit() and (folder / "adapter_model.safetensors").is_file():
            found[int(step)] = folder
    return dict(sorted(found.items()))


def _eval_args(run: Path) -> list[str]:
    info = json.loads((run / "nextrap_reference.json").read_text())
    warm = info["config"]["warm"]
    if info.get("policy") == "smollm2":
        return ["--policy", "smollm2", "--task", warm["task"], "--dtype", warm["dtype"]]
    return ["--policy", "tiny", "--task", warm["task"], "--base-seed", str(warm["seed"])]


def _evaluate(adapter: Path, run: Path, size: int) -> float:
    out = _nextrap("evaluate-reference", str(adapter), *_eval_args(run), "--size", str(size), "--json")
    return json.loads(out)["accuracy"]


def _jump(run: Path, start: int, horizon: int, method: str, size: int) -> dict | None:
    ckpts = _checkpoints(run)
    interval = json.loads((run / "nextrap_reference.json").read_text())["config"]["save_steps"]
    target = start + horizon * interval
    if start not in ckpts or target not in ckpts:
        return None
    observed = [(s, p) for s, p in ckpts.items() if s <= start]
    args = [a for s, p in observed for a in ("--checkpoint", str(p), "--step", str(s))]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "jump"
        _nextrap(
            "extrapolate",
            *args,
            "-o",
            str(out),
            "--method",
            method,
            "--coef",
            "1.0",
            "--horizon",
            str(horizon),
        )
        acc = _evaluate(out, run, size)
    return {"method": method, "from": start, "to": target, "accuracy": acc, "size": size}


def run_one(name: str, run: Path, out: Path, starts: list[int], horizon: int, size: int, methods) -> None:
    print(f"{name}: {run}")
    folder = out / name
    if len(_checkpoints(run)) < 4:
        print("  fewer than 4 checkpoints: nothing to do yet")
        return
    last = max(_checkpoints(run))
    _part(folder / f"inspect-{last}.json", lambda: json.loads(_nextrap("inspect", str(run), "--json")))
    for method in methods:
        _part(
            folder / f"backtest-{method}-{last}.json",
            lambda m=method: json.loads(_nextrap("backtest", str(run), "--method", m, "--json")),
        )
    ckpts = _checkpoints(run)
    interval = json.loads((run / "nextrap_reference.json").read_text())["config"]["save_steps"]
    for start in starts:
        target = start + horizon * interval
        for step in (start, target):
            _part(
                folder / f"real-{step}-n{size}.json",
                lambda s=step: (
                    {"step": s, "accuracy": _evaluate(ckpts[s], run, size), "size": size}
                    if s in ckpts
                    else None
                ),
            )
        for method in methods:
            _part(
                folder / f"jump-{method}-{start}-h{horizon}-n{size}.json",
                lambda m=method, s=start: _jump(run, s, horizon, m, size),
            )


def table(out: Path, names: list[str], starts: list[int], horizon: int, size: int, methods) -> str:
    lines = [
        "| policy | checkpoints | rank-1 share first / mid / last | line R^2 | backtest mean rel. error (stay = 1): "
        + " / ".join(methods)
        + " | cosine at c = 1 (all) |",
        "|---|---|---|---|---|---|",
    ]
    jumps = [
        "| policy | jump | real at S | " + " | ".join(f"{m} jump" for m in methods) + " | real at S + H |",
        "|---|---|---|" + "---|" * len(methods) + "---|",
    ]
    for name in names:
        folder = out / name
        inspects = sorted(folder.glob("inspect-*.json"), key=lambda p: int(p.stem.split("-")[1]))
        if not inspects:
            continue
        last = int(inspects[-1].stem.split("-")[1])
        ins = json.loads(inspects[-1].read_text())
        s = ins["summary"]["all"]
        errors, cosines = [], []
        for m in methods:
            path = folder / f"backtest-{m}-{last}.json"
            if not path.is_file():
                errors.append("-")
                cosines.append("-")
                continue
            bt = json.loads(path.read_text())
            errors.append(f"{bt['recommendation']['mean_relative_error'][m]:.3f}")
            at_one = [r for r in bt["scores"] if r["kind"] == "all" and abs(r["coef"] - 1.0) < 1e-9]
            cosines.append(f"{m} {sum(r['cosine'] for r in at_one) / max(1, len(at_one)):.2f}")
            fit, held = bt["fit_steps"], bt["heldout_steps"]
        lines.append(
            f"| {name} | {ins['steps'][0]}-{ins['steps'][-1]} (fit {fit[0]}-{fit[-1]}, held out "
            f"{held[0]}-{held[-1]}) | {s['rank1_share_first']:.2f} / {s['rank1_share_mid']:.2f} / "
            f"{s['rank1_share_last']:.2f} | {s['line_r2']:.3f} | {' / '.join(errors)} | {', '.join(cosines)} |"
        )
        for start in starts:
            real = sorted(folder.glob(f"real-{start}-n{size}.json"))
            if not real:
                continue
            row = [json.loads(real[0].read_text())]
            cells = []
            target = None
            for m in methods:
                p = folder / f"jump-{m}-{start}-h{horizon}-n{size}.json"
                if p.is_file():
                    j = json.loads(p.read_text())
                    target = j["to"]
                    cells.append(f"{j['accuracy']:.3f}")
                else:
                    cells.append("-")
            after = folder / f"real-{target}-n{size}.json" if target else None
            far = f"{json.loads(after.read_text())['accuracy']:.3f}" if after and after.is_file() else "-"
            jumps.append(
                f"| {name} | {start} -> {target} | {row[0]['accuracy']:.3f} | {' | '.join(cells)} | {far} |"
            )
    text = "\n".join(lines) + f"\n\nHeld-out accuracy on {size} problems, no training after the jump:\n\n"
    return text + "\n".join(jumps) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR (repeatable)")
    parser.add_argument("--jump-from", type=int, action="append", default=[], help="step S (repeatable)")
    parser.add_argument("--horizon", type=int, default=5, help="jump length in checkpoint intervals")
    parser.add_argument("--size", type=int, default=256, help="held-out problems per accuracy")
    parser.add_argument("--method", action="append", choices=METHODS, help="default: all three")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "premise")
    args = parser.parse_args()
    methods = tuple(args.method or METHODS)
    names = []
    for spec in args.run:
        name, _, path = spec.partition("=")
        names.append(name)
        run_one(name, Path(path), args.out, args.jump_from, args.horizon, args.size, methods)
    text = table(args.out, names, args.jump_from, args.horizon, args.size, methods)
    (args.out / f"table-{'-'.join(names)}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
