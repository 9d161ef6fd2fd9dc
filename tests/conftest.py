"""Shared fixtures: tiny planted runs and a tiny Llama model, all built in-process (no network)."""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
from pathlib import Path

# No test may reach the network: libraries that would look something up on the Hub (peft checks a base
# model's config when saving, for one) fail fast instead. Set before huggingface_hub is imported.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from nextrap.testing.synthetic import PlantSpec, llama_like_shapes, write_synthetic_run

gc.freeze()  # see pytest_collection_finish

# Temporary folders (tmp_path, the fuzzers' folders, the CLI children's) go to tmpfs where there is one:
# on these machines the disk is mounted with `discard`, so removing a folder costs about 3.5 ms, and the
# suite makes and removes thousands of them (every tmp_path and fuzzed example, and pytest's removal of
# the runs before the last three). A TMPDIR set by the caller is kept.
_TMPFS = Path("/dev/shm")
if "TMPDIR" not in os.environ and _TMPFS.is_dir() and os.access(_TMPFS, os.W_OK | os.X_OK):
    os.environ["TMPDIR"] = str(_TMPFS)
    tempfile.tempdir = str(_TMPFS)

TINY_SHAPES = llama_like_shapes(layers=2, hidden=32, intermediate=64, kv_dim=16)
TINY_SPEC = PlantSpec(curve="saturating", rank=4, alpha=8.0, tau=200.0, seed=0)
STEPS = list(range(10, 101, 10))


def pytest_collection_finish(session):
    # What the test modules imported (torch, transformers, peft: millions of objects) lives as long as the
    # session. Frozen, it is left out of every later garbage collection: the Trainer's (accelerate calls
    # gc.collect) and pytest's at the end each walked all of it, about 0.3 s a time. (torch, imported
    # above, is frozen at once, so that collecting the test modules does not walk it either.)
    gc.freeze()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def _reference_cache_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("nextrap-cache")


@pytest.fixture
def reference_cache(_reference_cache_folder: Path, monkeypatch) -> Path:
    """One cache (warm starts of the tiny reference policy) for every test of the session that asks for it,
    so the warm start is built once per session. NEXTRAP_CACHE points at it during those tests only: set for
    the whole session, it would hide the user's cache (the SmolLM2 weights) from every later test."""
    monkeypatch.setenv("NEXTRAP_CACHE", str(_reference_cache_folder))
    return _reference_cache_folder


@pytest.fixture(scope="session")
def _tiny_run_template(tmp_path_factory) -> Path:
    return write_synthetic_run(tmp_path_factory.mktemp("tiny-run") / "run", STEPS, TINY_SHAPES, TINY_SPEC)


@pytest.fixture
def tiny_run(tmp_path: Path, _tiny_run_template: Path) -> Path:
    """A TRL-layout run: 10 checkpoints (steps 10..100) of a 2-layer model, r = 4, float32.

    Each test gets its own copy (tests edit and break it); copying the session's one is 4x cheaper
    than writing it again, and the files are the same (the plant is seeded).
    """
    return Path(shutil.copytree(_tiny_run_template, tmp_path / "run"))


def tiny_llama(seed: int = 0):
    """A 2-layer Llama with hidden 32, 4 heads, 2 KV heads (k/v out = 16), intermediate 64."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=61,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


def edit_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))
