"""The whole loop on the reference task: train, extrapolate with nextrap, resume, evaluate.

Two arms share one seed. The plain run trains ``observe + H + resume`` steps. The jump arm is the
plain run's first ``observe`` steps (identical by construction: problems, samples and the LoRA
init depend only on the seed and the step), extrapolated by nextrap to the virtual step
``V = observe + c * H``, then trained ``resume`` more steps from there with a fresh optimizer (its
step counter continues at V, so it meets the problems the plain run meets after V). Both are
scored on the same held-out problems at every checkpoint; a curve's x axis is the number of RL
steps actually trained.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from nextrap.errors import ConfigError
from nextrap.ops.extrapolate import ExtrapolateOptions, ExtrapolationResult, extrapolate
from nextrap.output.atomic import check_output
from nextrap.output.writers import OutputOptions
from nextrap.reference.grpo import GRPOConfig, TrainResult, train
from nextrap.reference.stats import steps_to_reach
from nextrap.util.files import replace_file

__all__ = [
    "Arm",
    "EndToEndConfig",
    "EndToEndResult",
    "final_accuracy",
    "jump_arm",
    "jump_from",
    "plain_run",
    "reset_arm",
    "resume_arm",
    "run_end_to_end",
    "steps_to_reach",
]

SUMMARY = "end_to_end.json"


@dataclass(frozen=True)
class EndToEndConfig:
    """``observe`` steps before the jump, ``horizon`` in checkpoint intervals, ``resume`` steps after it."""

    observe: int = 50
    resume: int = 100
    horizon: int = 5
    coef: float = 1.0
    method: str = "next"
    target_fraction: float = 0.95  # of the plain run's final accuracy (mean of its last 3 evaluations)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)

    def __post_init__(self) -> None:
        if self.observe % self.grpo.save_steps:
            raise ConfigError(
                f"observe ({self.observe}) must be a multiple of save_steps ({self.grpo.save_steps}): "
                "the jump starts from a saved checkpoint"
            )
        if self.observe // self.grpo.save_steps < self.horizon + 1:
            raise ConfigError(
                f"observe = {self.observe} steps gives {self.observe // self.grpo.save_steps} checkpoints; horizon "
                f"{self.horizon} needs at least {self.horizon + 1}: observe longer or lower the horizon"
            )
        if self.coef <= 0:
            raise ConfigError(f"coef must be > 0, got {self.coef}")

    @property
    def horizon_steps(self) -> int:
        return self.horizon * self.grpo.save_steps

    @property
    def jump_steps(self) -> int:
        """Steps the jump claims to skip, c * H (rounded to a whole step)."""
        return round(self.coef * self.horizon_steps)


@dataclass
class EndToEndResult:
    """Accuracy curves by RL steps actually trained, and the step each arm first reached the target."""

    output: Path
    plain: dict[int, float]
    jump: dict[int, float]
    accuracy_at_jump: float
    accuracy_before_jump: float
    target: float
    plain_steps_to_target: int | None
    jump_steps_to_target: int | None
    report: dict

    @property
    def steps_saved(self) -> float | None:
        """Fraction of the plain run's steps (to the target) that the jump arm did not need."""
        if self.plain_steps_to_target is None or self.jump_steps_to_target is None:
            return None
        return 1 - self.jump_steps_to_target / self.plain_steps_to_target

    def to_dict(self) -> dict:
        return {
            "plain": self.plain,
            "jump": self.jump,
            "accuracy_before_jump": self.accuracy_before_jump,
            "accuracy_at_jump": self.accuracy_at_jump,
            "target": self.target,
            "plain_steps_to_target": self.plain_steps_to_target,
            "jump_steps_to_target": self.jump_steps_to_target,
            "steps_saved": self.steps_saved,
        }


@dataclass
class Arm:
    """One way of spending RL steps after ``observe``: its accuracy curve by steps actually trained."""

    name: str
    curve: dict[int, float]
    accuracy_at_jump: float
    virtual_step: int
    seconds: float
    report: dict = field(default_factory=dict)


def plain_run(output: Path, config: EndToEndConfig, extra_steps: int | None = None, progress: bool = False):
    """The unbroken run: ``observe + c * H + resume`` steps (``extra_steps`` replaces ``c * H``)."""
    jump = config.jump_steps if extra_steps is None else extra_steps
    steps = config.observe + jump + config.resume
    return train(output, replace(config.grpo, steps=steps), overwrite=True, progress=progress)


def resume_arm(
    plain: TrainResult,
    output: Path,
    config: EndToEndConfig,
    name: str,
    adapter: Path,
    start_step: int,
    progress: bool = False,
) -> Arm:
    """Train ``resume`` steps from ``adapter`` with the counter at ``start_step``; the curve counts real steps."""
    started = time.perf_counter()
    resumed = train(
        output,
        replace(config.grpo, steps=config.resume),
        init_adapter=adapter,
        start_step=start_step,
        overwrite=True,
        progress=progress,
    )
    before = {s: a for s, a in plain.eval_accuracy().items() if s < config.observe}
    after = resumed.eval_accuracy()
    # the arm trained `observe` steps, then (s - start_step) more after the jump
    curve = {**before, **{config.observe + s - start_step: a for s, a in after.items()}}
    return Arm(name, curve, after[start_step], start_step, time.perf_counter() - started)


def jump_from(
    plain: TrainResult, until: int, output: Path, options: ExtrapolateOptions, progress: bool = False
) -> ExtrapolationResult:
    """nextrap's jump from the plain run's checkpoints up to step ``until``: the run as it was then.

    ``output`` is the arm's own scratch folder, replaced when the arm is rerun.
    """
    observed = {s: p for s, p in plain.checkpoints.items() if s <= until}
    return extrapolate(
        None,
        output,
        options,
        OutputOptions(overwrite=True, hash_inputs=False),
        checkpoints=list(observed.values()),
        steps=list(observed),
        progress=progress,
    )


def jump_arm(
    plain: TrainResult,
    output: Path,
    config: EndToEndConfig,
    coef: float | None = None,
    method: str | None = None,
    progress: bool = False,
) -> Arm:
    """Extrapolate the plain run's first ``observe`` steps with nextrap, then resume from the jump."""
    coef = config.coef if coef is None else coef
    method = config.method if method is None else method
    started = time.perf_counter()
    jump = jump_from(
        plain,
        config.observe,
        output / "jump",
        ExtrapolateOptions(coefs=(coef,), method=method, horizon=config.horizon),
        progress,
    )
    out = jump.report.outputs[0]
    virtual = out.step
    arm = resume_arm(
        plain, output / "resumed", config, f"{method} c={coef:g}", jump.output, virtual, progress
    )
    arm.seconds += time.perf_counter() - started
    arm.report = {
        "method": jump.report.method,
        "virtual_step": out.virtual_step,
        "max_relative_truncation_error": out.max_relative_truncation_error,
    }
    return arm


def reset_arm(plain: TrainResult, output: Path, config: EndToEndConfig, progress: bool = False) -> Arm:
    """The control: resume from the plain run's own checkpoint at ``observe``, no jump, fresh optimizer.

    It separates the effect of the jump from that of restarting AdamW's moments, which every jump
    arm also does.
    """
    start = plain.checkpoints[config.observe]
    return resume_arm(plain, output, config, "restart, no jump", start, config.observe, progress)


def run_end_to_end(
    output: str | os.PathLike,
    config: EndToEndConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> EndToEndResult:
    """Run the plain arm and one jump arm into ``output/{plain,jump,resumed}``; ``output/end_to_end.json`` sums up."""
    config = config or EndToEndConfig()
    output = check_output(output, overwrite)
    output.mkdir(parents=True, exist_ok=True)
    plain = plain_run(output / "plain", config, progress=progress)
    arm = jump_arm(plain, output, config, progress=progress)
    plain_curve = plain.eval_accuracy()
    target = config.target_fraction * final_accuracy(plain_curve)
    report = {"config": asdict(config), **arm.report}
    result = EndToEndResult(
        output=output,
        plain=plain_curve,
        jump=arm.curve,
        accuracy_before_jump=plain_curve[config.observe],
        accuracy_at_jump=arm.accuracy_at_jump,
        target=target,
        plain_steps_to_target=steps_to_reach(plain_curve, target),
        jump_steps_to_target=steps_to_reach(arm.curve, target),
        report=report,
    )
    replace_file(output / SUMMARY, json.dumps({**report, **result.to_dict()}, indent=2) + "\n")
    return result


def final_accuracy(curve: dict[int, float], last: int = 3) -> float:
    """The run's end point: the mean of its last ``last`` evaluations (one evaluation is noisy)."""
    tail = [curve[s] for s in sorted(curve)[-last:]]
    return sum(tail) / len(tail)
