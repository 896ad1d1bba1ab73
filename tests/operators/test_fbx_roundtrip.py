"""FBX export of a baked character, checked by re-importing it; atomic .blend saving."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
for p in (ROOT, Path(__file__).resolve().parents[1]):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

bpy = pytest.importorskip("bpy")

from emoca_blender.arkit import ARKIT_NAMES, pascal  # noqa: E402
from operators.scene import blender_anim, fbx_io, retarget_bake, rig_build  # noqa: E402
from test_blender_rig import empty_scene, synthetic_capture, synthetic_head  # noqa: E402,F401


def baked_character(n=48, frame_start=1, fps=30.0, names=None):
    names = names or ["CC_Base_" + pascal(c) for c in ARKIT_NAMES]
    model = synthetic_head(expression_names=tuple(names))
    obj, arm = rig_build.build_head_object(model, "Hero")
    cap = synthetic_capture(n=n, fps=fps, source="hero_take.mp4")
    s = retarget_bake.bake_capture(cap, [obj, arm], frame_start=frame_start,
                                   tolerance=None)   # dense: a key per frame
    return obj, arm, cap, s


def quat_angle(a, b):
    d = np.abs(np.sum(a * b, -1)) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return 2 * np.arccos(np.clip(d, -1, 1))


@pytest.mark.parametrize("frame_start,fps", [(1, 30.0), (25, 24.0), (1, 30000 / 1001)])
def test_fbx_roundtrip_shape_keys_and_bones(empty_scene, tmp_path, frame_start, fps):
    n = 48
    obj, arm, cap, s = baked_character(n=n, frame_start=frame_start, fps=fps)
    frames = np.arange(frame_start, frame_start + n)
    t0 = time.perf_counter()
    path = fbx_io.export_fbx(tmp_path / "hero.fbx", [obj], frame_start=frame_start,
                             frame_end=frame_start + n - 1)
    dt = time.perf_counter() - t0
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == ["hero.fbx"]
    got = fbx_io.read_fbx_animation(path)
    assert set(got) >= {"Hero", "Hero_rig"}
    keys = got["Hero"]["shape_keys"]
    assert len(keys) == 52
    for c in ARKIT_NAMES:
        fr, val = keys["CC_Base_" + pascal(c)]
        # every frame is there, the value at each frame is the capture's
        vals = np.interp(frames, fr, val)
        assert fr.min() <= frames[0] and fr.max() >= frames[-1], c
        assert np.abs(vals - cap.column("arkit", c)).max() < 1e-3, c
    # bones: the re-imported jaw/head/eye rotation curves equal what we baked
    mine = blender_anim.read_fcurves(arm)
    for bone in ("jaw", "neck", "left_eye"):
        q_b = np.stack([mine[(f'pose.bones["{bone}"].rotation_quaternion', i)][1] for i in range(4)], -1)
        fr, q_i = got["Hero_rig"]["bones"][bone]["rotation_quaternion"]
        q_i = np.stack([np.interp(frames, fr, q_i[:, i]) for i in range(4)], -1)
        assert quat_angle(q_b, q_i).max() < 1e-3, bone
    jaw_angle = 2 * np.arccos(np.clip(np.abs(q_b[:, 0]), 0, 1))
    assert jaw_angle.max() > 0.05      # the curve compared is not a flat rest pose
    print(f"export+verify {n} frames at {fps:.3f} fps: {dt * 1000:.0f} ms")


def test_fbx_jaw_curve_matches_capture(empty_scene, tmp_path):
    """The re-imported jaw bone's local rotation is the capture's jaw rotation in bone axes."""
    obj, arm, cap, _ = baked_character(n=30)
    path = fbx_io.export_fbx(tmp_path / "j.fbx", [obj, arm], frame_start=1, frame_end=30)
    fr, q = fbx_io.read_fbx_animation(path)["Hero_rig"]["bones"]["jaw"]["rotation_quaternion"]
    # expected, written out (not model_rotvec_to_bone_quat): the jaw's model-axis rotation
    # R, in Blender axes C R C^T, in the bone's rest axes B^T (C R C^T) B, as mathutils
    # makes a quaternion of it
    from mathutils import Matrix

    from emoca_blender.rotations import rotvec_to_matrix as rodrigues

    B = np.array(arm.data.bones["jaw"].matrix_local.to_3x3(), np.float64)
    C = rig_build.C
    want = np.array([list(Matrix((B.T @ C @ rodrigues(r.astype(np.float64)) @ C.T @ B)
                                 .tolist()).to_quaternion()) for r in cap["jaw"]])
    assert np.array_equal(fr, np.arange(1, 31))
    assert quat_angle(q, want).max() < 1e-3
    assert quat_angle(want, np.array([1.0, 0, 0, 0])).max() > 0.05     # not the rest pose


def test_read_fbx_leaves_user_scene_alone(empty_scene, tmp_path):
    obj, arm, cap, _ = baked_character(n=10)
    path = fbx_io.export_fbx(tmp_path / "a.fbx", [obj], frame_start=1, frame_end=10)
    before = {c: sorted(x.name for x in getattr(bpy.data, c))
              for c in ("objects", "meshes", "armatures", "actions", "scenes", "materials")}
    scene = bpy.context.scene
    rng = (scene.frame_start, scene.frame_end, scene.render.fps)
    obj.select_set(True)
    got = fbx_io.read_fbx_animation(path)
    assert "Hero" in got          # the import suffix (Hero.001) is removed
    after = {c: sorted(x.name for x in getattr(bpy.data, c)) for c in before}
    assert after == before
    assert (scene.frame_start, scene.frame_end, scene.render.fps) == rng
    assert bpy.context.scene == scene and obj.select_get()


def test_export_errors_leave_no_partial_file(empty_scene, tmp_path):
    obj, arm, cap, _ = baked_character(n=5)
    with pytest.raises(fbx_io.FbxExportError):
        fbx_io.export_fbx(tmp_path / "missing_dir" / "x.fbx", [obj], frame_start=1, frame_end=5)
    with pytest.raises(fbx_io.FbxExportError):
        fbx_io.export_fbx(tmp_path / "x.fbx", [], frame_start=1, frame_end=5)
    assert list(tmp_path.iterdir()) == []


def test_export_detects_missing_animation(empty_scene, tmp_path, monkeypatch):
    """A re-import without the animation is an error, not a silent success."""
    obj, arm, cap, _ = baked_character(n=5)
    monkeypatch.setattr(fbx_io, "read_fbx_animation",
                        lambda p: {"Hero": {"shape_keys": {}, "bones": {}}})
    with pytest.raises(fbx_io.FbxExportError, match="shape-key animation missing"):
        fbx_io.export_fbx(tmp_path / "x.fbx", [obj], frame_start=1, frame_end=5)


def test_save_blend_atomic(empty_scene, tmp_path):
    obj, arm, cap, _ = baked_character(n=5)
    p = fbx_io.save_blend(tmp_path / "scene.blend")
    assert p.is_file() and [x.name for x in tmp_path.iterdir()] == ["scene.blend"]
    assert p.stat().st_size > 10_000
    assert bpy.data.filepath == ""     # a copy: the open file keeps its own path


def test_fbx_head_relative_to_the_median_pose(empty_scene, tmp_path):
    """Re-imported from the FBX, the head bone's rotation angle is the head's angle from the
    median pose: a clip at rest under a camera above the actor (pitch 0.3) with a first
    frame turned away (0.9) and a long look down (0.8 for 6 frames): 0 at rest, 0.6 and
    0.5 on the outliers (the mean, 0.48, or the first frame would put them elsewhere)."""
    pitch = np.r_[0.9, np.full(6, 0.8), np.full(13, 0.3)]
    model = synthetic_head()
    obj, arm = rig_build.build_head_object(model, "Hero")
    cap = synthetic_capture(n=len(pitch))
    cap.arrays["head_rotation"][:] = 0.0
    cap.arrays["head_rotation"][:, 0] = pitch
    s = retarget_bake.bake_capture(cap, [obj, arm], frame_start=1,
                                   tolerance=None)   # dense: a key per frame
    path = fbx_io.export_fbx(tmp_path / "h.fbx", [obj, arm], frame_start=1,
                             frame_end=len(pitch))
    fr, q = fbx_io.read_fbx_animation(path)["Hero_rig"]["bones"][s["bones"]["head"]][
        "rotation_quaternion"]
    assert quat_angle(q, np.array([1.0, 0, 0, 0])) == pytest.approx(np.abs(pitch - 0.3),
                                                                      abs=1e-3)
