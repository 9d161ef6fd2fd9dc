"""Each vector's own frame: the few directions its history moves in, so NExt's network can stay small.

NExt feeds one network per vector length with every module's feature vectors (``u`` of length
``out``, ``v`` of length ``in``). At 7B shapes those are 3,584 or 18,944 numbers, the network has
14-73 M weights, and a full-batch epoch takes seconds on a CPU. Yet one vector's history (its global,
local and target features over the run) moves in a handful of directions, different for every module.

A frame is an orthonormal basis of those directions, per vector: the leading eigenvectors of the
Gram matrix of its own history, ordered by energy, each signed so that the vector's latest global
feature has a positive coordinate on it. Every vector is then described by ``size`` coordinates with
the same meaning for every module ("along the main direction of this module's motion", ...), the
network learns how those coordinates evolve, and its prediction is lifted back with the same basis.
What the frame leaves out (a history's weakest directions) is predicted as no move.

What frames give up is the coordinate system the modules of a real model share (they all read from and
write to one hidden space). On a real SmolLM2-135M run framing its 576- and 1536-long vectors cost
accuracy, so by default only vectors of 2048 entries or more are framed (``NExtConfig.frame_min_dim``),
the lengths whose full-length networks would take minutes per epoch on a CPU; the ``frames`` preset
frames from 512 entries, trading some accuracy for speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Frames", "history_frames"]

# Directions whose energy is below this share of the strongest one are numerical noise, not motion.
_RELATIVE_FLOOR = 1e-10


@dataclass(frozen=True)
class Frames:
    """Per-vector orthonormal bases ``(items, d, size)``; a history with fewer directions has zero columns."""

    basis: torch.Tensor
    kept_energy: torch.Tensor  # (items,): share of each history's energy the frame holds

    def project(self, rows: torch.Tensor) -> torch.Tensor:
        """``(items, n, d)`` -> coordinates ``(items, n, size)``."""
        return rows @ self.basis

    def lift(self, coords: torch.Tensor) -> torch.Tensor:
        """Coordinates ``(items, n, size)`` -> vectors ``(items, n, d)``."""
        return coords @ self.basis.transpose(1, 2)


def history_frames(history: torch.Tensor, reference: torch.Tensor, size: int) -> Frames:
    """The frames of ``history (items, n, d)``: its ``size`` leading directions per item.

    Computed through the ``n x n`` Gram matrix of each item's rows (``n`` is a few dozen, ``d`` up to
    tens of thousands), in float64. ``reference (items, d)`` fixes each direction's sign.
    """
    device = history.device
    if device.type == "mps":  # no float64 there; the Gram matrices are small
        history, reference = history.cpu(), reference.cpu()
    rows = history.double()
    gram = rows @ rows.transpose(1, 2)
    energy, vecs = torch.linalg.eigh(gram)  # ascending
    energy, vecs = energy.flip(-1).clamp_min(0), vecs.flip(-1)
    size = min(size, energy.shape[-1])
    top = energy[:, :1]
    real = energy[:, :size] > top * _RELATIVE_FLOOR
    inv_sqrt = torch.where(real, energy[:, :size].clamp_min(1e-300).rsqrt(), torch.zeros_like(energy[:, :size]))
    basis = rows.transpose(1, 2) @ (vecs[:, :, :size] * inv_sqrt[:, None, :])  # (items, d, size), orthonormal
    sign = torch.sign(torch.einsum("ids,id->is", basis, reference.double()))
    basis = basis * torch.where(sign == 0, torch.ones_like(sign), sign)[:, None, :]
    total = energy.sum(-1)
    kept = torch.where(total > 0, (energy[:, :size] * real).sum(-1) / total.clamp_min(1e-300), torch.ones_like(total))
    return Frames(basis=basis.to(device, history.dtype), kept_energy=kept.to(device, history.dtype))
