"""NExt inside TRL's GRPOTrainer: record the LoRA adapter as training goes, jump ahead in place.

Runs on a CPU in a minute or two, offline: the policy is nextrap's tiny reference model (a character
tokenizer and a small Llama warm-started on sorting digit strings, cached under ~/.cache/nextrap),
the reward checks the answer exactly.

    pip install trl          # not a nextrap dependency
    python examples/trl_grpo_callback.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

import nextrap
from nextrap.live.transformers import NExtCallback
from nextrap.reference import WarmStartConfig, get_task, load_base
from nextrap.reference.model import lora_config


def main(out: Path) -> None:
    warm = WarmStartConfig()  # the sort task
    task = get_task(warm.task)
    model, tokenizer, _ = load_base(warm)
    tokenizer.eos_token = (
        "<pad>"  # answers have a fixed length; generation is capped by max_completion_length
    )
    problems = task.sample(__import__("torch").Generator().manual_seed(0), 512, task.test_prompts())
    dataset = Dataset.from_list([{"prompt": p, "answer": a} for p, a in problems])

    def exact_match(prompts, completions, answer, **kwargs):
        return [
            1.0 if c.replace(" ", "")[: len(a)] == a else 0.0
            for c, a in zip(completions, answer, strict=True)
        ]

    args = GRPOConfig(
        output_dir=str(out),
        max_steps=40,
        per_device_train_batch_size=16,
        num_generations=8,
        max_completion_length=task.answer_len,
        learning_rate=1e-3,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
    )
    # record every 2 steps; at step 30, jump one horizon (5 intervals = 10 steps) ahead with the NExt predictor
    callback = NExtCallback(
        jump_at=30, coef=1.0, record_every=2, options=nextrap.ExtrapolateOptions(horizon=5)
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=exact_match,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(),
        callbacks=[callback],
    )
    trainer.train()
    for jump in callback.jumps:
        print(f"jumped at step {jump.step} to virtual step {jump.virtual_step:g} ({jump.replaced} tensors)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("nextrap-trl-example"))
