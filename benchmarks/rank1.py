"""Rank-1 feature extraction at Qwen2.5-7B scale: factored vs dense, against the I/O floor.

Builds a synthetic LoRA trajectory with Qwen2.5-7B module shapes (28 layers; q, k, v, o, gate, up,
down; r = 32; 16 checkpoints) on disk, then measures, each phase in its own process so that peak
memory is its own:

* read:      reading every tensor of every checkpoint, no math (the floor);
* factored:  nextrap's feature extraction (global, local and target triplets of all modules);
* dense:     materialize + full SVD for one feature of a sample of modules, against factored on the
             same modules (per-module speed-up);
* predictor: NExt predictor training time per epoch, per shape group.

Run: ``python benchmarks/rank1.py`` (``--layers 4`` for a quick look; ``--device cuda`` on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

QWEN_7B = {"hidden": 3584, "intermediate": 18944, "kv_dim": 512}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _current_rss_mb() -> float:
    """Resident memory now (the base to subtract: the peak so far may be a transient of the imports)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _gpu_peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _timer(stmt: str, env: dict, repeats: int) -> float:
    """Median seconds of ``stmt`` over ``repeats`` runs, by ``torch.utils.benchmark.Timer`` (which
    synchronizes CUDA itself, warms up, and uses this process's thread count, not its default of 1)."""
    from torch.utils.benchmark import Timer

    return Timer(stmt, globals=env, num_threads=torch.get_num_threads()).timeit(repeats).median


def phase_read(run: Path, device: torch.device) -> dict:
    import nextrap
    from nextrap.run.adapters import open_adapter

    traj = nextrap.open_run(run)
    base = _current_rss_mb()
    t0 = time.perf_counter()
    n = 0
    for ref in traj.refs:
        with open_adapter(ref) as reader:
            for key in reader.keys():
                n += reader.get(key).to(device).numel()
    _sync(device)
    return {
        "seconds": time.perf_counter() - t0,
        "numel": n,
        "rss_base_mb": base,
        "rss_peak_mb": _peak_rss_mb(),
    }


def phase_factored(run: Path, device: torch.device, horizon: int, chunk_mb: int) -> dict:
    import nextrap

    traj = nextrap.open_run(run)
    base = _current_rss_mb()
    t0 = time.perf_counter()
    feats = nextrap.compute_features(traj, horizon, device, chunk_bytes=chunk_mb * 2**20)
    _sync(device)
    seconds = time.perf_counter() - t0
    feat_bytes = sum(
        t.u.numel() * 4 + t.v.numel() * 4 + t.s.numel() * 4
        for f in feats.matrices.values()
        for t in (f.global_, f.local, f.target)
    )
    return {
        "seconds": seconds,
        "modules": len(feats.matrices),
        "feature_mb": feat_bytes / 2**20,
        "rss_base_mb": base,
        "rss_peak_mb": _peak_rss_mb(),
        "gpu_peak_mb": _gpu_peak_mb(device),
    }


def phase_dense(run: Path, device: torch.device, repeats: int) -> dict:
    """For one module of each shape in layer 0: local delta at the last checkpoint, dense vs factored."""
    import nextrap
    from nextrap.linalg import lowrank

    traj = nextrap.open_run(run)
    K = len(traj.headers)
    rows = []
    for name in [n for n in traj.modules if n.startswith("model.layers.0.")]:
        B, A = traj.load_factors([name], device, indices=[K - 2, K - 1])
        L, R = lowrank.difference(B[:, 1], A[:, 1], 1.0, B[:, 0], A[:, 0], 1.0)
        t = lowrank.top_triplet(L, R)
        fact = _timer("lowrank.top_triplet(L, R)", {"lowrank": lowrank, "L": L, "R": R}, repeats)
        # Batched, as the pipeline runs it: every module of this shape (all layers) in one call.
        same = [n for n, m in traj.modules.items() if m.shape == traj.modules[name].shape]
        Bb, Ab = traj.load_factors(same, device, indices=[K - 2, K - 1])
        Lb, Rb = lowrank.difference(Bb[:, 1], Ab[:, 1], 1.0, Bb[:, 0], Ab[:, 0], 1.0)
        batched = _timer("lowrank.top_triplet(L, R)", {"lowrank": lowrank, "L": Lb, "R": Rb}, repeats) / len(same)
        del Bb, Ab, Lb, Rb
        _sync(device)
        t0 = time.perf_counter()
        dense = L[0] @ R[0]  # materialize out x in
        U, S, Vh = torch.linalg.svd(dense, full_matrices=False)
        _sync(device)
        dense_s = time.perf_counter() - t0
        cos_u = float((U[:, 0] * t.u[0]).sum().abs())
        rows.append(
            {
                "module": name.split(".")[-1],
                "shape": list(dense.shape),
                "dense_s": dense_s,
                "factored_s": fact,
                "batched_s": batched,
                "batch": len(same),
                "sigma_rel_diff": float((S[0] - t.s[0]).abs() / S[0]),
                "abs_cos_u": cos_u,
            }
        )
        del dense, U, S, Vh
    return {"rows": rows}


def phase_predictor(run: Path, device: torch.device, horizon: int, epochs: int) -> dict:
    import nextrap
    from nextrap.predictors.config import NExtConfig
    from nextrap.predictors.next import _collect_groups, _fit

    traj = nextrap.open_run(run)
    feats = nextrap.compute_features(traj, horizon, device)
    cfg = NExtConfig(epochs=epochs, patience=0)
    rows = []
    P = feats.pairs
    for dim, grp in _collect_groups(feats).items():
        G, T = torch.stack(grp.global_), torch.stack(grp.target)
        Lc = torch.stack(grp.local)
        x_g, x_l, y = G[:, :P].reshape(-1, dim), Lc[:, :P].reshape(-1, dim), T.reshape(-1, dim)
        _fit(dim, dim, None, x_g, x_l, y, NExtConfig(epochs=1, patience=0), P)  # first-call costs out of the timing
        _sync(device)
        t0 = time.perf_counter()
        _fit(dim, dim, None, x_g, x_l, y, cfg, P)
        _sync(device)
        rows.append(
            {"dim": dim, "rows": int(x_g.shape[0]), "seconds_per_epoch": (time.perf_counter() - t0) / epochs}
        )
    return {"groups": rows, "rss_peak_mb": _peak_rss_mb()}


def _child(args: argparse.Namespace, phase: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--run",
        str(args.run),
        "--device",
        args.device,
        "--horizon",
        str(args.horizon),
        "--chunk-mb",
        str(args.chunk_mb),
        "--epochs",
        str(args.epochs),
        "--repeats",
        str(args.repeats),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--checkpoints", type=int, default=16)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--horizon", type=int, default=5)
    p.add_argument("--chunk-mb", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3, help="predictor epochs to time per group")
    p.add_argument("--repeats", type=int, default=5, help="repeats of the factored per-module timing")
    p.add_argument("--run", type=Path, default=None, help="reuse (or create) the synthetic run here")
    p.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    from nextrap.util.devices import resolve_device

    device = resolve_device(args.device)
    if args.phase:
        fn = {
            "read": lambda: phase_read(args.run, device),
            "factored": lambda: phase_factored(args.run, device, args.horizon, args.chunk_mb),
            "dense": lambda: phase_dense(args.run, device, args.repeats),
            "predictor": lambda: phase_predictor(args.run, device, args.horizon, args.epochs),
        }[args.phase]
        print(json.dumps(fn()))
        return

    from nextrap.testing.synthetic import PlantSpec, llama_like_shapes, write_synthetic_run

    tmp = None
    if args.run is None:
        tmp = tempfile.TemporaryDirectory(prefix="nextrap-bench-")
        args.run = Path(tmp.name) / "run"
    shapes = llama_like_shapes(args.layers, **QWEN_7B)
    steps = [10 * (i + 1) for i in range(args.checkpoints)]
    if not (args.run / f"checkpoint-{steps[-1]}").exists():
        t0 = time.perf_counter()
        write_synthetic_run(
            args.run,
            steps,
            shapes,
            PlantSpec(rank=args.rank, alpha=2.0 * args.rank),
            dtype=getattr(torch, args.dtype),
        )
        print(
            f"wrote {len(steps)} checkpoints in {time.perf_counter() - t0:.0f} s to {args.run}",
            file=sys.stderr,
        )
    ckpt_mb = (args.run / f"checkpoint-{steps[-1]}" / "adapter_model.safetensors").stat().st_size / 2**20
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{args.layers} layers x 7 modules, r = {args.rank}, {len(steps)} checkpoints of {ckpt_mb:.0f} MiB "
        f"({args.dtype})\n"
    )

    read = _child(args, "read")
    fact = _child(args, "factored")
    dense = _child(args, "dense")
    pred = _child(args, "predictor")

    print(
        "per-module top triplet of a local delta: dense (materialize + full SVD, one run) against factored,"
    )
    print("one module per call and batched over all modules of that shape (medians of repeats)")
    print(
        f"{'module':<10} {'shape':>11} {'dense s':>8} {'fact. ms':>9} {'speed-up':>9} {'batched ms':>11} "
        f"{'speed-up':>9} {'sigma rel':>10} {'|cos u|':>9}"
    )
    for r in dense["rows"]:
        print(
            f"{r['module']:<10} {'x'.join(map(str, r['shape'])):>11} {r['dense_s']:>8.2f} "
            f"{r['factored_s'] * 1e3:>9.2f} {r['dense_s'] / r['factored_s']:>8.0f}x {r['batched_s'] * 1e3:>11.2f} "
            f"{r['dense_s'] / r['batched_s']:>8.0f}x {r['sigma_rel_diff']:>10.1e} {r['abs_cos_u']:>9.6f}"
        )
    print()
    print("whole trajectory (all global/local/target features of all modules)")
    print(f"{'phase':<28} {'seconds':>8} {'peak RSS over base MiB':>23} {'x checkpoint':>13}")
    for label, res in (("read all checkpoints (floor)", read), ("factored features", fact)):
        extra = res["rss_peak_mb"] - res["rss_base_mb"]
        print(f"{label:<28} {res['seconds']:>8.1f} {extra:>23.0f} {extra / ckpt_mb:>13.2f}")
    if fact.get("gpu_peak_mb") is not None:
        print(f"GPU peak memory of factored features: {fact['gpu_peak_mb']:.0f} MiB")
    print(
        f"features held: {fact['feature_mb']:.0f} MiB for {fact['modules']} modules "
        f"({fact['feature_mb'] / ckpt_mb:.2f} x checkpoint); factored / read = {fact['seconds'] / read['seconds']:.2f}"
    )
    print()
    print(f"NExt predictor training (timed over {args.epochs} full-batch epochs)")
    print(f"{'vector length':>13} {'rows':>6} {'s / epoch':>10} {'s / 1000 epochs':>16}")
    for g in pred["groups"]:
        print(
            f"{g['dim']:>13} {g['rows']:>6} {g['seconds_per_epoch']:>10.3f} {g['seconds_per_epoch'] * 1000:>16.0f}"
        )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
