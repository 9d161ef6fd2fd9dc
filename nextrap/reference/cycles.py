"""RL-Extra's schedule on the reference trainer: train M steps, jump N steps ahead, start afresh, repeat.

Each cycle is a GRPO run of its own (``cycle-<i>/checkpoint-N/``, a fresh AdamW, as RL-Extra starts a
fresh run from each jump) whose step counter continues at the virtual step of the previous jump. The
jump (``jump-<i>/``, a nextrap output with its ``nextrap.json``) is computed from that cycle alone: its
starting adapter and its checkpoints. With ``linear`` and no explicit horizon the horizon spans the
whole cycle, so the jump is ``dW_end + (N / M) (dW_end - dW_start)``, RL-Extra's formula. Any method
works. ``cycles.json`` records, per cycle, the steps trained, the virtual steps and the held-out
accuracy at every checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from nextrap.errors import ConfigError
from nextrap.live.callbacks import JumpSchedule
from nextrap.ops.extrapolate import ExtrapolateOptions, extrapolate
from nextrap.output.atomic import atomic_directory, check_output
from nextrap.output.writers import OutputOptions
from nextrap.reference.grpo import GRPOConfig, TrainResult, start_inputs, train
from nextrap.util.files import write_new

__all__ = ["CYCLES_REPORT", "CycleResult", "train_cycles"]

CYCLES_REPORT = "cycles.json"


@dataclass
class CycleResult:
    """The output folder and the per-cycle record written to ``cycles.json``."""

    output: Path
    cycles: list[dict[str, Any]]

    def accuracy_by_trained_steps(self) -> dict[int, float]:
        """Held-out accuracy against the number of RL steps actually trained."""
        out: dict[int, float] = {}
        for c in self.cycles:
            for step, acc in c["eval_accuracy"].items():
                out[c["trained_before"] + int(step) - c["start_step"]] = acc
        return dict(sorted(out.items()))


def train_cycles(
    output: str | os.PathLike,
    config: GRPOConfig,
    schedule: JumpSchedule,
    options: ExtrapolateOptions | None = None,
    *,
    init_adapter: str | os.PathLike | None = None,
    start_step: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> CycleResult:
    """Train ``config.steps`` GRPO steps in cycles of ``schedule.train_steps``, jumping between cycles.

    No jump follows the last cycle (nothing would train on it); after ``schedule.cycles`` jumps the
    rest is trained in one piece. ``schedule.record_every`` is ignored: the cycle's checkpoints every
    ``config.save_steps`` are its trajectory.
    """
    options = options or ExtrapolateOptions(method="linear")
    if init_adapter is None and schedule.train_steps < 2 * config.save_steps:
        raise ConfigError(
            f"jump cycles: the first cycle ({schedule.train_steps} steps, a checkpoint every {config.save_steps}) "
            "would hold one checkpoint; a jump needs 2: make --jump-every at least twice --save-steps"
        )
    inputs = start_inputs(init_adapter)
    output = check_output(output, overwrite, inputs)
    records: list[dict[str, Any]] = []
    with atomic_directory(output, overwrite, inputs) as tmp:
        adapter = Path(init_adapter) if init_adapter else None
        step, trained = start_step, 0
        while trained < config.steps:
            index = len(records) + 1
            jumps_left = schedule.cycles is None or len(records) < schedule.cycles
            n = min(schedule.train_steps, config.steps - trained) if jumps_left else config.steps - trained
            run, record = _train_cycle(tmp, index, replace(config, steps=n), adapter, step, trained, progress)
            trained += n
            step += n
            records.append(record)
            if trained >= config.steps or not jumps_left:
                break
            adapter, record["jump"] = _jump_after_cycle(
                tmp / f"jump-{index}", options, schedule, adapter, record["start_step"], run.checkpoints, step
            )
            step += schedule.jump_steps
        report = {
            "schedule": asdict(schedule),
            "method": options.method,
            "grpo": asdict(config),
            "cycles": records,
        }
        write_new(tmp / CYCLES_REPORT, json.dumps(report, indent=2, default=str) + "\n")
    # paths inside the report are relative; the folder is now in place
    return CycleResult(output=output, cycles=records)


def _train_cycle(
    tmp: Path,
    index: int,
    config: GRPOConfig,
    adapter: Path | None,
    step: int,
    trained: int,
    progress: bool,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train cycle ``index`` (``config.steps`` steps from ``adapter``, counted from ``step``) into
    ``tmp/cycle-<index>``: the run and its record (the jump still to come)."""
    run = train(
        tmp / f"cycle-{index}",
        config,
        init_adapter=adapter,
        start_step=step,
        overwrite=True,
        progress=progress,
    )
    record: dict[str, Any] = {
        "cycle": index,
        "start_step": step,
        "trained_before": trained,
        "steps": config.steps,
        "eval_accuracy": {str(s): a for s, a in run.eval_accuracy().items()},
        "jump": None,
    }
    return run, record


def _jump_after_cycle(
    folder: Path,
    options: ExtrapolateOptions,
    schedule: JumpSchedule,
    adapter: Path | None,
    start_step: int,
    checkpoints: dict[int, Path],
    step: int,
) -> tuple[Path, dict[str, Any]]:
    """Extrapolate from one cycle (the adapter it started from at ``start_step``, if any, and its
    checkpoints) to ``step + schedule.jump_steps``, into ``folder``: the jump's adapter and its record."""
    paths = ([adapter] if adapter else []) + list(checkpoints.values())
    steps = ([start_step] if adapter else []) + list(checkpoints)
    jump_options = replace(options, coefs=None, to_steps=(step + schedule.jump_steps,))
    if jump_options.method == "linear" and jump_options.horizon is None:
        jump_options = replace(jump_options, horizon=len(paths) - 1)
    # The previous jump (an input now) lies beside this one, and a checkpoint's folder is an input too
    # (nextrap.util.inputs): the jump is written into scratch space, then moved into this output under construction.
    with tempfile.TemporaryDirectory(prefix="nextrap-jump-") as scratch:
        jump = extrapolate(
            None, Path(scratch) / folder.name, jump_options, OutputOptions(hash_inputs=False), checkpoints=paths,
            steps=steps,
        )  # fmt: skip
        shutil.move(str(jump.output), str(folder))
    record = {
        "from_step": step,
        "to_step": step + schedule.jump_steps,
        "coef": jump.report.outputs[0].coef,
        "method": jump.report.method,
        "path": folder.name,
    }
    return folder, record
