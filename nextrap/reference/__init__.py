"""A small, real RLVR setup that runs on a CPU in minutes: the proof that extrapolation saves RL steps.

A tiny Llama-like model and character tokenizer built offline (``model``), digit tasks with exact-match
rewards (``tasks``), a supervised warm start cached per settings (``warmstart``), a GRPO trainer with
LoRA that saves TRL-style checkpoints (``grpo``), and the train -> extrapolate -> resume -> evaluate
loop (``endtoend``). The nextrap library never imports this package; the CLI does, lazily.
"""

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
from nextrap.reference.grpo import GRPOConfig, TrainResult, load_policy, train
from nextrap.reference.model import ModelSpec
from nextrap.reference.tasks import TASKS, get_task
from nextrap.reference.warmstart import WarmStartConfig, cache_root, load_base

__all__ = [
    "TASKS",
    "Arm",
    "EndToEndConfig",
    "EndToEndResult",
    "GRPOConfig",
    "ModelSpec",
    "TrainResult",
    "WarmStartConfig",
    "cache_root",
    "evaluate_adapter",
    "final_accuracy",
    "get_task",
    "jump_arm",
    "load_base",
    "load_policy",
    "plain_run",
    "reset_arm",
    "run_end_to_end",
    "steps_to_reach",
    "train",
]


def evaluate_adapter(adapter, warm: WarmStartConfig | None = None, size: int = 512) -> float:
    """Greedy exact-match accuracy of ``adapter`` (a PEFT folder; None = the base) on the held-out problems."""
    from nextrap.reference.policy import accuracy

    warm = warm or WarmStartConfig()
    model, tokenizer = load_policy(warm, adapter, trainable=False)
    task = get_task(warm.task)
    return accuracy(model, tokenizer, task, task.test_set(size))
