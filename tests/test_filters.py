"""Gap filling and the temporal filter."""
import numpy as np

from emoca_blender import filters


def test_fill_gaps_interpolates_short_and_holds_long():
    N = 30
    x = np.arange(N, dtype=float)[:, None] * 2.0
    found = np.ones(N, bool)
    found[5:8] = False      # 3-frame gap: interpolated
    found[15:25] = False    # 10-frame gap: held
    found[:2] = False       # before the first detection: first value
    x[~found] = np.nan
    filled, valid, interp = filters.fill_gaps(x, found, max_gap=5)
    assert np.isfinite(filled).all()
    np.testing.assert_allclose(filled[5:8, 0], [10, 12, 14])
    assert interp[5:8].all() and valid[5:8].all()
    np.testing.assert_allclose(filled[15:25, 0], 28.0)       # last valid value (frame 14)
    assert not valid[15:25].any() and not interp[15:25].any()
    np.testing.assert_allclose(filled[:2, 0], 4.0)
    assert not valid[:2].any()


def test_smooth_reduces_jitter_without_lag():
    fps = 30.0
    t = np.arange(300) / fps
    clean = 0.5 + 0.4 * np.sin(2 * np.pi * 0.5 * t)
    rng = np.random.default_rng(0)
    noisy = clean + rng.normal(0, 0.03, t.size)
    out = filters.smooth(noisy[:, None], fps, 0.5)[:, 0]
    jitter = lambda y: np.abs(np.diff(y, 2)).mean()  # noqa: E731
    assert jitter(out) < jitter(noisy) / 3
    # zero-phase: best lag of the cross-correlation with the clean signal is 0
    lags = range(-5, 6)
    err = [np.abs(np.roll(out, k)[10:-10] - clean[10:-10]).mean() for k in lags]
    assert list(lags)[int(np.argmin(err))] == 0
    assert np.abs(out - clean).mean() < np.abs(noisy - clean).mean()


def test_smooth_off_and_segments():
    x = np.random.default_rng(1).normal(size=(50, 3))
    np.testing.assert_array_equal(filters.smooth(x, 30, 0.0), x)
    valid = np.ones(50, bool)
    valid[20:30] = False
    out = filters.smooth(x, 30, 0.8, valid)
    np.testing.assert_array_equal(out[20:30], x[20:30])   # held frames are untouched
