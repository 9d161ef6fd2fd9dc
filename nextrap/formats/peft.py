"""PEFT's LoRA file format: file names, key rules, and the rank / alpha / scaling rules.

The bottom layer for every module that reads or writes adapter files. It imports neither torch nor peft,
so that scanning a run stays fast; the names equal ``peft.utils.constants`` (``CONFIG_NAME``,
``SAFETENSORS_WEIGHTS_NAME``, ``WEIGHTS_NAME``), which a test checks against the installed peft.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ADAPTER_FILES",
    "BIN_NAME",
    "CONFIG_NAME",
    "SAFETENSORS_NAME",
    "WEIGHT_FILES",
    "alpha_for_scaling",
    "looks_like_hub_id",
    "module_name",
    "pattern_key",
    "pattern_matches",
    "scaling",
    "split_lora_key",
]

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"  # legacy torch.save format, read-only for us
WEIGHT_FILES = (SAFETENSORS_NAME, BIN_NAME)  # preference order when a folder holds both
ADAPTER_FILES = (*WEIGHT_FILES, CONFIG_NAME)  # what one adapter folder publishes

# Saved adapters drop PEFT's wrapper prefix and the adapter name: "base_model.model.<module>.lora_A.weight".
PEFT_PREFIX = "base_model.model."
LINEAR_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
EMBEDDING_SUFFIXES = (".lora_embedding_A", ".lora_embedding_B")
# Keys saved from a raw model state dict keep the adapter name: "...lora_A.default.weight".
NAMED_ADAPTER = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)\.(?P<adapter>[^.]+)\.weight$")
NAMED_EMBEDDING = re.compile(r"^(?P<module>.+)\.(?P<part>lora_embedding_A|lora_embedding_B)\.(?P<adapter>[^.]+)$")


def split_lora_key(key: str) -> tuple[str | None, str, str]:
    """``(module key prefix, "A"|"B", kind)`` for a LoRA factor key, ``(None, "", "")`` otherwise.

    ``kind`` is ``linear`` or ``embedding``; the prefix still carries PEFT's wrapper prefix (see
    :func:`module_name`), since it is the file's own spelling.
    """
    for suffix in LINEAR_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix[-8], "linear"
    for suffix in EMBEDDING_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix[-1], "embedding"
    m = NAMED_ADAPTER.match(key)
    if m:
        return m["module"], m["part"][-1], "linear"
    m = NAMED_EMBEDDING.match(key)
    if m:
        return m["module"], m["part"][-1], "embedding"
    return None, "", ""


def module_name(key_prefix: str) -> str:
    """The module path of a factor key's prefix, without PEFT's ``base_model.model.`` wrapper."""
    return key_prefix[len(PEFT_PREFIX) :] if key_prefix.startswith(PEFT_PREFIX) else key_prefix


# ``base_model_name_or_path`` holds a local folder or a Hub id ("name" or "owner/name").
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?$")


def looks_like_hub_id(name: str | None) -> bool:
    """Whether ``name`` is shaped like a Hub model id (``name`` or ``owner/name``); says nothing of existence."""
    return bool(name) and _HUB_ID.match(name) is not None and not name.startswith((".", "/"))


def pattern_matches(pattern: str, module: str) -> bool:
    """PEFT's rule for ``rank_pattern`` / ``alpha_pattern`` keys: a regex matching a dotted suffix of the name."""
    return re.match(rf"(.*\.)?({pattern})$", module) is not None


def pattern_key(patterns: Mapping[str, Any], module: str) -> str | None:
    """The first key of ``patterns`` that applies to ``module`` (PEFT takes the first match), or None."""
    for key in patterns:
        if pattern_matches(key, module):
            return key
    return None


def scaling(alpha: float, rank: int, rslora: bool) -> float:
    """LoRA's scaling s of ``B A``: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def alpha_for_scaling(scale: float, rank: int, rslora: bool) -> float:
    """The alpha that gives scaling ``scale`` at ``rank`` (the inverse of :func:`scaling`)."""
    return scale * (math.sqrt(rank) if rslora else rank)
