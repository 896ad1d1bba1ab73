"""The head rig in Blender: mesh, shape keys, bones, skinning and axis conversion.

The proof: the evaluated (depsgraph) mesh of an animated synthetic rig equals the core's
``expression_vertices`` + ``pose_vertices`` of that frame's capture values, converted to
Blender axes, within 1e-5 m.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

bpy = pytest.importorskip("bpy")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flame_synthetic import uv_sphere  # noqa: E402

from emoca_blender.arkit import ARKIT_NAMES  # noqa: E402
from emoca_blender.capture_file import make_capture  # noqa: E402
from emoca_blender.models.head_model import HeadModel, pose_vertices  # noqa: E402
from operators.scene import blender_anim, rig_build
from emoca_blender import rotations  # noqa: E402


# ------------------------------------------------------------------ synthetic data

def synthetic_head(expression_names=None, n_lat=24, n_lon=32, seed=0, posedirs=False) -> HeadModel:
    """A 10 cm-radius sphere head (model axes: +X subject's left, +Y up, +Z out of the face)
    with FLAME's five joints, smooth LBS weights (jaw region, eyes) and smooth random
    expression shapes."""
    rng = np.random.default_rng(seed)
    v, faces = uv_sphere(n_lat, n_lon, margin=0.05)
    v = v * 0.1
    V = len(v)
    faces = faces.astype(np.int32)
    uv = np.stack([(np.arctan2(v[:, 0], v[:, 2]) / (2 * np.pi)) % 1.0, 0.5 + v[:, 1] * 5], -1)
    joint_names = ("root", "neck", "jaw", "left_eye", "right_eye")
    joints = np.array([[0, -0.10, -0.02], [0, -0.07, -0.02], [0, -0.02, -0.01],
                       [0.03, 0.02, 0.08], [-0.03, 0.02, 0.08]], np.float64)
    parents = np.array([-1, 0, 1, 1, 1], np.int32)
    W = np.zeros((V, 5))
    jaw_w = np.clip((-v[:, 1] - 0.01) / 0.04, 0, 1) * np.clip((v[:, 2] + 0.03) / 0.05, 0, 1)
    eye_l = np.exp(-np.sum((v - [0.035, 0.02, 0.09]) ** 2, 1) / (2 * 0.012 ** 2))
    eye_r = np.exp(-np.sum((v - [-0.035, 0.02, 0.09]) ** 2, 1) / (2 * 0.012 ** 2))
    eye_l[eye_l < 1e-3] = 0
    eye_r[eye_r < 1e-3] = 0
    W[:, 2], W[:, 3], W[:, 4] = jaw_w * 0.9, eye_l * 0.8, eye_r * 0.8
    neck_w = np.clip((-v[:, 1] - 0.05) / 0.05, 0, 1) * 0.5
    W[:, 1] = (1 - W[:, 2:].sum(1)) * neck_w
    W[:, 0] = 1 - W[:, 1:].sum(1)
    if expression_names is None:
        expression_names = tuple(f"exp_{k:02d}" for k in range(12))
    K = len(expression_names)
    # smooth fields: low-order polynomials of position, a few mm at weight 1
    P = np.stack([np.ones(V), v[:, 0], v[:, 1], v[:, 2], v[:, 0] * v[:, 1] * 10,
                  v[:, 1] * v[:, 2] * 10], -1) * np.array([1, 10, 10, 10, 1, 1])
    basis = np.einsum("vp,kpc->kvc", P, rng.normal(0, 0.003, (K, P.shape[1], 3)))
    pd = rng.normal(0, 0.002, (9 * 4, V * 3)).astype(np.float32) if posedirs else None
    return HeadModel(v_template=v.astype(np.float32), faces=faces,
                     expression_basis=basis.astype(np.float32),
                     expression_names=tuple(expression_names), joint_names=joint_names,
                     joints=joints.astype(np.float32), parents=parents,
                     lbs_weights=W.astype(np.float32), uv=uv.astype(np.float32),
                     posedirs=pd, name="synthetic")


def synthetic_capture(n=60, k=12, fps=30.0, expression_names=None, seed=1, source="actor_take1.mp4",
                      head_scale=1.0):
    """Sinusoidal curves for every field a rig or a retarget reads."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fps
    ph = rng.uniform(0, 2 * np.pi, 200)
    fr = rng.uniform(0.2, 1.5, 200)

    def wave(i, amp, off=0.0):
        return off + amp * np.sin(2 * np.pi * fr[i] * t + ph[i])

    head = np.stack([wave(0, 0.25, 0.1), wave(1, 0.5, -0.05), wave(2, 0.15)], -1) * head_scale
    jaw = np.stack([np.abs(wave(3, 0.3)), wave(4, 0.02), wave(5, 0.02)], -1)
    eyes = np.stack([np.stack([wave(6, 0.2), wave(7, 0.3), np.zeros(n)], -1)] * 2, 1)
    eyes[:, 1] += np.stack([wave(8, 0.02), wave(9, 0.02), np.zeros(n)], -1)
    ark = np.stack([0.5 + 0.5 * np.sin(2 * np.pi * fr[20 + i] * t + ph[20 + i]) for i in range(52)], -1)
    expr = np.stack([wave(100 + i, 1.5) for i in range(k)], -1)
    names = {"expression": expression_names or tuple(f"exp_{i:02d}" for i in range(k))}
    L = 478
    arrays = dict(valid=np.ones(n, bool), interpolated=np.zeros(n, bool), timestamps=t,
                  bbox=np.tile([100, 100, 300, 300], (n, 1)), landmarks2d=np.zeros((n, L, 2)),
                  landmarks3d=np.zeros((n, L, 3)), head_rotation=head,
                  head_translation=np.tile([0, 0, -0.6], (n, 1)), jaw=jaw, eyes=eyes,
                  blinks=np.zeros((n, 2)), expression=expr, arkit=np.clip(ark, 0, 1),
                  shape=np.zeros(10))
    meta = {"fps": fps, "width": 640, "height": 480, "source": {"path": f"/videos/{source}"}}
    return make_capture(arrays, meta, names)


@pytest.fixture
def empty_scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield bpy.context.scene
    bpy.ops.wm.read_factory_settings(use_empty=True)


def evaluated_vertices(obj, frame):
    scene = bpy.context.scene
    scene.frame_set(frame)
    dg = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(dg)
    me = ev.to_mesh()
    co = np.empty(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", co)
    ev.to_mesh_clear()
    M = np.array(obj.matrix_world)
    co = co.reshape(-1, 3).astype(np.float64)
    return co @ M[:3, :3].T + M[:3, 3]


def expected_vertices(model, cap, i):
    w = cap["expression"][i]
    pose = np.zeros((5, 3))
    pose[0] = cap["head_rotation"][i]
    pose[2] = cap["jaw"][i]
    pose[3:5] = cap["eyes"][i]
    v = pose_vertices(model, model.expression_vertices(w).astype(np.float64), pose)
    return rig_build.model_to_blender(v)


# ------------------------------------------------------------------ tests

def test_axis_conversion_round_trip():
    v = np.random.default_rng(0).normal(size=(7, 3))
    b = rig_build.model_to_blender(v)
    assert np.allclose(b, v @ rig_build.C.T)
    assert np.allclose(rig_build.blender_to_model(b), v)
    # up stays up (+Y -> +Z), the face looks at the Front view (+Z -> -Y), left stays +X
    assert np.allclose(rig_build.model_to_blender([0, 1, 0]), [0, 0, 1])
    assert np.allclose(rig_build.model_to_blender([0, 0, 1]), [0, -1, 0])
    assert np.allclose(rig_build.model_to_blender([1, 0, 0]), [1, 0, 0])
    assert np.isclose(np.linalg.det(rig_build.C), 1.0)


def test_quaternion_helpers():
    rng = np.random.default_rng(3)
    r = rng.normal(0, 1, (50, 3))
    r *= np.minimum(1, 3.0 / np.linalg.norm(r, axis=1, keepdims=True))
    q = rotations.rotvec_to_quat(r)
    assert np.allclose(np.linalg.norm(q, axis=1), 1)
    assert np.allclose(rotations.quat_to_rotvec(q), r, atol=1e-9)
    # continuity: a rotation through pi keeps consecutive keys on the same hemisphere
    ang = np.linspace(0, 2 * np.pi, 40)
    rv = np.stack([np.zeros_like(ang), np.zeros_like(ang), ang], -1)
    rv = np.where(ang[:, None] > np.pi, rv - [0, 0, 2 * np.pi], rv)   # axis-angle wraps at pi
    qc = rotations.quat_continuous(rotations.rotvec_to_quat(rv))
    assert np.all(np.einsum("ij,ij->i", qc[1:], qc[:-1]) > 0.9)


def test_build_head_object_structure(empty_scene):
    model = synthetic_head(posedirs=True)
    t0 = time.perf_counter()
    obj, arm = rig_build.build_head_object(model, "Head")
    dt = time.perf_counter() - t0
    me = obj.data
    assert len(me.vertices) == model.n_vertices and len(me.polygons) == len(model.faces)
    co = np.empty(model.n_vertices * 3, np.float32)
    me.vertices.foreach_get("co", co)
    assert np.allclose(co.reshape(-1, 3), rig_build.model_to_blender(model.v_template), atol=1e-7)
    assert all(p.use_smooth for p in me.polygons)
    assert me.uv_layers.active is not None
    names = [kb.name for kb in me.shape_keys.key_blocks]
    assert names[0] == "Basis" and names[1:13] == list(model.expression_names)
    assert sum(n.startswith(rig_build.POSE_CORRECTIVE_PREFIX) for n in names) == 36
    kb = me.shape_keys.key_blocks["exp_03"]
    assert kb.slider_min <= -10 and kb.slider_max >= 10
    assert [b.name for b in arm.data.bones] == list(model.joint_names)
    assert arm.data.bones["jaw"].parent.name == "neck"
    assert obj.parent == arm and obj.modifiers["Armature"].object == arm
    # bone-local axes as documented
    B = {b.name: np.array(b.matrix_local.to_3x3()) for b in arm.data.bones}
    assert np.allclose(B["root"], rig_build.C, atol=1e-6)        # local axes = model axes
    assert np.allclose(B["jaw"][:, 0], [1, 0, 0], atol=1e-6)      # X = subject's left
    yj = B["jaw"][:, 1]
    assert yj[1] < -0.1 and yj[2] < -0.1                         # Y forward and down
    assert np.allclose(B["left_eye"][:, 1], [0, -1, 0], atol=1e-6)  # gaze forward
    # skin weights round-trip
    vg = obj.vertex_groups["jaw"].index
    wj = np.array([next((g.weight for g in v.groups if g.group == vg), 0.0) for v in me.vertices])
    assert np.allclose(wj, model.lbs_weights[:, 2], atol=1e-6)
    print(f"build_head_object: {model.n_vertices} vertices, 48 shape keys in {dt * 1000:.1f} ms")


def test_evaluated_mesh_matches_core_lbs(empty_scene):
    """Shape keys + bones + skinning + axes: Blender's deformed mesh == the core's math."""
    model = synthetic_head()
    cap = synthetic_capture(n=40)
    obj, arm = rig_build.build_head_object(model, "Head")
    summary = rig_build.animate_head_rig(obj, arm, cap, frame_start=5)
    assert summary["frames"] == (5, 44) and not summary["missing"]
    scene = bpy.context.scene
    assert (scene.frame_start, scene.frame_end, scene.render.fps) == (5, 44, 30)
    worst = 0.0
    for i in (0, 7, 19, 33, 39):
        got = evaluated_vertices(obj, 5 + i)
        want = expected_vertices(model, cap, i)
        err = np.abs(got - want).max()
        worst = max(worst, err)
        assert err < 1e-5, f"frame {i}: max vertex error {err:.2e} m"
    # The pose really moves the mesh (the test would be void otherwise).
    rest = rig_build.model_to_blender(model.expression_vertices(cap["expression"][19]))
    assert np.abs(evaluated_vertices(obj, 24) - rest).max() > 5e-3
    print(f"max vertex error over 5 frames: {worst:.2e} m")


def test_head_rotation_direction(empty_scene):
    """A yaw to the subject's left (+ry in model axes) turns the nose towards +X in Blender."""
    model = synthetic_head()
    cap = synthetic_capture(n=3)
    cap.arrays["head_rotation"][:] = [0.0, 0.5, 0.0]
    cap.arrays["jaw"][:] = 0
    cap.arrays["eyes"][:] = 0
    cap.arrays["expression"][:] = 0
    obj, arm = rig_build.build_head_object(model, "Head")
    rig_build.animate_head_rig(obj, arm, cap)
    got = evaluated_vertices(obj, 2)
    nose = int(np.argmax(model.v_template[:, 2]))       # frontmost vertex
    assert got[nose, 0] > 0.03 and got[nose, 1] < -0.05


def test_jaw_opens_mouth_downwards(empty_scene):
    model = synthetic_head()
    cap = synthetic_capture(n=2)
    for f in ("head_rotation", "eyes", "expression"):
        cap.arrays[f][:] = 0
    cap.arrays["jaw"][:] = [0.4, 0, 0]
    obj, arm = rig_build.build_head_object(model, "Head")
    rig_build.animate_head_rig(obj, arm, cap)
    got = evaluated_vertices(obj, 1)
    chin = int(np.argmax(model.lbs_weights[:, 2] * (model.v_template[:, 2] > 0.05)))
    rest = rig_build.model_to_blender(model.v_template[chin])
    assert got[chin, 2] < rest[2] - 0.005   # chin goes down
    q = np.array(arm.pose.bones["jaw"].rotation_quaternion)
    assert q[1] > 0.1                          # positive rotation about the jaw bone's local X


def test_animate_keys_one_per_frame_and_fps(empty_scene):
    model = synthetic_head()
    cap = synthetic_capture(n=25, fps=30000 / 1001)
    obj, arm = rig_build.build_head_object(model, "Head")
    rig_build.animate_head_rig(obj, arm, cap, frame_start=1)
    scene = bpy.context.scene
    assert scene.render.fps == 30 and abs(scene.render.fps / scene.render.fps_base - 29.97003) < 1e-4
    curves = blender_anim.read_fcurves(obj.data.shape_keys)
    fr, val = curves[('key_blocks["exp_05"].value', 0)]
    assert np.array_equal(fr, np.arange(1, 26))
    assert np.allclose(val, cap["expression"][:, 5], atol=1e-6)
    bones = blender_anim.read_fcurves(arm)
    assert len([k for k in bones if k[0].endswith("rotation_quaternion")]) == 16
    # re-animating replaces the curves instead of adding keys
    rig_build.animate_head_rig(obj, arm, cap, frame_start=1)
    fr2, _ = blender_anim.read_fcurves(obj.data.shape_keys)[('key_blocks["exp_05"].value', 0)]
    assert len(fr2) == 25


def test_arkit_channels_on_arkit_model(empty_scene):
    model = synthetic_head(expression_names=ARKIT_NAMES)
    cap = synthetic_capture(n=20)
    obj, arm = rig_build.build_head_object(model, "OpenHead")
    kb = obj.data.shape_keys.key_blocks["jawOpen"]
    assert (kb.slider_min, kb.slider_max) == (-1.0, 2.0)
    s = rig_build.animate_head_rig(obj, arm, cap, channels="arkit")
    assert len(s["shape_keys"]) == 52 and not s["missing"]
    fr, val = blender_anim.read_fcurves(obj.data.shape_keys)[('key_blocks["cheekPuff"].value', 0)]
    assert np.allclose(val, cap.column("arkit", "cheekPuff"), atol=1e-6)


def test_pose_correctives_keyed(empty_scene):
    """Pose-corrective shape keys: the evaluated mesh equals LBS of (shaped + correctives)."""
    model = synthetic_head(posedirs=True)
    cap = synthetic_capture(n=10)
    obj, arm = rig_build.build_head_object(model, "Head")
    rig_build.animate_head_rig(obj, arm, cap)
    i = 6
    pose = np.zeros((1, 5, 3))
    pose[0, 0] = cap["head_rotation"][i]
    pose[0, 2] = cap["jaw"][i]
    pose[0, 3:5] = cap["eyes"][i]
    feats = rig_build.pose_corrective_features(pose)[0]
    v = model.expression_vertices(cap["expression"][i]).astype(np.float64)
    v = v + (feats @ model.posedirs.astype(np.float64)).reshape(-1, 3)
    want = rig_build.model_to_blender(pose_vertices(model, v, pose[0]))
    err = np.abs(evaluated_vertices(obj, 1 + i) - want).max()
    assert err < 1e-5, err


def _ict_rig_vs_core(obj, arm, model, cap, identity, frames):
    """Largest |evaluated rig vertex - core vertex| over ``frames``, metres. The core: the ICT
    head with ``identity`` baked in, the capture's ARKit weights, then LBS with the root from
    ``head_rotation`` and the eye joints from ``eyes`` (the neck and the jaw at rest: the
    jaw is in the sculpted shapes)."""
    base = model.v_template.astype(np.float64) + np.tensordot(
        np.asarray(identity, np.float64), model.shape_basis[:len(identity)].astype(np.float64),
        axes=1)
    worst = 0.0
    for i in frames:
        w = np.array([cap.column("arkit", n)[i] for n in model.expression_names])
        v = base + np.tensordot(w, model.expression_basis.astype(np.float64), axes=1)
        pose = np.zeros((len(model.joint_names), 3))
        pose[model.joint_index("root")] = cap["head_rotation"][i]
        pose[model.joint_index("left_eye")] = cap["eyes"][i, 0]
        pose[model.joint_index("right_eye")] = cap["eyes"][i, 1]
        want = rig_build.model_to_blender(pose_vertices(model, v, pose))
        worst = max(worst, float(np.abs(evaluated_vertices(obj, 1 + i) - want).max()))
    return worst


def test_ict_sample_character_matches_core(empty_scene):
    """The sample character (the bundled ICT head with its fixed identity): the evaluated
    mesh equals the core model's at several frames within 1e-4 of the head's size; the
    ARKit shapes carry the jaw (teeth and tongue included), the eye bones turn the eyeballs
    (ICT's eyeLook shapes only move the lids)."""
    model, identity = rig_build.arkit_head()
    cap = synthetic_capture(n=20)
    obj, arm = rig_build.build_head_object(model, "Sample", shape=identity)
    s = rig_build.animate_head_rig(obj, arm, cap, channels="arkit")
    assert not s["missing"] and s["jaw_from"] == "shape keys" and "eyes_from" not in s
    assert {"left_eye", "right_eye", "root"} <= set(s["bones"])
    size = float(np.ptp(model.v_template[:, 1]))
    assert _ict_rig_vs_core(obj, arm, model, cap, identity, (0, 6, 13, 19)) < 1e-4 * size
    # parts carry their own materials: teeth, eyes and the iris read as such
    mats = {m.name for m in obj.data.materials}
    assert {"EMOCA_skin", "EMOCA_teeth", "EMOCA_iris", "EMOCA_eyeball"} <= mats


def test_actor_rig_takes_the_clips_identity(empty_scene):
    """The actor rig's identity is fitted to the capture's neutral landmarks: made from a
    known identity, the rig's neutral landmarks come back closer to the actor's than the mean
    head's, and the fitted coefficients follow the true ones (but the first: 72% of ICT's
    first mode is the head's overall size, which the fit leaves to the similarity alignment,
    as one camera cannot see it)."""
    from emoca_blender.models import head_model

    model = head_model.ict_head()
    truth = np.zeros(model.shape_basis.shape[0])
    truth[:6] = [1.5, -1.0, 0.8, -0.6, 1.2, -0.9]
    neutral = model.landmarks(model.v_template + np.tensordot(
        truth, model.shape_basis.astype(np.float64), axes=1))
    cap = synthetic_capture(n=5)
    cap.arrays["neutral_landmarks"] = neutral.astype(np.float32)
    m2, identity = rig_build.arkit_head(cap)
    assert identity is not None and np.corrcoef(identity[1:6], truth[1:6])[0, 1] > 0.9
    fit = model.landmarks(model.v_template + np.tensordot(
        identity, model.shape_basis[:len(identity)].astype(np.float64), axes=1))
    from emoca_blender.rotations import similarity_align

    def err(L):           # shape error: after the best similarity (size is not observable)
        sc, R, t = similarity_align(np.asarray(L, np.float64)[None, :468], neutral[:468])
        return np.linalg.norm(sc[0] * L[:468] @ R[0].T + t[0] - neutral[:468], axis=1).mean()

    assert err(fit) < 0.5 * err(model.landmarks(model.v_template))
    obj, arm = rig_build.build_head_object(m2, "Actor", shape=identity)
    rig_build.animate_head_rig(obj, arm, cap, channels="arkit")
    assert _ict_rig_vs_core(obj, arm, m2, cap, identity, (0, 4)) < 1e-4 * 0.3
