"""Merged full weights: the base model with an extrapolated adapter folded in (transformers imported lazily)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from nextrap.errors import ConfigError

__all__ = ["write_merged"]


def write_merged(
    adapter_dir: str | os.PathLike, base_model: str | os.PathLike, output: str | os.PathLike
) -> None:
    """Load ``base_model`` (a local folder or hub id), apply the adapter, merge, save into ``output``.

    The model keeps the base model's dtype; its tokenizer files are copied along when present so
    the folder can be served directly.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        base = AutoModelForCausalLM.from_pretrained(str(base_model), dtype="auto")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"base model {base_model}: cannot load it as a causal LM ({exc})") from None
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(output))
    if Path(base_model).is_dir():
        # A base folder without a tokenizer is fine: the weights are what was asked for.
        with contextlib.suppress(OSError, ValueError, TypeError):
            AutoTokenizer.from_pretrained(str(base_model)).save_pretrained(str(output))
