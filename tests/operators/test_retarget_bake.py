"""Retargeting: ARKit name matching, bone guessing, and baking a capture as keyframes."""
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
from mathutils import Matrix  # noqa: E402

from emoca_blender.arkit import ARKIT_NAMES, pascal  # noqa: E402
from emoca_blender.rotations import rotvec_to_matrix as rodrigues  # noqa: E402
from operators.scene import blender_anim, retarget_bake, rig_build
from emoca_blender import rotations  # noqa: E402
from operators.scene.retarget_bake import arkit_name_mapping, guess_bones, unmapped_keys  # noqa: E402
from test_blender_rig import empty_scene, synthetic_capture, synthetic_head  # noqa: E402,F401

ICT_NAMES = [
    "browDown_L", "browDown_R", "browInnerUp_L", "browInnerUp_R", "browOuterUp_L",
    "browOuterUp_R", "cheekPuff_L", "cheekPuff_R", "cheekSquint_L", "cheekSquint_R",
    "eyeBlink_L", "eyeBlink_R", "eyeLookDown_L", "eyeLookDown_R", "eyeLookIn_L", "eyeLookIn_R",
    "eyeLookOut_L", "eyeLookOut_R", "eyeLookUp_L", "eyeLookUp_R", "eyeSquint_L", "eyeSquint_R",
    "eyeWide_L", "eyeWide_R", "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose",
    "mouthDimple_L", "mouthDimple_R", "mouthFrown_L", "mouthFrown_R", "mouthFunnel", "mouthLeft",
    "mouthLowerDown_L", "mouthLowerDown_R", "mouthPress_L", "mouthPress_R", "mouthPucker",
    "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthSmile_L", "mouthSmile_R", "mouthStretch_L", "mouthStretch_R", "mouthUpperUp_L",
    "mouthUpperUp_R", "noseSneer_L", "noseSneer_R"]


# ------------------------------------------------------------------ name mapping

def test_mapping_arkit_camel_is_identity():
    m = arkit_name_mapping(["Basis"] + list(ARKIT_NAMES))
    assert m == {n: [n] for n in ARKIT_NAMES}


@pytest.mark.parametrize("fmt", ["CC_Base_{P}", "A{i:02d}_{P}", "blendShape1.{c}", "mesh.{c}",
                                 "ARKit_{c}", "{P}", "{U}", "head_geo.{P}"])
def test_mapping_prefixes_and_case(fmt):
    names = [fmt.format(i=i, c=c, P=pascal(c), U=c.upper()) for i, c in enumerate(ARKIT_NAMES)]
    extra = ["Basis", "Extra_Frown", "V_Open", "Ah"]
    m = arkit_name_mapping(names + extra)
    assert m == {c: [n] for c, n in zip(ARKIT_NAMES, names)}
    assert unmapped_keys(names + extra, m) == ["Extra_Frown", "V_Open", "Ah"]


def test_mapping_side_suffix_split_names():
    m = arkit_name_mapping(ICT_NAMES)
    assert m["eyeBlinkLeft"] == ["eyeBlink_L"] and m["eyeBlinkRight"] == ["eyeBlink_R"]
    assert m["mouthSmileLeft"] == ["mouthSmile_L"] and m["noseSneerRight"] == ["noseSneer_R"]
    # direction channels are not sides
    assert m["mouthLeft"] == ["mouthLeft"] and m["jawRight"] == ["jawRight"]
    # an unsided ARKit channel drives both halves of a split shape
    assert m["browInnerUp"] == ["browInnerUp_L", "browInnerUp_R"]
    assert m["cheekPuff"] == ["cheekPuff_L", "cheekPuff_R"]
    assert "tongueOut" not in m and len(m) == 51
    assert unmapped_keys(ICT_NAMES, m) == []
    # other side spellings
    for l_name, r_name in [("EyeBlink.L", "EyeBlink.R"), ("Eye_Blink_Left", "Eye_Blink_Right"),
                           ("L_eyeBlink", "R_eyeBlink"), ("eye-blink-l", "eye-blink-r"),
                           ("CC_Base_Eye_Blink_L", "CC_Base_Eye_Blink_R")]:
        m = arkit_name_mapping([l_name, r_name])
        assert m == {"eyeBlinkLeft": [l_name], "eyeBlinkRight": [r_name]}, (l_name, m)


def test_mapping_no_false_positives():
    m = arkit_name_mapping(["mouthSmile", "Blink", "jaw", "eyeBlinkLeft_corrective",
                            "Smile_Left_Strong", "mouthLeftCorner"])
    assert m == {}


# ------------------------------------------------------------------ scene helpers

def make_armature(name, spec, matrix_world=None):
    """spec: [(bone, head, tail, parent or None, z_axis for roll or None)] in armature space."""
    data = bpy.data.armatures.new(name)
    arm = bpy.data.objects.new(name, data)
    bpy.context.scene.collection.objects.link(arm)
    if matrix_world is not None:
        arm.matrix_world = matrix_world
    bpy.context.view_layer.objects.active = arm
    bpy.ops.object.mode_set(mode="EDIT")
    for bname, head, tail, parent, z in spec:
        eb = data.edit_bones.new(bname)
        eb.head, eb.tail = head, tail
        if z is not None:
            eb.align_roll(z)
        if parent:
            eb.parent = data.edit_bones[parent]
    bpy.ops.object.mode_set(mode="OBJECT")
    return arm


def test_guess_bones_common_rigs(empty_scene):
    ours = make_armature("ours", [("root", (0, 0, 0), (0, 0, 1), None, None),
                                  ("neck", (0, 0, 1), (0, 0, 2), "root", None),
                                  ("jaw", (0, 0, 1), (0, -1, 1), "neck", None),
                                  ("left_eye", (1, 0, 2), (1, -1, 2), "neck", None),
                                  ("right_eye", (-1, 0, 2), (-1, -1, 2), "neck", None)])
    assert guess_bones(ours) == {"head": "neck", "jaw": "jaw",
                                 "left_eye": "left_eye", "right_eye": "right_eye"}
    mix = make_armature("mixamo", [
        ("mixamorig:Hips", (0, 0, 0), (0, 0, 1), None, None),
        ("mixamorig:Neck", (0, 0, 1), (0, 0, 2), "mixamorig:Hips", None),
        ("mixamorig:Head", (0, 0, 2), (0, 0, 3), "mixamorig:Neck", None),
        ("mixamorig:HeadTop_End", (0, 0, 3), (0, 0, 4), "mixamorig:Head", None),
        ("mixamorig:LeftEye", (1, 0, 2), (1, -1, 2), "mixamorig:Head", None),
        ("mixamorig:RightEye", (-1, 0, 2), (-1, -1, 2), "mixamorig:Head", None)])
    assert guess_bones(mix) == {"head": "mixamorig:Head", "neck": "mixamorig:Neck",
                                "left_eye": "mixamorig:LeftEye", "right_eye": "mixamorig:RightEye"}
    cc = make_armature("cc", [
        ("CC_Base_NeckTwist01", (0, 0, 0), (0, 0, 1), None, None),
        ("CC_Base_NeckTwist02", (0, 0, 1), (0, 0, 2), "CC_Base_NeckTwist01", None),
        ("CC_Base_Head", (0, 0, 2), (0, 0, 3), "CC_Base_NeckTwist02", None),
        ("CC_Base_JawRoot", (0, 0, 2), (0, -1, 2), "CC_Base_Head", None),
        ("CC_Base_L_Eye", (1, 0, 2), (1, -1, 2), "CC_Base_Head", None),
        ("CC_Base_R_Eye", (-1, 0, 2), (-1, -1, 2), "CC_Base_Head", None),
        ("CC_Base_L_Eyelid", (1, 0, 2.2), (1, -1, 2.2), "CC_Base_Head", None)])
    g = guess_bones(cc)
    assert g["head"] == "CC_Base_Head" and g["jaw"] == "CC_Base_JawRoot"
    assert g["left_eye"] == "CC_Base_L_Eye" and g["right_eye"] == "CC_Base_R_Eye"
    rigify = make_armature("rigify", [
        ("spine.004", (0, 0, 0), (0, 0, 1), None, None),
        ("neck", (0, 0, 1), (0, 0, 2), "spine.004", None),
        ("head", (0, 0, 2), (0, 0, 3), "neck", None),
        ("jaw", (0, 0, 2), (0, -1, 1.5), "head", None),
        ("eye.L", (1, 0, 2), (1, -1, 2), "head", None),
        ("eye.R", (-1, 0, 2), (-1, -1, 2), "head", None),
        ("lid.T.L", (1, 0, 2.2), (1, -1, 2.2), "head", None),
        ("brow.T.L", (1, 0, 2.4), (1, -1, 2.4), "head", None)])
    assert guess_bones(rigify) == {"head": "head", "neck": "neck", "jaw": "jaw",
                                   "left_eye": "eye.L", "right_eye": "eye.R"}


def test_find_targets(empty_scene):
    model = synthetic_head(expression_names=ARKIT_NAMES)
    face, arm = rig_build.build_head_object(model, "Face")
    plain = bpy.data.objects.new("Plain", bpy.data.meshes.new("Plain"))
    bpy.context.scene.collection.objects.link(plain)
    plain.parent = arm
    meshes, a = retarget_bake.find_targets([arm])
    assert meshes == [face] and a == arm
    meshes, a = retarget_bake.find_targets([face, plain])
    assert meshes == [face] and a == arm
    assert retarget_bake.find_targets([plain]) == ([], None)


# ------------------------------------------------------------------ baking

def character(names, name="Char"):
    model = synthetic_head(expression_names=tuple(names))
    return rig_build.build_head_object(model, name)


def curves_of(obj):
    return {dp: fv for (dp, i), fv in blender_anim.read_fcurves(obj.data.shape_keys).items()}


def test_bake_shape_keys_one_key_per_frame(empty_scene):
    names = ["CC_Base_" + pascal(n) for n in ARKIT_NAMES[:40]] + ["Extra_Frown"]
    obj, arm = character(names)
    cap = synthetic_capture(n=50, source="take_07.mov")
    s = retarget_bake.bake_capture(cap, [obj], frame_start=10, tolerance=None)   # dense
    assert s["frames"] == (10, 59)
    info = s["shape_keys"]["Char"]
    assert len(info["mapped"]) == 40 and info["unmapped_keys"] == ["Extra_Frown"]
    assert set(info["unmapped_channels"]) == set(ARKIT_NAMES[40:])
    assert s["actions"] == {"Char": "take_07|Char"}       # no armature given: no bone action
    assert obj.data.shape_keys.animation_data.action.name == "take_07|Char"
    assert arm.animation_data is None or arm.animation_data.action is None
    curves = curves_of(obj)
    assert len(curves) == 40
    for n in ARKIT_NAMES[:40]:
        fr, val = curves[f'key_blocks["CC_Base_{pascal(n)}"].value']
        assert np.array_equal(fr, np.arange(10, 60))
        assert np.abs(val - cap.column("arkit", n)).max() < 1e-6
    # the evaluated value between keys is the linear interpolation of the samples
    bpy.context.scene.frame_set(12)
    kb = obj.data.shape_keys.key_blocks["CC_Base_JawOpen"]
    assert abs(kb.value - cap.column("arkit", "jawOpen")[2]) < 1e-6
    assert (bpy.context.scene.frame_start, bpy.context.scene.frame_end) == (10, 59)


def test_bake_one_to_many_and_rebake_replaces(empty_scene):
    obj, arm = character(ICT_NAMES)
    cap = synthetic_capture(n=40)
    s = retarget_bake.bake_capture(cap, [obj], tolerance=None)   # dense
    curves = curves_of(obj)
    assert len(curves) == 53    # 51 channels, two of them on both halves
    a = curves['key_blocks["browInnerUp_L"].value'][1]
    b = curves['key_blocks["browInnerUp_R"].value'][1]
    assert np.array_equal(a, b) and np.abs(a - cap.column("arkit", "browInnerUp")).max() < 1e-6
    assert s["keys"] == 53 * 40
    # re-bake a shorter capture with a narrower explicit mapping: old curves are gone
    cap2 = synthetic_capture(n=15, seed=7)
    s2 = retarget_bake.bake_capture(cap2, [obj], mapping={"jawOpen": ["jawOpen"],
                                                         "eyeBlinkLeft": ["eyeBlink_L", "nope"]},
                                    frame_start=101, tolerance=None)
    curves = curves_of(obj)
    assert sorted(curves) == ['key_blocks["eyeBlink_L"].value', 'key_blocks["jawOpen"].value']
    fr, val = curves['key_blocks["jawOpen"].value']
    assert np.array_equal(fr, np.arange(101, 116))
    assert np.abs(val - cap2.column("arkit", "jawOpen")).max() < 1e-6
    assert s2["shape_keys"]["Char"]["mapped"] == {"jawOpen": ["jawOpen"], "eyeBlinkLeft": ["eyeBlink_L"]}
    assert len([a for a in bpy.data.actions]) == 1   # same action reused, not a new one
    key = obj.data.shape_keys
    bags = blender_anim.channelbags_of(key)
    assert len(bags) == 1 and len(key.animation_data.action.slots) == 1


def _deform(arm, bone):
    """World-space deformation matrix of a posed bone (posed @ rest^-1)."""
    pb = arm.pose.bones[bone]
    M = arm.matrix_world @ pb.matrix
    R = arm.matrix_world @ arm.data.bones[bone].matrix_local
    return np.array(M @ R.inverted())


FBX_STYLE = Matrix.Rotation(np.pi / 2, 4, "X") @ Matrix.Scale(0.01, 4)


@pytest.mark.parametrize("style", ["blender", "fbx_imported"])
def test_bake_bones_world_rotations(empty_scene, style):
    """Whatever the armature's object transform and bone rolls, the baked bones rotate the
    character in world space by the capture's rotations (converted to Blender axes):
    head = R_median^T R_t, jaw and eyes relative to the head."""
    if style == "blender":   # Z-up armature space, character faces -Y, odd rolls
        mw, s, up, fwd = None, 1.0, np.array([0, 0, 1.0]), np.array([0, -1.0, 0])
    else:                    # armature space Y-up, face +Z, cm units, object rotated +90 X
        mw, s, up, fwd = FBX_STYLE, 100.0, np.array([0, 1.0, 0]), np.array([0, 0, 1.0])

    def P(v):
        return tuple(float(x) for x in np.asarray(v) * s)
    side = np.cross(up, fwd) * -1    # subject's left
    spec = [("Neck", P(0 * up), P(0.1 * up), None, tuple(side)),
            ("Head", P(0.1 * up), P(0.3 * up), "Neck", tuple(fwd)),
            ("Jaw", P(0.1 * up + 0.02 * fwd), P(0.05 * up + 0.1 * fwd), "Head", tuple(up)),
            ("Eye_L", P(0.2 * up + 0.05 * fwd + 0.03 * side), P(0.2 * up + 0.08 * fwd + 0.03 * side),
             "Head", tuple(-side)),
            ("Eye_R", P(0.2 * up + 0.05 * fwd - 0.03 * side), P(0.2 * up + 0.08 * fwd - 0.03 * side),
             "Head", tuple(up))]
    arm = make_armature("Rig", spec, mw)
    for pb in arm.pose.bones:
        pb.rotation_mode = "XYZ"    # a character that used Euler: the bake switches it
    cap = synthetic_capture(n=30, head_scale=1.0)
    # a camera above the actor: a constant offset the median must remove
    off = rodrigues(np.array([0.3, 0.0, 0.0]))
    Rall_own = cap["head_rotation"].astype(np.float64).copy()
    Rt = rodrigues(Rall_own)
    cap.arrays["head_rotation"][:] = rotations.quat_to_rotvec(
        rotations.rotvec_to_quat(np.array([_rotvec(off @ R) for R in Rt])))
    s = retarget_bake.bake_capture(cap, [arm], bones=None, consistent_eyes=False)
    assert s["bones"] == {"head": "Head", "jaw": "Jaw", "left_eye": "Eye_L", "right_eye": "Eye_R"}
    assert arm.pose.bones["Head"].rotation_mode == "QUATERNION"
    Rall = rodrigues(cap["head_rotation"].astype(np.float64))
    qm = retarget_bake.median_rotation(cap["head_rotation"])
    Rm = rodrigues(rotations.quat_to_rotvec(qm))
    C = rig_build.C
    for i in (0, 11, 29):
        bpy.context.scene.frame_set(1 + i)
        Dh = _deform(arm, "Head")[:3, :3]
        want = C @ (Rm.T @ Rall[i]) @ C.T
        assert np.abs(Dh - want).max() < 1e-5
        for bone, r in (("Jaw", cap["jaw"][i]), ("Eye_L", cap["eyes"][i, 0]), ("Eye_R", cap["eyes"][i, 1])):
            rel = np.linalg.inv(Dh) @ _deform(arm, bone)[:3, :3]
            assert np.abs(rel - C @ rodrigues(r.astype(np.float64)) @ C.T).max() < 1e-5, bone
    # the median removes the camera offset: the neutral found is the camera's offset after
    # the actor's own median pose (the per-axis median of their rotations, written out),
    # within 2 degrees (the two medians of moderate rotations differ by less; the identity,
    # offset kept, is 11 degrees away)
    own = np.median(Rall_own, axis=0)
    want_neutral = _rotvec(off @ rodrigues(own))
    assert np.linalg.norm(rotations.quat_to_rotvec(qm) - want_neutral) < np.radians(2.0)


def _rotvec(R):
    ang = np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))
    axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    return axis / (2 * np.sin(ang)) * ang if ang > 1e-9 else np.zeros(3)


def test_bake_10k_frames_dense(empty_scene):
    obj, arm = character(ARKIT_NAMES)
    cap = synthetic_capture(n=10_000)
    retarget_bake.bake_capture(cap, [obj, arm], set_scene=False, tolerance=None)   # warm up
    t0 = time.perf_counter()
    s = retarget_bake.bake_capture(cap, [obj, arm], tolerance=None)   # dense
    dt = time.perf_counter() - t0
    assert s["keys"] == 52 * 10_000 + 4 * 4 * 10_000
    fr, val = curves_of(obj)['key_blocks["mouthSmileLeft"].value']
    assert len(fr) == 10_000
    # the time (target 1 s) is judged by bench/retarget_speed.py, not by this test
    print(f"bake 52 shape keys + 4 bones x 10,000 frames: {dt * 1000:.0f} ms")


def _pitch_frames():
    """Head pitch (about the model's x axis) of a clip where mean, first frame and median
    disagree: 13 frames at the actor's rest (0.3 rad: a camera above the actor), a first
    frame turned far away (0.9) and a long look down (6 frames at 0.8)."""
    pitch = np.r_[0.9, np.full(6, 0.8), np.full(13, 0.3)]
    return pitch, np.stack([pitch, np.zeros_like(pitch), np.zeros_like(pitch)], 1)


def test_neutral_head_pose_is_the_median_not_the_mean_or_first_frame():
    """Written out: rotations about one axis, so the neutral is the median angle, 0.3 rad
    (the mean would be 0.48, the first frame 0.9), and the head relative to it is the angle
    minus 0.3 about the same axis: 0 on every rest frame (the camera offset removed),
    0.6 and 0.5 on the outliers."""
    pitch, rot = _pitch_frames()
    cap = {"head_rotation": rot, "valid": np.ones(len(pitch), bool)}
    qm = retarget_bake.median_rotation(rot, cap["valid"])
    np.testing.assert_allclose(qm, [np.cos(0.15), np.sin(0.15), 0.0, 0.0], atol=1e-9)
    rel = retarget_bake.relative_head_rotation(cap)
    want = np.stack([pitch - 0.3, np.zeros_like(pitch), np.zeros_like(pitch)], 1)
    np.testing.assert_allclose(rel, want, atol=1e-9)
    # invalid frames do not vote: with the rest frames marked invalid the neutral is 0.8
    valid = pitch > 0.5
    qv = retarget_bake.median_rotation(rot, valid)
    np.testing.assert_allclose(qv, [np.cos(0.4), np.sin(0.4), 0.0, 0.0], atol=1e-9)


def test_baked_head_bone_is_relative_to_the_median(empty_scene):
    """Baked onto the rig, the head bone's rotation angle is the head's angle from the
    median pose (rotations keep their angle under any change of axes): 0 on the rest
    frames, 0.6 and 0.5 on the outliers."""
    pitch, rot = _pitch_frames()
    model = synthetic_head()
    obj, arm = rig_build.build_head_object(model, "Hero")
    cap = synthetic_capture(n=len(pitch))
    cap.arrays["head_rotation"][:] = rot
    s = retarget_bake.bake_capture(cap, [obj, arm], frame_start=1, tolerance=None)   # dense
    head = s["bones"]["head"]
    q = np.stack([blender_anim.read_fcurves(arm)[(f'pose.bones["{head}"].rotation_quaternion',
                                                   i)][1] for i in range(4)], -1)
    angle = 2 * np.arccos(np.clip(np.abs(q[:, 0]) / np.linalg.norm(q, axis=1), 0, 1))
    np.testing.assert_allclose(angle, np.abs(pitch - 0.3), atol=1e-5)
