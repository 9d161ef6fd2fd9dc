"""The whole loop with the bundled reference trainer: train, extrapolate with nextrap, resume, evaluate.

Runs on a CPU in about a minute; nothing is downloaded (the tiny model, its tokenizer and the task
data are built in code; the warm-started base model is cached under ~/.cache/nextrap).

    python examples/end_to_end.py [OUT_DIR]

The same steps from a shell:

    nextrap train-reference -o OUT/run --steps 50 --save-steps 5
    nextrap extrapolate OUT/run -o OUT/jump --coef 1.0
    nextrap train-reference -o OUT/resumed --steps 50 --init-adapter OUT/jump --start-step 75
    nextrap evaluate-reference OUT/resumed/checkpoint-125
"""

from __future__ import annotations

import sys
from pathlib import Path

import nextrap
from nextrap.reference import GRPOConfig, evaluate_adapter, train


def main(out: Path) -> None:
    # 1. RL from the warm start: 50 GRPO steps, a TRL-style checkpoint every 5
    run = train(out / "run", GRPOConfig(steps=50, save_steps=5), overwrite=True, progress=True)
    print("accuracy by step:", {s: round(a, 3) for s, a in run.eval_accuracy().items()})

    # 2. nextrap reads the checkpoints like any TRL run and jumps one horizon (5 intervals = 25 steps) ahead
    jump = nextrap.extrapolate(
        out / "run", out / "jump", nextrap.ExtrapolateOptions(coefs=(1.0,)), nextrap.OutputOptions(overwrite=True)
    )
    virtual = jump.report.outputs[0].step
    print(f"jumped from step 50 to virtual step {virtual}")

    # 3. resume from the extrapolated adapter with a fresh optimizer; the step counter continues at 75
    resumed = train(
        out / "resumed",
        GRPOConfig(steps=50, save_steps=5),
        init_adapter=jump.output,
        start_step=virtual,
        overwrite=True,
        progress=True,
    )

    # 4. held-out accuracy of the last checkpoint, as `nextrap evaluate-reference` prints it
    last = resumed.checkpoints[resumed.final_step]
    print(f"accuracy after 50 + 50 trained steps: {evaluate_adapter(last):.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("nextrap-end-to-end"))
