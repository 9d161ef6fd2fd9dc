"""The pipeline: checkpoints -> features -> prediction -> extrapolated adapters + ``nextrap.json``.

``extrapolate()`` is what ``nextrap extrapolate`` runs: open and check the run, plan the horizon and
targets, choose the method (``auto`` backtests the run), predict, then hand each adapter to the one
writer the :class:`~nextrap.output.writers.OutputOptions` chose, and save the :class:`~nextrap.formats.report.Report`.
Everything that can fail on bad input (discovery, headers, options, the output path) is checked before
the expensive work, and all files are written into a temporary folder that is renamed into place at
the end, so a failure leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from nextrap.errors import ConfigError, LayoutError, NonFiniteError
from nextrap.formats.report import REPORT_NAME, OutputEntry, Report
from nextrap.layouts import MAX_STEP, Discovery
from nextrap.linalg import lowrank
from nextrap.linalg.combinations import StackedUpdates
from nextrap.ops.backtest import BacktestOptions, BacktestResult, backtest
from nextrap.ops.options import ExtrapolateOptions
from nextrap.output.atomic import atomic_directory, check_output, output_lock
from nextrap.output.writers import NewAdapter, OutputOptions, OutputWriter, writer_for
from nextrap.predictors import METHODS, Prediction, make_predictor
from nextrap.predictors.relex import RelexPredictor
from nextrap.run.adapters import torch_dtype
from nextrap.run.open import open_run, resolve_horizon
from nextrap.run.trajectory import SharedFeatures, Trajectory
from nextrap.util.devices import resolve_device
from nextrap.util.progress import Progress, progress_bar
from nextrap.version import __version__

__all__ = [
    "REPORT_NAME",
    "ExtrapolateOptions",
    "ExtrapolationResult",
    "OutputOptions",
    "extrapolate",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtrapolationResult:
    """What :func:`extrapolate` produced: the output folder and its report (``report.outputs``, one per adapter).

    ``prediction`` is the predicted update per horizon (factored, float32), for callers who want to
    score or reuse it.
    """

    output: Path
    report: Report
    prediction: Prediction | None = field(default=None, repr=False)

    @property
    def adapters(self) -> dict[float, Path]:
        """Coefficient -> the folder of its adapter (the TRL checkpoint folder with ``format="trl"``)."""
        return {entry.coef: self.report.path_of(entry) for entry in self.report.outputs}

    @property
    def report_path(self) -> Path:
        """``output/nextrap.json``."""
        return self.output / REPORT_NAME


@dataclass
class _Plan:
    """What the run and the options decide before any prediction: horizon, targets, notes for the report."""

    horizon: int
    horizon_steps: int
    targets: list[tuple[float, int | None]]
    notes: list[str]
    config_overrides: dict[str, Any]  # adapter_config fields every output changes (rank and alpha with grow)


def extrapolate(
    run: str | os.PathLike | Discovery | Trajectory | None,
    output: str | os.PathLike,
    options: ExtrapolateOptions | None = None,
    write: OutputOptions | None = None,
    *,
    checkpoints: Sequence[str | os.PathLike] | None = None,
    steps: Sequence[int] | None = None,
    adapter_name: str | None = None,
    progress: bool | Progress = False,
) -> ExtrapolationResult:
    """Predict where the run goes next and write one adapter per coefficient.

    With one coefficient the adapter is written to ``output`` itself; with several, to
    ``output/coef-<c>/`` (``step-<N>/`` for target steps). ``output/nextrap.json`` is the report.
    Everything that can fail on bad input is checked before the expensive work; the output appears
    complete or not at all.

    Args:
        run: a run folder (any trainer's layout), a :class:`Discovery`, an opened :class:`Trajectory`,
            or None with ``checkpoints``.
        output: the folder to write; it must not exist (``write.overwrite`` replaces it) and must not
            be, contain or lie inside any input.
        options: what to compute (method, coefficients or target steps, horizon, predictor settings);
            default :class:`ExtrapolateOptions` (``linear``, c = 1).
        write: how to write it (PEFT adapter, TRL checkpoint or merged weights; overwrite); default
            :class:`OutputOptions`.
        checkpoints: adapter folders named one by one, instead of ``run``; ``steps`` gives their steps
            (default: from each folder's ``trainer_state.json`` or name).
        adapter_name: read adapters saved under this name (``<checkpoint>/<name>/``).
        progress: True for progress bars on stderr, or a :data:`~nextrap.util.progress.Progress` wrapper.

    Returns:
        An :class:`ExtrapolationResult`: ``output``, ``report`` (the :class:`Report` saved as
        ``nextrap.json``, one :class:`OutputEntry` per adapter with its virtual step), ``adapters``
        (coefficient -> folder) and the ``prediction``.

    Raises:
        NextrapError: one subclass per kind of bad input (no checkpoints, mismatched runs, NaN/Inf, an
        existing or unsafe output...), each a one-line message naming the file or step; nothing is
        written.
    """
    options, write = options or ExtrapolateOptions(), write or OutputOptions()
    if not isinstance(options, ExtrapolateOptions) or not isinstance(write, OutputOptions):
        raise ConfigError(
            f"extrapolate: options must be an ExtrapolateOptions and write an OutputOptions, got "
            f"{type(options).__name__} and {type(write).__name__}"
        )
    _check_combination(options, write)
    writer = writer_for(write)
    wrap = progress if callable(progress) else progress_bar(bool(progress))
    started = time.perf_counter()
    traj = open_run(run, checkpoints, steps, adapter_name, verify=False)
    device = resolve_device(options.device)
    if write.format == "trl":
        _check_outside_run(Path(output), traj)  # first: its message names the rotation hazard
    inputs = [*traj.discovery.input_paths, *write.input_paths()]
    output = check_output(output, write.overwrite, inputs)
    writer.check(traj)  # e.g. a base model to merge onto that lacks the run's layers: before the work
    # Held from here to the rename, so a second writer of the same output fails now, not after the work.
    with output_lock(output):
        traj = open_run(traj, force=options.force, chunk_bytes=options.chunk_bytes, progress=wrap, device=device)
        plan = _plan(traj, options)
        method, evidence = _choose_method(traj, options, device, wrap, plan.notes)
        features = SharedFeatures(traj, plan.horizon, device, options.chunk_bytes, wrap)
        predictor = make_predictor(method, options.predictor, options.chunk_bytes, options.relex)
        if isinstance(predictor, RelexPredictor) and options.rank_policy == "keep":
            # fitted chunk by chunk as the adapter is written, from the write's own Gram products
            prediction = predictor.deferred(traj, plan.horizon, device)
        else:
            prediction = predictor.predict(traj, plan.horizon, features, device, wrap)
        features.release()  # large on big models; not needed past this point
        plan.notes.extend(_frozen_notes(traj, prediction))
        with atomic_directory(output, write.overwrite, inputs) as tmp:
            entries = [
                _write_output(tmp, traj, prediction, plan, target, options, writer, device)
                for target in wrap(plan.targets, "writing adapters")
            ]
            report = _report(traj, options, write, method, evidence, prediction, plan, entries, device, started, adapter_name)
            report.save(tmp)
    report.folder = output
    return ExtrapolationResult(output=output, report=report, prediction=prediction)


def _check_combination(options: ExtrapolateOptions, write: OutputOptions) -> None:
    if write.format == "trl" and options.rank_policy == "grow":
        raise ConfigError(
            "--format trl resumes the run's own adapter: it cannot be combined with --rank-policy grow "
            "(TRL reloads weights into the same rank and keys)"
        )
    write.check_base_model()


def _plan(traj: Trajectory, options: ExtrapolateOptions) -> _Plan:
    horizon, horizon_note = resolve_horizon(len(traj.headers), options.horizon)
    notes = list(traj.discovery.notes) + list(traj.notes) + ([horizon_note] if horizon_note else [])
    spacing = traj.spacing()
    if spacing["spread"] > 0.1:
        notes.append(
            f"checkpoints are unevenly spaced (intervals vary by {spacing['spread']:.0%} of the median): pairs are "
            "formed by checkpoint index, so horizons span different numbers of steps; the virtual step uses the "
            "steps actually spanned by the last horizon"
        )
    for coef in options.coefs:
        if coef <= 0:
            where = "the last checkpoint unchanged" if coef == 0 else "a step backwards along the run"
            notes.append(f"coefficient {coef:g} writes {where} (extrapolation uses c > 0)")
    horizon_steps = traj.steps[-1] - traj.steps[-1 - horizon]
    targets = options.resolve_coefs(traj.steps[-1], horizon_steps)  # bad --to-step fails before the work
    for target in targets:
        _check_jump(traj, target, horizon_steps)
    notes.extend(_far_notes(traj, targets, horizon_steps))
    if options.method in ("relex", "relex-anchored", "auto") and options.relex.rank > len(traj.headers):
        notes.append(
            f"--relex-rank {options.relex.rank} is more than the run's {len(traj.headers)} checkpoints: RELEX keeps "
            f"{len(traj.headers)} temporal components (all there are)"
        )
    overrides = {}
    if options.rank_policy == "grow":
        overrides = traj.config.grown({m.name: (m.rank, m.scaling) for m in traj.modules.values()})
    return _Plan(horizon, horizon_steps, targets, notes, overrides)


def _choose_method(
    traj: Trajectory, options: ExtrapolateOptions, device: torch.device, wrap: Progress, notes: list[str]
) -> tuple[str, dict[str, Any] | None]:
    if options.method != "auto":
        return options.method, None
    return _auto_method(traj, options, device, wrap, notes)


def _frozen_notes(traj: Trajectory, prediction: Prediction) -> list[str]:
    moved = prediction.vectors.keys() | prediction.matrices.keys() | prediction.offsets.keys()
    frozen = [k for k in traj.raw if k not in moved]
    if not frozen:
        return []
    return [f"{len(frozen)} saved tensor(s) never change along the run (e.g. {frozen[0]}): copied unchanged"]


def _write_output(
    tmp: Path,
    traj: Trajectory,
    prediction: Prediction,
    plan: _Plan,
    target: tuple[float, int | None],
    options: ExtrapolateOptions,
    writer: OutputWriter,
    device: torch.device,
) -> OutputEntry:
    """Compute and write the adapter for one coefficient (in ``tmp``, or its subfolder with several)."""
    coef, to_step = target
    sub = tmp if len(plan.targets) == 1 else tmp / (f"step-{to_step}" if to_step is not None else f"coef-{coef}")
    sub.mkdir(exist_ok=True)
    tensors, modules = _extended_tensors(traj, prediction, coef, options, device)
    virtual_step = traj.steps[-1] + coef * plan.horizon_steps
    adapter = NewAdapter(tensors, traj.config, plan.config_overrides, virtual_step, traj.refs[-1])
    written, notes = writer.write(sub, adapter)
    plan.notes.extend(notes)
    return OutputEntry(
        coef=coef,
        path=str(written.relative_to(tmp)),
        virtual_step=virtual_step,
        format=writer.kind,
        requested_step=to_step,
        jump_over_observed_span=_span_ratio(traj, coef * plan.horizon_steps),
        rank=_rank_summary(traj, options.rank_policy),
        max_relative_truncation_error=max((m["relative_truncation_error"] for m in modules.values()), default=0.0),
        modules=modules,
    )


def _auto_method(
    traj: Trajectory, options: ExtrapolateOptions, device: torch.device, wrap: Progress, notes: list[str]
) -> tuple[str, dict[str, Any]]:
    """``--method auto``: backtest the run's own checkpoints and take the recommended method."""
    bt_options = BacktestOptions(
        horizon=options.horizon,
        predictor=options.predictor,
        chunk_bytes=options.chunk_bytes,
        relex=options.relex,
    )
    try:
        result = backtest(traj, bt_options, device, wrap)
    except LayoutError as exc:
        # A short run may hold out one horizon and leave too few checkpoints to fit that horizon on
        # (6 checkpoints, horizon 3): the longest horizon that fits is still evidence, so use it and say so.
        result = _shorter_horizon_backtest(traj, bt_options, device, wrap)
        if result is None:
            raise ConfigError(
                f"--method auto could not backtest this run ({exc}); choose one of --method {', '.join(METHODS)}"
            ) from exc
        notes.append(
            f"method auto: the backtest ran at horizon {result.horizon} (holding out {len(result.heldout_steps)} "
            f"checkpoint(s)): at horizon {options.horizon} the {len(traj.headers)} checkpoints leave too few to fit on"
        )
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


def _shorter_horizon_backtest(
    traj: Trajectory, bt_options: BacktestOptions, device: torch.device, wrap: Progress
) -> BacktestResult | None:
    """``auto``'s backtest at the longest horizon below the requested one that the run allows, or None."""
    for horizon in range((bt_options.horizon or 1) - 1, 0, -1):
        try:
            return backtest(traj, replace(bt_options, horizon=horizon), device, wrap)
        except LayoutError:
            continue
    return None


def _check_outside_run(output: Path, traj: Trajectory) -> None:
    """TRL's checkpoint rotation deletes ``checkpoint-*`` folders of its output dir by age: stay out of it."""
    out = output.resolve()
    for folder in {ref.path.resolve().parent for ref in traj.refs}:
        if out == folder or folder in out.parents:
            raise ConfigError(
                f"{output}: inside the run's folder {folder}; --format trl output must go elsewhere, or the "
                "trainer's checkpoint rotation may delete it (it removes old checkpoint-* folders)"
            )


def _rank_summary(traj: Trajectory, policy: str) -> int | list[int]:
    ranks = sorted({m.rank + (policy == "grow") for m in traj.modules.values()})
    return ranks[0] if len(ranks) == 1 else ranks


def _span_ratio(traj: Trajectory, jump_steps: float) -> float | None:
    """The jump's length over the steps the checkpoints span (None when they span none)."""
    span = traj.steps[-1] - traj.steps[0]
    return jump_steps / span if span > 0 else None


# The longest jump nextrap makes, in observed spans: RELEX, the farthest-reaching method published, jumps
# 7-20x; a thousand times is no extrapolation any more, only a number that overflows or misleads.
MAX_JUMP_SPANS = 1000


def _check_jump(traj: Trajectory, target: tuple[float, int | None], horizon_steps: int) -> None:
    """Refuse, before the work, a jump that lands outside the steps a run can have, or absurdly far ahead."""
    coef, to_step = target
    asked = f"--to-step {to_step}" if to_step is not None else f"--coef {coef:g}"
    virtual = traj.steps[-1] + coef * horizon_steps
    ratio = _span_ratio(traj, coef * horizon_steps)
    if ratio is not None and abs(ratio) > MAX_JUMP_SPANS:
        raise ConfigError(
            f"{asked}: jumps {coef * horizon_steps:g} steps, {abs(ratio):.3g}x the observed span (steps "
            f"{traj.steps[0]}..{traj.steps[-1]}); nextrap jumps at most {MAX_JUMP_SPANS}x it: use a smaller --coef "
            "or an earlier --to-step"
        )
    if not 0 <= virtual <= MAX_STEP:
        raise ConfigError(
            f"{asked}: lands at step {virtual:g}, outside the steps a run can have [0, {MAX_STEP}]; use a smaller "
            "--coef or an earlier --to-step"
        )


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
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, float]]]:
    """The new adapter's tensors (the run's keys and dtypes) and per-module figures."""
    tensors: dict[str, torch.Tensor] = {}
    figures: dict[str, dict[str, float]] = {}
    sigmas = pred.diagnostics.get("predicted_sigma", {})
    # The new update's factors have r + k columns (k: the move's inner size) and the SVD holds a few
    # copies of them: size the chunks as that many rank-r checkpoints.
    widest = max((pred.inner_size(m.name, m.rank) / m.rank for m in traj.modules.values()), default=0.0)
    last = len(traj.headers) - 1
    # Each chunk is read once: the checkpoints the prediction combines and the last one, unscaled.
    rows = pred.reads(last, plus_last=True) if pred.combinations or pred.deferred else [last]
    chunks = traj.module_chunks(math.ceil(4 * (1 + widest)), options.chunk_bytes)
    for chunk, B, A in traj.iter_factors(chunks, device, rows, scaled=False):
        new = _new_factors(traj, pred, chunk, _Read(B, A, rows, last), coef, options.rank_policy, device)
        for j, name in enumerate(chunk):
            mod = traj.modules[name]
            tensors[mod.b_key] = _finite_output(new.B[j].to("cpu", torch_dtype(mod.dtype)), name, coef)
            tensors[mod.a_key] = _finite_output(new.A[j].to("cpu", torch_dtype(mod.dtype)), name, coef)
            err, norm = float(new.error[j]), float(new.norm[j])
            figures[name] = {
                "predicted_sigma": float(sigmas[name]) if name in sigmas else None,  # NExt's methods only
                "update_norm": float(new.update_norm[j]),
                "truncation_error": err,
                "relative_truncation_error": err / norm if norm > 0 else 0.0,
            }
    for key, raw in traj.raw.items():
        x = traj.load_raw(key, device, indices=[last])[0]
        move = pred.raw_move(key, coef, device)
        if move is not None:
            x = x + move.reshape(x.shape)
        tensors[key] = _finite_output(x.to("cpu", torch_dtype(raw.dtype)), key, coef)
    return tensors, figures


class _NewFactors(NamedTuple):
    """Per chunk of M modules: ``B (M, out, r')``, ``A (M, r', in)``; ``error``, ``norm``, ``update_norm`` ``(M,)``."""

    B: torch.Tensor
    A: torch.Tensor
    error: torch.Tensor  # Frobenius norm of what the rank-r refactoring cut off
    norm: torch.Tensor  # of the new update
    update_norm: torch.Tensor  # of the move itself


class _Read(NamedTuple):
    """A chunk's factors as read: ``B (M, T, out, r)`` unscaled, ``A (M, T, r, in)`` at checkpoints ``rows``."""

    B: torch.Tensor
    A: torch.Tensor
    rows: list[int]
    last: int


def _new_factors(
    traj: Trajectory,
    pred: Prediction,
    chunk: list[str],
    read: _Read,
    coef: float,
    rank_policy: str,
    device: torch.device,
) -> _NewFactors:
    """The new ``B, A`` of one chunk of equal-shape modules, what was cut off, and the move's norm."""
    at = read.rows.index(read.last)
    B, A = read.B[:, at], read.A[:, at]
    scaling = torch.tensor([traj.modules[n].scaling for n in chunk], device=device).view(-1, 1, 1)
    scaled = read.B * scaling.unsqueeze(1)

    def move(offset: float, direction: float, plus_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return pred.factors_from(chunk, scaled, read.A, read.rows, read.last, device, offset, direction, plus_last)

    rank = traj.modules[chunk[0]].rank
    if rank_policy == "keep" and pred.combines(chunk[0]) and chunk[0] not in pred.matrices:
        # A weighted sum of the run's own updates (linear, RELEX): one pair of Gram products serves the
        # move's norm and the new update's SVD (nextrap.linalg.combinations), and a deferred fit (RELEX).
        stack = StackedUpdates(scaled, read.A, anchor=at)
        if chunk[0] not in pred.combinations:
            assert pred.deferred is not None
            pred.deferred(chunk, stack, read.rows)
        w_move = pred.weights(chunk, read.rows, 1.0, coef)
        _check_weights(w_move, scaled, chunk, pred.method, coef, pred.weights(chunk, read.rows))
        w_new = w_move.clone()
        w_new[:, at] += 1.0
        svd = stack.truncated_svd(w_new, rank) or lowrank.factored_svd(*move(1.0, coef, plus_last=True))
        new = lowrank.refactor_svd(svd, rank, scaling, B, A)
        return _NewFactors(new.B, new.A, new.error, new.norm, stack.norm(w_move).float())
    Lp, Rp = move(1.0, coef)  # the move, offset + c * direction
    try:
        _check_prediction(Lp, Rp, chunk, pred.method, coef)
    except NonFiniteError:  # say which: the predictor itself diverged, or the coefficient overflowed
        _check_prediction(*move(1.0, 1.0), chunk, pred.method)
        raise
    update_norm = lowrank.frobenius_norm(Lp, Rp)
    if rank_policy == "keep":
        Ln, Rn = move(1.0, coef, plus_last=True)
        new = lowrank.refactor_to_rank(Ln, Rn, rank, scaling, B, A)
        return _NewFactors(new.B, new.A, new.error, new.norm, update_norm)
    top = lowrank.factored_svd(Lp, Rp)  # grow keeps the update's rank-1 part exactly
    root = (top.S[:, :1].sqrt().unsqueeze(-2)) / scaling.sqrt()
    B_new = torch.cat([B, top.U[..., :1] * root], -1)
    A_new = torch.cat([A, root.transpose(-1, -2) * top.Vh[..., :1, :]], -2)
    error = top.S[:, 1:].square().sum(-1).sqrt()
    norm = lowrank.frobenius_norm(scaling * B_new, A_new)
    return _NewFactors(B_new, A_new, error, norm, update_norm)


def _check_prediction(
    L: torch.Tensor, R: torch.Tensor, names: list[str], method: str, coef: float | None = None
) -> None:
    """The predicted update of a chunk ``L (M, out, k)``, ``R (M, k, in)`` is finite, before any SVD of it."""
    bad = ~(torch.isfinite(L).flatten(1).all(1) & torch.isfinite(R).flatten(1).all(1))
    if bool(bad.any()):
        raise _non_finite(names[int(bad.nonzero()[0])], method, coef)


def _check_weights(
    w: torch.Tensor, B: torch.Tensor, names: list[str], method: str, coef: float, w_one: torch.Tensor
) -> None:
    """As :func:`_check_prediction` for a move given as weights ``w (M, T)`` over the factors ``B (M, T, out, r)``:
    the weighted factors ``w_t B_t`` must be finite in float32 (``w_one``: the weights at coefficient 1, to
    tell a diverged predictor from an overflowing coefficient)."""
    amax = B.abs().amax((-1, -2)).double().cpu()
    limit = torch.finfo(torch.float32).max
    for weights, c in ((w_one, None), (w, coef)):
        bound = weights.abs() * amax
        bad = ~(torch.isfinite(bound) & (bound <= limit)).all(1)
        if bool(bad.any()):
            raise _non_finite(names[int(bad.nonzero()[0])], method, c)


def _non_finite(name: str, method: str, coef: float | None) -> NonFiniteError:
    """The error for module ``name``'s move: the predictor diverged (``coef`` None), or the coefficient overflowed."""
    if coef is None:
        return NonFiniteError(
            f"module {name}: the {method} prediction is not finite (Inf/NaN); the predictor diverged: lower "
            "--lr, or use --method linear"
        )
    return NonFiniteError(f"module {name}: the update times coefficient {coef:g} overflows float32; use a smaller --coef")


def _finite_output(tensor: torch.Tensor, name: str, coef: float) -> torch.Tensor:
    """``tensor`` as it will be written, or :class:`NonFiniteError` when it overflowed its dtype."""
    if not bool(torch.isfinite(tensor).all()):
        dtype = str(tensor.dtype).replace("torch.", "")
        raise NonFiniteError(
            f"module {name}: the extrapolated weights at coefficient {coef:g} overflow {dtype} (Inf/NaN); "
            "use a smaller --coef"
        )
    return tensor


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _report(
    traj: Trajectory,
    options: ExtrapolateOptions,
    write: OutputOptions,
    method: str,
    evidence: dict[str, Any] | None,
    prediction: Prediction,
    plan: _Plan,
    outputs: list[OutputEntry],
    device: torch.device,
    started: float,
    adapter_name: str | None = None,
) -> Report:
    inputs = []
    for ref in traj.refs:
        item = {"step": ref.step, "path": str(ref.path), "weights": str(ref.weights), "step_source": ref.step_source}
        if ref.shards:  # verl's rank shards: every file the tensors came from
            item["shards"] = [{"path": str(p), **({"sha256": _sha256(p)} if write.hash_inputs else {})} for p in ref.shards]
        elif write.hash_inputs:
            item["sha256"] = _sha256(ref.weights)
        inputs.append(item)
    # per-module figures are in the outputs; keep the report's predictor section readable
    diagnostics = {k: v for k, v in prediction.diagnostics.items() if k not in ("predicted_sigma", "line_r2")}
    return Report(
        nextrap_version=__version__,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        inputs={
            "root": str(traj.discovery.root),
            "layout": traj.discovery.layout,
            "adapter_name": adapter_name,
            "checkpoints": inputs,
        },
        options={**options.to_dict(), **asdict(write)},
        device=str(device),
        method=method,
        horizon={
            "intervals": plan.horizon,
            "steps": plan.horizon_steps,
            "requested": options.horizon,
            "training_pairs": len(traj.headers) - plan.horizon,
        },
        last_step=traj.steps[-1],
        spacing=traj.spacing(),
        predictor=diagnostics,
        outputs=outputs,
        notes=plan.notes,
        seconds=round(time.perf_counter() - started, 3),
        backtest=evidence,
    )
