"""nextrap: extrapolate LoRA checkpoints of RLVR runs along their rank-1 trajectory (NExt).

Point it at a folder of LoRA checkpoints written by any trainer, and it writes adapters that jump
ahead along the predicted trajectory, for you to resume training from::

    import nextrap
    nextrap.scan("runs/grpo")                                     # what was found
    result = nextrap.extrapolate("runs/grpo", "out/jump",
                                 nextrap.ExtrapolateOptions(coefs=(1.0, 2.0)))
    result.adapters[2.0]                                          # a PEFT adapter folder
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nextrap.errors import (
    CheckpointError,
    ConfigError,
    DeviceError,
    HubError,
    InputNotFoundError,
    LayoutError,
    MismatchError,
    NextrapError,
    OutputExistsError,
    UnsafeOutputError,
)
from nextrap.util.lazy import lazy_getattr
from nextrap.version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())

# The public API, imported on first use: `import nextrap` and `nextrap --help` must not pay for torch.
_LAZY = {
    "BacktestOptions": "nextrap.ops.backtest",
    "BacktestResult": "nextrap.ops.backtest",
    "backtest": "nextrap.ops.backtest",
    "Jump": "nextrap.live.callbacks",
    "JumpCycles": "nextrap.live.callbacks",
    "JumpSchedule": "nextrap.live.callbacks",
    "TrajectoryRecorder": "nextrap.live.callbacks",
    "extrapolate_into": "nextrap.live.callbacks",
    "ExtrapolateOptions": "nextrap.ops.options",
    "ExtrapolationResult": "nextrap.ops.extrapolate",
    "OutputEntry": "nextrap.formats.report",
    "OutputOptions": "nextrap.output.writers",
    "Report": "nextrap.formats.report",
    "extrapolate": "nextrap.ops.extrapolate",
    "push": "nextrap.publish.hub",
    "CheckpointRef": "nextrap.layouts",
    "Discovery": "nextrap.layouts",
    "discover": "nextrap.layouts",
    "from_explicit": "nextrap.layouts",
    "LinearPredictor": "nextrap.predictors",
    "NExtConfig": "nextrap.predictors",
    "NExtPredictor": "nextrap.predictors",
    "RelexConfig": "nextrap.predictors",
    "RelexPredictor": "nextrap.predictors",
    "open_run": "nextrap.run.open",
    "scan": "nextrap.run.scan",
    "Trajectory": "nextrap.run.trajectory",
    "compute_features": "nextrap.run.trajectory",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from nextrap.formats.report import OutputEntry, Report
    from nextrap.layouts import CheckpointRef, Discovery, discover, from_explicit
    from nextrap.live.callbacks import Jump, JumpCycles, JumpSchedule, TrajectoryRecorder, extrapolate_into
    from nextrap.ops.backtest import BacktestOptions, BacktestResult, backtest
    from nextrap.ops.extrapolate import ExtrapolationResult, extrapolate
    from nextrap.ops.options import ExtrapolateOptions
    from nextrap.output.writers import OutputOptions
    from nextrap.predictors import LinearPredictor, NExtConfig, NExtPredictor, RelexConfig, RelexPredictor
    from nextrap.publish.hub import push
    from nextrap.run.open import open_run
    from nextrap.run.scan import scan
    from nextrap.run.trajectory import Trajectory, compute_features

__all__ = [
    "BacktestOptions",
    "BacktestResult",
    "CheckpointError",
    "CheckpointRef",
    "ConfigError",
    "DeviceError",
    "Discovery",
    "ExtrapolateOptions",
    "ExtrapolationResult",
    "HubError",
    "InputNotFoundError",
    "Jump",
    "JumpCycles",
    "JumpSchedule",
    "LayoutError",
    "LinearPredictor",
    "MismatchError",
    "NExtConfig",
    "NExtPredictor",
    "NextrapError",
    "OutputEntry",
    "OutputExistsError",
    "OutputOptions",
    "RelexConfig",
    "RelexPredictor",
    "Report",
    "Trajectory",
    "TrajectoryRecorder",
    "UnsafeOutputError",
    "__version__",
    "backtest",
    "compute_features",
    "discover",
    "extrapolate",
    "extrapolate_into",
    "from_explicit",
    "open_run",
    "push",
    "scan",
]
