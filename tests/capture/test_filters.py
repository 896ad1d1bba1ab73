"""Gap filling and the temporal filter."""
import numpy as np

from emoca_blender.capture import filters


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


def test_fast_channels_keep_blink_and_scream_peaks():
    """A 3-frame blink and a 5-frame scream peak (with 0.01 jitter) through the default
    strength: the fast channels (eyeBlink, jawOpen) keep their peak within PEAK_TOLERANCE;
    the same curves as slow channels (e.g. a brow) would lose a third or more of it; no lag."""
    from emoca_blender.arkit import ARKIT_NAMES, INDEX

    fps, N = 30.0, 120
    rng = np.random.default_rng(0)
    x = np.zeros((N, len(ARKIT_NAMES)))
    blink = np.zeros(N)
    blink[50:53] = [0.6, 1.0, 0.6]
    scream = np.zeros(N)
    scream[80:85] = [0.3, 0.7, 1.0, 0.7, 0.3]
    for n in ("eyeBlinkLeft", "browDownLeft"):
        x[:, INDEX[n]] = blink
    for n in ("jawOpen", "browInnerUp"):
        x[:, INDEX[n]] = scream
    x += rng.normal(0, 0.01, x.shape)
    out = filters.smooth_by_group(x, fps, 0.5, None, ARKIT_NAMES)
    for n, peak in (("eyeBlinkLeft", 51), ("jawOpen", 82)):
        c = INDEX[n]
        assert out[peak, c] >= x[peak, c] - filters.PEAK_TOLERANCE - 1e-9
        assert int(np.argmax(out[:, c])) == peak                 # no lag
    assert out[51, INDEX["browDownLeft"]] < 0.7                  # a slow channel is smoothed
    assert out[82, INDEX["browInnerUp"]] < 0.85
    # jitter on the fast channels' quiet frames is reduced, never by more than the tolerance
    q = slice(5, 45)
    c = INDEX["eyeBlinkLeft"]
    assert np.abs(np.diff(out[q, c], 2)).mean() < 0.8 * np.abs(np.diff(x[q, c], 2)).mean()
    assert np.abs(out[:, c] - x[:, c]).max() <= filters.PEAK_TOLERANCE + 1e-12


def test_keep_peaks_bounds_the_correction():
    raw = np.array([0.0, 1.0, 0.0])
    np.testing.assert_allclose(filters.keep_peaks(raw, np.array([0.3, 0.5, 0.3]), 0.1),
                               [0.1, 0.9, 0.1])
