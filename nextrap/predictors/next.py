"""NExt: a small nonlinear predictor per vector length, trained on the run's own rank-1 features.

For every vector length d (each ``u`` of modules with ``out = d``, each ``v`` with ``in = d``, all
sigmas as ``d = 1``, 1-D tensors of length d) one :class:`NExtNet` maps the global and local feature
vectors at checkpoint k to the target feature at k (the rank-1 part of the next ``horizon``
intervals). Trained on every pair with ``k + horizon <= K``, it is then fed the last checkpoint.
Long vectors (2048 entries or more by default) are first described in their own frame, the few
directions their history moves in (:mod:`nextrap.predictors.frames`), so the network is 16 numbers wide
instead of ``d``. By default the network also gets the latest move as a skip connection and stops when
the held-out most recent pair stops improving.

Its settings are :class:`~nextrap.predictors.config.NExtConfig` and its presets (``auto``, the
default; ``frames``; ``reference``, the paper's scripts), described there.

The report says, per group, the epochs run, the seconds, why the fit stopped, and the final loss
relative to predicting zeros: how far the fit got.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nextrap.predictors.base import Prediction
from nextrap.predictors.config import NExtConfig
from nextrap.predictors.frames import Frames, history_frames
from nextrap.predictors.next_fit import fit_network, group_loss, threads
from nextrap.run.trajectory import Features, SharedFeatures, Trajectory
from nextrap.util.progress import Progress, no_progress

if TYPE_CHECKING:
    from nextrap.predictors.registry import MethodSettings

__all__ = ["NExtNet", "NExtPredictor", "features_at"]

logger = logging.getLogger(__name__)



class NExtNet(nn.Module):
    """The reference architecture: two branches for the global and local vectors, then a combiner.

    Each branch is ``Linear(d,h) -> Linear(h,n) -> ReLU -> Linear(n,h) -> Linear(h,d)``; the combiner
    ``Linear(2d,h) -> Linear(h,2n) -> ReLU -> Linear(2n,h) -> Linear(h,d)``. In the paper the ReLU
    layer is as wide as the vectors (``n = d``, the default); a network on a narrow frame keeps a wider
    one (``inner``), else its only nonlinearity would have a handful of units. Input and output
    ``(N, d)`` float32.

    ``residual`` (a nextrap option, not in the paper) adds ``gain * local`` to the output, with the
    combiner's last layer starting at zero and ``gain`` at 1: the network starts from "the next move
    repeats the latest one" and learns corrections to it, instead of having to learn that map through
    its 256-wide bottleneck first.
    """

    def __init__(self, dim: int, hidden: int = 256, inner: int | None = None, residual: bool = False):
        super().__init__()
        n = inner or dim

        def branch(d_in: int, n_mid: int, d_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(d_in, hidden),
                nn.Linear(hidden, n_mid),
                nn.ReLU(),
                nn.Linear(n_mid, hidden),
                nn.Linear(hidden, d_out),
            )

        self.global_branch = branch(dim, n, dim)
        self.local_branch = branch(dim, n, dim)
        self.combine = branch(2 * dim, 2 * n, dim)
        self.gain = nn.Parameter(torch.ones(())) if residual else None
        if residual:
            nn.init.zeros_(self.combine[-1].weight)
            nn.init.zeros_(self.combine[-1].bias)

    def forward(self, global_: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        out = self.combine(torch.cat([self.global_branch(global_), self.local_branch(local)], dim=-1))
        return out if self.gain is None else out + self.gain * local


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


def features_at(
    features: SharedFeatures | Features | None,
    trajectory: Trajectory,
    horizon: int,
    device: torch.device,
    progress: Progress,
) -> Features:
    """The run's features at ``horizon``: the shared ones (computed now if nobody has yet), or computed here."""
    if features is None:
        features = SharedFeatures(trajectory, horizon, device, progress=progress)
    if isinstance(features, SharedFeatures):
        features = features.get()
    if features.horizon != horizon:
        raise ValueError(f"features computed at horizon {features.horizon}, predicting at horizon {horizon}")
    return features


def _rms(x: torch.Tensor) -> torch.Tensor:
    r = x.square().mean().sqrt()
    return torch.where(r > 0, r, torch.ones_like(r))


class NExtPredictor:
    """Fits one :class:`NExtNet` per vector length and predicts the next horizon's rank-1 update."""

    name = "next"

    def __init__(self, config: NExtConfig | None = None):
        self.config = config or NExtConfig()

    def predict(
        self,
        trajectory: Trajectory,
        horizon: int,
        features: SharedFeatures | Features | None = None,
        device: torch.device | None = None,
        progress: Progress = no_progress,
    ) -> Prediction:
        """Fit one network per vector length on the features, then predict the next horizon's rank-1 move."""
        device = device or torch.device("cpu")
        shared = features if isinstance(features, SharedFeatures) else None
        key = ("next", self.config, str(device))
        if shared is not None and key in shared.derived:  # the same fit on the same features: it is deterministic
            return replace(shared.derived[key], method=self.name)
        features = features_at(features, trajectory, horizon, device, progress)
        prediction = self._predict(features, device, progress)
        if shared is not None:
            shared.derived[key] = prediction
        return prediction

    def _predict(self, features: Features, device: torch.device, progress: Progress) -> Prediction:
        cfg = self.config
        outputs: dict[tuple[str, str], torch.Tensor] = {}
        group_reports = []
        for dim, grp in progress(list(_collect_groups(features).items()), "NExt predictor groups"):
            pred, report = _predict_group(grp, features.pairs, cfg)
            for i, item in enumerate(grp.items):
                outputs[item] = pred[i]
            group_reports.append(report)
            logger.info(
                "group d=%d (network width %d): %d epochs in %.2f s (%s), loss %.4g (%.3g of predicting zeros)",
                dim,
                report["width"],
                report["epochs_run"],
                report["seconds"],
                report["stop_reason"],
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


def _predict_group(grp: _Group, pairs: int, cfg: NExtConfig) -> tuple[torch.Tensor, dict[str, Any]]:
    """Fit one group's network and predict each item's target from the last checkpoint: ``(items, d)``."""
    frames = None
    if cfg.frame and grp.dim >= cfg.frame_min_dim:
        frames, (G, Lc, T) = _framed(grp, cfg.frame)
    else:
        G = torch.stack(grp.global_)  # (items, K, d)
        Lc = torch.stack(grp.local)
        T = torch.stack(grp.target)  # (items, P, d)
    width = G.shape[-1]
    x_g, x_l, y = G[:, :pairs].reshape(-1, width), Lc[:, :pairs].reshape(-1, width), T.reshape(-1, width)
    if cfg.normalize:
        sg, sl, st = _rms(x_g), _rms(x_l), _rms(y)
    else:
        sg = sl = st = torch.ones((), device=G.device)
    inner = max(width, cfg.inner) if frames is not None else None
    net, report = _fit(grp.dim, width, inner, x_g / sg, x_l / sl, y / st, cfg, pairs)
    with torch.no_grad():
        pred = net(G[:, -1] / sg, Lc[:, -1] / sl) * st  # (items, width)
    if frames is not None:
        pred = frames.lift(pred[:, None])[:, 0]
        report.update(frame_kept_energy=float(frames.kept_energy.mean()))
    report.update(dim=grp.dim, width=width, vectors=len(grp.items), rows=int(x_g.shape[0]))
    return pred, report


# Histories framed at once, in bytes of float32 rows: each vector's frame is its own, so the group is
# framed a slice of vectors at a time and only the coordinates (``size`` per row) and the bases are kept.
# Stacking and framing a whole group at once held it three more times (stacked, joined, float64): 1 GB
# for the 4096-long group of a 7B-shaped run.
_FRAME_BATCH_BYTES = 32 * 2**20


def _framed(grp: _Group, size: int) -> tuple[Frames, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The group's frames and its global, local and target rows in frame coordinates ``(items, n, size)``."""
    rows = grp.global_[0].shape[0] + grp.local[0].shape[0] + grp.target[0].shape[0]
    step = max(1, _FRAME_BATCH_BYTES // (rows * grp.dim * 4))
    parts: list[tuple[Frames, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for i in range(0, len(grp.items), step):
        G, Lc, T = (torch.stack(x[i : i + step]) for x in (grp.global_, grp.local, grp.target))
        frames = history_frames(torch.cat([G, Lc, T], 1), G[:, -1], size)
        parts.append((frames, frames.project(G), frames.project(Lc), frames.project(T)))
    frames = Frames(
        basis=torch.cat([p[0].basis for p in parts]), kept_energy=torch.cat([p[0].kept_energy for p in parts])
    )
    return frames, tuple(torch.cat([p[k] for p in parts]) for k in (1, 2, 3))


def _fit(
    dim: int,
    width: int,
    inner: int | None,
    x_g: torch.Tensor,
    x_l: torch.Tensor,
    y: torch.Tensor,
    cfg: NExtConfig,
    pairs: int,
) -> tuple[NExtNet, dict[str, Any]]:
    """Train one group's network, ``width`` wide (:func:`fit_network`), and report how far it got."""

    def make_net() -> NExtNet:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(cfg.seed * 1_000_003 + dim)  # same group, same init, whatever else ran before
        net = NExtNet(width, cfg.hidden, inner, cfg.residual)
        torch.random.set_rng_state(gen_state)
        net = net.to(x_g.device)
        return net

    with threads(cfg.threads):
        net, report = fit_network(make_net, x_g, x_l, y, pairs, cfg.fit_settings(width))
        with torch.no_grad():
            final = float(group_loss(net(x_g, x_l), y, cfg.loss, pairs))
            zero_loss = float(group_loss(torch.zeros_like(y), y, cfg.loss, pairs))
    report.update(
        lr=cfg.group_lr(width),
        parameters=sum(p.numel() for p in net.parameters()),
        seconds_per_epoch=report["seconds"] / max(1, report["epochs_run"]),
        stopped_early=report["stop_reason"] not in ("max_epochs", "fixed_epochs"),
        final_loss=final,
        zero_loss=zero_loss,
        relative_loss=final / zero_loss if zero_loss > 0 else 0.0,
        converged=final <= 0.1 * zero_loss if zero_loss > 0 else False,  # nothing to learn: not "converged"
    )
    return net, report


def build(name: str, settings: MethodSettings) -> NExtPredictor:
    """The registry's builder (:mod:`nextrap.predictors.registry`)."""
    return NExtPredictor(settings.next)
