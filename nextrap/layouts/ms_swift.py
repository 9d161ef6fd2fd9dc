"""ms-swift (``swift sft`` / ``swift rlhf``; its Megatron path ``megatron sft`` / ``megatron rlhf``).

Save functions: the HF path is the Hugging Face Trainer's (see :mod:`nextrap.layouts.trl`) under a
version folder, ``OUT/vK-DATE/checkpoint-N/``; every save also points ``last-checkpoint`` at the newest
checkpoint (``swift/utils/io_utils.py`` ``update_last_checkpoint_symlink``), skipped here silently.
The Megatron path (``swift/megatron/trainers/base.py``, ``save_checkpoint``) writes a PEFT adapter into
``checkpoint-N/`` only with ``--merge_lora false``: by default ``merge_lora`` follows
``save_safetensors`` (``swift/megatron/arguments/megatron_args.py``), and the checkpoint holds Megatron
shards plus merged full weights in ``checkpoint-N-merged/``. Releases: ms-swift 4.6.0 (read from its
wheel; earlier releases not checked); folder trees in the tests are built from that source, not written by ms-swift.
"""

from __future__ import annotations

import re
from pathlib import Path

from nextrap.layouts.base import Layout, Match, Sighting
from nextrap.layouts.trl import CHECKPOINT

VERSION = re.compile(r"^v\d+-")
LAST_CHECKPOINT = "last-checkpoint"
_MERGED = re.compile(r"^checkpoint-\d+-merged$")
_MEGATRON_ITER = re.compile(r"^iter_\d{7}$")


def _classify(root: Path, folder: Path, fmt: str) -> Match | None:
    parts = folder.relative_to(root).parts
    m = CHECKPOINT.match(parts[-1])
    if m and len(parts) >= 2 and VERSION.match(parts[-2]):
        return Match("ms-swift", int(m[1]), folder, folder.parent, fmt)
    return None


def _companion(root: Path, folder: Path) -> bool:
    return folder.name == LAST_CHECKPOINT


def _hint(seen: Sighting) -> str | None:
    merged = seen.named(_MERGED)
    megatron = [f for f in seen.named(_MEGATRON_ITER) if CHECKPOINT.match(f.parent.name)]
    if not merged and not megatron:
        return None
    example = (merged or [m.parent for m in megatron])[0]
    return (
        f"{example} is ms-swift's Megatron output, which keeps no LoRA adapter unless trained with "
        "--merge_lora false: retrain with it, or convert each checkpoint with "
        "`megatron export --mcore_adapter checkpoint-N --to_hf true --merge_lora false`"
    )


LAYOUT = Layout(
    name="ms-swift",
    looks_like="ms-swift vK-DATE/checkpoint-N",
    classify=_classify,
    step_record=("trainer_state.json", "global_step"),
    companion=_companion,
    hint=_hint,
)
