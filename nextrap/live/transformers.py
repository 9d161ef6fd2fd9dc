"""``NExtCallback``: NExt inside a transformers ``Trainer`` (and so TRL's trainers, GRPOTrainer included).

It records the LoRA adapter every ``record_every`` steps (or at every save), and at the steps in
``jump_at`` extrapolates along the recorded trajectory and swaps the new values into the live
parameters; the optimizer keeps its references, its moments for those parameters are dropped by
default. After a jump the recording starts afresh (the trajectory has a break there). The step
counter is not changed: it keeps counting steps actually trained.

Importing this module imports transformers; nothing else in nextrap does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from transformers import TrainerCallback

from nextrap.errors import ConfigError
from nextrap.live.callbacks import Jump, JumpCycles, JumpSchedule, TrajectoryRecorder, extrapolate_into
from nextrap.ops.extrapolate import ExtrapolateOptions

__all__ = ["NExtCallback"]

logger = logging.getLogger(__name__)


class NExtCallback(TrainerCallback):
    """Record the adapter as training goes; jump ahead at the given steps.

    With ``schedule`` (a :class:`~nextrap.live.callbacks.JumpSchedule`) it runs RL-Extra's cycles instead:
    train M steps, jump N steps ahead, repeat; ``jump_at`` must then be None.

    Args:
        jump_at: global steps after which to jump (one or several).
        coef: extending coefficient of each jump.
        record_every: record every N steps; None records at every ``on_save`` instead.
        options: extrapolation options (method, horizon, predictor, ...).
        reset_optimizer: drop the optimizer's moments of the replaced parameters.
        folder: where snapshots go (None: a temporary folder, or memory with ``in_memory``).
        in_memory: keep snapshots in memory.
    """

    def __init__(
        self,
        jump_at: int | Iterable[int] | None = None,
        coef: float = 1.0,
        record_every: int | None = 10,
        options: ExtrapolateOptions | None = None,
        reset_optimizer: bool = True,
        folder: str | os.PathLike | None = None,
        in_memory: bool = False,
        schedule: JumpSchedule | None = None,
    ):
        if (jump_at is None) == (schedule is None):
            raise ConfigError("NExtCallback: give either jump_at (steps to jump after) or a schedule (jump cycles)")
        self.cycles = (
            JumpCycles(schedule, options, folder, in_memory or folder is None) if schedule is not None else None
        )
        jump_at = () if jump_at is None else jump_at
        self.jump_at = {jump_at} if isinstance(jump_at, int) else set(jump_at)
        self.coef, self.options, self.reset_optimizer = coef, options, reset_optimizer
        self.record_every = record_every
        self.recorder = TrajectoryRecorder(folder, every=record_every or 1, in_memory=in_memory)
        self.jumps: list[Jump] = []

    def _record(self, model, step: int) -> None:
        if not self.recorder.steps or step > self.recorder.steps[-1]:
            self.recorder.record(model, step)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.cycles is not None:
            self.cycles.begin(model, state.global_step)
        return control

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        step = state.global_step
        if self.cycles is not None:
            jump = self.cycles.step_end(model, step, optimizer)
            if jump is not None:
                self.jumps.append(jump)
            return control
        if self.record_every is not None and step % self.record_every == 0:
            self._record(model, step)
        if step in self.jump_at:
            self._record(model, step)  # jump from where the run is now
            jump = extrapolate_into(
                model,
                self.recorder,
                self.coef,
                optimizer=optimizer,
                reset_optimizer=self.reset_optimizer,
                options=self.options,
            )
            self.jumps.append(jump)
            logger.info("NExtCallback: step %d -> virtual step %g", step, jump.virtual_step)
            self.recorder.clear()
        return control

    def on_save(self, args, state, control, model=None, **kwargs):
        if self.record_every is None and self.cycles is None:
            self._record(model, state.global_step)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.recorder.close()
        if self.cycles is not None:
            self.cycles.close()
        return control
