"""Merged full weights: the base model with an extrapolated adapter folded in (transformers imported lazily).

Also the check that an adapter fits a model (every LoRA module it changes exists there, with the shape
its factors say), made before any work: a merge onto another model, or a reference run started from an
adapter of another architecture, fails with one line instead of a traceback after the work.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from nextrap.errors import ConfigError, MismatchError

__all__ = ["check_base_model_fits", "check_fits", "write_merged"]


class _Module(Protocol):
    """What the check reads of a LoRA module (``nextrap.run.headers.LoraModule`` has it)."""

    name: str
    out_features: int
    in_features: int


def check_fits(modules: Iterable[_Module], model: Any, what: str, adapter: str) -> None:
    """:class:`MismatchError` unless every LoRA module of ``adapter`` is a 2-D weight of ``model`` of its shape.

    ``model``: a torch module whose ``named_modules()`` names match the modules' (PEFT's saved names without
    ``base_model.model.``); ``what``: the model, as the message names it. A weight may be stored transposed
    (``fan_in_fan_out`` layers, embeddings), so both orientations fit.
    """
    shapes = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if weight is not None and getattr(weight, "ndim", 0) == 2:
            shapes[name] = tuple(weight.shape)
    for m in modules:
        shape = shapes.get(m.name)
        if shape is None:
            raise MismatchError(
                f"{what}: has no layer {m.name}, which the adapter {adapter} changes; give the model the adapter "
                "was trained on"
            )
        if shape not in ((m.out_features, m.in_features), (m.in_features, m.out_features)):
            raise MismatchError(
                f"{what}: layer {m.name} has weight shape {list(shape)}, the adapter {adapter} has "
                f"{m.out_features} x {m.in_features}; give the model the adapter was trained on"
            )


def check_base_model_fits(base_model: str | os.PathLike, modules: Iterable[_Module], adapter: str) -> None:
    """Before any work: ``base_model`` (a local folder) has every layer the adapter changes, of its shape.

    Built from the folder's ``config.json`` on torch's meta device: no weights are read. A Hub id is left
    to the merge itself (checking it would need the network).
    """
    if not Path(base_model).is_dir():
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(base_model))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"base model {base_model}: cannot read it as a causal LM ({first})") from None
    check_fits(modules, model, f"base model {base_model}", adapter)


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
