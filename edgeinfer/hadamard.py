"""Orthogonal matrices for rotating a model's residual stream: randomized Hadamard where one is built here.

Used by the exporter to fold the rotation into the weights (export/rotation.py) and by `edgeinfer verify` to compare
a rotated package's hidden states with an unrotated reference; the manifest names the construction and seed.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

KIND = "randomized-hadamard-v1"  # what the manifest records: change it if the construction below changes
SEED = 20240404  # fixed: an export is reproducible bit for bit


def sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def paley(n: int) -> np.ndarray | None:
    """Hadamard matrix of order n = q + 1 for a prime q = 3 (mod 4) (Paley's first construction), else None."""
    q = n - 1
    if q < 3 or q % 4 != 3 or any(q % d == 0 for d in range(2, int(q**0.5) + 1)):
        return None
    residues = {(i * i) % q for i in range(1, q)}
    chi = np.array([0] + [1 if i in residues else -1 for i in range(1, q)])
    jacobsthal = np.array([[chi[(j - i) % q] for j in range(q)] for i in range(q)])
    s = np.zeros((n, n))
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, jacobsthal
    return s + np.eye(n)


def hadamard(size: int) -> np.ndarray | None:
    """A Hadamard matrix of order SIZE as Paley(m) x Sylvester(SIZE / m) for the smallest m that works
    (1536 = 12 x 128, 896 = 224 x 4, 3072 = 12 x 256), or None."""
    m = size // (size & -size)  # the odd part
    while size % m == 0:
        base = np.ones((1, 1)) if m == 1 else paley(m)
        if base is not None:
            return np.kron(base, sylvester(size // m))
        m *= 2
    return None


@lru_cache(maxsize=4)
def rotation(size: int) -> np.ndarray:
    """An orthogonal [size, size] float64 matrix: random signs times a normalized Hadamard matrix, or a seeded
    random orthogonal one for an order no construction here reaches."""
    rng = np.random.default_rng(SEED)
    signs = rng.choice([-1.0, 1.0], size)
    h = hadamard(size)
    if h is not None:
        h = h / np.sqrt(size)
    else:
        h, r = np.linalg.qr(rng.standard_normal((size, size)))
        h *= np.sign(np.diag(r))
    return signs[:, None] * h
