"""NeMo-RL: step_N/policy/weights/model/ adapters (DTensor v2 / Automodel policy), the step from
training_info.json's total_steps (GRPO has no step; SFT's step counts within the epoch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nextrap.errors import LayoutError
from nextrap.layouts import discover

from .trainer_trees import assert_extrapolates_like_the_twin, write_adapter


def _nemo_step(root: Path, total_steps: int, info: dict, adapter_step: int | None = None) -> None:
    step_dir = root / f"step_{total_steps}"
    model = write_adapter(step_dir / "policy" / "weights" / "model", adapter_step or total_steps)
    (model / "automodel_peft_config.json").write_text("{}")
    (step_dir / "policy" / "optimizer").mkdir(parents=True)
    (step_dir / "policy" / "tokenizer").mkdir(parents=True)
    (step_dir / "training_info.json").write_text(json.dumps(info))
    (step_dir / "config.yaml").write_text("grpo: {}\n")


def test_grpo_steps_from_total_steps_and_no_fallback_notes(tmp_path: Path):
    run = tmp_path / "results"
    for n in (10, 20, 30, 40):  # GRPOSaveState: no "step" field
        info = {"consumed_samples": 64 * n, "current_step": n, "current_epoch": 0, "total_steps": n,
                "total_valid_tokens": 1000 * n, "val_reward": 0.5}  # fmt: skip
        _nemo_step(run, n, info)
    (run / "tmp_step_50" / "policy" / "weights" / "model").mkdir(parents=True)  # a save in progress
    d = discover(run)
    assert (d.layout, d.steps, d.notes) == ("nemo-rl", (10, 20, 30, 40), ())
    assert d.checkpoints[0].step_source == "training_info.json total_steps"
    assert d.checkpoints[0].path == run / "step_10" / "policy" / "weights" / "model"
    assert_extrapolates_like_the_twin(run, (10, 20, 30, 40), tmp_path)


def test_multi_epoch_sft_keeps_the_total_step_order(tmp_path: Path):
    # 60 steps per epoch, saved every 50 total steps: SFTSaveState.step counts within the epoch.
    for total, epoch, within in ((50, 0, 50), (100, 1, 40), (150, 2, 30)):
        _nemo_step(tmp_path, total, {"epoch": epoch, "step": within, "total_steps": total, "consumed_samples": 0})
    d = discover(tmp_path)
    assert d.steps == (50, 100, 150)
    assert [c.path.parents[2].name for c in d.checkpoints] == ["step_50", "step_100", "step_150"]


def test_megatron_policy_gets_the_conversion_hint(tmp_path: Path):
    for n in (10, 20):
        (tmp_path / f"step_{n}" / "policy" / "weights" / "iter_0000000").mkdir(parents=True)
        (tmp_path / f"step_{n}" / "training_info.json").write_text(json.dumps({"total_steps": n}))
    with pytest.raises(LayoutError, match=r"NeMo-RL's Megatron format: export each adapter with examples/converters/convert_lora_to_hf\.py --adapter-only"):
        discover(tmp_path)
