"""Reading real PEFT adapters (saved by PEFT itself from a tiny model) and the scaling rules, checked against PEFT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import nextrap
from nextrap.layouts import CheckpointRef
from nextrap.run.adapters import open_adapter, read_header

from .conftest import tiny_llama


def _peft_run(root: Path, steps, seed: int = 0, **lora_kwargs) -> tuple[Path, object]:
    """Save a PEFT model at ``steps`` in TRL's layout, nudging every trainable tensor between saves."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"],
        init_lora_weights=True,
        **lora_kwargs,
    )
    model = get_peft_model(tiny_llama(seed), cfg)
    g = torch.Generator().manual_seed(seed)
    for step in steps:
        with torch.no_grad():
            for _, p in model.named_parameters():
                if p.requires_grad:
                    p.add_(0.01 * torch.randn(p.shape, generator=g))
        model.save_pretrained(str(root / f"checkpoint-{step}"))
        (root / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return root, model


def _peft_scalings(model) -> dict[str, float]:
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "scaling") and isinstance(module.scaling, dict) and "default" in module.scaling:
            out[name.removeprefix("base_model.model.")] = float(module.scaling["default"])
    return out


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"use_rslora": True},
        {"rank_pattern": {"v_proj": 2, r"layers\.1\.mlp\.down_proj": 8}, "alpha_pattern": {"q_proj": 3.0}},
        {"rank_pattern": {"nomatch_proj": 5}},
    ],
)
def test_scaling_matches_peft(tmp_path: Path, kwargs):
    run, model = _peft_run(tmp_path / "run", [1, 2], **kwargs)
    traj = nextrap.open_run(run)
    peft_scaling = _peft_scalings(model)
    assert set(traj.modules) == set(peft_scaling)
    for name, mod in traj.modules.items():
        assert mod.scaling == pytest.approx(peft_scaling[name]), name
    if "nomatch_proj" in kwargs.get("rank_pattern", {}):
        assert any("nomatch_proj" in n for n in traj.notes)


def test_embedding_and_dora_tensors(tmp_path: Path):
    run, _ = _peft_run(tmp_path / "run", [1, 2, 3, 4], use_dora=True)
    traj = nextrap.open_run(run)
    kinds = {m.kind for m in traj.modules.values()}
    assert kinds == {"linear", "embedding"}
    emb = traj.modules["model.embed_tokens"]
    assert (emb.out_features, emb.in_features) == (32, 61)  # lora_embedding_B (dim x r), _A (r x vocab)
    magnitudes = [k for k in traj.raw if "lora_magnitude_vector" in k]
    assert len(magnitudes) == 7  # q, v, down in two layers, and the embedding
    res = nextrap.extrapolate(
        run, tmp_path / "out", nextrap.ExtrapolateOptions(predictor=nextrap.NExtConfig(epochs=30))
    )
    from peft import PeftModel

    loaded = PeftModel.from_pretrained(tiny_llama(0), str(res.output))
    ids = torch.randint(0, 61, (1, 8))
    assert torch.isfinite(loaded(ids).logits).all()
    ref = CheckpointRef(
        step=0,
        path=res.output,
        weights=res.output / "adapter_model.safetensors",
        layout="explicit",
        step_source="given",
    )
    with open_adapter(ref) as new, open_adapter(traj.refs[-1]) as last:
        assert set(res.prediction.vectors) == set(magnitudes)
        for key in magnitudes:  # DoRA magnitudes moved by the predicted raw update
            assert new.shapes[key] == last.shapes[key]
            expected = last.get(key) + res.prediction.vectors[key]
            torch.testing.assert_close(new.get(key), expected)


def test_legacy_bin_is_read_like_safetensors(tmp_path: Path):
    from safetensors.torch import load_file

    run, _ = _peft_run(tmp_path / "run", [1, 2])
    ckpt = run / "checkpoint-2"
    tensors = load_file(str(ckpt / "adapter_model.safetensors"))
    from_json = read_header(CheckpointRef(2, ckpt, ckpt / "adapter_model.safetensors", "trl", "given"))
    torch.save(tensors, str(ckpt / "adapter_model.bin"))
    (ckpt / "adapter_model.safetensors").unlink()
    header = read_header(CheckpointRef(2, ckpt, ckpt / "adapter_model.bin", "trl", "given"))
    # the pickle read with torch and the safetensors header read as JSON give the same modules and dtypes
    assert header.modules == from_json.modules and header.raw == from_json.raw and header.raw
    with open_adapter(header.ref) as reader:
        for key, value in tensors.items():
            torch.testing.assert_close(reader.get(key, dtype=None), value)


def test_dtype_names_say_floating_point_as_torch_does():
    from nextrap.run.headers import is_float_dtype

    dtypes = [d for d in vars(torch).values() if isinstance(d, torch.dtype)]
    assert len(dtypes) > 20 and torch.bfloat16 in dtypes and torch.int8 in dtypes
    for d in dtypes:
        assert is_float_dtype(str(d).removeprefix("torch.")) == d.is_floating_point, d


def test_adapter_name_inside_keys(tmp_path: Path):
    """Keys saved from a raw state dict keep '.default.': modules are still found, keys written back as-is."""
    from safetensors.torch import load_file, save_file

    run, _ = _peft_run(tmp_path / "run", [1, 2, 3])
    for step in (1, 2, 3):
        path = run / f"checkpoint-{step}" / "adapter_model.safetensors"
        t = load_file(str(path))
        t = {
            k.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                ".lora_B.weight", ".lora_B.default.weight"
            ): v
            for k, v in t.items()
        }
        save_file(t, str(path))
    traj = nextrap.open_run(run)
    assert "model.layers.0.self_attn.q_proj" in traj.modules
    assert traj.modules["model.layers.0.self_attn.q_proj"].a_key.endswith("lora_A.default.weight")
    assert any("adapter name" in n for n in traj.notes)


def test_bf16_dtype_is_kept(tmp_path: Path):
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    model = model.to(torch.bfloat16)
    for step in (1, 2, 3):
        with torch.no_grad():
            for _, p in model.named_parameters():
                if p.requires_grad:
                    p.add_(0.01 * torch.randn_like(p))
        model.save_pretrained(str(tmp_path / "run" / f"checkpoint-{step}"))
    assert nextrap.scan(tmp_path / "run")["dtype"] == "bfloat16"
    res = nextrap.extrapolate(
        tmp_path / "run",
        tmp_path / "out",
        nextrap.ExtrapolateOptions(predictor=nextrap.NExtConfig(epochs=10)),
    )
    with safe_open(str(res.output / "adapter_model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}


@pytest.mark.parametrize(
    "kwargs", [{"use_rslora": True}, {"rank_pattern": {"v_proj": 2}, "alpha_pattern": {"q_proj": 3.0}}]
)
def test_grow_keeps_every_modules_scaling_in_peft(tmp_path: Path, kwargs):
    """rank r+1 with alpha fixed by PEFT's rule: PEFT's own scaling per module is unchanged, ranks grow by 1."""
    from peft import PeftModel

    run, model = _peft_run(tmp_path / "run", [1, 2, 3], **kwargs)
    res = nextrap.extrapolate(
        run,
        tmp_path / "out",
        nextrap.ExtrapolateOptions(rank_policy="grow", predictor=nextrap.NExtConfig(epochs=10)),
    )
    loaded = PeftModel.from_pretrained(tiny_llama(0), str(res.output), is_trainable=True)
    before, after = _peft_scalings(model), _peft_scalings(loaded)
    assert before.keys() == after.keys()
    for name in before:
        assert after[name] == pytest.approx(before[name]), name
        old_r = model.get_submodule(f"base_model.model.{name}").r["default"]
        assert loaded.get_submodule(f"base_model.model.{name}").r["default"] == old_r + 1
