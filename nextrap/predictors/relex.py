"""RELEX: rank-k over time, a straight line per temporal coefficient (docs/method.md, "Baselines").

Per parameter, the observed updates ``dW_t`` (t over the run's checkpoints) are the rows of a
``T x d`` matrix ``M``. Its top-k SVD comes from the ``T x T`` Gram matrix ``G = M M^T``: with
``G = U S^2 U^T``, the temporal coefficients are ``C = U_k S_k`` (``T x k``) and the directions
``V_k = M^T U_k / S_k``. A least-squares line ``c_k(t) = a_k + b_k t`` through each coefficient (over
the last ``window`` checkpoints) predicts the update at step ``t*``:

* denoised (as published): ``dW(t*) = sum_k c_k(t*) V_k``, a reconstruction that is not anchored at
  the last checkpoint (the authors credit their gain to this denoising);
* anchored: ``dW(t*) = dW_K + sum_k b_k (t* - t_K) V_k``.

Both are weighted sums of the observed updates, ``sum_t w_t dW_t`` with
``w = U_k S_k^-1 c(t*)``, so for LoRA everything is exact from the factors: the Gram entries are
``<dW_i, dW_j> = sum((B_i^T B_j) * (A_i A_j^T))`` (scalings folded into B), ``O(T^2 r^2 (out + in))``
per module, and no ``out x in`` matrix is ever built. The prediction is returned as those weights
(:attr:`Prediction.combinations`), refactored to the run's rank when it is written.

Raw tensors (DoRA magnitudes, biases, ``modules_to_save``) get the same temporal SVD on their
flattened deltas from the first checkpoint (their starting value is unknown).

Differences from the reference script, all deliberate: time is the checkpoint's step (the script
uses the checkpoint's position, the same for evenly spaced checkpoints), and the window is counted in
checkpoints. As in the script, the SVD uses every observed checkpoint and the window only limits the
line fit.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from nextrap.linalg import lowrank
from nextrap.linalg.combinations import StackedUpdates
from nextrap.predictors.base import Prediction
from nextrap.predictors.config import check_relex_options
from nextrap.run.trajectory import DEFAULT_CHUNK_BYTES, Features, SharedFeatures, Trajectory
from nextrap.util.progress import Progress, no_progress

if TYPE_CHECKING:
    from nextrap.predictors.registry import MethodSettings

__all__ = ["RelexPredictor", "TemporalFit", "line_fit", "lora_gram", "temporal_fit"]

# Components whose singular value is below this fraction of the top one carry no signal (the
# reference script uses the same cut-off); their direction would divide by ~0.
_SV_CUTOFF = 1e-6


def line_fit(t: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares lines through ``(t, a[..., k])``: ``(intercept, slope, r2)``, each ``a.shape[:-1]``.

    ``t (K,)``; ``a (..., K)``. R^2 is 1 for a flat series (a line explains it fully).
    """
    t = t.to(a.device, a.dtype)
    tc = t - t.mean()
    ac = a - a.mean(-1, keepdim=True)
    denom = tc.square().sum()
    slope = (ac * tc).sum(-1) / denom if denom > 0 else torch.zeros(a.shape[:-1], dtype=a.dtype)
    intercept = a.mean(-1) - slope * t.mean()
    resid = a - (intercept[..., None] + slope[..., None] * t)
    total = ac.square().sum(-1)
    r2 = torch.where(total > 0, 1 - resid.square().sum(-1) / total.clamp_min(1e-30), torch.ones_like(total))
    return intercept, slope, r2


def lora_gram(B: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``G[m, i, j] = <dW_i, dW_j>_F`` of ``dW_t = B[m, t] @ A[m, t]``, exact, float64 ``(M, T, T)``.

    ``B (M, T, out, r)`` (scaling folded in), ``A (M, T, r, in)``: two ``(T r) x (T r)`` products of the
    stacked factors, then the block-wise Hadamard sum (:func:`nextrap.linalg.lowrank.update_gram`).
    """
    return lowrank.update_gram(B, A)


@dataclass(frozen=True)
class TemporalFit:
    """RELEX on a batch of Gram matrices: weights over the observed updates, and the fit's figures.

    ``offset (M, T)`` and ``direction (M, T)`` (float64): the move from the last row is
    ``sum_t (offset_t + c direction_t) x_t``; ``explained (M,)``: the share of ``trace(G)`` in the
    kept components; ``coefficients (M, T, k)``: ``C = U_k S_k``; ``line_r2 (M, k)``.
    """

    offset: torch.Tensor
    direction: torch.Tensor
    explained: torch.Tensor
    coefficients: torch.Tensor
    line_r2: torch.Tensor


def temporal_fit(
    G: torch.Tensor,
    times: torch.Tensor,
    rank: int,
    window: int | None,
    horizon_steps: float,
    anchored: bool,
) -> TemporalFit:
    """Fit RELEX from the Gram matrices ``G (M, T, T)`` of rows observed at ``times (T,)``.

    The last row is the checkpoint the move starts from; ``horizon_steps`` is the step length of one
    unit of the coefficient c.
    """
    T = G.shape[-1]
    k = min(rank, T)
    lam, U = torch.linalg.eigh(G.double())  # ascending
    lam, U = lam.flip(-1).clamp_min(0), U.flip(-1)
    total = lam.sum(-1)
    explained = torch.where(total > 0, lam[..., :k].sum(-1) / total.clamp_min(1e-300), torch.zeros_like(total))
    S = lam[..., :k].sqrt()  # (M, k)
    keep = _SV_CUTOFF * S[..., :1] < S
    inv_s = torch.where(keep, 1 / S.clamp_min(1e-300), torch.zeros_like(S))
    Uk = U[..., :k]  # (M, T, k)
    C = Uk * S.unsqueeze(-2)  # (M, T, k)
    times = times.to(G.device, torch.float64)
    w = T if window is None else min(window, T)
    intercept, slope, r2 = line_fit(times[-w:], C[..., -w:, :].transpose(-1, -2))  # (M, k) each
    proj = Uk * inv_s.unsqueeze(-2)  # (M, T, k): c -> weights over rows
    direction = (proj @ (slope * horizon_steps).unsqueeze(-1)).squeeze(-1)
    if anchored:
        offset = torch.zeros_like(direction)
    else:
        fitted_last = intercept + slope * times[-1]  # the line at the last checkpoint
        offset = (proj @ fitted_last.unsqueeze(-1)).squeeze(-1)
        offset[..., -1] -= 1.0  # relative to the last checkpoint's own update
    return TemporalFit(offset=offset, direction=direction, explained=explained, coefficients=C, line_r2=r2)


@dataclass(frozen=True)
class RelexPredictor:
    """RELEX with ``rank`` temporal components, the line fitted on the last ``window`` checkpoints.

    ``mode``: ``denoised`` (as published) or ``anchored`` at the last checkpoint.
    """

    rank: int = 1
    window: int | None = None
    mode: str = "denoised"
    chunk_bytes: int = DEFAULT_CHUNK_BYTES

    def __post_init__(self) -> None:
        check_relex_options(self.rank, self.window, self.mode)

    @property
    def name(self) -> str:
        """``relex`` (denoised, as published) or ``relex-anchored`` (the line started from the last checkpoint)."""
        return "relex" if self.mode == "denoised" else "relex-anchored"

    def predict(
        self,
        trajectory: Trajectory,
        horizon: int,
        features: SharedFeatures | Features | None = None,
        device: torch.device | None = None,
        progress: Progress = no_progress,
    ) -> Prediction:
        """Fit the temporal components and their lines on ``trajectory``; the prediction combines its own updates."""
        device = device or torch.device("cpu")
        fit = _Fit(self, trajectory, horizon)
        chunks = trajectory.module_chunks(len(trajectory.headers), self.chunk_bytes)
        for _, (names, B, A) in zip(progress(chunks, self.name), trajectory.iter_factors(chunks, device), strict=True):
            fit.add(names, lora_gram(B, A))
        return fit.prediction(device)

    def deferred(self, trajectory: Trajectory, horizon: int, device: torch.device | None = None) -> Prediction:
        """:meth:`predict` with the LoRA modules' fit left to the writer (:attr:`Prediction.deferred`): it fits
        each chunk from the Gram products it takes for the refactoring anyway, so the run is read once less."""
        fit = _Fit(self, trajectory, horizon)
        every = list(range(len(trajectory.headers)))

        def fill(names: Sequence[str], stack: StackedUpdates, rows: Sequence[int]) -> None:
            if list(rows) != every:
                raise ValueError(f"RELEX fits on every checkpoint of the run, in order; got the checkpoints {list(rows)}")
            fit.add(names, stack.update_gram(), prediction)  # fills the prediction returned below

        prediction = replace(fit.prediction(device or torch.device("cpu")), deferred=fill)
        return prediction


class _Fit:
    """RELEX's fit of one run, module by module as their Gram matrices arrive, and the prediction it makes."""

    def __init__(self, method: RelexPredictor, trajectory: Trajectory, horizon: int) -> None:
        self.method, self.trajectory, self.horizon = method, trajectory, horizon
        self.anchored = method.mode == "anchored"
        self.h_steps = float(trajectory.steps[-1] - trajectory.steps[-1 - horizon])
        self.times = torch.tensor(trajectory.steps, dtype=torch.float64)
        self.combos: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.explained: dict[str, float] = {}
        self.r2: dict[str, float] = {}

    def add(self, names: Sequence[str], G: torch.Tensor, prediction: Prediction | None = None) -> None:
        """Fit the modules ``names`` from their Gram matrices of updates ``G (M, K, K)``; with ``prediction``,
        record the fit in it (a deferred prediction, filled as the writer goes)."""
        m = self.method
        fit = temporal_fit(G, self.times, m.rank, m.window, self.h_steps, self.anchored)
        for j, name in enumerate(names):
            self.combos[name] = (fit.offset[j].cpu(), fit.direction[j].cpu())
            self.explained[name] = float(fit.explained[j])
            self.r2[name] = float(fit.line_r2[j, 0])
        if prediction is not None:
            prediction.combinations.update({n: self.combos[n] for n in names})
            prediction.diagnostics.update(self._summary())

    def _summary(self) -> dict:
        return {
            "median_explained_variance": statistics.median(self.explained.values()) if self.explained else None,
            "explained_variance": self.explained,
            "median_line_r2": statistics.median(self.r2.values()) if self.r2 else None,
        }

    def prediction(self, device: torch.device) -> Prediction:
        """The prediction of the modules fitted so far, with the raw tensors' (fitted here, on ``device``)."""
        m, trajectory, K = self.method, self.trajectory, len(self.trajectory.headers)
        vectors: dict[str, torch.Tensor] = {}
        offsets: dict[str, torch.Tensor] = {}
        for key in trajectory.raw:
            X = trajectory.load_raw(key, device).double()
            if bool((X[:1] == X).all()) or K < 2:
                continue
            rows = (X[1:] - X[:1]).reshape(K - 1, -1)  # deltas from the first checkpoint
            fit = temporal_fit((rows @ rows.T)[None], self.times[1:], m.rank, m.window, self.h_steps, self.anchored)
            shape = X.shape[1:]
            vectors[key] = (fit.direction[0] @ rows).float().reshape(shape).cpu()
            if not self.anchored:
                offsets[key] = (fit.offset[0] @ rows).float().reshape(shape).cpu()
            self.explained[key] = float(fit.explained[0])
        window = K if m.window is None else min(m.window, K)
        diagnostics = {
            "rank": m.rank,
            "mode": m.mode,
            "window_checkpoints": window,
            "window_steps": [trajectory.steps[K - window], trajectory.steps[-1]],
            **self._summary(),
        }
        return Prediction(
            m.name,
            self.horizon,
            {},
            vectors,
            diagnostics,
            combinations=dict(self.combos),
            indices=tuple(range(K)),
            offsets=offsets,
        )


def build(name: str, settings: MethodSettings) -> RelexPredictor:
    """The registry's builder: ``relex`` denoised as published, ``relex-anchored`` from the last checkpoint."""
    return RelexPredictor(
        rank=settings.relex.rank,
        window=settings.relex.window,
        mode="denoised" if name == "relex" else "anchored",
        chunk_bytes=settings.chunk_bytes or DEFAULT_CHUNK_BYTES,
    )
