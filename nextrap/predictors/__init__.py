"""Extrapolation methods behind one interface (:class:`Predictor`), one module per method.

* ``next``: the NExt predictor on rank-1 features (``predictors.next``);
* ``linear``: repeat the last horizon's update, RL-Extra (``predictors.linear``);
* ``relex``: RELEX, rank-1 over time with a straight line per temporal coefficient, denoised as
  published; ``relex-anchored``: the same line, anchored at the last checkpoint (``predictors.relex``);
* ``next+linear``: NExt's rank-1 move plus the rest of the linear move (``predictors.combined``).

:mod:`~nextrap.predictors.registry` lists them by name; :mod:`~nextrap.predictors.config` holds their
options. Both import without torch; the predictors themselves are imported when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nextrap.predictors.config import PRESETS, NExtConfig, RelexConfig
from nextrap.predictors.registry import METHODS, REGISTRY, MethodSettings, make_predictor, method_help
from nextrap.util.lazy import lazy_getattr

_LAZY = {
    "Prediction": "nextrap.predictors.base",
    "Predictor": "nextrap.predictors.base",
    "LinearPredictor": "nextrap.predictors.linear",
    "NextLinearPredictor": "nextrap.predictors.combined",
    "NExtNet": "nextrap.predictors.next",
    "NExtPredictor": "nextrap.predictors.next",
    "RelexPredictor": "nextrap.predictors.relex",
    "line_fit": "nextrap.predictors.relex",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


if TYPE_CHECKING:
    from nextrap.predictors.base import Prediction, Predictor
    from nextrap.predictors.combined import NextLinearPredictor
    from nextrap.predictors.linear import LinearPredictor
    from nextrap.predictors.next import NExtNet, NExtPredictor
    from nextrap.predictors.relex import RelexPredictor, line_fit

__all__ = [
    "METHODS",
    "PRESETS",
    "REGISTRY",
    "LinearPredictor",
    "MethodSettings",
    "NExtConfig",
    "NExtNet",
    "NExtPredictor",
    "NextLinearPredictor",
    "Prediction",
    "Predictor",
    "RelexConfig",
    "RelexPredictor",
    "line_fit",
    "make_predictor",
    "method_help",
]
