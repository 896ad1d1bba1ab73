"""Emotion metrics and the recognition loss against independent numpy/scipy computations,
and the emotion MLP on synthetic data."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from emoca_blender.emotion import metrics as M

torch = pytest.importorskip("torch")


def _ccc_ref(y, p):
    # Lin (1989) via scipy's Pearson r and population standard deviations
    r = stats.pearsonr(y, p)[0]
    sy, sp = np.std(y), np.std(p)
    return 2 * r * sy * sp / (sy ** 2 + sp ** 2 + (np.mean(y) - np.mean(p)) ** 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_scipy(seed):
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1, 1, 200)
    p = 0.7 * y + 0.2 + rng.normal(0, 0.3, 200)
    assert M.rmse(y, p) == pytest.approx(np.sqrt(np.mean((y - p) ** 2)), rel=1e-12)
    assert M.pcc(y, p) == pytest.approx(stats.pearsonr(y, p)[0], rel=1e-10)
    assert M.ccc(y, p) == pytest.approx(_ccc_ref(y, p), rel=1e-10)
    agree = sum((a > 0) == (b > 0) for a, b in zip(y, p)) / len(y)   # no zeros here
    assert M.sagr(y, p) == pytest.approx(agree)
    assert M.ccc(y, y) == pytest.approx(1.0) and M.pcc(y, -y) == pytest.approx(-1.0)
    assert M.ccc(y, y + 0.5) < M.pcc(y, y + 0.5) == pytest.approx(1.0)  # bias costs CCC only


def test_metric_edge_cases():
    y = np.array([0.1, -0.2, 0.4, 0.0])
    const = np.full(4, 0.3)
    assert M.pcc(y, const) == 0.0                        # undefined -> 0
    assert M.ccc(y, const) == pytest.approx(0.0)         # covariance 0
    assert M.ccc(const, const) == 1.0                    # the same constant
    assert M.ccc(const, const + 1) == 0.0
    assert M.rmse([0.5], [0.2]) == pytest.approx(0.3)    # a single sample
    assert M.pcc([0.5], [0.2]) == 0.0 and M.ccc([0.5], [0.2]) == 0.0
    assert M.sagr([0.0, 1.0, -1.0], [0.0, 2.0, 1.0]) == pytest.approx(2 / 3)  # sign(0) = 0
    with pytest.raises(ValueError):
        M.rmse([], [])
    with pytest.raises(ValueError):
        M.ccc([1, 2], [1, 2, 3])


def test_torch_metrics_match_numpy_and_have_gradients():
    rng = np.random.default_rng(3)
    y = rng.uniform(-1, 1, 64)
    p = y * 0.5 + rng.normal(0, 0.2, 64)
    yt, pt = torch.tensor(y), torch.tensor(p, requires_grad=True)
    assert float(M.pcc_torch(yt, pt).detach()) == pytest.approx(M.pcc(y, p), rel=1e-6)
    assert float(M.ccc_torch(yt, pt).detach()) == pytest.approx(M.ccc(y, p), rel=1e-6)
    M.ccc_torch(yt, pt).backward()
    assert torch.isfinite(pt.grad).all() and pt.grad.abs().sum() > 0


def test_recognition_loss_terms():
    rng = np.random.default_rng(4)
    B, C = 32, 7
    logits = torch.tensor(rng.standard_normal((B, C)), dtype=torch.float64)
    cls = torch.tensor(rng.integers(0, C, B))
    va_t = rng.uniform(-1, 1, (B, 2))
    va_p = va_t * 0.6 + rng.normal(0, 0.2, (B, 2))
    w = (0.2, 0.3, 0.5)
    loss, terms = M.recognition_loss(logits, cls, torch.tensor(va_p), torch.tensor(va_t),
                                     weights=w)
    # independent: CE by log-softmax in numpy, MSE/PCC/CCC by scipy formulas
    z = logits.numpy()
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    ce = np.mean(lse - z[np.arange(B), cls.numpy()])
    ref = ce
    for d in range(2):
        y, p = va_t[:, d], va_p[:, d]
        ref += w[0] * np.mean((y - p) ** 2) + w[1] * (1 - stats.pearsonr(y, p)[0]) \
            + w[2] * (1 - _ccc_ref(y, p))
    assert float(loss) == pytest.approx(ref, rel=1e-6)
    assert terms["ce"] == pytest.approx(ce, rel=1e-6)


def test_shake_shake_weights_are_random_and_normalised():
    g = torch.Generator().manual_seed(0)
    ws = torch.stack([M.shake_weights(g) for _ in range(500)])
    assert torch.allclose(ws.sum(1), torch.ones(500, dtype=ws.dtype))
    assert (ws >= 0).all() and ws.std(0).min() > 0.05     # redrawn each batch
    assert torch.allclose(ws.mean(0), torch.full((3,), 1 / 3, dtype=ws.dtype), atol=0.03)
    va = torch.rand(16, 2)
    l1, _ = M.recognition_loss(None, None, va, va.flip(0), generator=g)
    l2, _ = M.recognition_loss(None, None, va, va.flip(0), generator=g)
    assert float(l1) != float(l2)


def test_mlp_architecture():
    from emoca_blender.emotion.mlp import build_mlp

    m = build_mlp(60, 7)
    lin = [l for l in m if isinstance(l, torch.nn.Linear)]
    assert len(lin) == 4 and [l.out_features for l in lin] == [2048, 2048, 2048, 9]
    assert sum(isinstance(l, torch.nn.BatchNorm1d) for l in m) == 3
    assert sum(isinstance(l, torch.nn.LeakyReLU) for l in m) == 3


def test_mlp_learns_smooth_valence_arousal(tmp_path):
    """Valence/arousal smooth functions of the parameters: CCC >= 0.9 on held-out samples.
    (Hidden width 512 instead of 2048 keeps the test fast on 2 cores; the training code is
    the same.)"""
    from emoca_blender.emotion.mlp import EmotionMLP, train
    from emoca_blender.errors import BadInput

    rng = np.random.default_rng(0)
    D = 40
    A = rng.standard_normal((D, 2)) / np.sqrt(D)
    Bc = rng.standard_normal((D, 3)) / np.sqrt(D)

    def gen(n):
        X = rng.standard_normal((n, D)).astype(np.float32)
        z = X @ A
        v = np.tanh(z[:, 0] + 0.3 * np.sin(2 * z[:, 1]))
        a = np.tanh(0.8 * z[:, 1] - 0.3 * z[:, 0] ** 2 + 0.3)
        return X, v, a, (X @ Bc).argmax(1)

    X, v, a, lab = gen(2000)
    Xt, vt, at, labt = gen(1000)
    m = train(X, v, a, lab, ("a", "b", "c"), hidden=512, max_epochs=30, patience=5)
    o = m.predict(Xt)
    assert M.ccc(vt, o["valence"]) >= 0.9
    assert M.ccc(at, o["arousal"]) >= 0.9
    assert np.mean(o["label"] == labt) >= 0.8
    assert len(m.history) >= 2
    m2 = EmotionMLP.load(m.save(tmp_path / "mlp.pt"))
    np.testing.assert_allclose(m2.predict(Xt[:5])["valence"], o["valence"][:5], atol=1e-5)
    # a save that fails half way (disk full, a kill) leaves the previous model file whole
    before = (tmp_path / "mlp.pt").read_bytes()
    real_save = torch.save

    def half_then_fail(obj, f, *a, **k):
        f.write(b"\x80half a model")
        raise OSError(28, "No space left on device")

    torch.save = half_then_fail
    try:
        with pytest.raises(BadInput, match="no space left"):
            m.save(tmp_path / "mlp.pt")
    finally:
        torch.save = real_save
    assert (tmp_path / "mlp.pt").read_bytes() == before
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.part"))


def test_mlp_bad_input():
    from emoca_blender.emotion.mlp import train
    from emoca_blender.errors import BadInput

    X = np.zeros((10, 3), np.float32)
    with pytest.raises(BadInput, match="labels"):
        train(X, np.zeros(10), np.zeros(10), np.full(10, 5), ("a", "b"))
    X[0, 0] = np.nan
    with pytest.raises(BadInput, match="NaN"):
        train(X, np.zeros(10), np.zeros(10), np.zeros(10, int), ("a", "b"))
