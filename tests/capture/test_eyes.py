"""Eyes driven once: a character built like Ready Player Me-style ARKit avatars (eyeball
meshes whose eyeLook* shape keys rotate them, skinned to eye bones) gets its gaze from one
source only, and both eyes look where the actor looks; one consistent gaze for both eyes."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emoca_blender.retarget import gaze  # noqa: E402

KEY_DEG = 25.0


def _dir(rotvecs):
    """Gaze direction (+Z of the eye) of axis-angle rotations, model axes (independent of
    emoca_blender.retarget.gaze)."""
    return Rotation.from_rotvec(np.asarray(rotvecs, np.float64).reshape(-1, 3)).apply([0, 0, 1.0])


def _angle_deg(a, b):
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.degrees(np.arccos(np.clip(np.sum(a * b, -1), -1, 1)))


# ----------------------------------------------------------------------------- core (no bpy)

def test_consistent_gaze_bounds_vergence_and_keeps_real_crossing():
    n, fps = 120, 30.0
    t = np.arange(n) / fps
    yaw = np.radians(15) * np.sin(2 * np.pi * 0.5 * t)
    up = np.radians(10) * np.cos(2 * np.pi * 0.3 * t)
    left = np.stack([yaw, up], -1)
    right = left.copy()
    right[:30, 0] -= np.radians(20)         # wall-eyed by 20 degrees: noise on a far iris
    right[60:90, 0] += np.radians(25)       # a 1 s real cross (converging)
    right[100, 0] += np.radians(25)         # a one-frame spike: not a cross
    right[:, 1] += np.radians(4)            # vertical disagreement: never physiological
    eyes = np.stack([Rotation.from_euler("YX", np.stack([a[:, 0], -a[:, 1]], -1)).as_rotvec()
                     for a in (left, right)], 1)
    out, info = gaze.consistent_gaze(eyes, None, fps)
    d = _dir(out).reshape(n, 2, 3)
    y = np.degrees(np.arctan2(d[..., 0], d[..., 2]))
    u = np.degrees(np.arcsin(d[..., 1]))
    verg = y[:, 1] - y[:, 0]
    assert np.abs(u[:, 1] - u[:, 0]).max() < 1e-6              # same elevation
    assert verg[:30].min() >= -1.0 - 1e-6                      # divergence bounded (1 deg)
    assert np.abs(verg[60:90] - 25).max() < 1e-6               # the real cross is kept
    assert verg[100] <= 8 + 1e-6                               # the spike is bounded
    assert info["crossed_frames"] == 30 and info["max_disagreement_deg"] > 24
    # elsewhere (agreeing eyes): the common gaze, half-way in elevation
    ok = np.r_[30:60, 90:100, 101:120]
    assert np.abs(y[ok, 0] - np.degrees(yaw[ok])).max() < 1e-6
    assert np.abs(u[ok, 0] - (np.degrees(up[ok]) + 2)).max() < 1e-6
    # eyes that already agree are returned unchanged (torsion too)
    same = np.stack([eyes[:, 0], eyes[:, 0]], 1)
    assert np.abs(gaze.consistent_gaze(same, None, fps)[0] - same).max() < 1e-9


def test_consistent_gaze_trusts_the_eye_nearer_the_camera():
    """Head turned 40 degrees towards camera +x: the left eye is the far one; its bad
    reading is dropped: both eyes take the right eye's gaze (the left within the 1 degree
    of divergence allowed)."""
    n = 10
    head = np.tile([0, np.radians(40), 0], (n, 1))
    good = Rotation.from_euler("YX", [[0.2, -0.1]] * n).as_rotvec()
    bad = Rotation.from_euler("YX", [[0.2 + np.radians(27), -0.1]] * n).as_rotvec()
    out, _ = gaze.consistent_gaze(np.stack([bad, good], 1), head, 30.0)
    assert _angle_deg(_dir(out[:, 0]), _dir(good)).max() < 1.0 + 1e-6
    assert _angle_deg(_dir(out[:, 1]), _dir(good)).max() < 1e-6


def test_key_rotation_tells_a_turning_eyeball_from_lids():
    rng = np.random.default_rng(0)
    ball = rng.normal(size=(80, 3))
    ball = 0.012 * ball / np.linalg.norm(ball, axis=1, keepdims=True) + [0.03, -0.05, 1.6]
    lids = rng.normal(0, 0.01, (60, 3)) + [0.03, -0.06, 1.62]
    P = np.concatenate([ball, lids])
    edges = np.array([(i, i + 1) for i in range(79)] + [(80 + i, 81 + i) for i in range(59)])
    R = Rotation.from_rotvec([0, 0, np.radians(KEY_DEG)])
    c = ball.mean(0)
    Q = P.copy()
    Q[:80] = R.apply(ball - c) + c
    r = gaze.key_rotation(P, Q, edges)
    assert r is not None and abs(r["angle_deg"] - KEY_DEG) < 1e-6 and r["vertices"] == 80
    lid = P.copy()
    lid[80:, 2] -= np.linspace(0, 0.004, 60)                 # lids deform: no rotation
    assert gaze.key_rotation(P, lid, edges) is None
    w = gaze.eyelook_weights(Rotation.from_euler("YX", [[np.radians(10), np.radians(-5)]] * 2)
                             .as_rotvec().reshape(1, 2, 3),
                             {"eyeLookOutLeft": np.radians(20), "eyeLookInLeft": np.radians(20),
                              "eyeLookUpRight": np.radians(20), "eyeLookInRight": 0.5})
    assert w["eyeLookOutLeft"][0] == pytest.approx(0.5) and w["eyeLookInLeft"][0] == 0
    assert w["eyeLookUpRight"][0] == pytest.approx(0.25)        # up 5 degrees of 20
    assert w["eyeLookInRight"][0] == pytest.approx(np.radians(10) / 0.5)


# ----------------------------------------------------------------------------- in Blender

bpy = pytest.importorskip("bpy")
from test_blender_rig import empty_scene, synthetic_capture  # noqa: E402,F401


def _eyeball(name, center, side):
    """A UV sphere at ``center`` (world) with the four eyeLook keys of its ``side`` that
    rotate it by KEY_DEG about its centre, as ARKit avatars carry them."""
    bpy.ops.mesh.primitive_uv_sphere_add(segments=16, ring_count=8, radius=0.012,
                                         location=tuple(center))
    obj = bpy.context.active_object
    obj.name = name
    # poles along -Y/+Y: the -Y pole is the pupil (the character faces -Y)
    obj.rotation_euler = (np.pi / 2, 0, 0)
    bpy.ops.object.transform_apply(location=False, rotation=True, scale=False)
    obj.shape_key_add(name="Basis")
    co = np.array([v.co[:] for v in obj.data.vertices])
    front = np.array([0, -1.0, 0])
    look = {"Up": [0, 0, 1.0], "Down": [0, 0, -1.0],
            "Out": [1.0 if side == "Left" else -1.0, 0, 0],
            "In": [-1.0 if side == "Left" else 1.0, 0, 0]}
    for word, to in look.items():
        axis = np.cross(front, to)
        R = Rotation.from_rotvec(axis / np.linalg.norm(axis) * np.radians(KEY_DEG))
        kb = obj.shape_key_add(name=f"eyeLook{word}{side}", from_mix=False)
        kb.data.foreach_set("co", R.apply(co).astype(np.float32).ravel())
    pupil = int(np.argmin(co[:, 1]))
    return obj, pupil


def _avatar():
    """The sample character (its public builder) plus two eyeball meshes like a Ready
    Player Me avatar: eyeLook keys that rotate them, skinned to the eye bones."""
    from operators.scene import cli_scene
    objs = cli_scene.load_character("sample")
    arm = next(o for o in objs if o.type == "ARMATURE")
    head = next(o for o in objs if o.type == "MESH")
    balls = {}
    for side, bone in (("Left", "left_eye"), ("Right", "right_eye")):
        center = arm.matrix_world @ arm.data.bones[bone].head_local
        obj, pupil = _eyeball(f"Eye{side}", np.array(center), side)
        obj.parent = arm
        obj.matrix_parent_inverse = arm.matrix_world.inverted()
        vg = obj.vertex_groups.new(name=bone)
        vg.add(list(range(len(obj.data.vertices))), 1.0, "REPLACE")
        mod = obj.modifiers.new("Armature", "ARMATURE")
        mod.object = arm
        balls[side] = (obj, pupil)
    return head, arm, balls


def _eye_dirs(arm, balls, head_bone, frame):
    """Gaze of each evaluated eyeball (pupil - centre) in the head bone's frame, Blender
    axes."""
    scene = bpy.context.scene
    scene.frame_set(frame)
    dg = bpy.context.evaluated_depsgraph_get()
    pb = arm.pose.bones[head_bone]
    D = np.array((arm.matrix_world @ pb.matrix @ (arm.matrix_world
                  @ arm.data.bones[head_bone].matrix_local).inverted()).to_3x3())
    out = []
    for side in ("Left", "Right"):
        obj, pupil = balls[side]
        ev = obj.evaluated_get(dg)
        me = ev.to_mesh()
        co = np.array([v.co[:] for v in me.vertices])
        ev.to_mesh_clear()
        M = np.array(obj.matrix_world)
        w = co @ M[:3, :3].T + M[:3, 3]
        d = w[pupil] - w.mean(0)
        out.append(np.linalg.inv(D) @ d)
    return np.array(out)


def _keyed_paths(idblock):
    ad = idblock.animation_data
    if ad is None or ad.action is None:
        return set()
    from bpy_extras import anim_utils
    bag = anim_utils.action_get_channelbag_for_slot(ad.action, ad.action_slot)
    return {fc.data_path for fc in bag.fcurves} if bag is not None else set()


@pytest.mark.parametrize("drive", ["auto", "shape_keys"])
def test_avatar_eyes_driven_once_follow_the_gaze(empty_scene, drive):
    head, arm, balls = _avatar()
    cap = synthetic_capture(n=40, head_scale=1.0)
    # the two eyes agree (a real gaze): the capture's gaze is the reference
    cap.arrays["eyes"][:, 1] = cap.arrays["eyes"][:, 0]
    from operators.scene import retarget_bake
    meshes = [head, balls["Left"][0], balls["Right"][0]]
    s = retarget_bake.bake_capture(cap, meshes, armature=arm, eye_drive=drive)
    e = s["eyes"]
    assert sorted(e["rotating_keys"]) == ["EyeLeft", "EyeRight"]
    assert e["rotating_keys"]["EyeLeft"] == sorted(f"eyeLook{w}Left"
                                                   for w in ("Up", "Down", "In", "Out"))
    assert head.name not in e["rotating_keys"]          # its eyeLook keys move lids only
    eye_paths = {f'pose.bones["{b}"].rotation_quaternion' for b in ("left_eye", "right_eye")}
    ball_paths = {p for side in ("Left", "Right")
                  for p in _keyed_paths(balls[side][0].data.shape_keys) if "eyeLook" in p}
    arm_paths = _keyed_paths(arm)
    if drive == "auto":                  # eye bones carry the eyeballs: bones, not keys
        assert e["drive"] == "bones" and "carry" in e["reason"]
        assert eye_paths <= arm_paths and not ball_paths
    else:
        assert e["drive"] == "shape_keys"
        assert not (eye_paths & arm_paths) and len(ball_paths) == 8
    head_bone = s["bones"]["head"]
    # capture gaze (model axes) -> Blender axes (x, -z, y), relative to the head
    want = _dir(cap["eyes"]).reshape(-1, 2, 3)
    want = np.stack([want[..., 0], -want[..., 2], want[..., 1]], -1)
    errs = []
    for i in range(cap.n_frames):
        got = _eye_dirs(arm, balls, head_bone, 1 + i)
        errs.append(_angle_deg(got, want[i]))
    errs = np.array(errs)
    assert errs.max() < 3.0, f"worst eye direction error {errs.max():.2f} deg"
    # driven twice the gaze would be about doubled: the capture swings 10+ degrees here
    assert np.degrees(np.arccos(want[:, 0, 1] * -1)).max() > 10
