"""The whole loop with the bundled reference trainer: train, extrapolate with nextrap, resume, evaluate.

Runs on a CPU in about a minute; nothing is downloaded (the tiny model, its tokenizer and the task
data are built in code; the warm-started base model is cached under ~/.cache/nextrap).

    python examples/end_to_end.py [OUT_DIR] [--steps 50]

(``--steps`` sets the GRPO steps before the jump and after it; a short run gets a shorter horizon.)
The same steps from a shell:

    nextrap train-reference -o OUT/run --steps 50 --save-steps 5
    nextrap extrapolate OUT/run -o OUT/jump --coef 1.0
    nextrap train-reference -o OUT/resumed --steps 50 --init-adapter OUT/jump --start-step 75
    nextrap evaluate-reference OUT/resumed/checkpoint-125
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nextrap
from nextrap.reference import GRPOConfig, evaluate_adapter, train


def main(out: Path, steps: int = 50) -> None:
    # 1. RL from the warm start: `steps` GRPO steps (50 by default), a TRL-style checkpoint every 5
    run = train(out / "run", GRPOConfig(steps=steps, save_steps=5), overwrite=True, progress=True)
    print("accuracy by step:", {s: round(a, 3) for s, a in run.eval_accuracy().items()})

    # 2. nextrap reads the checkpoints like any TRL run and jumps one horizon ahead (5 intervals = 25 steps;
    #    shortened, with a note in the report, when the run has too few checkpoints for that)
    jump = nextrap.extrapolate(
        out / "run",
        out / "jump",
        nextrap.ExtrapolateOptions(coefs=(1.0,)),
        nextrap.OutputOptions(overwrite=True),
    )
    virtual = jump.report.outputs[0].step
    print(f"jumped from step {steps} to virtual step {virtual}")

    # 3. resume from the extrapolated adapter with a fresh optimizer; the step counter continues there
    resumed = train(
        out / "resumed",
        GRPOConfig(steps=steps, save_steps=5),
        init_adapter=jump.output,
        start_step=virtual,
        overwrite=True,
        progress=True,
    )

    # 4. held-out accuracy of the last checkpoint, as `nextrap evaluate-reference` prints it
    last = resumed.checkpoints[resumed.final_step]
    print(f"accuracy after {steps} + {steps} trained steps: {evaluate_adapter(last):.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Train, extrapolate with nextrap, resume, evaluate.")
    parser.add_argument("out", nargs="?", type=Path, default=Path("nextrap-end-to-end"), help="output folder")
    parser.add_argument("--steps", type=int, default=50, help="GRPO steps before the jump, and after it")
    args = parser.parse_args()
    main(args.out, args.steps)
