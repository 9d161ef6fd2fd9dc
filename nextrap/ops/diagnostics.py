"""Diagnostics the papers argue with, computed for a user's own run (``nextrap inspect``).

Per module and checkpoint, from the LoRA factors (exact, no ``out x in`` matrix):

* energy share: ``sigma_1^2 / sum_i sigma_i^2`` of the update ``dW_t`` (how much of what training did
  lies in one direction);
* NExt's dominance measure ``E1 = sigma_1 / sum_i sigma_i`` (not squared) of the same update;
* RELEX's temporal explained variance: the share of the updates' energy along the run that the top
  temporal component holds (top eigenvalue of the ``T x T`` Gram matrix ``<dW_i, dW_j>`` over its
  trace; RELEX's premise is that it is close to 1);
* straightness of the path: ``||dW_K - dW_1|| / sum_t ||dW_t - dW_{t-1}||`` over the checkpoints, 1 for a
  straight line, about ``1/sqrt(n)`` for a random walk of n steps;
* the rank-1 coefficient ``a_t = u^T dW_t v`` along the last checkpoint's top direction ``(u, v)``,
  and how far that curve is from a straight line: the R^2 of a least-squares line and the largest
  deviation from it relative to the curve's range.

Per module kind and overall, as medians over modules; temporal explained variance and straightness
also pooled (all modules of a kind as one vector).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import torch

from nextrap.linalg import lowrank
from nextrap.predictors import line_fit
from nextrap.predictors.relex import lora_gram
from nextrap.run.trajectory import DEFAULT_CHUNK_BYTES, Trajectory
from nextrap.util.progress import Progress, no_progress

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
    e1: dict[str, list[float]] = field(default_factory=dict)
    temporal_explained: dict[str, float] = field(default_factory=dict)
    straightness: dict[str, float] = field(default_factory=dict)
    grams: dict[str, list[list[float]]] = field(default_factory=dict)
    step_lengths: dict[str, list[float]] = field(default_factory=dict)
    displacement: dict[str, float] = field(default_factory=dict)
    # the run's files and folders, which plots of these diagnostics may not touch (nextrap.util.inputs)
    inputs: tuple[Any, ...] = field(default=(), repr=False, compare=False)

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
                "e1_last": statistics.median(self.e1[n][-1] for n in names),
                "temporal_explained": statistics.median(self.temporal_explained[n] for n in names),
                "temporal_explained_pooled": _pooled_explained([self.grams[n] for n in names]),
                "straightness": statistics.median(self.straightness[n] for n in names),
                "straightness_pooled": _pooled_straightness(
                    [self.displacement[n] for n in names], [self.step_lengths[n] for n in names]
                ),
            }
        return out

    def table(self) -> str:
        s = self.summary()
        lines = [
            f"{len(self.share)} LoRA modules, {len(self.steps)} checkpoints (steps {self.steps[0]}..{self.steps[-1]}); "
            "medians over modules",
            "",
            f"{'kind':<12} {'modules':>7} {'rank-1 share: first':>20} {'mid':>6} {'last':>6} {'E1':>6} "
            f"{'temporal EV':>11} {'pooled':>7} {'straight':>8} {'pooled':>7} {'line R^2':>9} {'max dev.':>9}",
        ]
        for kind, r in s.items():
            lines.append(
                f"{kind:<12} {r['modules']:>7} {r['rank1_share_first']:>20.3f} {r['rank1_share_mid']:>6.3f} "
                f"{r['rank1_share_last']:>6.3f} {r['e1_last']:>6.3f} {r['temporal_explained']:>11.3f} "
                f"{r['temporal_explained_pooled']:>7.3f} {r['straightness']:>8.3f} {r['straightness_pooled']:>7.3f} "
                f"{r['line_r2']:>9.3f} {r['line_deviation']:>9.3f}"
            )
        a = s["all"]
        lines += [
            "",
            f"rank-1 share: the top direction holds {a['rank1_share_last']:.0%} of the last update's energy (median); "
            f"1/r = {1 / max(1, self.rank):.0%} would mean an update spread evenly over the rank",
            f"E1 = sigma_1 / sum sigma_i (NExt's measure) of the last update: {a['e1_last']:.3f} (median; 1/r = "
            f"{1 / max(1, self.rank):.3f} for an even spread)",
            f"temporal explained variance (RELEX's measure): the top temporal component holds "
            f"{a['temporal_explained']:.1%} of the updates along the run (median), {a['temporal_explained_pooled']:.1%} "
            "for the whole adapter",
            f"straightness: displacement / path length = {a['straightness']:.3f} (median), "
            f"{a['straightness_pooled']:.3f} for the whole adapter (1: a straight line; a random walk of "
            f"{len(self.steps) - 1} steps: about {1 / max(1, len(self.steps) - 1) ** 0.5:.2f})",
            f"coefficient curve along the last top direction: a straight line explains R^2 = {a['line_r2']:.3f} of "
            f"it (median); the largest deviation from that line is {a['line_deviation']:.1%} of the curve's range",
        ]
        return "\n".join(lines)


def _pooled_explained(grams: list[list[list[float]]]) -> float:
    """Top temporal component's share when the modules are stacked into one vector (Gram matrices add)."""
    G = torch.tensor(grams, dtype=torch.float64).sum(0)
    lam = torch.linalg.eigvalsh(G).clamp_min(0)
    return float(lam[-1] / lam.sum()) if float(lam.sum()) > 0 else 0.0


def _pooled_straightness(displacements: list[float], step_lengths: list[list[float]]) -> float:
    """Straightness of the modules stacked into one vector (squared norms add per step)."""
    disp = sum(d * d for d in displacements) ** 0.5
    steps = torch.tensor(step_lengths, dtype=torch.float64).square().sum(0).sqrt().sum()
    return disp / float(steps) if float(steps) > 0 else 0.0


def _squared_singular_values(B: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``sigma_i^2`` of each ``B_k A_k`` (``B (..., out, r)``, ``A (..., r, in)``), descending, float64 ``(..., r)``.

    From the ``r x r`` Gram matrices: with ``B^T B = V Lam V^T``, the squared singular values are the
    eigenvalues of ``Lam^1/2 V^T (A A^T) V Lam^1/2``: two small symmetric eigenproblems instead of a QR
    of each tall factor (the shares and E1 below are ratios dominated by the top values).
    """
    lam, V = torch.linalg.eigh((B.transpose(-1, -2) @ B).double())
    W = V * lam.clamp_min(0).sqrt().unsqueeze(-2)
    energy = torch.linalg.eigvalsh(W.transpose(-1, -2) @ (A @ A.transpose(-1, -2)).double() @ W)
    return energy.clamp_min(0).flip(-1)


def diagnose(
    trajectory: Trajectory,
    device: torch.device | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Progress = no_progress,
) -> Diagnostics:
    """Rank-1 shares and coefficient curves of every LoRA module along the run."""
    device = device or torch.device("cpu")
    diag = Diagnostics(
        steps=trajectory.steps,
        rank=min(m.rank for m in trajectory.modules.values()),
        inputs=trajectory.discovery.input_paths,
    )
    steps = torch.tensor(trajectory.steps, dtype=torch.float64)
    chunks = trajectory.module_chunks(len(trajectory.steps), chunk_bytes)
    for _, (names, B, A) in zip(progress(chunks, "diagnostics"), trajectory.iter_factors(chunks, device), strict=True):
        M, K = B.shape[:2]
        energy = _squared_singular_values(B, A).reshape(M * K, -1)  # (M K, r), descending
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
        S = energy.sqrt()
        e1 = (S[:, 0] / S.sum(-1).clamp_min(1e-300)).reshape(M, K)
        e1 = torch.where(S.sum(-1).reshape(M, K) > 0, e1, torch.zeros_like(e1))
        G = lora_gram(B, A).cpu()
        lam = torch.linalg.eigvalsh(G).clamp_min(0)
        explained = lam[:, -1] / lam.sum(-1).clamp_min(1e-300)
        # step lengths from the differences of the factors (exact; Gram entries would cancel); the run
        # check took them already when it read the run
        check = trajectory.check
        known = check.module_steps if check is not None and check.steps == trajectory.steps else {}
        if all(n in known for n in names):
            steps_len = torch.tensor([known[n] for n in names], dtype=torch.float64).reshape(M, K - 1)
        else:
            steps_len = lowrank.norms_and_steps(B, A)[1].double().sqrt().cpu()  # (M, K - 1)
        Lx, Rx = lowrank.difference(B[:, -1], A[:, -1], 1.0, B[:, 0], A[:, 0], 1.0)
        disp = lowrank.frobenius_norm(Lx.double(), Rx.double()).cpu()  # (M,)
        for m, name in enumerate(names):
            diag.e1[name] = e1[m].cpu().tolist()
            diag.grams[name] = G[m].tolist()
            diag.temporal_explained[name] = float(explained[m])
            diag.step_lengths[name] = steps_len[m].tolist()
            diag.displacement[name] = float(disp[m])
            total = float(steps_len[m].sum())
            diag.straightness[name] = float(disp[m]) / total if total > 0 else 0.0
            diag.share[name] = share[m].cpu().tolist()
            diag.coefficient[name] = coeff[m].tolist()
            diag.line_r2[name] = float(r2[m])
            diag.line_deviation[name] = float(deviation[m])
    return diag
