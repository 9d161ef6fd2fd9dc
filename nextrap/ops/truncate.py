"""AlphaRL's rank-k test: keep only the top-k part of each LoRA update, optionally rescaled.

For each module, ``dW = s B A`` is cut to its best rank-k approximation ``U_k S_k Vh_k`` (exact, from
the factors). With ``rescale`` it is multiplied by ``||dW||_F / ||U_k S_k Vh_k||_F`` so that the kept
part has the full update's Frobenius norm, as AlphaRL does (arXiv 2510.00553). Users evaluate the
written adapter with their own harness; if it keeps most of the gain, the update's top-k part is what
matters.

The adapter keeps the run's keys, rank, config and dtype: the first k columns of ``B`` and rows of
``A`` carry the kept part, the other rows of ``A`` are orthonormal completions (scaled like the old
rows) and the matching columns of ``B`` are zero, as at LoRA's own initialization, so the adapter also
trains on. Raw tensors (DoRA magnitudes, biases, ``modules_to_save``) are copied unchanged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nextrap.errors import ConfigError
from nextrap.layouts import from_explicit
from nextrap.linalg import lowrank
from nextrap.output.atomic import atomic_directory, check_output
from nextrap.run.adapters import open_adapter, read_header, torch_dtype, write_adapter
from nextrap.util.files import write_new

__all__ = ["TruncationResult", "truncate_adapter"]

REPORT_NAME = "nextrap-truncate.json"


@dataclass(frozen=True)
class TruncationResult:
    """The written folder and, per module, the energy share kept and the rescale factor."""

    output: Path
    report: dict[str, Any]


def truncate_adapter(
    adapter: str | os.PathLike,
    output: str | os.PathLike,
    rank: int = 1,
    rescale: bool = False,
    overwrite: bool = False,
) -> TruncationResult:
    """Write the adapter that keeps only the top-``rank`` part of every LoRA update of ``adapter``."""
    if rank < 1:
        raise ConfigError(f"--rank {rank}: keep at least 1 direction")
    discovery = from_explicit([adapter], [0])
    ref = discovery.checkpoints[0]
    output = check_output(output, overwrite, discovery.input_paths)
    header = read_header(ref)
    too_small = [m.name for m in header.modules.values() if m.rank < rank]
    if too_small:
        raise ConfigError(
            f"--rank {rank}: module {too_small[0]} has LoRA rank {header.modules[too_small[0]].rank}; "
            "keep at most the adapter's rank"
        )
    tensors: dict[str, torch.Tensor] = {}
    modules: dict[str, dict[str, float]] = {}
    with open_adapter(ref) as reader:
        for name, m in header.modules.items():
            B = reader.get(m.b_key).float()
            A = reader.get(m.a_key).float()
            B_new, A_new, figures = _truncate_one(B, A, m.scaling, rank, rescale)
            tensors[m.b_key] = B_new.to(torch_dtype(m.dtype))
            tensors[m.a_key] = A_new.to(torch_dtype(m.dtype))
            modules[name] = figures
        for key, raw in header.raw.items():
            tensors[key] = reader.get(key).to(torch_dtype(raw.dtype))
    kept = [f["energy_kept"] for f in modules.values()]
    report = {
        "adapter": str(ref.path),
        "rank": rank,
        "rescale": rescale,
        "median_energy_kept": sorted(kept)[len(kept) // 2] if kept else None,
        "raw_tensors_copied": sorted(header.raw),
        "modules": modules,
    }
    with atomic_directory(output, overwrite, discovery.input_paths) as tmp:
        write_adapter(tmp, tensors, header.config)
        write_new(tmp / REPORT_NAME, json.dumps(report, indent=2) + "\n")
    return TruncationResult(output=output, report=report)


def _truncate_one(
    B: torch.Tensor, A: torch.Tensor, scaling: float, k: int, rescale: bool
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Rank-k factors ``B (out, r)``, ``A (r, in)`` of the top-k part of ``scaling * B @ A``."""
    r = B.shape[1]
    svd = lowrank.factored_svd((scaling * B)[None], A[None])
    S = svd.S[0].double()
    full = float(S.square().sum().sqrt())
    part = float(S[:k].square().sum().sqrt())
    factor = full / part if rescale and part > 0 else 1.0
    root = (S[:k] * factor).sqrt().float()
    B_k = svd.U[0][:, :k] * root / scaling
    A_k = root[:, None] * svd.Vh[0][:k]
    # Complete A with rows orthogonal to the kept ones, preferring the old rows' span; B's columns for
    # them are zero, so they add nothing now and can still learn.
    basis = torch.cat([svd.Vh[0][:k], A], 0).T  # (in, k + r)
    q, _ = torch.linalg.qr(basis, mode="reduced")
    row_norm = A.norm(dim=1).mean()
    A_rest = q[:, k:r].T * row_norm
    B_new = torch.cat([B_k, torch.zeros(B.shape[0], r - k, dtype=B.dtype)], 1)
    A_new = torch.cat([A_k, A_rest], 0)
    return (
        B_new,
        A_new,
        {
            "energy_kept": part**2 / full**2 if full > 0 else 1.0,
            "e1": float(S[0] / S.sum()) if float(S.sum()) > 0 else 0.0,
            "rescale_factor": factor,
        },
    )
