"""The model card (README.md with YAML metadata) that goes with a published extrapolated adapter.

Text from the adapter's config and nextrap's report (the metadata through huggingface_hub's
``ModelCardData``, imported when a card is made): what the adapter is (source run, method,
coefficient, horizon, virtual step, backtest scores where known) and how to resume from it.
"""

from __future__ import annotations

from typing import Any

from nextrap.formats.peft import looks_like_hub_id
from nextrap.formats.report import REPORT_NAME, Report

__all__ = ["model_card"]

def _is_hub_id(name: str | None) -> bool:
    """Only ``owner/name`` ids go into the card's metadata; a local path or a bare name is not metadata material."""
    return looks_like_hub_id(name) and "/" in name


def model_card(
    repo_id: str,
    adapter_config: dict[str, Any],
    report: Report | None,
    subfolders: list[str] | None = None,
) -> str:
    """README.md text. ``subfolders``: adapters published side by side (one per coefficient), if any.

    The YAML metadata is written by huggingface_hub's own ``ModelCardData`` (the fields the Hub reads:
    ``library_name``, ``base_model``, ``tags``), so it is valid for the Hub by construction.
    """
    from huggingface_hub import ModelCardData

    base = adapter_config.get("base_model_name_or_path")
    metadata = ModelCardData(
        library_name="peft",
        base_model=base if _is_hub_id(base) else None,
        tags=["nextrap", "lora", "peft", "rlvr", "extrapolation"],
    )
    lines = ["---", metadata.to_yaml(), "---", "", f"# {repo_id.split('/')[-1]}", ""]
    lines.append(
        "A LoRA adapter written by nextrap: the checkpoints of an RL "
        "(RLVR) run were extrapolated along their predicted trajectory, so that training can resume further "
        "along than the run had got."
    )
    lines.append("")
    lines += _provenance(adapter_config, report, base)
    lines += _resume(repo_id, subfolders)
    return "\n".join(lines).rstrip() + "\n"


def _provenance(adapter_config: dict[str, Any], report: Report | None, base: str | None) -> list[str]:
    rank = adapter_config.get("r")
    alpha = adapter_config.get("lora_alpha")
    lines = [
        "## What it is",
        "",
        f"- base model: `{base or 'unknown'}`",
        f"- LoRA rank {rank}, alpha {alpha}",
    ]
    if report is None:
        return [*lines, "- no nextrap report was found next to the adapter", ""]
    steps, horizon = report.checkpoint_steps, report.horizon
    lines += [
        f"- source run: {report.inputs.get('layout', '?')} layout, {len(steps)} checkpoints, steps "
        f"{steps[0] if steps else '?'}..{steps[-1] if steps else '?'}",
        f"- method: `{report.method}`; horizon {horizon.get('intervals')} checkpoint intervals "
        f"({horizon.get('steps')} steps)",
    ]
    for out in report.outputs:
        where = "" if out.path == "." else f" (`{out.path}/`)"
        lines.append(
            f"- coefficient {out.coef:g}{where}: virtual step {out.virtual_step:g}, rank-{out.rank} "
            f"truncation error {out.max_relative_truncation_error:.2e} (relative, worst module)"
        )
    backtest = report.backtest
    if backtest:
        rec = backtest.get("recommendation", {})
        lines.append(f"- backtest on the run's own checkpoints: {rec.get('text', '')}")
        for s in backtest.get("scores", []):
            lines.append(
                f"  - {s['method']}, held-out step {s['step']} (c = {s['coef']:.2f}): relative error "
                f"{s['relative_error']:.3f} (staying = 1), cosine {s['cosine']:.3f}"
            )
    lines += [f"- note: {n}" for n in report.notes]
    lines += [f"- nextrap {report.nextrap_version}; the full report is `{REPORT_NAME}`", ""]
    return lines


def _resume(repo_id: str, subfolders: list[str] | None) -> list[str]:
    sub = f', subfolder="{subfolders[-1]}"' if subfolders else ""
    lines = ["## Resume training from it", ""]
    if subfolders:
        lines += [f"One adapter per coefficient, in {', '.join(f'`{s}/`' for s in subfolders)}.", ""]
    lines += [
        "PEFT, in any training loop (start with a fresh optimizer: Adam's moments belong to the weights before "
        "the jump):",
        "",
        "```python",
        "from peft import PeftModel",
        f'model = PeftModel.from_pretrained(base_model, "{repo_id}"{sub}, is_trainable=True)',
        "```",
        "",
        "TRL: load it as above and pass the model to the trainer. verl: download it and set "
        "`actor_rollout_ref.model.lora_adapter_path=<local folder>`. Continue the step counter (and any "
        "schedule) at the virtual step above.",
        "",
    ]
    return lines
