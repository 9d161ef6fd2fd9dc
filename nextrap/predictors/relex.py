"""RELEX: a fixed rank-1 direction and a straight-line coefficient (METHOD.md, "Baselines").

The direction ``u, v`` is the top singular pair of the last update ``dW(t_K)``. Over the observation
window, the run's coefficient along it is ``a_t = u^T dW_t v`` (from factors: ``(u^T B_t)(A_t v)``);
a least-squares line ``a(t) = alpha + beta t`` through those points extrapolates it, and the update
for one horizon of ``H`` steps is ``beta H u v^T``. Raw tensors get a line per entry.

The fit quality (R^2 of the line, per module) goes into the diagnostics: it is the evidence for
or against "the rank-1 coefficient moves linearly".
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from nextrap import lowrank
from nextrap.predictors.base import Prediction
from nextrap.progress import Progress, no_progress
from nextrap.trajectory import DEFAULT_CHUNK_BYTES, Features, Trajectory

__all__ = ["RelexPredictor", "line_fit"]


def line_fit(t: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares lines through ``(t, a[..., k])``: ``(intercept, slope, r2)``, each ``a.shape[:-1]``.

    ``t (K,)``; ``a (..., K)``. R^2 is 1 for a flat series (a line explains it fully).
    """
    t = t.to(a.dtype)
    tc = t - t.mean()
    ac = a - a.mean(-1, keepdim=True)
    denom = tc.square().sum()
    slope = (ac * tc).sum(-1) / denom if denom > 0 else torch.zeros(a.shape[:-1], dtype=a.dtype)
    intercept = a.mean(-1) - slope * t.mean()
    resid = a - (intercept[..., None] + slope[..., None] * t)
    total = ac.square().sum(-1)
    r2 = torch.where(total > 0, 1 - resid.square().sum(-1) / total.clamp_min(1e-30), torch.ones_like(total))
    return intercept, slope, r2


@dataclass(frozen=True)
class RelexPredictor:
    """``window``: how many of the last checkpoints the line is fitted to (None: all of them)."""

    window: int | None = None
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    name: str = "relex"
    needs_features: bool = False

    def __post_init__(self) -> None:
        if self.window is not None and self.window < 2:
            raise ValueError(
                f"RelexPredictor.window must be >= 2 (a line needs two points), got {self.window}"
            )

    def predict(
        self,
        trajectory: Trajectory,
        horizon: int,
        features: Features | None = None,
        device: torch.device | None = None,
        progress: Progress = no_progress,
    ) -> Prediction:
        device = device or torch.device("cpu")
        K = len(trajectory.headers)
        first = 0 if self.window is None else max(0, K - self.window)
        idx = list(range(first, K))
        steps = torch.tensor([trajectory.steps[i] for i in idx], dtype=torch.float64, device=device)
        span = trajectory.steps[-1] - trajectory.steps[-1 - horizon]
        matrices: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        r2s: dict[str, float] = {}
        for names in progress(trajectory.module_chunks(len(idx), self.chunk_bytes), "relex"):
            B, A = trajectory.load_factors(names, device, idx)
            top = lowrank.top_triplet(B[:, -1], A[:, -1])
            Bu = torch.einsum("mo,mkor->mkr", top.u, B)
            Av = torch.einsum("mkri,mi->mkr", A, top.v)
            coeffs = (Bu * Av).sum(-1).double()  # (M, K): a_t = u^T dW_t v
            _, slope, r2 = line_fit(steps, coeffs)
            step_size = (slope * span).float()
            for j, name in enumerate(names):
                matrices[name] = ((step_size[j] * top.u[j])[:, None].cpu(), top.v[j][None, :].cpu())
                r2s[name] = float(r2[j])
        vectors = {}
        for key in trajectory.raw:
            X = trajectory.load_raw(key, device, idx).double()
            if bool((X[:1] == X).all()):
                continue
            flat = X.reshape(len(idx), -1).T  # (entries, K)
            _, slope, _ = line_fit(steps, flat)
            vectors[key] = (slope * span).float().reshape(X.shape[1:]).cpu()
        diagnostics = {
            "window_steps": [trajectory.steps[first], trajectory.steps[-1]],
            "median_line_r2": statistics.median(r2s.values()) if r2s else None,
            "line_r2": r2s,
        }
        return Prediction(self.name, horizon, matrices, vectors, diagnostics)
