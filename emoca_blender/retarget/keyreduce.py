"""Fewer keys, same motion: choose the keys of a densely sampled curve so that the curve
through them, with LINEAR interpolation, stays within a tolerance of every sample.

The curve is sampled at integer frames ``0..N-1`` (one sample per captured frame). The
selection is Douglas-Peucker (started from keys every :data:`CHUNK` samples, which are dropped
again where their neighbours' line is within the tolerance): a segment between two kept keys
is accepted when the straight line between them is within ``tol`` of every sample inside it,
else it is split at its worst sample. Every accepted segment was checked at every frame it spans, so the guarantee is exact
on the curve Blender plays (LINEAR keys evaluate to the straight line between them), up to the
float32 rounding of the stored keys, which :data:`MARGIN` covers. The first and last samples
are always kept; a flat curve keeps those 2.

Several curves can be reduced jointly (one set of key frames for all, e.g. the 4 components of
a bone's rotation quaternion) with an error function over the components:
:func:`quat_angle_deg` measures a quaternion curve by the rotation angle between the played
(component-wise linear, then normalised, as Blender's pose does) and the dense rotation.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

WEIGHT_TOLERANCE = 0.01      # shape-key weight
ANGLE_TOLERANCE_DEG = 0.2    # bone rotation angle
CHUNK = 256                  # initial key spacing (see reduce_many)
MARGIN = 1e-3                # fraction of the tolerance kept for float32 keys and evaluation


def abs_error(approx: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """(M,) largest absolute difference over the components of (M,) or (M, C) values."""
    d = np.abs(approx - exact)
    return d if d.ndim == 1 else d.max(axis=1)


def quat_angle_deg(approx: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """(M,) rotation angle in degrees between (M, 4) quaternions (each normalised first; q and
    -q are the same rotation): ``4 asin(|a - s e| / 2)`` with s the sign of ``a . e``."""
    a = approx / np.linalg.norm(approx, axis=1, keepdims=True).clip(1e-300)
    e = exact / np.linalg.norm(exact, axis=1, keepdims=True).clip(1e-300)
    s = np.where(np.sum(a * e, axis=1) < 0, -1.0, 1.0)[:, None]
    chord = np.linalg.norm(a - s * e, axis=1)
    return np.degrees(4.0 * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0)))


def reduce_keys(values, tol: float, error: Callable = abs_error) -> np.ndarray:
    """Indices of the samples to keep as LINEAR keys.

    Args:
        values: (N,) samples at frames 0..N-1, or (N, C) curves reduced jointly.
        tol: the largest error allowed at any frame (in ``error``'s unit).
        error: ``error(approx (M, ...), exact (M, ...)) -> (M,)``.
    Returns:
        (K,) increasing int indices, first 0 and last N-1 (K = N for N <= 2).
    """
    return reduce_many(np.asarray(values, np.float64)[None], tol, error)[0]


def reduce_many(curves, tol: float, error: Callable = abs_error) -> list[np.ndarray]:
    """:func:`reduce_keys` of each of ``curves`` ((M, N) or (M, N, C): M curves of N
    samples), all at once: the curves are laid end to end, each one's first and last sample
    kept, so no segment spans two curves. Returns M index arrays."""
    c = np.asarray(curves, np.float64)
    m, n = c.shape[:2]
    if n <= 2 or m == 0:
        return [np.arange(n) for _ in range(m)]
    if not tol > 0:
        raise ValueError(f"tolerance must be > 0, got {tol}")
    limit = tol * (1.0 - MARGIN)
    v = c.reshape((m * n,) + c.shape[2:])
    base = np.arange(m) * n
    # Start from keys every CHUNK samples: Douglas-Peucker peels one bump per level off a
    # segment that spans many similar bumps (a periodic curve: hundreds of levels); the
    # chunk keys bound the depth and are dropped again afterwards where not needed.
    grid = np.r_[np.arange(0, n - 1, CHUNK), n - 1]
    keep = (base[:, None] + grid[None]).reshape(-1)
    inner = np.zeros(m * n, bool)
    inner.reshape(m, n)[:, 1:-1] = True
    active = np.flatnonzero(inner)   # samples inside segments not yet within the limit
    # Level by level: the samples of every unresolved segment checked at once (vectorised);
    # each segment whose worst sample is beyond the limit is split there, the others are
    # done. The result is the recursive Douglas-Peucker's (segments split independently).
    while active.size:
        err = error(evaluate_linear(active, keep, v[keep]), v[active])
        seg = np.searchsorted(keep, active, side="right") - 1
        starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
        counts = np.diff(np.r_[starts, active.size])
        seg_max = np.maximum.reduceat(err, starts)
        bad = np.repeat(seg_max > limit, counts)
        hit = np.flatnonzero(bad & (err == np.repeat(seg_max, counts)))
        if not hit.size:
            break
        first = hit[np.r_[True, seg[hit][1:] != seg[hit][:-1]]]
        keep = np.union1d(keep, active[first])
        bad[first] = False
        active = active[bad]
    owner = keep // n
    out = [keep[owner == i] - i * n for i in range(m)]
    grid_set = grid[1:-1]
    if grid_set.size:
        out = [_drop_unneeded(c[i], k, grid_set, limit, error) for i, k in enumerate(out)]
    return out


def _drop_unneeded(v, keep, candidates, limit, error) -> np.ndarray:
    """``keep`` without those of ``candidates`` whose neighbours' straight line is within
    ``limit`` of every sample between them (checked in order, after each removal)."""
    keep = list(keep)
    pos = {k: i for i, k in enumerate(keep)}
    drop = set()
    for b in candidates:
        i = pos[b]
        lo = i - 1
        while keep[lo] in drop:
            lo -= 1
        a, c = keep[lo], keep[i + 1]
        f = np.arange(a + 1, c)
        t = ((f - a) / (c - a)).reshape((-1,) + (1,) * (v.ndim - 1))
        line = v[a] + t * (v[c] - v[a])
        if float(error(line, v[a + 1:c]).max()) <= limit:
            drop.add(b)
    return np.array([k for k in keep if k not in drop], int)


def evaluate_linear(frames, keys_frames, keys_values) -> np.ndarray:
    """The LINEAR curve through the keys at ``frames``: (M,) or (M, C)."""
    kv = np.asarray(keys_values, np.float64)
    f = np.asarray(frames, np.float64)
    if kv.ndim == 1:
        return np.interp(f, keys_frames, kv)
    return np.stack([np.interp(f, keys_frames, kv[:, c]) for c in range(kv.shape[1])], -1)


def max_error(values, keep, error: Callable = abs_error) -> float:
    """The largest ``error`` over every frame of the curve through ``values[keep]``."""
    v = np.asarray(values, np.float64)
    approx = evaluate_linear(np.arange(v.shape[0]), keep, v[keep])
    return float(error(approx, v).max()) if v.shape[0] else 0.0


__all__ = ["reduce_keys", "reduce_many", "abs_error", "quat_angle_deg", "evaluate_linear", "max_error",
           "WEIGHT_TOLERANCE", "ANGLE_TOLERANCE_DEG", "MARGIN"]
