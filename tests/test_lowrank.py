"""The factored math against dense computations (torch.linalg.svd on the materialized matrices)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nextrap.linalg import lowrank


def _factors(seed: int, M: int, out: int, inn: int, r: int):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(M, out, r, generator=g, dtype=torch.float64),
        torch.randn(M, r, inn, generator=g, dtype=torch.float64),
    )


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    out=st.integers(1, 24),
    inn=st.integers(1, 24),
    r=st.integers(1, 6),
    s1=st.floats(0.1, 4),
    s0=st.floats(0.1, 4),
)
def test_factored_svd_matches_dense(seed, out, inn, r, s1, s0):
    B1, A1 = _factors(seed, 2, out, inn, r)
    B0, A0 = _factors(seed + 1, 2, out, inn, r)
    L, R = lowrank.difference(B1, A1, s1, B0, A0, s0)
    dense = s1 * B1 @ A1 - s0 * B0 @ A0
    svd = lowrank.factored_svd(L, R)
    S_dense = torch.linalg.svdvals(dense)
    k = svd.S.shape[-1]
    torch.testing.assert_close(svd.S, S_dense[..., :k], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close((svd.U * svd.S.unsqueeze(-2)) @ svd.Vh, dense, rtol=1e-9, atol=1e-9)


def test_top_triplet_float32_against_dense_svd():
    """The issue's tolerance: sigma to 1e-5 relative, |cos| of u and v to 1e-5, in float32."""
    g = torch.Generator().manual_seed(0)
    B1, A1 = torch.randn(5, 96, 8, generator=g), torch.randn(5, 8, 64, generator=g)
    B0, A0 = B1 + 0.1 * torch.randn(5, 96, 8, generator=g), A1 + 0.1 * torch.randn(5, 8, 64, generator=g)
    t = lowrank.top_triplet(*lowrank.difference(B1, A1, 2.0, B0, A0, 2.0))
    U, S, Vh = torch.linalg.svd((2.0 * B1 @ A1 - 2.0 * B0 @ A0).double())
    assert torch.all((t.s.double() - S[:, 0]).abs() / S[:, 0] < 1e-5)
    assert torch.all(1 - (t.u.double() * U[:, :, 0]).sum(-1).abs() < 1e-5)
    assert torch.all(1 - (t.v.double() * Vh[:, 0, :]).sum(-1).abs() < 1e-5)


def test_sign_convention_is_deterministic_and_aligns():
    g = torch.Generator().manual_seed(1)
    B, A = torch.randn(3, 20, 4, generator=g), torch.randn(3, 4, 15, generator=g)
    t1 = lowrank.top_triplet(B, A)
    t2 = lowrank.top_triplet(-B, -A)  # same matrix, factors flipped: the convention must ignore that
    torch.testing.assert_close(t1.u, t2.u)
    torch.testing.assert_close(t1.v, t2.v)
    idx = t1.u.abs().argmax(-1)
    assert torch.all(t1.u.gather(-1, idx[:, None]) > 0)
    flipped = lowrank.Triplets(u=-t1.u, s=t1.s, v=-t1.v)
    aligned = lowrank.align_signs(flipped, t1)
    torch.testing.assert_close(aligned.u, t1.u)
    torch.testing.assert_close(aligned.v, t1.v)


def test_zero_matrix_gives_zero_triplet():
    t = lowrank.top_triplet(torch.zeros(2, 5, 3), torch.randn(2, 3, 4))
    assert torch.all(t.s == 0) and torch.all(t.u == 0) and torch.all(t.v == 0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_frobenius_inner_and_cosine_match_dense(seed):
    B1, A1 = _factors(seed, 3, 17, 11, 3)
    B2, A2 = _factors(seed + 7, 3, 17, 11, 5)
    d1, d2 = B1 @ A1, B2 @ A2
    torch.testing.assert_close(lowrank.frobenius_inner(B1, A1, B2, A2), (d1 * d2).sum((-1, -2)))
    cos = (d1 * d2).sum((-1, -2)) / (d1.norm(dim=(-1, -2)) * d2.norm(dim=(-1, -2)))
    torch.testing.assert_close(lowrank.cosine(B1, A1, B2, A2), cos)
    rel = (d1 - d2).norm(dim=(-1, -2)) / d2.norm(dim=(-1, -2))
    torch.testing.assert_close(lowrank.relative_error(B1, A1, B2, A2), rel)


def test_refactor_is_exact_when_update_fits_in_rank_r():
    """A rank-1 update of a module of rank < r fits in rank r: the output equals it exactly."""
    g = torch.Generator().manual_seed(2)
    r, s = 4, 2.0
    B = torch.randn(2, 30, r, generator=g, dtype=torch.float64)
    B[..., -1] = 0  # the old update has rank r - 1
    A = torch.randn(2, r, 20, generator=g, dtype=torch.float64)
    u, v = (
        torch.randn(2, 30, 1, generator=g, dtype=torch.float64),
        torch.randn(2, 1, 20, generator=g, dtype=torch.float64),
    )
    out = lowrank.refactor_to_rank(torch.cat([s * B, u], -1), torch.cat([A, v], -2), r, s, B, A)
    torch.testing.assert_close(s * out.B @ out.A, s * B @ A + u @ v)
    assert torch.all(out.error < 1e-10)


def test_refactor_is_best_rank_r_and_reports_exact_error():
    g = torch.Generator().manual_seed(3)
    r, s = 4, 0.5
    B, A = (
        torch.randn(3, 25, r, generator=g, dtype=torch.float64),
        torch.randn(3, r, 18, generator=g, dtype=torch.float64),
    )
    u, v = (
        torch.randn(3, 25, 1, generator=g, dtype=torch.float64),
        torch.randn(3, 1, 18, generator=g, dtype=torch.float64),
    )
    out = lowrank.refactor_to_rank(torch.cat([s * B, u], -1), torch.cat([A, v], -2), r, s, B, A)
    dense = s * B @ A + u @ v
    U, S, Vh = torch.linalg.svd(dense)
    best = (U[..., :r] * S[:, None, :r]) @ Vh[:, :r]
    torch.testing.assert_close(s * out.B @ out.A, best)
    torch.testing.assert_close(out.error, (dense - best).norm(dim=(-1, -2)))
    torch.testing.assert_close(out.norm, dense.norm(dim=(-1, -2)))


def test_refactor_keeps_old_factors_when_nothing_changes():
    g = torch.Generator().manual_seed(4)
    B, A = (
        torch.randn(2, 12, 3, generator=g, dtype=torch.float64),
        torch.randn(2, 3, 9, generator=g, dtype=torch.float64),
    )
    out = lowrank.refactor_to_rank(1.5 * B, A, 3, 1.5, B, A)
    torch.testing.assert_close(out.B, B)
    torch.testing.assert_close(out.A, A)
    assert bool(out.aligned.all())


def test_refactor_falls_back_to_procrustes_when_old_factors_are_zero():
    g = torch.Generator().manual_seed(5)
    L, R = (
        torch.randn(2, 12, 5, generator=g, dtype=torch.float64),
        torch.randn(2, 5, 9, generator=g, dtype=torch.float64),
    )
    out = lowrank.refactor_to_rank(
        L, R, 3, 2.0, torch.zeros(2, 12, 3, dtype=torch.float64), torch.zeros(2, 3, 9, dtype=torch.float64)
    )
    assert not bool(out.aligned.any())
    U, S, Vh = torch.linalg.svd(L @ R)
    torch.testing.assert_close(2.0 * out.B @ out.A, (U[..., :3] * S[:, None, :3]) @ Vh[:, :3])


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    out=st.integers(1, 30),
    inn=st.integers(1, 30),
    r=st.integers(1, 6),
    s1=st.floats(0.1, 4),
    s0=st.floats(0.1, 4),
)
def test_top_triplet_matches_dense_for_any_scalings(seed, out, inn, r, s1, s0):
    B1, A1 = _factors(seed, 2, out, inn, r)
    B0, A0 = _factors(seed + 1, 2, out, inn, r)
    t = lowrank.top_triplet(*lowrank.difference(B1, A1, s1, B0, A0, s0))
    U, S, Vh = torch.linalg.svd(s1 * B1 @ A1 - s0 * B0 @ A0)
    torch.testing.assert_close(t.s, S[:, 0], rtol=1e-9, atol=1e-9)
    gap = S[:, 0] - (S[:, 1] if S.shape[1] > 1 else 0)
    ok = gap > 1e-6 * S[:, 0]  # the top vector is defined only up to a tie
    assert torch.all((1 - (t.u * U[:, :, 0]).sum(-1).abs())[ok] < 1e-8)
    assert torch.all((1 - (t.v * Vh[:, 0, :]).sum(-1).abs())[ok] < 1e-8)


def test_difference_of_identical_updates_is_zero_not_nan():
    g = torch.Generator().manual_seed(6)
    B, A = torch.randn(3, 16, 4, generator=g), torch.randn(3, 4, 10, generator=g)
    L, R = lowrank.difference(B, A, 1.0, B.clone(), A.clone(), 1.0)
    t = lowrank.top_triplet(L, R)
    assert torch.all(t.s == 0) and torch.all(t.u == 0) and torch.all(t.v == 0)
    torch.testing.assert_close(L @ R, torch.zeros(3, 16, 10))


def _stacked_update(seed: int, M: int, T: int, out: int, inn: int, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A RELEX-like update ``sum_t w_t B_t A_t`` of T rank-r checkpoints, factored with k = T r columns,
    with a decaying spectrum (the checkpoints of a run share most of their directions)."""
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(M, T, out, r, generator=g) * torch.linspace(1.0, 0.05, r)
    A = torch.randn(M, T, r, inn, generator=g) / inn**0.5
    w = torch.randn(M, T, generator=g)
    L = (B * w[:, :, None, None]).permute(0, 2, 1, 3).reshape(M, out, T * r)
    return L, A.reshape(M, T * r, inn)


@given(seed=st.integers(0, 2**16), T=st.integers(5, 8), r=st.integers(2, 4))
@settings(max_examples=15, deadline=None)
def test_truncated_svd_of_stacked_factors_matches_dense_svd(seed, T, r):
    L, R = _stacked_update(seed, 2, T, 48, 40, r)
    svd = lowrank.truncated_svd(L, R, r)
    assert svd is not None and svd.U.shape == (2, 48, r) and svd.Vh.shape == (2, r, 40)
    U, S, Vh = torch.linalg.svd((L @ R).double())
    k = svd.S.shape[-1]
    assert torch.allclose(svd.S.double(), S[:, :k], rtol=1e-4, atol=1e-5 * float(S[:, 0].max()))
    best = U[..., :r] @ torch.diag_embed(S[:, :r]) @ Vh[..., :r, :]
    ours = svd.U.double() @ torch.diag_embed(svd.S[:, :r].double()) @ svd.Vh.double()
    assert float((ours - best).norm() / best.norm()) < 1e-4


def test_refactoring_a_wide_update_is_the_dense_best_rank_r_approximation():
    # k = T r = 24 > 4 r: refactor_to_rank goes through the Gram matrices (never out x in); the result
    # must be the best rank-r approximation a dense SVD gives, with the cut-off error it reports.
    M, T, out, inn, r = 3, 6, 64, 56, 4
    L, R = _stacked_update(1, M, T, out, inn, r)
    assert lowrank.truncated_svd(L, R, r) is not None  # the Gram route, not the QR fallback
    g = torch.Generator().manual_seed(2)
    B_prev, A_prev = torch.randn(M, out, r, generator=g), torch.randn(M, r, inn, generator=g)
    scaling = 0.5
    new = lowrank.refactor_to_rank(L, R, r, scaling, B_prev, A_prev)
    D = (L @ R).double()
    U, S, Vh = torch.linalg.svd(D)
    best = U[..., :r] @ torch.diag_embed(S[:, :r]) @ Vh[..., :r, :]
    ours = scaling * new.B.double() @ new.A.double()
    for m in range(M):
        assert float((ours[m] - best[m]).norm() / D[m].norm()) < 1e-4
    assert torch.allclose(new.error.double(), S[:, r:].square().sum(-1).sqrt(), rtol=1e-3)
    assert torch.allclose(new.norm.double(), D.flatten(1).norm(dim=-1), rtol=1e-5)


@given(seed=st.integers(0, 2**16), wide=st.booleans(), columns=st.booleans())
@settings(max_examples=10, deadline=None)
def test_gram_matches_the_plain_product(seed, wide, columns):
    # Wide ones go through BLAS syrk (upper triangle, mirrored), narrow ones through torch.
    k = 80 if wide else 12
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(2, 3, 50, k, generator=g) if columns else torch.randn(2, 3, k, 50, generator=g)
    want = X.transpose(-1, -2) @ X if columns else X @ X.transpose(-1, -2)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):  # syrk is taken with one torch thread only
            torch.set_num_threads(n)
            got = lowrank.gram(X, columns=columns)
            assert got.shape == (2, 3, k, k)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(lowrank.gram(X.double(), columns=columns), want.double(), rtol=1e-5, atol=1e-4)
    finally:
        torch.set_num_threads(threads)


def _drifting_run(seed: int, M: int, T: int, out: int, inn: int, r: int, drift: float):
    """Factors of ``T`` checkpoints of a run (a steady drift plus noise, rounded to bf16 like saved ones) and
    RELEX-like weights of a move (summing to zero), float32 and float64."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.arange(T).view(1, T, 1, 1).float()
    B = torch.randn(M, 1, out, r, generator=g) + drift * steps * torch.randn(M, 1, out, r, generator=g)
    A = (torch.randn(M, 1, r, inn, generator=g) + drift * steps * torch.randn(M, 1, r, inn, generator=g)) / inn**0.5
    B = (B + 0.1 * drift * torch.randn(M, T, out, r, generator=g)).bfloat16().float()
    A = (A + 0.1 * drift * torch.randn(M, T, r, inn, generator=g) / inn**0.5).bfloat16().float()
    w = 0.3 * torch.randn(M, T, generator=g, dtype=torch.float64)
    return B, A, w - w.mean(-1, keepdim=True)


@given(seed=st.integers(0, 2**16), drift=st.sampled_from([1e-1, 1e-2, 1e-3]), anchor=st.sampled_from([0, 5]))
@settings(max_examples=12, deadline=None)
def test_stacked_combination_gives_the_dense_best_rank_r_approximation(seed, drift, anchor):
    # The write path of RELEX and the linear move: float32 Gram products in the difference basis, the weights
    # only in T x T coefficients. Its rank-r result must be the dense float64 SVD's best approximation of the
    # new update, to well within what the move itself is (the part a jump adds); the norm of the move and
    # the cut-off error as a dense computation gives them.
    from nextrap.linalg.combinations import StackedUpdates

    M, T, out, inn, r = 2, 6, 96, 80, 4
    B, A, w_move = _drifting_run(seed, M, T, out, inn, r, drift)
    w_new = w_move.clone()
    w_new[:, anchor] += 1.0
    stack = StackedUpdates(B, A, anchor=anchor)

    def dense(w):
        return torch.einsum("mt,mtor,mtri->moi", w, B.double(), A.double())

    new, move = dense(w_new), dense(w_move)
    U, S, Vh = torch.linalg.svd(new)
    best = U[..., :r] @ torch.diag_embed(S[:, :r]) @ Vh[..., :r, :]
    svd = stack.truncated_svd(w_new, r)
    assert svd is not None
    ours = svd.U.double() @ torch.diag_embed(svd.S[:, :r]) @ svd.Vh.double()
    for m in range(M):
        assert float((ours[m] - best[m]).norm() / move[m].norm()) < 2e-3
    torch.testing.assert_close(stack.norm(w_move), move.flatten(1).norm(dim=-1), rtol=1e-3, atol=0)
    torch.testing.assert_close(stack.norm(w_new), new.flatten(1).norm(dim=-1), rtol=1e-5, atol=0)
    cut = S[:, r:].square().sum(-1).sqrt()
    torch.testing.assert_close(svd.S[:, r:].square().sum(-1).sqrt(), cut, rtol=1e-2, atol=1e-6 * float(S.max()))
    # ... and refactored to rank r against the previous factors, still that approximation
    refactored = lowrank.refactor_svd(svd, r, 0.5, B[:, anchor], A[:, anchor])
    again = 0.5 * refactored.B.double() @ refactored.A.double()
    for m in range(M):
        assert float((again[m] - best[m]).norm() / move[m].norm()) < 2e-3


@given(seed=st.integers(0, 2**16), M=st.integers(1, 3), K=st.integers(1, 5))
@settings(max_examples=15, deadline=None)
def test_norms_and_steps_match_the_dense_updates(seed, M, K):
    # The run check's distances: every module's ||dW_k|| and ||dW_k - dW_{k-lag}||, against the dense matrices
    # (module and checkpoint axes are flattened inside; pairs across two modules must not leak in).
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(M, K, 9, 3, generator=g, dtype=torch.float64)
    A = torch.randn(M, K, 3, 7, generator=g, dtype=torch.float64)
    W = B @ A
    norms, step1, step2 = lowrank.norms_and_steps(B, A, (1, 2))
    torch.testing.assert_close(norms, W.square().sum((-1, -2)))
    torch.testing.assert_close(step1, (W[:, 1:] - W[:, :-1]).square().sum((-1, -2)))
    torch.testing.assert_close(step2, (W[:, 2:] - W[:, :-2]).square().sum((-1, -2)) if K > 2 else torch.zeros(M, 0, dtype=W.dtype))
