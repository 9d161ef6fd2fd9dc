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
import sys
import types
from typing import TYPE_CHECKING, Any

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
from nextrap.lazy import lazy_getattr
from nextrap.version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())

# The public API, imported on first use: `import nextrap` and `nextrap --help` must not pay for torch.
_LAZY = {
    "BacktestOptions": "nextrap.backtest",
    "BacktestResult": "nextrap.backtest",
    "backtest": "nextrap.backtest",
    "Jump": "nextrap.callbacks",
    "JumpCycles": "nextrap.callbacks",
    "JumpSchedule": "nextrap.callbacks",
    "TrajectoryRecorder": "nextrap.callbacks",
    "extrapolate_into": "nextrap.callbacks",
    "ExtrapolateOptions": "nextrap.options",
    "ExtrapolationResult": "nextrap.extrapolate",
    "OutputEntry": "nextrap.report",
    "OutputOptions": "nextrap.writers",
    "Report": "nextrap.report",
    "extrapolate": "nextrap.extrapolate",
    "push": "nextrap.hub",
    "CheckpointRef": "nextrap.layouts",
    "Discovery": "nextrap.layouts",
    "discover": "nextrap.layouts",
    "from_explicit": "nextrap.layouts",
    "LinearPredictor": "nextrap.predictors",
    "NExtConfig": "nextrap.predictors",
    "NExtPredictor": "nextrap.predictors",
    "RelexConfig": "nextrap.predictors",
    "RelexPredictor": "nextrap.predictors",
    "open_run": "nextrap.runs",
    "scan": "nextrap.run_headers",
    "Trajectory": "nextrap.trajectory",
    "compute_features": "nextrap.trajectory",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


class _Package(types.ModuleType):
    """Keeps ``nextrap.extrapolate`` and ``nextrap.backtest`` the functions once their modules are imported.

    Importing a submodule binds it as an attribute of its package (``nextrap.extrapolate`` = the module
    ``nextrap/extrapolate.py``), which would shadow the lazily exported function of the same name.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == value.__name__ and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from nextrap.backtest import BacktestOptions, BacktestResult, backtest
    from nextrap.callbacks import Jump, JumpCycles, JumpSchedule, TrajectoryRecorder, extrapolate_into
    from nextrap.extrapolate import ExtrapolationResult, extrapolate
    from nextrap.hub import push
    from nextrap.layouts import CheckpointRef, Discovery, discover, from_explicit
    from nextrap.options import ExtrapolateOptions
    from nextrap.predictors import LinearPredictor, NExtConfig, NExtPredictor, RelexConfig, RelexPredictor
    from nextrap.report import OutputEntry, Report
    from nextrap.run_headers import scan
    from nextrap.runs import open_run
    from nextrap.trajectory import Trajectory, compute_features
    from nextrap.writers import OutputOptions

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
