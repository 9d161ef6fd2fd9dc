"""Scale: scan, backtest and extrapolate on synthetic runs with 7B- and 70B-class LoRA shapes.

Writes a TRL-layout run per size (16 checkpoints, r = 16, bf16, every attention and MLP projection)
under a temporary folder, runs each command in its own process, and prints wall time and peak
resident memory (the process's ``ru_maxrss``, and the same minus that of a process that only imports
what the command imports) next to the bytes the run holds. Goals: time linear in bytes read, peak memory under 3x one
checkpoint, the whole run never in memory.

    nice python benchmarks/scale.py                      # both sizes (70B: ~6.6 GB on disk)
    nice python benchmarks/scale.py --sizes 7b --method linear
    python benchmarks/scale.py --keep /tmp/scale-runs    # keep the runs (and resume an interrupted benchmark)

The runs are continuous (each factor moves smoothly with the step), so the continuity check passes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

# name: (layers, hidden, intermediate, kv_dim), Llama-2-7B and Llama-3-70B (8 KV heads of 128)
SIZES = {"7b": (32, 4096, 11008, 4096), "70b": (80, 8192, 28672, 1024)}
RANK, ALPHA, CHECKPOINTS, EVERY = 16, 32, 16, 10


def _shapes(layers: int, hidden: int, inter: int, kv: int) -> dict[str, tuple[int, int]]:
    """module name -> (out, in), PEFT's naming for a Llama."""
    per_layer = {
        "self_attn.q_proj": (hidden, hidden),
        "self_attn.k_proj": (kv, hidden),
        "self_attn.v_proj": (kv, hidden),
        "self_attn.o_proj": (hidden, hidden),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }
    return {f"model.layers.{i}.{k}": v for i in range(layers) for k, v in per_layer.items()}


def continuous_bases(shapes: dict[str, tuple[int, int]]) -> dict[tuple[int, int], tuple[torch.Tensor, ...]]:
    """Per distinct (out, in): ``A0``, the direction ``A`` moves in, and ``B*`` (seeded: same every call)."""
    g = torch.Generator().manual_seed(0)
    bases = {}
    for out_f, in_f in set(shapes.values()):
        bases[(out_f, in_f)] = (
            torch.randn(RANK, in_f, generator=g) / in_f**0.5,
            torch.randn(RANK, in_f, generator=g) / in_f**0.5,
            torch.randn(out_f, RANK, generator=g) * 1e-2,
        )
    return bases


def continuous_factors(shapes: dict[str, tuple[int, int]], bases: dict, k: int):
    """``(name, A_k, B_k)`` of checkpoint ``k`` (1-based) in bf16, one module at a time."""
    for i, (name, shape) in enumerate(shapes.items()):
        a0, noise, b = bases[shape]
        layer_scale = 1.0 + 0.01 * (i // 7)
        yield name, (a0 + 0.02 * k * noise).to(torch.bfloat16), (b * layer_scale * k / CHECKPOINTS).to(torch.bfloat16)


def write_run(root: Path, size: str, layers: int | None = None) -> int:
    """A continuous run: ``A_k = A0 + 0.02 k N``, ``B_k = (k / K) B*`` per module (bases shared by shape,
    scaled per layer so modules differ); returns the bytes of one checkpoint's weights. ``layers`` cuts
    the model to its first layers."""
    full_layers, *dims = SIZES[size]
    shapes = _shapes(layers or full_layers, *dims)
    bases = continuous_bases(shapes)
    config = {
        "peft_type": "LORA",
        "r": RANK,
        "lora_alpha": ALPHA,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "base_model_name_or_path": f"synthetic-llama-{size}",
    }
    size_bytes = 0
    for k in range(1, CHECKPOINTS + 1):
        folder = root / f"checkpoint-{k * EVERY}"
        folder.mkdir(parents=True)
        tensors = {}
        for name, A, B in continuous_factors(shapes, bases, k):
            tensors[f"base_model.model.{name}.lora_A.weight"] = A
            tensors[f"base_model.model.{name}.lora_B.weight"] = B
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        del tensors
        (folder / "adapter_config.json").write_text(json.dumps(config))
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": k * EVERY, "log_history": []}))
        size_bytes = (folder / "adapter_model.safetensors").stat().st_size
    return size_bytes


# Linux counts a child's memory before its exec in its peak RSS (ru_maxrss), so a command forked from this
# process, which holds torch and the runs it wrote, would report at least this process's size. A small
# launcher (no imports beyond os/sys/json) spawns the command and reports the command's own peak.
_LAUNCHER = """
import json, os, sys
devnull = os.open(os.devnull, os.O_WRONLY)
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)])
_, status, usage = os.wait4(pid, 0)
print(json.dumps([os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024]))
"""


def _peak(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of ``argv``, started through the small launcher."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-S", "-c", _LAUNCHER, *argv],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    seconds = time.perf_counter() - started
    code, peak = json.loads(done.stdout.strip().splitlines()[-1])
    if code != 0:
        raise SystemExit(f"{' '.join(argv[1:])} failed ({code}): {done.stderr.strip()[-800:]}")
    return seconds, peak


def measure(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of ``python -m nextrap ARGS`` in its own process."""
    return _peak([sys.executable, "-m", "nextrap", "-q", *args])


# What each command imports whatever the run's size (extrapolate validates the adapter config through
# peft, which brings transformers: about 250 MiB more): its baseline, so that the ratio measures the data.
IDLE_IMPORTS = {
    "scan": "import nextrap.cli, nextrap.run_headers",
    "backtest": "import torch, nextrap.cli, nextrap.backtest, safetensors.torch",
    "extrapolate": "import torch, nextrap.cli, nextrap.extrapolate, safetensors.torch, peft",
}


def idle_rss() -> dict[str, float]:
    return {name: _peak([sys.executable, "-c", code])[1] for name, code in IDLE_IMPORTS.items()}


def _above(peak: float, idle: float, ckpt_bytes: int) -> str:
    return f"{max(0.0, peak - idle) / (ckpt_bytes / 2**20):.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["7b", "70b"])
    parser.add_argument("--method", default="linear", help="method for backtest/extrapolate (default linear)")
    parser.add_argument("--keep", type=Path, default=None, help="write the runs here and keep them")
    opts = parser.parse_args()
    base = opts.keep or Path(tempfile.mkdtemp(prefix="nextrap-scale-"))
    base.mkdir(parents=True, exist_ok=True)
    idle = idle_rss()
    rows = []
    # Resumable with --keep: every measurement is appended here as it is taken, and not repeated.
    record = base / f"measurements-{opts.method}.jsonl"
    done = {}
    if record.is_file():
        for line in record.read_text().splitlines():
            row = tuple(json.loads(line))
            done[(row[0], row[1])] = row
    try:
        for size in opts.sizes:
            run = base / f"run-{size}"
            if not run.exists():
                t0 = time.perf_counter()
                partial = base / f".run-{size}.partial"  # renamed when complete: an interruption leaves no half run
                shutil.rmtree(partial, ignore_errors=True)
                ckpt_bytes = write_run(partial, size)
                partial.rename(run)
                print(
                    f"# wrote {run}: {CHECKPOINTS} x {ckpt_bytes / 2**20:.0f} MiB in {time.perf_counter() - t0:.0f} s",
                    flush=True,
                )
            ckpt_bytes = (run / f"checkpoint-{EVERY}" / "adapter_model.safetensors").stat().st_size
            out = base / f"out-{size}"
            commands = {
                "scan": ["scan", str(run)],
                "backtest": ["backtest", str(run), "--method", opts.method],
                "extrapolate": [
                    "extrapolate",
                    str(run),
                    "-o",
                    str(out),
                    "--method",
                    opts.method,
                    "--overwrite",
                ],
            }
            for name, args in commands.items():
                if (size, name) in done:  # measured by an earlier, interrupted invocation (--keep)
                    rows.append(done[(size, name)])
                    continue
                seconds, peak = measure(args)
                rows.append((size, name, ckpt_bytes, seconds, peak))
                with record.open("a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
                print(
                    f"# {size} {name}: {seconds:.1f} s, peak {peak:.0f} MiB "
                    f"({_above(peak, idle[name], ckpt_bytes)} one checkpoint above its idle imports)",
                    flush=True,
                )
    finally:
        if opts.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    print(
        f"\nidle imports (MiB): {', '.join(f'{k} {v:.0f}' for k, v in idle.items())}; method {opts.method}; "
        f"{CHECKPOINTS} checkpoints, r = {RANK}, bf16"
    )
    print(
        "| size | one checkpoint | run | command | time (s) | s per GiB of run | peak RSS (MiB) | idle imports (MiB) "
        "| above idle / one checkpoint |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for size, name, ckpt, seconds, peak in rows:
        run_gib = ckpt * CHECKPOINTS / 2**30
        print(
            f"| {size} | {ckpt / 2**20:.0f} MiB | {run_gib:.2f} GiB | {name} | {seconds:.1f} | {seconds / run_gib:.1f} | "
            f"{peak:.0f} | {idle[name]:.0f} | {_above(peak, idle[name], ckpt)} |"
        )


if __name__ == "__main__":
    main()
