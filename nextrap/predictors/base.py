"""The interface every extrapolation method implements, and the prediction it returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from nextrap.linalg.combinations import StackedUpdates
from nextrap.run.trajectory import Features, SharedFeatures, Trajectory
from nextrap.util.progress import Progress

__all__ = ["Prediction", "Predictor"]


@dataclass(frozen=True)
class Prediction:
    """The update a method predicts, relative to the last checkpoint: ``offset + c * direction``.

    ``direction`` is the move of one ``horizon`` of checkpoint intervals; ``offset`` is a move applied
    at every coefficient (zero for most methods; RELEX's denoised reconstruction of the last checkpoint
    minus the checkpoint itself). Extrapolating with coefficient ``c`` adds ``offset + c * direction``.

    Three forms, one per kind of parameter:

    * ``matrices[name] = (L, R)``: a direction in factored form, ``L (out, k)``, ``R (k, in)``, already
      scaled (it adds to ``scaling * B @ A``); no offset;
    * ``combinations[name] = (offset_w, direction_w)``, each ``(T,)`` float64: the offset and direction
      as weighted sums of the observed updates ``dW`` at the checkpoint indices ``indices`` (so the
      factors are those of the run itself, loaded when needed: rank <= T r, never held for all modules);
    * ``vectors[key]`` (direction) and ``offsets[key]`` (offset) of raw tensors, in the tensor's shape.

    A module may have both a combination and a factored part (the combined methods: the linear move
    of the run's own checkpoints plus rank-1 corrections); the factored part is then added to the
    combination's direction.

    ``diagnostics`` is JSON-able and goes into the report.

    ``deferred``: when set, the LoRA modules' ``combinations`` are fitted chunk by chunk by whoever reads
    the run's factors next: it calls ``deferred(names, stack, rows)`` with the chunk's
    :class:`~nextrap.linalg.combinations.StackedUpdates` at the checkpoint indices ``rows`` (all of
    :attr:`indices`), which fills ``combinations`` and ``diagnostics`` for those names. RELEX's
    extrapolation uses it: the fit then shares the write's Gram products instead of reading the run once
    more for its own.
    """

    method: str
    horizon: int
    matrices: dict[str, tuple[torch.Tensor, torch.Tensor]]
    vectors: dict[str, torch.Tensor]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    combinations: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    indices: tuple[int, ...] = ()
    offsets: dict[str, torch.Tensor] = field(default_factory=dict)
    deferred: Callable[[Sequence[str], StackedUpdates, Sequence[int]], None] | None = field(
        default=None, compare=False, repr=False
    )

    def combines(self, name: str) -> bool:
        """Whether module ``name``'s move is (or, deferred, will be) a weighted sum of the run's own updates."""
        return name in self.combinations or (self.deferred is not None and name not in self.matrices)

    def stacked(self, names: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The factored updates of ``names`` stacked, zero-padded to a common inner size: ``(M, out, k)``, ``(M, k, in)``."""
        pairs = [self.matrices[n] for n in names]
        k = max(L.shape[-1] for L, _ in pairs)
        Ls = [torch.nn.functional.pad(L, (0, k - L.shape[-1])) for L, _ in pairs]
        Rs = [torch.nn.functional.pad(R, (0, 0, 0, k - R.shape[-2])) for _, R in pairs]
        return torch.stack(Ls).to(device, torch.float32), torch.stack(Rs).to(device, torch.float32)

    def inner_size(self, name: str, rank: int) -> int:
        """Columns of the factored move of module ``name`` of LoRA rank ``rank`` (to size memory chunks)."""
        size = (len(self.indices) + 1) * rank if self.combines(name) else 0
        return size + (self.matrices[name][0].shape[-1] if name in self.matrices else 0)

    def factors(
        self,
        trajectory: Trajectory,
        names: Sequence[str],
        device: torch.device,
        offset_scale: float = 1.0,
        direction_scale: float = 1.0,
        plus_last: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``offset_scale * offset + direction_scale * direction`` of ``names`` (one shape), factored, float32.

        With ``plus_last`` the last checkpoint's own update ``dW_K`` is added, giving the new update
        itself. Returns ``L (M, out, k)``, ``R (M, k, in)`` on ``device``.
        """
        last = len(trajectory.headers) - 1
        rows = self.reads(last, plus_last) if names[0] in self.combinations else ([last] if plus_last else [])
        B, A = trajectory.load_factors(names, device, rows) if rows else (None, None)
        return self.factors_from(names, B, A, rows, last, device, offset_scale, direction_scale, plus_last)

    def reads(self, last: int, plus_last: bool = False) -> list[int]:
        """The checkpoints whose factors a combination needs (``last``: the run's last index), in order."""
        rows = list(self.indices)
        return rows + [last] if plus_last and last not in rows else rows

    def _combined(self, names: Sequence[str], offset_scale: float, direction_scale: float) -> torch.Tensor:
        """``offset_scale * offset + direction_scale * direction`` of ``names``: ``(M, len(indices))`` float64, CPU."""
        return torch.stack(
            [offset_scale * self.combinations[n][0] + direction_scale * self.combinations[n][1] for n in names]
        ).double()

    def weights(
        self, names: Sequence[str], rows: Sequence[int], offset_scale: float = 1.0, direction_scale: float = 1.0
    ) -> torch.Tensor:
        """The combination ``offset_scale * offset + direction_scale * direction`` of ``names`` as weights over
        the checkpoint indices ``rows`` (which hold :attr:`indices`): ``(M, len(rows))`` float64 on the CPU."""
        out = torch.zeros(len(names), len(rows), dtype=torch.float64)
        out[:, [list(rows).index(i) for i in self.indices]] = self._combined(names, offset_scale, direction_scale)
        return out

    def factors_from(
        self,
        names: Sequence[str],
        B: torch.Tensor | None,
        A: torch.Tensor | None,
        rows: Sequence[int],
        last: int,
        device: torch.device,
        offset_scale: float = 1.0,
        direction_scale: float = 1.0,
        plus_last: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`factors` from factors already read: ``B (M, T, out, r)`` (scaled), ``A (M, T, r, in)`` at the
        checkpoint indices ``rows`` (which hold the combination's checkpoints, and ``last`` with ``plus_last``).

        The parts, concatenated along the inner dimension: the combination (``sum_t w_t dW_t``, the last
        checkpoint's weight raised by one with ``plus_last``), else the last checkpoint itself with
        ``plus_last``; then the factored direction, when the module has one.
        """
        parts = []
        if names[0] in self.combinations:
            assert B is not None and A is not None
            idx = list(self.indices)
            w = self._combined(names, offset_scale, direction_scale).to(device)
            if plus_last:
                if last not in idx:
                    idx.append(last)
                    w = torch.nn.functional.pad(w, (0, 1))
                w[:, idx.index(last)] += 1.0
            at = [list(rows).index(i) for i in idx]
            Bc, Ac = (B, A) if at == list(range(B.shape[1])) else (B[:, at], A[:, at])
            M, T, out_f, r = Bc.shape
            L = (Bc * w.to(Bc.dtype)[:, :, None, None]).permute(0, 2, 1, 3).reshape(M, out_f, T * r)
            parts.append((L, Ac.reshape(M, T * r, Ac.shape[-1])))
        elif plus_last:
            assert B is not None and A is not None
            k = list(rows).index(last)
            parts.append((B[:, k], A[:, k]))
        if names[0] in self.matrices:
            L, R = self.stacked(list(names), device)
            parts.append((L * direction_scale, R))
        return torch.cat([L for L, _ in parts], -1), torch.cat([R for _, R in parts], -2)

    def raw_move(self, key: str, coef: float, device: torch.device) -> torch.Tensor | None:
        """The move of raw tensor ``key`` at coefficient ``coef`` (None: it does not move)."""
        move = None
        if key in self.vectors:
            move = coef * self.vectors[key].to(device, torch.float32)
        elif key in self.matrices:
            L, R = self.matrices[key]
            move = coef * (L @ R).to(device, torch.float32)
        if key in self.offsets:
            off = self.offsets[key].to(device, torch.float32)
            move = off if move is None else move.reshape(off.shape) + off
        return move


class Predictor(Protocol):
    """A method: predicts the update of the ``horizon`` checkpoint intervals after the last checkpoint.

    ``features`` are the run's rank-1 features, computed on first use by whichever method asks for them
    and shared by the others (:class:`~nextrap.run.trajectory.SharedFeatures`); methods that do not need
    them never trigger the computation. A method given None computes what it needs itself.
    """

    name: str

    def predict(
        self,
        trajectory: Trajectory,
        horizon: int,
        features: SharedFeatures | Features | None,
        device: torch.device,
        progress: Progress,
    ) -> Prediction: ...
