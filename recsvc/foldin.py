"""A user's vector from their events and the model's fixed item factors (ALS "fold-in").

This is the user half-step of implicit's ALS, solved exactly (implicit 0.7, `implicit/cpu/_als.pyx`
`_least_squares`, which `AlternatingLeastSquares.recalculate_user` runs). With Y the item factors,
w_i the summed event weights of the user's items and c_i = alpha * w_i (implicit scales the
matrix by alpha; there is no "1 +"):

    x = (YᵀY + λI + Σ_i (c_i - 1) y_i y_iᵀ)⁻¹ Σ_i c_i y_i

Items with w_i <= 0 are left out, as training's matrix drops zero cells. λ is the manifest's
regularization, used as is (implicit does not scale it by the number of items).

BPR models (implicit's `BayesianPersonalizedRanking`) carry an item bias as the last column of
the item factors and a constant 1 as the last column of the user factors. Their objective has no
closed form for one user. Least squares against BPR's factors does not stand in for it: it learns
to cancel the item biases and ranks everything but the user's own items by noise (on ML-100K
its top 10 shared 1.7 items with BPR's own user vectors, and every real-time user got the same
rarely bought items). A BPR user vector is therefore the weighted mean of their items' factors,
scaled to the typical length of the model's user vectors (`user_norm`), with the 1 appended: it
points where the user's items point and weighs against the biases as BPR's own vectors do (5.6
of 10 shared on ML-100K).

ALS solves are batched: users are sorted by how many items they have and solved in chunks of
similar length, each one padded stack of small systems for `np.linalg.solve`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

_CHUNK_USERS = 256
_GRAM_ROWS = 65_536


class FoldIn:
    """Solves ALS user vectors against one model's item factors; precomputes YᵀY + λI once."""

    def __init__(self, item_factors: npt.NDArray[np.float32], *, regularization: float, alpha: float) -> None:
        self._items = item_factors
        self._alpha = float(alpha)
        self.factors = item_factors.shape[1]
        gram = np.zeros((self.factors, self.factors), dtype=np.float64)
        for start in range(0, len(item_factors), _GRAM_ROWS):  # bounded float64 temporaries
            block = np.asarray(item_factors[start : start + _GRAM_ROWS], dtype=np.float64)
            gram += block.T @ block
        self._gram = gram + float(regularization) * np.eye(self.factors)

    def solve(
        self,
        indptr: npt.NDArray[np.integer],
        indices: npt.NDArray[np.integer],
        weights: npt.NDArray[np.floating],
    ) -> npt.NDArray[np.float32]:
        """One vector per CSR row of (item index, summed weight); a row with no item gets zeros."""
        rows = len(indptr) - 1
        result = np.zeros((rows, self.factors), dtype=np.float32)
        lengths = np.diff(indptr)
        order = np.argsort(lengths, kind="stable")
        order = order[lengths[order] > 0]
        for start in range(0, len(order), _CHUNK_USERS):
            chunk = order[start : start + _CHUNK_USERS]
            result[chunk] = self._solve_padded(indptr, indices, weights, chunk, int(lengths[chunk].max()))
        return result

    def _solve_padded(
        self,
        indptr: npt.NDArray[np.integer],
        indices: npt.NDArray[np.integer],
        weights: npt.NDArray[np.floating],
        rows: npt.NDArray[np.intp],
        width: int,
    ) -> npt.NDArray[np.float32]:
        """Solve the rows `rows`, each padded to `width` items with zero-weight entries."""
        starts = np.asarray(indptr[rows], dtype=np.int64)
        lengths = np.asarray(indptr[rows + 1], dtype=np.int64) - starts
        slots = np.arange(width)
        present = slots[None, :] < lengths[:, None]
        positions = np.where(present, starts[:, None] + slots[None, :], 0)
        items = np.where(present, indices[positions], 0)
        confidence = np.where(present, self._alpha * np.asarray(weights, dtype=np.float64)[positions], 0.0)

        y = np.asarray(self._items[items.ravel()], dtype=np.float64).reshape(len(rows), width, -1)
        extra = np.where(present, confidence - 1.0, 0.0)  # the "- 1": YᵀY already counts each item once
        a = self._gram + np.matmul(y.transpose(0, 2, 1) * extra[:, None, :], y)
        b = np.einsum("ul,uld->ud", confidence, y)
        try:
            x = np.linalg.solve(a, b[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:  # singular only without regularization: least norm instead
            x = np.einsum("uij,uj->ui", np.linalg.pinv(a), b)
        return x.astype(np.float32)


class BprFoldIn:
    """BPR user vectors: the weighted mean direction of their items' factors (see the module)."""

    def __init__(self, item_factors: npt.NDArray[np.float32], *, user_norm: float) -> None:
        self._items = item_factors  # the last column is the item bias
        self._user_norm = float(user_norm)
        self.factors = item_factors.shape[1]

    def solve(
        self,
        indptr: npt.NDArray[np.integer],
        indices: npt.NDArray[np.integer],
        weights: npt.NDArray[np.floating],
    ) -> npt.NDArray[np.float32]:
        """One vector per CSR row, at `user_norm` with the bias's 1; a row with no item gets zeros."""
        rows = len(indptr) - 1
        matrix = sp.csr_matrix(
            (np.asarray(weights, dtype=np.float64), indices, indptr), shape=(rows, len(self._items))
        )
        summed = np.asarray(matrix @ np.asarray(self._items[:, :-1], dtype=np.float64))
        norms = np.linalg.norm(summed, axis=1)
        scale = np.divide(self._user_norm, norms, out=np.zeros(rows), where=norms > 0)
        result = np.zeros((rows, self.factors), dtype=np.float32)
        result[:, :-1] = summed * scale[:, None]
        result[:, -1] = norms > 0
        return result
