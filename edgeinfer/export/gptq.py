"""GPTQ (Frantar et al., 2022) on the LPBQ int4 grid: round a weight's input rows one at a time, and after each,
move the rounding error onto the rows not yet rounded, in the proportions the calibration activations make the
error cheapest for the layer's output.

For y = x W (W: [K, N], K input rows), the output error of a rounded W is (dW)^T H (dW) per column, H = X^T X over
calibration inputs X. Rounding row i leaves an error e_i = w_i - q_i; with U the upper Cholesky factor of H^-1,
the best correction of the rows after it is -U[i, i+1:]^T e_i / U[i, i] (the Optimal Brain Surgeon step). Rows go
in act order (largest H diagonal first: the inputs that carry the most energy are rounded while the most rows are
left to absorb their error), in batches whose updates reach the remaining rows as one matrix product.

The block scales are chosen first, from the unrounded weights (int4_blocks.lpbq_scales), and stay fixed ("static
groups"): each row rounds on its own block's scale whatever order it comes in, so the result is an ordinary LPBQ
weight that the HTP and the CPU EP read exactly as they read int4_blocks' round-to-nearest ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .int4_blocks import INT4_MAX, lpbq_scales

DAMPING = 0.01  # of the mean H diagonal, added to the diagonal: H from a few thousand tokens is rank-deficient
BATCH = 128  # rows whose error updates reach the rest in one product
STEP = 512  # block size of the factorizations


@dataclass(frozen=True)
class InverseHessian:
    """What GPTQ needs of one input's H, shared by every weight that reads that input (q/k/v, gate/up): the act
    order, the inputs that never fired, and U (upper, U^T U = H^-1, in act order)."""

    order: np.ndarray
    dead: np.ndarray
    u: np.ndarray

    @classmethod
    def of(cls, hessian: np.ndarray, damping: float = DAMPING) -> "InverseHessian":
        """From HESSIAN (float32 [K, K]; overwritten: at K = 8,960 each copy costs a second on the export box)."""
        h = hessian
        dead = np.diag(h) <= 0  # inputs that were always zero: their rows cannot matter, round them to zero
        h[dead, dead] = 1.0
        h[np.diag_indices(len(h))] += damping * float(np.mean(np.diag(h)))
        order = np.argsort(-np.diag(h), kind="stable")
        return cls(order, dead, upper_cholesky_of_inverse(h, order))


def gptq_int4_blocks(weight_kn: np.ndarray, inverse: InverseHessian, block: int) -> tuple[np.ndarray, np.ndarray]:
    """WEIGHT [K, N] -> (q int8 [K, N] in -7..7, scales [K // BLOCK, N]), the encoding of int4_blocks with the
    rounding chosen by GPTQ for the inputs INVERSE describes."""
    scales = lpbq_scales(weight_kn, block)
    return gptq_round(weight_kn, inverse, scales, np.zeros_like(scales), -INT4_MAX, INT4_MAX, np.int8), scales


def gptq_round(weight_kn: np.ndarray, inverse: InverseHessian, scales: np.ndarray, zeros: np.ndarray,
               low: int, high: int, dtype) -> np.ndarray:
    """WEIGHT [K, N] rounded by GPTQ on fixed SCALES and ZEROS [K // BLOCK, N] ("static groups"): levels of DTYPE
    [K, N] in LOW..HIGH, a weight being (level - zero) * scale."""
    rows, columns = weight_kn.shape
    block = rows // scales.shape[0]
    w = np.array(weight_kn, dtype=np.float32)
    w[inverse.dead] = 0.0
    w = w[inverse.order]
    row_scales, row_zeros = scales[inverse.order // block], zeros[inverse.order // block]  # [K, N]: each row's block's
    u = inverse.u
    q = np.empty((rows, columns), dtype=dtype)
    for start in range(0, rows, BATCH):
        stop = min(start + BATCH, rows)
        errors = np.empty((stop - start, columns), dtype=np.float32)
        for i in range(start, stop):
            level = np.clip(np.rint(w[i] / row_scales[i]) + row_zeros[i], low, high)
            q[i] = level
            errors[i - start] = (w[i] - (level - row_zeros[i]) * row_scales[i]) / u[i, i]
            w[i + 1 : stop] -= np.outer(u[i, i + 1 : stop], errors[i - start])
        w[stop:] -= u[start:stop, stop:].T @ errors
    restored = np.empty_like(q)
    restored[inverse.order] = q
    return restored


class LinearInputs:
    """The calibration inputs of the weight matmuls, by input tensor, gathered run by run: rows are kept until
    there are as many as the input has channels, then folded into X^T X (whichever is smaller stays)."""

    def __init__(self, tensors: set[str]):
        self.tensors = tensors
        self.rows: dict[str, list[np.ndarray]] = {name: [] for name in tensors}
        self.gram: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = dict.fromkeys(tensors, 0)
        self.real_rows: int | None = None  # set by the caller around a left-padded run: only its last rows are data

    def add(self, name: str, values: np.ndarray) -> None:
        rows = values.reshape(-1, values.shape[-1])
        if self.real_rows is not None:
            rows = rows[-self.real_rows :]
        self.rows[name].append(np.array(rows, dtype=np.float32))
        self.counts[name] += len(rows)
        if sum(len(r) for r in self.rows[name]) >= rows.shape[1]:
            self._fold(name)

    def _fold(self, name: str) -> None:
        if self.rows[name]:
            x = np.concatenate(self.rows[name])
            self.gram[name] = self.gram.get(name, 0) + x.T @ x
            self.rows[name] = []

    def hessian(self, name: str) -> np.ndarray:
        """X^T X over every row gathered for NAME; NAME's rows and sum are released."""
        self._fold(name)
        self.rows.pop(name)
        return self.gram.pop(name)


def upper_cholesky_of_inverse(h: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """U upper triangular with U^T U = P^T H^-1 P (H with rows and columns in ORDER), from one Cholesky
    factorization: with J the reversal and J H J = L L^T, H = (J L J)(J L J)^T where J L J is upper triangular, so
    U = (J L J)^-1 = J L^-1 J. The permutation and the reversal are one gather, and the result's flips are a view."""
    backwards = (np.arange(len(h)) if order is None else order)[::-1]
    lower = blocked_cholesky(h[np.ix_(backwards, backwards)], overwrite=True)  # the gather made a fresh array
    return _lower_triangular_inverse(lower)[::-1, ::-1]


def blocked_cholesky(a: np.ndarray, step: int = STEP, overwrite: bool = False) -> np.ndarray:
    """Lower L with L L^T = A, by blocks of STEP: each block column is one small factorization and matrix products
    (numpy's LAPACK call took 9.9 s for an 8,960-wide H on two cores, this 3.8 s). OVERWRITE: work in A itself."""
    a = a if overwrite else np.array(a, dtype=np.float32)
    n = len(a)
    for start in range(0, n, step):
        stop = min(start + step, n)
        corner = np.linalg.cholesky(a[start:stop, start:stop])  # reads the lower triangle only
        a[start:stop, start:stop] = corner
        a[start:stop, stop:] = 0.0
        if stop == n:
            break
        panel = a[stop:, start:stop] @ _lower_triangular_inverse(corner).T
        a[stop:, start:stop] = panel
        for column in range(stop, n, step):  # the trailing update, lower triangle only
            end = min(column + step, n)
            a[column:, column:end] -= panel[column - stop :] @ panel[column - stop : end - stop].T
    return a


def _lower_triangular_inverse(lower: np.ndarray, step: int = STEP) -> np.ndarray:
    """L^-1 for lower triangular L, by blocked forward substitution (numpy has no triangular solver; a general
    solve would cost three times as much)."""
    n = lower.shape[0]
    inverse = np.zeros_like(lower)
    for start in range(0, n, step):
        stop = min(start + step, n)
        diagonal = np.tril(np.linalg.inv(lower[start:stop, start:stop]))  # exactly triangular: inv leaves ~1e-17 above
        inverse[start:stop, start:stop] = diagonal
        # Rows START:STOP of L^-1: L[s, :s] X[:s] + L[s, s] X[s] = 0 below the diagonal, I on it; X[:s, :s] is lower
        # triangular, so each block column of the product reads only the rows at and below it.
        for column in range(0, start, step):
            end = min(column + step, start)
            inverse[start:stop, column:end] = -diagonal @ (lower[start:stop, column:start] @ inverse[column:start, column:end])
    return inverse
