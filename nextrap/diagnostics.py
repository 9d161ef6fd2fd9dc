"""Diagnostics the papers argue with, computed for a user's own run (``nextrap inspect``).

Per module and checkpoint, from the LoRA factors (exact, no ``out x in`` matrix):

* rank-1 share: ``sigma_1^2 / sum_i sigma_i^2`` of the update ``dW_t`` (how much of what training did
  lies in one direction; NExt's premise is that this is large);
* the rank-1 coefficient ``a_t = u^T dW_t v`` along the last checkpoint's top direction ``(u, v)``,
  and how far that curve is from a straight line: the R^2 of a least-squares line and the largest
  deviation from it relative to the curve's range (RELEX's premise is that it is nearly straight).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import torch

from nextrap import lowrank
from nextrap.predictors import line_fit
from nextrap.progress import Progress, no_progress
from nextrap.trajectory import DEFAULT_CHUNK_BYTES, Trajectory

__all__ = ["Diagnostics", "diagnose"]


@dataclass
class Diagnostics:
    """``share[name]`` and ``coefficient[name]``: one value per checkpoint; ``line_r2`` and ``line_deviation`` per module."""

    steps: tuple[int, ...]
    rank: int = 1
    share: dict[str, list[float]] = field(default_factory=dict)
    coefficient: dict[str, list[float]] = field(default_factory=dict)
    line_r2: dict[str, float] = field(default_factory=dict)
    line_deviation: dict[str, float] = field(default_factory=dict)

    def kinds(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name in self.share:
            out.setdefault(name.rsplit(".", 1)[-1], []).append(name)
        return out

    def summary(self) -> dict[str, dict[str, Any]]:
        """Medians per module kind (and ``all``): rank-1 share at the first, middle and last checkpoint; line fit."""
        groups = {"all": list(self.share), **self.kinds()}
        mid = len(self.steps) // 2
        out = {}
        for kind, names in groups.items():
            out[kind] = {
                "modules": len(names),
                "rank1_share_first": statistics.median(self.share[n][0] for n in names),
                "rank1_share_mid": statistics.median(self.share[n][mid] for n in names),
                "rank1_share_last": statistics.median(self.share[n][-1] for n in names),
                "line_r2": statistics.median(self.line_r2[n] for n in names),
                "line_deviation": statistics.median(self.line_deviation[n] for n in names),
            }
        return out

    def table(self) -> str:
        s = self.summary()
        lines = [
            f"{len(self.share)} LoRA modules, {len(self.steps)} checkpoints (steps {self.steps[0]}..{self.steps[-1]}); "
            "medians over modules",
            "",
            f"{'kind':<12} {'modules':>7} {'rank-1 share: first':>20} {'mid':>6} {'last':>6} {'line R^2':>9} {'max dev.':>9}",
        ]
        for kind, r in s.items():
            lines.append(
                f"{kind:<12} {r['modules']:>7} {r['rank1_share_first']:>20.3f} {r['rank1_share_mid']:>6.3f} "
                f"{r['rank1_share_last']:>6.3f} {r['line_r2']:>9.3f} {r['line_deviation']:>9.3f}"
            )
        a = s["all"]
        lines += [
            "",
            f"rank-1 share: the top direction holds {a['rank1_share_last']:.0%} of the last update's energy (median); "
            f"1/r = {1 / max(1, self.rank):.0%} would mean an update spread evenly over the rank",
            f"coefficient curve: a straight line explains R^2 = {a['line_r2']:.3f} of it (median); the largest "
            f"deviation from that line is {a['line_deviation']:.1%} of the curve's range",
        ]
        return "\n".join(lines)


def diagnose(
    trajectory: Trajectory,
    device: torch.device | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Progress = no_progress,
) -> Diagnostics:
    """Rank-1 shares and coefficient curves of every LoRA module along the run."""
    device = device or torch.device("cpu")
    diag = Diagnostics(steps=trajectory.steps, rank=min(m.rank for m in trajectory.modules.values()))
    steps = torch.tensor(trajectory.steps, dtype=torch.float64)
    for names in progress(trajectory.module_chunks(len(trajectory.steps), chunk_bytes), "diagnostics"):
        B, A = trajectory.load_factors(names, device)
        M, K = B.shape[:2]
        svd = lowrank.factored_svd(B.reshape(M * K, *B.shape[2:]), A.reshape(M * K, *A.shape[2:]))
        energy = svd.S.double().square()
        share = (energy[:, 0] / energy.sum(-1).clamp_min(1e-300)).reshape(M, K)
        share = torch.where(energy.sum(-1).reshape(M, K) > 0, share, torch.zeros_like(share))
        top = lowrank.top_triplet(B[:, -1], A[:, -1])
        coeff = (
            ((torch.einsum("mo,mkor->mkr", top.u, B) * torch.einsum("mkri,mi->mkr", A, top.v)).sum(-1))
            .double()
            .cpu()
        )
        intercept, slope, r2 = line_fit(steps, coeff)
        resid = coeff - (intercept[:, None] + slope[:, None] * steps)
        span = (coeff.max(-1).values - coeff.min(-1).values).clamp_min(1e-30)
        deviation = resid.abs().max(-1).values / span
        for m, name in enumerate(names):
            diag.share[name] = share[m].cpu().tolist()
            diag.coefficient[name] = coeff[m].tolist()
            diag.line_r2[name] = float(r2[m])
            diag.line_deviation[name] = float(deviation[m])
    return diag
