"""The NExt predictor's training loop: the reference schedule exactly, and the early stopping by behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from nextrap.errors import ConfigError
from nextrap.predictors import NExtConfig, NExtNet
from nextrap.predictors.next_fit import fit_network, group_loss, threads


def _problem(rows: int = 12, dim: int = 3, seed: int = 0, noise_only: bool = False):
    g = torch.Generator().manual_seed(seed)
    x_g, x_l = torch.randn(rows, dim, generator=g), torch.randn(rows, dim, generator=g)
    y = torch.randn(rows, dim, generator=g) if noise_only else 0.5 * x_g + 0.3 * x_l
    return x_g, x_l, y


def _net_factory(dim: int, hidden: int = 8, seed: int = 0):
    def make() -> NExtNet:
        torch.manual_seed(seed)
        return NExtNet(dim, hidden)

    return make


def test_reference_preset_runs_the_papers_exact_schedule():
    cfg = NExtConfig.from_preset("reference")
    x_g, x_l, y = _problem()
    seen: list[tuple[int, float]] = []
    _, report = fit_network(
        _net_factory(3),
        x_g,
        x_l,
        y,
        pairs=4,
        settings=cfg.fit_settings(),
        on_epoch=lambda e, lr, _: seen.append((e, lr)),
    )
    assert report["epochs_run"] == 1000 and report["stop_reason"] == "fixed_epochs"
    assert [e for e, _ in seen] == list(range(1, 1001))
    # by hand: cosine from 2e-5 down to 0.1 * 2e-5 over 1000 epochs, one step per epoch
    for e, lr in seen:
        expected = 2e-6 + (2e-5 - 2e-6) * (1 + math.cos(math.pi * (e - 1) / 1000)) / 2
        assert lr == pytest.approx(expected, rel=1e-12)
    assert seen[0][1] == pytest.approx(2e-5) and seen[500][1] == pytest.approx(1.1e-5)
    # and the same values as torch's own scheduler stepped once per epoch
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000, eta_min=2e-6)
    for _, lr in seen:
        assert lr == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        sched.step()


def test_reference_step_is_one_full_batch_adamw_step_by_hand():
    cfg = NExtConfig.from_preset("reference", epochs=1)
    x_g, x_l, y = _problem()
    make = _net_factory(3)
    net0 = make()
    loss = (net0(x_g, x_l) - y).abs().sum() / 4  # L1 summed over entries, divided by the pairs
    grads = torch.autograd.grad(loss, list(net0.parameters()))
    net1, _ = fit_network(make, x_g, x_l, y, pairs=4, settings=cfg.fit_settings())
    lr, wd, eps = 2e-5, 0.01, 1e-8
    for p0, g, p1 in zip(net0.parameters(), grads, net1.parameters(), strict=True):
        # first AdamW step: decoupled decay, then m_hat / (sqrt(v_hat) + eps) = g / (|g| + eps)
        expected = p0.detach() * (1 - lr * wd) - lr * g / (g.abs() + eps)
        torch.testing.assert_close(p1.detach(), expected, rtol=1e-5, atol=1e-9)


def test_holdout_rule_stops_on_a_plateau_and_says_why():
    # targets unrelated to the inputs: the held-out pair's loss cannot keep improving
    x_g, x_l, y = _problem(rows=40, dim=4, noise_only=True)
    settings = NExtConfig(
        stop="holdout", refit=True, epochs=2000, patience=15, min_improvement=1e-3, lr=1e-2
    ).fit_settings()
    _, report = fit_network(_net_factory(4), x_g, x_l, y, pairs=4, settings=settings)
    assert report["stop_reason"] == "holdout_plateau"
    first_pass = report["epochs_run"] - report["best_epoch"]  # the refit adds best_epoch epochs
    assert first_pass - report["best_epoch"] >= 15  # stopped `patience` epochs after the best
    assert report["epochs_run"] < 500
    assert (
        report["holdout_relative_loss"] > 0.5
    )  # nothing learnable: no better than predicting zeros, roughly


def test_holdout_rule_trains_on_while_the_heldout_pair_improves():
    g = torch.Generator().manual_seed(0)
    x_g, x_l = torch.randn(40, 4, generator=g).abs(), torch.randn(40, 4, generator=g).abs()
    y = 0.5 * x_g + 0.3 * x_l  # learnable: the held-out pair's loss falls for a while
    settings = NExtConfig(
        stop="holdout", refit=True, epochs=300, patience=15, min_improvement=1e-3, lr=3e-3
    ).fit_settings()
    _, report = fit_network(_net_factory(4, hidden=16), x_g, x_l, y, pairs=4, settings=settings)
    assert report["stop_reason"] == "holdout_plateau" and report["best_epoch"] >= 20
    # first pass: best epoch + patience; refit: best epoch
    assert report["epochs_run"] == 2 * report["best_epoch"] + 15
    assert report["holdout_relative_loss"] < 0.5


def test_train_rule_stops_when_the_training_loss_stops_improving():
    x_g, x_l, y = _problem(rows=8, dim=3)
    # a learning rate too small to move the loss by 0.1% per `patience` epochs
    settings = NExtConfig(stop="train", epochs=1000, patience=10, lr=1e-9).fit_settings()
    _, report = fit_network(_net_factory(3), x_g, x_l, y, pairs=2, settings=settings)
    assert report["stop_reason"] == "train_plateau" and report["epochs_run"] == 11


def test_one_pair_falls_back_to_the_training_loss_with_a_note():
    x_g, x_l, y = _problem(rows=5, dim=3)
    settings = NExtConfig(stop="holdout", epochs=30, patience=5).fit_settings()
    _, report = fit_network(_net_factory(3), x_g, x_l, y, pairs=1, settings=settings)
    assert report["stop_rule"] == "train" and "one training pair" in report["notes"][0]


def test_without_refit_the_best_heldout_weights_are_kept():
    x_g, x_l, y = _problem(rows=40, dim=4, noise_only=True)
    settings = NExtConfig(
        stop="holdout", epochs=400, patience=20, min_improvement=1e-3, lr=1e-2, refit=False
    ).fit_settings()
    net, report = fit_network(_net_factory(4), x_g, x_l, y, pairs=4, settings=settings)
    last = torch.arange(40) % 4 == 3
    with torch.no_grad():
        held = float(group_loss(net(x_g[last], x_l[last]), y[last], "l1", 1))
        zero = float(group_loss(torch.zeros_like(y[last]), y[last], "l1", 1))
    assert held / zero == pytest.approx(report["holdout_relative_loss"], rel=1e-5)
    assert report["epochs_run"] == report["best_epoch"] + 20


def test_threads_setting_is_restored():
    before = torch.get_num_threads()
    with threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_bfloat16_fit_learns_as_well_as_float32():
    g = torch.Generator().manual_seed(0)
    x_g, x_l = torch.randn(40, 4, generator=g).abs(), torch.randn(40, 4, generator=g).abs()
    y = 0.5 * x_g + 0.3 * x_l
    losses = {}
    for precision in ("float32", "bfloat16"):
        settings = NExtConfig(epochs=200, patience=0, lr=3e-3, precision=precision).fit_settings()
        net, _ = fit_network(_net_factory(4, hidden=16), x_g, x_l, y, pairs=4, settings=settings)
        with torch.no_grad():
            losses[precision] = float(group_loss(net(x_g, x_l), y, "l1", 4) / group_loss(0 * y, y, "l1", 4))
    assert losses["float32"] < 0.5  # it learned (predicting zeros scores 1)
    assert abs(losses["bfloat16"] - losses["float32"]) < 0.05


def test_learning_rate_cap_falls_with_network_width():
    capped = NExtConfig(lr=3e-3, lr_dim_scale=1.5)
    assert capped.group_lr(1) == capped.group_lr(8) == capped.group_lr(192) == 3e-3  # below 1.5 / 3e-3 = 500
    assert capped.group_lr(576) == pytest.approx(1.5 / 576)
    assert capped.group_lr(18944) == pytest.approx(7.918e-5, rel=1e-3)
    for preset in ("auto", "frames"):
        assert NExtConfig.from_preset(preset).group_lr(18944) == 1e-3
    assert NExtConfig.from_preset("reference").group_lr(18944) == 2e-5


def test_presets_are_what_their_docs_say():
    auto, frames, ref = (NExtConfig.from_preset(p) for p in ("auto", "frames", "reference"))
    assert auto == NExtConfig()  # the dataclass defaults are the default preset
    fields = ("frame", "frame_min_dim", "lr", "epochs", "stop", "patience", "refit", "normalize", "residual")
    assert tuple(getattr(auto, f) for f in fields) == (16, 2048, 1e-3, 1000, "holdout", 30, False, True, True)
    assert tuple(getattr(frames, f) for f in fields) == (16, 512, 1e-3, 1000, "holdout", 30, False, True, True)
    assert tuple(getattr(ref, f) for f in fields) == (0, 2048, 2e-5, 1000, "fixed", 0, False, False, False)
    with pytest.raises(ConfigError, match="frame"):
        NExtConfig(frame=-1)


def test_residual_network_starts_as_the_latest_move_and_learns_corrections():
    torch.manual_seed(0)
    net = NExtNet(5, hidden=8, residual=True)
    x_g, x_l, _ = _problem(rows=6, dim=5)
    with torch.no_grad():
        torch.testing.assert_close(net(x_g, x_l), x_l, rtol=0, atol=0)  # untrained: the latest move, exactly
    # A target the skip alone cannot give (it needs the global input): training must move off the identity.
    y = 0.5 * x_g + 0.3 * x_l
    cfg = NExtConfig(epochs=400, patience=0, residual=True)

    def make() -> NExtNet:
        torch.manual_seed(0)
        return NExtNet(5, hidden=8, residual=True)

    fitted, _ = fit_network(make, x_g, x_l, y, pairs=1, settings=cfg.fit_settings())
    with torch.no_grad():
        start = float(group_loss(x_l, y, "l1", 1))
        end = float(group_loss(fitted(x_g, x_l), y, "l1", 1))
    assert end < 0.5 * start  # 20.5 -> 6.0 when written
    plain = NExtNet(5, hidden=8)
    with torch.no_grad():
        assert plain.gain is None and float(group_loss(plain(x_g, x_l), x_l, "l1", 1)) > 0  # no skip without it
