"""Backtesting: fit each method on a run's prefix and score it on the checkpoints held out after it.

For a held-out checkpoint j at step t_j, past the prefix's last checkpoint p, a method's prediction
with coefficient ``c_j = (t_j - t_p) / H`` (H: the steps of one horizon) is compared with the truth,
per module and in factored form (no ``out x in`` matrix is built):

* relative error: ``||c_j D - (dW_j - dW_p)||_F / ||dW_j - dW_p||_F``; staying at p scores 1;
* cosine between ``D`` and the true update ``dW_j - dW_p``;
* best coefficient: the ``c`` minimising the error, ``<D, dW_j - dW_p> / ||D||^2``, against ``c_j``:
  above ``c_j`` the method under-shoots, below it over-shoots.

Modules are summed by kind (q_proj, ..., and ``all``). The recommendation is the method with the
lowest mean relative error over the held-out checkpoints, and the largest coefficient at which it
still beat staying; when no method beats staying it says so.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from nextrap import lowrank
from nextrap.errors import ConfigError, LayoutError
from nextrap.predictors import METHODS, NExtConfig, Prediction, make_predictor
from nextrap.progress import Progress, no_progress
from nextrap.runs import DEFAULT_HORIZON, MIN_PAIRS, resolve_horizon
from nextrap.trajectory import DEFAULT_CHUNK_BYTES, Trajectory, compute_features

__all__ = ["BacktestOptions", "BacktestResult", "backtest", "score_prediction"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BacktestOptions:
    """``holdout``: checkpoints held out at the end (None: one horizon's worth, so c reaches 1)."""

    holdout: int | None = None
    methods: tuple[str, ...] = METHODS
    horizon: int | None = None
    predictor: NExtConfig = field(default_factory=NExtConfig)
    chunk_bytes: int = DEFAULT_CHUNK_BYTES

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"methods {list(self.methods)}: expected some of {list(METHODS)}")
        if self.holdout is not None and self.holdout < 1:
            raise ConfigError(f"holdout = {self.holdout}: hold out at least 1 checkpoint")


@dataclass
class BacktestResult:
    """Scores per method, held-out checkpoint and module kind, and the recommendation drawn from them."""

    fit_steps: tuple[int, ...]
    heldout_steps: tuple[int, ...]
    horizon: int
    horizon_steps: int
    scores: list[dict[str, Any]]
    recommendation: dict[str, Any]
    notes: list[str]
    # per method that trains networks (NExt): one entry per group (epochs, seconds, why it stopped)
    predictor_fits: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def summary(self, kind: str = "all") -> dict[str, list[dict[str, Any]]]:
        """``{method: [score per held-out checkpoint]}`` for one module kind."""
        out: dict[str, list[dict[str, Any]]] = {}
        for s in self.scores:
            if s["kind"] == kind:
                out.setdefault(s["method"], []).append(s)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items()}

    def table(self) -> str:
        """The scores over all modules, then the mean relative error per module kind."""
        lines = [
            f"fit on steps {self.fit_steps[0]}..{self.fit_steps[-1]} ({len(self.fit_steps)} checkpoints), horizon "
            f"{self.horizon} intervals = {self.horizon_steps} steps; held out: {', '.join(map(str, self.heldout_steps))}",
            "",
            f"{'method':<8} {'step':>6} {'coef':>6} {'rel. error':>10} {'cosine':>7} {'best coef':>9}",
        ]
        for method, rows in self.summary().items():
            for r in rows:
                lines.append(
                    f"{method:<8} {r['step']:>6} {r['coef']:>6.2f} {r['relative_error']:>10.3f} "
                    f"{r['cosine']:>7.3f} {r['best_coef']:>9.2f}"
                )
        lines.append(f"{'stay':<8} {'':>6} {'':>6} {1.0:>10.3f}")
        kinds = sorted({s["kind"] for s in self.scores} - {"all"})
        lines += ["", "mean relative error by module kind (1 = as good as staying)"]
        lines.append(f"{'method':<8} " + " ".join(f"{k[:9]:>9}" for k in kinds))
        for method in dict.fromkeys(s["method"] for s in self.scores):
            means = []
            for k in kinds:
                vals = [s["relative_error"] for s in self.scores if s["method"] == method and s["kind"] == k]
                means.append(sum(vals) / len(vals))
            lines.append(f"{method:<8} " + " ".join(f"{m:>9.3f}" for m in means))
        for method, groups in self.predictor_fits.items():
            lines += ["", f"{method} predictor fit per vector length"]
            lines += [_fit_line(g) for g in groups]
        rec = self.recommendation
        lines += ["", f"recommendation: {rec['text']}"]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fit_line(g: dict[str, Any]) -> str:
    return (
        f"  d={g['dim']:<6} {g['rows']:>6} rows  {g['epochs_run']:>5} epochs  {g['seconds']:>7.2f} s  "
        f"stopped: {g['stop_reason']}"
    )


def _kind(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def score_prediction(
    trajectory: Trajectory,
    prediction: Prediction,
    base: int,
    targets: Sequence[int],
    coefs: Sequence[float],
    device: torch.device,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> list[dict[str, Any]]:
    """Scores of ``dW_base + c_j D`` against ``dW_j`` for each checkpoint index ``j`` in ``targets``.

    Returns one row per target and module kind (plus ``all``): ``relative_error``, ``cosine``,
    ``best_coef``, and the sums they come from. Everything is computed from factors.
    """
    sums: dict[tuple[int, str], dict[str, float]] = {}

    def add(j: int, kind: str, dd: float, dt: float, tt: float) -> None:
        for k in (kind, "all"):
            acc = sums.setdefault((j, k), {"dd": 0.0, "dt": 0.0, "tt": 0.0})
            acc["dd"] += dd
            acc["dt"] += dt
            acc["tt"] += tt

    idx = [base, *targets]
    for names in trajectory.module_chunks(len(idx), chunk_bytes):
        B, A = trajectory.load_factors(names, device, idx)
        # float64: the error is a difference of inner products, which float32 would blur at 1e-4
        Ld, Rd = (x.double() for x in prediction.stacked(names, device))
        B, A = B.double(), A.double()
        dd = lowrank.frobenius_inner(Ld, Rd, Ld, Rd)
        for n, j in enumerate(targets, start=1):
            Lt = torch.cat([B[:, n], -B[:, 0]], -1)  # true update dW_j - dW_base, factored
            Rt = torch.cat([A[:, n], A[:, 0]], -2)
            dt = lowrank.frobenius_inner(Ld, Rd, Lt, Rt)
            tt = lowrank.frobenius_inner(Lt, Rt, Lt, Rt)
            for m, name in enumerate(names):
                add(j, _kind(name), float(dd[m]), float(dt[m]), float(tt[m]))
    for key in trajectory.raw:
        X = trajectory.load_raw(key, device, idx).double()
        if key in prediction.vectors:
            D = prediction.vectors[key].to(device, torch.float64).reshape(-1)
        elif key in prediction.matrices:
            L, R = prediction.matrices[key]
            D = (L.double() @ R.double()).to(device).reshape(-1)
        else:
            D = torch.zeros_like(X[0].reshape(-1))
        for n, j in enumerate(targets, start=1):
            T = (X[n] - X[0]).reshape(-1)
            add(j, "other", float(D @ D), float(D @ T), float(T @ T))

    rows = []
    for (j, kind), s in sums.items():
        c = coefs[targets.index(j)]
        err2 = max(0.0, c * c * s["dd"] - 2 * c * s["dt"] + s["tt"])
        rows.append(
            {
                "step": trajectory.steps[j],
                "coef": c,
                "kind": kind,
                "relative_error": math.sqrt(err2 / s["tt"]) if s["tt"] > 0 else 0.0,
                "cosine": s["dt"] / math.sqrt(s["dd"] * s["tt"]) if s["dd"] > 0 and s["tt"] > 0 else 0.0,
                "best_coef": s["dt"] / s["dd"] if s["dd"] > 0 else 0.0,
                "true_norm": math.sqrt(s["tt"]),
                "predicted_norm": c * math.sqrt(s["dd"]),
            }
        )
    rows.sort(key=lambda r: (r["step"], r["kind"] != "all", r["kind"]))
    return rows


def backtest(
    trajectory: Trajectory,
    options: BacktestOptions | None = None,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> BacktestResult:
    """Hold out the last checkpoints, fit every method on the rest, and score the predictions."""
    options = options or BacktestOptions()
    device = device or torch.device("cpu")
    K = len(trajectory.headers)
    horizon_req = options.horizon
    holdout = options.holdout if options.holdout is not None else (horizon_req or _default_holdout(K))
    prefix = K - holdout
    if prefix < 3:
        raise LayoutError(
            f"holding out {holdout} of {K} checkpoints leaves {prefix} to fit on; at least 3 are needed: "
            f"lower --holdout or save more checkpoints"
        )
    fit = trajectory.prefix(prefix)
    horizon, note = resolve_horizon(prefix, horizon_req)
    notes = [note] if note else []
    horizon_steps = fit.steps[-1] - fit.steps[-1 - horizon]
    targets = list(range(prefix, K))
    coefs = [(trajectory.steps[j] - fit.steps[-1]) / horizon_steps for j in targets]

    features = None
    if any(make_predictor(m, options.predictor).needs_features for m in options.methods):
        features = compute_features(fit, horizon, device, options.chunk_bytes, progress)
    scores, fits = [], {}
    for method in progress(list(options.methods), "backtest methods"):
        predictor = make_predictor(method, options.predictor, options.chunk_bytes)
        pred = predictor.predict(
            fit, horizon, features if predictor.needs_features else None, device, progress
        )
        if "groups" in pred.diagnostics:
            fits[method] = pred.diagnostics["groups"]
        for row in score_prediction(
            trajectory, pred, prefix - 1, targets, coefs, device, options.chunk_bytes
        ):
            scores.append({"method": method, **row})
    rec = _recommend(scores, options.methods)
    return BacktestResult(
        fit_steps=fit.steps,
        heldout_steps=tuple(trajectory.steps[j] for j in targets),
        horizon=horizon,
        horizon_steps=horizon_steps,
        scores=scores,
        recommendation=rec,
        notes=notes,
        predictor_fits=fits,
    )


def _default_holdout(checkpoints: int) -> int:
    """One default horizon's worth of checkpoints, fewer when the run is short (3 left to fit on, at least)."""
    return max(1, min(DEFAULT_HORIZON, checkpoints - (MIN_PAIRS + 1)))


def _recommend(scores: list[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    overall = {m: [s for s in scores if s["method"] == m and s["kind"] == "all"] for m in methods}
    mean_err = {m: sum(s["relative_error"] for s in rows) / len(rows) for m, rows in overall.items()}
    best = min(mean_err, key=mean_err.__getitem__)
    beating = [s["coef"] for s in overall[best] if s["relative_error"] < 1.0]
    coef = max(beating) if beating else None
    ranking = sorted(mean_err, key=mean_err.__getitem__)
    if coef is None:
        text = (
            f"no method beat staying at the last checkpoint on the held-out checkpoints (best: {best}, mean "
            f"relative error {mean_err[best]:.3f}); extrapolating this run is not supported by its own data"
        )
    else:
        text = (
            f"{best} (mean relative error {mean_err[best]:.3f}; ranking {', '.join(ranking)}), coefficient "
            f"up to {coef:.2f}: the furthest held-out jump at which it still beat staying"
        )
    return {
        "method": best,
        "coef": coef,
        "beats_staying": coef is not None,
        "mean_relative_error": mean_err,
        "ranking": ranking,
        "text": text,
    }
