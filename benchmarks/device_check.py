"""Device check: one script that measures what a GPU brings, time-boxed, every part's failure recorded.

Parts, each in its own process with its own time limit (the whole check stays under ``--budget``):

1. ``gpu-tests``: the CUDA-marked tests (``pytest -m gpu``);
2. ``rank1``: rank-1 features of every module (``compute_features``) on the CPU and on the device, for
   one synthetic run: agreement (sigma, |cos u|, |cos v| of every triplet) and the speed-up;
3. ``scale``: ``benchmarks/scale.py``'s table for that run with ``--device cpu`` and with the device;
4. ``next-fit``: the NExt predictor's fit (default settings, epochs capped) on the CPU and the device.

Writes ``device_check.json`` (the device's name, each part's figures or its error) into ``--out`` and prints
a table. On a GPU (``--device cuda``) the run has 7B shapes (Llama-2-7B, r = 16, 16 bf16 checkpoints,
1.2 GiB); with ``--device cpu`` it is tiny, so that CI keeps the script working (tests/test_device_check.py).

    python benchmarks/device_check.py --device cuda --out results/   # on a GPU machine: about 5 minutes
    python benchmarks/device_check.py --device cpu --out /tmp/dc     # tiny run, well under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# seconds per part on a GPU (a CPU check runs the tiny run: a fraction of these)
LIMITS = {"gpu-tests": 90, "rank1": 120, "scale": 180, "next-fit": 60}


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------ parts (children)


def part_rank1(run: Path, device_name: str) -> dict:
    """Features on the CPU and the device: seconds (second of two runs: warm page cache) and agreement."""
    import torch

    import nextrap
    from nextrap.util.devices import resolve_device

    device = resolve_device(device_name)
    traj = nextrap.open_run(run)
    out: dict = {"modules": len(traj.modules), "checkpoints": len(traj.steps)}
    feats = {}
    for label, dev in (("cpu", torch.device("cpu")), ("device", device)):
        for _ in range(2):
            _sync(dev)
            t0 = time.perf_counter()
            feats[label] = nextrap.compute_features(traj, 5, dev)
            _sync(dev)
            out[f"{label}_seconds"] = time.perf_counter() - t0
    worst_sigma, worst_cos = 0.0, 1.0
    for name, f_cpu in feats["cpu"].matrices.items():
        f_dev = feats["device"].matrices[name]
        for a, b in ((f_cpu.global_, f_dev.global_), (f_cpu.local, f_dev.local), (f_cpu.target, f_dev.target)):
            s_a, s_b = a.s.double(), b.s.double().cpu()
            worst_sigma = max(worst_sigma, float(((s_a - s_b).abs() / s_a.clamp_min(1e-30)).max()))
            for x, y in ((a.u, b.u), (a.v, b.v)):
                cos = (x.double() * y.double().cpu()).sum(-1).abs()
                moving = s_a > 1e-6 * float(s_a.max())
                if bool(moving.any()):
                    worst_cos = min(worst_cos, float(cos[moving].min()))
    out.update(max_sigma_rel_diff=worst_sigma, min_abs_cos=worst_cos)
    out["speedup"] = out["cpu_seconds"] / out["device_seconds"]
    return out


def part_next_fit(run: Path, device_name: str, epochs: int) -> dict:
    """The NExt predictor's whole fit (default settings, at most ``epochs`` epochs) on the CPU and the device."""
    import torch

    import nextrap
    from nextrap.predictors import NExtConfig, RelexConfig, make_predictor
    from nextrap.util.devices import resolve_device

    device = resolve_device(device_name)
    traj = nextrap.open_run(run)
    out: dict = {"epochs": epochs}
    for label, dev in (("cpu", torch.device("cpu")), ("device", device)):
        feats = nextrap.compute_features(traj, 5, dev)
        predictor = make_predictor("next", NExtConfig(epochs=epochs), None, RelexConfig())
        _sync(dev)
        t0 = time.perf_counter()
        pred = predictor.predict(traj, 5, feats, dev)
        _sync(dev)
        out[f"{label}_seconds"] = time.perf_counter() - t0
        out[f"{label}_groups"] = [
            {k: g.get(k) for k in ("dim", "rows", "epochs_run", "seconds", "stop_reason")}
            for g in pred.diagnostics.get("groups", [])
        ]
    out["speedup"] = out["cpu_seconds"] / out["device_seconds"]
    return out


# ----------------------------------------------------------------------------------------- the driver


def _run_part(name: str, argv: list[str], limit: float, out: Path) -> dict:
    """Run one part as a child process within ``limit`` seconds; its JSON result, or what went wrong."""
    started = time.perf_counter()
    result_file = out / f"part-{name}.json"
    result_file.unlink(missing_ok=True)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"")[-1500:] if isinstance(exc.stdout, bytes) else (exc.stdout or "")[-1500:]
        return {"ok": False, "error": f"timed out after {limit:.0f} s", "tail": str(tail), "seconds": limit}
    seconds = time.perf_counter() - started
    if result_file.is_file():
        result = json.loads(result_file.read_text())
        result.setdefault("ok", done.returncode == 0)
    else:
        result = {"ok": done.returncode == 0}
    result["seconds"] = seconds
    result["returncode"] = done.returncode
    result["tail"] = (done.stdout + done.stderr)[-1500:]
    return result


def _write_run(run: Path, size: str) -> None:
    sys.path.insert(0, str(HERE))
    import scale

    if not run.exists():
        partial = run.with_name(run.name + ".partial")
        scale.write_run(partial, size)
        partial.rename(run)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (the check) or cpu (tiny run, for CI)")
    p.add_argument("--out", type=Path, default=Path("device-check"))
    p.add_argument("--budget", type=float, default=450.0, help="seconds for the whole check")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the CPU side (default: all cores)")
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)
    p.add_argument("--run", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=int, default=20, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part:
        _child(args)
        return
    started = time.perf_counter()
    tiny = args.device == "cpu"
    size = "tiny" if tiny else "7b"
    threads = args.threads or os.cpu_count() or 1
    env_note = {"OMP_NUM_THREADS": str(threads), "NEXTRAP_THREADS": str(threads)}
    os.environ.update(env_note)
    report: dict = {"device": args.device, "size": size, "threads": threads, "parts": {}}
    try:
        report["device_name"] = _device_name(args.device)
        import torch

        report["torch"] = torch.__version__
    except Exception as exc:  # record, go on: every part reports its own failure
        report["device_name"] = f"unknown ({exc})"
    run = args.out / f"run-{size}"
    try:
        _write_run(run, size)
    except Exception:
        report["parts"]["write-run"] = {"ok": False, "error": traceback.format_exc()[-1500:]}
    me = [sys.executable, str(Path(__file__).resolve())]
    child = ["--device", args.device, "--out", str(args.out), "--run", str(run)]
    scale_json = args.out / "scale.json"
    parts = {
        "gpu-tests": [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
        "rank1": [*me, "--part", "rank1", *child],
        "scale": [*me, "--part", "scale", *child, "--threads", str(threads)],
        "next-fit": [*me, "--part", "next-fit", *child, "--epochs", "20" if tiny else "300"],
    }
    if tiny:
        parts.pop("gpu-tests")  # none run without CUDA; the full suite covers the CPU side
        report["parts"]["gpu-tests"] = {"ok": True, "skipped": "no CUDA device asked for"}
    for name, argv in parts.items():
        left = args.budget - (time.perf_counter() - started)
        limit = min(LIMITS[name], left)
        if limit < 5:
            report["parts"][name] = {"ok": False, "error": "no time left in the budget"}
            continue
        report["parts"][name] = _run_part(name, argv, limit, args.out)
        print(f"# {name}: {'ok' if report['parts'][name].get('ok') else 'FAILED'} "
              f"({report['parts'][name].get('seconds', 0):.0f} s)", flush=True)
    report["seconds"] = time.perf_counter() - started
    (args.out / "device_check.json").write_text(json.dumps(report, indent=1))
    print(table(report))
    if scale_json.is_file():
        sys.path.insert(0, str(HERE))
        import scale

        data = json.loads(scale_json.read_text())
        print()
        print(scale.table(data["rows"], data["idle_mib"], data["device"]))


def _child(args: argparse.Namespace) -> None:
    """One part, in its own process: its result goes to ``part-<name>.json``."""
    target = args.out / f"part-{args.part}.json"
    try:
        if args.part == "rank1":
            result = part_rank1(args.run, args.device)
        elif args.part == "next-fit":
            result = part_next_fit(args.run, args.device, args.epochs)
        elif args.part == "scale":
            result = part_scale(args)
        else:
            raise SystemExit(f"unknown part {args.part}")
        result["ok"] = result.get("ok", True)
    except Exception:
        result = {"ok": False, "error": traceback.format_exc()[-1500:]}
    target.write_text(json.dumps(result))


def part_scale(args: argparse.Namespace) -> dict:
    """scale.py's rows for the run, on the CPU and on the device (the same machine)."""
    size = args.run.name.removeprefix("run-")
    devices = ["cpu"] if args.device == "cpu" else ["cpu", args.device]
    commands, idle_repeats = ["backtest-linear"], "1"
    if args.device != "cpu":  # the tiny CPU run keeps CI's check short
        commands = ["inspect", "backtest-linear", "backtest-next", "extrapolate-linear", "extrapolate-relex"]
        idle_repeats = "3"
    rows, idle = [], {}
    for device in devices:
        out = args.out / f"scale-{device}.json"
        cmd = [
            sys.executable, str(HERE / "scale.py"), "--sizes", size, "--threads", str(args.threads),
            "--device", device, "--keep", str(args.out), "--json", str(out), "--timeout", "60",
            "--idle-repeats", idle_repeats,
            "--commands", *commands,
        ]  # fmt: skip
        subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        data = json.loads(out.read_text())
        idle = data["idle_mib"]
        rows.extend({**r, "device": device} for r in data["rows"])
    (args.out / "scale.json").write_text(json.dumps({"rows": rows, "idle_mib": idle, "device": "+".join(devices)}))
    speedups = {}
    for r in rows:
        if r["device"] != "cpu" and r.get("seconds"):
            base = next((c for c in rows if c["device"] == "cpu" and c["command"] == r["command"]), None)
            if base and base.get("seconds"):
                speedups[r["command"]] = base["seconds"] / r["seconds"]
    return {"rows": len(rows), "speedup_over_cpu": speedups}


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1][:200] if lines else ""


def table(report: dict) -> str:
    lines = [
        f"device check on {report.get('device_name')} (torch {report.get('torch')}; run {report['size']}; "
        f"{report['threads']} CPU threads; {report.get('seconds', 0):.0f} s)",
        "",
        f"{'part':<10} {'ok':<4} {'seconds':>8}  figures",
    ]
    for name, r in report["parts"].items():
        figures = ""
        if name == "rank1" and r.get("ok") and "speedup" in r:
            figures = (
                f"features cpu {r['cpu_seconds']:.2f} s, device {r['device_seconds']:.2f} s (x{r['speedup']:.1f}); "
                f"max sigma rel. diff {r['max_sigma_rel_diff']:.1e}, min |cos| {r['min_abs_cos']:.6f}"
            )
        elif name == "next-fit" and r.get("ok") and "speedup" in r:
            figures = (
                f"NExt fit (<= {r['epochs']} epochs per group) cpu {r['cpu_seconds']:.2f} s, device "
                f"{r['device_seconds']:.2f} s (x{r['speedup']:.1f})"
            )
        elif name == "scale" and r.get("ok") and "speedup_over_cpu" in r:
            figures = ", ".join(f"{c} x{s:.1f}" for c, s in r["speedup_over_cpu"].items()) or "(cpu only)"
        elif name == "gpu-tests":
            figures = r.get("skipped") or _last_line(r.get("tail"))
        if not r.get("ok"):
            figures = _last_line(r.get("error") or r.get("tail"))
        lines.append(f"{name:<10} {'yes' if r.get('ok') else 'NO':<4} {r.get('seconds', 0):>8.1f}  {figures}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
