"""ROLL: <worker>/checkpoint-N adapters (FSDP2 strategy); the Megatron strategy's adapter folders hold
Megatron-format weights, which need ROLL's converter first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nextrap.errors import LayoutError
from nextrap.layouts import discover

from .trainer_trees import write_adapter


def test_fsdp2_strategy_adapters_per_worker(tmp_path: Path):
    for step in (10, 20, 30):
        write_adapter(tmp_path / "actor_train" / f"checkpoint-{step}", step)
    d = discover(tmp_path)
    assert (d.layout, d.steps) == ("roll", (10, 20, 30))


def test_megatron_strategy_gets_the_conversion_hint(tmp_path: Path):
    for step in (10, 20):
        adapter = tmp_path / "actor_train" / f"checkpoint-{step}" / "default"
        (adapter / "iter_0000001" / "mp_rank_00").mkdir(parents=True)
        (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16, "peft_type": "LORA"}))
    with pytest.raises(LayoutError, match=r"actor_train/checkpoint-10/default holds an adapter config without PEFT weights.*mcore_adapter/tools/convert\.py"):
        discover(tmp_path)
