"""The flame-fit backend: clear errors without FLAME, the fitter on a tiny synthetic clip,
FLAME -> ARKit through landmark space. (Accuracy figures: bench/flame_fit_accuracy.py.)"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import flame_synthetic as fs  # noqa: E402

from emoca_blender.models import flame  # noqa: E402
from emoca_blender.backends import BACKENDS, get_backend  # noqa: E402
from emoca_blender.errors import BadInput  # noqa: E402

pytest.importorskip("torch")


def test_backend_registered_and_needs_flame(tmp_path, monkeypatch):
    assert "flame-fit" in BACKENDS and "FLAME" in BACKENDS["flame-fit"][2]
    monkeypatch.delenv("EMOCA_BLENDER_FLAME_DIR", raising=False)
    with pytest.raises(BadInput, match="--flame-dir"):
        get_backend("flame-fit")
    d = fs.make_flame_dict(n_shape=10, n_expr=5, n_lat=8, n_lon=10)
    fs.write_flame_pickle(tmp_path / "generic_model.pkl", d)
    with pytest.raises(BadInput, match="missing FLAME file.*mediapipe_landmark_embedding.npz"):
        get_backend("flame-fit", flame_dir=str(tmp_path))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    need = ("head_template.obj", "mediapipe_landmark_embedding.npz")
    if any(fs.aux(n) is None for n in need):
        pytest.skip(f"{fs.SHARED_AUX} absent: FLAME auxiliary files are not in the repo")
    d = fs.make_flame_dict(n_shape=20, n_expr=10, template=fs.aux("head_template.obj"), seed=3)
    m = flame.load_flame(fs.write_flame_pickle(tmp_path_factory.mktemp("ff") / "m.pkl", d))
    return m, flame.load_mediapipe_embedding(fs.aux("mediapipe_landmark_embedding.npz"), 9976)


def test_fit_reproduces_noise_free_landmarks(full):
    from emoca_blender.backends import flame_fit

    m, emb = full
    rng = np.random.default_rng(0)
    n = 6
    beta = rng.normal(0, 1, 20)
    expr = rng.normal(0, 1, (n, 10))
    pose = np.zeros((n, 5, 3))
    pose[:, 0, 1] = np.linspace(-0.3, 0.3, n)
    pose[:, 2, 0] = 0.1
    v, _ = m.forward(beta[None].repeat(n, 0), expr, pose)
    px = emb.points(v, m.faces)[..., :2] * [1, -1] * 1500 + 112
    r = flame_fit.fit_landmarks(m, emb, px, settings=flame_fit.FitSettings(
        n_shape=20, n_expr=10, iters=150, device="cpu", smooth_expr=0, smooth_pose=0,
        sigma_px=0.1))
    assert r.expression.shape == (n, 10) and r.pose.shape == (n, 5, 3)
    assert np.median(r.residual_px) < 0.05                 # 0.1 px noise level, none added
    assert np.abs(r.pose[:, 0, 1] - pose[:, 0, 1]).max() < 0.05       # head yaw recovered
    assert sum(r.info["iterations"]) <= 60


def test_jacobians_match_autograd(full):
    """The fitter's closed-form/forward-mode Jacobians equal torch autograd's."""
    import torch
    from torch.autograd.functional import jacobian

    from emoca_blender.backends import flame_fit

    m, emb = full
    rng = np.random.default_rng(1)
    n = 3
    lm = flame_fit.LandmarkModel(m, emb, 20, 10, eye_ids=flame_fit.eye_vertices(m))
    x = np.concatenate([rng.normal(0, 1, (n, 10)), rng.normal(0, 0.2, (n, 15)),
                        np.full((n, 1), np.log(1500.0)), rng.normal(112, 5, (n, 2))], 1)
    x, beta = torch.tensor(x), torch.tensor(rng.normal(0, 1, 20))
    proj, Jc, Jq = lm.jacobians(x, beta)
    assert torch.allclose(proj, lm.project(x, beta), atol=1e-10)
    jx, jb = jacobian(lm.project, (x, beta))
    jx = torch.stack([jx[i, :, :, i] for i in range(n)])            # frames are independent
    scale = float(jx.abs().max())
    assert torch.allclose(Jc[..., 20:], jx[..., :10], atol=1e-9 * scale)
    assert torch.allclose(Jq, jx[..., 10:], atol=1e-9 * scale)
    assert torch.allclose(Jc[..., :20], jb, atol=1e-9 * scale)


def _turning_clip(m, emb, n, S, E, seed=2):
    """A clip of ``n`` frames at 25 fps: random identity (S), smooth expression curves (E), the
    head turning +-0.3 rad, the jaw a little open; the embedded landmarks at 1400 px/m with
    1 px noise. Returns beta, expr, pose, px."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 25.0
    beta = rng.normal(0, 1, S)
    expr = np.sin(2 * np.pi * rng.uniform(0.3, 1.0, E) * t[:, None] + rng.uniform(0, 6, E))
    pose = np.zeros((n, 5, 3))
    pose[:, 0, 1] = 0.3 * np.sin(2 * np.pi * 0.5 * t)
    pose[:, 2, 0] = 0.1
    v, _ = m.forward(beta[None].repeat(n, 0), expr, pose)
    px = emb.points(v, m.faces)[..., :2] * [1, -1] * 1400 + 112
    return beta, expr, pose, px + rng.normal(0, 1, px.shape)


def test_fit_from_the_truth_stays_and_from_scratch_finds_the_same_optimum(full):
    """1 px noise: started at the true parameters the fit ends at the same cost as the fit
    from scratch (it reaches the maximum a posteriori), and the residual is the noise's."""
    from emoca_blender.backends import flame_fit

    m, emb = full
    n = 12
    beta, expr, pose, px = _turning_clip(m, emb, n=n, S=20, E=10)
    st = flame_fit.FitSettings(n_shape=20, n_expr=10, device="cpu")
    truth = flame_fit.FitResult(shape=beta, expression=expr, pose=pose, scale=np.full(n, 1400.0),
                                trans=np.full((n, 2), 112.0), residual_px=np.zeros(n))
    r0 = flame_fit.fit_landmarks(m, emb, px, settings=st)
    r1 = flame_fit.fit_landmarks(m, emb, px, settings=st, init=truth)
    assert abs(r0.info["cost"] - r1.info["cost"]) <= 1e-3 * r1.info["cost"]
    assert 1.0 < np.median(r0.residual_px) < 1.5          # sqrt(2) px expected, minus the fit
    assert np.abs(r0.pose[:, 0, 1] - pose[:, 0, 1]).max() < 0.1


def test_size_gradient_is_the_in_plane_size_change(full):
    from emoca_blender.backends import flame_fit

    m, emb = full
    G = flame_fit.size_gradient(m, emb, 20)
    assert G.shape == (1, 20)
    beta = np.random.default_rng(1).normal(0, 1, 20) * 1e-3

    def size(b):
        p = emb.points(m.forward(b[None])[0], m.faces)[0][:, :2]
        pc0 = emb.points(m.v_template[None], m.faces)[0][:, :2]
        pc0 = pc0 - pc0.mean(0)
        return ((p - p.mean(0)) * pc0).sum() / (pc0 ** 2).sum()      # LSQ scale onto the template

    assert np.isclose(size(beta) - 1, (G @ beta)[0], rtol=1e-3, atol=1e-9)


def test_fit_keeps_the_head_size_with_many_expression_components(full, tmp_path):
    """The joint MAP over one identity and many per-frame expressions shrinks the head (a
    larger camera scale makes every expression cheaper): with w_size=0 and no Occam factor
    this clip fits the camera scale 25% too large. The fit holds the in-plane size and adds
    the expression's log-determinant: within 5%."""
    from emoca_blender.backends import flame_fit

    _, emb = full
    d = fs.make_flame_dict(n_shape=50, n_expr=50, template=fs.aux("head_template.obj"), seed=3)
    m = flame.load_flame(fs.write_flame_pickle(tmp_path / "m.pkl", d))
    beta, _, _, px = _turning_clip(m, emb, n=30, S=50, E=50)
    r = flame_fit.fit_landmarks(m, emb, px, settings=flame_fit.FitSettings(
        n_shape=50, n_expr=50, device="cpu"))
    G = flame_fit.size_gradient(m, emb, 50)
    true_scale = 1400.0 * (1 + (G @ beta)[0])      # the same image, identity at the held size
    assert abs(np.median(r.scale) / true_scale - 1) < 0.05


def test_arkit_from_flame_is_bounded_and_zero_at_rest(full):
    from emoca_blender.backends import flame_fit

    m, emb = full
    e = np.zeros((3, 10))
    e[1, 0] = 3.0
    jaw = np.zeros((3, 3))
    jaw[2, 0] = 0.3
    a = flame_fit.arkit_from_flame(m, emb, np.zeros(20), e, jaw)
    assert a.shape == (3, 52) and a.min() >= 0 and a.max() <= 1
    assert a[0].max() < 1e-6
    from emoca_blender.arkit import INDEX
    assert a[2, INDEX["jawOpen"]] > max(0.03, a[1, INDEX["jawOpen"]])   # the jaw opens
