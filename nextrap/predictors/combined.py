"""NExt for the top part of the move, the straight line for the rest (``next+linear``, ``next-horizon+linear``).

NExt predicts only the rank-1 part of the next move; the linear method (RL-Extra) repeats the whole of
the last one. Where the rank-1 part is a minority of the move (the tiny reference policy: about 45% of
its energy), NExt leaves most of the move out. The backtest's split of the error into the true move's
top part and the rest (docs/method.md, "The parts of the move") measures each method on each part;
this method takes the top part from NExt and the rest from the line. (On the real runs measured, NExt's
top part was the better one on only 1 of 14 backtests, so the line itself stays the default:
docs/method.md, "Which method by default, and why".)

``D = sigma_hat u_hat v_hat^T + (Y - sigma_1 u_1 v_1^T)``, with ``Y = dW_K - dW_{K-H}`` the linear
move and ``(u_1, sigma_1, v_1)`` its top singular triplet: NExt's predicted rank-1 move plus the
linear move with its own top direction removed.

Everything stays factored: ``Y`` is the run's own checkpoints with weights ``(-1, +1)`` (as
:mod:`~nextrap.predictors.linear` does it), and the two rank-1 terms are two columns per module
(:class:`~nextrap.predictors.base.Prediction` adds a module's factored part to its combination).
``(u_1, sigma_1, v_1)`` is the last target feature NExt is trained on (the top triplet of
``dW_K - dW_{K-H}``, exact from the factors), so nothing is read twice.

``next-horizon+linear`` is the same with NExt's local input taken over the last horizon instead of
the last checkpoint interval (:func:`horizon_local`): the move the linear method repeats, less noisy
than one interval's on a noisy run, so NExt's skip connection starts from the linear method's own top
part and the network learns corrections to it.

Raw tensors: 1-D ones (DoRA magnitudes, biases) have no singular directions, so the whole of their move
is "the rest" and moves linearly; 2-D ones (``modules_to_save``) are split like a LoRA module, densely.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from nextrap.linalg import lowrank
from nextrap.predictors.base import Prediction
from nextrap.predictors.config import NExtConfig
from nextrap.predictors.linear import LinearPredictor
from nextrap.predictors.next import NExtPredictor, features_at
from nextrap.run.trajectory import Features, MatrixFeatures, SharedFeatures, Trajectory, VectorFeatures
from nextrap.util.progress import Progress, no_progress

if TYPE_CHECKING:
    from nextrap.predictors.registry import MethodSettings

__all__ = ["LOCAL_INPUTS", "NextLinearPredictor", "horizon_local"]

# NExt's local input -> the method's name
LOCAL_INPUTS = {"interval": "next+linear", "horizon": "next-horizon+linear"}


class NextLinearPredictor:
    """NExt's predicted rank-1 move plus the linear move without its top singular direction.

    ``local``: NExt's local input, ``"interval"`` (the paper's: the last checkpoint interval's move) or
    ``"horizon"`` (the last horizon's move, the one the linear method repeats; see
    :func:`horizon_local`).
    """

    def __init__(self, config: NExtConfig | None = None, local: str = "interval"):
        if local not in LOCAL_INPUTS:
            raise ValueError(f"local = {local!r}: expected one of {list(LOCAL_INPUTS)}")
        self.config = config or NExtConfig()
        self.local = local
        self.name = LOCAL_INPUTS[local]

    def predict(
        self,
        trajectory: Trajectory,
        horizon: int,
        features: SharedFeatures | Features | None = None,
        device: torch.device | None = None,
        progress: Progress = no_progress,
    ) -> Prediction:
        device = device or torch.device("cpu")
        feats = features_at(features, trajectory, horizon, device, progress)
        # shared features go in as they were given, so a fit already made on them is reused
        shared = features if isinstance(features, SharedFeatures) else feats
        inputs = horizon_local(feats) if self.local == "horizon" else shared
        nxt = NExtPredictor(self.config).predict(trajectory, horizon, inputs, device, progress)
        lin = LinearPredictor().predict(trajectory, horizon)
        matrices: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        removed: dict[str, float] = {}
        for name in trajectory.modules:
            u1, s1, v1 = _last_target(feats, name)
            L, R = nxt.matrices[name]  # (out, 1), (1, in): sigma_hat u_hat, v_hat^T
            matrices[name] = (torch.cat([L, -(s1 * u1)[:, None].to(L)], -1), torch.cat([R, v1[None].to(R)], -2))
            removed[name] = float(s1)
        vectors = dict(lin.vectors)  # 1-D raw tensors: all "rest", linear
        for key, move in lin.vectors.items():
            if key in feats.matrices:  # a 2-D raw tensor: the same split, dense
                u1, s1, v1 = _last_target(feats, key)
                L, R = nxt.matrices[key]
                flat = move.reshape(u1.shape[0], -1).to(device, torch.float32)
                flat = flat - s1 * torch.outer(u1, v1) + (L @ R).to(flat)
                vectors[key] = flat.reshape(move.shape).cpu()
                removed[key] = float(s1)
        diagnostics = {
            **nxt.diagnostics,  # config, groups (the fit report), predicted_sigma
            "linear": lin.diagnostics,
            "removed_sigma": removed,
        }
        return Prediction(
            self.name,
            horizon,
            matrices=matrices,
            vectors=vectors,
            diagnostics=diagnostics,
            combinations=lin.combinations,
            indices=lin.indices,
        )


def horizon_local(features: Features) -> Features:
    """The features with each checkpoint's local move taken over the last horizon: ``dW_t - dW_{t-H}``.

    That move is the target of the pair ending at ``t`` (``dW_0 = 0`` before the first checkpoint, so
    before ``t = H`` it is the global delta), so nothing is recomputed: its triplets are those rows,
    flipped to agree with the checkpoint's global triplet like every local one (docs/method.md, "Rank-1
    features"). With the skip connection NExt's network then starts from "the next horizon repeats the
    last one" (the linear method's top part) and learns corrections to it.
    """
    h = features.horizon
    matrices = {}
    for name, f in features.matrices.items():
        g, t = f.global_, f.target
        k = g.s.shape[0]
        rows = lowrank.Triplets(
            u=torch.cat([g.u[:h], t.u[: k - h]]), s=torch.cat([g.s[:h], t.s[: k - h]]), v=torch.cat([g.v[:h], t.v[: k - h]])
        )
        matrices[name] = MatrixFeatures(global_=g, local=lowrank.align_signs(rows, g), target=t)
    vectors = {
        key: VectorFeatures(
            global_=f.global_, local=torch.cat([f.global_[:h], f.target[: f.global_.shape[0] - h]]), target=f.target
        )
        for key, f in features.vectors.items()
    }
    return replace(features, matrices=matrices, vectors=vectors)


def _last_target(features: Features, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(u_1 (out,), sigma_1 (), v_1 (in,))``: the top triplet of ``dW_K - dW_{K-H}`` (the last training target)."""
    t = features.matrices[name].target
    return t.u[-1], t.s[-1], t.v[-1]


def build(name: str, settings: MethodSettings) -> NextLinearPredictor:
    """The registry's builder (:mod:`nextrap.predictors.registry`): ``next+linear`` or ``next-horizon+linear``."""
    return NextLinearPredictor(settings.next, local={v: k for k, v in LOCAL_INPUTS.items()}[name])
