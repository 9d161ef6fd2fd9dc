"""``nextrap demo --synthetic``: a planted run written to disk, extrapolated, and scored against its known future.

Seconds instead of minutes, and no RL: it shows the path (a TRL folder of checkpoints ->
``extrapolate`` -> PEFT adapters) and how far the jump lands from where the planted run really goes,
compared with not jumping. ``nextrap demo`` without the flag runs the reference RL loop instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from nextrap.formats.peft import SAFETENSORS_NAME
from nextrap.layouts import CheckpointRef
from nextrap.linalg import lowrank
from nextrap.ops.extrapolate import ExtrapolateOptions, ExtrapolationResult, extrapolate
from nextrap.output.writers import OutputOptions
from nextrap.run.adapters import open_adapter, read_header
from nextrap.testing.synthetic import PlantSpec, llama_like_shapes, planted_factors, write_synthetic_run

__all__ = ["DemoRow", "run_demo", "score_adapter"]


@dataclass(frozen=True)
class DemoRow:
    """One coefficient: the virtual step it aims at and the error there, against staying put."""

    coef: float
    virtual_step: float
    error_stay: float
    error_jump: float


def score_adapter(
    adapter_dir: Path, spec: PlantSpec, shapes: dict[str, tuple[int, int]], step: float
) -> float:
    """Relative Frobenius error of an adapter's updates against the planted ``dW(step)``, over all modules."""
    ref = CheckpointRef(
        step=0,
        path=adapter_dir,
        weights=adapter_dir / SAFETENSORS_NAME,
        layout="explicit",
        step_source="given",
    )
    header = read_header(ref)
    num = den = 0.0
    truth = planted_factors(spec, shapes, step)
    with open_adapter(ref) as reader:
        for name, (Bt, At) in truth.items():
            mod = header.modules[name]
            B, A = reader.get(mod.b_key)[None], reader.get(mod.a_key)[None]
            s_true = spec.alpha / spec.rank
            diff_l = torch.cat([mod.scaling * B, -s_true * Bt[None]], -1)
            diff_r = torch.cat([A, At[None]], -2)
            num += float(lowrank.frobenius_norm(diff_l, diff_r)[0] ** 2)
            den += float(lowrank.frobenius_norm(s_true * Bt[None], At[None])[0] ** 2)
    return (num / den) ** 0.5


def run_demo(
    output: str | os.PathLike = "nextrap-demo",
    coefs: tuple[float, ...] = (1.0, 2.0),
    overwrite: bool = False,
    progress: bool = False,
    seed: int = 0,
) -> tuple[ExtrapolationResult, list[DemoRow]]:
    """Write a planted run to ``output/run``, extrapolate it into ``output/jump``, score each jump."""
    output = Path(output)
    spec = PlantSpec(curve="saturating", rank=8, alpha=16, tau=200.0, seed=seed)
    shapes = llama_like_shapes(layers=2, hidden=64, intermediate=128, kv_dim=32)
    steps = list(range(10, 161, 10))
    run_dir = output / "run"
    if overwrite or not run_dir.exists():
        write_synthetic_run(run_dir, steps, shapes, spec)
    result = extrapolate(
        run_dir,
        output / "jump",
        ExtrapolateOptions(coefs=coefs),
        OutputOptions(overwrite=overwrite),
        progress=progress,
    )
    rows = []
    last = output / "run" / f"checkpoint-{steps[-1]}"
    for entry in result.report.outputs:
        coef, target = entry.coef, entry.virtual_step
        rows.append(
            DemoRow(
                coef=coef,
                virtual_step=target,
                error_stay=score_adapter(last, spec, shapes, target),
                error_jump=score_adapter(result.adapters[coef], spec, shapes, target),
            )
        )
    return result, rows
