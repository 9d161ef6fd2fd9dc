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
    1-D parameter. Extrapolating with coefficient ``c`` adds ``c`` times these. ``diagnostics`` is
    JSON-able and goes into the report.
    """

    method: str
    horizon: int
    matrices: dict[str, tuple[torch.Tensor, torch.Tensor]]
    vectors: dict[str, torch.Tensor]
    diagnostics: dict[str, Any] = field(default_factory=dict)


class Predictor(Protocol):
    """A method: turns a trajectory's features into a :class:`Prediction`."""

    name: str

    def predict(self, trajectory: Trajectory, features: Features, progress: Progress) -> Prediction: ...
