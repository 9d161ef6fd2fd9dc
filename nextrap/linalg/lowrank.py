"""Pure torch math on low-rank updates kept in factored form.

A factored matrix is a pair ``(L, R)`` with ``L`` of shape ``(..., out, k)`` and ``R`` of shape
``(..., k, in)``; it stands for ``L @ R`` (``out x in``), which is never built here. A LoRA update is
``(scaling * B, A)``; the difference of two updates is ``([s1 B1, -s0 B0], [A1; A0])`` of rank <= 2r.
Every function takes a leading batch of modules of equal shape, computes in the dtype it is given
(callers pass float32) and does no I/O.

The SVD of ``L @ R`` comes from a thin QR of ``L`` and of ``R^T`` and the SVD of the small ``k x k``
core, which is exact and costs ``O((out + in) k^2)`` instead of ``O(out * in * min(out, in))``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "FactoredSVD",
    "Refactored",
    "Triplets",
    "align_signs",
    "canonicalize_signs",
    "cosine",
    "difference",
    "factored_svd",
    "frobenius_inner",
    "frobenius_norm",
    "gram",
    "norms_and_steps",
    "refactor_svd",
    "refactor_to_rank",
    "relative_error",
    "svd_from_grams",
    "top_triplet",
    "truncated_svd",
    "update_gram",
]


@dataclass(frozen=True)
class Triplets:
    """Top singular triplets of a batch of matrices: ``u (M, out)``, ``s (M,)``, ``v (M, in)``.

    ``u`` and ``v`` have unit norm (or are zero when the matrix is zero); ``s >= 0``.
    """

    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor


@dataclass(frozen=True)
class FactoredSVD:
    """Thin SVD of ``L @ R``: ``U (..., out, k')``, ``S (..., k')`` descending, ``Vh (..., k', in)``."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor


def factored_svd(L: torch.Tensor, R: torch.Tensor) -> FactoredSVD:
    """Exact thin SVD of ``L @ R`` without forming it.

    Args:
        L: ``(..., out, k)`` left factor.
        R: ``(..., k, in)`` right factor.

    Returns:
        ``FactoredSVD`` with ``k' = min(k, out, in)`` singular triplets, same dtype and device as ``L``.
    """
    if L.shape[-1] != R.shape[-2]:
        raise ValueError(f"inner dimensions differ: L is {tuple(L.shape)}, R is {tuple(R.shape)}")
    q_left, r_left = torch.linalg.qr(L, mode="reduced")  # (out, a), (a, k)
    q_right, r_right = torch.linalg.qr(R.transpose(-1, -2), mode="reduced")  # (in, b), (b, k)
    core = r_left @ r_right.transpose(-1, -2)  # (a, b): L R = q_left core q_right^T
    p, s, wh = torch.linalg.svd(core, full_matrices=False)
    return FactoredSVD(U=q_left @ p, S=s, Vh=wh @ q_right.transpose(-1, -2))


def truncated_svd(L: torch.Tensor, R: torch.Tensor, keep: int) -> FactoredSVD | None:
    """The top ``keep`` singular triplets of ``L @ R`` from the ``k x k`` Gram matrices of its factors.

    For a wide inner size ``k`` (a RELEX prediction stacks ``T`` checkpoints: ``k = T r``) a QR of the
    ``out x k`` and ``in x k`` factors costs ``O((out + in) k^2)`` at a few GFLOP/s, and the full ``U``,
    ``Vh`` another ``O((out + in) k^2)``. Here the factors meet only two BLAS-3 products in float64,
    ``L^T L`` and ``R R^T``; with ``L^T L = V Lam V^T``, ``L R = Q C`` for ``Q = L V Lam^-1/2`` (orthonormal)
    and ``C = Lam^1/2 V^T R``, whose left singular vectors ``P`` are the eigenvectors of
    ``C C^T = Lam^1/2 V^T (R R^T) V Lam^1/2``. Then ``U_keep = L (V Lam^-1/2 P_keep)`` and ``Vh_keep =
    Sigma^-1 P_keep^T C``: only ``keep`` columns ever have length ``out`` or ``in``. Float64 Gram
    matrices keep every singular value above ``1e-6`` of the largest to float32 accuracy.

    Returns ``FactoredSVD`` with ``U (..., out, keep)``, all ``k`` singular values ``S`` (descending, for the
    truncation error) and ``Vh (..., keep, in)`` in ``L``'s dtype, or None when some matrix has fewer than
    ``keep`` nonzero singular values (its missing directions are arbitrary: the caller uses
    :func:`factored_svd`, whose QR supplies orthonormal ones).
    """
    if L.shape[-1] != R.shape[-2]:
        raise ValueError(f"inner dimensions differ: L is {tuple(L.shape)}, R is {tuple(R.shape)}")
    Ld, Rd = L.double(), R.double()
    svd = svd_from_grams(Ld, Rd, torch.linalg.eigh(Ld.transpose(-1, -2) @ Ld), Rd @ Rd.transpose(-1, -2), keep)
    return None if svd is None else FactoredSVD(U=svd.U.to(L.dtype), S=svd.S.to(L.dtype), Vh=svd.Vh.to(L.dtype))


def svd_from_grams(
    L: torch.Tensor,
    R: torch.Tensor,
    eigen_left: tuple[torch.Tensor, torch.Tensor],
    gram_right: torch.Tensor,
    keep: int,
    right_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> FactoredSVD | None:
    """The top ``keep`` singular triplets of ``L @ M @ R`` from Gram matrices computed elsewhere (see
    :func:`truncated_svd` for the method; ``M`` is the identity unless ``right_map`` is given).

    Args:
        L: ``(..., out, k)``; R: ``(..., k', in)``: the products with them are taken in their dtype.
        eigen_left: ``torch.linalg.eigh`` of ``L^T L`` (float64).
        gram_right: ``(M R)(M R)^T`` (float64, ``k x k``).
        keep: how many triplets to return.
        right_map: ``X -> X M`` for a ``(..., keep, k)`` float64 coefficient matrix, when the right
            factor is ``M R`` rather than ``R`` (:class:`~nextrap.linalg.combinations.StackedUpdates`).

    Returns float64 ``S`` (all ``k``) and ``U``, ``Vh`` in ``L``'s and ``R``'s dtype, or None where some
    matrix has fewer than ``keep`` nonzero singular values.
    """
    lam, V = eigen_left
    lam = lam.clamp_min(0)
    tiny = lam[..., -1:] * (lam.shape[-1] * torch.finfo(torch.float64).eps * 16)
    root = lam.sqrt()
    inv_root = torch.where(lam > tiny, 1 / root.clamp_min(1e-300), torch.zeros_like(root))
    W = V * root.unsqueeze(-2)  # C = W^T R
    mu, P = torch.linalg.eigh(W.transpose(-1, -2) @ gram_right @ W)
    mu, P = mu.flip(-1).clamp_min(0), P.flip(-1)
    sigma = mu.sqrt()
    if keep > sigma.shape[-1] or bool((sigma[..., keep - 1] <= sigma[..., :1] * 1e-6).any()):
        return None
    Pk, sk = P[..., :keep], sigma[..., :keep]
    U = L @ ((V * inv_root.unsqueeze(-2)) @ Pk).to(L.dtype)
    coef = (Pk.transpose(-1, -2) @ W.transpose(-1, -2)) / sk.unsqueeze(-1)
    if right_map is not None:
        coef = right_map(coef)
    Vh = coef.to(R.dtype) @ R
    # Renormalize away the rounding the Gram route leaves in the lengths.
    U = U / U.norm(dim=-2, keepdim=True)
    Vh = Vh / Vh.norm(dim=-1, keepdim=True)
    return FactoredSVD(U=U, S=sigma, Vh=Vh)


def top_triplet(L: torch.Tensor, R: torch.Tensor) -> Triplets:
    """Top singular triplet of each ``L @ R`` in a batch, signs canonicalized (see below).

    Works on the ``k x k`` Gram matrices ``L^T L`` and ``R R^T`` (one BLAS-3 product each, several
    times faster than a QR of the tall factors): with ``L^T L = V_L S_L^2 V_L^T``, ``(L R)(L R)^T``
    has the nonzero eigenvalues of ``C = S_L V_L^T (R R^T) V_L S_L``; the top eigenvector of ``C``
    gives ``u`` as ``L`` applied to a small coefficient vector, and ``v = (L R)^T u / sigma``. Two
    small symmetric eigen-problems (float64), no SVD. Squaring the factors costs accuracy only where
    they cancel, which :func:`difference` avoids by construction; measured against dense SVD the top
    sigma agrees to ~1e-7 relative in float32.

    Args:
        L: ``(M, out, k)``; R: ``(M, k, in)``.

    Returns:
        ``Triplets`` with ``u (M, out)``, ``s (M,)``, ``v (M, in)`` in the dtype of ``L``.
    """
    if L.shape[-1] != R.shape[-2]:
        raise ValueError(f"inner dimensions differ: L is {tuple(L.shape)}, R is {tuple(R.shape)}")
    lam_l, vec_l = torch.linalg.eigh((L.transpose(-1, -2) @ L).double())
    gram_r = (R @ R.transpose(-1, -2)).double()
    # Directions with eigenvalues at rounding level carry no signal; dropping them keeps 1/S finite.
    tol = torch.finfo(L.dtype).eps * L.shape[-1] * 4
    s_l = lam_l.clamp_min(0).sqrt()
    inv_l = torch.where(lam_l > tol * lam_l[..., -1:], 1 / s_l.clamp_min(1e-300), torch.zeros_like(s_l))
    # L = Q S_L V_L^T with Q orthonormal, so (L R)(L R)^T = Q C Q^T with C = S_L V_L^T (R R^T) V_L S_L:
    # one more k x k eigenproblem gives sigma^2 and u = Q p; v follows as (L R)^T u / sigma.
    w = vec_l * s_l.unsqueeze(-2)
    lam_c, vec_c = torch.linalg.eigh(w.transpose(-1, -2) @ gram_r @ w)
    p = vec_c[..., :, -1]
    a = vec_l @ (inv_l * p).unsqueeze(-1)  # u = L a
    u = (L @ a.to(L.dtype)).squeeze(-1)
    v = (R.transpose(-1, -2) @ (L.transpose(-1, -2) @ u.unsqueeze(-1))).squeeze(-1)
    sv = lam_c[..., -1:].clamp_min(0).sqrt()
    s = sv[..., 0].to(L.dtype)
    nu, nv = u.norm(dim=-1, keepdim=True), v.norm(dim=-1, keepdim=True)
    # A zero matrix has no direction: report zeros so that a module that has not moved contributes
    # nothing downstream.
    moving = (s > 0).unsqueeze(-1) & (nu > 0) & (nv > 0)
    u = torch.where(moving, u / nu.clamp_min(torch.finfo(u.dtype).tiny), torch.zeros_like(u))
    v = torch.where(moving, v / nv.clamp_min(torch.finfo(v.dtype).tiny), torch.zeros_like(v))
    return canonicalize_signs(Triplets(u=u, s=torch.where(moving.squeeze(-1), s, torch.zeros_like(s)), v=v))


def difference(
    B1: torch.Tensor,
    A1: torch.Tensor,
    s1: torch.Tensor | float,
    B0: torch.Tensor,
    A0: torch.Tensor,
    s0: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors of ``s1 B1 A1 - s0 B0 A0``, rank <= r1 + r0.

    With equal scalings (the case within one run) this is ``([s (B1 - B0), s B0], [A1; A1 - A0])``:
    the subtraction happens on the factors, where it is exact for nearby checkpoints, so the factors
    are as small as the difference itself and nothing cancels later. Otherwise it is
    ``([s1 B1, -s0 B0], [A1; A0])``. ``B*`` are ``(..., out, r)``, ``A*`` are ``(..., r, in)``;
    scalings are floats or broadcast over the batch (``(M, 1, 1)`` tensors).
    """
    same = (
        B1.shape == B0.shape
        and A1.shape == A0.shape
        and (s1 is s0 or (not torch.is_tensor(s1) and not torch.is_tensor(s0) and s1 == s0))
    )
    if same:
        left = torch.cat([B1 - B0, B0], dim=-1)
        left = left if not torch.is_tensor(s1) and s1 == 1.0 else s1 * left
        return left, torch.cat([A1, A1 - A0], dim=-2)
    return torch.cat([s1 * B1, -s0 * B0], dim=-1), torch.cat([A1, A0], dim=-2)


def canonicalize_signs(t: Triplets) -> Triplets:
    """Fix the sign of each triplet so that the largest-magnitude entry of ``u`` is positive.

    ``(u, v)`` and ``(-u, -v)`` give the same matrix; without a convention a predictor sees random
    sign flips. Ties go to the first index (``argmax`` is deterministic).
    """
    idx = t.u.abs().argmax(dim=-1, keepdim=True)
    sign = torch.sign(torch.gather(t.u, -1, idx))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return Triplets(u=t.u * sign, s=t.s, v=t.v * sign)


def align_signs(t: Triplets, ref: Triplets) -> Triplets:
    """Flip each triplet of ``t`` whose ``(u, v)`` points away from ``ref``'s.

    The score ``u . u_ref + v . v_ref`` is invariant to nothing but the joint flip, so a flip is taken
    when it is negative. Where the score is exactly zero (orthogonal or zero reference) ``t`` is kept.
    Used along time: the triplet at step t is aligned with the same module's triplet at the previous
    checkpoint, the first one by :func:`canonicalize_signs`.
    """
    score = (t.u * ref.u).sum(-1) + (t.v * ref.v).sum(-1)
    sign = torch.where(score < 0, -torch.ones_like(score), torch.ones_like(score)).unsqueeze(-1)
    return Triplets(u=t.u * sign, s=t.s, v=t.v * sign)


def frobenius_inner(L1: torch.Tensor, R1: torch.Tensor, L2: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """``<L1 R1, L2 R2>_F`` per batch element, as ``sum((L1^T L2) * (R1 R2^T))``: ``O((out+in) k1 k2)``."""
    return ((L1.transpose(-1, -2) @ L2) * (R1 @ R2.transpose(-1, -2))).sum(dim=(-1, -2))


def frobenius_norm(L: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """``||L R||_F`` per batch element, exact in factored form."""
    return frobenius_inner(L, R, L, R).clamp_min(0).sqrt()


def norms_and_steps(B: torch.Tensor, A: torch.Tensor, lags: tuple[int, ...] = (1,)) -> tuple[torch.Tensor, ...]:
    """Squared norms of ``dW_k = B_k A_k`` and of the steps ``dW_k - dW_{k-lag}`` along a sequence, exact.

    ``B (M, K, out, r)``, ``A (M, K, r, in)`` (scaling folded in). Returns the norms ``(M, K)`` and, per
    lag in ``lags``, the steps ``(M, K - lag)``. A step is ``dB A_k + B_{k-lag} dA`` with ``dB``, ``dA``
    the differences of the factors (exact for nearby checkpoints, as in :func:`difference`), so
    ``||step||^2 = <dB^T dB, A_k A_k^T> + <B_{k-lag}^T B_{k-lag}, dA dA^T> + 2 <dB^T B_{k-lag}, A_k dA^T>``,
    where ``B_k^T B_k`` and ``A_k A_k^T`` are the norms' own Gram matrices and ``dB^T B_{k-lag} = dB^T B_k -
    dB^T dB``: two ``r x r`` products per checkpoint, side and lag besides the norms'.

    The module and checkpoint axes are taken as one, so that every product reads contiguous blocks (a
    slice along the checkpoints of a ``(M, K, ...)`` tensor would be copied first); the pairs that
    straddle two modules are computed and dropped. 1.6x faster than per-module slices (91 against 56 ms
    for 8 modules of 4096 x 16 at 16 checkpoints, one thread).
    """
    M, K = B.shape[:2]
    Bf, Af = B.flatten(0, 1), A.flatten(0, 1)
    gb = Bf.transpose(-1, -2) @ Bf  # (M K, r, r)
    ga = Af @ Af.transpose(-1, -2)
    out = [(gb * ga).sum((-1, -2)).view(M, K).clamp_min(0)]
    for lag in lags:
        if lag >= K:
            out.append(gb.new_zeros(M, 0))
            continue
        dB, dA = Bf[lag:] - Bf[:-lag], Af[lag:] - Af[:-lag]
        ddb = dB.transpose(-1, -2) @ dB
        cross_b = dB.transpose(-1, -2) @ Bf[lag:] - ddb  # dB^T B_{k-lag}
        cross_a = Af[lag:] @ dA.transpose(-1, -2)
        steps = (
            (ddb * ga[lag:]).sum((-1, -2))
            + (gb[:-lag] * (dA @ dA.transpose(-1, -2))).sum((-1, -2))
            + 2 * (cross_b * cross_a).sum((-1, -2))
        )
        # entry i is the step into flat index i + lag: row k of module m sits at m K + k - lag
        steps = torch.cat([steps.new_zeros(lag), steps]).view(M, K)[:, lag:]
        out.append(steps.clamp_min(0))
    return tuple(out)


# From this many columns on, a Gram matrix of long factors goes to BLAS's symmetric rank-k update (half the
# flops of a general product): 11 ms against 21 ms for 4 x (4096 x 256), one thread. Below it the per-call
# overhead loses to torch's batched product (7 ms against 4 ms for 128 x (4096 x 16)).
_SYRK_MIN_COLUMNS = 64


def gram(X: torch.Tensor, columns: bool = True) -> torch.Tensor:
    """``X^T X`` (``columns``: X is ``(..., n, k)``) or ``X X^T`` (X is ``(..., k, n)``): ``(..., k, k)`` in X's dtype.

    Wide ones on a CPU with one torch thread use BLAS ``?syrk`` through SciPy, one batch element at a time
    (it releases the GIL, so the reader thread keeps reading meanwhile); the rest ``torch.matmul``.
    """
    k = X.shape[-1] if columns else X.shape[-2]
    syrk = {torch.float32: "ssyrk", torch.float64: "dsyrk"}.get(X.dtype)
    # With several torch threads, torch's own product runs on all of them; SciPy's BLAS has one (util.threads).
    serial = torch.get_num_threads() == 1
    if X.device.type != "cpu" or syrk is None or k < _SYRK_MIN_COLUMNS or X.requires_grad or not serial:
        return X.transpose(-1, -2) @ X if columns else X @ X.transpose(-1, -2)
    from scipy.linalg import blas  # imported here: only wide Gram matrices need it

    routine = getattr(blas, syrk)
    flat = X.contiguous().reshape(-1, *X.shape[-2:]).numpy()
    # A row-major (n, k) matrix is a column-major (k, n) one: its transpose view is what BLAS reads without a copy.
    upper = torch.stack([torch.from_numpy(routine(1.0, x.T, trans=0 if columns else 1)) for x in flat])
    full = upper.triu() + upper.triu(1).transpose(-1, -2)
    return full.reshape(*X.shape[:-2], k, k)


def update_gram(B: torch.Tensor, A: torch.Tensor, products: torch.dtype | None = None) -> torch.Tensor:
    """``G[m, i, j] = <B_i A_i, B_j A_j>_F`` for a sequence ``B (M, T, out, r)``, ``A (M, T, r, in)``: float64 ``(M, T, T)``.

    Two BLAS-3 products of the stacked factors (``(T r) x (T r)`` each), then the block-wise Hadamard
    sum. Computing only the ``T (T + 1) / 2`` block pairs ``i <= j`` as ``r x r`` products does half the
    flops but is memory-bound (each reads two ``out x r`` blocks for 256 results) and measured 3x slower
    (0.13 s against 0.043 s for 2 modules of 11008 x 4096, r = 16, T = 16, one thread). ``products``: the
    dtype of the products (default the factors'; float64 where the Gram entries will cancel).
    """
    if products is not None:
        B, A = B.to(products), A.to(products)
    M, T, out_f, r = B.shape
    Bf = B.permute(0, 2, 1, 3).reshape(M, out_f, T * r)
    Af = A.reshape(M, T * r, A.shape[-1])
    gb = gram(Bf).double().view(M, T, r, T, r)
    ga = gram(Af, columns=False).double().view(M, T, r, T, r)
    G = (gb * ga).sum(dim=(2, 4))
    return (G + G.transpose(-1, -2)) / 2


def relative_error(
    L: torch.Tensor, R: torch.Tensor, L_ref: torch.Tensor, R_ref: torch.Tensor
) -> torch.Tensor:
    """``||L R - L_ref R_ref||_F / ||L_ref R_ref||_F`` per batch element (inf where the reference is 0)."""
    diff_l = torch.cat([L, -L_ref], dim=-1)
    diff_r = torch.cat([R, R_ref], dim=-2)
    return frobenius_norm(diff_l, diff_r) / frobenius_norm(L_ref, R_ref)


def cosine(L1: torch.Tensor, R1: torch.Tensor, L2: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of ``L1 R1`` and ``L2 R2`` seen as vectors (0 where either is 0)."""
    denom = frobenius_norm(L1, R1) * frobenius_norm(L2, R2)
    inner = frobenius_inner(L1, R1, L2, R2)
    return torch.where(
        denom > 0, inner / denom.clamp_min(torch.finfo(denom.dtype).tiny), torch.zeros_like(inner)
    )


@dataclass(frozen=True)
class Refactored:
    """A rank-r LoRA factorization ``B (M, out, r)``, ``A (M, r, in)`` of a target update.

    ``scaling * B @ A`` is the best rank-r approximation of the target; ``error`` is the exact
    Frobenius norm of what was cut off (``sqrt`` of the dropped squared singular values) and
    ``norm`` the Frobenius norm of the target, both ``(M,)``. ``aligned`` tells, per module, whether
    the least-squares alignment to the previous factors was used (else the Procrustes fallback).
    """

    B: torch.Tensor
    A: torch.Tensor
    error: torch.Tensor
    norm: torch.Tensor
    aligned: torch.Tensor


def refactor_to_rank(
    L: torch.Tensor,
    R: torch.Tensor,
    rank: int,
    scaling: torch.Tensor | float,
    B_prev: torch.Tensor,
    A_prev: torch.Tensor,
    max_condition: float = 1e4,
) -> Refactored:
    """Best rank-``rank`` LoRA factors of ``L @ R``, close to the previous factors ``(B_prev, A_prev)``.

    ``scaling B A = U_r S_r Vh_r`` leaves an ``r x r`` invertible freedom ``(B M, M^{-1} A)``. We pick
    it so that ``A`` moves as little as possible: ``A = C Vh_r`` with ``C = A_prev Vh_r^T`` (the
    projection of the old rows onto the new row space) and ``B = U_r S_r C^{-1} / scaling``. When the
    target equals the old update this returns the old factors exactly, and for a small jump the
    factors (and so the optimizer's view of them) change little. Where ``C`` is singular or badly
    conditioned (the old ``A`` is zero, or the row space turned) we fall back to balanced factors
    ``U S^1/2, S^1/2 Vh`` scaled to the old ``||B|| / ||A||`` ratio and rotated onto the old ones by
    orthogonal Procrustes.

    Args:
        L: ``(M, out, k)``; R: ``(M, k, in)``: the target update (already including the scaling).
        rank: r, the number of factor columns to return (``k`` may be larger or smaller).
        scaling: LoRA scaling, a float or ``(M, 1, 1)`` tensor.
        B_prev: ``(M, out, r)``; A_prev: ``(M, r, in)``: the factors to stay close to.
        max_condition: largest accepted condition number of ``C`` before the fallback.
    """
    # A wide inner size (RELEX: the run's checkpoints stacked) goes through the Gram matrices: several
    # times faster than the QR of out x k and in x k factors, and exact to float32 (tests/test_lowrank.py).
    wide = L.shape[-1] > 4 * rank
    svd = (truncated_svd(L, R, rank) if wide else None) or factored_svd(L, R)
    return refactor_svd(svd, rank, scaling, B_prev, A_prev, max_condition)


def refactor_svd(
    svd: FactoredSVD,
    rank: int,
    scaling: torch.Tensor | float,
    B_prev: torch.Tensor,
    A_prev: torch.Tensor,
    max_condition: float = 1e4,
) -> Refactored:
    """:func:`refactor_to_rank` from the target's SVD (at least ``rank`` columns of ``U`` and rows of ``Vh``
    where the target has that rank; every singular value in ``S``, for the error). Factors come out in
    ``B_prev``'s dtype."""
    S = svd.S.to(B_prev.dtype)
    error = S[..., rank:].square().sum(-1).sqrt()
    norm = S.square().sum(-1).sqrt()
    U, S_r, Vh = svd.U[..., :rank], S[..., :rank], svd.Vh[..., :rank, :]
    short = rank - S_r.shape[-1]
    if short > 0:  # k < r: pad with zero singular values so the output has exactly r columns
        U = torch.nn.functional.pad(U, (0, short))
        Vh = _complete_rows(Vh, A_prev, short)
        S_r = torch.nn.functional.pad(S_r, (0, short))
    U, Vh = U.to(B_prev.dtype), Vh.to(B_prev.dtype)
    scaling_t = torch.as_tensor(scaling, dtype=B_prev.dtype, device=B_prev.device)
    if scaling_t.dim() == 0:
        scaling_t = scaling_t.reshape(1, 1, 1).expand(B_prev.shape[0], 1, 1)
    B_ls, A_ls, ok = _least_squares_factors(U, S_r, Vh, scaling_t, A_prev, max_condition)
    if bool(ok.all()):
        return Refactored(B=B_ls, A=A_ls, error=error, norm=norm, aligned=ok)
    B_pc, A_pc = _procrustes_factors(U, S_r, Vh, scaling_t, B_prev, A_prev)
    sel = ok.view(-1, 1, 1)
    return Refactored(
        B=torch.where(sel, B_ls, B_pc),
        A=torch.where(sel, A_ls, A_pc),
        error=error,
        norm=norm,
        aligned=ok,
    )


def _least_squares_factors(
    U: torch.Tensor,
    S_r: torch.Tensor,
    Vh: torch.Tensor,
    scaling: torch.Tensor,
    A_prev: torch.Tensor,
    max_condition: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, A, ok)`` with ``A = C Vh``, ``C = A_prev Vh^T``: A's rows kept, projected onto the new row space.

    ``U``: ``(M, out, r)``, ``S_r``: ``(M, r)``, ``Vh``: ``(M, r, in)``, ``scaling``: ``(M, 1, 1)``.
    ``ok`` (``(M,)`` bool) marks the modules whose ``C`` is invertible and conditioned below
    ``max_condition``; elsewhere ``C`` is replaced by the identity so the solve stays finite, and the
    caller must not use those factors.
    """
    rank = Vh.shape[-2]
    C = A_prev @ Vh.transpose(-1, -2)  # (M, r, r)
    svals_c = torch.linalg.svdvals(C)
    cond = svals_c[..., 0] / svals_c[..., -1].clamp_min(torch.finfo(C.dtype).tiny)
    ok = torch.isfinite(cond) & (cond < max_condition) & (svals_c[..., -1] > 0)
    US = U * S_r.unsqueeze(-2) / scaling
    eye = torch.eye(rank, dtype=C.dtype, device=C.device).expand_as(C)
    C_safe = torch.where(ok.view(-1, 1, 1), C, eye)
    B = torch.linalg.solve(C_safe, US, left=False)  # US @ C^-1
    return B, C_safe @ Vh, ok


def _complete_rows(Vh: torch.Tensor, A_prev: torch.Tensor, extra: int) -> torch.Tensor:
    """Append ``extra`` orthonormal rows to ``Vh`` (``(M, k, in)``), preferring the old rows' span.

    Needed only when the target has rank below r: the zero singular values then get directions that
    keep ``A`` close to ``A_prev`` instead of arbitrary ones.
    """
    basis = torch.cat([Vh, A_prev], dim=-2).transpose(-1, -2)  # (M, in, k + r)
    q, _ = torch.linalg.qr(basis, mode="reduced")
    k = Vh.shape[-2]
    return torch.cat([Vh, q[..., k : k + extra].transpose(-1, -2)], dim=-2)


def _procrustes_factors(
    U: torch.Tensor,
    S: torch.Tensor,
    Vh: torch.Tensor,
    scaling: torch.Tensor,
    B_prev: torch.Tensor,
    A_prev: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced factors of ``U S Vh / scaling`` rescaled to the old norm ratio and rotated onto the old ones."""
    root = S.clamp_min(0).sqrt().unsqueeze(-2) / scaling.sqrt()
    B0 = U * root
    A0 = root.transpose(-1, -2) * Vh
    tiny = torch.finfo(U.dtype).tiny
    nb, na = B_prev.norm(dim=(-2, -1)), A_prev.norm(dim=(-2, -1))
    nb0, na0 = B0.norm(dim=(-2, -1)), A0.norm(dim=(-2, -1))
    gamma = ((nb * na0) / (na * nb0).clamp_min(tiny)).sqrt()
    gamma = torch.where(
        (nb > 0) & (na > 0) & (nb0 > 0) & torch.isfinite(gamma), gamma, torch.ones_like(gamma)
    )
    gamma = gamma.view(-1, 1, 1)
    B0, A0 = B0 * gamma, A0 / gamma
    # Maximize tr(Q^T (B0^T B_prev + A0 A_prev^T)) over orthogonal Q.
    m = B0.transpose(-1, -2) @ B_prev + A0 @ A_prev.transpose(-1, -2)
    p, _, rh = torch.linalg.svd(m)
    Q = p @ rh
    return B0 @ Q, Q.transpose(-1, -2) @ A0
