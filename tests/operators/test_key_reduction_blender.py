"""Reduced bakes in Blender (issue 15 item 2): the F-curves Blender plays, evaluated at every
frame, stay within the tolerance of the dense bake (weights and bone angles); dense stays
dense; the FBX export carries the reduced keys."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
for p in (ROOT, Path(__file__).resolve().parents[1]):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

bpy = pytest.importorskip("bpy")

from emoca_blender.arkit import ARKIT_NAMES  # noqa: E402
from emoca_blender.retarget.keyreduce import quat_angle_deg  # noqa: E402
from operators.scene import blender_anim, fbx_io, retarget_bake, rig_build  # noqa: E402
from test_blender_rig import empty_scene, synthetic_capture, synthetic_head  # noqa: E402,F401


def _played(id_data, frames):
    """{(data_path, index): (n_keys, values evaluated by Blender at ``frames``)}."""
    out = {}
    for bag in blender_anim.channelbags_of(id_data):
        for fc in bag.fcurves:
            out[(fc.data_path, fc.array_index)] = (
                len(fc.keyframe_points), np.array([fc.evaluate(f) for f in frames]))
    return out


def _bone_quats(curves):
    bones = {}
    for (dp, i), (_n, v) in curves.items():
        if dp.endswith("rotation_quaternion"):
            bones.setdefault(dp, {})[i] = v
    return {dp: np.stack([c[i] for i in range(4)], -1) for dp, c in bones.items()}


def _bake_twice(n=600, **kw):
    model = synthetic_head(expression_names=tuple(ARKIT_NAMES))
    obj, arm = rig_build.build_head_object(model, "Char")
    cap = synthetic_capture(n=n, fps=30.0)
    frames = np.arange(1, n + 1, dtype=float)
    dense = retarget_bake.bake_capture(cap, [obj, arm], frame_start=1, tolerance=None)
    d_keys, d_arm = _played(obj.data.shape_keys, frames), _played(arm, frames)
    red = retarget_bake.bake_capture(cap, [obj, arm], frame_start=1, **kw)
    r_keys, r_arm = _played(obj.data.shape_keys, frames), _played(arm, frames)
    return obj, arm, dense, red, (d_keys, d_arm), (r_keys, r_arm)


def test_dense_bake_stays_dense(empty_scene):
    obj, arm, dense, _red, (d_keys, d_arm), _ = _bake_twice(n=120)
    assert dense["keys"] == dense["keys_dense"] == 52 * 120 + 4 * 4 * 120
    assert all(n == 120 for n, _v in list(d_keys.values()) + list(d_arm.values()))


def test_reduced_bake_within_tolerance_at_every_frame(empty_scene):
    obj, arm, dense, red, (d_keys, d_arm), (r_keys, r_arm) = _bake_twice()
    assert red["keys_dense"] == dense["keys"]
    assert red["keys"] == sum(n for n, _v in list(r_keys.values()) + list(r_arm.values()))
    assert red["keys"] * 1.5 < red["keys_dense"]   # fast synthetic waves (up to 1.5 Hz)
    assert set(r_keys) == set(d_keys)
    w_err = max(np.abs(r_keys[k][1] - d_keys[k][1]).max() for k in d_keys)
    assert w_err <= 0.01
    dq, rq = _bone_quats(d_arm), _bone_quats(r_arm)
    assert len(dq) == 4 and set(dq) == set(rq)
    a_err = max(quat_angle_deg(rq[b], dq[b]).max() for b in dq)
    assert a_err <= 0.2
    # every curve keeps its first and last frame, with the dense values there
    for k, (n, v) in r_keys.items():
        assert n >= 2 and abs(v[0] - d_keys[k][1][0]) < 1e-6 and abs(v[-1] - d_keys[k][1][-1]) < 1e-6
    # the actions say how they were baked (the FBX export reads it)
    assert obj.data.shape_keys.animation_data.action[retarget_bake.TOLERANCE_PROP] == 0.01
    assert fbx_io.baked_reduced([obj, arm])


def test_looser_tolerance_fewer_keys(empty_scene):
    *_rest, red = _bake_twice(n=300, tolerance=0.05, angle_tolerance_deg=1.0)[:4]
    obj, arm, dense, red2, _d, (r_keys, r_arm) = _bake_twice(n=300)
    assert red["keys"] < red2["keys"] < dense["keys"]


def test_fbx_export_carries_the_reduced_keys(empty_scene, tmp_path):
    obj, arm, dense, red, (d_keys, d_arm), (r_keys, _r_arm) = _bake_twice(n=200)
    path = fbx_io.export_fbx(tmp_path / "c.fbx", [obj, arm], frame_start=1, frame_end=200)
    got = fbx_io.read_fbx_animation(path)
    sk = got["Char"]["shape_keys"]
    frames = np.arange(1, 201, dtype=float)
    n_back = 0
    for (dp, _i), (n, v) in r_keys.items():
        name = dp.split('"')[1]
        fr, val = sk[name]
        assert len(fr) == n            # the baked keys, not one per frame
        n_back += len(fr)
        assert np.abs(np.interp(frames, fr, val) - d_keys[(dp, 0)][1]).max() <= 0.01
    assert n_back * 1.5 < 52 * 200


def test_report_line_gives_keys_before_and_after():
    from operators import ops_retarget

    line = ops_retarget.summary_line({"keys": 6038, "keys_dense": 32096, "frames": (1, 472)}, 52)
    assert "6038 keys (dense 32096, 5.3x fewer)" in line
    assert ops_retarget.summary_line({"keys": 50, "keys_dense": 50}, 1).endswith("50 keys")
    assert ops_retarget.key_tolerances(None) == {}
