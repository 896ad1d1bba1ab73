"""Temporal filtering and gap handling of per-frame curves.

* :func:`fill_gaps`: short runs of missing frames (at most ``max_gap``) are linearly
  interpolated and flagged; longer runs stay invalid and hold the last valid value (the
  first valid value before the first detection), so nothing is ever NaN.
* :func:`one_euro`: the One-Euro filter (Casiez, Roussel, Vogel, CHI 2012), vectorised over
  channels; adaptive cutoff ``fc = min_cutoff + beta * |dx/dt|`` keeps fast motion sharp and
  still poses quiet.
* :func:`smooth`: the user-facing filter. Captures are offline, so it runs the One-Euro
  filter forwards and backwards and averages the two passes, cancelling the causal lag.
  ``strength`` in [0, 1]; 0 turns filtering off.
* :func:`keep_peaks`: per channel group, fast channels (jaw, mouth opening, lips and lids)
  keep their peaks: the smoothed curve may leave the measured one by at most a small
  tolerance, so jitter below it is removed while a 3-frame blink or a scream's peak is
  not cut. Slower channels (brows, smile, cheeks...) get the full smoothing.
"""
from __future__ import annotations

import numpy as np

from .solve import CHANNEL_GROUPS, FAST_GROUPS, JAW_OPEN_RADIANS


def fill_gaps(values: np.ndarray, found: np.ndarray, max_gap: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fill missing frames.

    Args:
        values: (N, ...) per-frame values; rows where ``found`` is False are ignored.
        found: (N,) bool, a measurement exists this frame.
        max_gap: gaps of at most this many frames between two measurements are interpolated.
    Returns:
        filled (N, ...) float values (NaN-free), valid (N,) bool, interpolated (N,) bool.
    """
    values = np.asarray(values, dtype=np.float64)
    found = np.asarray(found, dtype=bool)
    N = found.shape[0]
    filled = values.copy()
    valid = found.copy()
    interp = np.zeros(N, dtype=bool)
    idx = np.flatnonzero(found)
    if idx.size == 0:
        filled[:] = 0.0
        return filled, valid, interp
    flat = filled.reshape(N, -1)
    # interpolate inner gaps no longer than max_gap
    for a, b in zip(idx[:-1], idx[1:]):
        gap = b - a - 1
        if gap <= 0:
            continue
        if gap <= max_gap:
            t = (np.arange(1, gap + 1) / (gap + 1))[:, None]
            flat[a + 1:b] = flat[a] * (1 - t) + flat[b] * t
            valid[a + 1:b] = True
            interp[a + 1:b] = True
        else:
            flat[a + 1:b] = flat[a]  # hold the last pose
    flat[: idx[0]] = flat[idx[0]]
    flat[idx[-1] + 1:] = flat[idx[-1]]
    return filled, valid, interp


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray:
    tau = 1.0 / (2 * np.pi * np.asarray(cutoff))
    return 1.0 / (1.0 + tau / dt)


def one_euro(x: np.ndarray, fps: float, min_cutoff: float = 1.0, beta: float = 0.0,
             d_cutoff: float = 1.0) -> np.ndarray:
    """Causal One-Euro filter along axis 0.

    Args:
        x: (N, C) curves sampled at ``fps``.
        min_cutoff: Hz, cutoff at rest (lower = smoother).
        beta: speed coefficient (higher = less lag in fast motion), per unit of x per second.
        d_cutoff: Hz, cutoff of the derivative estimate.
    Returns:
        (N, C) filtered curves.
    """
    x = np.asarray(x, dtype=np.float64)
    N = x.shape[0]
    out = np.empty_like(x)
    if N == 0:
        return out
    dt = 1.0 / fps
    a_d = _alpha(d_cutoff, dt)
    prev = x[0].copy()
    dprev = np.zeros_like(prev)
    out[0] = prev
    for i in range(1, N):
        dx = (x[i] - prev) / dt
        dprev = dprev + a_d * (dx - dprev)
        a = _alpha(min_cutoff + beta * np.abs(dprev), dt)
        prev = prev + a * (x[i] - prev)
        out[i] = prev
    return out


def strength_params(strength: float) -> tuple[float, float]:
    """Map a user strength in (0, 1] to One-Euro (min_cutoff Hz, beta)."""
    s = float(np.clip(strength, 0.0, 1.0))
    # Tuned on ARKit-range curves (units of weight per second): strength 0.5 gives 1 Hz at
    # rest and cuts second-difference jitter ~5x on 0.03-sigma noise with zero phase lag.
    min_cutoff = 4.0 * (0.25 / 4.0) ** s   # 4 Hz (light) .. 0.25 Hz (heavy) at rest
    beta = 1.0 * (1.0 - s) + 0.25 * s
    return min_cutoff, beta


def smooth(x: np.ndarray, fps: float, strength: float, valid: np.ndarray | None = None
           ) -> np.ndarray:
    """Zero-lag smoothing (forward + backward One-Euro, averaged) of (N, ...) curves.

    Runs separately on each run of valid frames so a held pose never bleeds into motion.
    ``strength`` 0 returns a copy.
    """
    x = np.asarray(x, dtype=np.float64)
    if strength <= 0 or x.shape[0] < 3:
        return x.copy()
    N = x.shape[0]
    flat = x.reshape(N, -1)
    out = flat.copy()
    min_cutoff, beta = strength_params(strength)
    if valid is None:
        valid = np.ones(N, dtype=bool)
    # runs of consecutive valid frames
    edges = np.flatnonzero(np.diff(np.concatenate([[0], valid.astype(np.int8), [0]])))
    for a, b in zip(edges[::2], edges[1::2]):
        seg = flat[a:b]
        if seg.shape[0] < 3:
            continue
        fwd = one_euro(seg, fps, min_cutoff, beta)
        bwd = one_euro(seg[::-1], fps, min_cutoff, beta)[::-1]
        out[a:b] = 0.5 * (fwd + bwd)
    return out.reshape(x.shape)


#: fast channels get this fraction of the user's strength (a lighter One-Euro filter) ...
FAST_STRENGTH = 0.25
#: ... and may leave the measured curve by at most this (ARKit weight units): above the
#: median correction the full filter makes on every bench clip (0.002-0.020), far below a
#: blink's or a scream's peak
PEAK_TOLERANCE = 0.03
#: the same for the jaw bone (radians): PEAK_TOLERANCE of jawOpen's rotation
JAW_PEAK_TOLERANCE = PEAK_TOLERANCE * JAW_OPEN_RADIANS


def keep_peaks(raw: np.ndarray, smoothed: np.ndarray, tolerance: float) -> np.ndarray:
    """The smoothed curves, never further than ``tolerance`` from the measured ones.

    Zero lag like :func:`smooth` (the result is the measurement plus a bounded, zero-phase
    correction): peaks keep all but ``tolerance`` of their height, jitter smaller than
    ``tolerance`` is removed.
    """
    raw = np.asarray(raw, np.float64)
    return raw + np.clip(np.asarray(smoothed, np.float64) - raw, -tolerance, tolerance)


def fast_columns(names) -> np.ndarray:
    """Indices of the fast channels (solve.FAST_GROUPS) among column ``names``."""
    fast = {n for g in FAST_GROUPS for n in CHANNEL_GROUPS[g]}
    return np.array([i for i, n in enumerate(names) if n in fast], np.int64)


def smooth_by_group(x: np.ndarray, fps: float, strength: float, valid: np.ndarray | None,
                    names=None, tolerance: float | None = None) -> np.ndarray:
    """:func:`smooth` per channel group: columns named in a fast group (all columns when
    ``names`` is None and ``tolerance`` is given, e.g. the jaw bone) get FAST_STRENGTH of
    the strength and keep their peaks within ``tolerance`` (default PEAK_TOLERANCE); the
    other columns get the full strength."""
    out = smooth(x, fps, strength, valid)
    if names is None and tolerance is None:
        return out
    x = np.asarray(x, np.float64)
    cols = np.arange(x.shape[1]) if names is None else fast_columns(names)
    if cols.size:
        light = smooth(x[:, cols], fps, strength * FAST_STRENGTH, valid)
        out[:, cols] = keep_peaks(x[:, cols], light,
                                  PEAK_TOLERANCE if tolerance is None else tolerance)
    return out
