"""Held-out accuracy of saved adapters, each computed once and remembered in a small JSON file.

The steps-saved benchmark trains without evaluating (``eval_size=0``) and scores only the checkpoints
its statistics use: the curve's grid, the jump point, the budget and the end. On the pretrained policy
an evaluation large enough for a standard error under 0.02 (640 problems) costs about as much as two
GRPO steps, so scoring every checkpoint of every arm would double the benchmark's time.

A result is keyed by the adapter's folder (relative to the cache file), the size of the held-out set and
the weights file's size and modification time: an arm retrained into the same folder is scored again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nextrap.reference.grpo import evaluate_adapter
from nextrap.reference.smollm2 import SmolLM2Config
from nextrap.reference.warmstart import WarmStartConfig

__all__ = ["EvaluationCache"]

BASE = "<base>"


class EvaluationCache:
    """``accuracy(adapter)``: greedy held-out accuracy on ``size`` problems, from the cache when it has it.

    ``path`` is the JSON file (written atomically after every new result, so an interrupted benchmark
    keeps what it measured); ``adapter=None`` scores the base model (a fresh LoRA has ``B = 0``).
    """

    def __init__(
        self, path: str | os.PathLike, warm: WarmStartConfig | SmolLM2Config, size: int, device: str = "cpu"
    ) -> None:
        self.path, self.warm, self.size, self.device = Path(path), warm, size, device
        self._entries: dict[str, float] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def _key(self, adapter: Path | None) -> str:
        if adapter is None:
            return f"{BASE}|{self.size}"
        stat = (adapter / "adapter_model.safetensors").stat()
        where = os.path.relpath(adapter.resolve(), self.path.parent.resolve())
        return f"{where}|{self.size}|{stat.st_size}|{stat.st_mtime_ns}"

    def accuracy(self, adapter: str | os.PathLike | None) -> float:
        adapter = None if adapter is None else Path(adapter)
        key = self._key(adapter)
        if key not in self._entries:
            self._entries[key] = evaluate_adapter(adapter, self.warm, self.size, self.device)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(json.dumps(self._entries, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.path)
        return self._entries[key]
