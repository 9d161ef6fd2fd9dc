"""Planted LoRA trajectories written in a trainer's folder layout, for the demo, tests and benchmarks.

Each module's update follows ``dW(t) = a(t) u(t) v^T + small smooth drift``: a rank-1 part along a
slowly turning direction ``u(t)``, with a known coefficient curve ``a(t)`` (linear, saturating or
oscillating), plus low-energy noise in the other LoRA directions. Everything is a deterministic
function of ``(seed, module, t)``, so the same call with more steps gives the held-out future of a
shorter run. ``dW`` is stored as real LoRA factors ``B (out, r)``, ``A (r, in)`` with PEFT's keys.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "CURVES",
    "PlantSpec",
    "llama_like_shapes",
    "module_update",
    "planted_factors",
    "write_synthetic_run",
]

CURVES = ("linear", "saturating", "oscillating")


@dataclass(frozen=True)
class PlantSpec:
    """How the planted run moves. ``tau`` sets the curvature time scale in steps."""

    curve: str = "saturating"
    rank: int = 8
    alpha: float = 16.0
    amplitude: float = 1.0
    tau: float = 150.0
    turn: float = 0.3
    noise: float = 0.03
    seed: int = 0

    def __post_init__(self) -> None:
        if self.curve not in CURVES:
            raise ValueError(f"curve {self.curve!r}: expected one of {CURVES}")

    def coefficient(self, t: float) -> float:
        x = t / self.tau
        if self.curve == "linear":
            return self.amplitude * x
        if self.curve == "saturating":
            return self.amplitude * (1 - math.exp(-x))
        return self.amplitude * (x + 0.3 * math.sin(2 * x))


def llama_like_shapes(
    layers: int,
    hidden: int,
    intermediate: int,
    kv_dim: int | None = None,
    modules: Iterable[str] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
) -> dict[str, tuple[int, int]]:
    """``{module path: (out, in)}`` of a Llama/Qwen2-style decoder (PEFT module names)."""
    kv = hidden if kv_dim is None else kv_dim
    per = {
        "q_proj": ("self_attn", hidden, hidden),
        "k_proj": ("self_attn", kv, hidden),
        "v_proj": ("self_attn", kv, hidden),
        "o_proj": ("self_attn", hidden, hidden),
        "gate_proj": ("mlp", intermediate, hidden),
        "up_proj": ("mlp", intermediate, hidden),
        "down_proj": ("mlp", hidden, intermediate),
    }
    out = {}
    for layer in range(layers):
        for m in modules:
            block, o, i = per[m]
            out[f"model.layers.{layer}.{block}.{m}"] = (o, i)
    return out


def _generator(seed: int, *parts: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(hash((seed, *parts)) & 0x7FFF_FFFF_FFFF)
    return g


def _module_basis(spec: PlantSpec, index: int, out_f: int, in_f: int) -> dict[str, torch.Tensor]:
    """The time-independent parts of one module: A's rows, the planted directions, the noise directions."""
    r = spec.rank
    g = _generator(spec.seed, index, 0)
    q, _ = torch.linalg.qr(torch.randn(in_f, r, generator=g))
    A = q.T * math.sqrt(in_f / r) * 0.1  # (r, in), orthogonal rows of kaiming-like size
    w = torch.randn(r, generator=g)
    w = w / w.norm()
    u0 = torch.randn(out_f, generator=g)
    u1 = torch.randn(out_f, generator=g)
    u0, u1 = u0 / u0.norm(), u1 - (u1 @ u0) / (u0 @ u0) * u0
    u1 = u1 / u1.norm()
    noise = torch.randn(2, out_f, r, generator=g) / math.sqrt(out_f * r)
    scale = 0.5 + torch.rand((), generator=g)  # modules move by different amounts
    return {"A": A, "w": w, "u0": u0, "u1": u1, "noise": noise, "scale": scale}


def module_update(
    spec: PlantSpec, basis: Mapping[str, torch.Tensor], t: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unscaled LoRA factors ``(B, A)`` of one module at step ``t`` (``scaling * B @ A = dW(t)``)."""
    scaling = spec.alpha / spec.rank
    A = basis["A"]
    row_norm = A.norm(dim=1).mean()
    angle = spec.turn * t / spec.tau
    u = math.cos(angle) * basis["u0"] + math.sin(angle) * basis["u1"]
    a = float(basis["scale"]) * spec.coefficient(t)
    # (a u w^T) A / |A row| = a u v^T with v = w^T A / |A row| a unit vector (rows of A are orthogonal).
    B = torch.outer(u, basis["w"]) * (a / (scaling * row_norm))
    drift = math.sin(t / spec.tau) * basis["noise"][0] + (1 - math.cos(t / spec.tau)) * basis["noise"][1]
    B = B + drift * (spec.noise * float(basis["scale"]) / (scaling * float(row_norm)))
    return B, A


def planted_factors(
    spec: PlantSpec,
    shapes: Mapping[str, tuple[int, int]],
    step: float,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Unscaled ``(B, A)`` of every module at ``step`` (any real number: the planted run's future too)."""
    return {
        name: module_update(spec, _module_basis(spec, i, o, n), float(step))
        for i, (name, (o, n)) in enumerate(shapes.items())
    }


def write_synthetic_run(
    root: str | os.PathLike,
    steps: Iterable[int],
    shapes: Mapping[str, tuple[int, int]],
    spec: PlantSpec = PlantSpec(),
    dtype: torch.dtype = torch.float32,
    layout: str = "trl",
) -> Path:
    """Write one adapter folder per step under ``root`` in a trainer's layout (``trl`` or ``verl``).

    TRL folders get a ``trainer_state.json`` with ``global_step``; the adapter config names the
    target modules and carries r and alpha. Returns ``root``.
    """
    from safetensors.torch import save_file

    root = Path(root)
    targets = sorted({name.rsplit(".", 1)[-1] for name in shapes})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "target_modules": targets,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "base_model_name_or_path": None,
        "fan_in_fan_out": False,
        "inference_mode": False,
    }
    for step in steps:
        if layout == "trl":
            folder = root / f"checkpoint-{step}"
        elif layout == "verl":
            folder = root / f"global_step_{step}" / "actor" / "lora_adapter"
        else:
            raise ValueError(f"layout {layout!r}: expected 'trl' or 'verl'")
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name, (B, A) in planted_factors(spec, shapes, step).items():
            tensors[f"base_model.model.{name}.lora_A.weight"] = A.to(dtype)
            tensors[f"base_model.model.{name}.lora_B.weight"] = B.to(dtype)
        save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
        if layout == "trl":
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return root
