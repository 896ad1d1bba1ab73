"""Build a head rig in Blender from a HeadModel and animate it from a Capture.

The rig is one mesh object (basis = the model's neutral, one shape key per expression
component, optional pose-corrective shape keys) skinned by an armature with one bone per
model joint (root, neck, jaw, left_eye, right_eye for FLAME and the open head).

Axes. Head models and captures use +X = the subject's left, +Y up, +Z out of the face
(metres). Blender is Z-up and a character faces -Y (towards the Front view), so a model
point ``(x, y, z)`` becomes ``(x, -z, y)`` in Blender (:func:`model_to_blender`, a rotation
of +90 degrees about X, matrix :data:`C`). Rotations convert the same way: an axis-angle
``r`` in model axes is ``C @ r`` in Blender axes.

Bones (rest pose, armature space; every bone's local X axis is the subject's left, +X):

=========== ============================== ==================================================
bone        head -> tail                   local axes (Y along the bone)
=========== ============================== ==================================================
root, neck  joint -> straight up (+Z)      X subject's left, Y up, Z out of the face (-Y):
                                           the local axes ARE the model axes, so a FLAME
                                           axis-angle is the bone's local axis-angle as is
jaw         joint -> towards the chin      X subject's left, Y forward-and-down, Z forward-up;
            (forward and down)             a positive rotation about local X opens the mouth
left_eye,   eye centre -> forward (-Y)     X subject's left, Y gaze direction, Z down
right_eye
=========== ============================== ==================================================

Pose bones use ``rotation_mode = 'QUATERNION'`` (no gimbal problems, and the FBX exporter
bakes them to Euler itself). A joint's model-space axis-angle ``r`` (relative to its parent,
as in FLAME's LBS) is the bone-local axis-angle ``B.T @ C @ r`` where ``B`` is the bone's
rest orientation in armature space; the quaternion curves are made sign-continuous so the
interpolation between keys never takes the long way round.

Head rotation: ``capture['head_rotation']`` is the rotation from the head frame to the
camera frame (zero = facing the camera), so keyed on the root bone it turns the rig as the
actor turned relative to the camera (the rig's rest pose faces the Front view, i.e. the
camera). The retarget (``retarget_bake``) keys it relative to the capture's median pose.
"""
from __future__ import annotations

import importlib
import math

import bpy
import numpy as np

from .. import _core
from . import blender_anim
from .._core import capture_file, head_model  # noqa: F401  (capture_file: type of `capture`)
from .._core import rotations

keyreduce = importlib.import_module(_core.core.__name__ + ".retarget.keyreduce")

# model (x, y, z) -> Blender (x, -z, y): +90 degrees about X.
C = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])

ARKIT_SLIDER = (-1.0, 2.0)
OTHER_SLIDER = (-10.0, 10.0)  # Blender's hard limits
POSE_CORRECTIVE_PREFIX = "pose_corrective_"

_UP = np.array([0.0, 0.0, 1.0])
_FORWARD = np.array([0.0, -1.0, 0.0])


def fill_triangle_mesh(me, verts, faces, corner_uv=None, uv_name: str = "UVMap"):
    """Fill an empty Blender mesh with triangles in one go (foreach_set): ``verts`` (V,3)
    Blender-axis positions, ``faces`` (F,3), optional ``corner_uv`` (F*3,2) UVs in face
    corner order; smooth shading, edges computed. Returns ``me`` (not validated)."""
    faces = np.asarray(faces, np.int32)
    V, F = len(verts), len(faces)
    me.vertices.add(V)
    me.vertices.foreach_set("co", np.asarray(verts, np.float32).ravel())
    me.loops.add(3 * F)
    me.loops.foreach_set("vertex_index", faces.ravel())
    me.polygons.add(F)
    me.polygons.foreach_set("loop_start", np.arange(0, 3 * F, 3, dtype=np.int32))
    me.update(calc_edges=True)
    me.polygons.foreach_set("use_smooth", np.ones(F, dtype=bool))
    if corner_uv is not None:
        uvl = me.uv_layers.new(name=uv_name)
        uvl.data.foreach_set("uv", np.asarray(corner_uv, np.float32).ravel())
    return me


def model_to_blender(v) -> np.ndarray:
    """(..., 3) model-axis points or vectors -> Blender axes: (x, y, z) -> (x, -z, y)."""
    v = np.asarray(v)
    return np.stack([v[..., 0], -v[..., 2], v[..., 1]], axis=-1)


def blender_to_model(v) -> np.ndarray:
    """Inverse of :func:`model_to_blender`: (x, y, z) -> (x, z, -y)."""
    v = np.asarray(v)
    return np.stack([v[..., 0], v[..., 2], -v[..., 1]], axis=-1)


def bone_rest_rotation(arm_obj, bone_name: str, world: bool = False) -> np.ndarray:
    """3x3 rest orientation of a bone (columns = its local axes) in armature space, or in world
    space (armature object rotation included, scale removed) when ``world``."""
    B = np.array(arm_obj.data.bones[bone_name].matrix_local.to_3x3(), dtype=np.float64)
    if world:
        W = np.array(arm_obj.matrix_world.to_3x3(), dtype=np.float64)
        B = W @ B
        B /= np.linalg.norm(B, axis=0, keepdims=True)
    return B


def model_rotvec_to_bone_quat(r_model: np.ndarray, B: np.ndarray) -> np.ndarray:
    """(N, 3) model-axis axis-angle of a joint (relative to its parent) -> (N, 4) continuous
    bone-local quaternions for a bone whose rest orientation is ``B`` (Blender axes)."""
    r_local = np.asarray(r_model, np.float64) @ (B.T @ C).T
    return rotations.quat_continuous(rotations.rotvec_to_quat(r_local))


# ---------------------------------------------------------------- building

def _collection(collection):
    return collection if collection is not None else bpy.context.scene.collection


def _bone_direction(model, j: int, name: str, verts_b: np.ndarray) -> np.ndarray:
    lname = name.lower()
    if "eye" in lname:
        return _FORWARD.copy()
    if "jaw" in lname:
        # Towards the centroid of the vertices the jaw moves, kept in the mid-sagittal plane.
        w = model.lbs_weights[:, j].astype(np.float64)
        head = C @ model.joints[j]
        if w.sum() > 1e-6:
            d = (w[:, None] * verts_b).sum(0) / w.sum() - head
            d[0] = 0.0
            n = np.linalg.norm(d)
            if n > 1e-6 and d[1] < 0 and d[2] < 0:   # forward (-Y) and down (-Z)
                return d / n
        return np.array([0.0, -1.0, -1.0]) / math.sqrt(2.0)
    return _UP.copy()


def arkit_head(capture=None):
    """The head model and identity of a rig in ARKit channels: the bundled ICT head with the
    actor's identity fitted to the capture's neutral landmarks (``neutral_landmarks``, which
    the default backend stores), or with the sample character's fixed identity when
    ``capture`` is None. Returns (model, identity coefficients)."""
    model = head_model.ict_head()
    if capture is None:
        return model, head_model.SAMPLE_IDENTITY
    nl = capture.get("neutral_landmarks") if hasattr(capture, "get") else None
    if nl is None or np.asarray(nl).shape != (478, 3):
        return model, None
    return model, head_model.fit_identity(model, nl)


#: base colours of the parts a head model names (linear RGB); parts not listed are skin
PART_COLOURS = {"skin": (0.62, 0.42, 0.33), "teeth": (0.85, 0.82, 0.74),
                "gums_tongue": (0.55, 0.18, 0.17), "mouth_socket": (0.20, 0.05, 0.05),
                "eye_socket": (0.45, 0.25, 0.22), "eyeball": (0.85, 0.84, 0.80),
                "iris": (0.10, 0.06, 0.04), "eyelashes": (0.04, 0.03, 0.02)}
IRIS_DEG = 28.0    # eyeball faces within this angle of the eye's axis are iris
#: opacity of a part's material: ICT's lashes are solid cards (the lower ones a strip under
#: the lid), which drawn opaque read as a black band under each eye; at 0.3 they shade the
#: lid line as lashes do (Solid viewport, Workbench; EEVEE blends them)
PART_ALPHA = {"eyelashes": 0.3}


def _part_materials(obj, model, vb: np.ndarray) -> None:
    """One plain material per part (skin, teeth, gums and tongue, mouth, eyeballs with an
    iris, lashes), so the rig reads as a head in Workbench and EEVEE; the part of a face is
    its first vertex's."""
    names = list(model.part_names)
    fpart = np.asarray(model.vertex_part)[np.asarray(model.faces)[:, 0]]
    slot_of = {}
    idx = np.zeros(len(fpart), np.int32)
    faces = np.asarray(model.faces)
    for p, pname in enumerate(names):
        key = ("eyeball" if pname.startswith("eyeball") else
               "skin" if pname in ("face", "head") else pname)
        sel = fpart == p
        if not sel.any():
            continue
        if key == "eyeball":
            j = model.joint_index("left_eye" if pname.endswith("left") else "right_eye")
            c = model_to_blender(np.asarray(model.joints[j], np.float64))
            u = vb[faces[sel]].mean(1) - c
            ang = np.degrees(np.arccos(np.clip(-u[:, 1] / np.linalg.norm(u, axis=1), -1, 1)))
            keys = np.where(ang < IRIS_DEG, "iris", "eyeball")
        else:
            keys = np.full(int(sel.sum()), key if key in PART_COLOURS else "skin")
        out = np.zeros(int(sel.sum()), np.int32)
        for k in np.unique(keys):
            if k not in slot_of:
                mat = bpy.data.materials.get(f"EMOCA_{k}") or bpy.data.materials.new(f"EMOCA_{k}")
                alpha = PART_ALPHA.get(k, 1.0)
                mat.diffuse_color = (*PART_COLOURS[k], alpha)
                if alpha < 1.0 and hasattr(mat, "surface_render_method"):
                    mat.surface_render_method = 'BLENDED'      # EEVEE (Blender 4.2+)
                obj.data.materials.append(mat)
                slot_of[k] = len(obj.data.materials) - 1
            out[keys == k] = slot_of[k]
        idx[sel] = out
    obj.data.polygons.foreach_set("material_index", idx)


def build_head_object(model, name: str, collection=None, with_armature: bool = True,
                      shape: np.ndarray | None = None, with_pose_correctives: bool = True):
    """Create the head mesh (and its armature) in Blender.

    Args:
        model: a ``head_model.HeadModel``.
        name: name of the mesh object; the armature object is ``name + "_rig"``.
        collection: where to link the objects (the scene's master collection by default).
        with_armature: build the armature, vertex groups and Armature modifier.
        shape: optional identity coefficients (S,) baked into the basis with
            ``model.shape_basis`` (joint positions stay the model's).
        with_pose_correctives: when the model has ``posedirs``, add one shape key per
            pose-corrective component (``pose_corrective_000``...), keyed per frame by
            :func:`animate_head_rig` (drivers would be lost in FBX).
    Returns:
        (mesh_obj, arm_obj or None).
    """
    coll = _collection(collection)
    V = model.n_vertices
    v = np.asarray(model.v_template, np.float64)
    if shape is not None and model.shape_basis is not None:
        s = np.asarray(shape, np.float64)
        S = min(len(s), model.shape_basis.shape[0])
        v = v + np.tensordot(s[:S], model.shape_basis[:S].astype(np.float64), axes=1)
    vb = model_to_blender(v)
    faces = np.asarray(model.faces, np.int32)
    corner_uv = None
    if model.uv is not None:
        corner_uv = np.asarray(model.uv, np.float32)[faces.ravel()]
    elif getattr(model, "uv_faces", None) is not None:   # per-corner UVs (FLAME's template)
        corner_uv = np.asarray(model.uv_coords, np.float32)[np.asarray(model.uv_faces).ravel()]
    me = fill_triangle_mesh(bpy.data.meshes.new(name), vb, faces, corner_uv)
    if me.validate(verbose=False):
        raise head_model.HeadModelError(f"head model {model.name!r} produced an invalid mesh")
    me.update()

    obj = bpy.data.objects.new(name, me)
    coll.objects.link(obj)
    if model.part_names and model.vertex_part is not None:
        _part_materials(obj, model, vb)

    # Shape keys: relative to the basis, one per expression component.
    basis = obj.shape_key_add(name="Basis", from_mix=False)
    basis.interpolation = "KEY_LINEAR"
    from .._core import arkit
    is_arkit = set(model.expression_names) <= set(arkit.ARKIT_NAMES)
    lo, hi = ARKIT_SLIDER if is_arkit else OTHER_SLIDER
    eb = model_to_blender(np.asarray(model.expression_basis, np.float64))
    for k, ename in enumerate(model.expression_names):
        kb = obj.shape_key_add(name=str(ename), from_mix=False)
        kb.slider_min, kb.slider_max = lo, hi
        kb.value = 0.0   # Blender 5 adds keys at value 1: components the capture lacks stay off
        kb.data.foreach_set("co", (vb + eb[k]).astype(np.float32).ravel())
    if with_pose_correctives and model.posedirs is not None:
        pd = model_to_blender(np.asarray(model.posedirs, np.float64).reshape(-1, V, 3))
        for p in range(pd.shape[0]):
            kb = obj.shape_key_add(name=f"{POSE_CORRECTIVE_PREFIX}{p:03d}", from_mix=False)
            kb.slider_min, kb.slider_max = OTHER_SLIDER
            kb.value = 0.0
            kb.data.foreach_set("co", (vb + pd[p]).astype(np.float32).ravel())
    obj.data.shape_keys.use_relative = True

    if not with_armature:
        return obj, None

    arm_data = bpy.data.armatures.new(name + "_rig")
    arm_obj = bpy.data.objects.new(name + "_rig", arm_data)
    coll.objects.link(arm_obj)
    arm_data.display_type = "STICK"

    heights = vb[:, 2].max() - vb[:, 2].min()
    length = max(0.25 * heights, 1e-3)
    joints_b = model_to_blender(np.asarray(model.joints, np.float64))

    view_layer = bpy.context.view_layer
    prev_active = view_layer.objects.active
    if bpy.context.mode != "OBJECT" and prev_active is not None:
        bpy.ops.object.mode_set(mode="OBJECT")
    # Edit mode needs the armature in the view layer: link it to the scene for a moment when
    # the target collection is not in it.
    view_layer.update()   # the view layer's object list is resynced lazily
    temp_link = arm_obj.name not in view_layer.objects
    if temp_link:
        bpy.context.scene.collection.objects.link(arm_obj)
    view_layer.objects.active = arm_obj
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        ebones = []
        for j, jname in enumerate(model.joint_names):
            eb_ = arm_data.edit_bones.new(str(jname))
            d = _bone_direction(model, j, str(jname), vb)
            L = length * (0.3 if "eye" in str(jname).lower() else 1.0)
            eb_.head = joints_b[j].tolist()
            eb_.tail = (joints_b[j] + L * d).tolist()
            z = np.cross([1.0, 0.0, 0.0], d)   # local X = +X (the subject's left)
            eb_.align_roll(z.tolist())
            eb_.use_deform = True
            ebones.append(eb_)
        for j, p in enumerate(model.parents):
            if p >= 0:
                ebones[j].parent = ebones[int(p)]
                ebones[j].use_connect = False
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
        view_layer.objects.active = prev_active
        if temp_link:
            bpy.context.scene.collection.objects.unlink(arm_obj)

    for pb in arm_obj.pose.bones:
        pb.rotation_mode = "QUATERNION"

    # Vertex groups from the LBS weights: one add() call per distinct weight value.
    W = np.asarray(model.lbs_weights, np.float32)
    for j, jname in enumerate(model.joint_names):
        vg = obj.vertex_groups.new(name=str(jname))
        w = W[:, j]
        idx = np.nonzero(w > 1e-6)[0]
        if idx.size == 0:
            continue
        vals, inv = np.unique(w[idx], return_inverse=True)
        order = np.argsort(inv, kind="stable")
        bounds = np.searchsorted(inv[order], np.arange(len(vals) + 1))
        for u in range(len(vals)):
            vg.add(idx[order[bounds[u]:bounds[u + 1]]].tolist(), float(vals[u]), "REPLACE")

    mod = obj.modifiers.new("Armature", "ARMATURE")
    mod.object = arm_obj
    mod.use_vertex_groups = True
    mod.use_bone_envelopes = False
    mod.use_deform_preserve_volume = False
    obj.parent = arm_obj
    obj.matrix_parent_inverse.identity()
    return obj, arm_obj


# ---------------------------------------------------------------- animation

def set_scene_timing(scene, fps: float, frame_start: int, n_frames: int) -> None:
    """Scene frame range [frame_start, frame_start + n - 1] and frame rate (``fps_base``
    carries non-integer rates: 29.97 -> fps 30, fps_base 1.001)."""
    set_scene_rate(scene, fps)
    scene.frame_start = int(frame_start)
    scene.frame_end = int(frame_start) + max(n_frames, 1) - 1


def set_scene_rate(scene, fps: float) -> None:
    """The scene's frame rate ``fps`` as Blender stores it: the nearest whole ``render.fps``
    and ``fps_base`` for the rest (29.97 = 30000/1001 -> fps 30, base 1.001). A rate within
    0.005 fps of an NTSC rate (23.976, 29.97, 59.94... = N x 1000/1001) is taken as it: a
    container that rounds 30000/1001 to 29.97 still gives the scene 30000/1001."""
    fps = ntsc_rate(fps)
    ifps = max(1, int(round(fps)))
    scene.render.fps = ifps
    scene.render.fps_base = ifps / float(fps)


def ntsc_rate(fps: float) -> float:
    """``fps``, or the NTSC rate N x 1000/1001 (N = 24, 30, 48, 60, 120, 240) within 0.005 fps
    of it."""
    fps = float(fps)
    for n in (24, 30, 48, 60, 120, 240):
        exact = n * 1000.0 / 1001.0
        if abs(fps - exact) < 0.005:
            return exact
    return fps


def scene_rate(scene) -> float:
    """The scene's frame rate in frames per second (``fps / fps_base``)."""
    return scene.render.fps / scene.render.fps_base


#: How keys are timed (``timing`` of the bakes): "clip" retimes the scene to the clip's
#: frame rate (one key per captured frame on whole frames for a constant-rate clip);
#: "scene" keeps the scene's rate and puts each captured frame at its real time in it
#: (fractional frames where the rates differ: a 29.97 fps clip in a 24 fps scene has frame
#: i at 1 + t_i * 24).
TIMINGS = ("clip", "scene")

#: keys within this many frames of whole frames everywhere are put on the whole frames
WHOLE_FRAME_SNAP = 0.05


def capture_seconds(capture) -> np.ndarray:
    """(N,) seconds of each captured frame from the first: the capture's timestamps (the
    video's presentation times) when they are finite and increasing, else ``i / fps``."""
    n = capture.n_frames
    t = capture.get("timestamps")
    if t is not None:
        t = np.asarray(t, np.float64).reshape(-1)
        if t.shape[0] == n and np.all(np.isfinite(t)) and (n < 2 or np.all(np.diff(t) > 0)):
            return t - t[0]
    return np.arange(n, dtype=np.float64) / float(capture.fps)


def timing_rate(capture, timing: str, scene=None) -> float:
    """The frame rate keys are placed in: the clip's for ``"clip"``, the scene's for
    ``"scene"``."""
    if timing not in TIMINGS:
        raise ValueError(f"timing must be one of {', '.join(TIMINGS)}, not {timing!r}")
    if timing == "clip":
        return float(capture.fps)
    return scene_rate(scene or bpy.context.scene)


def capture_key_frames(capture, frame_start: float, rate: float, sel=slice(None)) -> np.ndarray:
    """Scene frames of the captured frames ``sel`` in a scene at ``rate`` frames per second:
    ``frame_start + (t_i - t_first) * rate`` (t from :func:`capture_seconds`), so every key
    lands at its frame's real time whatever the scene's rate. In a scene at the clip's own
    rate (or a whole multiple of it) the keys are put on whole frames when they are all
    within :data:`WHOLE_FRAME_SNAP` of one (a constant-rate clip whose container rounds its
    times)."""
    t = capture_seconds(capture)[sel]
    if t.size == 0:
        return np.zeros(0)
    f = (t - t[0]) * float(rate)
    ratio = float(rate) / ntsc_rate(capture.fps)
    if round(ratio) >= 1 and abs(ratio - round(ratio)) < 1e-5:
        whole = np.round(f)
        if np.abs(f - whole).max() <= WHOLE_FRAME_SNAP:
            f = whole
    return float(frame_start) + f


def apply_timing(scene, capture, timing: str, frames) -> None:
    """The scene after a bake with ``timing``: its rate the clip's for ``"clip"`` (kept for
    ``"scene"``), its range from the first key's frame to the last key's (rounded up)."""
    if timing == "clip":
        set_scene_rate(scene, capture.fps)
    frames = np.asarray(frames, np.float64)
    first = int(math.floor(frames[0] + 1e-6)) if frames.size else scene.frame_start
    scene.frame_start = first
    scene.frame_end = max(first, int(math.ceil(frames[-1] - 1e-6)) if frames.size else first)


def _pose_matrices(capture) -> dict[str, np.ndarray]:
    """Per-role model-axis axis-angle curves (N, 3) from a capture."""
    eyes = np.asarray(capture["eyes"], np.float64)
    return {"root": np.asarray(capture["head_rotation"], np.float64),
            "jaw": np.asarray(capture["jaw"], np.float64),
            "left_eye": eyes[:, 0], "right_eye": eyes[:, 1]}


def write_bone_rotations(channelbag, arm_obj, curves: dict[str, np.ndarray], frames,
                         world: bool = False, angle_tolerance_deg: float | None = None) -> int:
    """Key ``rotation_quaternion`` of each bone in ``curves`` ({bone: (N,3) model-axis
    axis-angle relative to its parent}), one key per frame, or with ``angle_tolerance_deg``
    only the frames needed for the played rotation to stay within that angle of the dense one
    at every frame (``keyreduce.reduce_keys`` on the 4 components jointly, LINEAR keys).
    Returns the number of keys written."""
    n_keys = 0
    frames = np.asarray(frames, np.float64)
    quats = {bone: model_rotvec_to_bone_quat(r, bone_rest_rotation(arm_obj, bone, world=world))
             for bone, r in curves.items()}
    kept = {}
    if angle_tolerance_deg is not None and quats:   # every bone at once
        q32 = np.stack([np.asarray(q, np.float32) for q in quats.values()])
        kept = dict(zip(quats, keyreduce.reduce_many(q32, angle_tolerance_deg,
                                                     keyreduce.quat_angle_deg)))
    for bone, q in quats.items():
        pb = arm_obj.pose.bones[bone]
        pb.rotation_mode = "QUATERNION"
        keep = kept.get(bone, slice(None))
        path = pb.path_from_id("rotation_quaternion")
        for i in range(4):
            blender_anim.write_fcurve(channelbag, path, i, frames[keep], q[keep, i], group=bone)
        n_keys += 4 * len(frames[keep])
    return n_keys


def pose_corrective_features(pose: np.ndarray) -> np.ndarray:
    """FLAME pose-corrective weights: (R_j - I) of the non-root joints, flattened.

    Args:
        pose: (N, J, 3) model-axis axis-angle per joint.
    Returns:
        (N, 9 * (J - 1)), in the order of ``posedirs`` rows (joint-major, row-major 3x3).
    """
    pose = np.asarray(pose, np.float64)
    R = rotations.rotvec_to_matrix(pose[:, 1:])
    return (R - np.eye(3)).reshape(pose.shape[0], -1)


def _shape_keys_turn_eyes(mesh_obj, key: str = "eyeLookOutLeft", group: str = "left_eye"
                          ) -> bool:
    """Whether the eyeLook* shape keys move the eyeballs (the open head model's) rather
    than only the lids around eyeballs that the eye bones turn (the ICT head's): the key's
    largest displacement on the vertices skinned to the eye bone."""
    vg = mesh_obj.vertex_groups.get(group)
    kb = mesh_obj.data.shape_keys.key_blocks.get(key) if mesh_obj.data.shape_keys else None
    if vg is None or kb is None:
        return True
    n = len(mesh_obj.data.vertices)
    w = np.zeros(n, np.float32)
    for v in mesh_obj.data.vertices:
        for g in v.groups:
            if g.group == vg.index:
                w[v.index] = g.weight
    eye = w > 0.5
    if not eye.any():
        return True
    a = np.empty(n * 3, np.float32)
    b = np.empty(n * 3, np.float32)
    kb.data.foreach_get("co", a)
    kb.relative_key.data.foreach_get("co", b)
    return float(np.abs((a - b).reshape(n, 3)[eye]).max()) > 1e-5


def animate_head_rig(mesh_obj, arm_obj, capture, frame_start: int = 1,
                     channels: str = "expression", action_name: str | None = None,
                     scene=None, timing: str = "clip", one_action: bool = False) -> dict:
    """Key the rig built by :func:`build_head_object` from a capture, one key per frame.

    Shape keys come from ``capture['expression']`` (columns named by
    ``capture.names['expression']``) or, with ``channels="arkit"``, from the 52 ARKit curves
    (matched to the shape keys by :func:`retarget_bake.arkit_name_mapping`). Bones: root from
    ``head_rotation`` (relative to facing the camera), jaw from ``jaw``, eyes from ``eyes``;
    the neck keeps its rest pose. On ARKit-basis rigs, whose jaw* and eyeLook* shapes already
    move the jaw and the eyes, the jaw and eye bones are left at rest (keyed ``jawOpen`` /
    ``eyeLookOutLeft`` tell), so nothing moves twice. Sets the scene's frame range, and
    with ``timing="clip"`` its rate to the clip's; with ``"scene"`` the scene keeps its rate
    and each frame is keyed at its real time in it (:func:`capture_key_frames`). The actions
    are ``<action_name>|<object>``, or with ``one_action`` one action ``<action_name>`` with a
    slot for the shape keys and one for the armature (a take, ``operators.scene.takes``).

    Returns:
        a summary: {"frames": (first, last), "shape_keys": [...], "missing": [...],
        "bones": [...], "keys": int}.
    """
    if channels not in ("expression", "arkit"):
        raise ValueError(f"channels must be 'expression' or 'arkit', not {channels!r}")
    scene = scene or bpy.context.scene
    N = capture.n_frames
    frames = capture_key_frames(capture, frame_start, timing_rate(capture, timing, scene))
    base = action_name or blender_anim.action_stem(capture)
    key = mesh_obj.data.shape_keys
    summary = {"frames": (int(math.floor(frames[0] + 1e-6)), int(math.ceil(frames[-1] - 1e-6))),
               "shape_keys": [], "missing": [], "bones": [], "keys": 0}

    if key is not None:
        _, bag = blender_anim.ensure_action(key, base if one_action else
                                            f"{base}|{mesh_obj.name}")
        present = {kb.name for kb in key.key_blocks}
        if channels == "expression":
            cols = list(capture.names["expression"])
            data = np.asarray(capture["expression"])
            pairs = [(c, [c]) for c in cols]
        else:
            retarget = importlib.import_module(_core.core.__name__ + ".retarget.mapping")
            arkit_name_mapping = retarget.name_mapping
            from .._core import arkit
            cols = list(arkit.ARKIT_NAMES)
            data = np.asarray(capture["arkit"])
            mapping = arkit_name_mapping([kb.name for kb in key.key_blocks[1:]])
            pairs = [(c, mapping.get(c, [])) for c in cols]
        for j, (col, targets) in enumerate(pairs):
            targets = [t for t in targets if t in present]
            if not targets:
                summary["missing"].append(col)
                continue
            for t in targets:
                blender_anim.write_fcurve(bag, f'key_blocks["{blender_anim.quoted(t)}"].value', 0,
                                          frames, data[:, j])
                summary["shape_keys"].append(t)
                summary["keys"] += N
        if channels == "expression" and not summary["shape_keys"]:
            raise ValueError(f"none of the capture's {len(cols)} expression components "
                             f"({', '.join(cols[:3])}...) is a shape key of {mesh_obj.name}; "
                             "capture with the same head model, or use channels='arkit'")
        pc = [kb.name for kb in key.key_blocks if kb.name.startswith(POSE_CORRECTIVE_PREFIX)]
        if pc and arm_obj is not None:
            model_joints = [b.name for b in arm_obj.data.bones]
            pose = np.zeros((N, len(model_joints), 3))
            for role, r in _pose_matrices(capture).items():
                if role in model_joints:
                    pose[:, model_joints.index(role)] = r
            feats = pose_corrective_features(pose)
            for p, kname in enumerate(sorted(pc)):
                if p < feats.shape[1]:
                    blender_anim.write_fcurve(bag, f'key_blocks["{kname}"].value', 0,
                                              frames, feats[:, p])
                    summary["keys"] += N

    if arm_obj is not None:
        _, abag = blender_anim.ensure_action(arm_obj, base if one_action else
                                             f"{base}|{arm_obj.name}")
        curves = {b: r for b, r in _pose_matrices(capture).items() if b in arm_obj.pose.bones}
        # On an ARKit-basis rig (the open head model) the jaw* and eyeLook* shapes ARE the
        # jaw and eye motion; rotating the jaw/eye bones as well would apply it twice.
        if "jawOpen" in summary["shape_keys"]:
            curves.pop("jaw", None)
            summary["jaw_from"] = "shape keys"
        if "eyeLookOutLeft" in summary["shape_keys"] and _shape_keys_turn_eyes(mesh_obj):
            curves.pop("left_eye", None)
            curves.pop("right_eye", None)
            summary["eyes_from"] = "shape keys"
        for pb in arm_obj.pose.bones:
            pb.rotation_mode = "QUATERNION"
            pb.rotation_quaternion = (1.0, 0.0, 0.0, 0.0)
        summary["keys"] += write_bone_rotations(abag, arm_obj, curves, frames, world=False)
        summary["bones"] = list(curves)

    apply_timing(scene, capture, timing, frames)
    return summary


# ---------------------------------------------------------------- FLAME rigs

def key_joint_offsets(arm_obj, model, capture, frame_start: int = 1,
                      action_name: str | None = None, frames=None) -> int:
    """Key bone ``location`` so joints follow the expression, as FLAME's do.

    FLAME regresses its joints from the expressed mesh, so expression ``e`` moves joint j by
    ``dJ_j = sum_k e_k joint_expression[k, j]`` (model axes). A bone with rest head ``J0_j``
    and rest orientation ``B_j`` (Blender axes), rotated by ``R_j`` relative to its parent,
    skins exactly like FLAME's joint at ``J0_j + dJ_j`` when its location is
    ``B_j^T C (I - R_j) dJ_j``: the bone pivots about the moved joint. Keyed per frame (no
    drivers: FBX keeps keys), at ``frames`` (default ``frame_start + i``). Returns the number
    of keys written.
    """
    je = model.extra.get("joint_expression")
    if je is None:
        return 0
    je = np.asarray(je, np.float64)                                   # (E,J,3)
    cols = list(capture.names["expression"])
    E = min(len(cols), je.shape[0])
    if list(model.expression_names[:E]) != cols[:E]:
        raise ValueError("capture expression columns do not match the rig's components")
    e = np.asarray(capture["expression"], np.float64)[:, :E]
    dJ = np.einsum("ne,ejk->njk", e, je[:E])                          # (N,J,3) model axes
    N = e.shape[0]
    rots = {"root": capture["head_rotation"], "jaw": capture["jaw"],
            "left_eye": np.asarray(capture["eyes"])[:, 0],
            "right_eye": np.asarray(capture["eyes"])[:, 1]}
    if frames is None:
        frames = frame_start + np.arange(N, dtype=np.float64)
    anim = arm_obj.animation_data
    if anim is not None and anim.action is not None and anim.action_slot is not None:
        # add to the bake of animate_head_rig (ensure_action would clear its curves)
        from bpy_extras import anim_utils
        abag = anim_utils.action_ensure_channelbag_for_slot(anim.action, anim.action_slot)
    else:
        _, abag = blender_anim.ensure_action(arm_obj, action_name or
                                             f"{blender_anim.action_stem(capture)}|{arm_obj.name}")
    n = 0
    for j, jname in enumerate(model.joint_names):
        if jname not in arm_obj.pose.bones:
            continue
        r = np.asarray(rots.get(jname, np.zeros((N, 3))), np.float64)
        R = rotations.rotvec_to_matrix(r)                             # (N,3,3)
        d = dJ[:, j] - np.einsum("nab,nb->na", R, dJ[:, j])           # (I - R) dJ
        B = bone_rest_rotation(arm_obj, jname)
        loc = d @ (B.T @ C).T
        pb = arm_obj.pose.bones[jname]
        path = pb.path_from_id("location")
        for i in range(3):
            blender_anim.write_fcurve(abag, path, i, frames, loc[:, i], group=jname)
        n += 3 * N
    return n


def build_flame_rig(model, capture, name: str = "FLAME", collection=None,
                    frame_start: int = 1, with_pose_correctives: bool = True,
                    timing: str = "clip", action_name: str | None = None,
                    one_action: bool = False):
    """The animated FLAME rig of a capture.

    Args:
        model: a HeadModel from ``flame.to_head_model`` with the capture's identity baked in
            (``flame.head_model_for_capture``); its ``extra['model_id']`` must be the model
            the capture was made with.
        capture: a Capture from the ``flame-fit`` (or ``emoca``) backend.
    Returns:
        (mesh_obj, arm_obj, summary of :func:`animate_head_rig` plus ``location_keys``).
    Raises:
        flame.FlameError when the capture was made with another head model.
    """
    flame = importlib.import_module(_core.core.__name__ + ".models.flame")
    flame.check_capture_model(capture, model)
    mesh, arm = build_head_object(model, name, collection,
                                  with_pose_correctives=with_pose_correctives)
    summary = animate_head_rig(mesh, arm, capture, frame_start=frame_start, timing=timing,
                               action_name=action_name, one_action=one_action)
    frames = capture_key_frames(capture, frame_start, timing_rate(capture, timing))
    summary["location_keys"] = key_joint_offsets(arm, model, capture, frame_start,
                                                 frames=frames)
    summary["keys"] += summary["location_keys"]
    return mesh, arm, summary


__all__ = ["C", "model_to_blender", "blender_to_model", "build_head_object",
           "animate_head_rig", "set_scene_timing", "set_scene_rate", "scene_rate", "TIMINGS",
           "capture_seconds", "timing_rate", "capture_key_frames", "apply_timing",
           "model_rotvec_to_bone_quat", "bone_rest_rotation",
           "write_bone_rotations", "pose_corrective_features", "build_flame_rig",
           "key_joint_offsets"]
