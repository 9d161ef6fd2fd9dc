"""Seconds per GRPO step of the SmolLM2-135M-Instruct reference policy, by batch shape, dtype and threads.

Each setting runs in its own process (the thread count is fixed at start-up): load the fetched model,
add LoRA (r = 8, all linear layers), then time ``--steps`` GRPO steps of the trainer (sampling with a
KV cache under inference mode, then one AdamW update); the table reports the median step and the
load time. Resumable: one JSON per setting under ``--out`` (default
``benchmarks/results/smollm2_step/``), skipped when present. Needs ``nextrap fetch-policy smollm2``.

    python benchmarks/smollm2_step.py --setting 8x4:bfloat16:1 --setting 8x4:float32:1 --steps 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def measure(prompts: int, group: int, dtype: str, threads: int, steps: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from peft import get_peft_model

    from nextrap.reference import GRPOConfig, SmolLM2Config
    from nextrap.reference.grpo import _grpo_step, _task, load_policy
    from nextrap.reference.model import lora_config

    config = GRPOConfig(prompts_per_step=prompts, group_size=group, lr=1e-4, warm=SmolLM2Config(dtype=dtype))
    started = time.perf_counter()
    base, tokenizer = load_policy(config.warm, None, True)
    load = time.perf_counter() - started
    torch.manual_seed(0)
    model = get_peft_model(base, lora_config(config.rank, config.alpha)).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    task = _task(config)
    exclude = task.test_prompts()
    times, tokens = [], []
    for step in range(1, steps + 1):
        t = time.perf_counter()
        entry = _grpo_step(model, tokenizer, task, config, opt, sched, params, step, exclude)
        times.append(time.perf_counter() - t)
        tokens.append(entry["answer_tokens"])
    return {
        "prompts": prompts,
        "group": group,
        "dtype": dtype,
        "threads": threads,
        "load_s": load,
        "step_s": times,
        "median_step_s": statistics.median(times),
        "answer_tokens": tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setting", action="append", help="PROMPTSxGROUP:DTYPE:THREADS (repeatable)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "smollm2_step")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        shape, dtype, threads = args.child.split(":")
        prompts, group = (int(x) for x in shape.split("x"))
        print(json.dumps(measure(prompts, group, dtype, int(threads), args.steps)))
        return
    settings = args.setting or ["4x4:bfloat16:1", "8x4:bfloat16:1", "8x4:float32:1", "8x4:bfloat16:2"]
    args.out.mkdir(parents=True, exist_ok=True)
    for setting in settings:
        path = args.out / f"{setting.replace(':', '-')}-s{args.steps}.json"
        if path.is_file():
            continue
        print(f"measuring {setting} ...", flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--child", setting, "--steps", str(args.steps)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            sys.exit(f"{setting} failed: {done.stderr.strip()[-800:]}")
        path.write_text(done.stdout)
    rows = [json.loads(p.read_text()) for p in sorted(args.out.glob("*.json"))]
    print(
        "| prompts x answers | dtype | threads | load (s) | s per step (median) | steps timed | answer tokens |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["prompts"] * r["group"], r["dtype"], r["threads"])):
        print(
            f"| {r['prompts']} x {r['group']} | {r['dtype']} | {r['threads']} | {r['load_s']:.1f} | "
            f"{r['median_step_s']:.1f} | {len(r['step_s'])} | {statistics.mean(r['answer_tokens']):.1f} |"
        )


if __name__ == "__main__":
    main()
