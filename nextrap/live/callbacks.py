"""Hooks for live training loops: record LoRA factors as training goes, and jump in place.

* :class:`TrajectoryRecorder` saves the adapter of a live ``PeftModel`` every N steps, as PEFT adapter
  folders ``step-N/`` in a folder of your choice (or a temporary one), or keeps the tensors in memory
  and writes them to a temporary folder only when a jump is computed. No checkpoint folder of the
  trainer is needed.
* :func:`extrapolate_into` computes the jump from the recorded trajectory with the usual pipeline and
  copies the new values into the model's existing ``Parameter`` objects, so an optimizer holding them
  keeps working; it can drop the optimizer's moments for them (they belong to the old weights).

peft is needed (it is a dependency); transformers is not imported here (see
``nextrap.live.transformers`` for a ``TrainerCallback``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from nextrap.errors import ConfigError, MismatchError
from nextrap.formats.peft import CONFIG_NAME, SAFETENSORS_NAME
from nextrap.ops.extrapolate import ExtrapolateOptions, ExtrapolationResult, extrapolate
from nextrap.output.writers import OutputOptions
from nextrap.predictors import NExtConfig
from nextrap.util.validate import check_types

__all__ = ["Jump", "JumpCycles", "JumpSchedule", "TrajectoryRecorder", "extrapolate_into"]

logger = logging.getLogger(__name__)


@dataclass
class _Snapshot:
    step: int
    tensors: dict[str, torch.Tensor]
    config: dict[str, Any]


class TrajectoryRecorder:
    """Records a live PEFT model's adapter every ``every`` steps (call :meth:`maybe_record` each step).

    Args:
        folder: where ``step-N/`` adapter folders go; None uses a temporary folder, removed by
            :meth:`close` (or at exit). Ignored when ``in_memory``.
        every: record when ``step % every == 0``.
        in_memory: keep the tensors (on CPU) instead of writing them; they are written to a temporary
            folder only while a jump is computed.
        keep: keep only the last ``keep`` snapshots (None: all). The predictor needs horizon + 2 or more.
        adapter_name: the PEFT adapter to record.
    """

    def __init__(
        self,
        folder: str | os.PathLike | None = None,
        every: int = 10,
        in_memory: bool = False,
        keep: int | None = None,
        adapter_name: str = "default",
    ):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"TrajectoryRecorder.every must be a whole number >= 1, got {every!r}")
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 2):
            raise ConfigError(f"TrajectoryRecorder.keep must be a whole number >= 2 (or None), got {keep!r}")
        if not isinstance(adapter_name, str):
            raise ConfigError(f"TrajectoryRecorder.adapter_name must be a string, got {adapter_name!r}")
        self.every, self.in_memory, self.keep, self.adapter_name = every, in_memory, keep, adapter_name
        self._owned = folder is None and not in_memory
        self.folder = (
            Path(tempfile.mkdtemp(prefix="nextrap-trajectory-"))
            if self._owned
            else (Path(folder) if folder is not None else None)
        )
        self._memory: list[_Snapshot] = []
        self._steps: list[int] = []

    @property
    def steps(self) -> list[int]:
        """Steps recorded so far, in order."""
        return list(self._steps)

    def maybe_record(self, model: torch.nn.Module, step: int) -> bool:
        """Record when ``step`` is a multiple of ``every``; True if it did."""
        if step % self.every:
            return False
        self.record(model, step)
        return True

    def record(self, model: torch.nn.Module, step: int) -> None:
        """Snapshot ``model``'s adapter at ``step`` (steps must increase)."""
        if self._steps and step <= self._steps[-1]:
            raise ConfigError(f"recorded steps must increase: got {step} after {self._steps[-1]}")
        from peft.utils import get_peft_model_state_dict

        config = _peft_config(model, self.adapter_name, "TrajectoryRecorder.record").to_dict()
        tensors = {
            k: v.detach().to("cpu", copy=True).contiguous()
            for k, v in get_peft_model_state_dict(model, adapter_name=self.adapter_name).items()
        }
        if self.in_memory:
            self._memory.append(_Snapshot(step, tensors, config))
        else:
            _write_adapter_folder(self.folder / f"step-{step}", tensors, config)
        self._steps.append(step)
        if self.keep is not None and len(self._steps) > self.keep:
            dropped = self._steps.pop(0)
            if self.in_memory:
                self._memory.pop(0)
            else:
                shutil.rmtree(self.folder / f"step-{dropped}", ignore_errors=True)

    def clear(self) -> None:
        """Forget every snapshot (after a jump the run starts a new trajectory)."""
        if not self.in_memory:
            for step in self._steps:
                shutil.rmtree(self.folder / f"step-{step}", ignore_errors=True)
        self._memory.clear()
        self._steps.clear()

    def checkpoints(self, scratch: Path) -> list[Path]:
        """Adapter folders of the snapshots, in step order (written into ``scratch`` when in memory)."""
        if not self.in_memory:
            return [self.folder / f"step-{s}" for s in self._steps]
        paths = []
        for snap in self._memory:
            path = scratch / f"step-{snap.step}"
            _write_adapter_folder(path, snap.tensors, snap.config)
            paths.append(path)
        return paths

    def close(self) -> None:
        """Remove the temporary folder, if the recorder made one."""
        if self._owned and self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> TrajectoryRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _peft_config(model: Any, adapter_name: str, where: str) -> Any:
    """``model``'s PEFT config of ``adapter_name``, or a :class:`ConfigError` saying what the model lacks."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict):
        raise ConfigError(
            f"{where}: {type(model).__name__} has no LoRA adapter (no peft_config); wrap it with "
            "peft.get_peft_model(model, LoraConfig(...)) first"
        )
    if adapter_name not in configs:
        raise ConfigError(
            f"{where}: the model has no adapter named {adapter_name!r} (it has {sorted(configs)}); pass "
            "adapter_name= one of them"
        )
    return configs[adapter_name]


def _write_adapter_folder(folder: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    import json

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, tmp / SAFETENSORS_NAME, metadata={"format": "pt"})
    clean = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    (tmp / CONFIG_NAME).write_text(json.dumps(clean, indent=2, default=str) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


@dataclass
class Jump:
    """What :func:`extrapolate_into` did: the report, the virtual step, how many tensors were replaced."""

    step: int
    virtual_step: float
    replaced: int
    reset_moments: int
    result: ExtrapolationResult = field(repr=False)


def extrapolate_into(
    model: torch.nn.Module,
    recorder: TrajectoryRecorder,
    coef: float = 1.0,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    reset_optimizer: bool = True,
    options: ExtrapolateOptions | None = None,
    output: str | os.PathLike | None = None,
    to_step: int | None = None,
) -> Jump:
    """Jump ``model`` along its recorded trajectory, in place.

    Computes the extrapolated adapter from ``recorder``'s snapshots (``options``: method, horizon,
    predictor...; ``coef``, or ``to_step`` when given, overrides its coefficients), then loads it into the
    model's existing parameters with PEFT's own ``set_peft_model_state_dict`` (an in-place copy, so
    optimizers keep valid references). With an ``optimizer`` and ``reset_optimizer``, the moments of the
    replaced parameters are dropped. The adapter is also written to ``output`` if given (else to a
    temporary folder, then removed). ``rank_policy="grow"`` is refused: the model's parameters keep
    their shapes.
    """
    if options is not None and not isinstance(options, ExtrapolateOptions):
        raise ConfigError(f"extrapolate_into: options must be an ExtrapolateOptions, got {type(options).__name__}")
    if not isinstance(recorder, TrajectoryRecorder):
        raise ConfigError(f"extrapolate_into: recorder must be a TrajectoryRecorder, got {type(recorder).__name__}")
    _peft_config(model, recorder.adapter_name, "extrapolate_into")
    if options is not None and options.rank_policy != "keep":
        raise ConfigError(
            f"extrapolate_into loads the jump into the model's existing parameters, whose rank is fixed: "
            f"rank_policy {options.rank_policy!r} cannot apply in memory; use rank_policy='keep' (the default)"
        )
    if len(recorder.steps) < 2:
        raise ConfigError(
            f"the recorder holds {len(recorder.steps)} snapshot(s); a jump needs at least 2 (better horizon + 3): "
            "record more steps first"
        )
    target = {"coefs": None, "to_steps": (int(to_step),)} if to_step is not None else {"coefs": (float(coef),), "to_steps": ()}
    options = replace(options or ExtrapolateOptions(predictor=NExtConfig()), **target)
    with tempfile.TemporaryDirectory(prefix="nextrap-jump-") as scratch_name:
        scratch = Path(scratch_name)
        paths = recorder.checkpoints(scratch / "snapshots")
        out = Path(output) if output is not None else scratch / "jump"
        result = extrapolate(None, out, options, OutputOptions(hash_inputs=False), checkpoints=paths, steps=recorder.steps)
        entry = result.report.outputs[0]
        new = load_file(result.report.path_of(entry) / SAFETENSORS_NAME)
    params = _load_in_place(model, new, recorder.adapter_name)
    reset = 0
    if optimizer is not None and reset_optimizer:
        for p in params:
            if optimizer.state.pop(p, None) is not None:
                reset += 1
    logger.info("jumped from step %d to virtual step %g (%d tensors)", recorder.steps[-1], entry.virtual_step, len(params))
    return Jump(recorder.steps[-1], entry.virtual_step, len(params), reset, result)


def _load_in_place(model: torch.nn.Module, tensors: dict[str, torch.Tensor], adapter_name: str) -> list:
    """Load adapter tensors (PEFT's saved keys) into ``model``'s adapter ``adapter_name``, in place.

    Checked first against the model's own adapter state dict, so a foreign adapter fails with one line
    instead of PEFT loading what matches and ignoring the rest. Returns the parameters replaced.
    """
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    _peft_config(model, adapter_name, "extrapolate_into")
    current = get_peft_model_state_dict(model, adapter_name=adapter_name)
    missing = [k for k in tensors if k not in current]
    if missing:
        raise MismatchError(
            f"the extrapolated adapter has {len(missing)} tensor(s) the model does not (e.g. {missing[0]}); "
            "was the recorder attached to this model and adapter?"
        )
    for key, value in tensors.items():
        if current[key].shape != value.shape:
            raise MismatchError(f"{key}: the model has shape {tuple(current[key].shape)}, the jump {tuple(value.shape)}")
    # The state dict's tensors share storage with the parameters: that is how the replaced ones are found.
    storages = {current[k].data_ptr() for k in tensors}
    params = [p for p in model.parameters() if p.data_ptr() in storages]
    with torch.no_grad():
        set_peft_model_state_dict(model, tensors, adapter_name=adapter_name)
    return params


@dataclass(frozen=True)
class JumpSchedule:
    """RL-Extra's cycle: train ``train_steps``, jump ``jump_steps`` ahead, repeat (``cycles`` times; None: always).

    Within a cycle the adapter is recorded at its start and every ``record_every`` steps; the jump is
    computed from that cycle's snapshots only (after a jump the trajectory has a break). The step
    counter keeps counting steps actually trained; a jump of N steps is ``to_step = last + N``.
    ``reset_optimizer`` drops the optimizer's moments at each jump (RL-Extra starts a fresh run).
    """

    train_steps: int
    jump_steps: int
    record_every: int = 10
    cycles: int | None = None
    reset_optimizer: bool = True

    def __post_init__(self) -> None:
        check_types(self)
        if self.train_steps < 1 or self.record_every < 1:
            raise ConfigError(
                f"jump schedule: train_steps ({self.train_steps}) and record_every ({self.record_every}) must be >= 1"
            )
        if self.jump_steps < 1:
            raise ConfigError(
                f"jump schedule: a jump of {self.jump_steps} steps lands at or before the end of its observation; "
                "jump at least 1 step ahead"
            )
        if self.train_steps < self.record_every:
            raise ConfigError(
                f"jump schedule: a cycle of {self.train_steps} steps recorded every {self.record_every} holds one "
                "snapshot after its start; a jump needs 2 or more: train longer per cycle or record more often"
            )
        if self.cycles is not None and self.cycles < 1:
            raise ConfigError(f"jump schedule: cycles = {self.cycles}; give at least 1 (or None)")


class JumpCycles:
    """Runs a :class:`JumpSchedule` in any training loop: call :meth:`begin` once, :meth:`step_end` each step.

    ``options`` pick the method (RL-Extra's is ``linear``); with ``linear`` and no explicit horizon
    the horizon spans the whole cycle, so the jump repeats the cycle's own update scaled to
    ``jump_steps``, exactly as RL-Extra does.
    """

    def __init__(
        self,
        schedule: JumpSchedule,
        options: ExtrapolateOptions | None = None,
        folder: str | os.PathLike | None = None,
        in_memory: bool = True,
        adapter_name: str = "default",
    ):
        self.schedule = schedule
        self.options = options or ExtrapolateOptions(method="linear")
        self.recorder = TrajectoryRecorder(
            folder, every=schedule.record_every, in_memory=in_memory, adapter_name=adapter_name
        )
        self.jumps: list[Jump] = []
        self._cycle_start: int | None = None

    def begin(self, model: torch.nn.Module, step: int = 0) -> None:
        """Record the starting point of the first cycle (the adapter before training step ``step + 1``)."""
        self._cycle_start = step
        self.recorder.clear()
        self.recorder.record(model, step)

    def step_end(
        self, model: torch.nn.Module, step: int, optimizer: torch.optim.Optimizer | None = None
    ) -> Jump | None:
        """Record when due; jump at the end of a cycle. Returns the jump, if one was made."""
        if self._cycle_start is None:
            raise ConfigError("JumpCycles.step_end before begin(): call begin(model, start_step) first")
        done = self.schedule.cycles is not None and len(self.jumps) >= self.schedule.cycles
        into = step - self._cycle_start
        due = into % self.schedule.record_every == 0 or (into == self.schedule.train_steps and not done)
        if due and (not self.recorder.steps or step > self.recorder.steps[-1]):
            self.recorder.record(model, step)
        if done or into < self.schedule.train_steps:
            return None
        options = self.options
        if options.method == "linear" and options.horizon is None:
            options = replace(options, horizon=len(self.recorder.steps) - 1)
        jump = extrapolate_into(
            model,
            self.recorder,
            optimizer=optimizer,
            reset_optimizer=self.schedule.reset_optimizer,
            options=options,
            to_step=step + self.schedule.jump_steps,
        )
        self.jumps.append(jump)
        logger.info("jump cycle %d: step %d -> virtual step %g", len(self.jumps), step, jump.virtual_step)
        # the next cycle starts from the jumped weights
        self._cycle_start = step
        self.recorder.clear()
        self.recorder.record(model, step)
        return jump

    def close(self) -> None:
        """Release the recorder (its temporary folder, when it made one)."""
        self.recorder.close()
