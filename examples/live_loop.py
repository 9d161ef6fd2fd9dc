"""NExt inside your own PyTorch loop: record the adapter every few steps, jump in place, keep training.

The loop here is a supervised one on nextrap's tiny reference model (CPU, offline, a minute); the
two nextrap calls are the same in any loop that trains a PEFT model.

    python examples/live_loop.py
"""

from __future__ import annotations

import torch
from peft import get_peft_model

import nextrap
from nextrap.live.callbacks import TrajectoryRecorder, extrapolate_into
from nextrap.reference import WarmStartConfig, evaluate_adapter, get_task, load_base
from nextrap.reference.model import encode, lora_config
from nextrap.reference.policy import accuracy, answer_logprobs


def main() -> None:
    warm = WarmStartConfig()
    task = get_task(warm.task)
    base, tokenizer, _ = load_base(warm)
    torch.manual_seed(0)
    model = get_peft_model(base, lora_config())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    test = task.test_set(256)

    # snapshots of the LoRA factors every 5 steps, kept in memory (in_memory=False spills to a folder)
    with TrajectoryRecorder(every=5, in_memory=True) as recorder:
        for step in range(1, 81):
            batch = task.sample(gen, 64, task.test_prompts())
            prompts = encode(tokenizer, [p for p, _ in batch])
            answers = encode(tokenizer, [a for _, a in batch], bos=False)
            loss = -answer_logprobs(model, prompts, answers).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            recorder.maybe_record(model, step)
            if step == 40:
                before = accuracy(model, tokenizer, task, test)
                # jump one horizon (5 intervals = 25 steps) ahead, in place; Adam's moments are dropped
                jump = extrapolate_into(
                    model,
                    recorder,
                    coef=1.0,
                    optimizer=optimizer,
                    options=nextrap.ExtrapolateOptions(horizon=5),
                )
                recorder.clear()  # the trajectory has a break here: record afresh
                after = accuracy(model, tokenizer, task, test)
                print(
                    f"step 40: jumped to virtual step {jump.virtual_step:g}; accuracy {before:.3f} -> {after:.3f}"
                )
    print(
        f"accuracy after 80 steps: {accuracy(model, tokenizer, task, test):.3f} "
        f"(base model: {evaluate_adapter(None, warm, 256):.3f})"
    )


if __name__ == "__main__":
    main()
