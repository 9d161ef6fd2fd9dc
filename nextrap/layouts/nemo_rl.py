"""NeMo-RL (NVIDIA-NeMo/RL).

Save function: the algorithm loops (``nemo_rl/algorithms/grpo.py``, ``sft.py``, ``dpo.py``) call
``nemo_rl/utils/checkpoint.py`` ``CheckpointManager.init_tmp_checkpoint(total_steps + 1, save_state)``,
which writes ``tmp_step_N/training_info.json`` (the save state), then ``policy.save_checkpoint(weights_path=
tmp_step_N/policy/weights)``; ``finalize_checkpoint`` renames the folder to ``step_N``. The DTensor v2 /
Automodel policy saves a LoRA adapter through ``nemo_automodel``'s ``Checkpointer.save_model`` into
``weights/model/`` (``adapter_model.safetensors``, ``adapter_config.json``); older policies wrote it at
``weights/``. ``N`` is ``total_steps``: GRPO's save state has no ``step``, and SFT's / DPO's ``step``
counts within the epoch, so the step record read here is ``total_steps``. The Megatron policy writes
``weights/iter_NNNNNNN/`` (Megatron format): convert it first. Releases: the NeMo-RL repository at commit
7ea279a (2026-08-22) with nemo_automodel 0.7.0; folder trees in the tests are built from that
source, not written by NeMo-RL.
"""

from __future__ import annotations

import re
from pathlib import Path

from nextrap.layouts.base import Layout, Match, Sighting

STEP = re.compile(r"^step_(\d+)$")
_MEGATRON_ITER = re.compile(r"^iter_\d{7}$")


def _classify(root: Path, folder: Path, fmt: str) -> Match | None:
    parts = folder.relative_to(root).parts
    for tail in (("policy", "weights", "model"), ("policy", "weights")):
        n = len(tail)
        if len(parts) > n and parts[-n:] == tail and STEP.match(parts[-n - 1]):
            step_dir = folder.parents[n - 1]
            return Match("nemo-rl", int(STEP.match(parts[-n - 1])[1]), step_dir, step_dir.parent, fmt)
    return None


def _hint(seen: Sighting) -> str | None:
    for folder in seen.named(_MEGATRON_ITER):
        if folder.parent.name == "weights" and STEP.match(folder.parents[2].name if len(folder.parts) > 3 else ""):
            return (
                f"{folder} is NeMo-RL's Megatron format: export each adapter with "
                "examples/converters/convert_lora_to_hf.py --adapter-only, then pass them with --checkpoint PATH --step N"
            )
    return None


LAYOUT = Layout(
    name="nemo-rl",
    looks_like="NeMo-RL step_N/policy/weights[/model]",
    classify=_classify,
    step_record=("training_info.json", "total_steps"),
    hint=_hint,
)
