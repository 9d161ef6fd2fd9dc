"""The warm start: a short supervised pre-training that leaves the base model partly able to solve the task.

RL needs a policy that is sometimes right (a group whose rewards are all 0 teaches nothing), and
room to improve. So the base model is trained with teacher forcing until its greedy accuracy on a
validation set first reaches ``target_accuracy`` (checked every ``eval_every`` steps), then saved.

The result is cached under ``cache_root()/<base id>/`` (``NEXTRAP_CACHE``, else
``$XDG_CACHE_HOME/nextrap``, else ``~/.cache/nextrap``), keyed by a hash of all settings; it is
also deterministic, so a missing cache is simply regenerated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from nextrap.reference.model import ModelSpec, build_model, build_tokenizer, encode
from nextrap.reference.policy import accuracy, answer_logprobs
from nextrap.reference.tasks import get_task

__all__ = ["WarmStartConfig", "cache_root", "load_base"]

logger = logging.getLogger(__name__)

# Bump when the pre-training procedure changes, so old caches are not reused.
_FORMAT = 1
_INFO = "warmstart.json"


@dataclass(frozen=True)
class WarmStartConfig:
    """Settings of the supervised warm start; every field is part of the cache key."""

    task: str = "sort"
    model: ModelSpec = field(default_factory=ModelSpec)
    seed: int = 0
    target_accuracy: float = 0.2
    max_steps: int = 4000
    batch_size: int = 128
    lr: float = 2e-3
    eval_every: int = 50
    eval_size: int = 256

    def __post_init__(self) -> None:
        get_task(self.task)
        if not 0 < self.target_accuracy < 1:
            raise ValueError(f"WarmStartConfig.target_accuracy must be in (0, 1), got {self.target_accuracy}")

    @property
    def base_id(self) -> str:
        """Names the base model (adapter configs record it as ``base_model_name_or_path``)."""
        key = json.dumps({"format": _FORMAT, **asdict(self)}, sort_keys=True)
        return f"nextrap-reference-{self.task}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def cache_root() -> Path:
    """Where warm starts are cached."""
    if os.environ.get("NEXTRAP_CACHE"):
        return Path(os.environ["NEXTRAP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nextrap"


def _pretrain(cfg: WarmStartConfig, progress: bool) -> tuple[PreTrainedModel, dict]:
    task, tokenizer = get_task(cfg.task), build_tokenizer()
    model = build_model(cfg.model, cfg.seed)
    heldout = task.validation_set(cfg.eval_size, seed=cfg.seed + 20_000)
    exclude = task.test_prompts()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    bar = _bar(progress, cfg.max_steps, "warm start (supervised)")
    acc, step = accuracy(model, tokenizer, task, heldout), 0
    model.train()
    while acc < cfg.target_accuracy and step < cfg.max_steps:
        batch = task.sample(gen, cfg.batch_size, exclude)
        prompts = encode(tokenizer, [p for p, _ in batch])
        answers = encode(tokenizer, [a for _, a in batch], bos=False)
        loss = -answer_logprobs(model, prompts, answers).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % cfg.eval_every == 0:
            acc = accuracy(model, tokenizer, task, heldout)
            bar.set_postfix(acc=f"{acc:.2f}")
        bar.update(1)
    bar.close()
    model.eval()
    if acc < cfg.target_accuracy:
        logger.warning("warm start stopped at max_steps=%d with accuracy %.3f", cfg.max_steps, acc)
    return model, {"steps": step, "validation_accuracy": acc}


def _bar(enabled: bool, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def load_base(
    cfg: WarmStartConfig | None = None, progress: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, Path]:
    """The warm-started base model (float32, eval mode), its tokenizer and its cache folder.

    Pre-trains and caches on first use (tens of seconds on 2 CPU cores); later calls load the cache.
    """
    cfg = cfg or WarmStartConfig()
    folder = cache_root() / cfg.base_id
    if not (folder / _INFO).exists():
        model, info = _pretrain(cfg, progress)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cfg.base_id}-", dir=folder.parent))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            info = {"base_id": cfg.base_id, "settings": asdict(cfg), **info}
            (tmp / _INFO).write_text(json.dumps(info, indent=2) + "\n")
            if folder.exists():  # a half-written folder from an interrupted run
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    model = build_model(cfg.model, cfg.seed)
    missing, unexpected = model.load_state_dict(load_file(folder / "model.safetensors"), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # the tied head is stored once, as the embedding
        raise RuntimeError(f"{folder}: cached base model does not match its settings; delete the folder")
    model.tie_weights()
    # adapters record this as base_model_name_or_path: it names the settings, not a cache path
    model.config.name_or_path = cfg.base_id
    model.name_or_path = cfg.base_id  # what peft reads
    return model.eval(), build_tokenizer(), folder
