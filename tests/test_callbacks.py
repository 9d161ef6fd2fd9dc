"""Live training loops: the recorder, the in-place jump, and the transformers TrainerCallback."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

import nextrap
from nextrap.live.callbacks import TrajectoryRecorder, extrapolate_into

from .conftest import tiny_llama

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _peft_model(seed: int = 0):
    torch.manual_seed(seed)
    return get_peft_model(tiny_llama(seed), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))


def _lora_params(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def _drive(model, step: int) -> None:
    """Put the LoRA factors where a straight-line run would be at ``step``: B grows linearly."""
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for name, p in _lora_params(model).items():
            if "lora_B" in name:
                direction = torch.randn(p.shape, generator=gen)
                p.copy_(direction * step / 100)


def _first_step_capture():
    """A TrainerCallback keeping the LoRA tensors (saved-key names) and the step counter at the first step."""
    from transformers import TrainerCallback

    class Capture(TrainerCallback):
        def __init__(self):
            self.step: int | None = None
            self.lora: dict[str, torch.Tensor] = {}

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if self.step is None:
                self.step = state.global_step
                self.lora = {
                    n.replace(".default", ""): p.detach().clone() for n, p in _lora_params(model).items()
                }

    return Capture()


@pytest.mark.parametrize("in_memory", [False, True])
def test_recorder_writes_peft_adapters_nextrap_can_read(tmp_path, in_memory: bool):
    model = _peft_model()
    with TrajectoryRecorder(None if in_memory else tmp_path / "traj", every=10, in_memory=in_memory) as rec:
        for step in range(1, 41):
            _drive(model, step)
            rec.maybe_record(model, step)
        assert rec.steps == [10, 20, 30, 40]
        paths = rec.checkpoints(tmp_path / "scratch")
        summary = nextrap.scan(None, checkpoints=paths, steps=rec.steps)
        assert summary["modules"] == 2 * len(TARGETS) and summary["rank"] == 4
        saved = load_file(paths[-1] / "adapter_model.safetensors")
        for name, p in _lora_params(model).items():
            key = name.replace(".default", "")
            torch.testing.assert_close(saved[key], p.detach(), rtol=0, atol=0)
        with pytest.raises(nextrap.ConfigError, match="must increase"):
            rec.record(model, 40)


def test_extrapolate_into_copies_in_place_and_resets_moments(tmp_path):
    model = _peft_model()
    params = _lora_params(model)
    ids = {n: id(p) for n, p in params.items()}
    opt = torch.optim.AdamW(params.values(), lr=1e-3)
    rec = TrajectoryRecorder(tmp_path / "traj", every=10)
    for step in range(10, 81, 10):
        _drive(model, step)
        rec.record(model, step)
    # give the optimizer some state to reset
    sum(p.sum() for p in params.values()).backward()
    opt.step()
    _drive(model, 80)  # back on the trajectory
    options = nextrap.ExtrapolateOptions(method="linear", horizon=2)
    offline = nextrap.extrapolate(
        tmp_path / "traj",
        tmp_path / "offline",
        nextrap.ExtrapolateOptions(method="linear", horizon=2, coefs=(1.5,)),
    )
    jump = extrapolate_into(model, rec, 1.5, optimizer=opt, options=options)
    expected = load_file(offline.output / "adapter_model.safetensors")
    after = _lora_params(model)
    assert {n: id(p) for n, p in after.items()} == ids  # same Parameter objects
    assert all(any(p is q for q in opt.param_groups[0]["params"]) for p in after.values())
    for name, p in after.items():
        torch.testing.assert_close(p.detach(), expected[name.replace(".default", "")], rtol=0, atol=0)
    assert jump.replaced == len(params) and jump.reset_moments == len(params) and not opt.state
    assert jump.virtual_step == 80 + 1.5 * 20
    # a straight-line run: the jump lands exactly on dW(110) = s B(110) A (the refit to rank r is exact)
    truth = _peft_model()
    _drive(truth, 110)
    want, got = _lora_params(truth), _lora_params(model)
    for name in want:
        if "lora_B" in name:
            a_name = name.replace("lora_B", "lora_A")
            torch.testing.assert_close(
                got[name] @ got[a_name], want[name] @ want[a_name], rtol=1e-4, atol=1e-6
            )
    # training goes on with the same optimizer: one step moves the swapped-in values and fills fresh moments
    before_step = {n: p.detach().clone() for n, p in after.items()}
    loss = sum(p.square().sum() for p in after.values())
    loss.backward()
    opt.step()
    assert all(not torch.equal(p.detach(), before_step[n]) for n, p in after.items())
    assert all(opt.state[p]["step"] == 1 for p in after.values())


def test_extrapolate_into_needs_snapshots(tmp_path):
    rec = TrajectoryRecorder(tmp_path / "t")
    with pytest.raises(nextrap.ConfigError, match="at least 2"):
        extrapolate_into(_peft_model(), rec)


def test_trainer_callback_swaps_weights_in_place_and_training_continues(tmp_path):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from nextrap.live.transformers import NExtCallback

    model = _peft_model()
    gen = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 61, (64, 12), generator=gen)]
    seen: dict[str, dict] = {"before": {}, "after": {}}

    class Probe(TrainerCallback):
        def __init__(self, when: str):
            self.when = when

        def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            if state.global_step == 8:
                seen[self.when] = {n: p.detach().clone() for n, p in _lora_params(model).items()}
                seen[self.when + "_ids"] = {id(p) for p in _lora_params(model).values()}
                seen[self.when + "_opt"] = {id(p) for g in optimizer.param_groups for p in g["params"]}

    nextcb = NExtCallback(
        jump_at=8, coef=1.0, record_every=2, options=nextrap.ExtrapolateOptions(method="linear", horizon=1)
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=12,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=data, callbacks=[Probe("before"), nextcb, Probe("after")]
    )
    out = trainer.train()
    assert out.global_step == 12 and torch.isfinite(torch.tensor(out.training_loss))
    assert (
        len(nextcb.jumps) == 1
        and nextcb.jumps[0].step == 8
        and nextcb.jumps[0].replaced == 2 * 2 * len(TARGETS)
    )
    moved = max(float((seen["after"][n] - seen["before"][n]).abs().max()) for n in seen["before"])
    assert moved > 0  # the jump changed the live weights
    assert (
        seen["before_ids"] == seen["after_ids"] <= seen["after_opt"]
    )  # in place: the optimizer still holds them


@pytest.mark.parametrize("optimizer", ["keep", "reset"])
def test_format_trl_is_resumed_by_the_trainer(tmp_path, optimizer: str):
    """transformers' Trainer (whose resume TRL's trainers inherit) resumes from a --format trl folder."""
    from click.testing import CliRunner
    from transformers import Trainer, TrainingArguments

    from nextrap.cli.main import main

    gen = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 61, (64, 12), generator=gen)]

    def args(out, steps):
        return TrainingArguments(
            output_dir=str(out),
            max_steps=steps,
            per_device_train_batch_size=8,
            learning_rate=1e-2,
            save_steps=2,
            save_strategy="steps",
            report_to=[],
            use_cpu=True,
            seed=0,
        )

    Trainer(model=_peft_model(), args=args(tmp_path / "run", 8), train_dataset=data).train()
    jump = tmp_path / "jump"
    inside = CliRunner().invoke(
        main, ["extrapolate", str(tmp_path / "run"), "-o", str(tmp_path / "run" / "j"), "--format", "trl"]
    )
    assert inside.exit_code == 1 and "checkpoint rotation" in inside.output
    res = CliRunner().invoke(
        main,
        [
            "extrapolate",
            str(tmp_path / "run"),
            "-o",
            str(jump),
            "--format",
            "trl",
            "--method",
            "linear",
            "--horizon",
            "1",
            "--coef",
            "2",
            "--optimizer",
            optimizer,
        ],
    )
    assert res.exit_code == 0, res.output
    ckpt = jump / "checkpoint-12"  # 8 + 2 * 2
    assert (ckpt / "optimizer.pt").exists() == (optimizer == "keep")
    expected = load_file(ckpt / "adapter_model.safetensors")

    capture = _first_step_capture()
    trainer = Trainer(
        model=_peft_model(), args=args(tmp_path / "resumed", 16), train_dataset=data, callbacks=[capture]
    )
    trainer.train(resume_from_checkpoint=str(ckpt))
    assert capture.step == 12 and trainer.state.global_step == 16
    for key, value in expected.items():
        torch.testing.assert_close(capture.lora[key], value, rtol=0, atol=0)


def _trl_grpo(tmp_path, monkeypatch, out, max_steps, callbacks=(), save_steps=None):
    """TRL's GRPOTrainer on nextrap's reference policy (offline, CPU, seconds)."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from nextrap.reference import WarmStartConfig, get_task, load_base
    from nextrap.reference.model import lora_config

    task = get_task(WarmStartConfig().task)  # the warm start comes from the session's reference_cache
    base, tokenizer, _ = load_base(WarmStartConfig())
    tokenizer.eos_token = "<pad>"
    problems = task.sample(torch.Generator().manual_seed(0), 64, task.test_prompts())
    dataset = Dataset.from_list([{"prompt": p, "answer": a} for p, a in problems])

    def exact(prompts, completions, answer, **kwargs):
        return [float(c.replace(" ", "")[: len(a)] == a) for c, a in zip(completions, answer, strict=True)]

    args = trl.GRPOConfig(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=task.answer_len,
        learning_rate=1e-3,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        report_to=[],
        use_cpu=True,
        seed=0,
    )
    return trl.GRPOTrainer(
        model=base,
        reward_funcs=exact,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(),
        callbacks=list(callbacks),
    )


@pytest.mark.slow
@pytest.mark.usefixtures("reference_cache")
def test_trl_grpo_trainer_with_the_callback(tmp_path, monkeypatch):
    """TRL's GRPOTrainer on the reference policy: the callback jumps in place and training goes on."""
    from transformers import TrainerCallback

    from nextrap.live.transformers import NExtCallback

    seen = {}

    class Before(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 4:
                seen["before"] = {n: p.detach().clone() for n, p in _lora_params(model).items()}
                seen["ids"] = {n: id(p) for n, p in _lora_params(model).items()}

    class After(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 4:
                seen["after"] = {n: p.detach().clone() for n, p in _lora_params(model).items()}
                seen["after_ids"] = {n: id(p) for n, p in _lora_params(model).items()}

    callback = NExtCallback(
        jump_at=4, record_every=1, options=nextrap.ExtrapolateOptions(method="linear", horizon=1)
    )
    trainer = _trl_grpo(tmp_path, monkeypatch, tmp_path / "out", 6, [Before(), callback, After()])
    trainer.train()
    assert trainer.state.global_step == 6 and len(callback.jumps) == 1
    assert seen["ids"] == seen["after_ids"]
    assert max(float((seen["after"][n] - seen["before"][n]).abs().max()) for n in seen["before"]) > 0


@pytest.mark.slow
@pytest.mark.usefixtures("reference_cache")
def test_format_trl_is_resumed_by_trls_grpo_trainer(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from nextrap.cli.main import main

    _trl_grpo(tmp_path, monkeypatch, tmp_path / "run", 4, save_steps=1).train()
    args = ["extrapolate", str(tmp_path / "run"), "-o", str(tmp_path / "jump"), "--format", "trl"]
    res = CliRunner().invoke(main, [*args, "--method", "linear", "--horizon", "1", "--optimizer", "keep"])
    assert res.exit_code == 0, res.output
    ckpt = tmp_path / "jump" / "checkpoint-5"  # 4 + 1 * 1
    expected = load_file(ckpt / "adapter_model.safetensors")
    capture = _first_step_capture()
    trainer = _trl_grpo(tmp_path, monkeypatch, tmp_path / "resumed", 7, [capture])
    trainer.train(resume_from_checkpoint=str(ckpt))
    assert capture.step == 5 and trainer.state.global_step == 7
    assert capture.lora.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(capture.lora[key], value, rtol=0, atol=0)


def test_jump_cycles_linear_lands_where_a_straight_run_would(tmp_path):
    """RL-Extra's cycle with linear: on a run whose update grows linearly, each jump of N steps is exact."""
    from nextrap.live.callbacks import JumpCycles, JumpSchedule

    model = _peft_model()
    gen = torch.Generator().manual_seed(7)
    velocity = {n: torch.randn(p.shape, generator=gen) / 100 for n, p in _lora_params(model).items() if "lora_B" in n}
    cycles = JumpCycles(JumpSchedule(train_steps=20, jump_steps=30, record_every=5, cycles=2))
    cycles.begin(model, 0)
    opt = torch.optim.SGD(list(_lora_params(model).values()), lr=0.0)
    for step in range(1, 61):
        with torch.no_grad():  # one "training step": B moves by its velocity
            for name, p in _lora_params(model).items():
                if name in velocity:
                    p.add_(velocity[name])
        cycles.step_end(model, step, opt)
    cycles.close()
    assert [j.step for j in cycles.jumps] == [20, 40]  # the third cycle ends the run: no jump after it
    assert [j.virtual_step for j in cycles.jumps] == [50, 70]
    for name, p in _lora_params(model).items():
        if name in velocity:  # 60 steps trained + 2 x 30 jumped
            torch.testing.assert_close(p.detach(), velocity[name] * 120, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"train_steps": 20, "jump_steps": 0}, "lands at or before"),
        ({"train_steps": 4, "jump_steps": 10, "record_every": 5}, "a jump needs 2"),
    ],
)
def test_bad_jump_schedule_is_a_one_line_error(kwargs, needle):
    from nextrap.live.callbacks import JumpSchedule

    with pytest.raises(nextrap.ConfigError, match=needle) as info:
        JumpSchedule(**kwargs)
    assert "\n" not in str(info.value)


def test_trainer_callback_runs_jump_cycles(tmp_path):
    from transformers import Trainer, TrainingArguments

    from nextrap.live.callbacks import JumpSchedule
    from nextrap.live.transformers import NExtCallback

    model = _peft_model()
    gen = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 61, (64, 12), generator=gen)]
    nextcb = NExtCallback(
        schedule=JumpSchedule(train_steps=4, jump_steps=4, record_every=2),
        options=nextrap.ExtrapolateOptions(method="linear"),
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=12,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
    )
    out = Trainer(model=model, args=args, train_dataset=data, callbacks=[nextcb]).train()
    assert out.global_step == 12 and torch.isfinite(torch.tensor(out.training_loss))
    assert [j.step for j in nextcb.jumps] == [4, 8, 12] and [j.virtual_step for j in nextcb.jumps] == [8, 12, 16]
    with pytest.raises(nextrap.ConfigError, match="either jump_at"):
        NExtCallback(jump_at=4, schedule=JumpSchedule(train_steps=4, jump_steps=4, record_every=2))
