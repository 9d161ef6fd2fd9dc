"""Planted runs written into a trainer's folder tree (for the layout tests): the adapters are real PEFT
files holding nextrap's planted trajectory, the folders around them follow the trainer's save code."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import nextrap
from nextrap.ops.options import ExtrapolateOptions
from nextrap.predictors import NExtConfig
from nextrap.testing.synthetic import PlantSpec, planted_factors, write_synthetic_run

from .fixtures.write_verl_run import planted_shapes

SPEC = PlantSpec(rank=3, alpha=6.0, seed=0)
SHAPES = planted_shapes(layers=1)
SHORT_FIT = NExtConfig(epochs=60, patience=50)


def write_adapter(folder: Path, step: int, weights: str = "safetensors") -> Path:
    """The planted adapter at ``step`` in ``folder`` (``adapter_model.safetensors`` or ``.bin``)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (B, A) in planted_factors(SPEC, SHAPES, step).items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = A
        tensors[f"base_model.model.{name}.lora_B.weight"] = B
    if weights == "bin":
        torch.save(tensors, folder / "adapter_model.bin")
    else:
        save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": SPEC.rank, "lora_alpha": SPEC.alpha,
              "target_modules": sorted({n.rsplit(".", 1)[-1] for n in SHAPES})}  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def assert_extrapolates_like_the_twin(run: Path, steps: Mapping[int, object] | tuple[int, ...], tmp_path: Path) -> None:
    """``run`` extrapolates to the same tensors as the planted run saved in TRL's layout (whose output
    tests/test_extrapolate.py holds to PEFT's forward pass), and its output loads into PEFT."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    from .fixtures.write_verl_run import tiny_llama_config

    twin = write_synthetic_run(tmp_path / "twin", list(steps), SHAPES, SPEC, torch.float32, "trl")
    opts = ExtrapolateOptions(coefs=(2.0,), predictor=SHORT_FIT)
    ours = nextrap.extrapolate(run, tmp_path / "out-run", opts)
    theirs = nextrap.extrapolate(twin, tmp_path / "out-twin", opts)
    a, b = (load_file(str(r.output / "adapter_model.safetensors")) for r in (ours, theirs))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model = PeftModel.from_pretrained(LlamaForCausalLM(tiny_llama_config(1)), str(ours.output))
    config = json.loads((ours.output / "adapter_config.json").read_text())
    for name in SHAPES:  # PEFT's update of every module == scaling * B @ A computed from the file
        dense = config["lora_alpha"] / config["r"] * a[f"base_model.model.{name}.lora_B.weight"].double() @ a[
            f"base_model.model.{name}.lora_A.weight"
        ].double()
        delta = model.base_model.model.get_submodule(name).get_delta_weight("default")
        torch.testing.assert_close(delta.double(), dense, rtol=1e-5, atol=1e-7)
