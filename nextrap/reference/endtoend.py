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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from nextrap.atomic import check_output
from nextrap.errors import ConfigError
from nextrap.extrapolate import ExtrapolateOptions, extrapolate
from nextrap.reference.grpo import GRPOConfig, train

__all__ = ["EndToEndConfig", "EndToEndResult", "run_end_to_end", "steps_to_reach"]

SUMMARY = "end_to_end.json"


@dataclass(frozen=True)
class EndToEndConfig:
    """``observe`` steps before the jump, ``horizon`` in checkpoint intervals, ``resume`` steps after it."""

    observe: int = 40
    resume: int = 40
    horizon: int = 5
    coef: float = 1.0
    method: str = "next"
    target_fraction: float = 0.95
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


def steps_to_reach(curve: dict[int, float], target: float) -> int | None:
    """The first step (of a sorted curve) whose accuracy is at least ``target``; None if never."""
    return next((s for s, acc in sorted(curve.items()) if acc >= target - 1e-12), None)


def run_end_to_end(
    output: str | os.PathLike,
    config: EndToEndConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> EndToEndResult:
    """Run both arms into ``output/{plain,jump,resumed}`` and compare them; ``output/end_to_end.json`` sums up."""
    config = config or EndToEndConfig()
    output = check_output(output, overwrite)
    output.mkdir(parents=True, exist_ok=True)
    grpo = config.grpo
    total = config.observe + config.jump_steps + config.resume
    plain = train(output / "plain", replace(grpo, steps=total), overwrite=True, progress=progress)

    observed = {s: p for s, p in plain.checkpoints.items() if s <= config.observe}
    jump = extrapolate(
        None,
        output / "jump",
        ExtrapolateOptions(coefs=(config.coef,), horizon=config.horizon, overwrite=True),
        checkpoints=list(observed.values()),
        steps=list(observed),
        progress=progress,
    )
    virtual = config.observe + config.jump_steps
    resumed = train(
        output / "resumed",
        replace(grpo, steps=config.resume),
        init_adapter=jump.adapters[config.coef],
        start_step=virtual,
        overwrite=True,
        progress=progress,
    )

    plain_curve = plain.eval_accuracy()
    # the jump arm trained `observe` steps, then (s - virtual) more after the jump
    jump_curve = {s: a for s, a in plain_curve.items() if s < config.observe}
    jump_curve.update({config.observe + s - virtual: a for s, a in resumed.eval_accuracy().items()})
    target = config.target_fraction * plain_curve[max(plain_curve)]
    report = {
        "config": asdict(config),
        "virtual_step": virtual,
        "nextrap": jump.report["outputs"][0]["max_relative_truncation_error"],
    }
    result = EndToEndResult(
        output=output,
        plain=plain_curve,
        jump=jump_curve,
        accuracy_before_jump=plain_curve[config.observe],
        accuracy_at_jump=resumed.eval_accuracy()[virtual],
        target=target,
        plain_steps_to_target=steps_to_reach(plain_curve, target),
        jump_steps_to_target=steps_to_reach(jump_curve, target),
        report=report,
    )
    (output / SUMMARY).write_text(json.dumps({**report, **result.to_dict()}, indent=2) + "\n")
    return result
