"""verl's FSDP checkpoint files: names, world size, LoRA keys and the adapter config they imply (no torch).

``verl.utils.checkpoint.fsdp_checkpoint_manager.FSDPCheckpointManager.save_checkpoint`` (verl 0.8.0 to
0.9.1) writes into ``global_step_N/actor/``:

* ``model_world_size_{W}_rank_{R}.pt``, one per rank: ``torch.save`` of the rank's ``model.state_dict()``,
  whose parameters are DTensor shards (FSDP2, or FSDP1 with a device mesh); with
  ``checkpoint.save_lora_only`` (0.9.0+) only the keys containing ``lora_`` or ``.adapter_``;
* ``optim_world_size_*`` / ``extra_state_world_size_*`` (optimizer, scheduler and RNG state: not read);
* ``fsdp_config.json`` (``FSDP_version``, ``world_size``) and, for a PEFT model, ``lora_train_meta.json``
  (``r``, ``lora_alpha`` as an int, ``task_type``), both from rank 0; ``huggingface/`` (model config).

State-dict keys keep PEFT's adapter name (``...q_proj.lora_A.default.weight``); the PEFT file drops it
(``...q_proj.lora_A.weight``, ``...lora_magnitude_vector``): :func:`peft_key` maps one to the other.
The file names and field names are verl's; this module is the one place that spells them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from nextrap.errors import CheckpointError
from nextrap.formats.pickle_header import PickledTensor, UnsafePickle, read_tensor_header

__all__ = [
    "FORMAT",
    "FSDP_CONFIG_NAME",
    "META_NAME",
    "SHARD_FILE",
    "adapter_config_raw",
    "peft_key",
    "rank_files",
    "read_shard_header",
    "refused_pickle",
    "shard_files",
]

FORMAT = "fsdp-shards"  # CheckpointRef.format of a checkpoint read from rank shards
SHARD_FILE = re.compile(r"^model_world_size_(\d+)_rank_(\d+)\.pt$")
META_NAME = "lora_train_meta.json"
FSDP_CONFIG_NAME = "fsdp_config.json"
HF_DIR = "huggingface"

# A LoRA tensor of a PEFT model's state dict: "<module>.<lora part>.<adapter name>[.weight|.bias]".
_STATE_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"\.(?P<adapter>[^.]+)(?P<suffix>\.weight|\.bias)?$"
)


def peft_key(key: str) -> tuple[str, str] | None:
    """``(PEFT file key, adapter name)`` of a LoRA state-dict key, or None for any other key (base weights).

    ``...lora_A.default.weight`` -> ``...lora_A.weight``; ``...lora_embedding_A.default`` ->
    ``...lora_embedding_A``; ``...lora_magnitude_vector.default.weight`` -> ``...lora_magnitude_vector``
    (PEFT's ``get_peft_model_state_dict`` spelling).
    """
    m = _STATE_KEY.match(key)
    if m is None:
        return None
    part, suffix = m["part"], m["suffix"] or ""
    if part.startswith("lora_embedding") or part == "lora_magnitude_vector":
        if part != "lora_magnitude_vector" and suffix:
            return None
        suffix = ""
    return f"{m['module']}.{part}{suffix}", m["adapter"]


def shard_files(folder: Path) -> dict[int, dict[int, Path]]:
    """``{world size: {rank: file}}`` of the model shard files directly in ``folder``."""
    found: dict[int, dict[int, Path]] = {}
    try:
        entries = list(folder.iterdir())
    except OSError:
        return found
    for entry in entries:
        m = SHARD_FILE.match(entry.name)
        if m and entry.is_file():
            found.setdefault(int(m[1]), {})[int(m[2])] = entry
    return found


def _json_object(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: cannot read it as JSON ({exc}); restore it from the trainer's output") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def rank_files(folder: Path, step: int) -> tuple[Path, ...]:
    """Every rank's model shard of the checkpoint in ``folder``, in rank order; one line of error otherwise.

    The world size is ``fsdp_config.json``'s ``world_size`` when the file is there, else the one world size
    the file names share.
    """
    found = shard_files(folder)
    config = _json_object(folder / FSDP_CONFIG_NAME)
    world = config.get("world_size") if config is not None else None
    if world is not None:
        if isinstance(world, bool) or not isinstance(world, int) or world < 1:
            raise CheckpointError(f"{folder / FSDP_CONFIG_NAME}: world_size = {world!r}; expected a positive integer")
    elif len(found) == 1:
        world = next(iter(found))
    else:
        sizes = ", ".join(str(w) for w in sorted(found))
        raise CheckpointError(
            f"{folder}: model shards of world sizes {sizes} at step {step} and no {FSDP_CONFIG_NAME} to say which "
            "is this checkpoint's; remove the stale ones"
        )
    ranks = found.get(world, {})
    missing = [r for r in range(world) if r not in ranks]
    if missing:
        raise CheckpointError(
            f"{folder}: model_world_size_{world}_rank_{missing[0]}.pt missing at step {step} ({len(missing)} of "
            f"{world} rank shards absent); copy every rank's shard"
        )
    return tuple(ranks[r] for r in range(world))


def refused_pickle(path: Path, step: int, name: str) -> CheckpointError:
    """The one-line error for a shard whose pickle names a class outside the allow-list."""
    return CheckpointError(
        f"{path}: the pickle at step {step} refers to {name}, which is not part of a verl FSDP shard (tensors and "
        "DTensor shards); nextrap never runs a checkpoint's code: check where this file came from"
    )


def read_shard_header(files: Iterable[Path], step: int) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Shapes (global, for DTensor shards) and dtype names of the LoRA tensors, by PEFT key, without torch.

    Reads rank 0's pickle (every rank pickles the same keys and global shapes; the tensor reader checks
    the others). Keys that are no LoRA tensor (base weights, in a checkpoint saved without
    ``save_lora_only``) are left out; keys of an adapter other than PEFT's ``default`` are refused.
    """
    path = next(iter(files))
    try:
        header = read_tensor_header(path)
    except UnsafePickle as exc:
        raise refused_pickle(path, step, exc.name) from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the shard at step {step} ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: not a model shard at step {step} ({exc}); re-copy it") from None
    return lora_entries(path, step, header)


def lora_entries(
    path: Path, step: int, header: Mapping[str, PickledTensor]
) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """The LoRA part of a shard's header, keyed by PEFT key (see :func:`read_shard_header`)."""
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    for key, tensor in header.items():
        mapped = peft_key(key)
        if mapped is None:
            continue
        name, adapter = mapped
        if adapter != "default":
            raise CheckpointError(
                f"{path}: tensor {key} at step {step} belongs to adapter {adapter!r}; verl trains PEFT's 'default' "
                "adapter, so this is not a verl checkpoint nextrap can read"
            )
        shapes[name], dtypes[name] = tensor.shape, tensor.dtype
    if not shapes:
        raise CheckpointError(
            f"{path}: no LoRA tensors (lora_A / lora_B keys) among its {len(header)} at step {step}; is this a LoRA "
            "run's shard?"
        )
    return shapes, dtypes


def adapter_config_raw(folder: Path, step: int, keys: Iterable[str]) -> tuple[Path, dict[str, Any]]:
    """The ``adapter_config.json`` content the checkpoint in ``folder`` stands for, and the file it came from.

    r, lora_alpha and task_type are ``lora_train_meta.json``'s; target_modules are the last name parts of
    the modules the keys hold (as verl's model merger writes them); DoRA when magnitude vectors are there.
    verl records neither rsLoRA nor per-module ranks: its LoRA config sets neither.
    """
    path = folder / META_NAME
    meta = _json_object(path)
    if meta is None:
        raise CheckpointError(
            f"{path}: missing at step {step}; verl writes it beside the shards of a LoRA run (0.8+): was the run "
            "trained with actor_rollout_ref.model.lora_rank > 0?"
        )
    for field in ("r", "lora_alpha"):
        if field not in meta:
            raise CheckpointError(f"{path}: no {field!r} at step {step}; verl writes r and lora_alpha there")
    modules = set()
    for key in keys:
        module, _, _ = key.rpartition(".lora_")
        modules.add(module.rsplit(".", 1)[-1])
    raw = {
        "peft_type": "LORA",
        "task_type": meta.get("task_type") or "CAUSAL_LM",
        "r": meta["r"],
        "lora_alpha": meta["lora_alpha"],
        "target_modules": sorted(modules),
        "use_rslora": False,
        "use_dora": any(k.endswith(".lora_magnitude_vector") for k in keys),
        "bias": "none",
        "base_model_name_or_path": _base_model(folder),
    }
    return path, raw


def _base_model(folder: Path) -> str | None:
    """The base model's name when ``huggingface/config.json`` records one (transformers < 5 did)."""
    try:
        config = _json_object(folder / HF_DIR / "config.json")
    except CheckpointError:
        return None
    name = (config or {}).get("_name_or_path")
    return name if isinstance(name, str) and name else None
