"""The papers' protocols as arms of one paired experiment: every arm of a seed starts from that seed's plain run.

Proportions follow the papers, scaled to the plain run's length ``L`` (the NExt paper: L = 400):

* ``plain``: GRPO for ``L`` steps, a checkpoint every ``save_steps``.
* ``restart``: the plain run's checkpoint at ``observe`` (3/8 L: 150 of 400), trained ``resume``
  (L/4: 100) more steps with a fresh optimizer and no jump: the control, since every jump restarts AdamW.
* ``<method> c=<c>`` (NExt's protocol, for every method): extrapolate the checkpoints up to ``observe``
  by ``c`` horizons (5 checkpoint intervals: 50 of 400 steps), then train ``resume`` steps from the
  virtual step. Budget: ``observe + resume`` trained steps (250 of 400).
* ``next c=<c> keep`` / ``warmup``: the same NExt jump with AdamW's moments kept from the plain run's
  checkpoint, or with a fresh optimizer whose learning rate warms up linearly over one interval (also
  for the NExt-based combined methods, ``next+linear c=<c> keep``, ...).
* ``auto c=<c>``: ``--method auto`` (backtest on the observed checkpoints, then the winner).
* ``relex@<t>``: RELEX's protocol: observe 3/16 L (75 of 400), predict step t in {5/8, 1, 5/4} L
  (250, 400, 500) and evaluate, with no training; ``relex@<5/8 L> +train``: then train up to the budget.
* ``cycles <method>``: RL-Extra's schedule: train L/8 steps, jump L/8 ahead, repeat, for the budget.

An arm's curve maps RL steps actually trained to held-out accuracy. Runs train without evaluating; the
checkpoints the statistics use are scored afterwards (:class:`~nextrap.reference.evaluation.EvaluationCache`,
``evaluations.json`` beside the seed's runs): every ``eval_every`` trained steps, the jump point, the
budget and the end, on ``grpo.eval_size`` held-out problems. Each arm trains in its own
folder under ``arms/`` and is recorded in ``arms/<arm>.json`` once finished; a recorded arm is never recomputed, and the plain run resumes from its
last checkpoint, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from nextrap.errors import ConfigError
from nextrap.live.callbacks import JumpSchedule
from nextrap.ops.extrapolate import ExtrapolateOptions
from nextrap.reference.cycles import train_cycles
from nextrap.reference.endtoend import jump_from
from nextrap.reference.evaluation import EvaluationCache
from nextrap.reference.grpo import GRPOConfig, TrainResult, train
from nextrap.util.files import read_regular, replace_file

__all__ = ["ArmResult", "ProtocolConfig", "arm_folder", "run_seed"]


def _on_grid(steps: float, save: int, minimum: int) -> int:
    return max(minimum, round(steps / save) * save)


@dataclass(frozen=True)
class ProtocolConfig:
    """The plain run (``grpo``: its ``steps`` are L) and the arms to run against it."""

    grpo: GRPOConfig = field(default_factory=lambda: GRPOConfig(steps=400, save_steps=10, lr=2e-4))
    horizon: int = 5
    coefs: tuple[float, ...] = (1.0, 1.5, 2.0)
    methods: tuple[str, ...] = ("next", "linear", "relex")
    optimizer_variants: tuple[str, ...] = ("keep", "warmup")
    auto: bool = True
    relex_targets: tuple[float, ...] = (0.625, 1.0, 1.25)
    cycle_methods: tuple[str, ...] = ("linear", "next", "relex")
    eval_every: int | None = None  # trained steps between scored checkpoints [default: save_steps]

    def __post_init__(self) -> None:
        object.__setattr__(self, "coefs", tuple(float(c) for c in self.coefs))
        if self.grpo.eval_size < 1:
            raise ConfigError(f"protocol: grpo.eval_size must be >= 1 (curves need held-out accuracy), got {self.grpo.eval_size}")
        every = self.eval_every
        if every is not None and (every < 1 or every % self.grpo.save_steps):
            raise ConfigError(
                f"protocol: eval_every must be a positive multiple of save_steps ({self.grpo.save_steps}), got {every}"
            )
        if self.observe // self.grpo.save_steps < self.horizon + 1:
            raise ConfigError(
                f"protocol: observing {self.observe} steps gives {self.observe // self.grpo.save_steps} "
                f"checkpoints, horizon {self.horizon} needs {self.horizon + 1}: train longer or lower the horizon"
            )
        if any(c <= 0 for c in self.coefs):
            raise ConfigError(f"protocol: coefficients must be > 0, got {list(self.coefs)}")
        unknown = set(self.optimizer_variants) - {"keep", "warmup"}
        if unknown:
            raise ConfigError(f"protocol: optimizer variants are keep and warmup, got {sorted(unknown)}")

    @property
    def length(self) -> int:
        return self.grpo.steps

    @property
    def observe(self) -> int:
        """NExt's jump point: 3/8 of the run (150 of 400), on a checkpoint."""
        return _on_grid(0.375 * self.length, self.grpo.save_steps, 2 * self.grpo.save_steps)

    @property
    def resume(self) -> int:
        """Steps trained after a jump: 1/4 of the run (100 of 400)."""
        return _on_grid(0.25 * self.length, self.grpo.save_steps, self.grpo.save_steps)

    @property
    def budget(self) -> int:
        """Trained steps of a jump arm: ``observe + resume`` (250 of 400)."""
        return self.observe + self.resume

    @property
    def horizon_steps(self) -> int:
        return self.horizon * self.grpo.save_steps

    def scored(self, trained: int) -> bool:
        """Whether the checkpoint after ``trained`` RL steps is evaluated: on the grid or a step the table uses."""
        every = self.eval_every or self.grpo.save_steps
        return trained % every == 0 or trained in (self.observe, self.relex_observe, self.budget, self.length)

    @property
    def relex_observe(self) -> int:
        """RELEX's observation: 3/16 of the run (75 of 400), at least two checkpoints."""
        return _on_grid(0.1875 * self.length, self.grpo.save_steps, 2 * self.grpo.save_steps)

    @property
    def relex_steps(self) -> tuple[int, ...]:
        return tuple(round(f * self.length) for f in self.relex_targets)

    @property
    def cycle_steps(self) -> int:
        """RL-Extra's cycle, scaled: train L/8 (two checkpoints at least), jump as far."""
        return _on_grid(0.125 * self.length, self.grpo.save_steps, 2 * self.grpo.save_steps)

    def arm_names(self) -> list[str]:
        names = ["restart"]
        names += [f"{m} c={c:g}" for m in self.methods for c in self.coefs]
        middle = self.coefs[len(self.coefs) // 2]
        for method in self.methods:  # every NExt-based method, as the NExt paper resumes
            if method.startswith("next"):
                names += [f"{method} c={middle:g} {v}" for v in self.optimizer_variants]
        if self.auto:
            names.append(f"auto c={middle:g}")
        names += [f"relex@{t}" for t in self.relex_steps]
        if self.relex_steps:
            names.append(f"relex@{self.budget} +train")
        names += [f"cycles {m}" for m in self.cycle_methods]
        return names


@dataclass
class ArmResult:
    """One arm of one seed: held-out accuracy by RL steps actually trained, and how it got there."""

    name: str
    curve: dict[int, float]
    trained_steps: int
    accuracy_after_jump: float | None = None
    virtual_step: float | None = None
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "curve": {str(k): v for k, v in self.curve.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArmResult:
        return cls(**{**d, "curve": {int(k): v for k, v in d["curve"].items()}})


def arm_folder(arm: str) -> str:
    """The folder (and record name) of an arm under ``arms/``."""
    return arm.replace(" ", "_").replace("=", "").replace("@", "at").replace("+", "")


class _Seed:
    """The arms of one seed, computed on demand against that seed's plain run."""

    def __init__(self, config: ProtocolConfig, seed: int, out: Path, progress: bool) -> None:
        self.config, self.out, self.progress = config, out, progress
        self.grpo = replace(config.grpo, seed=seed)
        self.evals = EvaluationCache(
            out / "evaluations.json", self.grpo.warm, self.grpo.eval_size, self.grpo.device
        )
        self.plain = train(out / "plain", replace(self.grpo, eval_size=0), resume=True, progress=progress)
        self.plain_curve = {0: self.evals.accuracy(None)} | {
            s: self.evals.accuracy(p) for s, p in self.plain.checkpoints.items() if config.scored(s)
        }

    def _train(self, folder: Path, steps: int, init: Path, start: int, **extra: Any) -> TrainResult:
        grpo = replace(self.grpo, steps=steps, eval_size=0, **extra.pop("config", {}))
        return train(folder, grpo, init_adapter=init, start_step=start, overwrite=True, progress=self.progress, **extra)

    def _resumed_curve(self, split: int, resumed: TrainResult, start: float, at_split: float) -> dict[int, float]:
        """The plain curve before ``split``, ``at_split`` there (the adapter the arm resumed from), then the
        resumed run's scored checkpoints, by steps trained (``split + s - start``)."""
        before = {s: a for s, a in self.plain_curve.items() if s < split}
        after = {}
        for step, folder in resumed.checkpoints.items():
            trained = split + round(step - start)
            if self.config.scored(trained):
                after[trained] = self.evals.accuracy(folder)
        return {**before, split: at_split, **after}

    def restart(self, folder: Path) -> ArmResult:
        c = self.config
        resumed = self._train(folder, c.resume, self.plain.checkpoints[c.observe], c.observe)
        curve = self._resumed_curve(c.observe, resumed, c.observe, self.plain_curve[c.observe])
        return ArmResult("restart", curve, c.budget, curve[c.observe], c.observe)

    def jump(self, folder: Path, method: str, coef: float, variant: str | None = None) -> ArmResult:
        c = self.config
        result = jump_from(
            self.plain,
            c.observe,
            folder / "jump",
            ExtrapolateOptions(coefs=(coef,), method=method, horizon=c.horizon),
        )
        entry = result.report.outputs[0]
        virtual = entry.step
        extra: dict[str, Any] = {}
        if variant == "keep":
            extra["init_optimizer"] = self.plain.checkpoints[c.observe]
        elif variant == "warmup":
            extra["config"] = {"warmup_steps": c.grpo.save_steps}
        resumed = self._train(folder / "resumed", c.resume, result.output, virtual, **extra)
        curve = self._resumed_curve(c.observe, resumed, virtual, self.evals.accuracy(result.output))
        name = f"{method} c={coef:g}" + (f" {variant}" if variant else "")
        return ArmResult(
            name,
            curve,
            c.budget,
            curve[c.observe],
            entry.virtual_step,
            details={"method": result.report.method, "max_truncation": entry.max_relative_truncation_error},
        )

    def relex(self, folder: Path, to_step: int, then_train: bool) -> ArmResult:
        c = self.config
        result = jump_from(
            self.plain,
            c.relex_observe,
            folder / "jump",
            ExtrapolateOptions(coefs=None, to_steps=(to_step,), method="relex"),
        )
        acc = self.evals.accuracy(result.output)
        if not then_train:
            # no step is trained after the prediction: the curve ends at the observation
            curve = {s: a for s, a in self.plain_curve.items() if s <= c.relex_observe}
            return ArmResult(f"relex@{to_step}", curve, c.relex_observe, acc, to_step)
        steps = c.budget - c.relex_observe
        resumed = self._train(folder / "resumed", steps, result.output, to_step)
        curve = self._resumed_curve(c.relex_observe, resumed, to_step, acc)
        return ArmResult(f"relex@{to_step} +train", curve, c.budget, curve[c.relex_observe], to_step)

    def cycles(self, folder: Path, method: str) -> ArmResult:
        c = self.config
        schedule = JumpSchedule(c.cycle_steps, c.cycle_steps, record_every=c.grpo.save_steps)
        result = train_cycles(
            folder,
            replace(self.grpo, steps=c.budget),
            schedule,
            ExtrapolateOptions(method=method),
            overwrite=True,
            progress=self.progress,
        )
        jumps = [r["jump"]["to_step"] for r in result.cycles if r["jump"]]
        return ArmResult(
            f"cycles {method}", result.accuracy_by_trained_steps(), c.budget, None, jumps[-1] if jumps else None
        )

    def compute(self, name: str, folder: Path) -> ArmResult:
        if name == "restart":
            return self.restart(folder)
        if name.startswith("cycles "):
            return self.cycles(folder, name.split()[1])
        if name.startswith("relex@"):
            target = name.split()[0].removeprefix("relex@")
            return self.relex(folder, int(target), name.endswith("+train"))
        method, coef, *variant = name.split()
        return self.jump(folder, method, float(coef.removeprefix("c=")), variant[0] if variant else None)


def run_seed(
    config: ProtocolConfig,
    seed: int,
    out: str | os.PathLike,
    arms: Iterable[str] | None = None,
    progress: bool = False,
    on_arm: Callable[[ArmResult], None] | None = None,
) -> dict[str, ArmResult]:
    """The plain run and every arm of one seed under ``out``; finished arms are read back, not rerun."""
    out = Path(out)
    state = _Seed(config, seed, out, progress)
    results = {
        "plain": ArmResult("plain", state.plain_curve, config.length),
    }
    for name in config.arm_names() if arms is None else arms:
        folder = out / "arms" / arm_folder(name)
        record = folder.parent / f"{folder.name}.json"
        if record.is_file():
            results[name] = ArmResult.from_dict(json.loads(read_regular(record)))
            continue
        started = time.perf_counter()
        arm = state.compute(name, folder)
        arm.seconds = time.perf_counter() - started
        folder.parent.mkdir(parents=True, exist_ok=True)
        replace_file(record, json.dumps(arm.to_dict(), indent=2) + "\n")  # appears whole, after the arm's files
        results[name] = arm
        if on_arm:
            on_arm(arm)
    return results
