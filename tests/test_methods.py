"""Each method against an independent dense implementation, and the planted runs that separate them.

The dense references here stack the flattened updates ``dW_t = s B_t A_t`` of every module, take
``torch.linalg.svd`` of the stack and fit lines with ``torch.linalg.lstsq``; nothing is shared with the
library's factored code.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import nextrap
from nextrap.cli.main import main
from nextrap.ops.backtest import BacktestOptions, backtest
from nextrap.predictors import NExtConfig, RelexConfig

FAST = NExtConfig(epochs=300, patience=50)


def write_run(root: Path, steps, factors, rank: int, alpha: float, rslora: bool = False, raw=None) -> Path:
    """A TRL-layout run from explicit factors: ``factors[step][name] = (B, A)``; ``raw[step][key]`` extra tensors."""
    names = sorted({n for f in factors.values() for n in f})
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": alpha,
        "use_rslora": rslora,
        "target_modules": sorted({n.rsplit(".", 1)[-1] for n in names}),
        "lora_dropout": 0.0,
        "bias": "none",
    }
    for step in steps:
        folder = root / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        tensors = {}
        for name, (B, A) in factors[step].items():
            tensors[f"base_model.model.{name}.lora_A.weight"] = A.contiguous()
            tensors[f"base_model.model.{name}.lora_B.weight"] = B.contiguous()
        for key, value in (raw or {}).get(step, {}).items():
            tensors[key] = value.contiguous()
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps(config))
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return root


SHAPES = {"model.layers.0.self_attn.q_proj": (12, 10), "model.layers.0.mlp.down_proj": (9, 14)}


def random_run(root: Path, steps, rank: int, alpha: float, seed: int, rslora=False, raw_key=None) -> Path:
    """Factors that drift with a trend and noise (no structure a method could exploit exactly)."""
    g = torch.Generator().manual_seed(seed)
    start = {n: (torch.randn(o, rank, generator=g), torch.randn(rank, i, generator=g)) for n, (o, i) in SHAPES.items()}
    trend = {n: (torch.randn(o, rank, generator=g), torch.randn(rank, i, generator=g)) for n, (o, i) in SHAPES.items()}
    factors, raw = {}, {}
    raw0 = torch.randn(7, generator=g)
    rawd = torch.randn(7, generator=g)
    for k, step in enumerate(steps):
        factors[step] = {
            n: (
                0.1 * k * trend[n][0] + 0.3 * torch.randn(start[n][0].shape, generator=g),
                start[n][1] + 0.05 * k * trend[n][1] + 0.05 * torch.randn(start[n][1].shape, generator=g),
            )
            for n in SHAPES
        }
        if raw_key:
            raw[step] = {raw_key: raw0 + 0.1 * k * rawd + 0.02 * torch.randn(7, generator=g)}
    return write_run(root, steps, factors, rank, alpha, rslora, raw)


def dense_updates(traj: nextrap.Trajectory) -> dict[str, torch.Tensor]:
    """``{name: (K, out, in)}`` float64 scaled updates, built densely."""
    out = {}
    for name, m in traj.modules.items():
        B, A = traj.load_factors([name], torch.device("cpu"), scaled=False)
        out[name] = m.scaling * (B[0].double() @ A[0].double())
    return out


def dense_relex(X: torch.Tensor, times: torch.Tensor, t_star: float, rank: int, window: int | None, anchored: bool):
    """RELEX on a stack of updates ``X (T, ...)``: the predicted update at ``t_star`` (dense reference)."""
    T = X.shape[0]
    M = X.reshape(T, -1)
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    k = min(rank, T)
    C = U[:, :k] * S[:k]  # temporal coefficients (T, k)
    w = T if window is None else min(window, T)
    design = torch.stack([torch.ones(w, dtype=M.dtype), times[-w:].to(M.dtype)], 1)
    coef = torch.linalg.lstsq(design, C[-w:]).solution  # (2, k): intercept, slope
    if anchored:
        pred = M[-1] + (coef[1] * (t_star - times[-1])) @ Vh[:k]
    else:
        pred = (coef[0] + coef[1] * t_star) @ Vh[:k]
    return pred.reshape(X.shape[1:])


def best_rank(X: torch.Tensor, r: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(X)
    return (U[:, :r] * S[:r]) @ Vh[:r]


def written(folder: Path, traj: nextrap.Trajectory) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    t = load_file(folder / "adapter_model.safetensors")
    return {n: m.scaling * t[m.b_key].double() @ t[m.a_key].double() for n, m in traj.modules.items()}


STEPS = [10, 20, 30, 40, 50, 60, 70, 80]


@pytest.mark.parametrize(
    ("rank", "alpha", "rslora", "relex_rank", "window", "method"),
    [
        (4, 8.0, False, 1, None, "relex"),
        (3, 5.0, True, 2, None, "relex"),
        (2, 16.0, False, 1, 4, "relex"),
        (4, 8.0, False, 1, None, "relex-anchored"),
        (3, 5.0, True, 2, 3, "relex-anchored"),
    ],
)
def test_relex_matches_dense_svd_of_the_stacked_updates(tmp_path, rank, alpha, rslora, relex_rank, window, method):
    run = random_run(tmp_path / "run", STEPS, rank, alpha, seed=rank, rslora=rslora, raw_key="base_model.model.norm.bias")
    traj = nextrap.open_run(run)
    options = nextrap.ExtrapolateOptions(
        method=method, to_steps=(95, 200), relex=RelexConfig(rank=relex_rank, window=window)
    )
    res = nextrap.extrapolate(run, tmp_path / "out", options)
    dense = dense_updates(traj)
    times = torch.tensor(STEPS, dtype=torch.float64)
    anchored = method == "relex-anchored"
    for t_star in (95, 200):
        got = written(res.output / f"step-{t_star}", traj)
        for name, X in dense.items():
            pred = dense_relex(X, times, t_star, relex_rank, window, anchored)
            want = best_rank(pred, rank)  # the adapter keeps the run's rank: best rank-r approximation
            torch.testing.assert_close(got[name], want, rtol=2e-4, atol=2e-5 * float(want.abs().max()))
        # raw tensor: the same method on its deltas from the first checkpoint
        from safetensors.torch import load_file

        key = "base_model.model.norm.bias"
        R = torch.stack([load_file(run / f"checkpoint-{s}" / "adapter_model.safetensors")[key] for s in STEPS]).double()
        pred_raw = R[0] + dense_relex(R[1:] - R[0], times[1:], t_star, relex_rank, window, anchored)
        got_raw = load_file(res.output / f"step-{t_star}" / "adapter_model.safetensors")[key].double()
        torch.testing.assert_close(got_raw, pred_raw, rtol=1e-4, atol=1e-5)
    entry = res.report.outputs[1]
    assert entry.requested_step == 200 and entry.virtual_step == pytest.approx(200)
    assert entry.coef == pytest.approx((200 - 80) / res.report.horizon["steps"])
    # explained variance of the kept components, per module, as the dense SVD says
    ev = res.report.predictor["explained_variance"]
    for name, X in dense.items():
        S = torch.linalg.svdvals(X.reshape(len(STEPS), -1))
        assert ev[name] == pytest.approx(float((S[:relex_rank] ** 2).sum() / (S**2).sum()), rel=1e-6)


@pytest.mark.parametrize(("rank", "alpha", "rslora"), [(4, 8.0, False), (3, 5.0, True)])
def test_linear_and_next_match_dense_references(tmp_path, rank, alpha, rslora):
    run = random_run(tmp_path / "run", STEPS, rank, alpha, seed=10 + rank, rslora=rslora)
    traj = nextrap.open_run(run)
    dense = dense_updates(traj)
    horizon = 2
    for coef in (1.0, 2.5):
        res = nextrap.extrapolate(
            run, tmp_path / f"lin-{coef}", nextrap.ExtrapolateOptions(method="linear", coefs=(coef,), horizon=horizon)
        )
        got = written(res.output, traj)
        for name, X in dense.items():
            want = best_rank(X[-1] + coef * (X[-1] - X[-1 - horizon]), rank)
            torch.testing.assert_close(got[name], want, rtol=2e-4, atol=2e-5 * float(want.abs().max()))
    # NExt: the network is the method's own; the written update is dW_K + c * sigma u v^T, cut to rank r
    res = nextrap.extrapolate(
        run,
        tmp_path / "next",
        # a few epochs: what is checked is the write-back of the network's prediction, not its fit
        nextrap.ExtrapolateOptions(method="next", coefs=(1.5,), horizon=horizon, predictor=NExtConfig(epochs=3)),
    )
    got = written(res.output, traj)
    for name, X in dense.items():
        L, R = res.prediction.matrices[name]
        want = best_rank(X[-1] + 1.5 * (L.double() @ R.double()), rank)
        torch.testing.assert_close(got[name], want, rtol=2e-4, atol=2e-5 * float(want.abs().max()))


@pytest.mark.parametrize(
    ("rank", "alpha", "rslora", "policy", "method"),
    [
        (4, 8.0, False, "keep", "next+linear"),
        (3, 5.0, True, "grow", "next+linear"),
        (4, 8.0, False, "keep", "next-horizon+linear"),
        (3, 5.0, True, "grow", "next-horizon+linear"),
    ],
)
def test_next_plus_linear_matches_a_dense_reference(tmp_path, rank, alpha, rslora, policy, method):
    """``next+linear``: NExt's rank-1 move (the same network, fitted again by NExtPredictor; for
    ``next-horizon+linear`` on the horizon-long local moves, checked against dense SVDs below) plus the
    linear move with its top singular direction (a dense SVD here) removed; written at rank r (best rank-r
    approximation) or r + 1 (the old factors plus the move's top part)."""

    from nextrap.predictors import NExtPredictor
    from nextrap.predictors.combined import horizon_local

    key = "base_model.model.norm.bias"
    run = random_run(tmp_path / "run", STEPS, rank, alpha, seed=20 + rank, rslora=rslora, raw_key=key)
    # a trained 2-D tensor stored as it is (modules_to_save): split like a LoRA module, densely
    key2 = "base_model.model.lm_head.modules_to_save.default.weight"
    g = torch.Generator().manual_seed(rank)
    drift = torch.randn(5, 6, generator=g)
    for k, step in enumerate(STEPS):
        path = run / f"checkpoint-{step}" / "adapter_model.safetensors"
        tensors = load_file(path)
        tensors[key2] = 0.1 * k * drift + 0.05 * torch.randn(5, 6, generator=g)
        save_file(tensors, str(path))
    traj = nextrap.open_run(run)
    dense = dense_updates(traj)
    horizon, coef, config = 2, 1.5, NExtConfig(epochs=3)
    options = nextrap.ExtrapolateOptions(
        method=method, coefs=(coef,), horizon=horizon, predictor=config, rank_policy=policy
    )
    res = nextrap.extrapolate(run, tmp_path / "out", options)
    features = nextrap.compute_features(traj, horizon, torch.device("cpu"))
    if method == "next-horizon+linear":
        features = horizon_local(features)
    nxt = NExtPredictor(config).predict(traj, horizon, features)
    got = written(res.output, traj)
    for name, X in dense.items():
        L, R = nxt.matrices[name]
        lin = X[-1] - X[-1 - horizon]
        U, S, Vh = torch.linalg.svd(lin)
        move = L.double() @ R.double() + lin - S[0] * torch.outer(U[:, 0], Vh[0])
        # keep: the best rank-r approximation of the new update; grow: the old factors plus the move's top part
        want = best_rank(X[-1] + coef * move, rank) if policy == "keep" else X[-1] + best_rank(coef * move, 1)
        torch.testing.assert_close(got[name], want, rtol=2e-4, atol=2e-5 * float(want.abs().max()))
        assert res.report.predictor["removed_sigma"][name] == pytest.approx(float(S[0]), rel=1e-5)
    # a 1-D raw tensor has no singular directions: the whole of its move is the rest, moved linearly
    raw = torch.stack([load_file(run / f"checkpoint-{s}" / "adapter_model.safetensors")[key] for s in STEPS])
    got_raw = load_file(res.output / "adapter_model.safetensors")[key]
    torch.testing.assert_close(got_raw, raw[-1] + coef * (raw[-1] - raw[-1 - horizon]), rtol=1e-5, atol=1e-6)
    X2 = torch.stack([load_file(run / f"checkpoint-{s}" / "adapter_model.safetensors")[key2] for s in STEPS]).double()
    lin2 = X2[-1] - X2[-1 - horizon]
    U, S, Vh = torch.linalg.svd(lin2)
    L, R = nxt.matrices[key2]
    want2 = X2[-1] + coef * (L.double() @ R.double() + lin2 - S[0] * torch.outer(U[:, 0], Vh[0]))
    got2 = load_file(res.output / "adapter_model.safetensors")[key2].double()
    torch.testing.assert_close(got2, want2, rtol=1e-5, atol=1e-5)
    assert res.report.method == method and res.report.outputs[0].rank == rank + (policy == "grow")


def test_horizon_local_moves_match_dense_svds(tmp_path):
    """``horizon_local``: the local triplet at checkpoint t is the top triplet of ``dW_t - dW_{t-H}``
    (``dW_t`` before t = H), signed to agree with the global triplet of t; globals and targets unchanged."""
    from nextrap.predictors.combined import horizon_local

    run = random_run(tmp_path / "run", STEPS, 3, 6.0, seed=31, raw_key="base_model.model.norm.bias")
    traj = nextrap.open_run(run)
    horizon = 3
    features = nextrap.compute_features(traj, horizon, torch.device("cpu"))
    moved = horizon_local(features)
    for name, X in dense_updates(traj).items():
        f, g = moved.matrices[name], features.matrices[name]
        assert f.global_ is g.global_ and f.target is g.target
        for t in range(len(STEPS)):
            move = X[t] - (X[t - horizon] if t >= horizon else 0)
            U, S, Vh = torch.linalg.svd(move)
            u, s, v = f.local.u[t].double(), f.local.s[t].double(), f.local.v[t].double()
            assert float(s) == pytest.approx(float(S[0]), rel=1e-5)
            assert abs(float(u @ U[:, 0])) == pytest.approx(1.0, abs=1e-5)
            torch.testing.assert_close(s * torch.outer(u, v), S[0] * torch.outer(U[:, 0], Vh[0]), rtol=1e-4, atol=1e-5)
            assert float(u @ g.global_.u[t].double() + v @ g.global_.v[t].double()) >= 0
    key = "base_model.model.norm.bias"
    R = torch.stack([X for X in features.vectors[key].global_])  # deltas from the first checkpoint
    for t in range(len(STEPS)):
        want = R[t] - (R[t - horizon] if t >= horizon else 0)
        torch.testing.assert_close(moved.vectors[key].local[t], want)


def _planted(root: Path, steps, curved: bool, seed: int = 0, noise: float = 0.3) -> Path:
    """Updates along a fixed direction D (full LoRA rank, flat spectrum) with coefficient a(t) + i.i.d. noise.

    ``curved``: a(t) saturates and the direction turns, the case NExt's learned predictor is built for.
    """
    g = torch.Generator().manual_seed(seed)
    r = 4
    shapes = {f"model.layers.{i}.self_attn.{m}": (16, 16) for i in range(2) for m in ("q_proj", "v_proj")}
    base = {n: (torch.linalg.qr(torch.randn(o, r, generator=g))[0], torch.linalg.qr(torch.randn(i, r, generator=g))[0].T) for n, (o, i) in shapes.items()}
    turn = {n: torch.linalg.qr(torch.randn(o, r, generator=g))[0] for n, (o, i) in shapes.items()}
    factors = {}
    for step in steps:
        x = step / 100
        factors[step] = {}
        for n in shapes:
            Bd, A = base[n]
            if curved:
                a, angle = 3 * (1 - math.exp(-1.5 * x)), 0.8 * x
                Bd = math.cos(angle) * Bd + math.sin(angle) * turn[n]
                B = a * torch.outer(Bd[:, 0], torch.eye(r)[0]) + 0.02 * torch.randn(Bd.shape, generator=g)
            else:
                B = x * Bd + noise * torch.randn(Bd.shape, generator=g) / math.sqrt(r)
            factors[step][n] = (B, A)
    return write_run(root, steps, factors, r, float(r))


@pytest.mark.slow
def test_denoised_relex_wins_on_a_noisy_fixed_direction(tmp_path):
    """Fixed full-rank direction, linear coefficient, i.i.d. noise: the denoised line is best far ahead."""
    steps = list(range(10, 301, 10))
    run = _planted(tmp_path / "run", steps, curved=False)
    result = backtest(nextrap.open_run(run), BacktestOptions(observe_until=120, predictor=FAST))
    err = result.recommendation["mean_relative_error"]
    assert err["relex"] < min(err["relex-anchored"], err["linear"], err["next"]), err
    assert result.heldout_steps == tuple(range(130, 301, 10))
    assert any("weight-space error" in n for n in result.notes)


@pytest.mark.slow
def test_next_keeps_up_with_linear_on_a_curved_run(tmp_path):
    """A turning direction with a saturating coefficient: NExt predicts it as well as the line, far better
    than staying. (Which of the two wins is the predictor seed's call: measured over seeds 0-3, NExt
    0.69-0.76 against linear's 0.72, so the mean of two seeds is compared with a margin.)"""
    steps = list(range(10, 161, 10))
    run = _planted(tmp_path / "run", steps, curved=True)
    traj = nextrap.open_run(run)
    errors = []
    for seed in (0, 1):
        options = BacktestOptions(predictor=replace(FAST, seed=seed), methods=("next", "linear"))
        errors.append(backtest(traj, options).recommendation["mean_relative_error"])
    next_mean = sum(e["next"] for e in errors) / 2
    assert next_mean < 0.8 and next_mean < 1.1 * errors[0]["linear"], errors


def test_to_step_and_far_warning(tmp_path, caplog):
    run = random_run(tmp_path / "run", STEPS, 2, 4.0, seed=3)
    res = nextrap.extrapolate(run, tmp_path / "out", nextrap.ExtrapolateOptions(method="linear", to_steps=(500,)))
    entry = res.report.outputs[0]
    span = STEPS[-1] - STEPS[0]
    assert entry.jump_over_observed_span == pytest.approx((500 - 80) / span)
    assert entry.coef == pytest.approx((500 - 80) / res.report.horizon["steps"])
    assert any(f"{(500 - 80) / span:.1f}x the observed span" in n for n in res.report.notes)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--method", "relex", "--relex-rank", "0"], "--relex-rank 0"),
        (["--method", "relex", "--relex-window", "1"], "--relex-window 1"),
        (["--to-step", "80"], "--to-step 80"),
        (["--to-step", "90", "--coef", "1"], "not both"),
    ],
)
def test_bad_method_options_are_one_line_errors(tmp_path, args, needle):
    run = random_run(tmp_path / "run", STEPS, 2, 4.0, seed=4)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["extrapolate", str(run), "-o", str(out), *args])
    assert res.exit_code == 1, res.output
    assert needle in res.output and res.output.count("\n") == 1, res.output
    assert not out.exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_inspect_measures_match_dense(tmp_path):
    from nextrap.ops.diagnostics import diagnose

    run = random_run(tmp_path / "run", STEPS, 3, 6.0, seed=5)
    traj = nextrap.open_run(run)
    diag = diagnose(traj)
    dense = dense_updates(traj)
    for name, X in dense.items():
        S = torch.linalg.svdvals(X[-1])
        assert diag.e1[name][-1] == pytest.approx(float(S[0] / S.sum()), rel=1e-5)
        St = torch.linalg.svdvals(X.reshape(len(STEPS), -1))
        assert diag.temporal_explained[name] == pytest.approx(float(St[0] ** 2 / (St**2).sum()), rel=1e-6)
        path = sum(float((X[k] - X[k - 1]).norm()) for k in range(1, len(STEPS)))
        assert diag.straightness[name] == pytest.approx(float((X[-1] - X[0]).norm()) / path, rel=1e-5)
    pooled = torch.cat([X.reshape(len(STEPS), -1) for X in dense.values()], 1)
    St = torch.linalg.svdvals(pooled)
    summary = diag.summary()["all"]
    assert summary["temporal_explained_pooled"] == pytest.approx(float(St[0] ** 2 / (St**2).sum()), rel=1e-6)
    path = sum(float((pooled[k] - pooled[k - 1]).norm()) for k in range(1, len(STEPS)))
    assert summary["straightness_pooled"] == pytest.approx(float((pooled[-1] - pooled[0]).norm()) / path, rel=1e-5)
    res = CliRunner().invoke(main, ["inspect", str(run)])
    assert res.exit_code == 0 and "E1 = sigma_1 / sum sigma_i" in res.output and "straightness" in res.output
    # The step lengths come from the run check when it ran, else from the factors: the same numbers.
    unchecked = diagnose(nextrap.open_run(run, verify=False))
    for name, lengths in diag.step_lengths.items():
        assert unchecked.step_lengths[name] == pytest.approx(lengths, rel=1e-5)


@pytest.mark.parametrize("rescale", [False, True])
def test_truncate_keeps_the_top_part(tmp_path, rescale):
    from peft import LoraConfig  # noqa: F401  (the written config must be one PEFT reads)

    run = random_run(tmp_path / "run", STEPS[:2], 3, 6.0, seed=6)
    adapter = run / "checkpoint-20"
    traj = nextrap.open_run(run)
    args = ["truncate", str(adapter), "-o", str(tmp_path / "t"), "--rank", "1"] + (["--rescale"] if rescale else [])
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    got = written(tmp_path / "t", traj)
    full = dense_updates(traj)
    for name, X in full.items():
        U, S, Vh = torch.linalg.svd(X[-1])
        top = S[0] * torch.outer(U[:, 0], Vh[0])
        want = top * (S.norm() / S[0]) if rescale else top
        torch.testing.assert_close(got[name], want, rtol=1e-4, atol=1e-5)
    from peft.config import PeftConfig

    PeftConfig.from_pretrained(str(tmp_path / "t"))  # loads as a PEFT adapter config
    # never into the input
    res = CliRunner().invoke(main, ["truncate", str(adapter), "-o", str(adapter / "t1"), "--rank", "1"])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and not (adapter / "t1").exists()
    res = CliRunner().invoke(main, ["truncate", str(adapter), "-o", str(tmp_path / "t2"), "--rank", "0"])
    assert res.exit_code == 1 and "--rank 0" in res.output and not (tmp_path / "t2").exists()


def test_cli_backtest_far_targets(tmp_path):
    run = random_run(tmp_path / "run", STEPS, 2, 4.0, seed=8)
    methods = ["--method", "linear", "--method", "relex", "--method", "relex-anchored"]
    res = CliRunner().invoke(main, ["backtest", str(run), "--observe-until", "40", "--json", *methods])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["fit_steps"] == [10, 20, 30, 40] and data["heldout_steps"] == [50, 60, 70, 80]
    assert {s["method"] for s in data["scores"]} == {"linear", "relex", "relex-anchored"}
    assert any("weight-space error" in n for n in data["notes"])
    res = CliRunner().invoke(main, ["backtest", str(run), "--observe-until", "80", *methods])
    assert res.exit_code == 1 and "no checkpoint after it" in res.output and res.output.count("\n") == 1


def test_public_functions_survive_importing_their_modules():
    import nextrap.ops.backtest
    import nextrap.ops.extrapolate

    assert callable(nextrap.extrapolate) and callable(nextrap.backtest)
    assert nextrap.extrapolate is nextrap.ops.extrapolate.extrapolate and nextrap.backtest is nextrap.ops.backtest.backtest


def test_next_plus_linear_reuses_the_next_fit_of_a_backtest(tmp_path, monkeypatch):
    """In one backtest (one SharedFeatures), next and next+linear share NExt's fit: it runs once, and
    next+linear's rank-1 column is next's prediction exactly."""
    from nextrap.predictors import NExtPredictor, make_predictor
    from nextrap.predictors import next as next_module
    from nextrap.run.trajectory import SharedFeatures

    run = random_run(tmp_path / "run", STEPS, 3, 6.0, seed=32)
    traj = nextrap.open_run(run)
    fits = []
    real = next_module._predict_group
    monkeypatch.setattr(next_module, "_predict_group", lambda *a: fits.append(1) or real(*a))
    shared = SharedFeatures(traj, 2, torch.device("cpu"))
    config = NExtConfig(epochs=3)
    nxt = NExtPredictor(config).predict(traj, 2, shared)
    groups = len(fits)
    combined = make_predictor("next+linear", config).predict(traj, 2, shared)
    assert len(fits) == groups > 0 and nxt.method == "next" and combined.method == "next+linear"
    for name, (L, R) in nxt.matrices.items():
        torch.testing.assert_close(combined.matrices[name][0][:, :1], L, rtol=0, atol=0)
        torch.testing.assert_close(combined.matrices[name][1][:1], R, rtol=0, atol=0)
    make_predictor("next-horizon+linear", config).predict(traj, 2, shared)  # other inputs: fitted anew
    assert len(fits) == 2 * groups
