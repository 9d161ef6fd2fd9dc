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

from nextrap.backtest import BacktestOptions, BacktestResult, backtest
from nextrap.callbacks import Jump, TrajectoryRecorder, extrapolate_into
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
)
from nextrap.extrapolate import ExtrapolateOptions, ExtrapolationResult, extrapolate
from nextrap.hub import push
from nextrap.layouts import CheckpointRef, Discovery, discover, from_explicit
from nextrap.predictors import LinearPredictor, NExtConfig, NExtPredictor, RelexPredictor
from nextrap.runs import open_run, scan
from nextrap.trajectory import Trajectory, compute_features
from nextrap.version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())

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
    "LayoutError",
    "LinearPredictor",
    "MismatchError",
    "NExtConfig",
    "NExtPredictor",
    "NextrapError",
    "OutputExistsError",
    "RelexPredictor",
    "Trajectory",
    "TrajectoryRecorder",
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
