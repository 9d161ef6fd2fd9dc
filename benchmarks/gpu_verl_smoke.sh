#!/usr/bin/env bash
# GPU smoke test: verl 0.9.1 writes real LoRA checkpoints, nextrap reads them, verl starts from nextrap's output.
#
# NOT RUN YET: written from verl 0.9.1's source and its examples/tuning/lora/*.sh; it needs one CUDA GPU,
# pip access to PyPI and the Hugging Face Hub (the model). What it does, and what to report back:
#   1. a fresh venv with verl[vllm]==0.9.1 (torch 2.11, vLLM 0.24, transformers 5.9, as verl pins them)
#      and this checkout of nextrap (with --no-deps: nextrap's own dependencies come from verl's set);
#   2. a tiny GSM8K-style data set written locally (arithmetic prompts, data_source openai/gsm8k, so verl's
#      own gsm8k scorer rewards "#### <answer>");
#   3. GRPO with LoRA (r 8) on Qwen2.5-0.5B-Instruct for 4 steps, a checkpoint every step, FSDP2 engine,
#      checkpoint.save_lora_only=True: global_step_{1..4}/actor/ rank shards;
#   4. nextrap scan / backtest / extrapolate on that folder (linear: 4 checkpoints are few for NExt);
#   5. verl again, 1 step, from actor_rollout_ref.model.lora_adapter_path=<nextrap's output>; its log must
#      say "Loading pre-trained LoRA adapter", and nextrap scan of the second run must show the jump's
#      values carried on (step 1 of run 2 close to the output, not to zero).
# Report: the versions printed at the end, each step's exit status, and the log lines named above.
#
#   bash benchmarks/gpu_verl_smoke.sh [WORK_DIR]     # default /tmp/nextrap-verl-smoke
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/nextrap-verl-smoke}
MODEL=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
mkdir -p "$WORK"
cd "$WORK"

if [ ! -x venv/bin/python ]; then
    python3 -m venv venv
    venv/bin/pip install -q --upgrade pip
    venv/bin/pip install -q "verl[vllm]==0.9.1"
    venv/bin/pip install -q --no-deps -e "$REPO"
    venv/bin/pip install -q "safetensors>=0.4" "peft>=0.13" "huggingface-hub>=0.25" "scipy>=1.10" "click>=8.1" "tqdm>=4.64"
fi
PY=$WORK/venv/bin/python
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

# 2. data: 64 train / 16 val arithmetic questions in verl's RLHF parquet schema
$PY - <<'EOF'
import random
import pandas as pd

def rows(n, seed):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        q = f"What is {a} + {b}? Think step by step and end with '#### <number>'."
        out.append({
            "data_source": "openai/gsm8k",
            "prompt": [{"role": "user", "content": q}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(a + b)},
            "extra_info": {"split": "train", "index": i},
        })
    return pd.DataFrame(out)

rows(64, 0).to_parquet("train.parquet")
rows(16, 1).to_parquet("val.parquet")
EOF

COMMON=(
    algorithm.adv_estimator=grpo
    algorithm.use_kl_in_reward=False
    data.train_files="$WORK/train.parquet"
    data.val_files="$WORK/val.parquet"
    data.train_batch_size=16
    data.max_prompt_length=128
    data.max_response_length=128
    data.filter_overlong_prompts=True
    data.truncation=error
    actor_rollout_ref.model.path="$MODEL"
    actor_rollout_ref.model.lora_rank=8
    actor_rollout_ref.model.lora_alpha=16
    actor_rollout_ref.model.target_modules=all-linear
    actor_rollout_ref.model.use_remove_padding=True
    actor_rollout_ref.actor.strategy=fsdp2
    actor_rollout_ref.actor.optim.lr=3e-5
    actor_rollout_ref.actor.ppo_mini_batch_size=16
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8
    actor_rollout_ref.actor.use_kl_loss=False
    actor_rollout_ref.actor.checkpoint.save_lora_only=True
    actor_rollout_ref.rollout.name=vllm
    actor_rollout_ref.rollout.tensor_model_parallel_size=1
    actor_rollout_ref.rollout.gpu_memory_utilization=0.4
    actor_rollout_ref.rollout.n=4
    actor_rollout_ref.rollout.load_format=safetensors
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8
    trainer.logger='["console"]'
    trainer.n_gpus_per_node=1
    trainer.nnodes=1
    trainer.val_before_train=False
    trainer.test_freq=-1
    trainer.save_freq=1
)

# 3. four GRPO steps, a checkpoint each
$PY -m verl.trainer.main_ppo "${COMMON[@]}" trainer.total_training_steps=4 trainer.default_local_dir="$WORK/run1" \
    trainer.resume_mode=disable 2>&1 | tee run1.log
ls -R "$WORK/run1" | head -40

# 4. nextrap reads verl's rank shards directly
$PY -m nextrap scan "$WORK/run1"
$PY -m nextrap backtest "$WORK/run1" --method linear
$PY -m nextrap extrapolate "$WORK/run1" -o "$WORK/jump" --method linear --coef 1 --overwrite
cat "$WORK/jump/adapter_config.json"

# 5. verl starts from the extrapolated adapter
$PY -m verl.trainer.main_ppo "${COMMON[@]}" trainer.total_training_steps=1 trainer.default_local_dir="$WORK/run2" \
    trainer.resume_mode=disable actor_rollout_ref.model.lora_adapter_path="$WORK/jump" 2>&1 | tee run2.log
grep -n "Loading pre-trained LoRA adapter" run2.log
$PY -m nextrap scan --checkpoint "$WORK/jump" --step 5 --checkpoint "$WORK/run2/global_step_1/actor" --step 6

$PY - <<'EOF'
import importlib.metadata as md
for name in ("verl", "vllm", "torch", "transformers", "peft", "nextrap"):
    print(name, md.version(name))
EOF
