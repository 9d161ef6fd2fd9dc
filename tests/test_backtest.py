"""Baselines, backtesting and diagnostics: against dense computations and planted trajectories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import nextrap
from nextrap.cli.main import main
from nextrap.ops.backtest import BacktestOptions, backtest
from nextrap.ops.diagnostics import diagnose
from nextrap.predictors import LinearPredictor, NExtConfig, RelexPredictor, line_fit
from nextrap.testing.synthetic import PlantSpec, llama_like_shapes, write_synthetic_run

SHAPES = llama_like_shapes(layers=1, hidden=32, intermediate=64, kv_dim=16)
STEPS = list(range(10, 161, 10))
FAST = NExtConfig(epochs=300, patience=50)


def _run(tmp_path: Path, name: str, **spec) -> Path:
    plant = PlantSpec(**{"rank": 4, "alpha": 8.0, "tau": 100.0, "turn": 0.0, "seed": 0, **spec})
    return write_synthetic_run(tmp_path / name, STEPS, SHAPES, plant)


def _dense(traj: nextrap.Trajectory, index: int) -> dict[str, torch.Tensor]:
    B, A = {}, {}
    for name in traj.modules:
        b, a = traj.load_factors([name], torch.device("cpu"), [index])
        B[name], A[name] = b[0, 0], a[0, 0]
    return {n: B[n] @ A[n] for n in B}


def _dense_adapter(folder: Path) -> dict[str, torch.Tensor]:
    """Scaled dW = s B A of every module of one adapter folder."""
    from nextrap.layouts import CheckpointRef
    from nextrap.run.adapters import open_adapter, read_header

    ref = CheckpointRef(0, folder, folder / "adapter_model.safetensors", "explicit", "given")
    header = read_header(ref)
    with open_adapter(ref) as reader:
        return {n: m.scaling * reader.get(m.b_key) @ reader.get(m.a_key) for n, m in header.modules.items()}


def test_line_fit_by_hand():
    t = torch.tensor([0.0, 1.0, 2.0, 3.0])
    a = torch.tensor([[1.0, 3.0, 5.0, 7.0], [0.0, 1.0, 0.0, 1.0]])
    intercept, slope, r2 = line_fit(t, a)
    torch.testing.assert_close(slope, torch.tensor([2.0, 0.2]))
    torch.testing.assert_close(intercept, torch.tensor([1.0, 0.2]))
    assert r2[0] == pytest.approx(1.0) and r2[1] == pytest.approx(0.2)  # 1 - 0.8 / 1.0


def test_linear_prediction_is_the_last_horizon_update(tmp_path: Path):
    traj = nextrap.open_run(_run(tmp_path, "run", curve="saturating", turn=0.3))
    pred = LinearPredictor().predict(traj, horizon=3)
    last, before = _dense(traj, len(STEPS) - 1), _dense(traj, len(STEPS) - 4)
    assert set(pred.combinations) == set(traj.modules) and not pred.matrices  # no factors held
    for name in traj.modules:
        move = _dense_move(pred, traj, name, 0.0, 1.0).float()
        torch.testing.assert_close(move, last[name] - before[name], rtol=1e-5, atol=1e-6)


def _dense_move(pred, traj, name: str, offset: float, direction: float) -> torch.Tensor:
    L, R = pred.factors(traj, [name], torch.device("cpu"), offset, direction)
    return L[0].double() @ R[0].double()


@pytest.mark.parametrize("method", ["relex", "relex-anchored"])
def test_relex_recovers_an_exactly_linear_rank1_run(tmp_path: Path, method: str):
    """With a fixed direction, a straight coefficient line and no noise, RELEX's jump is exact (both modes)."""
    traj = nextrap.open_run(_run(tmp_path, "run", curve="linear", noise=0.0))
    pred = RelexPredictor(mode="denoised" if method == "relex" else "anchored").predict(traj, horizon=5)
    assert pred.diagnostics["median_line_r2"] == pytest.approx(1.0, abs=1e-6)
    assert pred.diagnostics["median_explained_variance"] == pytest.approx(1.0, abs=1e-6)
    last, before = _dense(traj, len(STEPS) - 1), _dense(traj, len(STEPS) - 6)
    for name in traj.modules:
        move = _dense_move(pred, traj, name, 1.0, 1.0)
        torch.testing.assert_close(move.float(), last[name] - before[name], rtol=1e-4, atol=1e-5)


def test_scores_agree_with_dense_computation(tmp_path: Path):
    traj = nextrap.open_run(_run(tmp_path, "run", curve="saturating", turn=0.3, noise=0.2))
    result = backtest(traj, BacktestOptions(holdout=4, methods=("linear", "relex")))
    fit_end = len(STEPS) - 5  # index of the prefix's last checkpoint
    fit = traj.prefix(fit_end + 1)
    base = {n: m.double() for n, m in _dense(traj, fit_end).items()}
    horizon_steps = result.horizon_steps
    for method, predictor in (("linear", LinearPredictor()), ("relex", RelexPredictor())):
        pred = predictor.predict(fit, result.horizon)
        off = {n: _dense_move(pred, fit, n, 1.0, 0.0) for n in traj.modules}
        D = {n: _dense_move(pred, fit, n, 0.0, 1.0) for n in traj.modules}
        if method == "relex":
            assert sum(float(o.norm()) for o in off.values()) > 0  # denoised: it does move off the checkpoint
        for row in result.summary()[method]:
            j = STEPS.index(row["step"])
            c = (row["step"] - STEPS[fit_end]) / horizon_steps
            true = {n: m.double() - base[n] for n, m in _dense(traj, j).items()}
            P = {n: off[n] + c * D[n] for n in D}
            err = sum(float((P[n] - true[n]).square().sum()) for n in D) ** 0.5
            norm = sum(float(true[n].square().sum()) for n in D) ** 0.5
            inner = sum(float((P[n] * true[n]).sum()) for n in D)
            pnorm = sum(float(P[n].square().sum()) for n in D) ** 0.5
            best = sum(float((D[n] * (true[n] - off[n])).sum()) for n in D) / sum(float(D[n].square().sum()) for n in D)
            assert row["coef"] == pytest.approx(c)
            assert row["relative_error"] == pytest.approx(err / norm, rel=1e-4)
            assert row["cosine"] == pytest.approx(inner / (pnorm * norm), rel=1e-4)
            assert row["best_coef"] == pytest.approx(best, rel=1e-4)


def test_error_parts_agree_with_a_dense_svd_of_the_true_move(tmp_path: Path):
    """The split of each held-out move into its top singular direction and the rest, and each method's
    error on each part, against dense SVDs of the true moves (summed over modules like the scores)."""
    from nextrap.predictors import make_predictor

    traj = nextrap.open_run(_run(tmp_path, "run", curve="saturating", turn=0.3, noise=0.2))
    few = NExtConfig(epochs=3)  # the combined method's prediction is a combination plus factors: scored as one
    result = backtest(traj, BacktestOptions(holdout=4, methods=("linear", "relex", "next+linear"), predictor=few))
    fit_end = len(STEPS) - 5
    fit = traj.prefix(fit_end + 1)
    base = {n: m.double() for n, m in _dense(traj, fit_end).items()}
    predictors = (("linear", LinearPredictor()), ("relex", RelexPredictor()), ("next+linear", make_predictor("next+linear", few)))
    for method, predictor in predictors:
        pred = predictor.predict(fit, result.horizon)
        off = {n: _dense_move(pred, fit, n, 1.0, 0.0) for n in traj.modules}
        D = {n: _dense_move(pred, fit, n, 0.0, 1.0) for n in traj.modules}
        for row in result.summary()[method]:
            j = STEPS.index(row["step"])
            top2 = rest2 = top_err2 = rest_err2 = top_in = p_top2 = rest_in = p_rest2 = 0.0
            for n in traj.modules:
                true = _dense(traj, j)[n].double() - base[n]
                P = off[n] + row["coef"] * D[n]
                U, S, Vh = torch.linalg.svd(true)
                E = torch.outer(U[:, 0], Vh[0])
                p = float((P * E).sum())
                top2 += float(S[0]) ** 2
                rest2 += float((true - S[0] * E).square().sum())
                top_err2 += (p - float(S[0])) ** 2
                rest_err2 += float(((P - p * E) - (true - S[0] * E)).square().sum())
                top_in += p * float(S[0])
                p_top2 += p * p
                rest_in += float(((P - p * E) * (true - S[0] * E)).sum())
                p_rest2 += float((P - p * E).square().sum())
            assert 0.05 < top2 / (top2 + rest2) < 0.95  # both parts are there to score
            assert row["top_share"] == pytest.approx(top2 / (top2 + rest2), rel=1e-4)
            assert row["top_error"] == pytest.approx((top_err2 / top2) ** 0.5, rel=1e-4, abs=1e-6)
            assert row["rest_error"] == pytest.approx((rest_err2 / rest2) ** 0.5, rel=1e-4, abs=1e-6)
            assert row["top_cosine"] == pytest.approx(top_in / (p_top2 * top2) ** 0.5, rel=1e-4, abs=1e-6)
            assert row["rest_cosine"] == pytest.approx(rest_in / (p_rest2 * rest2) ** 0.5, rel=1e-4, abs=1e-6)
            parts = row["top_share"] * row["top_error"] ** 2 + (1 - row["top_share"]) * row["rest_error"] ** 2
            assert parts == pytest.approx(row["relative_error"] ** 2, rel=1e-6)


@pytest.mark.parametrize(
    ("plant", "paper_best", "best"),
    [
        # straight run: repeating the last horizon is exact; next+linear's NExt part learns that too
        ({"curve": "linear", "noise": 0.03}, "linear", {"linear", "next+linear"}),
        # bending run: only the learned predictor bends (next+linear adds linear's rest, near zero here)
        ({"curve": "saturating", "noise": 0.03}, "next", {"next", "next+linear"}),
    ],
)
def test_backtest_ranks_the_method_that_matches_the_plant(tmp_path: Path, plant, paper_best, best):
    result = backtest(nextrap.open_run(_run(tmp_path, "run", **plant)), BacktestOptions(predictor=FAST))
    rec = result.recommendation
    papers = [m for m in rec["ranking"] if m in ("next", "linear", "relex", "relex-anchored")]
    assert papers[0] == paper_best and rec["ranking"][0] in best, rec["mean_relative_error"]
    assert rec["beats_staying"] and rec["coef"] == pytest.approx(1.0)


def test_noisy_run_favours_the_fitted_line_over_two_points(tmp_path: Path):
    """I.i.d. noise on each checkpoint: a line through all of them averages it, a two-point difference does not."""
    run = _run(tmp_path, "run", curve="linear", noise=0.0)
    gen = torch.Generator().manual_seed(1)
    for step in STEPS:
        path = run / f"checkpoint-{step}" / "adapter_model.safetensors"
        tensors = load_file(path)
        for key, value in tensors.items():
            if "lora_B" in key:
                tensors[key] = value + 0.3 * value.std() * torch.randn(value.shape, generator=gen)
        save_file(tensors, path)
    result = backtest(nextrap.open_run(run), BacktestOptions(methods=("linear", "relex")))
    err = result.recommendation["mean_relative_error"]
    assert result.recommendation["method"] == "relex" and err["relex"] < err["linear"], err


@pytest.mark.slow
def test_auto_method_uses_the_backtest_recommendation(tmp_path: Path):
    run = _run(tmp_path, "run", curve="linear", noise=0.03)
    options = nextrap.ExtrapolateOptions(method="auto", predictor=FAST)
    res = nextrap.extrapolate(run, tmp_path / "out", options)
    expected = backtest(nextrap.open_run(run), BacktestOptions(predictor=FAST)).recommendation
    # a straight plant: linear, or next+linear whose NExt part learns the same line (they tie within noise)
    assert res.report.method == expected["method"] and expected["method"] in ("linear", "next+linear")
    assert res.report.backtest["recommendation"]["ranking"] == expected["ranking"]
    assert any(n.startswith("method auto:") for n in res.report.notes)


@pytest.mark.parametrize("method", ["linear", "relex", "relex-anchored"])
def test_every_method_writes_a_resumable_adapter(tmp_path: Path, method: str):
    run = _run(tmp_path, "run", curve="linear", noise=0.0)
    res = nextrap.extrapolate(run, tmp_path / "out", nextrap.ExtrapolateOptions(method=method, coefs=(1.0,)))
    # the plant is rank-1 with a straight coefficient: both land on the planted future dW(t_K + H)
    future = write_synthetic_run(
        tmp_path / "future",
        [STEPS[-1] + res.report.horizon["steps"]],
        SHAPES,
        PlantSpec(rank=4, alpha=8.0, tau=100.0, turn=0.0, seed=0, curve="linear", noise=0.0),
    )
    got = _dense_adapter(res.output)
    want = _dense_adapter(future / f"checkpoint-{STEPS[-1] + res.report.horizon['steps']}")
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-4)
    assert res.report.method == method


def test_diagnostics_against_dense_svd(tmp_path: Path):
    traj = nextrap.open_run(_run(tmp_path, "run", curve="saturating", turn=0.3, noise=0.2))
    diag = diagnose(traj)
    last = _dense(traj, len(STEPS) - 1)
    for name, dw in last.items():
        s = torch.linalg.svdvals(dw.double())
        assert diag.share[name][-1] == pytest.approx(float(s[0] ** 2 / (s**2).sum()), rel=1e-5)
        U, _S, Vh = torch.linalg.svd(dw.double())
        first = _dense(traj, 0)[name].double()
        coeff = float(U[:, 0] @ first @ Vh[0])
        assert abs(diag.coefficient[name][0]) == pytest.approx(abs(coeff), rel=1e-4, abs=1e-7)
    summary = diag.summary()
    assert set(summary) >= {"all", "q_proj", "down_proj"}
    assert 0 < summary["all"]["rank1_share_last"] <= 1


def test_cli_backtest_and_inspect(tmp_path: Path):
    run = _run(tmp_path, "run", curve="linear", noise=0.03)
    runner = CliRunner()
    res = runner.invoke(
        main,
        ["backtest", str(run), "--method", "linear", "--method", "relex", "--plot", str(tmp_path / "bt.png")],
    )
    assert res.exit_code == 0, res.output
    assert "recommendation: linear" in res.output and (tmp_path / "bt.png").stat().st_size > 1000
    res = runner.invoke(main, ["backtest", str(run), "--method", "linear", "--json", "--holdout", "2"])
    data = json.loads(res.output)
    assert data["heldout_steps"] == STEPS[-2:] and data["recommendation"]["method"] == "linear"
    res = runner.invoke(main, ["inspect", str(run), "--plot", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    assert "rank-1 share" in res.output
    assert (tmp_path / "plots" / "rank1_share.png").exists() and (
        tmp_path / "plots" / "coefficients.png"
    ).exists()


def test_backtest_needs_enough_checkpoints(tmp_path: Path):
    run = _run(tmp_path, "run", curve="linear")
    res = CliRunner().invoke(main, ["backtest", str(run), "--holdout", "14"])
    assert res.exit_code == 1 and "at least 3" in res.output and res.output.count("\n") == 1


def test_plot_without_matplotlib_says_how_to_install(tmp_path: Path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes "import matplotlib" raise ImportError
    run = _run(tmp_path, "run", curve="linear")
    res = CliRunner().invoke(main, ["inspect", str(run), "--plot", str(tmp_path / "plots")])
    assert res.exit_code == 1 and "pip install 'nextrap[plot]'" in res.output
    assert not (tmp_path / "plots").exists()


def test_auto_on_a_run_too_short_to_backtest(tmp_path: Path):
    run = write_synthetic_run(tmp_path / "run", [10, 20, 30], SHAPES, PlantSpec(rank=4, alpha=8.0))
    res = CliRunner().invoke(main, ["extrapolate", str(run), "-o", str(tmp_path / "out"), "--method", "auto"])
    assert res.exit_code == 1 and "--method auto could not backtest" in res.output
    assert not (tmp_path / "out").exists()


def test_auto_backtests_a_short_run_at_the_longest_horizon_it_allows(tmp_path: Path):
    # 6 checkpoints at horizon 3: holding out one horizon leaves 3 to fit on, too few for horizon 3 (the
    # SmolLM2 protocol's jump point). auto backtests at horizon 2 instead, says so, and takes that
    # backtest's winner; the jump itself keeps the horizon asked for.
    run = write_synthetic_run(tmp_path / "run", [5, 10, 15, 20, 25, 30], SHAPES, PlantSpec(rank=4, alpha=8.0, noise=0.03))
    options = nextrap.ExtrapolateOptions(method="auto", horizon=3, predictor=FAST)
    res = nextrap.extrapolate(run, tmp_path / "out", options)
    expected = backtest(nextrap.open_run(run), BacktestOptions(horizon=2, predictor=FAST)).recommendation
    assert res.report.method == expected["method"]
    assert res.report.backtest["recommendation"]["ranking"] == expected["ranking"]
    assert res.report.backtest["heldout_steps"] == [25, 30] and res.report.horizon["steps"] == 15
    assert any("backtest ran at horizon 2" in n for n in res.report.notes)


@pytest.mark.gpu
def test_the_backtest_on_cuda_scores_as_on_the_cpu(tmp_path):
    """Every method's scores on a CUDA device equal the CPU's (the combinations' weights, built on the CPU,
    follow the factors to the device; RELEX's step times too)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    traj = nextrap.open_run(_run(tmp_path, "run"))
    methods = ("linear", "relex", "next+linear")
    options = BacktestOptions(methods=methods, horizon=2, predictor=NExtConfig(epochs=30, patience=0))
    on_cpu = backtest(traj, options, torch.device("cpu")).to_dict()["scores"]
    on_gpu = backtest(traj, options, torch.device("cuda")).to_dict()["scores"]
    assert len(on_cpu) == len(on_gpu)
    for a, b in zip(on_cpu, on_gpu, strict=True):
        assert (a["method"], a["step"], a["kind"]) == (b["method"], b["step"], b["kind"])
        assert b["relative_error"] == pytest.approx(a["relative_error"], rel=1e-3, abs=1e-6)
