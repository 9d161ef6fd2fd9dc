"""Scale: every command on synthetic runs with 7B- and 70B-class LoRA shapes, against the I/O floor.

Writes a TRL-layout run per size (16 checkpoints, r = 16, bf16, every attention and MLP projection)
under a temporary folder, then, per size and thread count:

* the floor: reading every checkpoint's tensors with safetensors and converting them to float32, in
  its own process, from the page cache (warm, median of 3) and, where ``posix_fadvise(DONTNEED)``
  evicts the files first, from disk (cold);
* each command (scan, inspect, backtest per method, extrapolate per method) in its own process, with
  ``--threads N``: wall and CPU time, and the same minus those of a process that only imports what the
  command imports (its "work", compared with the warm floor), the ratio of the whole time to the cold
  floor, and peak resident memory above that importing process, in units of one checkpoint. Goals:
  every ratio <= 2, peak memory under 3x one checkpoint.

    nice python benchmarks/scale.py                                   # both sizes, 1 and 2 threads
    nice python benchmarks/scale.py --sizes 7b --threads 1 --commands scan backtest-linear
    python benchmarks/scale.py --keep /tmp/scale-runs                 # keep the runs; resume an interrupted run
    python benchmarks/scale.py --sizes 7b --device cuda               # the commands on a GPU

The runs are continuous (each factor moves smoothly with the step), so the continuity check passes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

# name: (layers, hidden, intermediate, kv_dim), Llama-2-7B and Llama-3-70B (8 KV heads of 128)
# (tiny: a few MiB, for benchmarks/device_check.py --device cpu in CI)
SIZES = {"7b": (32, 4096, 11008, 4096), "70b": (80, 8192, 28672, 1024), "tiny": (2, 256, 512, 128)}
RANK, ALPHA, CHECKPOINTS, EVERY = 16, 32, 16, 10
BACKTEST_METHODS = ("linear", "relex", "relex-anchored", "next")
EXTRAPOLATE_METHODS = ("linear", "relex", "next")
COMMANDS = (
    "scan",
    "inspect",
    *(f"backtest-{m}" for m in BACKTEST_METHODS),
    *(f"extrapolate-{m}" for m in EXTRAPOLATE_METHODS),
)


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
print(json.dumps([os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime]))
"""



# The floor, in its own process: safetensors' own reader, every tensor converted to float32 (what any
# command must at least do). Cold first (each file evicted from the page cache where the kernel lets us),
# then warm three times.
_FLOOR = """
import json, os, sys, time
import torch
from safetensors import safe_open
torch.set_num_threads(int(sys.argv[1]))
files = sys.argv[2:]

def read():
    t, c = time.perf_counter(), time.process_time()
    for f in files:
        with safe_open(f, framework="pt") as h:
            for k in h.keys():
                h.get_tensor(k).to(torch.float32)
    return time.perf_counter() - t, time.process_time() - c

evicted = True
for f in files:
    fd = os.open(f, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except (AttributeError, OSError):
        evicted = False
    finally:
        os.close(fd)
cold = read()[0] if evicted else None
warm = [read() for _ in range(3)]
print(json.dumps({"cold": cold, "warm": [w for w, _ in warm], "cpu": [c for _, c in warm]}))
"""


def floor(run: Path, threads: int) -> dict:
    """Cold and warm seconds to read ``run``'s tensors with safetensors and convert them to float32."""
    files = sorted(str(p) for p in run.glob("checkpoint-*/adapter_model.safetensors"))
    done = subprocess.run(
        [sys.executable, "-c", _FLOOR, str(threads), *files], capture_output=True, text=True, check=True
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "cold": out["cold"],
        "warm": statistics.median(out["warm"]),
        "warm_runs": out["warm"],
        "cpu": statistics.median(out["cpu"]),
    }


def _peak(argv: list[str], timeout: float | None = None) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MiB) and CPU seconds (user + system) of ``argv``, through the small launcher.

    Raises RuntimeError (with the command's last words) when it fails, TimeoutError past ``timeout``.
    """
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-S", "-c", _LAUNCHER, *argv],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parents[1],
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"{' '.join(argv[1:])}: over {timeout:.0f} s") from None
    seconds = time.perf_counter() - started
    code, peak, cpu = json.loads(done.stdout.strip().splitlines()[-1])
    if code != 0:
        raise RuntimeError(f"{' '.join(argv[1:])} failed ({code}): {done.stderr.strip()[-800:]}")
    return seconds, peak, cpu


def measure(args: list[str], timeout: float | None = None) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MiB) and CPU seconds of ``python -m nextrap ARGS`` in its own process."""
    return _peak([sys.executable, "-m", "nextrap", "-q", *args], timeout)


# What each command imports whatever the run's size (extrapolate validates the adapter config through
# peft, which brings transformers: about 250 MiB more): its baseline, so that the ratio measures the data.
IDLE_IMPORTS = {
    "scan": "import nextrap.cli.main, nextrap.run.scan",
    "inspect": "import torch, nextrap.cli.main, nextrap.ops.diagnostics, safetensors.torch",
    "backtest": "import torch, nextrap.cli.main, nextrap.ops.backtest, safetensors.torch",
    "extrapolate": "import torch, nextrap.cli.main, nextrap.ops.extrapolate, safetensors.torch, peft",
}


def idle_baseline(kinds: set[str] | None = None, repeats: int = 3) -> dict[str, dict[str, float]]:
    """Per kind of command: peak RSS (MiB), wall and CPU seconds of a process that only imports what it imports."""
    out = {}
    for name, code in IDLE_IMPORTS.items():
        if kinds is None or name in kinds:
            runs = [_peak([sys.executable, "-c", code]) for _ in range(repeats)]
            out[name] = {
                "peak_mib": max(r[1] for r in runs),
                "seconds": statistics.median(r[0] for r in runs),
                "cpu_seconds": statistics.median(r[2] for r in runs),
            }
    return out


def command_args(command: str, run: Path, out: Path, threads: int, device: str) -> list[str]:
    """``nextrap`` arguments of one benchmark command (``backtest-linear``, ``extrapolate-relex``, ...)."""
    head = ["--threads", str(threads)]
    if command == "scan":
        return [*head, "scan", str(run)]
    if command == "inspect":
        return [*head, "inspect", str(run), "--device", device]
    verb, method = command.split("-", 1)
    if verb == "backtest":
        return [*head, "backtest", str(run), "--method", method, "--device", device]
    return [*head, "extrapolate", str(run), "-o", str(out), "--method", method, "--overwrite", "--device", device]


def _ratio(seconds: float | None, base: float | None) -> str:
    return "" if seconds is None or not base else f"{seconds / base:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["7b", "70b"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--commands", nargs="+", choices=COMMANDS, default=list(COMMANDS))
    parser.add_argument("--device", default="cpu", help="--device of the commands (default cpu)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before a command is given up")
    parser.add_argument("--keep", type=Path, default=None, help="write the runs here and keep them")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here (JSON)")
    parser.add_argument("--idle-repeats", type=int, default=3, help="runs of each import-only baseline (median)")
    opts = parser.parse_args()
    base = opts.keep or Path(tempfile.mkdtemp(prefix="nextrap-scale-"))
    base.mkdir(parents=True, exist_ok=True)
    idle = idle_baseline({c.split("-", 1)[0] for c in opts.commands}, opts.idle_repeats)
    # Resumable with --keep: every measurement is appended here as it is taken, and not repeated.
    record = base / f"measurements-{opts.device}.jsonl"
    done: dict[tuple[str, int, str], dict] = {}
    if record.is_file():
        for line in record.read_text().splitlines():
            row = json.loads(line)
            done[(row["size"], row["threads"], row["command"])] = row
    rows = []

    def keep(row: dict) -> None:
        rows.append(row)
        done[(row["size"], row["threads"], row["command"])] = row
        with record.open("a") as f:
            f.write(json.dumps(row) + "\n")

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
            for threads in opts.threads:
                key = (size, threads, "floor")
                if key in done:
                    rows.append(done[key])
                else:
                    f = floor(run, threads)
                    keep({"size": size, "threads": threads, "command": "floor", "ckpt_bytes": ckpt_bytes, **f})
                    cold = "" if f["cold"] is None else f", cold {f['cold']:.2f} s"
                    print(f"# {size} {threads} thread(s) floor: warm {f['warm']:.2f} s{cold}", flush=True)
                for command in opts.commands:
                    if (size, threads, command) in done:  # measured by an earlier, interrupted invocation (--keep)
                        rows.append(done[(size, threads, command)])
                        continue
                    args = command_args(command, run, base / f"out-{size}", threads, opts.device)
                    row = {"size": size, "threads": threads, "command": command, "ckpt_bytes": ckpt_bytes}
                    try:
                        seconds, peak, cpu = measure(args, opts.timeout)
                        row.update(seconds=seconds, peak_mib=peak, cpu_seconds=cpu)
                    except (RuntimeError, TimeoutError) as exc:
                        row.update(seconds=None, peak_mib=None, failed=str(exc)[-300:])
                    keep(row)
                    print(f"# {size} {threads} thread(s) {command}: {row.get('seconds')} s", flush=True)
    finally:
        if opts.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    if opts.json is not None:
        opts.json.write_text(json.dumps({"idle_mib": idle, "device": opts.device, "rows": rows}, indent=1))
    print(table(rows, idle, opts.device))


def table(rows: list[dict], idle: dict[str, dict[str, float]], device: str) -> str:
    """The markdown table: per size and threads, the floor, then each command's time, ratios and memory.

    "work" is a command's wall time minus that of a process that only imports what it imports (torch,
    peft: 1-3 s that no run size changes), the part to compare with the floor.
    """
    floors = {(r["size"], r["threads"]): r for r in rows if r["command"] == "floor"}
    lines = [
        "idle imports (peak MiB / wall s / CPU s): "
        + ", ".join(f"{k} {v['peak_mib']:.0f} / {v['seconds']:.2f} / {v['cpu_seconds']:.2f}" for k, v in idle.items())
        + f"; {CHECKPOINTS} checkpoints, r = {RANK}, bf16; commands on {device}",
        "",
        "| size | one checkpoint | threads | command | time (s) | work (s) | work x warm floor | time x cold floor "
        "| CPU (s) | CPU above imports x floor's CPU | above idle RSS / one checkpoint |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ckpt = r["ckpt_bytes"] / 2**20
        f = floors.get((r["size"], r["threads"]), {})
        head = f"| {r['size']} | {ckpt:.0f} MiB | {r['threads']} |"
        if r["command"] == "floor":
            cold = "" if f.get("cold") is None else f"{f['cold']:.2f}"
            lines.append(
                f"{head} floor: read + float32 (warm; cold {cold or 'n/a'} s) | {r['warm']:.2f} | {r['warm']:.2f} | "
                f"1.00 | | {r.get('cpu', 0):.2f} | 1.00 | |"
            )
            continue
        if r.get("seconds") is None:
            lines.append(f"{head} {r['command']} | {r.get('failed', 'failed')} | | | | | | |")
            continue
        base = idle.get(r["command"].split("-", 1)[0], {"peak_mib": 0.0, "seconds": 0.0, "cpu_seconds": 0.0})
        work = max(0.0, r["seconds"] - base["seconds"])
        cpu_work = max(0.0, r.get("cpu_seconds", 0.0) - base["cpu_seconds"])
        above = max(0.0, r["peak_mib"] - base["peak_mib"]) / ckpt
        lines.append(
            f"{head} {r['command']} | {r['seconds']:.2f} | {work:.2f} | {_ratio(work, f.get('warm'))} | "
            f"{_ratio(r['seconds'], f.get('cold'))} | {r.get('cpu_seconds', 0):.2f} | "
            f"{_ratio(cpu_work, f.get('cpu'))} | {above:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
