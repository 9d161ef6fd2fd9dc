"""A small, real RLVR setup that runs on a CPU: the proof that extrapolation saves RL steps.

A tiny Llama-like model and character tokenizer built offline (``model``), digit tasks with exact-match
rewards (``tasks``), a supervised warm start cached per settings (``warmstart``), a GRPO trainer with
LoRA that saves TRL-style checkpoints (``grpo``), and the train -> extrapolate -> resume -> evaluate
loop (``endtoend``). A second policy is a real pretrained LLM, SmolLM2-135M-Instruct (``smollm2``,
weights fetched once by ``weights``), on chat-formatted addition (``chat``); ``GRPOConfig.warm``
picks the policy. The nextrap library never imports this package; the CLI does. Its names are imported on first use, so
listing the CLI's commands does not import torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from nextrap.formats.peft import CONFIG_NAME
from nextrap.util.lazy import lazy_getattr

_LAZY = {
    "CHAT_TASKS": "chat",
    "get_chat_task": "chat",
    "Arm": "endtoend",
    "EndToEndConfig": "endtoend",
    "EndToEndResult": "endtoend",
    "final_accuracy": "endtoend",
    "jump_arm": "endtoend",
    "plain_run": "endtoend",
    "reset_arm": "endtoend",
    "run_end_to_end": "endtoend",
    "steps_to_reach": "endtoend",
    "POLICIES": "grpo",
    "GRPOConfig": "grpo",
    "TrainResult": "grpo",
    "evaluate_adapter": "grpo",
    "load_policy": "grpo",
    "load_run_config": "grpo",
    "train": "grpo",
    "ModelSpec": "model",
    "SmolLM2Config": "smollm2",
    "TASKS": "tasks",
    "get_task": "tasks",
    "WarmStartConfig": "warmstart",
    "cache_root": "warmstart",
    "load_base": "warmstart",
}


__getattr__ = lazy_getattr(__name__, {name: f"nextrap.reference.{module}" for name, module in _LAZY.items()})


if TYPE_CHECKING:
    from nextrap.reference.chat import CHAT_TASKS, get_chat_task
    from nextrap.reference.endtoend import (
        Arm,
        EndToEndConfig,
        EndToEndResult,
        final_accuracy,
        jump_arm,
        plain_run,
        reset_arm,
        run_end_to_end,
        steps_to_reach,
    )
    from nextrap.reference.grpo import (
        POLICIES,
        GRPOConfig,
        TrainResult,
        evaluate_adapter,
        load_policy,
        load_run_config,
        train,
    )
    from nextrap.reference.model import ModelSpec
    from nextrap.reference.smollm2 import SmolLM2Config
    from nextrap.reference.tasks import TASKS, get_task
    from nextrap.reference.warmstart import WarmStartConfig, cache_root, load_base

__all__ = [
    "CHAT_TASKS",
    "POLICIES",
    "TASKS",
    "Arm",
    "EndToEndConfig",
    "EndToEndResult",
    "GRPOConfig",
    "ModelSpec",
    "SmolLM2Config",
    "TrainResult",
    "WarmStartConfig",
    "adapter_policy",
    "cache_root",
    "evaluate_adapter",
    "final_accuracy",
    "get_chat_task",
    "get_task",
    "jump_arm",
    "load_base",
    "load_policy",
    "load_run_config",
    "plain_run",
    "reset_arm",
    "run_end_to_end",
    "steps_to_reach",
    "train",
]


def adapter_policy(adapter) -> str:
    """``smollm2`` when ``adapter``'s config names the SmolLM2 base, else ``tiny``."""
    from nextrap.reference.smollm2 import BASE_ID

    config = Path(adapter) / CONFIG_NAME
    if config.is_file() and json.loads(config.read_text()).get("base_model_name_or_path") == BASE_ID:
        return "smollm2"
    return "tiny"
