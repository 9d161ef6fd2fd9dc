"""Extrapolation methods behind one interface (:class:`Predictor`), one module per method.

* ``next``: the NExt predictor on rank-1 features (``predictors.next``);
* ``linear``: repeat the last horizon's update, RL-Extra (``predictors.linear``);
* ``relex``: RELEX, rank-1 over time with a straight line per temporal coefficient, denoised as
  published; ``relex-anchored``: the same line, anchored at the last checkpoint (``predictors.relex``).
"""

from __future__ import annotations

from nextrap.predictors.base import Prediction, Predictor
from nextrap.predictors.linear import LinearPredictor
from nextrap.predictors.next import PRESETS, NExtConfig, NExtNet, NExtPredictor
from nextrap.predictors.relex import RelexConfig, RelexPredictor, line_fit
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
    "RelexConfig",
    "RelexPredictor",
    "line_fit",
    "make_predictor",
]

METHODS = ("next", "linear", "relex", "relex-anchored")


def make_predictor(
    method: str,
    next_config: NExtConfig | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    relex: RelexConfig | None = None,
) -> Predictor:
    """The predictor for ``method`` (one of :data:`METHODS`)."""
    relex = relex or RelexConfig()
    if method == "next":
        return NExtPredictor(next_config)
    if method == "linear":
        return LinearPredictor(chunk_bytes=chunk_bytes)
    if method in ("relex", "relex-anchored"):
        mode = "denoised" if method == "relex" else "anchored"
        return RelexPredictor(rank=relex.rank, window=relex.window, mode=mode, chunk_bytes=chunk_bytes)
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
