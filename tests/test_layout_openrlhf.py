"""OpenRLHF 0.11.2's folders: global_stepN_hf adapters (.bin under ZeRO-3), best_global_stepN_hf copies left
out with one note, the DeepSpeed state in _actor/ skipped silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextrap.errors import LayoutError
from nextrap.layouts import discover

from .trainer_trees import assert_extrapolates_like_the_twin, write_adapter

STEPS = (10, 20, 30, 40)


def _openrlhf_run(root: Path, weights: str = "bin") -> Path:
    for step in STEPS:
        folder = write_adapter(root / f"global_step{step}_hf", step, weights)
        (folder / "config.json").write_text("{}")  # DeepspeedStrategy.save_model writes the model config too
        (root / "_actor" / f"global_step{step}").mkdir(parents=True)
        (root / "_actor" / f"global_step{step}" / "mp_rank_00_model_states.pt").write_bytes(b"x")
    for step in (20, 40):  # save_best_checkpoint: a new best eval metric at these steps
        write_adapter(root / f"best_global_step{step}_hf", step, weights)
        (root / "_actor" / f"best_global_step{step}").mkdir()
    (root / "_actor" / "latest").write_text("global_step40")
    return root


def test_best_copies_are_left_out_with_one_note_and_deepspeed_state_silently(tmp_path: Path):
    d = discover(_openrlhf_run(tmp_path / "ckpt"))
    assert (d.layout, d.steps) == ("openrlhf", STEPS)
    assert d.checkpoints[0].weights.name == "adapter_model.bin"
    assert d.notes == (
        "skipped best_global_step20_hf, best_global_step40_hf: OpenRLHF's copies of the best-eval checkpoint (each "
        "duplicates or precedes a global_stepN_hf save)",
    )


def test_an_openrlhf_run_extrapolates_like_its_peft_twin(tmp_path: Path):
    assert_extrapolates_like_the_twin(_openrlhf_run(tmp_path / "ckpt"), STEPS, tmp_path)


def test_deepspeed_state_only_gets_the_save_hf_hint(tmp_path: Path):
    for step in STEPS:
        (tmp_path / "_actor" / f"global_step{step}").mkdir(parents=True)
    with pytest.raises(LayoutError, match=r"saw only _actor/; _actor/ holds OpenRLHF's DeepSpeed state only: train with --ckpt\.save_hf"):
        discover(tmp_path)
