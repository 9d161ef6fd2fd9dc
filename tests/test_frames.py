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


def test_short_vectors_keep_the_full_networks_and_long_ones_move_within_their_history(tiny_run):
    import nextrap
    from nextrap.predictors import NExtConfig, NExtPredictor

    traj = nextrap.open_run(tiny_run)
    feats = nextrap.compute_features(traj, 2, torch.device("cpu"))
    quick = {"epochs": 5}
    # every vector of the tiny run is shorter than 512: the frames preset fits exactly what the default fits
    framed_long = NExtPredictor(NExtConfig.from_preset("frames", **quick)).predict(traj, 2, feats)
    full = NExtPredictor(NExtConfig(**quick)).predict(traj, 2, feats)
    for name, (L, R) in framed_long.matrices.items():
        torch.testing.assert_close(L, full.matrices[name][0], rtol=0, atol=0)
        torch.testing.assert_close(R, full.matrices[name][1], rtol=0, atol=0)
    assert all(g["width"] == g["dim"] for g in framed_long.diagnostics["groups"])
    # framed from length 2 on: each predicted u lies in the span of that module's own u history
    framed = NExtPredictor(NExtConfig(frame=4, frame_min_dim=2, **quick)).predict(traj, 2, feats)
    assert all(g["width"] == min(4, g["dim"]) for g in framed.diagnostics["groups"] if g["dim"] > 1)
    for name, f in feats.matrices.items():
        history = torch.cat([f.global_.u, f.local.u, f.target.u]).double()  # (rows, out)
        u = framed.matrices[name][0][:, 0].double()
        _, s, vh = torch.linalg.svd(history, full_matrices=False)  # independent: the history's top-4 span
        top = vh[: min(4, int((s > s[0] * 1e-5).sum()))]
        residual = u - top.T @ (top @ u)
        assert float(residual.norm()) <= 1e-4 * max(float(u.norm()), 1e-12), name


def test_framing_a_group_a_slice_at_a_time_gives_the_same_fit(tiny_run, monkeypatch):
    # A group is framed a few vectors at a time to bound memory; every vector's frame is its own, so the
    # coordinates, the fit and the prediction must equal framing the whole group at once.
    import nextrap
    from nextrap.predictors import NExtConfig, NExtPredictor
    from nextrap.predictors import next as next_module

    traj = nextrap.open_run(tiny_run)
    feats = nextrap.compute_features(traj, 2, torch.device("cpu"))
    config = NExtConfig(frame=4, frame_min_dim=2, epochs=5)
    whole = NExtPredictor(config).predict(traj, 2, feats)
    monkeypatch.setattr(next_module, "_FRAME_BATCH_BYTES", 1)  # one vector per slice
    sliced = NExtPredictor(config).predict(traj, 2, feats)
    assert whole.matrices.keys() == sliced.matrices.keys()
    for name, (L, R) in whole.matrices.items():
        torch.testing.assert_close(sliced.matrices[name][0], L, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(sliced.matrices[name][1], R, rtol=1e-5, atol=1e-7)
