"""Weighted sums ``sum_t w_t B_t A_t`` of one stack of LoRA updates, from Gram matrices taken once.

RELEX and the linear move predict a module's new update as a weighted sum of the run's own updates at
``T`` checkpoints (inner size ``T r``). Writing it at rank r needs its top-r SVD, and the report its
norm; both follow from the ``(T r) x (T r)`` Gram matrices of the stacked factors, and the weights
enter only through ``T x T`` coefficients. So one pair of BLAS-3 products per chunk serves every
weight vector (the move, and the move plus the last update), and no product of length ``out`` or
``in`` is taken twice.

The Gram matrices are taken in the *difference basis* around an anchor checkpoint ``a`` (the last):
``[B_a, B_t - B_a, ...]`` and ``[A_a; A_t - A_a; ...]``. The checkpoints of a run are close, so the
stacked factors themselves are nearly collinear and their Gram matrix would hold the differences (the
move) only in its last digits: float64 products were needed, 2.4x slower. In the difference basis
every block is accurate relative to its own size, so float32 products serve (tests/test_lowrank.py
checks the results against dense float64 SVDs). With ``B_t = B_a + D_t`` and ``A_t = A_a + E_t``:

    sum_t w_t B_t A_t = B_a ((sum_t w_t) A_a + sum_t w_t E_t) + sum_{t != a} D_t (w_t A_a + w_t E_t)

that is, the left basis times ``(K kron I_r)`` times the right basis, with ``K`` a ``T x T`` matrix of
the weights.
"""

from __future__ import annotations

import torch

from nextrap.linalg.lowrank import FactoredSVD, gram, svd_from_grams

__all__ = ["StackedUpdates"]


class StackedUpdates:
    """The updates ``B_t A_t`` of a chunk of ``M`` modules at ``T`` checkpoints, ready for weighted sums.

    Args:
        B: ``(M, T, out, r)``, the scaling folded in; A: ``(M, T, r, in)``; both float32 (or float64).
        anchor: the checkpoint (index along ``T``) the differences are taken from, the last one for a
            prediction: the sums that matter are close to it.
    """

    def __init__(self, B: torch.Tensor, A: torch.Tensor, anchor: int) -> None:
        M, T, out_f, r = B.shape
        others = [t for t in range(T) if t != anchor]
        self.order = [anchor, *others]  # basis block j stands for checkpoint order[j]
        self.T, self.r = T, r
        left = torch.empty(M, out_f, T, r, dtype=B.dtype, device=B.device)
        Bt = B.transpose(1, 2)  # (M, out, T, r), a view
        left[:, :, 0] = Bt[:, :, anchor]
        right = torch.empty(M, T, r, A.shape[-1], dtype=A.dtype, device=A.device)
        right[:, 0] = A[:, anchor]
        for j, t in enumerate(others, start=1):
            torch.sub(Bt[:, :, t], Bt[:, :, anchor], out=left[:, :, j])
            torch.sub(A[:, t], A[:, anchor], out=right[:, j])
        self.left = left.view(M, out_f, T * r)
        self.right = right.view(M, T * r, A.shape[-1])
        self.gram_left = gram(self.left).double()
        self.gram_right = gram(self.right, columns=False).double()
        self._eigen: tuple[torch.Tensor, torch.Tensor] | None = None

    def update_gram(self) -> torch.Tensor:
        """``G[m, s, t] = <B_s A_s, B_t A_t>_F``, float64 ``(M, T, T)`` in the checkpoints' own order.

        Checkpoint ``t`` is basis block 0 plus its own block (``B_t = B_a + D_t``), so each of its ``r x r``
        products is a sum of four blocks of the Gram matrices already taken: no product of length
        ``out`` or ``in`` again (RELEX's fit in ``extrapolate`` shares the write's products this way).
        """
        M, T, r = self.gram_left.shape[0], self.T, self.r
        C = torch.zeros(T, T, dtype=torch.float64, device=self.gram_left.device)  # C[j, t]: block j in checkpoint t
        for j, t in enumerate(self.order):
            C[0, t] = 1.0
            C[j, t] = 1.0
        blocks = {}
        for side, G in (("left", self.gram_left), ("right", self.gram_right)):
            G = G.view(M, T, r, T, r)
            blocks[side] = torch.einsum("as,marbq,bt->msrtq", C, G, C)
        return torch.einsum("msrtq,msrtq->mst", blocks["left"], blocks["right"])

    def coefficients(self, weights: torch.Tensor) -> torch.Tensor:
        """``K (M, T, T)`` float64 with ``sum_t w_t B_t A_t = left (K kron I_r) right``, for ``weights (M, T)``."""
        w = weights.to(self.gram_left.device, torch.float64)[:, self.order]
        K = torch.diag_embed(w)
        K[:, 0, 0] = w.sum(-1)
        K[:, 0, 1:] = w[:, 1:]
        K[:, 1:, 0] = w[:, 1:]
        return K

    def _right_gram(self, K: torch.Tensor) -> torch.Tensor:
        """``(K kron I) G_right (K kron I)^T``, ``(M, T r, T r)``, by ``T x T`` contractions of the blocks."""
        M, T, r = K.shape[0], self.T, self.r
        G = self.gram_right.view(M, T, r, T, r)
        G = torch.einsum("msa,marbq->msrbq", K, G)
        G = torch.einsum("mtb,msrbq->msrtq", K, G)
        return G.reshape(M, T * r, T * r)

    def norm(self, weights: torch.Tensor) -> torch.Tensor:
        """``||sum_t w_t B_t A_t||_F`` per module, ``(M,)`` float64."""
        K = self.coefficients(weights)
        return (self.gram_left * self._right_gram(K)).sum((-1, -2)).clamp_min(0).sqrt()

    def truncated_svd(self, weights: torch.Tensor, keep: int) -> FactoredSVD | None:
        """The top ``keep`` singular triplets of ``sum_t w_t B_t A_t`` (as :func:`~nextrap.linalg.lowrank.truncated_svd`:
        every singular value in ``S``, only ``keep`` columns of ``U`` and rows of ``Vh``), or None where a
        module has fewer than ``keep`` nonzero singular values."""
        if self._eigen is None:  # the left Gram matrix does not depend on the weights
            self._eigen = torch.linalg.eigh(self.gram_left)
        K = self.coefficients(weights)
        M, T, r = K.shape[0], self.T, self.r

        def through_k(coef: torch.Tensor) -> torch.Tensor:  # coef (M, keep, T r) -> coef (K kron I), float64
            out = torch.einsum("mkaq,mab->mkbq", coef.double().reshape(M, -1, T, r), K)
            return out.reshape(M, -1, T * r)

        approx = svd_from_grams(self.left, self.right, self._eigen, self._right_gram(K), keep, through_k)
        if approx is None:
            return None
        # One step of subspace iteration from the Gram route's row space, then the exact projection on the
        # column space it gives: the Gram route squares the factors, so in float32 its directions are
        # good to about sqrt(eps); this step makes the rank-keep approximation as good as float32 products.
        rows_t = approx.Vh.transpose(-1, -2)  # (M, in, keep)
        dtype = self.left.dtype
        image = self.left @ through_k((self.right @ rows_t).transpose(-1, -2)).transpose(-1, -2).to(dtype)
        Q, _ = torch.linalg.qr(image)  # (M, out, keep)
        Z = through_k(Q.transpose(-1, -2) @ self.left).to(dtype) @ self.right
        # Z is keep x in: its SVD from its own keep x keep Gram matrix, in float64 (squaring costs nothing there).
        Zd = Z.double()
        lam, P = torch.linalg.eigh(Zd @ Zd.transpose(-1, -2))
        lam, P = lam.flip(-1).clamp_min(0), P.flip(-1)
        S = lam.sqrt()
        Vh = (P.transpose(-1, -2) @ Zd) / S.clamp_min(1e-300).unsqueeze(-1)
        tail = approx.S[..., keep:]
        return FactoredSVD(U=Q @ P.to(Q.dtype), S=torch.cat([S, tail], -1), Vh=Vh.to(self.right.dtype))
