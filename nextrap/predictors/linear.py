"""Linear weight extrapolation: the update of the last horizon, repeated (docs/method.md, "Baselines").

``dW_new = dW(t_K) + c * (dW(t_K) - dW(t_K - H))`` per module, exact and in factored form: the
predicted update is ``[B_K, -B_{K-h}] @ [A_K; A_{K-h}]`` (rank <= 2r). Raw tensors move the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from nextrap.predictors.base import Prediction
from nextrap.progress import Progress, no_progress
from nextrap.trajectory import DEFAULT_CHUNK_BYTES, Features, SharedFeatures, Trajectory

if TYPE_CHECKING:
    from nextrap.predictors.registry import MethodSettings

__all__ = ["LinearPredictor"]


@dataclass(frozen=True)
class LinearPredictor:
    """Repeat the last horizon's update; no fitting, no features."""

    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    name: str = "linear"

    def predict(
        self,
        trajectory: Trajectory,
        horizon: int,
        features: SharedFeatures | Features | None = None,
        device: torch.device | None = None,
        progress: Progress = no_progress,
    ) -> Prediction:
        device = device or torch.device("cpu")
        last = len(trajectory.headers) - 1
        idx = [last - horizon, last]
        matrices: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for names in progress(trajectory.module_chunks(len(idx), self.chunk_bytes), "linear"):
            B, A = trajectory.load_factors(names, device, idx)
            L = torch.cat([B[:, 1], -B[:, 0]], -1).cpu()
            R = torch.cat([A[:, 1], A[:, 0]], -2).cpu()
            for j, name in enumerate(names):
                matrices[name] = (L[j], R[j])
        vectors = {}
        for key in trajectory.raw:
            X = trajectory.load_raw(key, torch.device("cpu"), idx)
            if not bool((X[0] == X[1]).all()):
                vectors[key] = X[1] - X[0]  # the tensor's own shape: it is added as is
        steps = [trajectory.steps[i] for i in idx]
        return Prediction(self.name, horizon, matrices, vectors, {"from_step": steps[0], "to_step": steps[1]})


def build(name: str, settings: MethodSettings) -> LinearPredictor:
    """The registry's builder (:mod:`nextrap.predictors.registry`)."""
    return LinearPredictor(chunk_bytes=settings.chunk_bytes or DEFAULT_CHUNK_BYTES)
