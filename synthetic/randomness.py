"""Counter-based randomness: every random number of the world is a hash of (seed, kind, index, field).

``_u(seed, kind, a, b, field)`` is a uniform number in [0, 1) computed by a splitmix64-style hash,
vectorised over ``a`` and ``b``; ``_rng`` seeds a numpy Generator from the same hash for the
pictures, which draw many numbers per item. The ``KIND_*`` constants keep each kind of row on
its own stream, so tables never share random numbers.
"""

from __future__ import annotations

import numpy as np

# Kinds of rows: each is a separate stream of the hash, so tables never share random numbers.
KIND_ITEM, KIND_IMAGE, KIND_USER, KIND_EVENT, KIND_IMPRESSION, KIND_CANDIDATE = 1, 2, 3, 4, 5, 6

# ----------------------------------------------------------------------------------------------
# Counter-based randomness: uniform(seed, kind, a, b, field) in [0, 1), vectorised over a and b.
# ----------------------------------------------------------------------------------------------

_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


_MASK = (1 << 64) - 1
_M1_INT, _M2_INT, _GOLDEN_INT = int(_M1), int(_M2), int(_GOLDEN)


def _mix_int(x: int) -> int:
    x = ((x ^ (x >> 30)) * _M1_INT) & _MASK
    x = ((x ^ (x >> 27)) * _M2_INT) & _MASK
    return x ^ (x >> 31)


def _hash(*parts) -> np.ndarray:
    """A 64-bit hash of integer parts (scalars or broadcastable arrays)."""
    if all(isinstance(p, (int, np.integer)) for p in parts):   # the same hash, without numpy's overhead
        h = _GOLDEN_INT
        for part in parts:
            h = _mix_int(h ^ ((int(part) + _GOLDEN_INT) & _MASK))
        return np.uint64(h)
    with np.errstate(over="ignore"):
        h = np.zeros(np.broadcast_shapes(*(np.shape(p) for p in parts)), dtype=np.uint64) + _GOLDEN
        for part in parts:
            h = _mix(h ^ (np.asarray(part).astype(np.int64).astype(np.uint64) + _GOLDEN))
    return h


def _u(seed: int, kind: int, a, b=0, field: int = 0) -> np.ndarray:
    """Uniform [0, 1) numbers, one per (a, b) pair, for one field of one kind of row."""
    h = _hash(seed, kind, a, b, field)
    if np.ndim(h) == 0:
        return (int(h) >> 11) * (1.0 / (1 << 53))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _pick(u: np.ndarray, n) -> np.ndarray:
    """Integer in [0, n) from a uniform (n may be an array)."""
    return np.minimum((np.asarray(u) * n).astype(np.int64), np.asarray(n) - 1)


def _normal(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def _rng(seed: int, kind: int, index: int) -> np.random.Generator:
    return np.random.default_rng(int(_hash(seed, kind, index)))
