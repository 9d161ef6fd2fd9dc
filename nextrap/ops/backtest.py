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

from nextrap.errors import ConfigError, LayoutError
from nextrap.linalg import lowrank
from nextrap.predictors import METHODS, NExtConfig, Prediction, RelexConfig, make_predictor
from nextrap.run.open import DEFAULT_HORIZON, MIN_PAIRS, resolve_horizon
from nextrap.run.trajectory import DEFAULT_CHUNK_BYTES, SharedFeatures, Trajectory
from nextrap.util.progress import Progress, no_progress
from nextrap.util.validate import check_types

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
        check_types(self)
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
    # the run's files and folders, which a plot of this result may not touch (nextrap.util.inputs)
    inputs: tuple[Any, ...] = field(default=(), repr=False, compare=False)

    def summary(self, kind: str = "all") -> dict[str, list[dict[str, Any]]]:
        """``{method: [score per held-out checkpoint]}`` for one module kind."""
        out: dict[str, list[dict[str, Any]]] = {}
        for s in self.scores:
            if s["kind"] == kind:
                out.setdefault(s["method"], []).append(s)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The scores and recommendation as JSON (what ``nextrap backtest --json`` prints)."""
        return {k: v for k, v in asdict(self).items() if k != "inputs"}

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
    idx = [base, *targets]
    # The six inner products are summed per (target, kind) and over all kinds; the scores follow from
    # the sums, so a kind's error is that of its modules taken together.
    sums: dict[tuple[int, str], dict[str, float]] = {}
    products = itertools.chain(
        _lora_inner_products(trajectory, prediction, idx, targets, device, chunk_bytes),
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
    idx: Sequence[int],
    targets: Sequence[int],
    device: torch.device,
    chunk_bytes: int,
) -> Iterator[tuple[int, str, dict[str, float]]]:
    """``(target, module kind, inner products)`` for every LoRA module and target, from the factors
    (``idx`` = base, then the targets), a chunk of modules at a time.

    Each chunk's factors are read once, at the base, the targets and the checkpoints the prediction
    combines. The true moves ``dW_j - dW_base`` (and a prediction that is the difference of two
    checkpoints, like linear's) are factored from the differences of the factors, which are exact for
    nearby checkpoints, so their products are taken in float32. A prediction that combines more
    checkpoints (RELEX) is a weight vector over them: its products are quadratic forms in the chunk's
    Gram matrix of updates, built once from float64 ``r x r`` block products (its entries cancel).
    NExt's own factors are stacked in float64. All targets of a chunk go through one batched product.
    A module whose move is a combination plus factors (the combined methods) is factored whole.

    For the split of the error into the true move's top singular direction and the rest, each target's
    top triplet ``(u, s, v)`` comes from its factors, and the prediction's parts are projected on
    ``u v^T``: ``a = <offset, u v^T>``, ``b = <direction, u v^T>`` (see :func:`_score_row`).
    """
    uses = sorted(set(idx) | set(prediction.indices if prediction.combinations else ()))
    at = {j: n for n, j in enumerate(uses)}
    base = idx[0]
    rows = [at[j] for j in targets]
    # Size the chunks by the working set, not by the factors read alone: the true moves (2r columns per
    # target) are taken in float64, four times a checkpoint's float32 factors per target.
    working = len(uses) + 4 * len(targets)
    for names, B, A in trajectory.iter_factors(trajectory.module_chunks(working, chunk_bytes), device, uses):
        M, n = len(names), len(targets)
        truth = _differences(B, A, rows, at[base])  # (M, n, out, 2r), (M, n, 2r, in)
        # u (M, n, out), s (M, n), v (M, n, in): from float32 products (the factors are differences, nothing
        # cancels; 2x faster than float64), then float64 like every other product of the scoring.
        top32 = lowrank.top_triplet(*truth)
        top = lowrank.Triplets(u=top32.u.double(), s=top32.s.double(), v=top32.v.double())
        if names[0] in prediction.combinations and names[0] in prediction.matrices:
            moves = {
                part: tuple(
                    x.double()
                    for x in prediction.factors_from(names, B, A, uses, base, device, *scales)
                )
                for part, scales in (("offset", (1.0, 0.0)), ("direction", (0.0, 1.0)))
            }
        else:
            moves = {part: _move(prediction, names, B, A, at, device, part) for part in ("offset", "direction")}
        values: dict[str, torch.Tensor] = {}
        if any(isinstance(m, torch.Tensor) for m in moves.values()):  # weights: everything from the Gram
            moves = {p: _move(prediction, names, B, A, at, device, p, as_weights=True) for p in moves}
            G = lowrank.update_gram(B, A, torch.float64)
            truth_w = torch.zeros(M, n, len(uses), dtype=torch.float64, device=G.device)
            truth_w[:, range(n), rows] = 1.0
            truth_w[:, :, at[base]] -= 1.0
            w = {part: _as_weights(m, M, len(uses), G.device) for part, m in moves.items()}
            o, d = w["offset"], w["direction"]
            values["oo"], values["od"], values["dd"] = _quad(o, G, o), _quad(o, G, d), _quad(d, G, d)
            values["ot"] = torch.einsum("mu,muv,mnv->mn", o, G, truth_w)
            values["dt"] = torch.einsum("mu,muv,mnv->mn", d, G, truth_w)
            values["tt"] = torch.einsum("mnu,muv,mnv->mn", truth_w, G, truth_w)
            along = _along_updates(B, A, top)  # (M, n, U): <dW_u, u v^T> of every checkpoint read
            a, b = (torch.einsum("mu,mnu->mn", w[part], along) for part in ("offset", "direction"))
        else:
            zeros_n = torch.zeros(M, n, dtype=torch.float64, device=B.device)
            values["dd"], values["dt"] = _inner_with(moves["direction"], truth, zeros_n)
            values["oo"], values["ot"] = _inner_with(moves["offset"], truth, zeros_n)
            values["od"] = _inner(moves["offset"], moves["direction"], M, B.device)
            values["tt"] = _inner(truth, truth, M, B.device).reshape(M, n)
            a, b = (_along(moves[part], top) for part in ("offset", "direction"))
        sig = top.s
        values |= {"aa": a * a, "ab": a * b, "bb": b * b, "as": a * sig, "bs": b * sig, "ss": sig * sig}
        cpu = {k: v.double().cpu() for k, v in values.items()}
        for t, j in enumerate(targets):
            for m, name in enumerate(names):
                row = {k: float(cpu[k][m]) for k in ("oo", "od", "dd")}
                row.update({k: float(cpu[k][m, t]) for k in ("ot", "dt", "tt", *_TOP_KEYS)})
                yield j, _kind(name), row


_Factored = tuple[torch.Tensor, torch.Tensor]


def _differences(B: torch.Tensor, A: torch.Tensor, rows: Sequence[int], base: int) -> _Factored:
    """``dW_j - dW_base`` for ``j`` in ``rows``, factored as ``[B_j - B_b, B_b] @ [A_j; A_j - A_b]``."""
    Bj, Aj = B[:, rows], A[:, rows]
    Bb, Ab = B[:, base : base + 1].expand_as(Bj), A[:, base : base + 1].expand_as(Aj)
    return lowrank.difference(Bj, Aj, 1.0, Bb, Ab, 1.0)


def _move(
    prediction: Prediction,
    names: list[str],
    B: torch.Tensor,
    A: torch.Tensor,
    at: dict[int, int],
    device: torch.device,
    part: str,
    as_weights: bool = False,
) -> _Factored | torch.Tensor | None:
    """The prediction's ``offset`` or ``direction`` for ``names``: None if zero; factors ``(M, out, k)``,
    ``(M, k, in)``; or, for a combination of more than two checkpoints, its weights ``(M, U)`` over the
    checkpoints read (``at`` maps a checkpoint index to its row in ``B``, ``A``)."""
    if names[0] not in prediction.combinations:
        if part == "offset" or names[0] not in prediction.matrices:
            return None
        L, R = prediction.stacked(names, device)
        return L.double(), R.double()
    which = 0 if part == "offset" else 1
    w = torch.stack([prediction.combinations[n][which] for n in names]).to(B.device, torch.float64)  # (M, T)
    used = [t for t in range(w.shape[1]) if bool((w[:, t] != 0).any())]
    if not used:
        return None
    rows = [at[prediction.indices[t]] for t in used]
    if not as_weights and len(used) == 2 and bool((w[:, used[0]] == -w[:, used[1]]).all()):
        # x (dW_b - dW_a): the difference of two checkpoints, factored exactly as the true moves are
        L, R = _differences(B, A, [rows[1]], rows[0])
        scale = w[:, used[1]].to(L.dtype).view(-1, 1, 1)
        return L[:, 0] * scale, R[:, 0]
    weights = torch.zeros(len(names), len(at), dtype=torch.float64, device=B.device)
    weights[:, rows] = w[:, used]
    return weights


def _along(move: _Factored | None, top: lowrank.Triplets) -> torch.Tensor:
    """``<L R, u v^T>_F = u^T L R v`` for every module and target: ``(M, n)`` (zeros for no move).

    ``move``: ``L (M, out, k)``, ``R (M, k, in)``; ``top``: ``u (M, n, out)``, ``v (M, n, in)``.
    """
    if move is None:
        return torch.zeros_like(top.s)
    L, R = (x.to(top.u.dtype) for x in move)
    left = top.u @ L  # (M, n, k)
    right = (R @ top.v.transpose(-1, -2)).transpose(-1, -2)  # (M, n, k)
    return (left * right).sum(-1)


def _along_updates(B: torch.Tensor, A: torch.Tensor, top: lowrank.Triplets) -> torch.Tensor:
    """``<B_t A_t, u v^T>_F`` for every module, target and checkpoint read: ``(M, n, T)``, float64."""
    u, v = top.u, top.v  # (M, n, out), (M, n, in)
    Bu = torch.einsum("mno,mtor->mntr", u, B.to(u.dtype))
    Av = torch.einsum("mtri,mni->mntr", A.to(v.dtype), v)
    return (Bu * Av).sum(-1)


def _as_weights(move: _Factored | torch.Tensor | None, M: int, U: int, dev: torch.device) -> torch.Tensor:
    """Weights over the chunk's checkpoints; a zero move is zero weights."""
    if move is None:
        return torch.zeros(M, U, dtype=torch.float64, device=dev)
    assert isinstance(move, torch.Tensor)  # a module's moves are both combinations or both factors
    return move


def _quad(x: torch.Tensor, G: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.einsum("mu,muv,mv->m", x, G, y)


def _promote(x: _Factored, y: _Factored) -> tuple[_Factored, _Factored]:
    dtype = torch.promote_types(x[0].dtype, y[0].dtype)
    return (x[0].to(dtype), x[1].to(dtype)), (y[0].to(dtype), y[1].to(dtype))


def _inner(x: _Factored | None, y: _Factored | None, M: int, dev: torch.device) -> torch.Tensor:
    """``<x, y>_F`` per module (and target, for batched operands); zeros when either is None."""
    if x is None or y is None:
        return torch.zeros(M, dtype=torch.float64, device=dev)
    x, y = _promote(x, y)
    return lowrank.frobenius_inner(*x, *y)


def _inner_with(move: _Factored | None, truth: _Factored, zeros_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(<move, move>, <move, truth_j> for every target j)``, zeros when the move is None."""
    M = zeros_n.shape[0]
    if move is None:
        return torch.zeros(M, dtype=torch.float64, device=zeros_n.device), zeros_n
    batched = (move[0].unsqueeze(1), move[1].unsqueeze(1))
    a, b = _promote(batched, truth)
    return _inner(move, move, M, zeros_n.device), lowrank.frobenius_inner(*a, *b)


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
    """Hold out the last checkpoints, fit every method on the rest, and score the predictions.

    Each held-out checkpoint is scored in factored form: the relative Frobenius error of the predicted
    update (staying at the last fitted checkpoint scores 1), the cosine of the predicted move with the
    true one, the coefficient that would have been best, and the same split into the true move's top
    singular direction and the rest (docs/method.md, "The parts of the move").

    Args:
        trajectory: the run, from :func:`open_run`.
        options: the methods, the held-out checkpoints (``holdout`` or ``observe_until``), the horizon;
            default :class:`BacktestOptions`.
        device: where the math runs (default the CPU).
        progress: a progress wrapper (default silent).

    Returns:
        A :class:`BacktestResult`: ``scores`` (one row per method, held-out checkpoint and module kind)
        and the ``recommendation`` (the method with the lowest mean error and how far it beat staying).
    """
    options = options or BacktestOptions()
    if not isinstance(trajectory, Trajectory) or not isinstance(options, BacktestOptions):
        raise ConfigError(
            f"backtest: expected a Trajectory (nextrap.open_run) and BacktestOptions, got {type(trajectory).__name__} "
            f"and {type(options).__name__}"
        )
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
        inputs=trajectory.discovery.input_paths,
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
