"""ROLL (alibaba/ROLL).

Save function: ``roll/pipeline/base_worker.py`` ``do_checkpoint`` saves each worker into
``OUTPUT_DIR/<worker name>/checkpoint-{global_step}/`` through its strategy's ``save_checkpoint``. The
FSDP2 strategy (``roll/distributed/strategy/fsdp2_strategy.py``) saves the model with
``save_pretrained``: a PEFT adapter at the checkpoint folder's root for a LoRA run. The Megatron
strategy (``megatron_strategy.py``) saves each adapter into ``checkpoint-N/<adapter name>/`` with its
``adapter_config.json`` but Megatron-format weights, which need ``mcore_adapter/tools/convert.py``
first. Releases: the ROLL repository at commit 8eb27cc (2026-08-19); folder trees in the tests
are built from that source, not written by ROLL.
"""

from __future__ import annotations

from pathlib import Path

from nextrap.formats.peft import CONFIG_NAME
from nextrap.layouts.base import Layout, Match, Sighting, find_adapter_weights
from nextrap.layouts.ms_swift import VERSION
from nextrap.layouts.trl import CHECKPOINT


def _classify(root: Path, folder: Path, fmt: str) -> Match | None:
    parts = folder.relative_to(root).parts
    m = CHECKPOINT.match(parts[-1])
    if m and len(parts) >= 2 and not VERSION.match(parts[-2]):
        return Match("roll", int(m[1]), folder, folder.parent, fmt)
    return None


def _hint(seen: Sighting) -> str | None:
    for folder in seen.folders:
        full = seen.root / folder
        if (
            CHECKPOINT.match(folder.parent.name)
            and (full / CONFIG_NAME).is_file()
            and find_adapter_weights(full) is None
        ):
            return (
                f"{folder} holds an adapter config without PEFT weights (ROLL's megatron strategy): convert each "
                "checkpoint with ROLL's mcore_adapter/tools/convert.py (--adapter_path checkpoint-N/<adapter>), "
                "then pass the converted folders with --checkpoint PATH --step N"
            )
    return None


LAYOUT = Layout(
    name="roll",
    looks_like="ROLL <worker>/checkpoint-N",
    classify=_classify,
    step_record=("trainer_state.json", "global_step"),
    hint=_hint,
)
