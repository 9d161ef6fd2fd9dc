"""NExt: a small nonlinear predictor per vector length, trained on the run's own rank-1 features.

For every vector length d (each ``u`` of modules with ``out = d``, each ``v`` with ``in = d``, all
sigmas as ``d = 1``, 1-D tensors of length d) one :class:`NExtNet` maps the global and local feature
vectors at checkpoint k to the target feature at k (the rank-1 part of the next ``horizon``
intervals). Trained on every pair with ``k + horizon <= K``, it is then fed the last checkpoint.

Two presets:

* ``reference`` reproduces the paper's scripts: raw features, AdamW lr 2e-5, cosine to 0.1 lr over
  1000 full-batch epochs, L1 loss summed over entries. Tuned for 7B-sized vectors; on small models it
  stays far from converged (see METHOD.md).
* ``auto`` (default) rescales each group's inputs and targets to unit RMS entries, so one learning
  rate (1e-3) fits every vector length, and stops when the loss plateaus. Same network, same loss.

The report says, per group, the final loss relative to predicting zeros: how far the fit got.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from nextrap.errors import ConfigError
from nextrap.predictors.base import Prediction
from nextrap.progress import Progress, no_progress
from nextrap.trajectory import Features, Trajectory

__all__ = ["PRESETS", "PRESET_NAMES", "NExtConfig", "NExtNet", "NExtPredictor"]

logger = logging.getLogger(__name__)

PRESET_NAMES = ("auto", "reference")


@dataclass(frozen=True)
class NExtConfig:
    """Hyper-parameters of the NExt predictor; validated at construction."""

    preset: str = "auto"
    lr: float = 1e-3
    epochs: int = 1000
    loss: str = "l1"
    hidden: int = 256
    weight_decay: float = 0.01
    min_lr_ratio: float = 0.1
    normalize: bool = True
    patience: int = 100
    min_improvement: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.preset in PRESET_NAMES, "preset", f"one of {list(PRESET_NAMES)}"),
            (self.lr > 0 and math.isfinite(self.lr), "lr", "a positive number"),
            (self.epochs >= 1, "epochs", "at least 1"),
            (self.loss in ("l1", "l2"), "loss", "'l1' or 'l2'"),
            (self.hidden >= 1, "hidden", "at least 1"),
            (self.weight_decay >= 0, "weight_decay", ">= 0"),
            (0 < self.min_lr_ratio <= 1, "min_lr_ratio", "in (0, 1]"),
            (self.patience >= 0, "patience", ">= 0 (0 disables early stopping)"),
            (self.min_improvement >= 0, "min_improvement", ">= 0"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ConfigError(f"NExt option {name} = {getattr(self, name)!r}: expected {expected}")

    @classmethod
    def from_preset(cls, preset: str = "auto", **overrides: Any) -> NExtConfig:
        """The preset's values with ``overrides`` (``None`` values are ignored) on top."""
        if preset not in PRESETS:
            raise ConfigError(f"NExt preset {preset!r}: expected one of {sorted(PRESETS)}")
        return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})


PRESETS: dict[str, NExtConfig] = {
    "auto": NExtConfig(),
    "reference": NExtConfig(preset="reference", lr=2e-5, normalize=False, patience=0),
}


class NExtNet(nn.Module):
    """The reference architecture: two branches for the global and local vectors, then a combiner.

    Each branch is ``Linear(d,h) -> Linear(h,d) -> ReLU -> Linear(d,h) -> Linear(h,d)``; the combiner
    ``Linear(2d,h) -> Linear(h,2d) -> ReLU -> Linear(2d,h) -> Linear(h,d)``. Input and output
    ``(N, d)`` float32.
    """

    def __init__(self, dim: int, hidden: int = 256):
        super().__init__()

        def branch(d_in: int, d_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(d_in, hidden),
                nn.Linear(hidden, d_in),
                nn.ReLU(),
                nn.Linear(d_in, hidden),
                nn.Linear(hidden, d_out),
            )

        self.global_branch = branch(dim, dim)
        self.local_branch = branch(dim, dim)
        self.combine = branch(2 * dim, dim)

    def forward(self, global_: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        return self.combine(torch.cat([self.global_branch(global_), self.local_branch(local)], dim=-1))


@dataclass
class _Group:
    """All vectors of one length: ``(items, K, d)`` for global/local, ``(items, P, d)`` for target."""

    dim: int
    items: list[tuple[str, str]]
    global_: list[torch.Tensor]
    local: list[torch.Tensor]
    target: list[torch.Tensor]


def _collect_groups(features: Features) -> dict[int, _Group]:
    groups: dict[int, _Group] = {}

    def add(name: str, part: str, g: torch.Tensor, loc: torch.Tensor, t: torch.Tensor) -> None:
        d = g.shape[-1]
        grp = groups.setdefault(d, _Group(d, [], [], [], []))
        grp.items.append((name, part))
        grp.global_.append(g)
        grp.local.append(loc)
        grp.target.append(t)

    for name, f in features.matrices.items():
        add(name, "u", f.global_.u, f.local.u, f.target.u)
        add(name, "v", f.global_.v, f.local.v, f.target.v)
        add(name, "s", f.global_.s[:, None], f.local.s[:, None], f.target.s[:, None])
    for key, f in features.vectors.items():
        add(key, "raw", f.global_, f.local, f.target)
    return dict(sorted(groups.items()))


def _rms(x: torch.Tensor) -> torch.Tensor:
    r = x.square().mean().sqrt()
    return torch.where(r > 0, r, torch.ones_like(r))


class NExtPredictor:
    """Fits one :class:`NExtNet` per vector length and predicts the next horizon's rank-1 update."""

    name = "next"
    needs_features = True

    def __init__(self, config: NExtConfig | None = None):
        self.config = config or NExtConfig()

    def predict(
        self,
        trajectory: Trajectory,
        horizon: int,
        features: Features | None,
        device: torch.device | None = None,
        progress: Progress = no_progress,
    ) -> Prediction:
        if features is None or features.horizon != horizon:
            raise ValueError("NExtPredictor.predict needs the run's features computed at the same horizon")
        cfg = self.config
        P = features.pairs
        outputs: dict[tuple[str, str], torch.Tensor] = {}
        group_reports = []
        for dim, grp in progress(list(_collect_groups(features).items()), "NExt predictor groups"):
            G = torch.stack(grp.global_)  # (items, K, d)
            Lc = torch.stack(grp.local)
            T = torch.stack(grp.target)  # (items, P, d)
            x_g, x_l, y = G[:, :P].reshape(-1, dim), Lc[:, :P].reshape(-1, dim), T.reshape(-1, dim)
            if cfg.normalize:
                sg, sl, st = _rms(x_g), _rms(x_l), _rms(y)
            else:
                sg = sl = st = torch.ones((), device=G.device)
            net, report = _fit(dim, x_g / sg, x_l / sl, y / st, cfg, P)
            with torch.no_grad():
                pred = net(G[:, -1] / sg, Lc[:, -1] / sl) * st  # (items, d)
            for i, item in enumerate(grp.items):
                outputs[item] = pred[i]
            report.update(dim=dim, vectors=len(grp.items), rows=int(x_g.shape[0]))
            group_reports.append(report)
            logger.info(
                "group d=%d: %d epochs, loss %.4g (%.3g of predicting zeros)",
                dim,
                report["epochs_run"],
                report["final_loss"],
                report["relative_loss"],
            )

        matrices: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        sigmas: dict[str, float] = {}
        for name in features.matrices:
            u, v, s = outputs[(name, "u")], outputs[(name, "v")], outputs[(name, "s")][0]
            nu, nv = u.norm(), v.norm()
            if nu == 0 or nv == 0:
                s = torch.zeros_like(s)
                nu = nv = torch.ones_like(nu)
            matrices[name] = ((s * u / nu)[:, None], (v / nv)[None, :])
            sigmas[name] = float(s)
        vectors = {key: outputs[(key, "raw")] for key in features.vectors}
        return Prediction(
            method=self.name,
            horizon=features.horizon,
            matrices=matrices,
            vectors=vectors,
            diagnostics={"config": asdict(cfg), "groups": group_reports, "predicted_sigma": sigmas},
        )


def _loss(pred: torch.Tensor, target: torch.Tensor, kind: str, pairs: int) -> torch.Tensor:
    err = (pred - target).abs() if kind == "l1" else (pred - target).square()
    return err.sum() / pairs  # the reference: summed over entries and vectors, averaged over pairs


def _fit(
    dim: int, x_g: torch.Tensor, x_l: torch.Tensor, y: torch.Tensor, cfg: NExtConfig, pairs: int
) -> tuple[NExtNet, dict[str, Any]]:
    """Full-batch AdamW with cosine annealing; stops early when the loss stops improving."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed * 1_000_003 + dim)  # same group, same init, whatever else ran before
    net = NExtNet(dim, cfg.hidden).to(x_g.device)
    torch.random.set_rng_state(gen_state)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=cfg.epochs, eta_min=cfg.lr * cfg.min_lr_ratio
    )
    with torch.no_grad():
        zero_loss = float(_loss(torch.zeros_like(y), y, cfg.loss, pairs))
    best, best_epoch, loss_value, epoch = math.inf, 0, math.inf, 0
    for epoch in range(1, cfg.epochs + 1):
        opt.zero_grad(set_to_none=True)
        loss = _loss(net(x_g, x_l), y, cfg.loss, pairs)
        loss.backward()
        opt.step()
        sched.step()
        loss_value = float(loss.detach())
        if loss_value < best * (1 - cfg.min_improvement):
            best, best_epoch = loss_value, epoch
        elif cfg.patience and epoch - best_epoch >= cfg.patience:
            break
    with torch.no_grad():
        final = float(_loss(net(x_g, x_l), y, cfg.loss, pairs))
    return net, {
        "epochs_run": epoch,
        "stopped_early": epoch < cfg.epochs,
        "final_loss": final,
        "zero_loss": zero_loss,
        "relative_loss": final / zero_loss if zero_loss > 0 else 0.0,
        "converged": final <= 0.1 * zero_loss if zero_loss > 0 else False,  # nothing to learn: not "converged"
    }
