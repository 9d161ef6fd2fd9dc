"""RELEX's cost on a 7B-shaped run, side by side with NExt's feature extraction.

Both read every factor of every checkpoint once; NExt computes the global, local and target rank-1
triplets (``compute_features``), RELEX the ``T x T`` Gram matrix of each module's updates, its
eigenvectors and the line fits (``RelexPredictor.predict``). Each phase runs ``--repeats`` times,
alternating, in this one process (so both see the same page cache and load); medians are reported.
Optionally (``--write``) the cost of writing one RELEX adapter (the best rank-r refactoring of a
rank <= T r update per module) is timed once.

Run on a 7B-shaped run (4.9 GB): the one ``python benchmarks/predictor.py --runs qwen`` writes to
``/tmp/nextrap-bench/qwen-28l-16c``, or one written by ``python benchmarks/rank1.py --run DIR``; then
``python benchmarks/relex_cost.py --run RUN``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--horizon", type=int, default=5)
    p.add_argument("--write", action="store_true", help="also time writing one RELEX adapter")
    args = p.parse_args()

    import nextrap
    from nextrap.predictors import RelexPredictor

    traj = nextrap.open_run(args.run)
    device = torch.device("cpu")
    print(
        f"{len(traj.modules)} modules, {len(traj.steps)} checkpoints; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    times: dict[str, list[float]] = {"next features": [], "relex (gram, eigh, lines)": []}
    for i in range(args.repeats):
        t0 = time.perf_counter()
        feats = nextrap.compute_features(traj, args.horizon, device)
        times["next features"].append(time.perf_counter() - t0)
        del feats
        t0 = time.perf_counter()
        pred = RelexPredictor().predict(traj, args.horizon, None, device)
        times["relex (gram, eigh, lines)"].append(time.perf_counter() - t0)
        print(f"repeat {i + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print()
    for k, v in med.items():
        print(f"{k:<28} median {v:7.1f} s  (runs: {', '.join(f'{x:.1f}' for x in times[k])})")
    ratio = med["relex (gram, eigh, lines)"] / med["next features"]
    print(f"relex / next features = {ratio:.2f} (target: <= 2)")
    ev = pred.diagnostics["median_explained_variance"]
    print(f"median temporal explained variance (rank 1): {ev:.3f}")
    if args.write:
        with tempfile.TemporaryDirectory(prefix="nextrap-relex-") as tmp:
            t0 = time.perf_counter()
            nextrap.extrapolate(
                traj, Path(tmp) / "out", nextrap.ExtrapolateOptions(method="relex", hash_inputs=False)
            )
            print(f"whole relex extrapolation incl. writing one adapter: {time.perf_counter() - t0:.1f} s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
