"""Linear weight extrapolation: the update of the last horizon, repeated (docs/method.md, "Baselines").

``dW_new = dW(t_K) + c * (dW(t_K) - dW(t_K - H))`` per module, exact and in factored form. The
prediction holds no factors: each module's move is the weights ``(-1, +1)`` on the run's own checkpoints
``K - H`` and ``K`` (:class:`~nextrap.predictors.base.Prediction`'s ``combinations``), and the factors
``[B_K, -B_{K-H}] @ [A_K; A_{K-H}]`` (rank <= 2r) are read from the run when a consumer needs them, a
chunk at a time. So predicting costs no memory, however large the model: holding the moves of every
module in float32 used to cost up to 4x a bf16 checkpoint. Raw tensors move the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from nextrap.predictors.base import Prediction
from nextrap.run.trajectory import Features, SharedFeatures, Trajectory
from nextrap.util.progress import Progress, no_progress

if TYPE_CHECKING:
    from nextrap.predictors.registry import MethodSettings

__all__ = ["LinearPredictor"]


@dataclass(frozen=True)
class LinearPredictor:
    """Repeat the last horizon's update; no fitting, no features, no factors read until they are used."""

    name: str = "linear"

    def predict(
        self,
        trajectory: Trajectory,
        horizon: int,
        features: SharedFeatures | Features | None = None,
        device: torch.device | None = None,
        progress: Progress = no_progress,
    ) -> Prediction:
        """``dW_K - dW_{K - horizon}`` per module, as weights (-1, +1) on the run's own checkpoints."""
        last = len(trajectory.headers) - 1
        idx = (last - horizon, last)
        no_offset = torch.zeros(2, dtype=torch.float64)
        move = torch.tensor([-1.0, 1.0], dtype=torch.float64)
        combinations = {name: (no_offset, move) for name in trajectory.modules}
        vectors = {}
        for key in trajectory.raw:
            X = trajectory.load_raw(key, torch.device("cpu"), list(idx))
            if not bool((X[0] == X[1]).all()):
                vectors[key] = X[1] - X[0]  # the tensor's own shape: it is added as is
        steps = [trajectory.steps[i] for i in idx]
        return Prediction(
            self.name,
            horizon,
            matrices={},
            vectors=vectors,
            diagnostics={"from_step": steps[0], "to_step": steps[1]},
            combinations=combinations,
            indices=idx,
        )


def build(name: str, settings: MethodSettings) -> LinearPredictor:
    """The registry's builder (:mod:`nextrap.predictors.registry`)."""
    return LinearPredictor()
