"""A GRPO trainer with LoRA (peft), in plain PyTorch, that saves checkpoints the way TRL does.

Each step draws ``prompts_per_step`` problems, samples ``group_size`` answers per problem from the
current policy, rewards exact matches with 1, normalises rewards within each group (the advantage)
and takes ``updates_per_step`` AdamW steps on the clipped policy-gradient objective, optionally
with a KL penalty (k3 estimator) to the base model. Problems and samples at step t depend only on
``(seed, t)``, so a run resumed at step S from some adapter sees the same problems as an unbroken
run does after step S.

Every ``save_steps`` steps it writes ``checkpoint-N/`` with ``adapter_model.safetensors``,
``adapter_config.json``, ``trainer_state.json`` (``global_step``, ``log_history`` with the reward),
``optimizer.pt`` and ``scheduler.pt``; each folder appears atomically. ``resume=True`` continues a
stopped run from its last checkpoint, adapter and optimizer state included.

Two policies share this loop, chosen by the type of ``GRPOConfig.warm``: the tiny model trained from
scratch (:class:`WarmStartConfig`, fixed-length digit answers) and the pretrained SmolLM2-135M-Instruct
(:class:`SmolLM2Config`, chat-formatted problems, ragged answers with a mask).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model

import nextrap.reference.smollm2 as smollm2
from nextrap.errors import ConfigError, InputNotFoundError
from nextrap.formats.report import REPORT_NAME, Report
from nextrap.layouts import CheckpointRef, find_adapter_weights
from nextrap.output.atomic import atomic_directory, check_output
from nextrap.output.merge import check_fits
from nextrap.reference.model import ModelSpec, encode, lora_config
from nextrap.reference.policy import accuracy, answer_logprobs, generate, model_device
from nextrap.reference.smollm2 import SmolLM2Config
from nextrap.reference.tasks import get_task
from nextrap.reference.warmstart import WarmStartConfig, load_base
from nextrap.run.headers import read_header
from nextrap.util.devices import resolve_device
from nextrap.util.files import read_regular, replace_file, write_new
from nextrap.util.validate import check_types

__all__ = [
    "POLICIES",
    "RUN_INFO",
    "GRPOConfig",
    "TrainResult",
    "evaluate_adapter",
    "load_policy",
    "load_run_config",
    "saved_checkpoints",
    "start_inputs",
    "train",
]

# policy name -> the type of GRPOConfig.warm that selects it
POLICIES = {"tiny": WarmStartConfig, "smollm2": SmolLM2Config}

logger = logging.getLogger(__name__)

RUN_INFO = "nextrap_reference.json"


@dataclass(frozen=True)
class GRPOConfig:
    """Settings of one GRPO run. ``steps`` are counted from ``start_step`` (a resumed run's first step is S+1)."""

    steps: int = 60
    save_steps: int = 5
    prompts_per_step: int = 64
    group_size: int = 8
    lr: float = 1e-3
    rank: int = 8
    alpha: float = 16.0
    clip: float = 0.2
    kl_coef: float = 0.0
    updates_per_step: int = 1
    temperature: float = 1.0
    max_grad_norm: float = 1.0
    warmup_steps: int = 0  # linear learning-rate warm-up over this run's first steps (e.g. after a jump)
    seed: int = 0
    eval_size: int = 256
    warm: WarmStartConfig | SmolLM2Config = field(default_factory=WarmStartConfig)
    # where the model runs (cpu, cuda, cuda:N, mps, auto); the random draws stay on the CPU generator,
    # so a run may be resumed on another device (not part of the settings a resume must repeat)
    device: str = "cpu"

    @property
    def policy(self) -> str:
        """``tiny`` or ``smollm2``."""
        return "smollm2" if isinstance(self.warm, SmolLM2Config) else "tiny"

    @classmethod
    def from_dict(cls, values: dict, policy: str = "tiny") -> GRPOConfig:
        """The config ``asdict`` gave (as a run's ``nextrap_reference.json`` records it)."""
        values = dict(values)
        warm = dict(values.pop("warm"))
        if policy == "smollm2":
            values["warm"] = SmolLM2Config(**warm)
        else:
            values["warm"] = WarmStartConfig(**{**warm, "model": ModelSpec(**warm["model"])})
        return cls(**values)

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("steps", "save_steps", "prompts_per_step", "group_size", "rank", "updates_per_step"):
            if getattr(self, name) < 1:
                raise ConfigError(f"GRPOConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ConfigError(f"GRPOConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.group_size < 2:
            raise ConfigError(
                f"GRPOConfig.group_size must be >= 2 (advantages compare answers), got {self.group_size}"
            )
        if self.lr <= 0 or self.temperature <= 0:
            raise ConfigError(
                f"GRPOConfig: lr and temperature must be > 0, got {self.lr} and {self.temperature}"
            )


@dataclass
class TrainResult:
    """Where the run went: its checkpoint folders by step, and the log (rewards, losses, accuracies)."""

    output: Path
    checkpoints: dict[int, Path]
    log_history: list[dict]

    @property
    def final_step(self) -> int:
        return max(self.checkpoints)

    def eval_accuracy(self) -> dict[int, float]:
        """Held-out accuracy at each saved step."""
        return {e["step"]: e["eval_accuracy"] for e in self.log_history if "eval_accuracy" in e}


def load_policy(
    warm: WarmStartConfig,
    adapter: str | os.PathLike | None,
    trainable: bool,
    progress: bool = False,
    device: str = "cpu",
):
    """The base model with ``adapter`` loaded (or the bare base when None) on ``device``, and the tokenizer."""
    if isinstance(warm, SmolLM2Config):
        base, tokenizer = smollm2.load_base(warm)
    else:
        base, tokenizer, _ = load_base(warm, progress)
    base = base.to(resolve_device(device))
    if adapter is None:
        return base, tokenizer
    adapter = Path(adapter)
    config_path = adapter / "adapter_config.json"
    if not config_path.is_file():
        raise InputNotFoundError(f"{adapter}: no adapter_config.json; give a folder holding a PEFT adapter")
    header = _adapter_header(adapter)
    recorded = header.config.base_model
    if recorded and recorded != warm.base_id:
        raise ConfigError(
            f"{adapter} was trained on base {recorded!r}, these settings give {warm.base_id!r}; "
            "pass the --policy, --task and --base-seed the adapter was trained with"
        )
    # another architecture's adapter fails here, in one line, not as a size mismatch inside peft
    check_fits(header.modules.values(), base, f"the {warm.base_id} base model", str(adapter))
    model = PeftModel.from_pretrained(base, adapter, is_trainable=trainable)
    return model.to(resolve_device(device)), tokenizer


def _adapter_header(adapter: Path):
    """The adapter's checked config and tensor header (what it changes, at which shapes)."""
    weights = find_adapter_weights(adapter)
    if weights is None:
        raise InputNotFoundError(f"{adapter}: no adapter weights next to adapter_config.json; give a PEFT adapter folder")
    return read_header(CheckpointRef(step=0, path=adapter, weights=weights, layout="explicit", step_source="given"))


def evaluate_adapter(
    adapter, warm: WarmStartConfig | SmolLM2Config | None = None, size: int = 512, device: str = "cpu"
) -> float:
    """Greedy exact-match accuracy of ``adapter`` (a PEFT folder; None = the base) on the held-out problems."""
    warm = warm or WarmStartConfig()
    model, tokenizer = load_policy(warm, adapter, trainable=False, device=device)
    if isinstance(warm, SmolLM2Config):
        return smollm2.accuracy(model, tokenizer, warm, warm.get_task().test_set(size))
    task = get_task(warm.task)
    return accuracy(model, tokenizer, task, task.test_set(size))


def _task(config: GRPOConfig):
    return config.warm.get_task() if isinstance(config.warm, SmolLM2Config) else get_task(config.warm.task)


def _accuracy(model, tokenizer, config: GRPOConfig, task, problems) -> float:
    if isinstance(config.warm, SmolLM2Config):
        return smollm2.accuracy(model, tokenizer, config.warm, problems)
    return accuracy(model, tokenizer, task, problems)


def load_run_config(output: str | os.PathLike) -> tuple[GRPOConfig, str | None, int]:
    """A run's recorded settings: its config, init adapter and start step (for ``train(resume=True)``)."""
    info_path = Path(output) / RUN_INFO
    if not info_path.is_file():
        raise InputNotFoundError(
            f"{output}: no {RUN_INFO}; --resume continues a run train-reference wrote, give its folder"
        )
    info = json.loads(read_regular(info_path))
    config = GRPOConfig.from_dict(info["config"], info.get("policy", "tiny"))
    return config, info.get("init_adapter"), int(info.get("start_step", 0))


def saved_checkpoints(output: Path) -> dict[int, Path]:
    """A run folder's complete checkpoints (``checkpoint-N`` with a ``trainer_state.json``), by step."""
    found = {}
    for folder in output.glob("checkpoint-*"):
        step = folder.name.removeprefix("checkpoint-")
        if step.isdigit() and (folder / "trainer_state.json").is_file():
            found[int(step)] = folder
    return dict(sorted(found.items()))


def train(
    output: str | os.PathLike,
    config: GRPOConfig | None = None,
    *,
    init_adapter: str | os.PathLike | None = None,
    init_optimizer: str | os.PathLike | None = None,
    start_step: int = 0,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
) -> TrainResult:
    """Run GRPO for ``config.steps`` steps from the base (+ ``init_adapter``), saving into ``output``.

    With ``resume=True`` and an ``output`` this function wrote before, the run continues after its last
    checkpoint (adapter, AdamW moments, log) up to step ``start_step + config.steps``; the settings
    must be the recorded ones (``steps`` may grow). Problems and samples depend only on the seed and
    the step, so a resumed run sees what an unbroken one would.

    ``init_optimizer``: a checkpoint folder whose ``optimizer.pt`` (AdamW's moments) the new run starts
    with, instead of a fresh optimizer: what "keep the moments across a jump" means. The moments belong
    to the weights before the jump; they are stale but of the right shapes.
    """
    config = config or GRPOConfig()
    if start_step < 0:
        raise ConfigError(f"start_step must be >= 0, got {start_step}")
    inputs = start_inputs(init_adapter, init_optimizer)
    output, resuming = _checked_output(Path(output), config, init_adapter, start_step, overwrite, resume, inputs)
    task = _task(config)
    saved = saved_checkpoints(output) if resuming else {}
    model, tokenizer = _starting_policy(config, saved, init_adapter, progress)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = _optimizer(params, config, None if saved else init_optimizer)
    exclude = task.test_prompts()
    test_set = task.test_set(config.eval_size) if config.eval_size else []
    _write_run_info(output, config, init_adapter, init_optimizer, start_step, resuming)

    log: list[dict] = []
    checkpoints: dict[int, Path] = dict(saved)
    first = start_step + 1
    if saved:
        log, first = _restore_training_state(output, saved, opt, sched)
    elif test_set:
        log.append({"step": start_step, "eval_accuracy": _accuracy(model, tokenizer, config, task, test_set)})
    last = start_step + config.steps
    bar = _step_bar(first, last, start_step, config.steps, progress)
    running = None
    for step in bar:
        entry = _grpo_step(model, tokenizer, task, config, opt, sched, params, step, exclude)
        log.append(entry)
        running = entry["reward"] if running is None else 0.9 * running + 0.1 * entry["reward"]
        bar.set_postfix(reward=f"{running:.3f}")
        logger.info("step %d: reward %.3f, loss %.4f", step, entry["reward"], entry["loss"])
        if step % config.save_steps == 0 or step == last:
            if test_set:
                log.append(
                    {"step": step, "eval_accuracy": _accuracy(model, tokenizer, config, task, test_set)}
                )
            checkpoints[step] = _save_checkpoint(output, model, opt, sched, step, last, config, log)
    return TrainResult(output=output, checkpoints=checkpoints, log_history=log)


def start_inputs(init_adapter=None, init_optimizer=None) -> list[Path]:
    """What a run started from an adapter reads, which its output may not touch (:mod:`nextrap.util.inputs`):
    the adapter, the report it takes its virtual step from, the checkpoint whose optimizer it takes."""
    paths = [Path(p) for p in (init_adapter, init_optimizer) if p]
    report = Report.find(init_adapter) if init_adapter else None
    if report is not None and report.folder is not None:
        paths.append(Path(report.folder) / REPORT_NAME)
    return paths


def _checked_output(
    output: Path, config: GRPOConfig, init_adapter, start_step: int, overwrite: bool, resume: bool, inputs: list
) -> tuple[Path, bool]:
    """``(output, resuming)``: a run to resume must have been started with the same settings; a new
    one must not overwrite anything without ``overwrite`` (nor ever its own input)."""
    resuming = resume and (output / RUN_INFO).is_file()
    if resuming:
        _check_same_run(output, config, init_adapter, start_step)
        return output, True
    return check_output(output, overwrite, inputs), False


def _optimizer(params: list, config: GRPOConfig, init_optimizer):
    """AdamW (with ``init_optimizer``'s moments when given) and its warm-up schedule."""
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    if init_optimizer is not None:
        _load_moments(opt, Path(init_optimizer))  # before the schedule, which then sets its own first lr
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, _WarmUp(config.warmup_steps))


def _starting_policy(config: GRPOConfig, saved: dict[int, Path], init_adapter, progress: bool):
    """``(peft model, tokenizer)`` to train: the last saved checkpoint when resuming, else the base
    with ``init_adapter`` or with a fresh LoRA (seeded by ``config.seed``)."""
    if saved:
        return load_policy(config.warm, saved[max(saved)], True, progress, config.device)
    if init_adapter is None:
        base, tokenizer = load_policy(config.warm, None, True, progress)
        torch.manual_seed(config.seed)  # LoRA A init, on the CPU whatever the device: the same init everywhere
        model = get_peft_model(base, lora_config(config.rank, config.alpha))
        return model.to(resolve_device(config.device)), tokenizer
    return load_policy(config.warm, init_adapter, True, progress, config.device)


def _write_run_info(
    output: Path, config: GRPOConfig, init_adapter, init_optimizer, start_step: int, resuming: bool
) -> None:
    """Write the run's settings (``RUN_INFO``) atomically, into a fresh ``output`` unless resuming."""
    info = {
        "config": asdict(config),
        "policy": config.policy,
        "init_adapter": str(init_adapter) if init_adapter else None,
        "init_optimizer": str(init_optimizer) if init_optimizer else None,
        "start_step": start_step,
        "base_model": config.warm.base_id,
    }
    if not resuming:
        if output.exists():
            shutil.rmtree(output)
        output.mkdir(parents=True)
    replace_file(output / RUN_INFO, json.dumps(info, indent=2) + "\n")


def _restore_training_state(
    output: Path, saved: dict[int, Path], opt: torch.optim.Optimizer, sched
) -> tuple[list[dict], int]:
    """Load the last checkpoint's optimizer and schedule state: its log and the first step to train."""
    last_saved = max(saved)
    state = json.loads((saved[last_saved] / "trainer_state.json").read_text())
    # saved on any device, loaded onto the CPU; AdamW moves its state next to the parameters
    opt.load_state_dict(torch.load(saved[last_saved] / "optimizer.pt", weights_only=True, map_location="cpu"))
    sched.load_state_dict(torch.load(saved[last_saved] / "scheduler.pt", weights_only=True, map_location="cpu"))
    logger.info("resuming %s after step %d", output, last_saved)
    return list(state["log_history"]), last_saved + 1


def _step_bar(first: int, last: int, start_step: int, steps: int, progress: bool):
    """A progress bar over steps ``first..last`` of a run of ``steps`` steps after ``start_step``."""
    from tqdm.auto import tqdm

    return tqdm(
        range(first, last + 1),
        desc="GRPO",
        disable=not progress,
        dynamic_ncols=True,
        initial=first - start_step - 1,
        total=steps,
    )


class _WarmUp:
    """Learning-rate factor: linear from 1/n to 1 over the first ``n`` steps, then 1 (a class: picklable)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def __call__(self, k: int) -> float:
        return 1.0 if self.steps <= 0 else min(1.0, (k + 1) / self.steps)


def _load_moments(opt: torch.optim.Optimizer, folder: Path) -> None:
    path = folder / "optimizer.pt"
    if not path.is_file():
        raise InputNotFoundError(f"{folder}: no optimizer.pt to take AdamW's moments from; give a checkpoint folder")
    state = torch.load(path, weights_only=True, map_location="cpu")
    try:
        opt.load_state_dict(state)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{path}: its optimizer state does not fit this model ({exc})") from None


def _check_same_run(output: Path, config: GRPOConfig, init_adapter, start_step: int) -> None:
    """Refuse to resume ``output`` with settings other than the ones it was started with."""
    recorded, recorded_init, recorded_start = load_run_config(output)
    mine = {**asdict(config), "steps": None, "device": None, "init_adapter": str(init_adapter) if init_adapter else None}
    theirs = {**asdict(recorded), "steps": None, "device": None, "init_adapter": recorded_init}
    differ = sorted(k for k in mine if mine[k] != theirs.get(k))
    if differ or start_step != recorded_start or config.policy != recorded.policy:
        raise ConfigError(
            f"{output}: was started with other settings ({', '.join(differ) or 'policy/start step'}); "
            "resume it with the settings in its nextrap_reference.json, or train into a new folder"
        )
    if start_step + config.steps < max(saved_checkpoints(output), default=0):
        raise ConfigError(
            f"{output}: already trained past step {start_step + config.steps}; ask for more steps to resume"
        )


def _seed_for(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


def _grpo_step(model, tokenizer, task, config: GRPOConfig, opt, sched, params, step: int, exclude) -> dict:
    gen = torch.Generator().manual_seed(_seed_for(config.seed, step))
    problems = task.sample(gen, config.prompts_per_step, exclude)
    chat = isinstance(config.warm, SmolLM2Config)
    prompts, answers, mask, rewards, logprobs_of = _rollout(model, tokenizer, task, config, problems, gen)
    rewards = rewards.to(prompts.device)
    grouped = rewards.view(-1, config.group_size)
    adv = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1, 1)
    # With one update per step the old policy is the current one: the ratio is 1 and its forward pass
    # would be wasted (the pretrained policy's steps are minutes on a CPU). The tiny policy keeps it.
    skip_old = chat and config.updates_per_step == 1
    with torch.no_grad():
        old = None if skip_old else logprobs_of(model, prompts, answers)
        ref = None
        if config.kl_coef > 0:
            with model.disable_adapter():
                ref = logprobs_of(model, prompts, answers)
    for _ in range(config.updates_per_step):
        logp = logprobs_of(model, prompts, answers)
        loss, kl = _policy_loss(logp, old, ref, adv, mask, config)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        opt.step()
        sched.step()
    entry = {
        "step": step,
        "reward": rewards.mean().item(),
        "reward_std": grouped.std(1).mean().item(),
        "loss": loss.item(),
        "kl": kl.item(),
        "grad_norm": grad_norm.item(),
        "learning_rate": sched.get_last_lr()[0],
    }
    if mask is not None:
        entry["answer_tokens"] = mask.sum(1).float().mean().item()
    return entry


def _rollout(model, tokenizer, task, config: GRPOConfig, problems, gen: torch.Generator):
    """Sample ``config.group_size`` answers per problem and reward exact matches.

    Returns ``(prompts, answers, mask, rewards, logprobs_of)``: token tensors with one row per sample,
    the answers' token mask (``None`` for the tiny policy's fixed-length answers), float rewards
    ``(samples,)`` in {0, 1}, and the function that scores the answers' log-probabilities under a model.
    """
    if isinstance(config.warm, SmolLM2Config):
        prompts, answers, mask, rewards = smollm2.rollout(
            model, tokenizer, config.warm, problems, config.group_size, config.temperature, gen
        )
        return prompts, answers, mask, rewards, smollm2.answer_logprobs
    device = model_device(model)
    prompts = encode(tokenizer, [p for p, _ in problems]).repeat_interleave(config.group_size, 0).to(device)
    targets = encode(tokenizer, [a for _, a in problems], bos=False).repeat_interleave(config.group_size, 0)
    targets = targets.to(device)
    answers = generate(model, prompts, task.answer_len, config.temperature, gen)
    rewards = (answers == targets).all(1).float()
    return prompts, answers, None, rewards, answer_logprobs


def _policy_loss(
    logp: torch.Tensor,
    old: torch.Tensor | None,
    ref: torch.Tensor | None,
    adv: torch.Tensor,
    mask: torch.Tensor | None,
    config: GRPOConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, kl)``: the clipped policy-gradient loss (plus ``kl_coef`` times the k3 KL estimate to
    ``ref`` when given) on per-token log-probabilities ``(samples, tokens)``; ``old=None`` means the
    old policy is the current one (ratio 1, gradient of ``logp``)."""
    ratio = torch.exp(logp - (logp.detach() if old is None else old))
    objective = torch.minimum(ratio * adv, ratio.clamp(1 - config.clip, 1 + config.clip) * adv)
    kl = torch.zeros((), device=logp.device)
    if ref is not None:
        kl_tokens = torch.exp(ref - logp) - (ref - logp) - 1
    if mask is None:
        loss = -objective.mean()
        if ref is not None:
            kl = kl_tokens.mean()
    else:  # mean over each answer's own tokens, then over answers (GRPO)
        weights = mask.float() / mask.sum(1, keepdim=True).clamp(min=1)
        loss = -(objective * weights).sum(1).mean()
        if ref is not None:
            kl = (kl_tokens * weights).sum(1).mean()
    if ref is not None:
        loss = loss + config.kl_coef * kl
    return loss, kl


def _save_checkpoint(output: Path, model, opt, sched, step: int, last: int, config: GRPOConfig, log) -> Path:
    folder = output / f"checkpoint-{step}"
    with atomic_directory(folder, overwrite=False) as tmp:
        # the base id is not a Hub model: stop peft from looking its config up online
        model.save_pretrained(tmp, save_embedding_layers=False)
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        torch.save(sched.state_dict(), tmp / "scheduler.pt")
        # the fields of transformers.TrainerState that a resuming Trainer reads
        state = {
            "global_step": step,
            "max_steps": last,
            "save_steps": config.save_steps,
            "logging_steps": 1,
            "eval_steps": config.save_steps,
            "train_batch_size": config.prompts_per_step * config.group_size,
            "num_train_epochs": 1,
            "epoch": step / last,
            "total_flos": 0.0,
            "log_history": list(log),
            "best_metric": None,
            "best_model_checkpoint": None,
            "is_local_process_zero": True,
            "is_world_process_zero": True,
            "is_hyper_param_search": False,
            "trial_name": None,
            "trial_params": None,
        }
        write_new(tmp / "trainer_state.json", json.dumps(state, indent=2) + "\n")
    return folder
