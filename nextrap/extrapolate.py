"""The pipeline: checkpoints -> features -> prediction -> extrapolated adapters + ``nextrap.json``.

``extrapolate()`` is what ``nextrap extrapolate`` runs. Everything that can fail on bad input
(discovery, headers, options, the output path) is checked before the expensive work, and all files
are written into a temporary folder that is renamed into place at the end, so a failure leaves
nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from nextrap import lowrank
from nextrap.adapters import write_adapter
from nextrap.atomic import atomic_directory, check_output, output_lock
from nextrap.devices import resolve_device
from nextrap.errors import ConfigError, LayoutError, NonFiniteError
from nextrap.layouts import Discovery
from nextrap.predictors import METHODS, NExtConfig, Prediction, RelexConfig, make_predictor
from nextrap.progress import Progress, progress_bar
from nextrap.runs import open_run, resolve_horizon
from nextrap.trainer_checkpoint import OPTIMIZER_POLICIES, write_trainer_state
from nextrap.trajectory import DEFAULT_CHUNK_BYTES, Trajectory, compute_features
from nextrap.version import __version__

__all__ = [
    "REPORT_NAME",
    "ExtrapolateOptions",
    "ExtrapolationResult",
    "extrapolate",
]

logger = logging.getLogger(__name__)

REPORT_NAME = "nextrap.json"
RANK_POLICIES = ("keep", "grow")


@dataclass(frozen=True)
class ExtrapolateOptions:
    """Everything that shapes an extrapolation; the CLI's options map one to one onto these fields.

    ``coefs``: extending coefficients c (one adapter each); ``to_steps``: target steps instead (one
    adapter each, c = (step - t_K) / horizon steps); give one or the other (neither: c = 1).
    ``method``: ``next``, ``linear``, ``relex``, ``relex-anchored``, or ``auto`` (backtest the run,
    take the recommended method); ``relex``: RELEX's rank and window. ``horizon``: in checkpoint intervals;
    ``None`` means 5, shortened when the run is too short for 3 training pairs. ``rank_policy``:
    ``keep`` (rank r, best approximation) or ``grow`` (exact, rank r + 1). ``merge`` with
    ``base_model`` writes merged full weights instead of adapters. ``format="trl"`` writes a
    ``checkpoint-<virtual step>/`` folder TRL resumes from; ``optimizer`` (``keep``/``reset``) decides
    whether the last checkpoint's optimizer and scheduler go along.
    """

    coefs: tuple[float, ...] | None = None
    to_steps: tuple[int, ...] = ()
    method: str = "next"
    horizon: int | None = None
    rank_policy: str = "keep"
    device: str = "auto"
    predictor: NExtConfig = field(default_factory=NExtConfig)
    base_model: str | None = None
    merge: bool = False
    overwrite: bool = False
    hash_inputs: bool = True
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    format: str = "peft"
    optimizer: str = "reset"
    relex: RelexConfig = field(default_factory=RelexConfig)
    force: bool = False

    def __post_init__(self) -> None:
        to_steps = tuple(int(t) for t in self.to_steps)
        object.__setattr__(self, "to_steps", to_steps)
        if to_steps and self.coefs:
            raise ConfigError("give either coefficients (--coef) or target steps (--to-step), not both")
        if len(set(to_steps)) != len(to_steps):
            raise ConfigError(f"to_steps = {list(to_steps)}: a step is given twice")
        coefs = tuple(float(c) for c in self.coefs) if self.coefs is not None else ((1.0,) if not to_steps else ())
        object.__setattr__(self, "coefs", coefs)
        if not coefs and not to_steps:
            raise ConfigError("coefs is empty: give at least one extending coefficient (--coef)")
        if any(not math.isfinite(c) for c in coefs):
            raise ConfigError(f"coefs = {list(coefs)}: every coefficient must be a finite number")
        if len(set(coefs)) != len(coefs):
            raise ConfigError(f"coefs = {list(coefs)}: a coefficient is given twice")
        if self.method not in (*METHODS, "auto"):
            raise ConfigError(f"method {self.method!r}: expected one of {[*METHODS, 'auto']}")
        if self.horizon is not None and self.horizon < 1:
            raise ConfigError(f"horizon = {self.horizon}: expected at least 1 checkpoint interval")
        if self.rank_policy not in RANK_POLICIES:
            raise ConfigError(f"rank_policy {self.rank_policy!r}: expected one of {list(RANK_POLICIES)}")
        if self.merge and not self.base_model:
            raise ConfigError("merge needs base_model: pass --base-model PATH with --merge")
        if self.format not in ("peft", "trl"):
            raise ConfigError(f"format {self.format!r}: expected 'peft' or 'trl'")
        if self.format == "trl" and (self.merge or self.rank_policy == "grow"):
            raise ConfigError(
                "--format trl resumes the run's own adapter: it cannot be combined with --merge or --rank-policy grow "
                "(TRL reloads weights into the same rank and keys)"
            )
        if self.optimizer not in OPTIMIZER_POLICIES:
            raise ConfigError(f"optimizer {self.optimizer!r}: expected one of {list(OPTIMIZER_POLICIES)}")
        if self.optimizer == "keep" and self.format != "trl":
            raise ConfigError(
                "--optimizer keep copies the optimizer state into a TRL checkpoint: add --format trl, "
                "or drop --optimizer (a PEFT adapter folder holds no optimizer state)"
            )
        if self.chunk_bytes < 1:
            raise ConfigError(f"chunk_bytes = {self.chunk_bytes}: expected a positive number of bytes")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["coefs"] = list(self.coefs)
        d["to_steps"] = list(self.to_steps)
        return d

    def resolve_coefs(self, last_step: int, horizon_steps: int) -> list[tuple[float, int | None]]:
        """``(coef, requested step or None)`` per output; target steps must lie beyond ``last_step``."""
        if not self.to_steps:
            return [(c, None) for c in self.coefs]
        early = [t for t in self.to_steps if t <= last_step]
        if early:
            raise ConfigError(
                f"--to-step {early[0]}: not beyond the last checkpoint (step {last_step}); give a later step, or "
                "--coef for a fraction of a horizon"
            )
        return [((t - last_step) / horizon_steps, t) for t in self.to_steps]


@dataclass(frozen=True)
class ExtrapolationResult:
    """What :func:`extrapolate` produced: the output folder, one path per coefficient, the report.

    ``prediction`` is the predicted update per horizon (factored, float32), for callers who want to
    score or reuse it.
    """

    output: Path
    adapters: dict[float, Path]
    report: dict[str, Any]
    prediction: Prediction | None = field(default=None, repr=False)

    @property
    def report_path(self) -> Path:
        return self.output / REPORT_NAME


def extrapolate(
    run: str | os.PathLike | Discovery | Trajectory | None,
    output: str | os.PathLike,
    options: ExtrapolateOptions | None = None,
    *,
    checkpoints: Sequence[str | os.PathLike] | None = None,
    steps: Sequence[int] | None = None,
    adapter_name: str | None = None,
    progress: bool | Progress = False,
) -> ExtrapolationResult:
    """Predict where the run goes next and write one adapter per coefficient.

    With one coefficient the adapter is written to ``output`` itself; with several, to
    ``output/coef-<c>/``. ``output/nextrap.json`` is the report either way.
    """
    options = options or ExtrapolateOptions()
    wrap = progress if callable(progress) else progress_bar(bool(progress))
    started = time.perf_counter()
    traj = open_run(run, checkpoints, steps, adapter_name, verify=False)
    device = resolve_device(options.device)
    if options.format == "trl":
        _check_outside_run(Path(output), traj)  # first: its message names the rotation hazard
    output = check_output(output, options.overwrite, traj.discovery.input_paths)
    # Held from here to the rename, so a second writer of the same output fails now, not after the work.
    with output_lock(output):
        traj = open_run(traj, force=options.force, chunk_bytes=options.chunk_bytes, progress=wrap)
        return _extrapolate_locked(traj, output, options, device, wrap, started)


def _extrapolate_locked(
    traj: Trajectory,
    output: Path,
    options: ExtrapolateOptions,
    device: torch.device,
    wrap: Progress,
    started: float,
) -> ExtrapolationResult:
    horizon, horizon_note = resolve_horizon(len(traj.headers), options.horizon)
    notes = list(traj.discovery.notes) + list(traj.notes) + ([horizon_note] if horizon_note else [])
    spacing = traj.spacing()
    if spacing["spread"] > 0.1:
        notes.append(
            f"checkpoints are unevenly spaced (intervals vary by {spacing['spread']:.0%} of the median): pairs are "
            "formed by checkpoint index, so horizons span different numbers of steps; the virtual step uses the "
            "steps actually spanned by the last horizon"
        )
    if options.merge:
        _check_base_model(options.base_model)
    for coef in options.coefs:
        if coef <= 0:
            text = (
                f"coefficient {coef:g} writes "
                + ("the last checkpoint unchanged" if coef == 0 else "a step backwards along the run")
                + " (extrapolation uses c > 0)"
            )
            notes.append(text)

    horizon_steps = traj.steps[-1] - traj.steps[-1 - horizon]
    targets = options.resolve_coefs(traj.steps[-1], horizon_steps)  # bad --to-step fails before the work
    notes.extend(_far_notes(traj, targets, horizon_steps))

    method, evidence = options.method, None
    if method == "auto":
        method, evidence = _auto_method(traj, options, device, wrap, notes)
    predictor = make_predictor(method, options.predictor, options.chunk_bytes, options.relex)
    features = (
        compute_features(traj, horizon, device, options.chunk_bytes, wrap)
        if predictor.needs_features
        else None
    )
    prediction = predictor.predict(traj, horizon, features, device, wrap)
    frozen = [
        k
        for k in traj.raw
        if k not in prediction.vectors and k not in prediction.matrices and k not in prediction.offsets
    ]
    if frozen:
        notes.append(
            f"{len(frozen)} saved tensor(s) never change along the run (e.g. {frozen[0]}): copied unchanged"
        )
    del features  # large on big models; not needed past this point

    outputs, adapters = [], {}
    with atomic_directory(output, options.overwrite, traj.discovery.input_paths) as tmp:
        for coef, to_step in wrap(targets, "writing adapters"):
            name = f"step-{to_step}" if to_step is not None else f"coef-{coef}"
            sub = tmp if len(targets) == 1 else tmp / name
            sub.mkdir(exist_ok=True)
            tensors, modules, overrides = _extended_tensors(traj, prediction, coef, options, device)
            entry = {
                "coef": coef,
                "path": "." if sub == tmp else sub.name,
                "virtual_step": traj.steps[-1] + coef * horizon_steps,
                "requested_step": to_step,
                "jump_over_observed_span": _span_ratio(traj, coef * horizon_steps),
                "rank": _rank_summary(traj, options.rank_policy),
                "max_relative_truncation_error": max(
                    (m["relative_truncation_error"] for m in modules.values()), default=0.0
                ),
                "modules": modules,
            }
            if options.merge:
                from nextrap.merge import write_merged

                adapter_tmp = tmp / f".adapter-{coef}"
                adapter_tmp.mkdir()
                write_adapter(adapter_tmp, tensors, traj.config, overrides)
                write_merged(adapter_tmp, options.base_model, sub)
                shutil.rmtree(adapter_tmp)
                entry["format"] = "merged"
            elif options.format == "trl":
                step_dir = sub / f"checkpoint-{round(entry['virtual_step'])}"
                step_dir.mkdir()
                write_adapter(step_dir, tensors, traj.config, overrides)
                notes.extend(
                    write_trainer_state(
                        step_dir, traj.refs[-1], round(entry["virtual_step"]), options.optimizer
                    )
                )
                entry["format"] = "trl"
                entry["path"] = str(step_dir.relative_to(tmp))
            else:
                write_adapter(sub, tensors, traj.config, overrides)
                entry["format"] = "peft"
            outputs.append(entry)
            adapters[coef] = output / entry["path"] if entry["path"] != "." else output
        report = _report(
            traj,
            options,
            method,
            evidence,
            prediction,
            horizon,
            horizon_steps,
            outputs,
            notes,
            device,
            time.perf_counter() - started,
        )
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    return ExtrapolationResult(output=output, adapters=adapters, report=report, prediction=prediction)


def _auto_method(
    traj: Trajectory, options: ExtrapolateOptions, device: torch.device, wrap: Progress, notes: list[str]
) -> tuple[str, dict[str, Any]]:
    """``--method auto``: backtest the run's own checkpoints and take the recommended method."""
    from nextrap.backtest import BacktestOptions, backtest

    bt_options = BacktestOptions(
        horizon=options.horizon,
        predictor=options.predictor,
        chunk_bytes=options.chunk_bytes,
        relex=options.relex,
    )
    try:
        result = backtest(traj, bt_options, device, wrap)
    except LayoutError as exc:
        raise ConfigError(
            f"--method auto could not backtest this run ({exc}); choose --method next, linear, relex or relex-anchored"
        ) from exc
    rec = result.recommendation
    notes.append(f"method auto: {rec['text']}")
    if not rec["beats_staying"]:
        logger.warning("method auto: %s", rec["text"])
    evidence = {
        "fit_steps": list(result.fit_steps),
        "heldout_steps": list(result.heldout_steps),
        "recommendation": rec,
        "scores": [s for s in result.scores if s["kind"] == "all"],
    }
    return rec["method"], evidence


def _check_outside_run(output: Path, traj: Trajectory) -> None:
    """TRL's checkpoint rotation deletes ``checkpoint-*`` folders of its output dir by age: stay out of it."""
    out = output.resolve()
    for folder in {ref.path.resolve().parent for ref in traj.refs}:
        if out == folder or folder in out.parents:
            raise ConfigError(
                f"{output}: inside the run's folder {folder}; --format trl output must go elsewhere, or the "
                "trainer's checkpoint rotation may delete it (it removes old checkpoint-* folders)"
            )


def _check_base_model(path: str | None) -> None:
    """Fail before any work when ``--base-model`` is neither a folder nor something shaped like a hub id."""
    if path and not Path(path).is_dir() and not _HUB_ID.match(path):
        raise ConfigError(
            f"base model {path}: no such folder; pass the folder (or hub id) of the model the adapters were trained on"
        )


_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def _rank_summary(traj: Trajectory, policy: str) -> int | list[int]:
    ranks = sorted({m.rank + (policy == "grow") for m in traj.modules.values()})
    return ranks[0] if len(ranks) == 1 else ranks


def _span_ratio(traj: Trajectory, jump_steps: float) -> float | None:
    """The jump's length over the steps the checkpoints span (None when they span none)."""
    span = traj.steps[-1] - traj.steps[0]
    return jump_steps / span if span > 0 else None


def _far_notes(traj: Trajectory, targets: list[tuple[float, int | None]], horizon_steps: int) -> list[str]:
    """Notes on jumps longer than the span the checkpoints were observed over.

    They go into the report, which the CLI prints after a successful run, not into the log at once: a
    command that then fails must print its one error line and nothing else.
    """
    notes = []
    for coef, _ in targets:
        ratio = _span_ratio(traj, coef * horizon_steps)
        if ratio is not None and ratio > 1:
            text = (
                f"coefficient {coef:g} jumps {coef * horizon_steps:g} steps, {ratio:.1f}x the observed span "
                f"(steps {traj.steps[0]}..{traj.steps[-1]}): far extrapolation, check the result before training on"
            )
            notes.append(text)
    return notes


def _extended_tensors(
    traj: Trajectory,
    pred: Prediction,
    coef: float,
    options: ExtrapolateOptions,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, float]], dict[str, Any]]:
    """The new adapter's tensors (run's keys and dtypes), per-module figures, config overrides."""
    tensors: dict[str, torch.Tensor] = {}
    figures: dict[str, dict[str, float]] = {}
    for (out_f, in_f, rank), names in traj.shape_groups().items():
        # the factors of the new update have r + k columns; the SVD holds a few copies of them
        per_module = (out_f + in_f) * (rank + pred.inner_size(names[0], rank)) * 4 * 4
        size = max(1, options.chunk_bytes // per_module)
        for i in range(0, len(names), size):
            chunk = names[i : i + size]
            B, A = traj.load_factors(chunk, device, indices=[len(traj.headers) - 1], scaled=False)
            B, A = B[:, 0], A[:, 0]
            scaling = torch.tensor([traj.modules[n].scaling for n in chunk], device=device).view(-1, 1, 1)
            Lp, Rp = pred.factors(traj, chunk, device, 1.0, coef)  # the move, offset + c * direction
            try:
                _check_prediction(Lp, Rp, chunk, pred.method, coef)
            except NonFiniteError:  # say which: the predictor itself diverged, or the coefficient overflowed
                _check_prediction(*pred.factors(traj, chunk, device, 1.0, 1.0), chunk, pred.method)
                raise
            if options.rank_policy == "keep":
                Ln, Rn = pred.factors(traj, chunk, device, 1.0, coef, plus_last=True)
                new = lowrank.refactor_to_rank(Ln, Rn, rank, scaling, B, A)
                B_new, A_new, err, norm = new.B, new.A, new.error, new.norm
            else:
                top = lowrank.factored_svd(Lp, Rp)  # grow keeps the update's rank-1 part exactly
                root = (top.S[:, :1].sqrt().unsqueeze(-2)) / scaling.sqrt()
                B_new = torch.cat([B, top.U[..., :1] * root], -1)
                A_new = torch.cat([A, root.transpose(-1, -2) * top.Vh[..., :1, :]], -2)
                err = top.S[:, 1:].square().sum(-1).sqrt()
                norm = lowrank.frobenius_norm(scaling * B_new, A_new)
            upd_norm = lowrank.frobenius_norm(Lp, Rp)
            for j, name in enumerate(chunk):
                mod = traj.modules[name]
                tensors[mod.b_key] = _finite_output(B_new[j].to("cpu", mod.dtype), name, coef)
                tensors[mod.a_key] = _finite_output(A_new[j].to("cpu", mod.dtype), name, coef)
                figures[name] = {
                    "predicted_sigma": float(
                        pred.diagnostics.get("predicted_sigma", {}).get(name, float("nan"))
                    ),
                    "update_norm": float(upd_norm[j]),
                    "truncation_error": float(err[j]),
                    "relative_truncation_error": float(err[j] / norm[j]) if float(norm[j]) > 0 else 0.0,
                }
    last = len(traj.headers) - 1
    for key, raw in traj.raw.items():
        x = traj.load_raw(key, device, indices=[last])[0]
        move = pred.raw_move(key, coef, device)
        if move is not None:
            x = x + move.reshape(x.shape)
        tensors[key] = _finite_output(x.to("cpu", raw.dtype), key, coef)
    return tensors, figures, _grow_overrides(traj) if options.rank_policy == "grow" else {}


def _check_prediction(
    L: torch.Tensor, R: torch.Tensor, names: list[str], method: str, coef: float | None = None
) -> None:
    """The predicted update of a chunk ``L (M, out, k)``, ``R (M, k, in)`` is finite, before any SVD of it."""
    bad = ~(torch.isfinite(L).flatten(1).all(1) & torch.isfinite(R).flatten(1).all(1))
    if bool(bad.any()):
        name = names[int(bad.nonzero()[0])]
        if coef is None:
            raise NonFiniteError(
                f"module {name}: the {method} prediction is not finite (Inf/NaN); the predictor diverged: lower "
                "--lr, or use --method linear"
            )
        raise NonFiniteError(
            f"module {name}: the update times coefficient {coef:g} overflows float32; use a smaller --coef"
        )


def _finite_output(tensor: torch.Tensor, name: str, coef: float) -> torch.Tensor:
    """``tensor`` as it will be written, or :class:`NonFiniteError` when it overflowed its dtype."""
    if not bool(torch.isfinite(tensor).all()):
        dtype = str(tensor.dtype).replace("torch.", "")
        raise NonFiniteError(
            f"module {name}: the extrapolated weights at coefficient {coef:g} overflow {dtype} (Inf/NaN); "
            "use a smaller --coef"
        )
    return tensor


def _grow_overrides(traj: Trajectory) -> dict[str, Any]:
    """Config for rank r + 1 at unchanged scaling (PEFT: alpha = s r, or s sqrt(r) with rsLoRA)."""
    cfg = traj.config
    root = math.sqrt if cfg.use_rslora else float

    def alpha(scaling: float, rank: int) -> float:
        return scaling * root(rank)

    overrides: dict[str, Any] = {"r": cfg.r + 1, "lora_alpha": alpha(cfg.lora_alpha / root(cfg.r), cfg.r + 1)}
    if cfg.rank_pattern or cfg.alpha_pattern:
        # Per-module ranks: spell every module out so that no pattern can match the wrong one.
        mods = traj.modules.values()
        overrides["rank_pattern"] = {re.escape(m.name): m.rank + 1 for m in mods}
        overrides["alpha_pattern"] = {re.escape(m.name): alpha(m.scaling, m.rank + 1) for m in mods}
    return overrides


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.dtype):
        return str(obj).replace("torch.", "")
    if isinstance(obj, torch.device):
        return str(obj)
    raise TypeError(f"not JSON-serializable: {type(obj).__name__}")


def _report(
    traj: Trajectory,
    options: ExtrapolateOptions,
    method: str,
    evidence: dict[str, Any] | None,
    prediction: Prediction,
    horizon: int,
    horizon_steps: int,
    outputs: list[dict[str, Any]],
    notes: list[str],
    device: torch.device,
    seconds: float,
) -> dict[str, Any]:
    inputs = []
    for ref in traj.refs:
        item = {
            "step": ref.step,
            "path": str(ref.path),
            "weights": str(ref.weights),
            "step_source": ref.step_source,
        }
        if options.hash_inputs:
            item["sha256"] = _sha256(ref.weights)
        inputs.append(item)
    # per-module figures are in the outputs; keep the report's predictor section readable
    diagnostics = {k: v for k, v in prediction.diagnostics.items() if k not in ("predicted_sigma", "line_r2")}
    report = {
        "nextrap_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": {"root": traj.discovery.root, "layout": traj.discovery.layout, "checkpoints": inputs},
        "options": options.to_dict(),
        "device": str(device),
        "method": method,
        "horizon": {
            "intervals": horizon,
            "steps": horizon_steps,
            "requested": options.horizon,
            "training_pairs": len(traj.headers) - horizon,
        },
        "last_step": traj.steps[-1],
        "spacing": traj.spacing(),
        "predictor": diagnostics,
        "outputs": outputs,
        "notes": notes,
        "seconds": round(seconds, 3),
    }
    if evidence is not None:
        report["backtest"] = evidence
    return report
