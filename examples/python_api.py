"""Extrapolate a run from Python: build a small planted run, scan it, jump, load the result with PEFT.

Run: ``python examples/python_api.py [OUT_DIR]`` (CPU, a few seconds, no network; OUT_DIR must not exist
yet, default: a new temporary folder). For your own run, replace ``run_dir`` with the output folder of your
trainer (TRL ``checkpoint-N``, verl ``global_step_N``, ...).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import nextrap
from nextrap.testing.synthetic import PlantSpec, llama_like_shapes, write_synthetic_run


def main(work: Path) -> None:
    shapes = llama_like_shapes(layers=2, hidden=64, intermediate=128, kv_dim=32)
    run_dir = write_synthetic_run(work / "run", range(10, 161, 10), shapes, PlantSpec(rank=8, alpha=16))

    summary = nextrap.scan(run_dir)
    print(
        f"{summary['layout']} run: {summary['checkpoints']} checkpoints, {summary['modules']} modules, "
        f"rank {summary['rank']}"
    )

    options = nextrap.ExtrapolateOptions(coefs=(1.0, 2.0), rank_policy="keep", device="auto")
    result = nextrap.extrapolate(run_dir, work / "jump", options)
    for out in result.report.outputs:
        print(f"coef {out.coef}: virtual step {out.virtual_step:g} -> {result.report.path_of(out)}")
    print("report:", result.report_path)
    # Resume with your trainer from result.adapters[2.0], e.g.
    #   model = PeftModel.from_pretrained(base, result.adapters[2.0], is_trainable=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="nextrap-example-")))
