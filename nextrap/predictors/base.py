"""The interface every extrapolation method implements, and the prediction it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from nextrap.progress import Progress
from nextrap.trajectory import Features, Trajectory

__all__ = ["Prediction", "Predictor"]


@dataclass(frozen=True)
class Prediction:
    """The update a method predicts for the next ``horizon`` checkpoint intervals after the last one.

    ``matrices[name] = (L, R)`` is the update of a matrix parameter in factored form, ``L (out, k)``,
    ``R (k, in)``, already scaled (it adds to ``scaling * B @ A``); ``vectors[key]`` is the update of a
    raw tensor, in that tensor's shape. Extrapolating with coefficient ``c`` adds ``c`` times these. ``diagnostics`` is
    JSON-able and goes into the report.
    """

    method: str
    horizon: int
    matrices: dict[str, tuple[torch.Tensor, torch.Tensor]]
    vectors: dict[str, torch.Tensor]
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def stacked(self, names: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The factored updates of ``names`` stacked, zero-padded to a common inner size: ``(M, out, k)``, ``(M, k, in)``."""
        pairs = [self.matrices[n] for n in names]
        k = max(L.shape[-1] for L, _ in pairs)
        Ls = [torch.nn.functional.pad(L, (0, k - L.shape[-1])) for L, _ in pairs]
        Rs = [torch.nn.functional.pad(R, (0, 0, 0, k - R.shape[-2])) for _, R in pairs]
        return torch.stack(Ls).to(device, torch.float32), torch.stack(Rs).to(device, torch.float32)


class Predictor(Protocol):
    """A method: predicts the update of the ``horizon`` checkpoint intervals after the last checkpoint.

    ``needs_features``: whether ``predict`` wants the rank-1 features (:func:`compute_features`), which
    the pipeline then computes once and passes in; otherwise ``features`` is None.
    """

    name: str
    needs_features: bool

    def predict(
        self,
        trajectory: Trajectory,
        horizon: int,
        features: Features | None,
        device: torch.device,
        progress: Progress,
    ) -> Prediction: ...
