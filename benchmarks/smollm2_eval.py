"""How fast is a held-out evaluation of the SmolLM2 policy? The whole prefill against the shared prefix, side by side.

Greedy answers to ``--size`` held-out add2 problems, in batches of ``--batch``, for each dtype, with the
prompts read whole (``share_prefix=False``, as before) and with their common prefix read once
(``share_prefix=True``, what ``smollm2.accuracy`` does now); the settings alternate, ``--repeats`` times,
so a machine whose speed drifts affects both alike. Prints seconds per problem (median) and the ratio, and
how many answers differ between the two ways (bf16 rounds the prefill differently) and their accuracies.

    OMP_NUM_THREADS=1 python benchmarks/smollm2_eval.py --size 128 --repeats 3 \\
        --out benchmarks/results/smollm2_eval.txt
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from nextrap.reference.smollm2 import SmolLM2Config, _stop_id, encode_prompts, generate, load_base


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    lines = [
        f"held-out add2 problems: {args.size}, batch {args.batch}, {torch.get_num_threads()} thread(s), "
        f"{args.repeats} alternating repeats; seconds per problem (median)",
        "",
        "| dtype | whole prompts (s/problem) | shared prefix (s/problem) | ratio | answers that differ | accuracy whole / shared |",
        "|---|---|---|---|---|---|",
    ]
    for dtype in args.dtypes:
        cfg = SmolLM2Config(dtype=dtype)
        model, tokenizer = load_base(cfg)
        task = cfg.get_task()
        problems = task.test_set(args.size)
        stop = _stop_id(tokenizer)
        times: dict[bool, list[float]] = {False: [], True: []}
        answers: dict[bool, torch.Tensor] = {}
        for _ in range(args.repeats):
            for share in (False, True):
                started, out = time.perf_counter(), []
                for i in range(0, len(problems), args.batch):
                    ids = encode_prompts(tokenizer, task, [q for q, _ in problems[i : i + args.batch]])
                    out.append(generate(model, ids, cfg.max_new_tokens, stop, temperature=0, share_prefix=share))
                times[share].append((time.perf_counter() - started) / len(problems))
                answers[share] = torch.cat([torch.nn.functional.pad(a, (0, cfg.max_new_tokens - a.shape[1]), value=stop) for a in out])
        acc = {}
        for share, tokens in answers.items():
            texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
            acc[share] = sum(task.reward(t, a) for t, (_, a) in zip(texts, problems, strict=True)) / len(problems)
        whole, shared = statistics.median(times[False]), statistics.median(times[True])
        differ = int((answers[False] != answers[True]).any(1).sum())
        lines.append(
            f"| {dtype} | {whole:.3f} | {shared:.3f} | {whole / shared:.2f}x | {differ} of {len(problems)} | "
            f"{acc[False]:.3f} / {acc[True]:.3f} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
