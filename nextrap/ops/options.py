"""What an extrapolation computes: :class:`ExtrapolateOptions` (how it is written is ``writers.OutputOptions``).

Torch-free, so the CLI builds its options from these fields' metadata without importing torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from nextrap.errors import CheckpointError, ConfigError
from nextrap.layouts import MAX_STEP
from nextrap.predictors.config import NExtConfig, RelexConfig
from nextrap.predictors.registry import METHODS, method_help
from nextrap.util.cli_spec import cli
from nextrap.util.memory import DEFAULT_CHUNK_BYTES
from nextrap.util.validate import check_types

__all__ = ["DEVICE_OPTION", "FORCE_OPTION", "HORIZON_OPTION", "RANK_POLICIES", "ExtrapolateOptions", "RecordedJob", "recorded_job"]

# Shared by every command that fits a predictor (extrapolate, backtest, inspect).
HORIZON_OPTION = cli(
    "--horizon",
    "Prediction horizon in checkpoint intervals [default: 5, shortened for short runs].",
    type=int,
    min=1,
    group="How far",
)
DEVICE_OPTION = cli("--device", "Where the math runs: auto, cpu, cuda, cuda:N or mps.")
FORCE_OPTION = cli(
    "--force",
    "Go on past a discontinuity between checkpoints (two runs mixed in one folder?); it is noted.",
    is_flag=True,
    group="Input",
)

RANK_POLICIES = ("keep", "grow")


@dataclass(frozen=True)
class ExtrapolateOptions:
    """What to compute; how to write it is :class:`~nextrap.output.writers.OutputOptions`.

    ``coefs``: extending coefficients c (one adapter each); ``to_steps``: target steps instead (one
    adapter each, c = (step - t_K) / horizon steps); give one or the other (neither: c = 1).
    ``method``: one of :data:`~nextrap.predictors.METHODS` or ``auto`` (backtest the run, take the
    recommended method); ``predictor``: NExt's settings; ``relex``: RELEX's rank and window.
    ``horizon``: in checkpoint intervals; ``None`` means 5, shortened when the run is too short for 3
    training pairs. ``rank_policy``: ``keep`` (rank r, best approximation) or ``grow`` (rank r + 1: the
    last checkpoint plus the move's top direction; exact for ``next`` only, whose move is rank 1).
    ``force``: go on past a discontinuity between checkpoints. ``chunk_bytes``: the most factor bytes
    held at once.
    """

    coefs: tuple[float, ...] | None = field(
        default=None,
        metadata=cli(
            "--coef",
            "Extending coefficient c: jump c horizons ahead [default: 1]. Repeat for several adapters.",
            dest="coefs", multiple=True, type=float, empty_is_none=True, group="How far",
        ),
    )
    to_steps: tuple[int, ...] = field(
        default=(),
        metadata=cli(
            "--to-step",
            "Jump to this training step instead of --coef (beyond the last checkpoint). Repeatable.",
            dest="to_steps", multiple=True, type=int, group="How far",
        ),
    )
    method: str = field(
        default="linear",
        metadata=cli(
            "--method",
            method_help({"auto": "backtest the run and take the method it recommends"}),
            choices=[*METHODS, "auto"],
            group="What to compute",
        ),
    )
    horizon: int | None = field(default=None, metadata=HORIZON_OPTION)
    rank_policy: str = field(
        default="keep",
        metadata=cli(
            "--rank-policy",
            "keep: the best rank-r adapter (resumable by any trainer); grow: rank r+1, the last checkpoint plus "
            "the move's top direction (exact for next, whose move is rank 1; not for linear or relex).",
            choices=["keep", "grow"],
            group="Output",
        ),
    )
    device: str = field(default="auto", metadata=DEVICE_OPTION)
    predictor: NExtConfig = field(default_factory=NExtConfig)
    relex: RelexConfig = field(default_factory=RelexConfig)
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    force: bool = field(default=False, metadata=FORCE_OPTION)

    def __post_init__(self) -> None:
        check_types(self)
        to_steps = tuple(int(t) for t in self.to_steps)
        object.__setattr__(self, "to_steps", to_steps)
        if to_steps and self.coefs:
            raise ConfigError("give either coefficients (--coef) or target steps (--to-step), not both")
        if any(not 0 <= t <= MAX_STEP for t in to_steps):
            bad = next(t for t in to_steps if not 0 <= t <= MAX_STEP)
            raise ConfigError(f"--to-step {bad}: expected a step in [0, {MAX_STEP}], as a run's steps are")
        if len(set(to_steps)) != len(to_steps):
            raise ConfigError(f"to_steps = {list(to_steps)}: a step is given twice")
        coefs = tuple(float(c) for c in self.coefs) if self.coefs is not None else ((1.0,) if not to_steps else ())
        object.__setattr__(self, "coefs", coefs)
        if not coefs and not to_steps:
            raise ConfigError("coefs is empty: give at least one extending coefficient (--coef)")
        if any(not math.isfinite(c) for c in coefs):
            raise ConfigError(f"coefs = {list(coefs)}: every coefficient must be a finite number")
        if len(set(coefs)) != len(coefs):
            raise ConfigError(f"coefs = {list(coefs)}: a coefficient is given twice")
        if self.method not in (*METHODS, "auto"):
            raise ConfigError(f"method {self.method!r}: expected one of {[*METHODS, 'auto']}")
        if self.horizon is not None and self.horizon < 1:
            raise ConfigError(f"horizon = {self.horizon}: expected at least 1 checkpoint interval")
        if self.rank_policy not in RANK_POLICIES:
            raise ConfigError(f"rank_policy {self.rank_policy!r}: expected one of {list(RANK_POLICIES)}")
        if self.chunk_bytes < 1:
            raise ConfigError(f"chunk_bytes = {self.chunk_bytes}: expected a positive number of bytes")

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-able values (as the report records them)."""
        d = asdict(self)
        d["coefs"] = list(self.coefs)
        d["to_steps"] = list(self.to_steps)
        return d

    def resolve_coefs(self, last_step: int, horizon_steps: int) -> list[tuple[float, int | None]]:
        """``(coef, requested step or None)`` per output; target steps must lie beyond ``last_step``."""
        if not self.to_steps:
            return [(c, None) for c in self.coefs]
        early = [t for t in self.to_steps if t <= last_step]
        if early:
            raise ConfigError(
                f"--to-step {early[0]}: not beyond the last checkpoint (step {last_step}); give a later step, or "
                "--coef for a fraction of a horizon"
            )
        return [((t - last_step) / horizon_steps, t) for t in self.to_steps]




@dataclass(frozen=True)
class RecordedJob:
    """An extrapolation as its ``nextrap.json`` recorded it: the inputs, what it computed, how it wrote.

    ``run``: the run folder searched, or None when ``checkpoints`` (with ``steps``) were named one by one.
    ``write`` is an :class:`~nextrap.output.writers.OutputOptions` (typed loosely: that module needs torch).
    """

    run: str | None
    checkpoints: tuple[str, ...]
    steps: tuple[int, ...]
    options: ExtrapolateOptions
    write: Any
    adapter_name: str | None = None


def recorded_job(report: str | os.PathLike) -> RecordedJob:
    """The job recorded in ``report`` (a ``nextrap.json`` or the folder holding it), to run it again.

    Everything is taken as recorded except ``overwrite``, which is never carried over: a rerun writes a
    new output unless its caller asks again. Raises :class:`CheckpointError` for a missing or foreign file.
    """
    from nextrap.formats.report import REPORT_NAME, Report
    from nextrap.output.writers import OutputOptions

    path = Path(report)
    loaded = Report.load(path.parent if path.name == REPORT_NAME else path)
    recorded = dict(loaded.options)
    write_fields = {f.name for f in fields(OutputOptions)}
    write = {k: recorded.pop(k) for k in list(recorded) if k in write_fields}
    write["overwrite"] = False
    known = {f.name for f in fields(ExtrapolateOptions)}
    values = {k: v for k, v in recorded.items() if k in known}
    for name, cls in (("predictor", NExtConfig), ("relex", RelexConfig)):
        given = dict(values.get(name) or {})
        unknown = sorted(set(given) - {f.name for f in fields(cls)})
        if unknown:  # a report of another nextrap version: say so, do not guess
            raise CheckpointError(
                f"{path}: options.{name} has {', '.join(unknown)}, unknown to this nextrap "
                f"({loaded.nextrap_version} wrote it); rerun with the same nextrap version"
            )
        values[name] = cls(**given)
    values["to_steps"] = tuple(values.get("to_steps") or ())
    values["coefs"] = None if values["to_steps"] else tuple(values.get("coefs") or ()) or None
    inputs = loaded.inputs
    root = inputs.get("root")
    explicit = root in (None, "None") or inputs.get("layout") == "explicit"
    checkpoints = tuple(str(c["path"]) for c in inputs.get("checkpoints", [])) if explicit else ()
    steps = tuple(int(c["step"]) for c in inputs.get("checkpoints", [])) if explicit else ()
    return RecordedJob(
        run=None if explicit else str(root),
        checkpoints=checkpoints,
        steps=steps,
        options=ExtrapolateOptions(**values),
        write=OutputOptions(**write),
        adapter_name=inputs.get("adapter_name"),
    )
