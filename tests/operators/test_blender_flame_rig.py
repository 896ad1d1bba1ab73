"""The FLAME rig in Blender: the proof that it is FLAME.

The evaluated (depsgraph) mesh of an animated FLAME rig, at several frames, equals the core
FLAME LBS (flame.FlameModel.forward, numpy float64) of that frame's identity, expression,
head, jaw and eye rotations, converted to Blender axes, within 1e-4 of the head's size.
This covers the identity baked into the basis, the expression shape keys, the pose-corrective
shape keys keyed per frame, the skinning, and the bone locations that make the joints follow
the expression as FLAME's regressed joints do.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
bpy = pytest.importorskip("bpy")

import flame_synthetic as fs  # noqa: E402

from emoca_blender.models import flame  # noqa: E402
from emoca_blender.capture_file import make_capture  # noqa: E402
from operators.scene import rig_build  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = fs.make_flame_dict(n_shape=300, n_expr=100, seed=4)
    return flame.load_flame(fs.write_flame_pickle(tmp_path_factory.mktemp("f") / "generic_model.pkl", d))


@pytest.fixture
def empty_scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield bpy.context.scene
    bpy.ops.wm.read_factory_settings(use_empty=True)


def flame_capture(m, n=40, n_expr=50, n_shape=100, seed=0, head_model=None, fps=25.0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fps
    ph = rng.uniform(0, 2 * np.pi, 400)
    fr = rng.uniform(0.3, 1.5, 400)
    wave = lambda i, a: a * np.sin(2 * np.pi * fr[i] * t + ph[i])  # noqa: E731
    head = np.stack([wave(0, 0.3), wave(1, 0.5), wave(2, 0.2)], -1)
    jaw = np.stack([0.15 + wave(3, 0.15), wave(4, 0.03), wave(5, 0.03)], -1)
    eyes = np.stack([np.stack([wave(6, 0.2), wave(7, 0.3), wave(8, 0.02)], -1)] * 2, 1)
    expr = np.stack([wave(20 + k, 2.0) for k in range(n_expr)], -1)
    L = 478
    arrays = dict(valid=np.ones(n, bool), interpolated=np.zeros(n, bool), timestamps=t,
                  bbox=np.tile([0, 0, 10, 10], (n, 1)).astype(float),
                  landmarks2d=np.zeros((n, L, 2)), landmarks3d=np.zeros((n, L, 3)),
                  head_rotation=head, head_translation=np.zeros((n, 3)), jaw=jaw, eyes=eyes,
                  blinks=np.zeros((n, 2)), expression=expr, arkit=np.zeros((n, 52)),
                  shape=rng.normal(0, 1, n_shape))
    meta = {"fps": fps, "width": 224, "height": 224, "source": {"path": "/v/actor.mp4"},
            "head_model": head_model or m.model_id()}
    return make_capture(arrays, meta, {"expression": m.expression_names(n_expr)})


def evaluated(obj, frame):
    bpy.context.scene.frame_set(frame)
    dg = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(dg)
    me = ev.to_mesh()
    co = np.empty(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", co)
    ev.to_mesh_clear()
    M = np.array(obj.matrix_world)
    return co.reshape(-1, 3).astype(np.float64) @ M[:3, :3].T + M[:3, 3]


def expected(m, cap, i):
    pose = np.zeros((1, 5, 3))
    pose[0, 0] = cap["head_rotation"][i]
    pose[0, 2] = cap["jaw"][i]
    pose[0, 3:] = cap["eyes"][i]
    v, _ = m.forward(cap["shape"][None], cap["expression"][i:i + 1], pose)
    return rig_build.model_to_blender(v[0])


def test_evaluated_flame_rig_matches_core_lbs(model, empty_scene):
    cap = flame_capture(model)
    hm = flame.head_model_for_capture(model, cap)       # identity baked, all 100 components
    mesh, arm, summary = rig_build.build_flame_rig(hm, cap, "FLAME")
    keys = mesh.data.shape_keys.key_blocks
    assert len([k for k in keys if k.name.startswith("exp_")]) == 100
    assert len([k for k in keys if k.name.startswith("pose_corrective_")]) == 36
    assert [b.name for b in arm.data.bones] == list(flame.JOINT_NAMES)
    assert summary["location_keys"] > 0 and not summary["missing"]
    sk = mesh.data.shape_keys
    assert sk.animation_data.action is not None and not sk.animation_data.drivers  # keys only
    size = np.linalg.norm(np.ptp(model.v_template, 0))
    worst = 0.0
    for f in (1, 8, 23, 40):
        err = np.abs(evaluated(mesh, f) - expected(model, cap, f - 1)).max()
        worst = max(worst, err)
    assert worst <= 1e-4 * size, (worst, size)


def test_capture_of_another_model_is_refused(model, empty_scene):
    cap = flame_capture(model, head_model="open_head")
    with pytest.raises(flame.FlameError, match=r"actor.mp4 was captured with head model "
                                               r"'open_head' .* but the rig is 'FLAME-300x100-"):
        flame.head_model_for_capture(model, cap)
    other = flame_capture(model, head_model="FLAME-300x100-0123456789ab")
    hm = flame.to_head_model(model, n_expr=50)
    with pytest.raises(flame.FlameError, match="--backend flame-fit --flame-dir"):
        rig_build.build_flame_rig(hm, other, "FLAME")
    assert "FLAME" not in bpy.data.objects                # refused before building anything


def test_uvs_from_head_template(empty_scene, tmp_path):
    t = fs.aux("head_template.obj")
    if t is None:
        pytest.skip(f"{fs.SHARED_AUX} absent: FLAME auxiliary files are not in the repo")
    d = fs.make_flame_dict(n_shape=10, n_expr=10, template=t, seed=2)
    m = flame.load_flame(fs.write_flame_pickle(tmp_path / "generic_model.pkl", d), strict=True)
    _, uvc, uvf = flame.load_obj_uvs(t, m.faces)
    hm = flame.to_head_model(m, n_expr=10, uv_coords=uvc, uv_faces=uvf)
    mesh, _ = rig_build.build_head_object(hm, "FLAME_uv", with_armature=False,
                                          with_pose_correctives=False)
    uv = np.empty(len(mesh.data.loops) * 2, np.float32)
    mesh.data.uv_layers["UVMap"].data.foreach_get("uv", uv)
    assert np.allclose(uv.reshape(-1, 2), uvc[uvf.ravel()], atol=1e-6)
    assert len(mesh.data.vertices) == 5023 and len(mesh.data.polygons) == 9976
