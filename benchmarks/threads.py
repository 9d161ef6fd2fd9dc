"""Threads: one command timed with each thread setting, on an idle machine and on a busy one, side by side.

The machine is made busy here: one CPU-burning process per core (``while True: pass``) for the busy
rows, none for the idle ones. The command is ``nextrap extrapolate --method next`` on a planted run (a
NExt fit: many small operations, where torch's one intra-op thread per core collapses under
contention), run with ``--threads 1``, ``--threads <cores>`` and without ``--threads`` (nextrap's
default: one per free core). ``OMP_NUM_THREADS`` and ``NEXTRAP_THREADS`` are removed from the
commands' environment, so the default is what a new user gets.

    python benchmarks/threads.py                    # 3 repeats per cell
    python benchmarks/threads.py --repeats 1 --epochs 100
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _write_run(folder: Path) -> None:
    from nextrap.testing.synthetic import PlantSpec, llama_like_shapes, write_synthetic_run

    shapes = llama_like_shapes(1, hidden=256, intermediate=512, kv_dim=128)
    write_synthetic_run(folder, [10 * (i + 1) for i in range(12)], shapes, PlantSpec(rank=8, alpha=16.0))


def _time(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nextrap", "-q", *args], check=True, env=env, cwd=ROOT, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=100, help="NExt epochs at most per group")
    args = p.parse_args()
    cores = _cores()
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NEXTRAP_THREADS")}
    settings = {"--threads 1": ["--threads", "1"], f"--threads {cores}": ["--threads", str(cores)], "default": []}
    with tempfile.TemporaryDirectory(prefix="nextrap-threads-") as tmp:
        run = Path(tmp) / "run"
        _write_run(run)
        results: dict[tuple[str, str], list[float]] = {}
        load_seen: dict[str, float] = {}
        for machine in ("idle", "busy"):
            burners = []
            if machine == "busy":
                # each burner stops by itself if this process dies (its parent changes)
                burn = "import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass"
                burners = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(cores)]
                time.sleep(20)  # the default reads the 1-minute load average: let the burners show in it
            try:
                load_seen[machine] = os.getloadavg()[0]
                for _ in range(args.repeats):  # settings interleaved, so a drift in load hits all alike
                    for label, flags in settings.items():
                        out = Path(tmp) / "out"
                        cmd = [*flags, "extrapolate", str(run), "-o", str(out), "--method", "next", "--overwrite",
                               "--epochs", str(args.epochs)]  # fmt: skip
                        results.setdefault((machine, label), []).append(_time(cmd, env))
            finally:
                for b in burners:
                    b.kill()
                    b.wait()
    print(f"{cores} cores; nextrap extrapolate --method next (<= {args.epochs} epochs per group) on a planted run; "
          f"median of {args.repeats}; busy = {cores} CPU-burning processes")  # fmt: skip
    print(f"load average at the start: idle {load_seen['idle']:.1f}, busy {load_seen['busy']:.1f}")
    print()
    print("| threads | idle machine (s) | busy machine (s) | busy / idle |")
    print("|---|---|---|---|")
    for label in settings:
        idle = statistics.median(results[("idle", label)])
        busy = statistics.median(results[("busy", label)])
        print(f"| {label} | {idle:.1f} | {busy:.1f} | {busy / idle:.2f} |")


if __name__ == "__main__":
    main()
