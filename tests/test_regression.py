"""Stored outputs: each method's extrapolation of one small planted run, compared with what it wrote before.

The dense tests (test_methods.py) check each method against an independent computation of its formula;
this one catches any change at all in what a method writes (a refactoring that moves a number, a new
default), including NExt's network, which has no independent reference. For every method the written
update ``scaling * B @ A`` of each module (and the raw tensors) at coefficient 1.5 is stored in
``tests/regression/<method>.safetensors``; the move it makes from the last checkpoint is compared.

The stored files are regenerated only on purpose, after a change meant to move the numbers, by running

    NEXTRAP_REGENERATE=1 python -m pytest tests/test_regression.py

and committing the new files with the reason. Tolerances allow for BLAS and thread differences between
machines (NExt trains a few epochs, so its numbers move with rounding more than the closed-form methods').
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import nextrap
from nextrap.predictors import METHODS, NExtConfig
from nextrap.testing.synthetic import PlantSpec, llama_like_shapes, write_synthetic_run

STORED = Path(__file__).parent / "regression"
REGENERATE = os.environ.get("NEXTRAP_REGENERATE") == "1"
SHAPES = llama_like_shapes(layers=1, hidden=24, intermediate=40, kv_dim=8)
SPEC = PlantSpec(curve="saturating", rank=4, alpha=8.0, tau=120.0, turn=0.3, noise=0.05, seed=3)
STEPS = list(range(10, 121, 10))
# closed-form methods: float32 rounding only; NExt: a trained network, rounding amplified by training
TOLERANCE = {"linear": 1e-5, "relex": 1e-4, "relex-anchored": 1e-4}
NEXT_TOLERANCE = 1e-3


def _written_updates(folder: Path, traj: nextrap.Trajectory) -> dict[str, torch.Tensor]:
    tensors = load_file(folder / "adapter_model.safetensors")
    out = {n: m.scaling * tensors[m.b_key] @ tensors[m.a_key] for n, m in traj.modules.items()}
    out |= {k: tensors[k] for k in traj.raw}
    return out


@pytest.mark.parametrize("method", METHODS)
def test_each_method_writes_what_it_wrote_before(tmp_path: Path, method: str):
    run = write_synthetic_run(tmp_path / "run", STEPS, SHAPES, SPEC)
    traj = nextrap.open_run(run)
    options = nextrap.ExtrapolateOptions(
        method=method, coefs=(1.5,), horizon=3, predictor=NExtConfig(epochs=40, stop="fixed", threads=1)
    )
    got = _written_updates(nextrap.extrapolate(run, tmp_path / "out", options).output, traj)
    path = STORED / f"{method.replace('+', '-plus-')}.safetensors"
    if REGENERATE:
        STORED.mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in got.items()}, str(path))
    assert path.is_file(), f"{path} missing: regenerate with NEXTRAP_REGENERATE=1 (see this file's docstring)"
    want = load_file(path)
    assert set(want) == set(got)
    # compared on the move (written minus last checkpoint), which is what a method computes: the update
    # itself is mostly the last checkpoint, which would hide a change in the move
    last = _last_updates(traj)
    tol = TOLERANCE.get(method, NEXT_TOLERANCE)
    for key, value in want.items():
        moved, expected = got[key] - last[key], value - last[key]
        assert float(expected.norm()) > 1e-3 * float(last[key].norm()) or key in traj.raw, f"{key} did not move"
        scale = float(expected.abs().max())
        torch.testing.assert_close(moved, expected, rtol=tol, atol=tol * scale, msg=lambda m, k=key: f"{method} {k}: {m}")


def _last_updates(traj: nextrap.Trajectory) -> dict[str, torch.Tensor]:
    out = {}
    for name, m in traj.modules.items():
        B, A = traj.load_factors([name], torch.device("cpu"), [len(traj.headers) - 1], scaled=False)
        out[name] = m.scaling * B[0, 0] @ A[0, 0]
    out |= {k: traj.load_raw(k, torch.device("cpu"), [len(traj.headers) - 1])[0] for k in traj.raw}
    return out
