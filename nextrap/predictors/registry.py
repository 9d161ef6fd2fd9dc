"""The methods by name: what each one is (for ``--help`` and the report) and how to build its predictor.

The one list of methods. The CLI's ``--method`` choices, their help text, backtest's default method set
and the check of ``ExtrapolateOptions.method`` all come from :data:`REGISTRY`. Building a predictor imports
its module then (they need torch); reading the registry does not.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nextrap.predictors.config import NExtConfig, RelexConfig

if TYPE_CHECKING:
    from nextrap.predictors.base import Predictor

__all__ = ["METHODS", "REGISTRY", "MethodSettings", "MethodSpec", "make_predictor", "method_help"]

@dataclass(frozen=True)
class MethodSettings:
    """Every method's options in one place; each method reads the part it needs.

    ``chunk_bytes``: the most factor bytes a method holds at once (None: the trajectory's default).
    """

    next: NExtConfig = field(default_factory=NExtConfig)
    relex: RelexConfig = field(default_factory=RelexConfig)
    chunk_bytes: int | None = None


@dataclass(frozen=True)
class MethodSpec:
    """One method: its name, a one-line summary, and ``module:function`` building its predictor."""

    name: str
    summary: str
    builder: str

    def build(self, settings: MethodSettings) -> Predictor:
        module, function = self.builder.split(":")
        return getattr(importlib.import_module(module), function)(self.name, settings)


REGISTRY: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("next", "NExt: a small network per vector length on the run's rank-1 features", "nextrap.predictors.next:build"),
        MethodSpec("linear", "repeat the last horizon's update (RL-Extra)", "nextrap.predictors.linear:build"),
        MethodSpec(
            "relex",
            "RELEX as published: rank-1 SVD over time, a line per coefficient, denoised",
            "nextrap.predictors.relex:build",
        ),
        MethodSpec(
            "relex-anchored", "RELEX's line, moved from the last checkpoint", "nextrap.predictors.relex:build"
        ),
        MethodSpec(
            "next+linear",
            "NExt's predicted rank-1 move plus the linear move without its own top direction",
            "nextrap.predictors.combined:build",
        ),
        MethodSpec(
            "next-horizon+linear",
            "next+linear with NExt fed the last horizon's move (not the last interval's) as its latest move",
            "nextrap.predictors.combined:build",
        ),
    )
}
METHODS: tuple[str, ...] = tuple(REGISTRY)


def make_predictor(
    method: str,
    next_config: NExtConfig | None = None,
    chunk_bytes: int | None = None,
    relex: RelexConfig | None = None,
) -> Predictor:
    """The predictor for ``method`` (one of :data:`METHODS`)."""
    if method not in REGISTRY:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    settings = MethodSettings(next=next_config or NExtConfig(), relex=relex or RelexConfig(), chunk_bytes=chunk_bytes)
    return REGISTRY[method].build(settings)


def method_help(extra: dict[str, str] | None = None) -> str:
    """``name: summary; ...`` for every method (and ``extra`` ones such as ``auto``), for ``--help``."""
    items = {name: spec.summary for name, spec in REGISTRY.items()} | (extra or {})
    return "; ".join(f"{name}: {text}" for name, text in items.items()) + "."
