"""TRL, the Hugging Face Trainer and the tools built on it (Unsloth, LLaMA-Factory).

Save function: ``transformers.Trainer._save_checkpoint`` (transformers/trainer.py), which every TRL
trainer (GRPOTrainer, PPOTrainer, ...) inherits: ``OUT/checkpoint-{global_step}/`` holds the PEFT adapter
(``adapter_model.safetensors`` + ``adapter_config.json``, from ``PeftModel.save_pretrained``) and
``trainer_state.json`` with ``global_step``, beside ``optimizer.pt``, ``scheduler.pt`` and
``rng_state.pth``. Releases: verified with TRL 1.16.0 and transformers 5.25.0, by running TRL's GRPOTrainer in
``tests/test_callbacks.py`` (the layout is older than both).
"""

from __future__ import annotations

import re
from pathlib import Path

from nextrap.layouts.base import Layout, Match

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _classify(root: Path, folder: Path, fmt: str) -> Match | None:
    parts = folder.relative_to(root).parts
    m = CHECKPOINT.match(parts[-1])
    if m and len(parts) == 1:
        return Match("trl", int(m[1]), folder, folder.parent, fmt)
    return None


LAYOUT = Layout(
    name="trl",
    looks_like="trl checkpoint-N",
    classify=_classify,
    step_record=("trainer_state.json", "global_step"),
)
