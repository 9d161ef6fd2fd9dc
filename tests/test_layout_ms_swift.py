"""ms-swift 4.6: vK-DATE/checkpoint-N with its last-checkpoint link (skipped silently), and the Megatron
path, which keeps no adapter unless trained with --merge_lora false."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nextrap.errors import LayoutError
from nextrap.layouts import discover

from .trainer_trees import assert_extrapolates_like_the_twin, write_adapter


def test_hf_path_with_the_last_checkpoint_link(tmp_path: Path):
    run = tmp_path / "output" / "v0-20261204-101500"
    for step in (10, 20, 30, 40):
        write_adapter(run / f"checkpoint-{step}", step)
    os.symlink("checkpoint-40", run / "last-checkpoint")  # update_last_checkpoint_symlink: a relative link
    d = discover(tmp_path / "output")
    assert (d.layout, d.steps, d.notes) == ("ms-swift", (10, 20, 30, 40), ())
    assert_extrapolates_like_the_twin(tmp_path / "output", (10, 20, 30, 40), tmp_path)


def test_megatron_merged_output_gets_the_merge_lora_hint(tmp_path: Path):
    run = tmp_path / "v0-20261204-101500"
    for step in (10, 20):
        (run / f"checkpoint-{step}" / f"iter_{step:07d}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "latest_checkpointed_iteration.txt").write_text(str(step))
        (run / f"checkpoint-{step}-merged").mkdir()
        (run / f"checkpoint-{step}-merged" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(LayoutError, match=r"ms-swift's Megatron output.*--merge_lora false.*megatron export"):
        discover(tmp_path)
