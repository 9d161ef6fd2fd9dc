"""The methods' options as plain dataclasses: NExt's presets, RELEX's rank and window, one fit's settings.

Kept apart from the predictors (which need torch) so that the CLI can build its options and check them
without importing torch.

NExt's three presets:

* ``auto`` (default) runs the paper's networks with two nextrap changes that make the fit both faster and
  better on real runs: a skip connection from the latest move (``residual``: the network starts from
  "the next move repeats the latest one" and learns corrections), and stopping when the most recent
  training pair, held out, stops improving (``stop = "holdout"``), so a correction is kept only as far as
  it predicts a pair it was not trained on. Inputs and targets are rescaled to unit RMS per group, lr
  1e-3, at most 1000 epochs. Vectors of 2048 entries or more (7B-class hidden and intermediate sizes)
  are fitted on their own 16-wide frame (:mod:`nextrap.predictors.frames`), where full-length
  networks would take minutes per epoch on a CPU; shorter ones at full length.
* ``frames`` is ``auto`` with vectors of 512 entries or more on frames: several times faster on
  mid-sized models (SmolLM2-135M: 2-7 CPU-s instead of 9-28), somewhat less accurate there.
* ``reference`` reproduces the paper's scripts: raw features, no skip connection, AdamW lr 2e-5, cosine
  to 0.1 lr over exactly 1000 full-batch epochs, L1 loss summed over entries. Tuned for 7B-sized vectors;
  on small models it stays far from converged (see docs/method.md).

``benchmarks/predictor.py`` compares them (fit time and backtest error, side by side).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from nextrap.errors import ConfigError
from nextrap.util.cli_spec import cli
from nextrap.util.validate import check_types

__all__ = [
    "PRECISIONS",
    "PRESETS",
    "PRESET_NAMES",
    "RELEX_MODES",
    "STOP_RULES",
    "FitOptions",
    "FitSettings",
    "NExtConfig",
    "RelexConfig",
    "check_relex_options",
    "preset_values",
]

RELEX_MODES = ("denoised", "anchored")

STOP_RULES = ("fixed", "train", "holdout")
PRECISIONS = ("float32", "bfloat16")


@dataclass(frozen=True)
class FitSettings:
    """How one group's network is trained (built from :class:`NExtConfig`)."""

    lr: float
    epochs: int
    min_lr_ratio: float
    weight_decay: float
    loss: str
    stop: str
    patience: int
    min_improvement: float
    refit: bool
    precision: str


PRESET_NAMES = ("auto", "frames", "reference")


@dataclass(frozen=True)
class NExtConfig:
    """Hyper-parameters of the NExt predictor; validated at construction.

    ``epochs`` is the most a group trains (the exact count with ``stop = "fixed"``); ``stop`` picks the
    rule that ends it earlier (:mod:`nextrap.predictors.next_fit`); ``patience = 0`` disables early
    stopping whatever the rule. ``frame`` is the width of each vector's frame (0: the networks see the
    full-length vectors), used for vectors of ``frame_min_dim`` entries or more; on a frame the
    networks' ReLU layer is ``inner`` units wide (on full-length vectors it is as wide as the vectors,
    as in the paper). ``residual`` adds the latest move to the networks' output as a skip connection
    (:class:`~nextrap.predictors.next.NExtNet`). ``threads`` (0: torch's setting) and ``precision`` only
    change speed.
    """

    preset: str = "auto"
    frame: int = 16
    frame_min_dim: int = 2048
    lr: float = 1e-3
    lr_dim_scale: float = 0.0
    epochs: int = 1000
    loss: str = "l1"
    hidden: int = 256
    inner: int = 64
    weight_decay: float = 0.01
    min_lr_ratio: float = 0.1
    normalize: bool = True
    residual: bool = True
    stop: str = "holdout"
    patience: int = 30
    min_improvement: float = 1e-3
    refit: bool = False
    threads: int = 0
    precision: str = "float32"
    seed: int = 0

    def __post_init__(self) -> None:
        check_types(self)
        checks = [
            (self.preset in PRESET_NAMES, "preset", f"one of {list(PRESET_NAMES)}"),
            (self.frame >= 0, "frame", ">= 0 (0: the networks see the full-length vectors)"),
            (self.frame_min_dim >= 2, "frame_min_dim", ">= 2"),
            (self.lr > 0 and math.isfinite(self.lr), "lr", "a positive number"),
            (self.lr_dim_scale >= 0, "lr_dim_scale", ">= 0 (0: the same lr for every vector length)"),
            (self.epochs >= 1, "epochs", "at least 1"),
            (self.loss in ("l1", "l2"), "loss", "'l1' or 'l2'"),
            (self.hidden >= 1, "hidden", "at least 1"),
            (self.inner >= 1, "inner", "at least 1"),
            (self.weight_decay >= 0, "weight_decay", ">= 0"),
            (0 < self.min_lr_ratio <= 1, "min_lr_ratio", "in (0, 1]"),
            (self.stop in STOP_RULES, "stop", f"one of {list(STOP_RULES)}"),
            (self.patience >= 0, "patience", ">= 0 (0 disables early stopping)"),
            (self.min_improvement >= 0, "min_improvement", ">= 0"),
            (self.threads >= 0, "threads", ">= 0 (0: torch's setting)"),
            (self.precision in PRECISIONS, "precision", f"one of {list(PRECISIONS)}"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ConfigError(f"NExt option {name} = {getattr(self, name)!r}: expected {expected}")

    @classmethod
    def from_preset(cls, preset: str = "auto", **overrides: Any) -> NExtConfig:
        """The preset's values with ``overrides`` (``None`` values are ignored) on top."""
        if preset not in PRESETS:
            raise ConfigError(f"NExt preset {preset!r}: expected one of {sorted(PRESETS)}")
        return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})

    def group_lr(self, dim: int) -> float:
        """The learning rate for vectors of length ``dim``: ``lr``, capped at ``lr_dim_scale / dim``.

        With Adam every weight moves by about the learning rate per step, and a layer's output by about
        ``dim`` times that, so the largest stable rate falls as ``1 / dim``. Measured on unit-RMS
        features (SmolLM2 shapes): stable at (d, lr) = (576, 3e-3) and (1536, 1e-3), stuck at
        (192, 1e-2) and (1536, 3e-3), i.e. stable while ``d * lr`` stays below about 1.7.
        """
        return min(self.lr, self.lr_dim_scale / dim) if self.lr_dim_scale > 0 else self.lr

    def fit_settings(self, dim: int = 1) -> FitSettings:
        """How one group's network of vectors of length ``dim`` is trained (the learning rate may scale with it)."""
        return FitSettings(
            lr=self.group_lr(dim),
            epochs=self.epochs,
            min_lr_ratio=self.min_lr_ratio,
            weight_decay=self.weight_decay,
            loss=self.loss,
            stop=self.stop,
            patience=self.patience,
            min_improvement=self.min_improvement,
            refit=self.refit,
            precision=self.precision,
        )


PRESETS: dict[str, NExtConfig] = {
    # The default: skip connection, held-out-pair stopping, unit-RMS groups, lr 1e-3, frames from 2048 entries.
    "auto": NExtConfig(),
    # Frames from 512 entries: faster on mid-sized models, a little less accurate there.
    "frames": NExtConfig(preset="frames", frame_min_dim=512),
    "reference": NExtConfig(
        preset="reference",
        frame=0,
        lr=2e-5,
        lr_dim_scale=0.0,
        epochs=1000,
        normalize=False,
        residual=False,
        stop="fixed",
        patience=0,
        refit=False,
    ),
}


def preset_values(name: str) -> str:
    """``auto, frames: 1e-3; reference: 2e-5``: a field's value in each preset, for ``--help`` (never retyped)."""
    by_value: dict[str, list[str]] = {}
    for preset, config in PRESETS.items():
        value = getattr(config, name)
        if isinstance(value, bool):
            text = "on" if value else "off"
        else:
            text = format(value, "g") if isinstance(value, float) else str(value)
        by_value.setdefault(text, []).append(preset)
    return "; ".join(f"{', '.join(presets)}: {value}" for value, presets in by_value.items())


def _fit(flag: str, help: str, name: str, **kw: Any) -> dict[str, Any]:
    return cli(flag, f"{help} [{preset_values(name)}].", group="NExt fit", **kw)


@dataclass(frozen=True)
class FitOptions:
    """The NExt fit as the command line sets it: a preset, and the fields given on top of it (None: the
    preset's). :meth:`to_config` makes the :class:`NExtConfig`."""

    preset: str = field(
        default="auto",
        metadata=cli(
            "--preset",
            "Predictor settings: 'auto' learns corrections to 'the next move repeats the latest one' and stops "
            "when the most recent pair, held out, stops improving, fitting long vectors on their history's "
            "leading directions (their frame); 'frames' frames shorter vectors too (faster on mid-sized "
            "models, a little less accurate); 'reference' is the paper's schedule.",
            choices=PRESET_NAMES,
            group="NExt fit",
        ),
    )
    epochs: int | None = field(
        default=None,
        metadata=_fit(
            "--epochs",
            "Most predictor epochs per group (the exact count with --preset reference)",
            "epochs",
            type=int,
            min=1,
        ),
    )
    lr: float | None = field(
        default=None, metadata=_fit("--lr", "Predictor learning rate", "lr", type=float, min=0, min_open=True)
    )
    loss: str | None = field(
        default=None, metadata=_fit("--loss", "Predictor loss", "loss", choices=("l1", "l2"))
    )
    patience: int | None = field(
        default=None,
        metadata=_fit(
            "--patience",
            "Stop after this many epochs without a 0.1% improvement of the held-out pair's loss; 0 never stops early",
            "patience",
            type=int,
            min=0,
        ),
    )
    frame: int | None = field(
        default=None,
        metadata=_fit(
            "--frame",
            "Width of the frame (the leading directions of a vector's own history) on which long vectors are "
            "fitted; 0: every vector at full length",
            "frame",
            type=int,
            min=0,
        ),
    )
    residual: bool | None = field(
        default=None,
        metadata=_fit(
            "--residual/--no-residual",
            "Add the latest move to the networks' output as a skip connection, so that they learn corrections "
            "to 'the next move repeats the latest one' (a nextrap addition)",
            "residual",
        ),
    )
    seed: int | None = field(
        default=None,
        metadata=_fit(
            "--seed", "Seed of the predictor's initialization", "seed", type=int, min=0, max=2**63 - 1
        ),
    )

    def to_config(self) -> NExtConfig:
        """The preset with the options given on top."""
        overrides = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "preset"}
        return NExtConfig.from_preset(self.preset, **overrides)


@dataclass(frozen=True)
class RelexConfig:
    """RELEX's options: ``rank`` temporal components (paper: 1), line ``window`` in checkpoints (None: all)."""

    rank: int = field(
        default=1,
        metadata=cli(
            "--relex-rank",
            "RELEX: temporal components kept (the paper uses 1).",
            type=int,
            group="What to compute",
        ),
    )
    window: int | None = field(
        default=None,
        metadata=cli(
            "--relex-window",
            "RELEX: fit the lines to the last N checkpoints [default: all observed].",
            type=int,
            group="What to compute",
        ),
    )

    def __post_init__(self) -> None:
        check_types(self)
        check_relex_options(self.rank, self.window, "denoised")


def check_relex_options(rank: int, window: int | None, mode: str) -> None:
    """One-line errors for RELEX options that cannot work."""
    if rank < 1:
        raise ConfigError(
            f"--relex-rank {rank}: RELEX keeps at least 1 temporal component; use 1 (the paper's)"
        )
    if window is not None and window < 2:
        raise ConfigError(
            f"--relex-window {window}: a line needs at least 2 checkpoints; give 2 or more (default: all)"
        )
    if mode not in RELEX_MODES:
        raise ConfigError(f"RELEX mode {mode!r}: expected one of {list(RELEX_MODES)}")
