"""The bundled reference RLVR setup: tasks, tokenizer, warm start, GRPO checkpoints, and the whole loop.

The warm-started base model is built once per test session into a temporary cache (no network,
tens of seconds); the loop test trains a small setting end to end.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import nextrap
from nextrap.cli.main import main
from nextrap.reference import (
    EndToEndConfig,
    GRPOConfig,
    WarmStartConfig,
    evaluate_adapter,
    get_task,
    load_base,
    load_policy,
    run_end_to_end,
    steps_to_reach,
    train,
)
from nextrap.reference.model import VOCAB, build_tokenizer, encode

WARM = WarmStartConfig()


pytestmark = pytest.mark.usefixtures("reference_cache")  # one warm start for the session (conftest)


def test_tasks_answer_by_hand():
    assert get_task("sort").format([310542]) == ("s310542=", "012345")
    assert get_task("add").format([999, 1]) == ("a999+001=", "1000")
    assert get_task("reverse").format([12]) == ("r000012=", "210000")
    with pytest.raises(ValueError, match="known tasks: sort"):
        get_task("divide")


def test_test_set_is_a_fixed_prefix_and_never_trained_on():
    task = get_task("sort")
    assert task.test_set(100) == task.test_set(300)[:100]
    assert len({p for p, _ in task.test_set(2048)}) == 2048
    gen = torch.Generator().manual_seed(0)
    drawn = task.sample(gen, 4000, exclude=task.test_prompts())
    assert not {p for p, _ in drawn} & task.test_prompts()
    assert all(len(p) == task.prompt_len and len(a) == task.answer_len for p, a in drawn)


def test_tokenizer_is_one_token_per_character_with_bos():
    tok = build_tokenizer()
    ids = encode(tok, ["s310542=", "a001+002="[:8]])
    assert ids.shape == (2, 9)
    assert ids[0, 0] == VOCAB.index("<bos>")
    assert [VOCAB[i] for i in ids[0, 1:]] == list("s310542=")


@pytest.mark.slow
def test_warm_start_is_middling_cached_and_deterministic(reference_cache: Path):
    model, _, folder = load_base(WARM)
    assert folder.parent == reference_cache and (folder / "model.safetensors").exists()
    acc = evaluate_adapter(None, WARM, 512)
    assert 0.1 <= acc <= 0.7, acc  # room for RL to improve, but not hopeless
    again, _, _ = load_base(WARM)  # from the cache
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_grpo_is_deterministic_and_writes_trl_checkpoints(tmp_path: Path):
    from transformers import TrainerState

    cfg = GRPOConfig(steps=4, save_steps=2, eval_size=64, seed=3)
    a = train(tmp_path / "a", cfg)
    b = train(tmp_path / "b", cfg)
    assert sorted(a.checkpoints) == [2, 4]
    for step, folder in a.checkpoints.items():
        assert folder.name == f"checkpoint-{step}"
        for name in ("adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "scheduler.pt"):
            assert (folder / name).is_file(), name
        state = TrainerState.load_from_json(str(folder / "trainer_state.json"))
        assert state.global_step == step
        assert [e["step"] for e in state.log_history if "reward" in e] == list(range(1, step + 1))
        ta, tb = (
            load_file(folder / "adapter_model.safetensors"),
            load_file(b.checkpoints[step] / "adapter_model.safetensors"),
        )
        assert ta.keys() == tb.keys()
        for key in ta:
            torch.testing.assert_close(ta[key], tb[key], rtol=0, atol=0, msg=key)
    # nextrap itself recognises the run as a TRL run
    summary = nextrap.scan(tmp_path / "a")
    assert summary["layout"] == "trl" and summary["steps"] == [2, 4] and summary["rank"] == cfg.rank


@pytest.mark.slow
def test_whole_loop_train_extrapolate_resume_evaluate(tmp_path: Path):
    config = EndToEndConfig(
        observe=30,
        resume=20,
        horizon=3,
        coef=1.0,
        grpo=GRPOConfig(save_steps=5, eval_size=256, prompts_per_step=16),
    )
    r = run_end_to_end(tmp_path / "e2e", config)
    plain, jump_dir, resumed = r.output / "plain", r.output / "jump", r.output / "resumed"

    # RL improves on the warm start
    assert r.plain[max(r.plain)] > r.plain[0] + 0.05, r.plain
    # the extrapolated adapter is a valid adapter with the run's keys and shapes; PEFT loads it
    jump = load_file(jump_dir / "adapter_model.safetensors")
    last = load_file(plain / "checkpoint-30" / "adapter_model.safetensors")
    assert jump.keys() == last.keys() and all(jump[k].shape == last[k].shape for k in jump)
    assert max((jump[k] - last[k]).abs().max() for k in jump) > 0  # it did move
    assert r.accuracy_at_jump == pytest.approx(evaluate_adapter(jump_dir, WARM, 256))
    report = json.loads((r.output / "end_to_end.json").read_text())
    assert report["virtual_step"] == 30 + 15 and report["accuracy_at_jump"] == r.accuracy_at_jump
    # the resumed run continues the step counter from the virtual step
    assert sorted(int(p.name.split("-")[1]) for p in resumed.glob("checkpoint-*")) == [50, 55, 60, 65]
    assert max(r.jump) == 30 + 20 and max(r.plain) == 30 + 15 + 20
    # steps to target: the first evaluation at or above the target, recomputed here from the curves
    for curve, steps in ((r.plain, r.plain_steps_to_target), (r.jump, r.jump_steps_to_target)):
        reached = [s for s in sorted(curve) if curve[s] >= r.target]
        assert steps == (reached[0] if reached else None), (curve, r.target)


@pytest.mark.slow
def test_resumed_run_starts_from_the_given_adapter(tmp_path: Path):
    """A run with a vanishing learning rate must save back the adapter it was started from."""
    base_run = train(tmp_path / "run", GRPOConfig(steps=2, save_steps=2, eval_size=0))
    start = base_run.checkpoints[2]
    init = load_file(start / "adapter_model.safetensors")
    model, _ = load_policy(WARM, start, trainable=True)
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(init)
    tiny = train(
        tmp_path / "resumed",
        GRPOConfig(steps=1, save_steps=1, eval_size=0, lr=1e-12),
        init_adapter=start,
        start_step=7,
    )
    after = load_file(tiny.checkpoints[8] / "adapter_model.safetensors")
    assert after.keys() == init.keys()
    for key in init:
        torch.testing.assert_close(after[key], init[key], rtol=0, atol=1e-9, msg=key)
    # and a real learning rate moves it: the comparison above can fail
    moved = train(tmp_path / "moved", GRPOConfig(steps=1, save_steps=1, eval_size=0), init_adapter=start)
    moved_t = load_file(moved.checkpoints[1] / "adapter_model.safetensors")
    assert max((moved_t[k] - init[k]).abs().max() for k in init) > 1e-5


def test_steps_to_reach():
    assert steps_to_reach({0: 0.2, 10: 0.5, 20: 0.4, 30: 0.7}, 0.45) == 10
    assert steps_to_reach({0: 0.2, 10: 0.3}, 0.9) is None


@pytest.mark.slow
def test_init_adapter_from_another_base_is_refused(tmp_path: Path):
    run = train(tmp_path / "run", GRPOConfig(steps=1, save_steps=1, eval_size=0))
    other = replace(WARM, seed=WARM.seed + 1)
    with pytest.raises(nextrap.ConfigError, match="trained on base"):
        load_policy(other, run.checkpoints[1], trainable=True)


@pytest.mark.slow
def test_cli_train_and_evaluate_reference(tmp_path: Path):
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(
        main, ["train-reference", "-o", str(out), "--steps", "2", "--save-steps", "1", "--eval-size", "32"]
    )
    assert res.exit_code == 0, res.output
    assert "2 checkpoints" in res.output and (out / "checkpoint-2" / "adapter_model.safetensors").exists()
    res = runner.invoke(main, ["evaluate-reference", str(out / "checkpoint-2"), "--size", "64", "--json"])
    assert res.exit_code == 0, res.output
    acc = json.loads(res.output)["accuracy"]
    assert acc == pytest.approx(evaluate_adapter(out / "checkpoint-2", WARM, 64))
    # an adapter nextrap wrote carries its virtual step: the resumed counter continues from it
    res = runner.invoke(
        main, ["extrapolate", str(out), "-o", str(tmp_path / "jump"), "--horizon", "1", "--epochs", "5"]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        main,
        [
            "train-reference",
            "-o",
            str(tmp_path / "resumed"),
            "--steps",
            "1",
            "--init-adapter",
            str(tmp_path / "jump"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "continuing the step counter at 3" in res.output
    assert (tmp_path / "resumed" / "checkpoint-4" / "adapter_model.safetensors").exists()
    # bad input: one line, exit 1, nothing written
    res = runner.invoke(
        main, ["train-reference", "-o", str(tmp_path / "x"), "--init-adapter", str(tmp_path / "nope")]
    )
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "adapter_config.json" in res.output
    assert not (tmp_path / "x").exists()
    res = runner.invoke(main, ["train-reference", "-o", str(out), "--steps", "1"])
    assert res.exit_code == 1 and "already exists" in res.output
    res = runner.invoke(main, ["evaluate-reference", str(out / "checkpoint-2"), "--task", "divide"])
    assert res.exit_code == 1 and "not a reference task" in res.output


@pytest.mark.slow
def test_cli_demo_runs_the_whole_loop(tmp_path: Path):
    """The README's main job, on a short setting: plain run, restart control, one jump arm, paired comparison."""
    out = tmp_path / "demo"
    args = ["demo", "-o", str(out), "--steps", "80", "--save-steps", "5", "--eval-size", "32", "--method", "linear",
            "--coef", "1"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    # observe 3/8 of 80 = 30 steps, jump one horizon (5 intervals = 25 steps), train 80/4 = 20 more
    assert "jump to virtual step 55" in res.output and "after 50 trained steps" in res.output
    assert "backtest on the observed checkpoints" in res.output and "one seed" in res.output
    jump = json.loads((out / "arms" / "linear_c1.json").read_text())
    assert jump["trained_steps"] == 50 and max(int(s) for s in jump["curve"]) == 50
    assert jump["virtual_step"] == 55
    restart = json.loads((out / "arms" / "restart.json").read_text())
    assert restart["virtual_step"] == 30 and max(int(s) for s in restart["curve"]) == 50
    record = json.loads((out / "demo.json").read_text())
    assert record["seed"] == 0 and "verdict" in record
    again = CliRunner().invoke(main, args)  # same settings: resumes, every arm read back
    assert again.exit_code == 0 and again.output == res.output
    other = CliRunner().invoke(main, [*args[:-1], "2"])
    assert other.exit_code == 1 and "--overwrite" in other.output


def _dense_lora(folder: Path) -> dict[str, torch.Tensor]:
    from nextrap.layouts import CheckpointRef
    from nextrap.run.adapters import open_adapter, read_header

    ref = CheckpointRef(0, folder, folder / "adapter_model.safetensors", "explicit", "given")
    header = read_header(ref)
    with open_adapter(ref) as reader:
        return {n: m.scaling * reader.get(m.b_key) @ reader.get(m.a_key) for n, m in header.modules.items()}


@pytest.mark.slow
def test_jump_cycles_follow_rl_extra(tmp_path: Path):
    """Train 3, jump 3 ahead with RL-Extra's linear rule, train 3 more from the jump at the virtual step."""
    from nextrap.live.callbacks import JumpSchedule
    from nextrap.reference.cycles import train_cycles

    cfg = GRPOConfig(steps=6, save_steps=1, prompts_per_step=8, group_size=2, eval_size=16, seed=1)
    result = train_cycles(tmp_path / "cyc", cfg, JumpSchedule(train_steps=3, jump_steps=3, record_every=1))
    assert [(c["start_step"], c["steps"]) for c in result.cycles] == [(0, 3), (6, 3)]
    assert result.cycles[0]["jump"]["to_step"] == 6 and result.cycles[1]["jump"] is None
    report = json.loads((tmp_path / "cyc" / "cycles.json").read_text())
    assert report["method"] == "linear" and len(report["cycles"]) == 2
    # the jump: dW_3 + (3 / 2) (dW_3 - dW_1), cut to the adapter's rank (the cycle's horizon spans steps 1..3)
    d1, d3 = (_dense_lora(tmp_path / "cyc" / "cycle-1" / f"checkpoint-{s}") for s in (1, 3))
    jumped = _dense_lora(tmp_path / "cyc" / "jump-1")
    for name in d3:
        target = (d3[name] + 1.5 * (d3[name] - d1[name])).double()
        U, S, Vh = torch.linalg.svd(target)
        want = (U[:, : cfg.rank] * S[: cfg.rank]) @ Vh[: cfg.rank]
        torch.testing.assert_close(jumped[name].double(), want, rtol=1e-4, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "cyc" / "cycle-2").glob("checkpoint-*")) == [
        "checkpoint-7",
        "checkpoint-8",
        "checkpoint-9",
    ]
    assert set(result.accuracy_by_trained_steps()) == {0, 1, 2, 3, 4, 5, 6}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--jump-every", "10", "--jump-steps", "0"], "lands at or before"),
        (["--jump-every", "5", "--jump-steps", "5"], "twice --save-steps"),
        (["--jump-every", "10"], "both --jump-every"),
    ],
)
def test_cli_bad_jump_schedule(tmp_path: Path, args, needle):
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["train-reference", "-o", str(out), "--steps", "20", "--save-steps", "5", *args])
    assert res.exit_code == 1 and needle in res.output and res.output.count("\n") == 1, res.output
    assert not out.exists()
