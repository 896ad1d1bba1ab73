"""Key reduction (issue 15 item 2): LINEAR keys within a tolerance of every sample."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from emoca_blender.retarget import keyreduce  # noqa: E402
from emoca_blender.retarget.keyreduce import max_error, quat_angle_deg, reduce_keys  # noqa: E402


def _check(v, keep, tol, error=keyreduce.abs_error):
    assert keep[0] == 0 and keep[-1] == len(v) - 1
    assert np.all(np.diff(keep) > 0)
    assert max_error(v, keep, error) <= tol


def test_flat_curve_keeps_two_keys():
    keep = reduce_keys(np.full(500, 0.3), 0.01)
    assert keep.tolist() == [0, 499]


def test_step():
    v = np.where(np.arange(300) < 120, 0.0, 1.0)
    keep = reduce_keys(v, 0.01)
    _check(v, keep, 0.01)
    assert keep.tolist() == [0, 119, 120, 299]


def test_ramp():
    v = np.linspace(0.0, 1.0, 400)
    keep = reduce_keys(v, 0.01)
    _check(v, keep, 0.01)
    assert len(keep) == 2


@pytest.mark.parametrize("tol", [0.01, 0.03])
def test_sine_with_noise(tol):
    rng = np.random.default_rng(0)
    t = np.arange(1000) / 30.0
    v = 0.5 + 0.4 * np.sin(2 * np.pi * 0.4 * t) + rng.normal(0, 0.002, t.size)
    keep = reduce_keys(v, tol)
    _check(v, keep, tol)
    assert len(keep) < len(v) / 5


def test_error_everywhere_is_measured_between_keys():
    # every frame of the played curve (np.interp through the keys) is within the tolerance
    rng = np.random.default_rng(1)
    v = np.cumsum(rng.normal(0, 0.01, 2000))
    keep = reduce_keys(v, 0.01)
    played = np.interp(np.arange(v.size), keep, v[keep])
    assert np.abs(played - v).max() <= 0.01
    assert len(keep) < len(v)


def test_short_curves_and_bad_tolerance():
    assert reduce_keys(np.zeros(0), 0.01).tolist() == []
    assert reduce_keys(np.array([1.0]), 0.01).tolist() == [0]
    assert reduce_keys(np.array([1.0, 2.0]), 0.01).tolist() == [0, 1]
    with pytest.raises(ValueError):
        reduce_keys(np.arange(5.0), 0.0)


def _quats(angles, axis):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    return np.concatenate([np.cos(angles / 2)[:, None], np.sin(angles / 2)[:, None] * axis], 1)


def test_quat_angle_metric():
    a = _quats(np.radians([0.0, 10.0]), [0, 0, 1])
    b = _quats(np.radians([0.5, 10.0]), [0, 0, 1])
    np.testing.assert_allclose(quat_angle_deg(a, b), [0.5, 0.0], atol=1e-9)
    np.testing.assert_allclose(quat_angle_deg(a, -2.0 * b), [0.5, 0.0], atol=1e-9)  # q ~ -q


def test_quaternion_curve_jointly_within_angle():
    rng = np.random.default_rng(2)
    t = np.arange(900) / 30.0
    ang = np.radians(8) * np.sin(2 * np.pi * 0.2 * t) + np.radians(0.01) * rng.normal(size=t.size)
    axis = np.stack([np.ones_like(t), 0.3 * np.sin(0.5 * t), 0.2 + 0 * t], 1)
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    q = np.concatenate([np.cos(ang / 2)[:, None], np.sin(ang / 2)[:, None] * axis], 1)
    keep = reduce_keys(q, 0.2, quat_angle_deg)
    _check(q, keep, 0.2, quat_angle_deg)
    assert len(keep) < len(q) / 5


def test_long_periodic_curves_many_at_once():
    # 100 periods over 10,000 frames (plain Douglas-Peucker goes ~200 levels deep here),
    # several curves at once, and long flat ones: the starting chunk keys are dropped again
    n = 10_000
    t = np.arange(n) / 30.0
    curves = np.stack([0.5 + 0.5 * np.sin(2 * np.pi * 0.3 * t + p) for p in (0.0, 1.0)]
                      + [np.full(n, 0.2), np.where(t < 100, 0.0, 1.0)])
    keep = keyreduce.reduce_many(curves, 0.01)
    for v, k in zip(curves, keep):
        _check(v, k, 0.01)
        assert len(k) < n / 5
    assert keep[2].tolist() == [0, n - 1]
    assert keep[3].tolist() == [0, 2999, 3000, n - 1]
