"""An ordered set of LoRA checkpoints of one run, checked for consistency, and the rank-1 features of it.

:class:`Trajectory` is the run's headers (:class:`~nextrap.run.scan.RunHeaders`, no torch) with the
tensor side: tensors are read lazily, a chunk of equally shaped modules at a time across all checkpoints,
so the memory needed is bounded by ``chunk_bytes`` whatever the model size. :func:`compute_features`
turns the trajectory into rank-1 triplets of the global, local and target deltas (docs/method.md),
computed in factored form on the chosen device.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch

from nextrap.errors import MismatchError
from nextrap.layouts import CheckpointRef, Discovery
from nextrap.linalg import lowrank
from nextrap.run.adapters import ReaderPool, check_finite_tensor, torch_dtype
from nextrap.run.headers import LoraModule
from nextrap.run.scan import RunHeaders, read_run_headers
from nextrap.util.memory import DEFAULT_CHUNK_BYTES, chunk_limit
from nextrap.util.progress import Progress, no_progress

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "JUMP_FACTOR",
    "Features",
    "MatrixFeatures",
    "RunCheck",
    "SharedFeatures",
    "Trajectory",
    "VectorFeatures",
    "check_run",
    "compute_features",
    "load_trajectory",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trajectory(RunHeaders):
    """Checkpoints of one run (sorted by step) whose module sets, ranks, shapes and scalings agree, with
    their tensors read on demand; :attr:`check` is set once :func:`check_run` has read every tensor.

    ``readers`` keeps one open reader per checkpoint for every pass over the run (shared with the
    trajectory's prefixes and checked copies): opened on first use, closed with the trajectory.
    """

    check: RunCheck | None = None  # set by check_run: every tensor read, finite, updates continuous
    readers: ReaderPool = field(default_factory=ReaderPool, compare=False, repr=False)

    def load_factors(
        self,
        names: Sequence[str],
        device: torch.device,
        indices: Sequence[int] | None = None,
        scaled: bool = True,
        check_finite: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Factors of ``names`` (equal shapes) at the checkpoints ``indices`` (default all), float32.

        Returns ``B (M, K, out, r)`` (times the module's scaling when ``scaled``) and ``A (M, K, r, in)``
        on ``device``. NaN/Inf raise :class:`CheckpointError` naming the tensor and step; the check is
        skipped once :func:`check_run` has checked every tensor (``check_finite`` forces it either way).
        """
        staged = self._stage(names, indices, check_finite, device.type == "cuda", scaled)
        return staged.to(device)

    def iter_factors(
        self,
        chunks: Sequence[Sequence[str]],
        device: torch.device,
        indices: Sequence[int] | None = None,
        scaled: bool = True,
    ) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor]]:
        """``(names, B, A)`` for each chunk, as :meth:`load_factors` gives them, the next chunk read meanwhile.

        A reader thread fetches chunk i + 1 (``pread`` and the dtype conversion release the GIL) while
        the caller computes on chunk i, so reading and math overlap; at most two chunks are held. On
        CUDA the thread also copies the chunk to the device (pinned memory, its own stream).
        """
        if not chunks:
            return
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None

        def fetch(names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
            staged = self._stage(names, indices, None, stream is not None, scaled)
            return staged.to(device, stream)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="nextrap-reader") as pool:
            pending = pool.submit(fetch, chunks[0])
            try:
                for i, names in enumerate(chunks):
                    B, A = pending.result()
                    if i + 1 < len(chunks):
                        pending = pool.submit(fetch, chunks[i + 1])
                    if stream is not None:  # allocated on the reader's stream, used and freed on ours
                        B.record_stream(torch.cuda.current_stream(device))
                        A.record_stream(torch.cuda.current_stream(device))
                    yield list(names), B, A
            finally:
                pending.cancel()

    def _stage(
        self,
        names: Sequence[str],
        indices: Sequence[int] | None,
        check_finite: bool | None,
        pinned: bool,
        scaled: bool,
    ) -> _Staged:
        """Read the factors of ``names`` at ``indices``: float32 on the CPU, the stored dtype for a GPU.

        For the CPU each tensor is read (``pread``) into a small buffer, converted and scaled from there
        while it is still in cache: converting a whole chunk afterwards costs twice as much, memory-bound.
        """
        mods = [self.modules[n] for n in names]
        out_f, in_f, rank = mods[0].shape
        refs = self.refs if indices is None else [self.refs[i] for i in indices]
        dtypes = {m.dtype for m in mods}
        stored = torch_dtype(dtypes.pop()) if len(dtypes) == 1 else torch.float32
        pin = pinned and torch.cuda.is_available()
        stage = stored if pin else torch.float32  # a GPU gets half the bytes and converts them itself
        B = torch.empty(len(mods), len(refs), out_f, rank, dtype=stage, pin_memory=pin)
        A = torch.empty(len(mods), len(refs), rank, in_f, dtype=stage, pin_memory=pin)
        scaling = torch.tensor([m.scaling if scaled else 1.0 for m in mods], dtype=torch.float32)
        buffers = {}  # one small buffer per shape, reused
        for k, ref in enumerate(refs):
            reader = self.readers.reader(ref)
            for i, m in enumerate(mods):
                for key, dest in ((m.b_key, B[i, k]), (m.a_key, A[i, k])):
                    if stage == stored:
                        reader.read_into(key, dest)
                    else:
                        buf = buffers.get(dest.shape)
                        if buf is None:
                            buf = buffers[dest.shape] = torch.empty(dest.shape, dtype=stored)
                        reader.read_into(key, buf)
                        dest.copy_(buf)
                    if key == m.b_key and scaled and not pin:
                        dest.mul_(scaling[i])
        if check_finite if check_finite is not None else self.check is None:
            _check_finite(refs, mods, B, A)
        # On the CPU B is scaled already; a GPU scales it after the copy.
        return _Staged(B, A, scaling.view(-1, 1, 1, 1) if pin and scaled else None)

    def module_chunks(self, checkpoints: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[list[str]]:
        """Module names in chunks of equal shape whose factors at ``checkpoints`` checkpoints fit ``chunk_bytes``.

        Load each chunk with :meth:`load_factors` (or :meth:`iter_factors`) as it is used, so at most one
        chunk (two with the reader thread) is in memory. ``chunk_bytes`` is capped for small runs
        (:func:`nextrap.util.memory.chunk_limit`).
        """
        groups = self.shape_groups()
        module_bytes = {(o, i, r): (o + i) * r * 4 for o, i, r in groups}  # one checkpoint's factors, float32
        limit = chunk_limit(chunk_bytes, sum(module_bytes[shape] * len(names) for shape, names in groups.items()))
        chunks: list[list[str]] = []
        for shape, names in groups.items():
            chunks.extend(_chunks(names, module_bytes[shape] * checkpoints, limit))
        return chunks

    def load_raw(self, key: str, device: torch.device, indices: Sequence[int] | None = None) -> torch.Tensor:
        """One raw tensor at the checkpoints ``indices`` (default all): ``(K, *shape)`` float32 on ``device``."""
        refs = self.refs if indices is None else [self.refs[i] for i in indices]
        check = self.check is None
        out = [self.readers.reader(ref).get(key, check_finite=check) for ref in refs]
        return torch.stack(out).to(device)


class _Staged(NamedTuple):
    """A chunk's factors as read, ``B (M, K, out, r)``, ``A (M, K, r, in)``, and the scalings ``(M, 1, 1, 1)``
    still to apply to ``B`` (None: applied already, or not wanted)."""

    B: torch.Tensor
    A: torch.Tensor
    scaling: torch.Tensor | None

    def to(self, device: torch.device, stream: torch.cuda.Stream | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 on ``device``, scaled.

        On CUDA the stored (half-size) bytes are copied from pinned memory and converted there; with
        ``stream`` the copy runs on it and is waited for (the caller's thread then owns finished tensors).
        """
        if device.type != "cuda":
            return self.B.to(device), self.A.to(device)
        context = torch.cuda.stream(stream) if stream is not None else nullcontext()
        with context:
            B = self.B.to(device, non_blocking=True).float()
            if self.scaling is not None:
                B = B.mul_(self.scaling.to(device))
            A = self.A.to(device, non_blocking=True).float()
        if stream is not None:
            stream.synchronize()
        return B, A


def _check_finite(refs: Sequence[CheckpointRef], mods: Sequence[LoraModule], B: torch.Tensor, A: torch.Tensor) -> None:
    """Raise for the first NaN/Inf tensor of a staged chunk; one reduction per chunk when all is finite.

    A sum is NaN/Inf whenever a term is, so a finite sum clears the whole chunk; a non-finite one (or an
    overflow of finite terms) sends the check tensor by tensor, which names the culprit or clears it.
    """
    for X, key in ((B, "b_key"), (A, "a_key")):
        if bool(torch.isfinite(X.sum(dtype=torch.float32))):
            continue
        for k, ref in enumerate(refs):
            for i, m in enumerate(mods):
                check_finite_tensor(ref, getattr(m, key), X[i, k])


def load_trajectory(discovery: Discovery) -> Trajectory:
    """Read every checkpoint's header and check that they describe one run; no tensor data is read."""
    run = read_run_headers(discovery)
    return Trajectory(discovery=run.discovery, headers=run.headers, notes=run.notes)


# --------------------------------------------------------------------------------------------- features


@dataclass(frozen=True)
class MatrixFeatures:
    """Rank-1 triplets of one matrix-shaped parameter along the run.

    ``global_`` and ``local`` have one row per checkpoint (``u (K, out)``, ``s (K,)``, ``v (K, in)``);
    ``target`` has one row per training pair (checkpoint k with k + horizon <= K).
    """

    global_: lowrank.Triplets
    local: lowrank.Triplets
    target: lowrank.Triplets


@dataclass(frozen=True)
class VectorFeatures:
    """Raw differences of a 1-D trainable tensor: ``global_``/``local`` ``(K, d)``, ``target (K - h, d)``.

    The start of a raw tensor is unknown (it is not zero like LoRA's B), so its global delta is taken
    from the first checkpoint.
    """

    global_: torch.Tensor
    local: torch.Tensor
    target: torch.Tensor


@dataclass(frozen=True)
class Features:
    """Features of a whole trajectory, on the device they were computed on (float32)."""

    steps: tuple[int, ...]
    horizon: int
    matrices: dict[str, MatrixFeatures] = field(default_factory=dict)
    vectors: dict[str, VectorFeatures] = field(default_factory=dict)
    frozen: list[str] = field(default_factory=list)

    @property
    def pairs(self) -> int:
        return len(self.steps) - self.horizon


class SharedFeatures:
    """The run's rank-1 features at one horizon, computed on first use and shared by every method after.

    The pipeline hands one to each predictor; only methods that need features (NExt) call :meth:`get`,
    so a run predicted with ``linear`` or ``relex`` never pays for them, and a backtest of several
    methods computes them once.
    """

    def __init__(
        self,
        traj: Trajectory,
        horizon: int,
        device: torch.device,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        progress: Progress = no_progress,
    ) -> None:
        self.traj, self.horizon, self.device = traj, horizon, device
        self.chunk_bytes, self.progress = chunk_bytes, progress
        self._features: Features | None = None
        # What several methods derive from the same features, computed once: NExt's prediction (keyed by
        # its settings), which next+linear reuses in a backtest of both.
        self.derived: dict = {}

    @property
    def computed(self) -> bool:
        return self._features is not None

    def get(self) -> Features:
        if self._features is None:
            self._features = compute_features(self.traj, self.horizon, self.device, self.chunk_bytes, self.progress)
        return self._features

    def release(self) -> None:
        """Drop the features (large on big models) once no method needs them."""
        self._features = None
        self.derived.clear()


def _chunks(names: list[str], per_module_bytes: int, chunk_bytes: int) -> Iterator[list[str]]:
    size = max(1, chunk_bytes // max(1, per_module_bytes))
    for i in range(0, len(names), size):
        yield names[i : i + size]


def compute_features(
    traj: Trajectory,
    horizon: int,
    device: torch.device,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Progress = no_progress,
) -> Features:
    """Global, local and target rank-1 features of every module (docs/method.md, "Rank-1 features").

    Args:
        traj: the run.
        horizon: in checkpoint intervals; targets are ``dW[k + horizon] - dW[k]``.
        device: where the math runs.
        chunk_bytes: upper bound on the factor bytes held at once (one chunk of equal-shape modules
            across all checkpoints).
        progress: wraps an iterable to show progress (identity by default: the library is silent).
    """
    K = len(traj.headers)
    if not 1 <= horizon < K:
        raise ValueError(f"horizon must be in [1, {K - 1}] for {K} checkpoints, got {horizon}")
    feats = Features(steps=traj.steps, horizon=horizon)
    chunks = traj.module_chunks(K, chunk_bytes)
    bar = progress(range(len(chunks) + len(traj.raw)), "rank-1 features")
    ticks = iter(bar)
    for names, B, A in traj.iter_factors(chunks, device):
        next(ticks, None)
        for name, f in zip(names, _lora_features(B, A, horizon), strict=True):
            feats.matrices[name] = f
    for key in traj.raw:
        next(ticks, None)
        X = traj.load_raw(key, device)
        if bool((X[:1] == X).all()):
            # Saved but never trained (PEFT saves embedding base weights along): nothing to predict.
            feats.frozen.append(key)
        elif X.dim() == 2:  # (K, d): a vector parameter
            feats.vectors[key] = VectorFeatures(
                global_=X - X[:1],
                local=torch.cat([torch.zeros_like(X[:1]), X[1:] - X[:-1]]),
                target=X[horizon:] - X[:-horizon],
            )
        else:
            feats.matrices[key] = _dense_features(X.reshape(K, X.shape[1], -1), horizon)
    for _ in ticks:  # let the bar finish
        pass
    return feats


# Upper bound on the factor bytes one batched top_triplet call works on: the differences, Gram
# products and lifted vectors are a few times its input, so this keeps transient memory small.
_PIECE_BYTES = 32 * 2**20


def _sequence(L: torch.Tensor, R: torch.Tensor) -> lowrank.Triplets:
    """Top triplets of ``L[:, k] @ R[:, k]`` for a ``(M, n, ...)`` stack, signs aligned along ``n``."""
    M, n = L.shape[:2]
    L, R = L.flatten(0, 1), R.flatten(0, 1)
    step = max(1, _PIECE_BYTES // ((L[0].numel() + R[0].numel()) * L.element_size()))
    pieces = [lowrank.top_triplet(L[i : i + step], R[i : i + step]) for i in range(0, L.shape[0], step)]
    u, s, v = (torch.cat([getattr(t, f) for t in pieces]).unflatten(0, (M, n)) for f in ("u", "s", "v"))
    return _align_along_time(u, s, v)


def _align_along_time(u: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> lowrank.Triplets:
    # The first row keeps top_triplet's canonical sign; each later row follows its predecessor.
    us, vs = [u[:, 0]], [v[:, 0]]
    for k in range(1, u.shape[1]):
        prev = lowrank.Triplets(u=us[-1], s=s[:, k - 1], v=vs[-1])
        cur = lowrank.align_signs(lowrank.Triplets(u=u[:, k], s=s[:, k], v=v[:, k]), prev)
        us.append(cur.u)
        vs.append(cur.v)
    return lowrank.Triplets(u=torch.stack(us, 1), s=s, v=torch.stack(vs, 1))


def _same_sign_as(glob: lowrank.Triplets, *others: lowrank.Triplets) -> list[lowrank.Triplets]:
    """Each of ``others`` (``(M, n, d)``, ``n`` no more than the global rows) flipped, row by row, to
    agree with the global triplet of the same module at the same checkpoint.

    Aligning every sequence only along its own time leaves the sign *between* sequences to chance: on a
    real SmolLM2-135M run 47% of the target triplets pointed against the local and global ones of their
    checkpoint (while agreeing with them to |cos| 0.87 up to sign), so a predictor learning
    ``(global, local) -> target`` saw "keep moving" and "move back" for the same motion. The global
    sequence keeps its own along-time signs; the local and target ones follow it.
    """

    def rows(t: lowrank.Triplets, n: int) -> lowrank.Triplets:
        return lowrank.Triplets(u=t.u[:, :n], s=t.s[:, :n], v=t.v[:, :n])

    return [lowrank.align_signs(t, rows(glob, t.u.shape[1])) for t in others]


def _lora_features(B: torch.Tensor, A: torch.Tensor, horizon: int) -> list[MatrixFeatures]:
    """Features of a chunk: ``B (M, K, out, r)`` already scaled, ``A (M, K, r, in)``."""
    glob = _sequence(B, A)
    # Local delta at k: dW[k] - dW[k-1]. Before the first checkpoint dW = 0 (B = 0 at init), so the
    # first local delta is the first global one.
    moved = _sequence(*lowrank.difference(B[:, 1:], A[:, 1:], 1.0, B[:, :-1], A[:, :-1], 1.0))
    local = _align_along_time(
        *(torch.cat([getattr(glob, f)[:, :1], getattr(moved, f)], 1) for f in ("u", "s", "v"))
    )
    target = _sequence(
        *lowrank.difference(B[:, horizon:], A[:, horizon:], 1.0, B[:, :-horizon], A[:, :-horizon], 1.0)
    )
    local, target = _same_sign_as(glob, local, target)

    def pick(t: lowrank.Triplets, i: int) -> lowrank.Triplets:
        return lowrank.Triplets(u=t.u[i], s=t.s[i], v=t.v[i])

    return [
        MatrixFeatures(global_=pick(glob, i), local=pick(local, i), target=pick(target, i))
        for i in range(B.shape[0])
    ]


_DENSE_SVD_MAX = 2048


def _dense_top(X: torch.Tensor) -> lowrank.Triplets:
    """Top triplets of dense matrices ``(n, out, in)`` (only for raw 2-D tensors, which exist densely anyway).

    Large ones (``modules_to_save`` of an embedding, say) use a randomized SVD with power iterations.
    """
    if min(X.shape[-2:]) <= _DENSE_SVD_MAX:
        U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    else:
        U, S, V = torch.svd_lowrank(X, q=6, niter=8)
        Vh = V.transpose(-1, -2)
    moving = (S[:, :1] > 0).to(X.dtype)
    return lowrank.canonicalize_signs(
        lowrank.Triplets(u=U[:, :, 0] * moving, s=S[:, 0], v=Vh[:, 0, :] * moving)
    )


def _dense_features(X: torch.Tensor, horizon: int) -> MatrixFeatures:
    def seq(D: torch.Tensor) -> lowrank.Triplets:
        t = _dense_top(D)
        return _align_along_time(t.u.unsqueeze(0), t.s.unsqueeze(0), t.v.unsqueeze(0))

    def squeeze(t: lowrank.Triplets) -> lowrank.Triplets:
        return lowrank.Triplets(u=t.u[0], s=t.s[0], v=t.v[0])

    local = torch.cat([torch.zeros_like(X[:1]), X[1:] - X[:-1]])
    glob = seq(X - X[:1])
    local_t, target_t = _same_sign_as(glob, seq(local), seq(X[horizon:] - X[:-horizon]))
    return MatrixFeatures(global_=squeeze(glob), local=squeeze(local_t), target=squeeze(target_t))


# ------------------------------------------------------------------------------------- run check

# A step's update may move this many times the run's median distance per step before it counts as a
# jump (more where the run's own rates spread more: see check_run).
JUMP_FACTOR = 4.0


@dataclass(frozen=True)
class RunCheck:
    """What :func:`check_run` found, reading every tensor of every checkpoint once.

    ``distances[k]``: ``||dW_{k+1} - dW_k||_F`` over all trainable tensors (float, K - 1 entries);
    ``norms[k]``: ``||dW_k||_F`` (LoRA modules only; raw tensors have no known start);
    ``jumps``: steps whose update from the previous checkpoint is discontinuous; ``module_steps[name]``:
    ``||dW_{k+1} - dW_k||_F`` of each LoRA module (K - 1 entries; ``inspect`` reports them).
    """

    steps: tuple[int, ...]
    distances: tuple[float, ...]
    norms: tuple[float, ...]
    jumps: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()
    module_steps: dict[str, tuple[float, ...]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def moved(self) -> bool:
        return any(n > 0 for n in self.norms) or any(d > 0 for d in self.distances)


def check_run(
    traj: Trajectory,
    force: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Progress = no_progress,
    device: torch.device | None = None,
) -> Trajectory:
    """Read every tensor of every checkpoint once; return ``traj`` with :attr:`Trajectory.check` set.

    Every method relies on this one pass, whatever it reads later: a NaN/Inf anywhere raises
    :class:`CheckpointError` (the reader checks each tensor), and a discontinuity raises
    :class:`MismatchError` naming the step, unless ``force`` (then it becomes a note). Distances are
    computed in factored form (Gram products, ``O((out + in) r^2)`` per module and checkpoint); memory
    is bounded by ``chunk_bytes`` like everywhere else. The products run on ``device`` (default the CPU).
    """
    if traj.check is not None:
        return traj
    K = len(traj.headers)
    sq_dist = torch.zeros(K - 1, dtype=torch.float64)
    sq_skip = torch.zeros(max(K - 2, 0), dtype=torch.float64)  # from each checkpoint to the one after next
    sq_norm = torch.zeros(K, dtype=torch.float64)
    cpu = torch.device("cpu")
    chunks = traj.module_chunks(K, chunk_bytes)
    ticks = iter(progress(range(len(chunks) + len(traj.raw)), "checking checkpoints"))
    lags = (1, 2) if K > 2 else (1,)
    module_steps: dict[str, tuple[float, ...]] = {}
    for names, B, A in traj.iter_factors(chunks, device or cpu):  # traj.check is None: every tensor is checked
        next(ticks, None)
        norms2, dists2, *skips2 = lowrank.norms_and_steps(B, A, lags)
        sq_norm += norms2.double().sum(0).cpu()
        sq_dist += dists2.double().sum(0).cpu()
        for name, row in zip(names, dists2.double().sqrt().cpu().tolist(), strict=True):
            module_steps[name] = tuple(row)
        if skips2:
            sq_skip += skips2[0].double().sum(0).cpu()
    for key in traj.raw:
        next(ticks, None)
        X = traj.load_raw(key, cpu).double().flatten(1)
        sq_dist += (X[1:] - X[:-1]).square().sum(1)
        sq_skip += (X[2:] - X[:-2]).square().sum(1)
    for _ in ticks:
        pass
    distances = tuple(float(d) for d in sq_dist.sqrt())
    norms = tuple(float(n) for n in sq_norm.sqrt())
    if not all(map(_finite, distances + norms)):
        raise MismatchError(
            f"{traj.discovery.root or 'the given checkpoints'}: the distance between checkpoints overflows "
            "float64; the weights are far out of any trained range"
        )
    jumps, notes = _find_jumps(traj.steps, distances)
    notes += _alternation(traj.steps, distances, tuple(float(d) for d in sq_skip.sqrt()))
    if notes and not force:
        raise MismatchError(notes[0] + "; remove the other run's checkpoints, or pass --force to go on")
    check = RunCheck(traj.steps, distances, norms, tuple(jumps), tuple(notes), module_steps)
    if not check.moved:
        still = "the run never moved: every checkpoint holds a zero update, so every method predicts zero"
        check = replace(check, notes=(*check.notes, still))
    return replace(traj, check=check, notes=traj.notes + check.notes)


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def _alternation(steps: Sequence[int], distances: Sequence[float], skips: Sequence[float]) -> list[str]:
    """A note when the checkpoints alternate between two runs: every checkpoint is closer to the one after
    next (its own run's) than to either neighbour (the other run's). One run moving on does the opposite;
    at least 3 such triples are needed to say so."""
    if len(skips) < 3 or not all(s < min(a, b) for s, a, b in zip(skips, distances, distances[1:], strict=False)):
        return []
    return [
        f"steps {', '.join(map(str, steps[:4:2]))}, ... and {', '.join(map(str, steps[1:4:2]))}, ...: every checkpoint "
        "is closer to the one two steps on than to its neighbours, as when the checkpoints of two runs alternate "
        "(two runs mixed in one folder?)"
    ]


def _find_jumps(steps: Sequence[int], distances: Sequence[float]) -> tuple[list[int], list[str]]:
    """Steps whose distance per step is far beyond the run's own: ``JUMP_FACTOR`` x the median at least.

    The threshold grows with the spread of the log rates (1.48 x MAD, 5 of them), so noisy runs need a
    bigger jump; at least 3 intervals are needed to say anything.
    """
    import math

    rates = [d / max(1, b - a) for d, a, b in zip(distances, steps, steps[1:], strict=False)]
    positive = sorted(r for r in rates if r > 0)
    if len(rates) < 3 or len(positive) < 3:
        return [], []
    logs = [math.log(r) for r in positive]
    median = statistics.median(logs)
    spread = 1.4826 * statistics.median(abs(x - median) for x in logs)
    limit = median + max(math.log(JUMP_FACTOR), 5 * spread)
    jumps, notes = [], []
    for k, rate in enumerate(rates):
        if rate > 0 and math.log(rate) > limit:
            jumps.append(steps[k + 1])
            notes.append(
                f"step {steps[k + 1]}: the update from step {steps[k]} moves {rate / math.exp(median):.1f}x the "
                f"run's median distance per step (checkpoints of two runs mixed in one folder?)"
            )
    return jumps, notes
