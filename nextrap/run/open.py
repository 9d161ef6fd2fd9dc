"""Opening a run: a folder to search or explicit checkpoints -> a checked :class:`Trajectory`; the horizon rule.

``scan`` (headers only, no torch) is :func:`nextrap.run.scan.scan`, re-exported here.

Shared by ``extrapolate``, ``backtest`` and ``inspect``, so every command finds, checks and sizes a
run the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nextrap.errors import LayoutError
from nextrap.layouts import Discovery
from nextrap.run.scan import find_checkpoints, scan
from nextrap.run.trajectory import DEFAULT_CHUNK_BYTES, Trajectory, check_run, load_trajectory
from nextrap.util.progress import Progress, no_progress

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_HORIZON", "MIN_PAIRS", "open_run", "resolve_horizon", "scan"]

DEFAULT_HORIZON = 5
MIN_PAIRS = 3


def open_run(
    run: str | os.PathLike | Discovery | Trajectory | None = None,
    checkpoints: Sequence[str | os.PathLike] | None = None,
    steps: Sequence[int] | None = None,
    adapter_name: str | None = None,
    *,
    verify: bool = True,
    force: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Progress = no_progress,
    device: torch.device | None = None,
) -> Trajectory:
    """Find and check a run's checkpoints: a folder to search, or explicit ``checkpoints`` (+ ``steps``).

    Returns the :class:`Trajectory` that :func:`backtest`, :func:`compute_features` and
    :func:`extrapolate` take; a :class:`Discovery` or a :class:`Trajectory` given as ``run`` is opened
    (or checked) as it is.

    ``verify`` reads every tensor once (:func:`check_run`: NaN/Inf anywhere, discontinuous updates,
    which ``force`` lets through as notes), its math on ``device`` (default the CPU); without it only
    headers are read.
    """
    traj = _open(run, checkpoints, steps, adapter_name)
    return check_run(traj, force, chunk_bytes, progress, device) if verify else traj


def _open(run, checkpoints, steps, adapter_name) -> Trajectory:
    if isinstance(run, Trajectory):
        return run
    return load_trajectory(find_checkpoints(run, checkpoints, steps, adapter_name))


def resolve_horizon(checkpoints: int, requested: int | None) -> tuple[int, str | None]:
    """The horizon in checkpoint intervals, and a note when the default had to be shortened.

    A horizon h gives ``checkpoints - h`` training pairs (k, k + h). The default (5) is shortened to
    leave 3 pairs where the run is short; an explicit horizon is kept and must leave at least one.
    """
    if requested is not None:
        if checkpoints - requested < 1:
            raise LayoutError(
                f"horizon {requested} needs at least {requested + 1} checkpoints, the run has {checkpoints}; "
                f"lower --horizon to at most {checkpoints - 1} or save more checkpoints"
            )
        return requested, None
    h = min(DEFAULT_HORIZON, max(1, checkpoints - MIN_PAIRS))
    if h == DEFAULT_HORIZON:
        return h, None
    pairs = checkpoints - h
    return h, (
        f"horizon shortened from {DEFAULT_HORIZON} to {h} checkpoint intervals: {checkpoints} checkpoints give "
        f"{pairs} training pair(s) at horizon {h}; {DEFAULT_HORIZON + MIN_PAIRS} checkpoints allow the default"
    )
