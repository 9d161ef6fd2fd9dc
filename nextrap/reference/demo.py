"""``nextrap demo``: one seed of the steps-saved benchmark, in the paper's terms, in a few minutes.

Runs the plain GRPO run and two arms of :mod:`nextrap.reference.protocols` against it (the restart
control and one jump arm: observe 3/8 of the run, jump, train 1/4 more), backtests the methods on the
observed checkpoints, and compares: accuracy at the same trained steps, steps to reach the plain run's
final accuracy. One seed cannot tell a real effect from noise; the demo says so and points to the
benchmark, which has the confidence intervals.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from nextrap.errors import ConfigError, OutputExistsError
from nextrap.reference.endtoend import final_accuracy
from nextrap.reference.grpo import GRPOConfig
from nextrap.reference.protocols import ArmResult, ProtocolConfig, run_seed
from nextrap.reference.stats import accuracy_at, steps_saved, steps_to_reach
from nextrap.util.files import read_regular, replace_file

__all__ = ["DemoResult", "demo_config", "run_demo"]

RECORD = "demo.json"


def demo_config(
    grpo: GRPOConfig, method: str = "linear", coef: float = 2.0, horizon: int = 5
) -> ProtocolConfig:
    """The protocol with only the restart control and the one jump arm (default: the benchmark's best arm)."""
    return ProtocolConfig(
        grpo=grpo,
        horizon=horizon,
        coefs=(coef,),
        methods=(method,),
        optimizer_variants=(),
        auto=False,
        relex_targets=(),
        cycle_methods=(),
    )


@dataclass
class DemoResult:
    config: ProtocolConfig
    arms: dict[str, ArmResult]
    jump_name: str
    verdict: dict[str, Any]  # backtest's recommendation on the observed checkpoints

    def lines(self) -> list[str]:
        """The comparison with the plain run, in the NExt paper's terms, plainly worded."""
        c = self.config
        plain, restart, jump = self.arms["plain"].curve, self.arms["restart"].curve, self.arms[self.jump_name]
        final = final_accuracy(plain)
        at_budget = accuracy_at(jump.curve, c.budget)
        gain = at_budget - accuracy_at(plain, c.budget)
        lines = [
            f"plain run:   {c.length} steps; held-out accuracy {accuracy_at(plain, c.observe):.3f} at step {c.observe}, "
            f"{accuracy_at(plain, c.budget):.3f} at {c.budget}, {accuracy_at(plain, c.length):.3f} at {c.length}",
            f"restart:     from step {c.observe} with a fresh optimizer, no jump: {accuracy_at(restart, c.budget):.3f} "
            f"after {c.budget} trained steps (the control: every jump restarts the optimizer too)",
            f"jump arm:    {self.jump_name}: observe {c.observe} steps, jump to virtual step {jump.virtual_step:g} "
            f"(accuracy {accuracy_at(plain, c.observe):.3f} -> {jump.accuracy_after_jump:.3f} before any training), "
            f"train {c.resume} more: {at_budget:.3f} after {c.budget} trained steps",
            f"same steps:  jump {at_budget:.3f} vs plain {accuracy_at(plain, c.budget):.3f} at {c.budget} trained steps "
            f"({gain:+.3f}); the plain run reaches {accuracy_at(plain, c.length):.3f} at {c.length}",
            *(_reach_line(plain, jump.curve, fraction, final) for fraction in (0.95, 1.0)),
            f"backtest on the observed checkpoints: {self.verdict.get('text', '?')}",
            "one seed: differences of a few points are within the noise of a single run; "
            "`python benchmarks/rl_steps.py` runs 5 seeds with confidence intervals",
        ]
        return lines


def _steps(steps: int | None) -> str:
    return f"after {steps} steps" if steps is not None else "not within the run"


def _reach_line(plain: dict[int, float], arm: dict[int, float], fraction: float, final: float) -> str:
    """Steps each run needs to reach ``fraction`` of the plain run's final accuracy, and the steps saved."""
    target = fraction * final
    p, a = steps_to_reach(plain, target), steps_to_reach(arm, target)
    share = steps_saved(p, a)
    saved = f": {share:.0%} of the steps saved" if share is not None else ""
    return (
        f"to reach {fraction:.0%} of the plain run's final accuracy ({target:.3f}; final = mean of its last 3 "
        f"evaluations): plain {_steps(p)}, jump arm {_steps(a)}{saved}"
    )


def run_demo(
    output: str | os.PathLike,
    config: ProtocolConfig,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> DemoResult:
    """Run (or resume) the demo into ``output``: ``plain/``, ``arms/``, ``demo.json``."""
    output = Path(output)
    record = {"config": asdict(config), "seed": seed}
    _prepare(output, record, overwrite)
    jump_name = f"{config.methods[0]} c={config.coefs[0]:g}"
    arms = run_seed(config, seed, output, arms=["restart", jump_name], progress=progress)
    verdict = _backtest_verdict(arms, output, config)
    replace_file(output / RECORD, json.dumps({**record, "verdict": verdict}, indent=2, default=str) + "\n")
    return DemoResult(config, arms, jump_name, verdict)


def _prepare(output: Path, record: dict[str, Any], overwrite: bool) -> None:
    """A finished or stopped demo with the same settings resumes; other settings need ``overwrite``."""
    path = output / RECORD
    if output.exists() and not path.is_file() and any(output.iterdir()):
        raise OutputExistsError(f"{output}: exists and is not a nextrap demo folder; choose another -o")
    if path.is_file():
        previous = json.loads(read_regular(path))
        same = {k: previous.get(k) for k in record} == json.loads(json.dumps(record, default=str))
        if not same and not overwrite:
            raise OutputExistsError(
                f"{output}: holds a demo with other settings; pass --overwrite to replace it, or choose another -o"
            )
        if not same:
            shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    replace_file(output / RECORD, json.dumps(record, indent=2, default=str) + "\n")


def _backtest_verdict(arms: dict[str, ArmResult], output: Path, config: ProtocolConfig) -> dict[str, Any]:
    """Backtest every method on the plain run's checkpoints up to the jump point: what the user would see."""
    from nextrap.errors import LayoutError
    from nextrap.ops.backtest import BacktestOptions, backtest
    from nextrap.run.open import open_run
    from nextrap.util.devices import resolve_device

    plain = output / "plain"
    save = config.grpo.save_steps
    steps = list(range(save, config.observe + 1, save))
    try:
        traj = open_run(None, [plain / f"checkpoint-{s}" for s in steps], steps)
        result = backtest(traj, BacktestOptions(horizon=config.horizon), resolve_device("cpu"))
    except (LayoutError, ConfigError) as exc:
        return {"text": f"not run ({exc})"}
    return result.recommendation


def tiny_demo_grpo(seed: int = 0, steps: int = 400, save_steps: int = 10, eval_size: int = 512) -> GRPOConfig:
    """The benchmark's ground: the tiny policy at lr 2e-4, 64 prompts x 8 answers (steady, predictable)."""
    return replace(GRPOConfig(), steps=steps, save_steps=save_steps, lr=2e-4, eval_size=eval_size, seed=seed)
