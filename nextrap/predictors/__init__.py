"""Extrapolation methods behind one interface (:class:`Predictor`), one module per method.

* ``next``: the NExt predictor on rank-1 features (``predictors.next``);
* ``linear``: repeat the last horizon's update (``predictors.linear``);
* ``relex``: rank-1 direction of the last update, straight-line coefficient (``predictors.relex``).
"""

from __future__ import annotations

from nextrap.predictors.base import Prediction, Predictor
from nextrap.predictors.linear import LinearPredictor
from nextrap.predictors.next import PRESETS, NExtConfig, NExtNet, NExtPredictor
from nextrap.predictors.relex import RelexPredictor, line_fit
from nextrap.trajectory import DEFAULT_CHUNK_BYTES

__all__ = [
    "METHODS",
    "PRESETS",
    "LinearPredictor",
    "NExtConfig",
    "NExtNet",
    "NExtPredictor",
    "Prediction",
    "Predictor",
    "RelexPredictor",
    "line_fit",
    "make_predictor",
]

METHODS = ("next", "linear", "relex")


def make_predictor(
    method: str, next_config: NExtConfig | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Predictor:
    """The predictor for ``method`` (one of :data:`METHODS`)."""
    if method == "next":
        return NExtPredictor(next_config)
    if method == "linear":
        return LinearPredictor(chunk_bytes=chunk_bytes)
    if method == "relex":
        return RelexPredictor(chunk_bytes=chunk_bytes)
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
