"""Any other trainer: folders directly under the run folder that hold a PEFT adapter and carry a number
in their name (``ckpt_0010``, ``step-200``), the number being the step. No trainer's code is behind it;
``--checkpoint PATH --step N`` covers what it cannot tell.
"""

from __future__ import annotations

from pathlib import Path

from nextrap.layouts.base import LAST_NUMBER, Layout, Match


def _classify(root: Path, folder: Path, fmt: str) -> Match | None:
    parts = folder.relative_to(root).parts
    number = LAST_NUMBER.search(parts[0])
    if len(parts) == 1 and number:
        return Match("plain", int(number[1]), folder, folder.parent, fmt)
    return None


LAYOUT = Layout(name="plain", looks_like="plain <name-with-number>/", classify=_classify)
