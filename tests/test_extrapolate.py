"""End to end on planted runs: features vs dense SVD, PEFT forward passes, prediction quality, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import nextrap
from nextrap.linalg import lowrank
from nextrap.ops.extrapolate import ExtrapolateOptions
from nextrap.predictors import NExtConfig
from nextrap.run.open import resolve_horizon
from nextrap.testing.synthetic import PlantSpec, llama_like_shapes, planted_factors, write_synthetic_run

from .conftest import STEPS, TINY_SHAPES, TINY_SPEC, tiny_llama

FAST = NExtConfig(epochs=300, patience=50)
# For the tests of what is written (files, keys, PEFT loading, notes), not of how well the fit predicts:
# they compare against the prediction the run made, whatever its quality, so a short fit does.
SHORT_FIT = NExtConfig(epochs=60, patience=50)


def _dense_dw(folder: Path) -> dict[str, torch.Tensor]:
    """Every module's ``scaling * B @ A`` computed densely from the files, independently of nextrap's reader."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    out = {}
    for key, A in tensors.items():
        if key.endswith(".lora_A.weight"):
            name = key[len("base_model.model.") : -len(".lora_A.weight")]
            B = tensors[key.replace("lora_A", "lora_B")]
            out[name] = (cfg["lora_alpha"] / cfg["r"]) * B.double() @ A.double()
    return out


def test_features_match_dense_svd(tiny_run: Path):
    traj = nextrap.open_run(tiny_run)
    feats = nextrap.compute_features(traj, horizon=3, device=torch.device("cpu"))
    dense = [_dense_dw(tiny_run / f"checkpoint-{s}") for s in STEPS]
    for name in [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.mlp.down_proj",
        "model.layers.1.self_attn.k_proj",
    ]:
        f = feats.matrices[name]
        seq = [d[name] for d in dense]
        for k in range(len(STEPS)):
            checks = [(f.global_, seq[k]), (f.local, seq[k] - (seq[k - 1] if k else 0))]
            if k + 3 < len(STEPS):
                checks.append((f.target, seq[k + 3] - seq[k]))
            for t, D in checks:
                t = lowrank.Triplets(t.u[k], t.s[k], t.v[k])
                U, S, Vh = torch.linalg.svd(D)
                assert abs(float(t.s) - float(S[0])) <= 1e-5 * float(S[0])
                assert 1 - abs(float(t.u.double() @ U[:, 0])) < 1e-5
                assert 1 - abs(float(t.v.double() @ Vh[0])) < 1e-5


def _agreement(t: lowrank.Triplets, ref: lowrank.Triplets) -> torch.Tensor:
    n = t.u.shape[0]
    return (t.u * ref.u[:n]).sum(-1) + (t.v * ref.v[:n]).sum(-1)


def test_feature_signs_follow_the_global_sequence(tmp_path: Path):
    # A noisy plant: its target triplets' own canonical signs disagree with the global ones for some
    # modules, which is what the convention must fix (checked below, so the test can fail).
    spec = PlantSpec(curve="linear", rank=4, alpha=8.0, noise=0.5, seed=3)
    write_synthetic_run(tmp_path / "run", STEPS, TINY_SHAPES, spec)
    traj = nextrap.open_run(tmp_path / "run")
    feats = nextrap.compute_features(traj, horizon=3, device=torch.device("cpu"))
    own_sign_disagreed = 0
    for f in feats.matrices.values():
        g = f.global_
        continuity = (g.u[1:] * g.u[:-1]).sum(-1) + (g.v[1:] * g.v[:-1]).sum(-1)
        assert torch.all(continuity >= 0)
        assert g.u[0, g.u[0].abs().argmax()] > 0
        for t in (f.local, f.target):
            assert torch.all(_agreement(t, g) >= 0)
        canonical = lowrank.canonicalize_signs(f.target)  # each row's own convention, independently
        own_sign_disagreed += int((_agreement(canonical, g) < 0).sum())
    assert own_sign_disagreed > 0


def test_chunking_does_not_change_features(tiny_run: Path):
    traj = nextrap.open_run(tiny_run)
    a = nextrap.compute_features(traj, 2, torch.device("cpu"))
    b = nextrap.compute_features(traj, 2, torch.device("cpu"), chunk_bytes=1)  # one module per chunk
    for name in a.matrices:
        torch.testing.assert_close(a.matrices[name].target.u, b.matrices[name].target.u)


def test_small_runs_get_small_chunks(tiny_run: Path):
    from nextrap.util.memory import MIN_CHUNK_BYTES, chunk_limit

    MiB = 2**20
    assert chunk_limit(64 * MiB, 152 * MiB) == 19 * MiB  # 7B at r = 16: an eighth of 152 MiB of float32 factors
    assert chunk_limit(64 * MiB, 1232 * MiB) == 64 * MiB  # big checkpoints: the requested size
    assert chunk_limit(64 * MiB, 1 * MiB) == MIN_CHUNK_BYTES  # tiny runs: the floor
    assert chunk_limit(1 * MiB, 1 * MiB) == 1 * MiB  # never above what the caller asked for
    traj = nextrap.open_run(tiny_run)
    per_module = {n: (m.out_features + m.in_features) * m.rank * 4 for n, m in traj.modules.items()}
    limit = chunk_limit(64 * MiB, sum(per_module.values()))
    for chunk in traj.module_chunks(3):
        assert len(chunk) == 1 or sum(per_module[n] * 3 for n in chunk) <= limit


@pytest.mark.slow
def test_planted_trajectory_is_predicted_better_than_staying(tmp_path: Path):
    """Known rank-1 direction, saturating coefficient: the jump lands closer to the real future."""
    spec = PlantSpec(curve="saturating", rank=4, alpha=8.0, tau=150.0, seed=3)
    shapes = llama_like_shapes(layers=1, hidden=32, intermediate=64, kv_dim=16)
    run = write_synthetic_run(tmp_path / "run", range(10, 161, 10), shapes, spec)
    res = nextrap.extrapolate(run, tmp_path / "out", ExtrapolateOptions(coefs=(1.0,), predictor=FAST))
    target = res.report.outputs[0].virtual_step
    assert target == 160 + 50
    truth = planted_factors(spec, shapes, target)
    last = _dense_dw(run / "checkpoint-160")
    jump = _dense_dw(res.output)
    s = spec.alpha / spec.rank
    err_stay = err_jump = norm = 0.0
    for name, (B, A) in truth.items():
        true = s * B.double() @ A.double()
        err_stay += float((last[name] - true).norm() ** 2)
        err_jump += float((jump[name] - true).norm() ** 2)
        norm += float(true.norm() ** 2)
    assert err_jump < 0.8 * err_stay, (err_jump / norm, err_stay / norm)


def test_written_adapter_matches_merged_weights_in_peft_forward(tmp_path: Path):
    """PEFT's own forward pass with our adapter == base weights + the expected update, merged by hand."""
    from peft import PeftModel

    shapes = llama_like_shapes(layers=2, hidden=32, intermediate=64, kv_dim=16)
    run = write_synthetic_run(tmp_path / "run", STEPS, shapes, TINY_SPEC)
    res = nextrap.extrapolate(
        run, tmp_path / "out", ExtrapolateOptions(method="next", coefs=(2.0,), predictor=SHORT_FIT)
    )
    base = tiny_llama()
    expected = tiny_llama()
    last = _dense_dw(run / f"checkpoint-{STEPS[-1]}")
    r = TINY_SPEC.rank
    with torch.no_grad():
        for name, dw in last.items():
            L, R = res.prediction.matrices[name]
            target = dw + 2.0 * (L.double() @ R.double())
            U, S, Vh = torch.linalg.svd(target)
            best = (U[:, :r] * S[:r]) @ Vh[:r]  # independent: dense SVD of the materialized update
            module = expected.get_submodule(name)
            module.weight += best.to(module.weight.dtype)
    model = PeftModel.from_pretrained(base, str(res.output)).eval()
    ids = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected(ids).logits, rtol=1e-4, atol=1e-4)


def test_grow_policy_is_exact_and_loads_with_rank_r_plus_1(tmp_path: Path, tiny_run: Path):
    from peft import PeftModel

    res = nextrap.extrapolate(
        tiny_run, tmp_path / "out", ExtrapolateOptions(method="next", coefs=(1.5,), rank_policy="grow", predictor=SHORT_FIT)
    )
    cfg = json.loads((res.output / "adapter_config.json").read_text())
    assert cfg["r"] == TINY_SPEC.rank + 1
    assert cfg["lora_alpha"] / cfg["r"] == pytest.approx(TINY_SPEC.alpha / TINY_SPEC.rank)
    last = _dense_dw(tiny_run / f"checkpoint-{STEPS[-1]}")
    new = _dense_dw(res.output)
    for name, dw in last.items():
        L, R = res.prediction.matrices[name]
        torch.testing.assert_close(new[name], dw + 1.5 * (L.double() @ R.double()), rtol=1e-5, atol=1e-6)
    assert res.report.outputs[0].max_relative_truncation_error < 1e-6
    PeftModel.from_pretrained(tiny_llama(), str(res.output), is_trainable=True)


def test_keys_shapes_dtype_and_config_are_kept(tmp_path: Path):
    from safetensors import safe_open

    run = write_synthetic_run(tmp_path / "run", STEPS[:6], TINY_SHAPES, TINY_SPEC, dtype=torch.bfloat16)
    options = ExtrapolateOptions(method="next", coefs=(1.0, 2.0), predictor=SHORT_FIT)
    res = nextrap.extrapolate(run, tmp_path / "out", options)
    src = run / f"checkpoint-{STEPS[5]}"
    with safe_open(str(src / "adapter_model.safetensors"), "pt") as a:
        ref = {k: (a.get_slice(k).get_shape(), a.get_slice(k).get_dtype()) for k in a.keys()}
    for coef in (1.0, 2.0):
        out = tmp_path / "out" / f"coef-{coef}"
        assert res.adapters[coef] == out
        with safe_open(str(out / "adapter_model.safetensors"), "pt") as b:
            got = {k: (b.get_slice(k).get_shape(), b.get_slice(k).get_dtype()) for k in b.keys()}
        assert got == ref
        cfg_in = json.loads((src / "adapter_config.json").read_text())
        cfg_out = json.loads((out / "adapter_config.json").read_text())
        for key in ("r", "lora_alpha", "target_modules", "use_rslora"):
            assert (
                sorted(cfg_out[key]) == sorted(cfg_in[key])
                if key == "target_modules"
                else cfg_out[key] == cfg_in[key]
            )
    report = json.loads((tmp_path / "out" / "nextrap.json").read_text())
    assert [c["step"] for c in report["inputs"]["checkpoints"]] == STEPS[:6]
    assert all(len(c["sha256"]) == 64 for c in report["inputs"]["checkpoints"])
    assert report["horizon"]["intervals"] == 3  # 6 checkpoints: shortened from 5 to keep 3 pairs
    assert any("horizon shortened" in n for n in report["notes"])
    assert [o["virtual_step"] for o in report["outputs"]] == [60 + 30, 60 + 60]
    for group in report["predictor"]["groups"]:
        assert group["final_loss"] <= group["zero_loss"]


def test_reference_preset_is_the_papers_settings():
    ref = NExtConfig.from_preset("reference")
    assert (ref.lr, ref.epochs, ref.loss, ref.hidden, ref.min_lr_ratio, ref.normalize) == (
        2e-5,
        1000,
        "l1",
        256,
        0.1,
        False,
    )
    assert NExtConfig.from_preset("reference", lr=1e-4).lr == 1e-4


def test_predictor_is_deterministic_on_cpu(tmp_path: Path, tiny_run: Path):
    opts = ExtrapolateOptions(coefs=(1.0,), predictor=NExtConfig(epochs=50, seed=7))
    a = nextrap.extrapolate(tiny_run, tmp_path / "a", opts, nextrap.OutputOptions(hash_inputs=False))
    b = nextrap.extrapolate(tiny_run, tmp_path / "b", opts, nextrap.OutputOptions(hash_inputs=False))
    assert (a.output / "adapter_model.safetensors").read_bytes() == (
        b.output / "adapter_model.safetensors"
    ).read_bytes()


@pytest.mark.parametrize(
    ("checkpoints", "requested", "expected"),
    [(16, None, 5), (8, None, 5), (6, None, 3), (4, None, 1), (2, None, 1), (10, 7, 7)],
)
def test_resolve_horizon(checkpoints, requested, expected):
    assert resolve_horizon(checkpoints, requested)[0] == expected


def test_explicit_horizon_too_long_is_an_error():
    with pytest.raises(nextrap.LayoutError, match="needs at least 6 checkpoints"):
        resolve_horizon(4, 5)


@pytest.mark.gpu
def test_features_on_gpu_match_cpu(tiny_run: Path):
    traj = nextrap.open_run(tiny_run)
    cpu = nextrap.compute_features(traj, 3, torch.device("cpu"))
    gpu = nextrap.compute_features(traj, 3, torch.device("cuda"))
    for name, f in cpu.matrices.items():
        torch.testing.assert_close(gpu.matrices[name].global_.s.cpu(), f.global_.s, rtol=1e-4, atol=1e-6)
        assert torch.all((gpu.matrices[name].global_.u.cpu() * f.global_.u).sum(-1) > 1 - 1e-4)


@pytest.mark.slow
def test_merge_writes_full_weights_equal_to_base_plus_adapter(tmp_path: Path, tiny_run: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = tmp_path / "base"
    tiny_llama().save_pretrained(str(base_dir))
    opts = ExtrapolateOptions(coefs=(1.0,), predictor=FAST)
    adapter = nextrap.extrapolate(tiny_run, tmp_path / "adapter", opts, nextrap.OutputOptions(hash_inputs=False))
    merged = nextrap.extrapolate(
        tiny_run, tmp_path / "merged", opts, nextrap.OutputOptions(base_model=str(base_dir), merge=True)
    )
    assert merged.report.outputs[0].format == "merged"
    assert not list((tmp_path / "merged").glob(".adapter*"))  # the staging adapter is gone
    full = AutoModelForCausalLM.from_pretrained(str(merged.output)).eval()
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(base_dir)), str(adapter.output)
    )
    ids = torch.randint(0, 61, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(full(ids).logits, peft_model.eval()(ids).logits, rtol=1e-4, atol=1e-4)


def test_merge_without_base_model_is_a_config_error():
    with pytest.raises(nextrap.ConfigError, match="--base-model"):
        nextrap.OutputOptions(merge=True)


def test_uneven_spacing_is_noted_and_virtual_step_uses_real_steps(tmp_path: Path):
    steps = [10, 20, 30, 50, 60, 70, 100, 110]
    run = write_synthetic_run(tmp_path / "run", steps, TINY_SHAPES, TINY_SPEC)
    res = nextrap.extrapolate(
        run, tmp_path / "out", ExtrapolateOptions(coefs=(0.5,), horizon=2, predictor=SHORT_FIT)
    )
    assert any("unevenly spaced" in n for n in res.report.notes)
    assert res.report.horizon["steps"] == 110 - 70  # the last 2 intervals span 40 steps
    assert res.report.outputs[0].virtual_step == 110 + 0.5 * 40


def test_relex_fitted_while_writing_is_the_relex_fit(tmp_path):
    # extrapolate fits RELEX chunk by chunk from the write's own Gram products (difference basis, float32
    # products) instead of a pass of its own: the weights must be the ones predict() fits from the factors.
    import nextrap
    from nextrap.predictors import RelexPredictor
    from nextrap.testing.synthetic import PlantSpec, write_synthetic_run

    run = write_synthetic_run(
        tmp_path / "run", [10, 20, 30, 40, 50, 60], {"q_proj": (24, 16), "v_proj": (8, 16)},
        PlantSpec(rank=4, alpha=8.0, tau=100.0, turn=0.2, seed=3, curve="saturating", noise=0.1),
    )
    for mode in ("relex", "relex-anchored"):
        res = nextrap.extrapolate(run, tmp_path / mode, nextrap.ExtrapolateOptions(method=mode, coefs=(1.0, 2.0)))
        assert res.prediction.deferred is not None and res.prediction.combinations
        traj = nextrap.open_run(run)
        plain = RelexPredictor(mode="denoised" if mode == "relex" else "anchored").predict(traj, res.report.horizon["intervals"])
        assert res.prediction.combinations.keys() == plain.combinations.keys()
        for name, (offset, direction) in plain.combinations.items():
            torch.testing.assert_close(res.prediction.combinations[name][0], offset, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(res.prediction.combinations[name][1], direction, rtol=1e-4, atol=1e-6)
        assert res.report.predictor["median_explained_variance"] == pytest.approx(
            plain.diagnostics["median_explained_variance"], rel=1e-6
        )
