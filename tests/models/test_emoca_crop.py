"""EMOCA's crop from MediaPipe landmarks: the kpt68 box rule, the similarity, the warp."""
from __future__ import annotations

import numpy as np

from emoca_blender.models import emoca_crop as ec


def test_mp68_is_a_68_point_subset():
    assert len(set(ec.MP68.tolist())) == 68 and ec.MP68.max() < 468 and ec.MP68.min() >= 0


def test_box_rule_is_emocas():
    pts = np.array([[100.0, 50.0], [300.0, 50.0], [200.0, 290.0], [150.0, 120.0]])
    centre, size = ec.box_from_points(pts)
    # (200 + 240) / 2 * 1.1 = 242; int(242 * 1.25) = 302
    assert np.allclose(centre, [200.0, 170.0]) and size == 302.0
    M = ec.crop_matrix(centre, size)
    corners = np.array([[200 - 151, 170 - 151, 1.0], [200 + 151, 170 + 151, 1.0]])
    assert np.allclose(corners @ M.T, [[0, 0], [223, 223]])
    assert np.allclose(ec.crop_to_image(M, [[0, 0], [223, 223]]), corners[:, :2])


def _bilinear_reference(img, M, res=224):
    """skimage.warp(order=1, mode='constant', cval=0) of the inverse map, in numpy."""
    H, W = img.shape[:2]
    k, tx, ty = M[0, 0], M[0, 2], M[1, 2]
    r, c = np.mgrid[0:res, 0:res].astype(np.float64)
    x, y = (c - tx) / k, (r - ty) / k
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    out = np.zeros((res, res, img.shape[2]))
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy),
                      (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        ok = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
        v = np.zeros((res, res, img.shape[2]))
        v[ok] = img[yi[ok], xi[ok]]
        out += w[..., None] * v
    return out


def test_warp_matches_a_bilinear_reference():
    rng = np.random.default_rng(0)
    low = rng.uniform(0, 255, (30, 40, 3))
    import cv2

    img = cv2.resize(low, (400, 300), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    for centre, size in (((200.0, 150.0), 250.0), ((120.0, 90.0), 120.0), ((390.0, 20.0), 300.0)):
        M = ec.crop_matrix(centre, size)
        got = ec.warp(img, M)
        assert got.shape == (3, 224, 224) and got.dtype == np.float32
        assert 0.0 <= got.min() and got.max() <= 1.0
        ref = _bilinear_reference(img.astype(np.float64), M) / 255.0
        inner = slice(2, -2)
        err = np.abs(got.transpose(1, 2, 0) - ref)[inner, inner]
        # cv2's fixed-point (1/32 px) bilinear: within 3 grey levels, 0.5 on average; a
        # half-pixel shift of the crop would be tens of levels on this texture
        assert err.max() < 3 / 255 and err.mean() < 0.5 / 255, (err.max(), err.mean())


def test_crop_frame_from_mediapipe_landmarks():
    lm = np.zeros((478, 2))
    lm[:] = [320, 240]
    lm[ec.MP68[:17]] = np.stack([np.linspace(220, 420, 17), np.full(17, 260)], 1)   # jaw
    lm[152] = [320, 380]                                                             # chin
    lm[ec.MP68[17:27]] = [[320, 180]] * 10                                           # brows
    img = np.full((480, 640, 3), 128, np.uint8)
    crop, M, size = ec.crop_frame(img, lm)
    # box 200 x 200 -> 220 -> 275
    assert size == 275.0 and np.allclose(ec.crop_to_image(M, [[111.5, 111.5]]), [[320, 280]])
    assert np.allclose(crop, 128 / 255, atol=1e-6)
