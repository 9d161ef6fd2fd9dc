"""verl's rank shards against PEFT folders at 7B LoRA shapes: ``scan`` and ``extrapolate`` time and peak memory.

Writes scale.py's continuous 7B-shaped run (16 checkpoints, r = 16, bf16, every attention and MLP
projection of Llama-2-7B; ``--layers`` cuts it to the first layers) twice with the same tensors: as TRL
``checkpoint-N/`` folders, and as verl 0.9's ``global_step_N/actor/`` rank shards. The shards come from
``--world-size`` gloo processes, each saving ``{"...lora_A.default.weight": DTensor}`` (its ``Shard(0)``
piece on a 1-D ``fsdp`` mesh, as FSDP2's ``state_dict`` holds it) with ``torch.save``, plus
``fsdp_config.json`` and ``lora_train_meta.json``: the pickled classes are checked against those of
tests/fixtures/verl-0.9.1 (written by verl itself). Each command then runs in its own process through
scale.py's launcher, which reports the command's own peak RSS.

    nice python benchmarks/verl_scale.py --layers 8        # a layer cut (quick)
    nice python benchmarks/verl_scale.py                   # full 7B shapes (2 x 1.2 GiB on disk)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from scale import (
    ALPHA,
    CHECKPOINTS,
    EVERY,
    RANK,
    SIZES,
    _shapes,
    continuous_bases,
    continuous_factors,
    measure,
    write_run,
)

FIXTURE = Path(__file__).parents[1] / "tests" / "fixtures" / "verl-0.9.1" / "run" / "global_step_10" / "actor"


def _shard_worker(rank: int, root: str, layers: int, world: int, port: int) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("fsdp",))
    shapes = _shapes(layers, *SIZES["7b"][1:])
    bases = continuous_bases(shapes)
    for k in range(1, CHECKPOINTS + 1):
        actor = Path(root) / f"global_step_{k * EVERY}" / "actor"
        actor.mkdir(parents=True, exist_ok=True)
        state = {}
        for name, A, B in continuous_factors(shapes, bases, k):
            for part, full in (("lora_A", A), ("lora_B", B)):
                piece = full.chunk(world, dim=0)[rank].clone()  # FSDP2's split: torch.chunk along dim 0
                state[f"base_model.model.{name}.{part}.default.weight"] = DTensor.from_local(
                    piece, mesh, [Shard(0)], run_check=False, shape=full.shape, stride=full.stride()
                )
        torch.save(state, actor / f"model_world_size_{world}_rank_{rank}.pt")
        if rank == 0:
            (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": world}, indent=4))
            meta = {"r": RANK, "lora_alpha": ALPHA, "task_type": "CAUSAL_LM"}
            (actor / "lora_train_meta.json").write_text(json.dumps(meta, indent=4))
            (Path(root) / "latest_checkpointed_iteration.txt").write_text(str(k * EVERY))
        dist.barrier()
    dist.destroy_process_group()


def _globals(path: Path) -> set[str]:
    import pickletools

    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    return {str(arg) for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


def write_verl_run(root: Path, layers: int, world: int) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_shard_worker, args=(str(root), layers, world, port), nprocs=world)
    ours = _globals(root / f"global_step_{EVERY}" / "actor" / f"model_world_size_{world}_rank_0.pt")
    verls = _globals(FIXTURE / "model_world_size_2_rank_0.pt")
    dtypes = {"torch FloatStorage", "torch float32", "torch BFloat16Storage", "torch bfloat16"}  # fixture: float32
    if ours - dtypes != verls - dtypes:
        raise SystemExit(f"the shards pickle other classes than verl's: {sorted(ours ^ verls)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=SIZES["7b"][0], help="first layers of Llama-2-7B (default all 32)")
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command per layout (median reported)")
    parser.add_argument("--method", default="linear")
    parser.add_argument("--keep", type=Path, default=None, help="write the runs here and keep them")
    opts = parser.parse_args()
    base = opts.keep or Path(tempfile.mkdtemp(prefix="nextrap-verl-scale-"))
    base.mkdir(parents=True, exist_ok=True)
    runs = {"peft": base / "peft", "verl": base / "verl"}
    try:
        if not runs["peft"].exists():
            write_run(runs["peft"], "7b", opts.layers)
        if not runs["verl"].exists():
            t0 = time.perf_counter()
            write_verl_run(runs["verl"], opts.layers, opts.world_size)
            print(f"# wrote the shards in {time.perf_counter() - t0:.0f} s", flush=True)
        ckpt = (runs["peft"] / f"checkpoint-{EVERY}" / "adapter_model.safetensors").stat().st_size
        shard = sum(p.stat().st_size for p in (runs["verl"] / f"global_step_{EVERY}" / "actor").glob("model_*.pt"))
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(opts.repeats):  # interleaved, so that the machine's load hits both layouts alike
            for command in ("scan", "extrapolate"):
                for layout, run in runs.items():
                    args = [command, str(run)]
                    if command == "extrapolate":
                        args += ["-o", str(base / f"out-{layout}"), "--method", opts.method, "--overwrite", "--no-hash"]
                    results.setdefault((command, layout), []).append(measure(args))
                    print(f"# {command} {layout}: {results[(command, layout)][-1]}", flush=True)
    finally:
        if opts.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    print(
        f"\n{opts.layers} of 32 Llama-2-7B layers, {CHECKPOINTS} checkpoints, r = {RANK}, bf16; one checkpoint: "
        f"{ckpt / 2**20:.0f} MiB as safetensors, {shard / 2**20:.0f} MiB as {opts.world_size} rank shards; "
        f"method {opts.method}; median of {opts.repeats}"
    )
    print("| command | PEFT folders: time (s) | verl shards: time (s) | ratio | PEFT: peak RSS (MiB) | verl: peak RSS (MiB) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for command in ("scan", "extrapolate"):
        (tp, mp_), (tv, mv) = (
            tuple(statistics.median(x[i] for x in results[(command, layout)]) for i in (0, 1)) for layout in runs
        )
        print(f"| {command} | {tp:.2f} | {tv:.2f} | {tv / tp:.2f} | {mp_:.0f} | {mv:.0f} | {mv / mp_:.2f} |")


if __name__ == "__main__":
    main()
