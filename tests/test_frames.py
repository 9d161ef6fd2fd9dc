"""Each vector's frame (the leading directions of its own history) against a dense SVD, by hand."""

from __future__ import annotations

import torch

from nextrap.predictors.frames import history_frames


def _history(items: int = 3, n: int = 7, d: int = 40, rank: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coeffs = torch.randn(items, n, rank, generator=g, dtype=torch.float64)
    dirs = torch.randn(items, rank, d, generator=g, dtype=torch.float64)
    return coeffs @ dirs  # each item's rows span `rank` directions


def test_frames_are_the_leading_right_singular_vectors_signed_by_the_reference():
    history = _history()
    reference = history[:, -1] + 0.1 * history[:, 0]
    frames = history_frames(history, reference, size=3)
    assert frames.basis.shape == (3, 40, 3)
    for i in range(3):
        _, s, vh = torch.linalg.svd(history[i], full_matrices=False)  # independent: dense SVD
        for j in range(3):
            want = vh[j] * torch.sign(vh[j] @ reference[i])
            torch.testing.assert_close(frames.basis[i, :, j], want, rtol=1e-8, atol=1e-8)
            assert float(frames.basis[i, :, j] @ reference[i]) > 0
        energy = s.square()
        torch.testing.assert_close(frames.kept_energy[i], energy[:3].sum() / energy.sum())


def test_a_vector_in_the_frame_comes_back_exactly_and_the_rest_is_dropped():
    history = _history(rank=4)
    frames = history_frames(history, history[:, -1], size=4)  # the whole span
    torch.testing.assert_close(frames.lift(frames.project(history)), history, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(frames.kept_energy, torch.ones(3, dtype=torch.float64))
    outside = torch.randn(3, 1, 40, dtype=torch.float64)
    outside = outside - frames.lift(frames.project(outside))  # orthogonal to every item's history
    assert float(frames.project(outside).abs().max()) < 1e-9


def test_a_history_with_fewer_directions_than_the_frame_gets_zero_columns():
    history = _history(rank=2)
    frames = history_frames(history, history[:, -1], size=5)
    norms = frames.basis.norm(dim=1)  # (items, size)
    torch.testing.assert_close(norms[:, :2], torch.ones(3, 2, dtype=torch.float64))
    assert float(norms[:, 2:].max()) == 0.0
    still = history_frames(torch.zeros(2, 4, 10), torch.zeros(2, 10), size=3)  # a module that never moved
    assert float(still.basis.abs().max()) == 0.0 and torch.equal(still.kept_energy, torch.ones(2))
