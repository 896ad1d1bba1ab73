"""Retarget onto characters artists have: the open head model with other proportions, turned,
and its keys renamed the way a vendor exports them (``ACME_EyeBlinkLeft``); and bad targets
(no shape keys and no armature; an armature whose bones name no head, jaw or eye)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parents[1]
ROOT = HERE.parent
for p in (ROOT, HERE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

bpy = pytest.importorskip("bpy")
from emoca_blender.arkit import ARKIT_NAMES, pascal  # noqa: E402
from emoca_blender.models.head_model import (OPEN_HEAD, HeadModel, bundled,  # noqa: E402
                                             load_head_model)
from emoca_blender.rotations import rotvec_to_matrix as rodrigues  # noqa: E402
from operators.scene import retarget_bake, rig_build  # noqa: E402
from test_blender_rig import empty_scene, evaluated_vertices, synthetic_capture  # noqa: E402,F401
from test_retarget_bake import make_armature  # noqa: E402
from test_retarget_geometric import open_head_capture, sparse_curves  # noqa: E402

PROPORTIONS = np.array([1.2, 0.9, 1.1])              # wider, shorter, deeper
TURN = rodrigues(np.array([0.12, 0.35, -0.05]))      # ~20 degrees of yaw, some pitch and roll


def renamed_head():
    """The open head, non-uniformly scaled and rotated, keys ``ACME_<PascalCase ARKit>`` in a
    shuffled order. Returns (model, names in ARKit order)."""
    m = load_head_model(bundled(OPEN_HEAD))
    assert tuple(m.expression_names) == tuple(ARKIT_NAMES)
    perm = np.random.default_rng(3).permutation(52)
    A = TURN @ np.diag(PROPORTIONS)
    names = [f"ACME_{pascal(ARKIT_NAMES[j])}" for j in perm]
    mm = HeadModel(v_template=(m.v_template.astype(np.float64) @ A.T).astype(np.float32),
                   faces=m.faces,
                   expression_basis=(m.expression_basis[perm].astype(np.float64) @ A.T).astype(np.float32),
                   expression_names=tuple(names), joint_names=m.joint_names,
                   joints=m.joints @ A.T, parents=m.parents, lbs_weights=m.lbs_weights,
                   name="acme")
    return mm, [f"ACME_{pascal(c)}" for c in ARKIT_NAMES]


def test_renamed_scaled_rotated_open_head(empty_scene):
    model, names = renamed_head()
    obj, _ = rig_build.build_head_object(model, "Acme", with_armature=False)
    obj.scale = (2.5, 2.5, 2.5)
    obj.rotation_euler = (0.0, 0.0, np.radians(30.0))
    assert sorted(retarget_bake.unmapped_keys(model.expression_names, {})) == sorted(names)
    m = retarget_bake.arkit_name_mapping(list(model.expression_names))
    assert m == {c: [n] for c, n in zip(ARKIT_NAMES, names)}          # all 52
    W = sparse_curves(120, seed=9)
    cap = open_head_capture(W)
    s = retarget_bake.bake_capture(cap, [obj], frame_start=1, tolerance=None)   # dense: exact
    assert s["shape_keys"]["Acme"]["unmapped_keys"] == []
    blocks = obj.data.shape_keys.key_blocks
    got = np.empty((len(W), 52))
    for i in range(len(W)):
        bpy.context.scene.frame_set(1 + i)
        got[i] = [blocks[n].value for n in names]
    mae = np.abs(got - W).mean()
    print(f"renamed open head: MAE {mae:.2e} over {W.size} key values")
    assert mae <= 0.02 and np.abs(got - W).max() < 1e-5
    # and the keys move the face as the actor's shapes do: the evaluated mesh is the
    # turned, stretched open head showing the capture's weights
    base = load_head_model(bundled(OPEN_HEAD))
    M = np.array(obj.matrix_world)
    A = TURN @ np.diag(PROPORTIONS)
    for i in (int(np.argmax(W[:, ARKIT_NAMES.index("jawOpen")])), 57):
        v = base.v_template + np.einsum("k,kvc->vc", W[i], base.expression_basis.astype(np.float64))
        want = rig_build.model_to_blender(v @ A.T) @ M[:3, :3].T + M[:3, 3]
        err = np.abs(evaluated_vertices(obj, 1 + i) - want).max()
        assert err < 1e-4 * 2.5, (i, err)


# ------------------------------------------------------------------ bad input

def test_no_shape_keys_and_no_armature_says_what_to_select(empty_scene):
    me = bpy.data.meshes.new("Rock")
    me.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [], [(0, 1, 2)])
    rock = bpy.data.objects.new("Rock", me)
    bpy.context.scene.collection.objects.link(rock)
    cap = synthetic_capture(n=5)
    with pytest.raises(retarget_bake.RetargetError,
                       match=r"Nothing to retarget onto: Rock has no shape keys and no "
                             r"armature\. Select the character's face mesh"):
        retarget_bake.bake_capture(cap, [rock])
    assert retarget_bake.find_targets([rock]) == ([], None)
    assert not bpy.data.actions                  # nothing half-written


def test_armature_without_known_bones_asks_to_pick(empty_scene):
    arm = make_armature("Robot", [("Bone", (0, 0, 0), (0, 0, 1), None, None),
                                  ("Bone.001", (0, 0, 1), (0, 0, 2), "Bone", None),
                                  ("Antenna", (0, 0, 2), (0, 0, 3), "Bone.001", None)])
    assert retarget_bake.guess_bones(arm) == {}
    cap = synthetic_capture(n=5)
    with pytest.raises(retarget_bake.RetargetError,
                       match=r"No head, jaw or eye bone found in armature Robot \(bones: Bone, "
                             r"Bone\.001, Antenna\): pick them in the Retarget panel's Bones"):
        retarget_bake.bake_capture(cap, [arm])
    # a picked bone that does not exist is named
    with pytest.raises(retarget_bake.RetargetError, match=r"Robot has no bone\(s\) jaw=Jaw"):
        retarget_bake.bake_capture(cap, [arm], bones={"jaw": "Jaw"})
    # picking one makes it work, with the axis mapping, gain and limits applied
    from emoca_blender.retarget.mapping import BoneSettings
    st = BoneSettings(bone="Bone.001", axes=("X", "Y", "Z"), gain=2.0, max=(10.0, 180, 180))
    s = retarget_bake.bake_capture(cap, [arm], bones={}, bone_settings={"jaw": st})
    assert s["bones"] == {"jaw": "Bone.001"} and "Robot" in s["actions"]
    angles = []
    for f in range(1, 6):
        bpy.context.scene.frame_set(f)
        w = arm.pose.bones["Bone.001"].rotation_quaternion.w
        angles.append(2 * np.degrees(np.arccos(min(1.0, abs(w)))))
    jaw = np.degrees(np.linalg.norm(2 * cap["jaw"], axis=1))
    assert max(angles) <= 10.0 + 1.0                    # the X limit holds (jaw opens on X)
    assert np.all(np.array(angles) > 0) and np.all(jaw > 0)


def test_bad_frame_range_and_neutral_frame(empty_scene):
    obj, _ = rig_build.build_head_object(renamed_head()[0], "Acme", with_armature=False)
    cap = synthetic_capture(n=10)
    with pytest.raises(retarget_bake.RetargetError, match=r"frame range 5-12 is outside the "
                                                          r"capture's 10 frames \(0-9\)"):
        retarget_bake.bake_capture(cap, [obj], frame_range=(5, 12))
    from emoca_blender.errors import BadInput
    with pytest.raises(BadInput, match=r"neutral frame 10 is outside the capture's 10 frames"):
        retarget_bake.bake_capture(cap, [obj], neutral_frame=10)
