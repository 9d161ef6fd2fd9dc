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

import itertools
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from nextrap import lowrank
from nextrap.errors import ConfigError, LayoutError
from nextrap.predictors import METHODS, NExtConfig, Prediction, RelexConfig, make_predictor
from nextrap.progress import Progress, no_progress
from nextrap.runs import DEFAULT_HORIZON, MIN_PAIRS, resolve_horizon
from nextrap.trajectory import DEFAULT_CHUNK_BYTES, SharedFeatures, Trajectory

__all__ = ["BacktestOptions", "BacktestResult", "backtest", "fit_prefix_length", "score_prediction"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BacktestOptions:
    """``holdout``: checkpoints held out at the end (None: one horizon's worth, so c reaches 1).

    ``observe_until``: instead, fit on the checkpoints up to this step and score every later one to the
    end of the run (RELEX's protocol: observe 75 steps, predict up to step 500).
    """

    holdout: int | None = None
    methods: tuple[str, ...] = METHODS
    horizon: int | None = None
    predictor: NExtConfig = field(default_factory=NExtConfig)
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    relex: RelexConfig = field(default_factory=RelexConfig)
    observe_until: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"methods {list(self.methods)}: expected some of {list(METHODS)}")
        if self.holdout is not None and self.holdout < 1:
            raise ConfigError(f"holdout = {self.holdout}: hold out at least 1 checkpoint")
        if self.holdout is not None and self.observe_until is not None:
            raise ConfigError("give either --holdout or --observe-until, not both")


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
            f"{'method':<14} {'step':>6} {'coef':>6} {'rel. error':>10} {'cosine':>7} {'best coef':>9} "
            f"{'top share':>9} {'top error':>9} {'rest error':>10}",
        ]
        for method, rows in self.summary().items():
            for r in rows:
                lines.append(
                    f"{method:<14} {r['step']:>6} {r['coef']:>6.2f} {r['relative_error']:>10.3f} "
                    f"{r['cosine']:>7.3f} {r['best_coef']:>9.2f} {r['top_share']:>9.3f} {r['top_error']:>9.3f} "
                    f"{r['rest_error']:>10.3f}"
                )
        lines.append(f"{'stay':<14} {'':>6} {'':>6} {1.0:>10.3f} {'':>7} {'':>9} {'':>9} {1.0:>9.3f} {1.0:>10.3f}")
        lines += [
            "top share: the true move's energy in its top singular direction (per module); top / rest error: the "
            "error on that part and on the rest, each relative to the part's own size (staying scores 1 on both)"
        ]
        kinds = sorted({s["kind"] for s in self.scores} - {"all"})
        lines += ["", "mean relative error by module kind (1 = as good as staying)"]
        lines.append(f"{'method':<14} " + " ".join(f"{k[:9]:>9}" for k in kinds))
        for method in dict.fromkeys(s["method"] for s in self.scores):
            means = []
            for k in kinds:
                vals = [s["relative_error"] for s in self.scores if s["method"] == method and s["kind"] == k]
                means.append(sum(vals) / len(vals))
            lines.append(f"{method:<14} " + " ".join(f"{m:>9.3f}" for m in means))
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


_INNER_KEYS = ("oo", "od", "dd", "ot", "dt", "tt")  # <X, Y> for X, Y in offset O, direction D, truth T
# The split along each module's true top direction E = u1 v1^T (docs/method.md, "The parts of the move"):
# products of a = <O, E>, b = <D, E> and s = sigma_1 = <T, E>, per module, summed like the others.
_TOP_KEYS = ("aa", "ab", "bb", "as", "bs", "ss")


def score_prediction(
    trajectory: Trajectory,
    prediction: Prediction,
    base: int,
    targets: Sequence[int],
    coefs: Sequence[float],
    device: torch.device,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> list[dict[str, Any]]:
    """Scores of ``dW_base + O + c_j D`` against ``dW_j`` for each checkpoint index ``j`` in ``targets``.

    ``O`` is the prediction's offset (zero for most methods), ``D`` its direction per horizon. The
    prediction must have been fitted on the checkpoints up to ``base``. Returns one row per target
    and module kind (plus ``all``): ``relative_error``, ``cosine`` (of the predicted move with the true
    one), ``best_coef`` (the ``c`` minimising the error), and the norms. Everything is computed from
    factors, in float64.
    """
    fit = trajectory.prefix(base + 1)
    idx = [base, *targets]
    # The six inner products are summed per (target, kind) and over all kinds; the scores follow from
    # the sums, so a kind's error is that of its modules taken together.
    sums: dict[tuple[int, str], dict[str, float]] = {}
    products = itertools.chain(
        _lora_inner_products(trajectory, prediction, fit, idx, targets, device, chunk_bytes),
        _raw_inner_products(trajectory, prediction, idx, targets, device),
    )
    for j, kind, values in products:
        for k in (kind, "all"):
            acc = sums.setdefault((j, k), dict.fromkeys(_INNER_KEYS + _TOP_KEYS, 0.0))
            for key, value in values.items():
                acc[key] += value
    rows = [
        _score_row(trajectory.steps[j], coefs[targets.index(j)], kind, s) for (j, kind), s in sums.items()
    ]
    rows.sort(key=lambda r: (r["step"], r["kind"] != "all", r["kind"]))
    return rows


def _lora_inner_products(
    trajectory: Trajectory,
    prediction: Prediction,
    fit: Trajectory,
    idx: Sequence[int],
    targets: Sequence[int],
    device: torch.device,
    chunk_bytes: int,
) -> Iterator[tuple[int, str, dict[str, float]]]:
    """``(target, module kind, inner products)`` for every LoRA module and target, from the factors
    (``idx`` = base, then the targets), a chunk of modules at a time."""
    inner = lowrank.frobenius_inner
    for names in trajectory.module_chunks(len(idx), chunk_bytes):
        B, A = trajectory.load_factors(names, device, idx)
        B, A = B.double(), A.double()
        Ld, Rd = (x.double() for x in prediction.factors(fit, names, device, 0.0, 1.0))
        Lo, Ro = (x.double() for x in prediction.factors(fit, names, device, 1.0, 0.0))
        oo, od, dd = inner(Lo, Ro, Lo, Ro), inner(Lo, Ro, Ld, Rd), inner(Ld, Rd, Ld, Rd)
        for n, j in enumerate(targets, start=1):
            Lt, Rt = lowrank.difference(B[:, n], A[:, n], 1.0, B[:, 0], A[:, 0], 1.0)  # dW_j - dW_base
            ot, dt, tt = inner(Lo, Ro, Lt, Rt), inner(Ld, Rd, Lt, Rt), inner(Lt, Rt, Lt, Rt)
            top = lowrank.top_triplet(Lt, Rt)
            a, b = _along(Lo, Ro, top), _along(Ld, Rd, top)
            s = top.s
            for m, name in enumerate(names):
                values = {"oo": oo[m], "od": od[m], "dd": dd[m], "ot": ot[m], "dt": dt[m], "tt": tt[m]}
                values |= {
                    "aa": a[m] * a[m], "ab": a[m] * b[m], "bb": b[m] * b[m],
                    "as": a[m] * s[m], "bs": b[m] * s[m], "ss": s[m] * s[m],
                }
                yield j, _kind(name), {k: float(v) for k, v in values.items()}


def _along(L: torch.Tensor, R: torch.Tensor, top: lowrank.Triplets) -> torch.Tensor:
    """``<L R, u v^T>_F = u^T L R v`` per module: the coordinate of ``L R`` along the unit matrix ``u v^T``."""
    return ((top.u.unsqueeze(-2) @ L).squeeze(-2) * (R @ top.v.unsqueeze(-1)).squeeze(-1)).sum(-1)


def _raw_inner_products(
    trajectory: Trajectory,
    prediction: Prediction,
    idx: Sequence[int],
    targets: Sequence[int],
    device: torch.device,
) -> Iterator[tuple[int, str, dict[str, float]]]:
    """``(target, "other", inner products)`` for every tensor stored as it is (not as LoRA factors)."""
    for key in trajectory.raw:
        X = trajectory.load_raw(key, device, idx).double()
        flat = X[0].reshape(-1)
        D = prediction.raw_move(key, 1.0, device)
        off = prediction.raw_move(key, 0.0, device)
        D = torch.zeros_like(flat) if D is None else D.double().reshape(-1)
        off = torch.zeros_like(flat) if off is None else off.double().reshape(-1)
        D = D - off  # raw_move(1) = offset + direction
        for n, j in enumerate(targets, start=1):
            T = (X[n] - X[0]).reshape(-1)
            yield j, "other", {
                "oo": float(off @ off),
                "od": float(off @ D),
                "dd": float(D @ D),
                "ot": float(off @ T),
                "dt": float(D @ T),
                "tt": float(T @ T),
            }


def _score_row(step: int, c: float, kind: str, s: dict[str, float]) -> dict[str, Any]:
    """The scores of ``P = O + c D`` against ``T`` from their summed inner products ``s``.

    The parts: ``T``'s top part is ``sigma_1 E`` per module (``E = u1 v1^T``, ``T``'s own top singular
    direction), its rest ``T - sigma_1 E``; ``P`` is split the same way, by its coordinate
    ``p = <P, E>`` along that direction. The two parts are orthogonal, so ``error^2`` is the sum of the
    parts' squared errors: ``relative_error^2 = top_share * top_error^2 + (1 - top_share) * rest_error^2``.
    """
    pp = s["oo"] + 2 * c * s["od"] + c * c * s["dd"]  # ||O + c D||^2
    pt = s["ot"] + c * s["dt"]  # <O + c D, T>
    err2 = max(0.0, pp - 2 * pt + s["tt"])
    p1p1 = s["aa"] + 2 * c * s["ab"] + c * c * s["bb"]  # sum over modules of p^2
    p1t1 = s["as"] + c * s["bs"]  # sum of p sigma_1
    top2, rest2 = s["ss"], max(0.0, s["tt"] - s["ss"])
    top_err2 = max(0.0, p1p1 - 2 * p1t1 + top2)
    rest_err2 = max(0.0, err2 - top_err2)
    return {
        "step": step,
        "coef": c,
        "kind": kind,
        "relative_error": math.sqrt(err2 / s["tt"]) if s["tt"] > 0 else 0.0,
        "cosine": pt / math.sqrt(pp * s["tt"]) if pp > 0 and s["tt"] > 0 else 0.0,
        "best_coef": (s["dt"] - s["od"]) / s["dd"] if s["dd"] > 0 else 0.0,
        "true_norm": math.sqrt(s["tt"]),
        "predicted_norm": math.sqrt(max(pp, 0.0)),
        "top_share": top2 / s["tt"] if s["tt"] > 0 else 0.0,
        "top_error": math.sqrt(top_err2 / top2) if top2 > 0 else 0.0,
        "rest_error": math.sqrt(rest_err2 / rest2) if rest2 > 0 else 0.0,
        "top_cosine": _cos(p1t1, p1p1, top2),
        "rest_cosine": _cos(pt - p1t1, pp - p1p1, rest2),
    }


def _cos(inner: float, sq_a: float, sq_b: float) -> float:
    return inner / math.sqrt(sq_a * sq_b) if sq_a > 0 and sq_b > 0 else 0.0


def backtest(
    trajectory: Trajectory,
    options: BacktestOptions | None = None,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> BacktestResult:
    """Hold out the last checkpoints, fit every method on the rest, and score the predictions."""
    options = options or BacktestOptions()
    device = device or torch.device("cpu")
    prefix = fit_prefix_length(trajectory, options)
    K = len(trajectory.headers)
    fit = trajectory.prefix(prefix)
    horizon, note = resolve_horizon(prefix, options.horizon)
    notes = [note] if note else []
    horizon_steps = fit.steps[-1] - fit.steps[-1 - horizon]
    targets = list(range(prefix, K))
    coefs = [(trajectory.steps[j] - fit.steps[-1]) / horizon_steps for j in targets]

    span = fit.steps[-1] - fit.steps[0]
    far = max(trajectory.steps[-1] - fit.steps[-1], 0) / span if span > 0 else 0.0
    if far > 1:
        notes.append(
            f"the last held-out checkpoint lies {far:.1f}x the observed span beyond the fit (far extrapolation)"
        )
    scores, fits = _score_methods(trajectory, fit, horizon, targets, coefs, options, device, progress)
    rec = _recommend(scores, options.methods)
    if "relex" in options.methods:
        notes.append(
            "relex (denoised) predicts a smoothed point, not the next noisy checkpoint: its weight-space error "
            "includes the held-out checkpoint's own noise, so a denoised prediction can score worse here and still "
            "be the better model; judge it by accuracy (evaluate the adapter) before discarding it"
        )
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


def fit_prefix_length(trajectory: Trajectory, options: BacktestOptions) -> int:
    """How many checkpoints the methods are fitted on (the rest are held out); at least 3."""
    K = len(trajectory.headers)
    if options.observe_until is not None:
        prefix = sum(1 for t in trajectory.steps if t <= options.observe_until)
        if prefix >= K:
            raise LayoutError(
                f"--observe-until {options.observe_until}: no checkpoint after it (the last is step "
                f"{trajectory.steps[-1]}); give an earlier step"
            )
        holdout = K - prefix
    else:
        holdout = options.holdout if options.holdout is not None else (options.horizon or _default_holdout(K))
        prefix = K - holdout
    if prefix < 3:
        raise LayoutError(
            f"holding out {holdout} of {K} checkpoints leaves {prefix} to fit on; at least 3 are needed: "
            f"lower --holdout or save more checkpoints"
        )
    return prefix


def _score_methods(
    trajectory: Trajectory,
    fit: Trajectory,
    horizon: int,
    targets: list[int],
    coefs: list[float],
    options: BacktestOptions,
    device: torch.device,
    progress: Progress,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Fit each method on ``fit`` and score it on ``targets``: the score rows (with their method) and
    the NExt fits' diagnostics per method."""
    prefix = len(fit.steps)
    features = SharedFeatures(fit, horizon, device, options.chunk_bytes, progress)  # computed once, if asked
    scores, fits = [], {}
    for method in progress(list(options.methods), "backtest methods"):
        predictor = make_predictor(method, options.predictor, options.chunk_bytes, options.relex)
        pred = predictor.predict(fit, horizon, features, device, progress)
        if "groups" in pred.diagnostics:
            fits[method] = pred.diagnostics["groups"]
        for row in score_prediction(
            trajectory, pred, prefix - 1, targets, coefs, device, options.chunk_bytes
        ):
            scores.append({"method": method, **row})
    return scores, fits


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
