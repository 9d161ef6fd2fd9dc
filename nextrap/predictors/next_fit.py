"""Training one NExt network: full-batch AdamW on a cosine schedule, and the rule that stops it.

Three stopping rules:

* ``fixed``: run every epoch (the paper's schedule);
* ``train``: stop when the training loss has not improved by ``min_improvement`` (relative) for
  ``patience`` epochs;
* ``holdout``: hold out the most recent training pair (the one closest to the checkpoint the
  network is finally fed), train on the others, and stop when the loss on the held-out pair has not
  improved for ``patience`` epochs. The network is then retrained from the same initialization on
  every pair for the best epoch count (``refit``), or kept as it was at the best epoch.

The training loss keeps falling long after the held-out loss has stopped (with a few pairs the network
memorizes them), so ``train`` runs most groups to the epoch limit; ``holdout`` stops where more
epochs stop helping the prediction.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from nextrap.predictors.config import FitSettings

__all__ = ["cosine_lr", "fit_network", "group_loss", "threads"]

def cosine_lr(epoch: int, settings: FitSettings) -> float:
    """Learning rate of the step taken in ``epoch`` (0-based): cosine from ``lr`` to ``min_lr_ratio * lr``.

    The same values as ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=epochs, eta_min=...)``
    stepped once per epoch.
    """
    lo = settings.lr * settings.min_lr_ratio
    return lo + (settings.lr - lo) * (1 + math.cos(math.pi * epoch / settings.epochs)) / 2


def group_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, pairs: int) -> torch.Tensor:
    """The reference loss: entries' absolute (l1) or squared (l2) errors summed, divided by ``pairs``."""
    err = (pred - target).abs() if kind == "l1" else (pred - target).square()
    return err.sum() / pairs


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads (0: leave torch's setting), then restore it."""
    before = torch.get_num_threads()
    if count > 0 and count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


EpochHook = Callable[[int, float, float], None]


def fit_network(
    make_net: Callable[[], nn.Module],
    x_g: torch.Tensor,
    x_l: torch.Tensor,
    y: torch.Tensor,
    pairs: int,
    settings: FitSettings,
    on_epoch: EpochHook | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a fresh network from ``make_net()`` on rows ``(global, local) -> target``.

    Args:
        make_net: builds the network, initialized the same way on every call.
        x_g, x_l, y: ``(items * pairs, d)`` float32; row ``i * pairs + k`` is item ``i`` at pair ``k``.
        pairs: training pairs per item; the loss divides by it.
        settings: optimizer, schedule and stopping rule.
        on_epoch: called after every optimizer step with ``(epoch, lr, training loss)`` (epoch 1-based).

    Returns:
        The trained network and a JSON-able report: ``epochs_run`` (optimizer steps, refit included),
        ``best_epoch``, ``stop_reason``, ``seconds``, ``holdout_relative_loss`` (held-out pair's loss at
        the best epoch over predicting zeros; ``None`` without a held-out pair).
    """
    t0 = time.perf_counter()
    s = settings
    rule, notes = _stop_rule(s, pairs)
    if rule == "holdout":
        last = torch.arange(x_g.shape[0], device=x_g.device) % pairs == pairs - 1
        fitted = (x_g[~last], x_l[~last], y[~last])
        heldout = (x_g[last], x_l[last], y[last])
        fit_pairs = pairs - 1
    else:
        fitted, heldout, fit_pairs = (x_g, x_l, y), None, pairs
    net = make_net()
    first = _train(net, *fitted, fit_pairs, s, rule, heldout, on_epoch)
    report: dict[str, Any] = {
        "stop_rule": rule,
        "best_epoch": first["best_epoch"],
        "stop_reason": first["stop_reason"],
        "holdout_relative_loss": first.get("holdout_relative_loss"),
    }
    epochs_run = first["epochs"]
    if rule == "holdout":
        if s.refit:
            # Same initialization, every pair, the epoch count the held-out pair chose, no stopping.
            net = make_net()
            refit = replace_epochs(s, first["best_epoch"])
            second = _train(net, x_g, x_l, y, pairs, refit, "fixed", None, on_epoch, offset=epochs_run)
            epochs_run += second["epochs"]
        elif first["best_state"] is not None:
            net.load_state_dict(first["best_state"])
    report.update(epochs_run=epochs_run, notes=notes, seconds=time.perf_counter() - t0)
    return net, report


def _stop_rule(settings: FitSettings, pairs: int) -> tuple[str, list[str]]:
    """The stopping rule that applies (``fixed`` without patience, ``train`` when there is no pair to
    hold out), with a note when it differs from the one asked for."""
    rule = settings.stop if settings.patience > 0 else "fixed"
    if rule == "holdout" and pairs < 2:
        return "train", ["one training pair: nothing to hold out, stopped on the training loss instead"]
    return rule, []


def replace_epochs(settings: FitSettings, epochs: int) -> FitSettings:
    from dataclasses import replace

    return replace(settings, epochs=max(1, epochs))


def _train(
    net: nn.Module,
    x_g: torch.Tensor,
    x_l: torch.Tensor,
    y: torch.Tensor,
    pairs: int,
    s: FitSettings,
    rule: str,
    heldout: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    on_epoch: EpochHook | None,
    offset: int = 0,
) -> dict[str, Any]:
    opt = _optimizer(net, x_g.device, s)
    forward = _forward(net, x_g.device, s.precision)
    val_zero = None
    if heldout is not None:
        val_zero = float(group_loss(torch.zeros_like(heldout[2]), heldout[2], s.loss, 1))
    best, best_epoch, best_state, reason = math.inf, 0, None, "max_epochs"
    epoch = 0
    for epoch in range(1, s.epochs + 1):
        lr = cosine_lr(epoch - 1, s)
        loss_value = _optimizer_step(opt, lr, lambda: group_loss(forward(x_g, x_l), y, s.loss, pairs))
        if on_epoch is not None:
            on_epoch(offset + epoch, lr, loss_value)
        if rule == "fixed":
            continue
        if heldout is not None:
            with torch.no_grad():
                watched = float(group_loss(forward(heldout[0], heldout[1]), heldout[2], s.loss, 1))
        else:
            watched = loss_value
        if not math.isfinite(watched):
            reason = "diverged"
            break
        if watched < best * (1 - s.min_improvement):
            best, best_epoch = watched, epoch
            if heldout is not None and not s.refit:
                best_state = copy.deepcopy(net.state_dict())
        elif epoch - best_epoch >= s.patience:
            reason = "holdout_plateau" if heldout is not None else "train_plateau"
            break
    if rule == "fixed":
        best_epoch, reason = epoch, "fixed_epochs"
    out: dict[str, Any] = {"epochs": epoch, "best_epoch": best_epoch, "stop_reason": reason}
    if heldout is not None:
        out["best_state"] = best_state
        out["holdout_relative_loss"] = best / val_zero if val_zero else 0.0
    return out


def _optimizer(net: nn.Module, device: torch.device, s: FitSettings) -> torch.optim.AdamW:
    # fused: one kernel for all parameters instead of a dozen ops per tensor (same update rule)
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(
        list(net.parameters()), lr=cosine_lr(0, s), weight_decay=s.weight_decay, fused=fused
    )


def _forward(net: nn.Module, device: torch.device, precision: str) -> Callable[..., torch.Tensor]:
    """``net(a, b)`` in ``precision`` (bfloat16 under autocast), returned as float32."""
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bfloat16"
        else contextlib.nullcontext()
    )

    def forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with autocast:
            out = net(a, b)
        return out.float()

    return forward


def _optimizer_step(opt: torch.optim.Optimizer, lr: float, loss_fn: Callable[[], torch.Tensor]) -> float:
    """One full-batch step at learning rate ``lr``; returns the loss before the step."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    opt.step()
    return float(loss.detach())
