"""The steps-saved benchmark's protocols, shortened on the tiny policy: the mechanics, not the effect size.

Checked against independent computations: each arm trained the number of steps it claims (its saved
checkpoints), started from the weights it claims (the jump adapter nextrap writes for the observed
checkpoints, or the plain run's own checkpoint), arms share their seed's plain run up to the jump, the
seeds differ, and a second call reads every arm back instead of training it again.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nextrap.ops.extrapolate import ExtrapolateOptions, extrapolate
from nextrap.reference import GRPOConfig
from nextrap.reference.grpo import RUN_INFO
from nextrap.reference.protocols import ProtocolConfig, run_seed

pytestmark = [pytest.mark.usefixtures("reference_cache"), pytest.mark.slow]

GRPO = GRPOConfig(steps=32, save_steps=4, prompts_per_step=8, group_size=4, eval_size=32, lr=1e-3)
CONFIG = ProtocolConfig(
    grpo=GRPO,
    horizon=2,
    coefs=(1.0,),
    methods=("linear",),
    optimizer_variants=("keep",),
    auto=False,
    relex_targets=(1.25,),
    cycle_methods=("linear",),
)


def _steps(folder: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*"))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def test_protocol_arms_train_what_they_claim_from_the_weights_they_claim(tmp_path: Path):
    c = CONFIG
    assert (c.observe, c.resume, c.budget, c.relex_observe, c.cycle_steps) == (12, 8, 20, 8, 8)
    names = ["restart", "linear c=1", "relex@40", "relex@20 +train", "cycles linear"]
    assert c.arm_names() == names  # the optimizer variants are NExt jumps: none without next among the methods
    assert replace(c, methods=("next",)).arm_names()[1:3] == ["next c=1", "next c=1 keep"]
    combined = replace(c, methods=("linear", "next+linear")).arm_names()
    assert "next+linear c=1 keep" in combined and "linear c=1 keep" not in combined
    seeds = {}
    for seed in (0, 1):
        seeds[seed] = run_seed(c, seed, tmp_path / f"seed-{seed}", names)
    arms = seeds[0]
    root = tmp_path / "seed-0"

    # plain: L steps, checkpoints every save_steps; the two seeds are different runs
    assert _steps(root / "plain") == list(range(4, 33, 4))
    w0, w1 = _weights(root / "plain" / "checkpoint-32"), _weights(tmp_path / "seed-1" / "plain" / "checkpoint-32")
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)

    # restart: resume steps from the plain checkpoint at observe, counter continuing at observe
    restart = root / "arms" / "restart"
    assert _steps(restart) == [16, 20]
    info = json.loads((restart / RUN_INFO).read_text())
    assert Path(info["init_adapter"]) == root / "plain" / "checkpoint-12" and info["start_step"] == 12
    assert max(arms["restart"].curve) == c.budget

    # a jump arm: the adapter it resumed from is what nextrap computes from the observed checkpoints
    arm_dir = root / "arms" / "linear_c1"
    observed = [root / "plain" / f"checkpoint-{s}" for s in (4, 8, 12)]
    again = extrapolate(
        None, tmp_path / "again", ExtrapolateOptions(coefs=(1.0,), method="linear", horizon=2),
        checkpoints=observed, steps=[4, 8, 12],
    )
    ours, theirs = _weights(arm_dir / "jump"), _weights(again.output)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    info = json.loads((arm_dir / "resumed" / RUN_INFO).read_text())
    assert Path(info["init_adapter"]) == arm_dir / "jump" and info["start_step"] == 12 + 8  # virtual step
    assert _steps(arm_dir / "resumed") == [24, 28]  # resume = 8 steps after the virtual step 20
    jump = arms["linear c=1"]
    assert jump.virtual_step == 20 and max(jump.curve) == c.budget
    # before the jump the arm is its seed's plain run, evaluation for evaluation
    plain = arms["plain"].curve
    assert {s: a for s, a in jump.curve.items() if s < c.observe} == {s: a for s, a in plain.items() if s < c.observe}

    # RELEX's protocol: observe 8 steps, predict step 40, no training; then the +train variant
    far = arms["relex@40"]
    assert far.trained_steps == c.relex_observe and far.virtual_step == 40 and 0 <= far.accuracy_after_jump <= 1
    trained = root / "arms" / "relexat20_train" / "resumed"
    assert _steps(trained) == [24, 28, 32]  # from step 20, budget - relex_observe = 12 steps
    assert max(arms["relex@20 +train"].curve) == c.budget

    # RL-Extra's cycles: budget steps trained in cycles of 8, each cycle starting at the previous jump's end
    cycles = json.loads((root / "arms" / "cycles_linear" / "cycles.json").read_text())["cycles"]
    assert [r["steps"] for r in cycles] == [8, 8, 4]
    assert [r["start_step"] for r in cycles] == [0, 16, 32]  # 8 trained + 8 jumped each time
    assert max(arms["cycles linear"].curve) == c.budget

    # resumable: a second call reads every arm back (no training: the records are unchanged)
    stamps = {p: p.stat().st_mtime_ns for p in (root / "arms").glob("*.json")}
    again_arms = run_seed(c, 0, root, names)
    assert {p: p.stat().st_mtime_ns for p in (root / "arms").glob("*.json")} == stamps
    assert again_arms["linear c=1"].curve == jump.curve


def test_kept_moments_and_warmup_reach_the_optimizer(tmp_path: Path):
    """``keep``: AdamW starts with the plain checkpoint's moments; ``warmup``: the lr ramps up linearly."""
    from nextrap.reference import train

    base = train(tmp_path / "run", replace(GRPO, steps=4, eval_size=0))
    ckpt = base.checkpoints[4]
    kept = train(
        tmp_path / "kept", replace(GRPO, steps=1, save_steps=1, eval_size=0, warmup_steps=4),
        init_adapter=ckpt, init_optimizer=ckpt, start_step=4,
    )
    before = torch.load(ckpt / "optimizer.pt", weights_only=True)
    after = torch.load(kept.checkpoints[5] / "optimizer.pt", weights_only=True)
    # one more Adam step from the kept moments: the step count goes on from 4, not from 0
    assert all(int(after["state"][k]["step"]) == int(before["state"][k]["step"]) + 1 for k in before["state"])
    # warm-up: the first step of the new run used lr / 4, the schedule has moved to 2/4
    log = json.loads((kept.checkpoints[5] / "trainer_state.json").read_text())["log_history"]
    assert [e["learning_rate"] for e in log if "learning_rate" in e][-1] == pytest.approx(GRPO.lr * 2 / 4)
