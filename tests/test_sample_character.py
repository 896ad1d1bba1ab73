"""The bundled sample character (tools/build_sample_character.py -> bundled_models/)."""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from emoca_blender.arkit import ARKIT_NAMES, mirror_name  # noqa: E402
from emoca_blender.head_model import (SAMPLE_CHARACTER, bundled, load_head_model,  # noqa: E402
                                      pose_vertices)

M = np.array([-1.0, 1.0, 1.0], np.float32)


@pytest.fixture(scope="module")
def model():
    return load_head_model(bundled(SAMPLE_CHARACTER))


def _shape(m, name):
    return m.expression_basis[m.expression_names.index(name)]


def _part(m, name):
    return m.vertex_part == m.part_names.index(name)


def test_header(model):
    m = model
    assert m.name == "sample_character"
    assert m.licence.startswith("GPL-3.0-or-later")
    assert m.expression_names == ARKIT_NAMES
    assert m.joint_names == ("root", "neck", "jaw", "left_eye", "right_eye")
    assert list(m.parents) == [-1, 0, 1, 1, 1]
    assert set(m.part_names) >= {"skin", "eye_L", "eye_R", "teeth_upper", "teeth_lower"}
    assert 5000 <= m.n_vertices <= 12000
    assert m.uv is not None and m.uv.min() >= 0 and m.uv.max() <= 1
    assert bundled(SAMPLE_CHARACTER).stat().st_size < 4e6


def test_size_and_axes(model):
    skin = model.v_template[_part(model, "skin")]
    head = skin[skin[:, 1] > -0.11]                      # above the chin
    assert 0.20 < head[:, 1].max() - head[:, 1].min() < 0.26
    # the face (nose tip) points to +Z, the left eye joint is at +X
    nose = skin[np.argmax(skin[:, 2])]
    assert abs(nose[0]) < 1e-6 and 0.0 > nose[1] > -0.03
    le, re = model.joints[3], model.joints[4]
    assert le[0] > 0.02 and re[0] < -0.02


def test_mesh_is_consistently_oriented(model):
    F = model.faces.astype(np.int64)
    assert F.min() >= 0 and F.max() < model.n_vertices
    assert np.all((F[:, 0] != F[:, 1]) & (F[:, 1] != F[:, 2]) & (F[:, 0] != F[:, 2]))
    e = np.concatenate([F[:, [0, 1]], F[:, [1, 2]], F[:, [2, 0]]])
    key = e[:, 0] * model.n_vertices + e[:, 1]
    assert len(np.unique(key)) == len(key), "a directed edge is used twice: flipped faces"
    # closed parts have every edge twice and positive volume (outward normals)
    V = model.v_template.astype(np.float64)
    for name in ("eye_L", "eye_R", "teeth_upper", "teeth_lower", "tongue"):
        sel = np.flatnonzero(_part(model, name))
        f = F[np.isin(F, sel).all(1)]
        und = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1)
        _, counts = np.unique(und[:, 0] * model.n_vertices + und[:, 1], return_counts=True)
        assert np.all(counts == 2), f"{name} is not closed"
        vol = np.einsum("fi,fi->f", V[f[:, 0]], np.cross(V[f[:, 1]], V[f[:, 2]])).sum() / 6
        assert vol > 0, f"{name} faces point inwards"
    # the skin's face normals point out of the face
    skin = np.flatnonzero(_part(model, "skin"))
    fs = F[np.isin(F, skin).all(1)]
    n = np.cross(V[fs[:, 1]] - V[fs[:, 0]], V[fs[:, 2]] - V[fs[:, 0]])
    c = V[fs].mean(1)
    front = (c[:, 2] > 0.07) & (np.abs(c[:, 0]) < 0.02) & (c[:, 1] > 0.04)   # forehead
    assert np.all(n[front, 2] > 0)


def test_mirror_is_exact(model):
    m = model
    mir = m.mirror
    assert np.array_equal(mir[mir], np.arange(m.n_vertices))
    assert np.abs(m.v_template[mir] * M - m.v_template).max() < 1e-6
    assert np.array_equal(m.vertex_part[mir] == m.part_names.index("eye_L"),
                          m.vertex_part == m.part_names.index("eye_R"))
    for i, name in enumerate(ARKIT_NAMES):
        twin = ARKIT_NAMES.index(mirror_name(name))
        err = np.abs(m.expression_basis[twin][mir] * M - m.expression_basis[i]).max()
        assert err < 1e-6, f"{name} is not the mirror of {ARKIT_NAMES[twin]} ({err})"


def test_weights(model):
    W = model.lbs_weights
    assert np.allclose(W.sum(1), 1.0, atol=1e-5) and W.min() >= 0
    J = model.joint_names.index
    assert np.all(W[_part(model, "teeth_lower"), J("jaw")] == 1)
    assert np.all(W[_part(model, "eye_L"), J("left_eye")] == 1)
    assert np.all(W[_part(model, "eye_R"), J("right_eye")] == 1)
    assert np.all(W[_part(model, "skin"), J("jaw")] == 0)     # jawOpen shape carries the skin
    # the jaw bone alone turns the lower teeth about the jaw joint
    pose = np.zeros((5, 3))
    pose[J("jaw"), 0] = 0.3
    posed = pose_vertices(model, model.v_template, pose)
    moved = np.linalg.norm(posed - model.v_template, axis=1) > 1e-4
    assert np.array_equal(moved, _part(model, "teeth_lower") | _part(model, "tongue"))


def test_every_shape_moves_and_is_localised(model):
    m = model
    V = m.v_template
    for name in ARKIT_NAMES:
        d = np.linalg.norm(_shape(m, name), axis=1)
        least = 1e-3 if name.startswith("eyeLook") else 2e-3   # lid follow is subtle
        assert d.max() > least, f"{name} barely moves ({d.max()})"
        assert (d > 1e-4).mean() < 0.35, f"{name} moves too much of the head"
        if name.endswith("Left"):
            side = V[:, 0] < -0.0061
            assert d[side].max() < 1e-6 or name in ("mouthLeft", "jawLeft"), \
                f"{name} moves the right half ({d[side].max()})"
    chin = (V[:, 1] < -0.07) & _part(m, "skin")
    for name in ("browDownLeft", "browInnerUp", "browOuterUpLeft", "eyeBlinkLeft", "eyeWideLeft",
                 "eyeSquintLeft", "noseSneerLeft"):
        assert np.linalg.norm(_shape(m, name)[chin], axis=1).max() < 1e-6, name
    crown = V[:, 1] > 0.035
    for name in ("jawOpen", "mouthSmileLeft", "mouthPucker", "mouthFunnel", "cheekPuff",
                 "tongueOut", "mouthClose"):
        assert np.linalg.norm(_shape(m, name)[crown], axis=1).max() < 1e-6, name
    # eye looks are lid follow only: the eye bones turn the eyeballs (never both)
    for name in ("eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeLookDownLeft"):
        d = np.linalg.norm(_shape(m, name), axis=1)
        assert d[_part(m, "eye_L") | _part(m, "eye_R")].max() == 0, name
        assert d[_part(m, "skin")].max() > 1e-3, name


def test_jaw_open(model):
    m = model
    V = m.v_template
    d = _shape(m, "jawOpen")
    skin = _part(m, "skin")
    chin = skin & (np.abs(V[:, 0]) < 0.005) & (V[:, 1] < -0.08) & (V[:, 2] > 0.06)
    assert chin.any()
    # 12 degrees (the capture's jaw angle at jawOpen = 1) drops the chin 1.1-1.8 cm
    assert d[chin, 1].max() < -0.010
    forehead = skin & (V[:, 1] > 0.06)
    assert np.abs(d[forehead]).max() == 0
    # the shape leaves the teeth and tongue to the jaw bone
    for part in ("teeth_lower", "teeth_upper", "tongue"):
        assert np.abs(d[_part(m, part)]).max() == 0, part
    # the jaw bone at the capture's jaw angle for jawOpen = 1 brings the lower teeth along
    # with the lower lip: the gap between lip and teeth barely changes
    from emoca_blender.head_model import pose_vertices
    from emoca_blender.solve import JAW_OPEN_RADIANS

    pose = np.zeros((len(m.joint_names), 3))
    pose[m.joint_index("jaw"), 0] = JAW_OPEN_RADIANS
    w1 = np.eye(52, dtype=np.float32)[ARKIT_NAMES.index("jawOpen")]
    posed = pose_vertices(m, m.expression_vertices(w1), pose)
    teeth = _part(m, "teeth_lower")
    tip = np.flatnonzero(teeth)[np.argmax(V[teeth, 2] + V[teeth, 1])]   # front top of the arch
    lip = np.flatnonzero(skin & (np.abs(V[:, 0]) < 1e-6) & (V[:, 1] < -0.045) & (V[:, 1] > -0.06)
                         & (V[:, 2] > 0.07))
    gap0 = V[lip].mean(0) - V[tip]
    gap1 = posed[lip].mean(0) - posed[tip]
    assert V[tip, 1] - posed[tip, 1] > 0.005             # the teeth really move
    assert np.linalg.norm(gap1 - gap0) < 0.005          # skin lags/leads the bone a little
    # the lips part: a wide vertical gap at the middle of the mouth
    W = m.expression_vertices(np.eye(52, dtype=np.float32)[ARKIT_NAMES.index("jawOpen")])
    mid = skin & (np.abs(V[:, 0]) < 1e-6) & (np.abs(V[:, 1] - (-0.0425)) < 1e-3)
    ys = W[mid, 1]
    assert ys.max() - ys.min() > 0.015
    # jawOpen + mouthClose closes the lips again
    w = np.zeros(52, np.float32)
    w[ARKIT_NAMES.index("jawOpen")] = w[ARKIT_NAMES.index("mouthClose")] = 1
    ys = m.expression_vertices(w)[mid, 1]
    assert ys.max() - ys.min() < 0.003


def _lid_gap(m, weights):
    """Vertical spread of the lid skin hugging the middle of the left eyeball (the opening),
    and the indices of those lid vertices."""
    V = m.v_template
    skin = np.flatnonzero(_part(m, "skin"))
    P = m.expression_vertices(weights)
    c = m.joints[3]
    r = np.linalg.norm(V[skin] - c, axis=1)
    near = skin[(r < 0.0135) & (np.abs(V[skin, 0] - c[0]) < 0.002)]
    return P[near, 1].max() - P[near, 1].min(), near


def test_blink_closes_the_left_eye(model):
    m = model
    w = np.zeros(52, np.float32)
    open_gap, near = _lid_gap(m, w)
    assert open_gap > 0.006                               # the eye is open at rest
    w[ARKIT_NAMES.index("eyeBlinkLeft")] = 1
    P = m.expression_vertices(w)
    # the lowest upper-lid vertex meets the highest lower-lid vertex
    c = m.joints[3]
    Vn = m.v_template[near]
    upper = near[Vn[:, 1] > c[1]]
    lower = near[Vn[:, 1] < c[1] - 0.002]
    assert P[upper, 1].min() - P[lower, 1].max() < 5e-4
    # closed lids cover the front of the eyeball
    front = m.joints[3] + np.array([0, 0, 0.0118], np.float32)
    skin = _part(m, "skin")
    dist = np.linalg.norm(P[skin] - front, axis=1).min()
    assert dist < 0.0025
    # the right eye does not move
    d = np.linalg.norm(_shape(m, "eyeBlinkLeft"), axis=1)
    assert d[m.v_template[:, 0] < 0].max() == 0


def test_eye_bone_rotates_the_eyeball_about_its_centre(model):
    from emoca_blender.head_model import pose_vertices

    m = model
    sel = _part(m, "eye_L")
    c = m.joints[3]
    # gaze conventions of the capture: +ry turns towards the subject's left, -rx looks up
    for rot, axis in (((0.0, 0.4, 0.0), 0), ((-0.35, 0.0, 0.0), 1)):
        pose = np.zeros((len(m.joint_names), 3))
        pose[m.joint_index("left_eye")] = rot
        P = pose_vertices(m, m.v_template, pose)[sel]
        r0 = np.linalg.norm(m.v_template[sel] - c, axis=1)
        r1 = np.linalg.norm(P - c, axis=1)
        assert np.abs(r0 - r1).max() < 1e-5
        pupil = np.argmax(m.v_template[sel, 2])
        assert P[pupil, axis] - c[axis] > 0.003


def test_build_is_deterministic(tmp_path):
    spec = importlib.util.spec_from_file_location("build_sample_character",
                                                  ROOT / "tools" / "build_sample_character.py")
    mod = importlib.util.module_from_spec(spec)
    t0 = time.perf_counter()
    spec.loader.exec_module(mod)
    out = tmp_path / "sc.npz"
    mod.main(["--out", str(out)])
    if time.perf_counter() - t0 > 60:
        pytest.skip("rebuild too slow to compare here")
    a = load_head_model(out)
    b = load_head_model(bundled(SAMPLE_CHARACTER))
    for k in ("v_template", "faces", "expression_basis", "joints", "lbs_weights", "uv", "mirror",
              "vertex_part"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
