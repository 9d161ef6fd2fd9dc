"""Extrapolation methods behind one interface (:class:`Predictor`), one module per method."""

from __future__ import annotations

from nextrap.predictors.base import Prediction, Predictor
from nextrap.predictors.next import PRESETS, NExtConfig, NExtNet, NExtPredictor

__all__ = ["PRESETS", "NExtConfig", "NExtNet", "NExtPredictor", "Prediction", "Predictor"]
