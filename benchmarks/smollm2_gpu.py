"""The real-LLM steps-saved benchmark in one call on one accelerator: every seed at once, within a deadline.

Runs ``rl_steps.py`` (beside this file) once per seed, as parallel processes sharing the device, with
the SmolLM2 protocol of ``benchmarks/results/rl_steps-smollm2*`` (plain run, restart control, linear
c = 2, NExt c = 1.5 with AdamW's moments kept, ``next-horizon+linear`` c = 2, ``auto``), then tabulates whatever finished in the
same format (``rl_steps-smollm2.{txt,md,json,png}``) plus ``device.json`` (the card, the time each seed
took, which seeds were cut by the deadline). Arms are recorded as they finish and the plain runs resume
from their last checkpoint, so a second call continues where the deadline stopped the first.

    # on a CUDA machine (SmolLM2 weights fetched once with `nextrap fetch-policy smollm2`)
    python benchmarks/smollm2_gpu.py --device cuda --deadline 480 --out bench-data/smol-gpu
    # anything after -- replaces rl_steps.py's protocol options (a test runs a tiny setting on the CPU)
    python benchmarks/smollm2_gpu.py --device cpu --seeds 0 1 -- --steps 8 --save-steps 1 --horizon 2 ...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
PROTOCOL = [
    "--policy", "smollm2", "--dtype", "bfloat16", "--lr", "5e-5", "--prompts", "8", "--group-size", "4",
    "--steps", "80", "--save-steps", "5", "--horizon", "3", "--eval-size", "640", "--eval-every", "10",
    "--arms", "restart", "linear c=2", "next c=1.5 keep", "next-horizon+linear c=2", "auto c=2", "--coef", "1.5", "2",
]  # fmt: skip


def device_name(device: str) -> str:
    """The accelerator's name (``torch.cuda.get_device_name``), or ``cpu``."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"


def run(args: argparse.Namespace, protocol: list[str]) -> dict:
    """Start one ``rl_steps.py`` per seed (at most ``args.parallel`` at a time), stop them at the deadline."""
    started = time.monotonic()
    threads = max(1, (os.cpu_count() or 1) // max(1, args.parallel))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending, running, seconds, cut = list(args.seeds), {}, {}, []
    args.logs.mkdir(parents=True, exist_ok=True)
    while pending or running:
        while pending and len(running) < args.parallel:
            seed = pending.pop(0)
            command = [sys.executable, str(HERE / "rl_steps.py"), *protocol, "--device", args.device,
                       "--seeds", str(seed), "--out", str(args.out),
                       "--results", str(args.logs / f"seed-{seed}")]  # fmt: skip
            log = (args.logs / f"seed-{seed}.log").open("w")
            running[seed] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), time.monotonic())
        for seed, (proc, t0) in list(running.items()):
            if proc.poll() is not None:
                seconds[seed] = round(time.monotonic() - t0, 1)
                if proc.returncode:
                    cut.append({"seed": seed, "why": f"exit code {proc.returncode}, see {args.logs}/seed-{seed}.log"})
                del running[seed]
        if time.monotonic() - started > args.deadline:
            for seed, (proc, t0) in running.items():
                proc.terminate()
                proc.wait(30)
                cut.append({"seed": seed, "why": f"deadline after {time.monotonic() - t0:.0f} s"})
            cut += [{"seed": s, "why": "not started before the deadline"} for s in pending]
            break
        time.sleep(1)
    return {"seconds_per_seed": seconds, "cut": cut, "wall_seconds": round(time.monotonic() - started, 1)}


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else None
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--parallel", type=int, default=5, help="seeds trained at once on the device")
    p.add_argument("--deadline", type=float, default=480, help="seconds of wall time for the training")
    p.add_argument("--out", type=Path, default=Path("bench-data/smol-gpu"))
    p.add_argument("--results", type=Path, default=HERE / "results" / "rl_steps-smollm2-gpu")
    args = p.parse_args(argv)
    args.logs = args.out / "logs"
    protocol = PROTOCOL if extra is None else extra
    record = {"device": args.device, "device_name": device_name(args.device), "protocol": protocol, "seeds": args.seeds}
    record |= run(args, protocol)
    # the table over every seed that finished arms (rl_steps.py reads the records, trains nothing)
    summary = [sys.executable, str(HERE / "rl_steps.py"), *protocol, "--device", args.device, "--summarize-only",
               "--seeds", *map(str, args.seeds), "--out", str(args.out), "--results", str(args.results)]  # fmt: skip
    done = subprocess.run(summary, capture_output=True, text=True)
    record["summary_exit_code"] = done.returncode
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "device.json").write_text(json.dumps(record, indent=1) + "\n")
    print(done.stdout[-6000:], done.stderr[-3000:] if done.returncode else "")
    print(json.dumps({k: record[k] for k in ("device_name", "wall_seconds", "seconds_per_seed", "cut")}))


if __name__ == "__main__":
    main()
