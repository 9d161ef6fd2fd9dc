"""verl (verl-project/verl, formerly volcengine/verl): every way a verl release keeps a LoRA run's weights.

``verl/trainer/ppo/ray_trainer.py`` ``RayPPOTrainer._save_checkpoint`` saves the actor into
``DIR/global_step_{N}/actor/`` and writes ``DIR/latest_checkpointed_iteration.txt``. What lands in
``actor/`` depends on the release and engine:

* verl 0.5 to 0.7.x, FSDP (``verl/workers/fsdp_workers.py`` ``ActorRolloutRefWorker.save_checkpoint``):
  a PEFT adapter in ``actor/lora_adapter/``, beside the rank shards;
* verl 0.8.0 to 0.9.1, FSDP engine (the default; ``verl/utils/checkpoint/fsdp_checkpoint_manager.py``
  ``FSDPCheckpointManager.save_checkpoint``): no adapter, only ``model_world_size_W_rank_R.pt`` shards
  of DTensors (LoRA keys only with ``checkpoint.save_lora_only``, 0.9.0+), ``lora_train_meta.json``
  and ``fsdp_config.json``; read directly (:mod:`nextrap.formats.verl_shards`). Verified by running verl
  0.9.1's own ``FSDPCheckpointManager`` on CPU (``tests/fixtures/verl-0.9.1``);
* verl 0.8.0 to 0.9.1, Megatron engine with megatron-bridge and ``hf_model`` in the checkpoint's
  ``save_contents`` (``verl/utils/checkpoint/megatron_checkpoint_manager.py``
  ``_save_model_as_hf_via_bridge``): a PEFT adapter in ``actor/model/huggingface/adapter/``;
* the offline merger (``verl/model_merger/base_model_merger.py`` ``save_lora_adapter``, all releases):
  ``TARGET_DIR/lora_adapter/`` wherever the user put it, stepped by the nearest ``global_step_N``
  folder above it (else the last number in its parent's name). It writes ``lora_alpha: 0`` when
  ``lora_train_meta.json`` is missing, which the config check refuses.
"""

from __future__ import annotations

import re
from pathlib import Path

from nextrap.formats.verl_shards import FORMAT as SHARDS
from nextrap.formats.verl_shards import META_NAME, shard_files
from nextrap.layouts.base import LAST_NUMBER, PEFT, Layout, Match, Sighting
from nextrap.util.files import read_regular

STEP = re.compile(r"^global_step_(\d+)$")
LATEST = "latest_checkpointed_iteration.txt"
MERGER_DIR = "lora_adapter"
_BRIDGE_TAIL = ("actor", "model", "huggingface", "adapter")


def _classify(root: Path, folder: Path, fmt: str) -> Match | None:
    parts = folder.relative_to(root).parts
    if fmt == SHARDS:
        if len(parts) >= 2 and parts[-1] == "actor" and STEP.match(parts[-2]):
            return Match("verl", int(STEP.match(parts[-2])[1]), folder.parent, folder.parents[1], SHARDS)
        return None
    if len(parts) > 4 and parts[-4:] == _BRIDGE_TAIL and STEP.match(parts[-5]):
        return Match("verl", int(STEP.match(parts[-5])[1]), folder.parents[3], folder.parents[4], PEFT)
    if len(parts) >= 2 and parts[-1] == "actor" and STEP.match(parts[-2]):
        return Match("verl", int(STEP.match(parts[-2])[1]), folder.parent, folder.parents[1], PEFT)
    if parts[-1] == MERGER_DIR and len(parts) >= 2:
        for up, name in enumerate(reversed(parts[:-1])):
            if STEP.match(name):
                step_dir = folder.parents[up]
                return Match("verl", int(STEP.match(name)[1]), step_dir, step_dir.parent, PEFT)
        number = LAST_NUMBER.search(parts[-2])
        if number:
            return Match("verl", int(number[1]), folder.parent, folder.parents[1], PEFT)
    return None


def _hint(seen: Sighting) -> str | None:
    actors = [f for f in seen.folders if f.name == "actor" and STEP.match(f.parent.name)]
    for actor in actors:
        full = seen.root / actor
        if shard_files(full) and not (full / META_NAME).is_file():
            return (
                f"{actor} holds verl FSDP shards without {META_NAME}, so not a LoRA run's: verl 0.8+ writes it "
                "beside the shards of a run with actor_rollout_ref.model.lora_rank > 0 (verl 0.5-0.7 wrote "
                "actor/lora_adapter/ instead)"
            )
        if (full / "model" / "dist_ckpt").is_dir():
            return (
                f"{actor} is verl's Megatron engine without an HF adapter: add hf_model to "
                "actor_rollout_ref.actor.checkpoint.save_contents so megatron-bridge writes "
                "actor/model/huggingface/adapter/"
            )
    if actors:
        return f"{actors[0]} holds no LoRA weights nextrap knows (verl 0.5-0.7: lora_adapter/; 0.8+: rank shards)"
    return None


def run_notes(root: Path, steps: set[int]) -> list[str]:
    """What the run's ``latest_checkpointed_iteration.txt`` says that the folders do not."""
    try:
        latest = int(read_regular(root / LATEST, limit=4096).strip())
    except (OSError, ValueError):
        return []
    if latest in steps:
        return []
    return [f"{LATEST} names step {latest}, which has no LoRA checkpoint here"]


LAYOUT = Layout(
    name="verl",
    looks_like="verl global_step_N/actor (rank shards, lora_adapter/, model/huggingface/adapter/)",
    classify=_classify,
    hint=_hint,
    run_notes=run_notes,
)
