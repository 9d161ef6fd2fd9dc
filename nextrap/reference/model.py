"""The reference policy: a character-level tokenizer and a tiny Llama/Qwen2-like causal LM, built offline.

Nothing is downloaded: the tokenizer is assembled with the ``tokenizers`` library from a fixed
vocabulary, and the model is initialised from a transformers config with a seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from peft import LoraConfig
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

__all__ = ["LORA_TARGETS", "VOCAB", "ModelSpec", "build_model", "build_tokenizer", "encode", "lora_config"]

PAD, BOS, UNK = "<pad>", "<bos>", "<unk>"
# Every character a task can produce; the tasks module keeps its prompts inside this set.
VOCAB = [PAD, BOS, UNK, *"0123456789", *"a+rs="]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class ModelSpec:
    """Size of the reference model. ``family`` is ``llama`` or ``qwen2`` (same blocks, Qwen2 has q/k/v biases)."""

    family: str = "llama"
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 192
    max_positions: int = 32

    def __post_init__(self) -> None:
        if self.family not in ("llama", "qwen2"):
            raise ValueError(f"ModelSpec.family must be 'llama' or 'qwen2', got {self.family!r}")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(
                f"ModelSpec: hidden ({self.hidden}) must divide into heads ({self.heads}), "
                f"and heads into kv_heads ({self.kv_heads})"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character of ``VOCAB``; a BOS token is prepended to every encoded text."""
    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, pad_token=PAD, unk_token=UNK)


def encode(tokenizer: PreTrainedTokenizerFast, texts: list[str], bos: bool = True) -> torch.Tensor:
    """Token ids ``(len(texts), L)`` int64 for texts of equal length (tasks guarantee it)."""
    ids = tokenizer(texts, add_special_tokens=bos)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def build_model(spec: ModelSpec, seed: int) -> PreTrainedModel:
    """A freshly initialised causal LM of ``spec``'s size (float32, eval mode), deterministic for ``seed``."""
    common = dict(
        vocab_size=len(VOCAB),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_positions,
        pad_token_id=VOCAB.index(PAD),
        bos_token_id=VOCAB.index(BOS),
        eos_token_id=VOCAB.index(PAD),
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    if spec.family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=False))
    return model.eval()


def lora_config(rank: int = 8, alpha: float = 16.0) -> LoraConfig:
    """LoRA on every linear layer of the blocks, no dropout (so training is deterministic)."""
    return LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM"
    )
