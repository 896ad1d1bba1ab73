"""FBX export of baked characters (shape-key and bone animation), checked by re-import, and
atomic .blend saving.

bpy 5.0.1 facts this module relies on (measured):

* With the exporter's defaults a mesh whose only animation is on its shape keys exports no
  animation; ``bake_anim_use_all_actions=False, bake_anim_use_nla_strips=False`` exports the
  actions assigned to the objects (and their shape keys) as one take.
* The importer turns FBX blend-shape channels back into shape-key value curves and bone
  animation into pose-bone curves. Two importer quirks are corrected when reading back:
  its default ``anim_offset=1`` shifts every key one frame later (we import with 0), and it
  converts key times with the scene's integer ``render.fps``, ignoring ``fps_base``, so at
  29.97 fps every frame comes back scaled by 1.001 (the file itself is right: times are
  seconds at the true rate); :func:`read_fbx_animation` divides by ``fps_base``.

:func:`read_fbx_animation` imports into a temporary scene and deletes everything the import
created afterwards, so the user's scene, selection and data are left as they were.

The steps around the exporter and importer calls (:func:`objects_to_export`,
:func:`exporting`, :func:`check_reimport`, :func:`imported`, :func:`animation_of`) serve
``gltf_io`` too.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path

import bpy
import numpy as np

from . import blender_anim
from .._core import capture_file
from .blender_anim import FPS_PROP, _BONE_RE, _unescape


class ExportError(RuntimeError):
    """The file could not be written, or its re-import did not give the animation back."""


class FbxExportError(ExportError):
    """The FBX could not be written, or its re-import did not give the animation back."""


def _with_armatures(objects) -> list:
    out = []
    for o in objects:
        if o is None:
            continue
        if o not in out:
            out.append(o)
        arm = o.parent if (o.parent is not None and o.parent.type == "ARMATURE") else None
        if arm is None and o.type == "MESH":
            mod = next((m for m in o.modifiers if m.type == "ARMATURE" and m.object), None)
            arm = mod.object if mod else None
        if arm is not None and arm not in out:
            out.append(arm)
    return out


#: engine presets: exporter options (the rest of :func:`export_fbx`'s work is common to all)
PRESETS = {
    # metres with transforms applied: roots at scale 1 and rotation 0 in Unity
    "unity": dict(apply_scale_options="FBX_SCALE_ALL", bake_space_transform=True),
    # centimetres (Unreal's unit: the file says cm and holds cm) with transforms applied:
    # roots at scale 1 and rotation 0; an armature object named "Armature" is not turned
    # into an extra root bone by Unreal's importer
    "unreal": dict(apply_scale_options="FBX_SCALE_NONE", bake_space_transform=True),
    "generic": dict(apply_scale_options="FBX_SCALE_ALL", bake_space_transform=True),
    # the exporter's plain output (before presets): kept for comparison
    "plain": dict(apply_scale_options="FBX_SCALE_NONE", bake_space_transform=False),
}
_REST = {"rotation_quaternion": (1.0, 0.0, 0.0, 0.0), "scale": (1.0, 1.0, 1.0)}


def _rest_value(data_path: str, index: int) -> float:
    """The neutral value of an animated property: shape keys 0, rotations identity..."""
    prop = data_path.rsplit(".", 1)[-1]
    rest = _REST.get(prop)
    return float(rest[index]) if rest is not None and index < len(rest) else 0.0


@contextlib.contextmanager
def _engine_ready(objs, scene, frame_start: int, take: str, unreal: bool, file_space=None,
                  frame_end: int | None = None):
    """For the duration: the scene is named ``take`` (the exporter names its one take after
    the scene), the current frame is ``frame_start - 1`` where every animated curve of
    ``objs`` holds a temporary rest key (so the file's rest pose is the neutral: shape keys
    0, bones at rest), a curve whose last key falls before ``frame_end`` (a clip keyed at
    its real times in another scene rate ends between frames) holds it there with a
    temporary key (so the exporters that sample the action's range, glTF's, reach the last
    frame), root objects without location keys sit at the origin (no offset
    written or keyed), for Unreal the armature object is named "Armature", and with
    ``file_space`` (the exporter's global matrix) the armatures' rest poses are in the
    file's space (:func:`_armatures_in_file_space`)."""
    undo = []
    rest_frame = frame_start - 1
    try:
        old_name = scene.name
        scene.name = take
        undo.append(lambda: setattr(scene, "name", old_name))
        for o in objs:
            ids = [o] + ([o.data.shape_keys] if o.type == "MESH" and o.data.shape_keys else [])
            for idb in ids:
                for bag in blender_anim.channelbags_of(idb):
                    for fc in bag.fcurves:
                        last = max((k.co[0] for k in fc.keyframe_points), default=None)
                        if frame_end is not None and last is not None and \
                                frame_start <= last < frame_end - 1e-6:
                            fe = float(frame_end)
                            fc.keyframe_points.insert(fe, fc.evaluate(last), options={"FAST"})
                            undo.append(lambda fc=fc, fe=fe: _drop_key(fc, fe))
                        if any(abs(k.co[0] - rest_frame) < 1e-6 for k in fc.keyframe_points):
                            continue
                        kp = fc.keyframe_points.insert(rest_frame, _rest_value(fc.data_path,
                                                                                fc.array_index),
                                                       options={"FAST"})
                        kp.interpolation = "CONSTANT"
                        undo.append(lambda fc=fc: _drop_key(fc, rest_frame))
        names = {o.name for o in objs}
        for o in objs:
            if o.parent is not None and o.parent.name in names:
                continue
            keyed = any(dp == "location" for bag in blender_anim.channelbags_of(o)
                        for dp in (fc.data_path for fc in bag.fcurves))
            if not keyed and o.location.length > 0:
                loc = o.location.copy()
                o.location = (0.0, 0.0, 0.0)
                undo.append(lambda o=o, loc=loc: setattr(o, "location", loc))
        if unreal:
            arms = [o for o in objs if o.type == "ARMATURE"]
            if len(arms) == 1 and arms[0].name != "Armature":
                other = bpy.data.objects.get("Armature")
                a, old = arms[0], arms[0].name
                if other is not None:
                    other.name = "Armature.emoca_tmp"
                    undo.append(lambda other=other: setattr(other, "name", "Armature"))
                a.name = "Armature"
                undo.append(lambda a=a, old=old: setattr(a, "name", old))
        if file_space is not None:
            for a in objs:
                if a.type == "ARMATURE" and not (a.parent is not None and a.parent.name in names):
                    undo.append(_armatures_in_file_space(a, file_space))
        prev = scene.frame_current
        scene.frame_set(rest_frame)
        undo.append(lambda: scene.frame_set(prev))
        yield
    finally:
        for f in reversed(undo):
            f()


def _armatures_in_file_space(arm, G):
    """Give the root armature ``arm`` the rest pose it has in the FBX file's space, so the
    exporter writes its node with rotation 0 and scale 1: the exporter puts its global
    matrix ``G`` (axis conversion, and for "FBX_SCALE_NONE" the unit scale) on root nodes,
    and its "apply transform" (``bake_space_transform``) reaches meshes only. Here the
    armature object's matrix becomes ``G^-1`` (so its node gets ``G @ G^-1 = I``) and its
    bones are moved by ``T = G @ A`` (``A`` its matrix before), on a copy of its data that
    takes the data's name; pose-bone locations are scaled with ``T``'s scale, and the
    objects parented to it get parent inverses that keep them where they are. Every vertex
    and bone stays where it was in the world. Returns the function that undoes it all."""
    undo = []
    view_layer = bpy.context.view_layer
    view_layer.update()                # matrix_world after the origin move above
    A = arm.matrix_world.copy()
    T = G @ A
    s = T.to_scale()
    if max(s) - min(s) > 1e-6 * max(s):
        return lambda: None           # a non-uniform scale cannot go into bones
    s = float(s[0])
    children = [c for c in bpy.data.objects if c.parent == arm]
    worlds = {c.name: c.matrix_world.copy() for c in children}
    try:
        orig = arm.data
        old_name = orig.name
        tmp = orig.copy()
        orig.name = old_name + ".emoca_orig"
        tmp.name = old_name
        tmp.transform(T)
        arm.data = tmp

        def back_data():
            arm.data = orig
            bpy.data.armatures.remove(tmp)
            orig.name = old_name
        undo.append(back_data)
        kept = {a: tuple(getattr(arm, a)) for a in ("location", "rotation_euler",
                                                   "rotation_quaternion", "rotation_axis_angle",
                                                   "scale")}
        arm.matrix_world = G.inverted()
        undo.append(lambda: [setattr(arm, a, v) for a, v in kept.items()])
        if abs(s - 1.0) > 1e-9:        # bone-local units scale with the bones
            for pb in arm.pose.bones:
                if pb.location.length:
                    loc = pb.location.copy()
                    pb.location = loc * s
                    undo.append(lambda pb=pb, loc=loc: setattr(pb, "location", loc))
            for bag in blender_anim.channelbags_of(arm):
                for fc in bag.fcurves:
                    if fc.data_path.startswith("pose.bones[") and fc.data_path.endswith(
                            ".location"):
                        saved = [(tuple(k.co), tuple(k.handle_left), tuple(k.handle_right))
                                 for k in fc.keyframe_points]
                        for k in fc.keyframe_points:
                            for a in ("co", "handle_left", "handle_right"):
                                v = getattr(k, a)
                                setattr(k, a, (v[0], v[1] * s))
                        undo.append(lambda fc=fc, saved=saved: _set_keys(fc, saved))
        view_layer.update()
        for c in children:
            P, B = c.matrix_parent_inverse.copy(), c.matrix_basis.copy()
            c.matrix_parent_inverse = P @ B @ c.matrix_world.inverted() @ worlds[c.name] \
                @ B.inverted()
            undo.append(lambda c=c, P=P: setattr(c, "matrix_parent_inverse", P))
        view_layer.update()
    except BaseException:
        for f in reversed(undo):
            f()
        raise

    def undo_all():
        for f in reversed(undo):
            f()
        view_layer.update()
    return undo_all


def _set_keys(fc, saved) -> None:
    for k, (co, hl, hr) in zip(fc.keyframe_points, saved):
        k.co, k.handle_left, k.handle_right = co, hl, hr
    fc.update()


def _drop_key(fc, frame: float) -> None:
    for k in reversed(list(fc.keyframe_points)):
        if abs(k.co[0] - frame) < 1e-6:
            fc.keyframe_points.remove(k, fast=True)
    fc.update()


FBX_KTIME = 46186158000          # FBX time units per second

TOLERANCE_PROP = "emoca_key_tolerance"   # set by retarget_bake on reduced bakes (0: dense)


def _ids_of(objs):
    for o in objs:
        yield o
        if o.type == "MESH" and o.data.shape_keys is not None:
            yield o.data.shape_keys


def baked_reduced(objs) -> bool:
    """Whether any action of ``objs`` was baked with key reduction (:data:`TOLERANCE_PROP`)."""
    for idb in _ids_of(objs):
        ad = getattr(idb, "animation_data", None)
        if ad is not None and ad.action is not None and \
                float(ad.action.get(TOLERANCE_PROP, 0.0) or 0.0) > 0:
            return True
    return False


def _rotation_key_frames(objs, key_of) -> dict:
    """{exporter key of a bone: scene frames of its rotation keys} for the armatures among
    ``objs``, plus ``None``: the union of them all."""
    out: dict = {}
    union = set()
    for o in objs:
        if o.type != "ARMATURE":
            continue
        for bag in blender_anim.channelbags_of(o):
            for fc in bag.fcurves:
                m = _BONE_RE.match(fc.data_path)
                if not m or "rotation" not in m.group(2):
                    continue
                n = len(fc.keyframe_points)
                co = np.empty(2 * n, np.float32)
                fc.keyframe_points.foreach_get("co", co)
                fr = set(np.round(co[0::2]).astype(int).tolist())
                bone = o.data.bones.get(_unescape(m.group(1)))
                if bone is not None:
                    out.setdefault(key_of((o, bone)), set()).update(fr)
                union.update(fr)
    out = {k: np.array(sorted(v), int) for k, v in out.items()}
    out[None] = np.array(sorted(union), int)
    return out


@contextlib.contextmanager
def _keys_as_baked(frame_start: int, objs, takes=None):
    """For the duration, the FBX exporter writes the keys that were baked instead of one per
    frame: its ``AnimationCurveNodeWrapper.simplify`` (run when ``bake_anim_simplify_factor``
    is not 0) keeps, on each sampled channel, the frames the LINEAR curve through its samples
    needs within 1e-6 of its range (``keyreduce.reduce_keys``: on a reduced shape-key curve
    those are its keys), on a bone's rotation channels that bone's rotation key frames (the
    exporter samples Euler angles, which are not linear between the baked quaternion keys;
    the importer turns the Euler keys back into the same quaternions), and first and last
    frames always.

    With ``takes`` (NLA export: one stack per take, each sampled from its first frame) the
    rotation key frames are each take's own, relative to its first frame; a bone whose keys
    fall between the sampled frames (a take keyed at its clip's times in another scene
    rate) keeps every sampled frame."""
    import importlib
    keyreduce = importlib.import_module(capture_file.__name__.rsplit(".", 1)[0] + ".retarget.keyreduce")
    fbx_utils = importlib.import_module("io_scene_fbx.fbx_utils")
    export_bin = importlib.import_module("io_scene_fbx.export_fbx_bin")
    cls = fbx_utils.AnimationCurveNodeWrapper
    orig = cls.simplify
    orig_do = export_bin.fbx_animations_do
    key_of = fbx_utils.get_blenderID_key
    if takes is None:
        rot = _rotation_key_frames(objs, key_of)
        by_stack = {None: {k: v - int(frame_start) for k, v in rot.items()}}
    else:
        from . import takes as takes_mod
        by_stack = {}
        for t in takes:
            entry, union = {}, set()
            for arm in (o for o in objs if o.type == "ARMATURE"):
                for bone_name, fr in takes_mod.take_key_frames(t, arm).items():
                    fr = np.asarray(fr, np.float64)
                    whole = np.round(fr)
                    bone = arm.data.bones.get(bone_name)
                    idx = whole.astype(int) if np.abs(fr - whole).max(initial=0) < 1e-4 \
                        else None
                    if bone is not None:
                        entry[key_of((arm, bone))] = idx
                    if idx is not None:
                        union.update(idx.tolist())
            entry[None] = np.array(sorted(union), int)
            by_stack[t.name] = entry
    current = {"stack": None}

    def fbx_animations_do(scene_data, ref_id, *args, **kw):
        current["stack"] = getattr(ref_id, "name", None) if takes is not None else None
        return orig_do(scene_data, ref_id, *args, **kw)

    def simplify(self, fac, step, force_keep=False):
        if self._frame_times_array is None:
            return
        vals = self._frame_values_array
        mask = self._frame_write_mask_array
        mask[:] = False
        n = mask.shape[1]
        is_rot = self.fbx_gname[0] == "R"
        rot_frames = by_stack.get(current["stack"]) or {None: np.zeros(0, int)}
        rot_idx = rot_frames.get(self.elem_keys[0], rot_frames.get(None))
        for c in range(mask.shape[0]):
            v = np.asarray(vals[c], np.float64)
            mask[c, 0] = mask[c, -1] = True
            scale = max(1.0, float(np.abs(v).max())) if n else 1.0
            if n <= 2 or float(np.ptp(v)) <= 1e-6 * scale:
                continue
            if is_rot and rot_idx is None:
                mask[c, :] = True
            elif is_rot:
                mask[c, rot_idx[(rot_idx >= 0) & (rot_idx < n)]] = True
            else:
                mask[c, keyreduce.reduce_keys(v, 1e-6 * scale)] = True

    cls.simplify = simplify
    export_bin.fbx_animations_do = fbx_animations_do
    try:
        yield
    finally:
        cls.simplify = orig
        export_bin.fbx_animations_do = orig_do


def _set_time_span(path, start_s: float, stop_s: float) -> None:
    """Write the take's span into the file's global TimeSpanStart/Stop (bpy 5.0.1's exporter
    always writes 0-1 s there; engines that read the global span then cut or pad the clip).
    The two int64 values are patched in place (same length, binary FBX)."""
    data = bytearray(Path(path).read_bytes())
    for name, sec in ((b"TimeSpanStart", start_s), (b"TimeSpanStop", stop_s)):
        pat = (name + b"S\x05\x00\x00\x00KTimeS\x04\x00\x00\x00TimeS\x00\x00\x00\x00L")
        i = data.find(pat)
        if i < 0 or data.find(pat, i + 1) >= 0:
            raise FbxExportError(f"cannot find one {name.decode()} in the exported FBX")
        j = i + len(pat)
        # truncated as the exporter's own LocalStart/LocalStop (so the two agree)
        data[j:j + 8] = int(sec * FBX_KTIME).to_bytes(8, "little", signed=True)
    Path(path).write_bytes(bytes(data))


def take_name_of(objects) -> str:
    """The take's name: the base of the objects' baked actions (``<base>|<object>``), else
    the first action's name, else "Take"."""
    for o in objects:
        for idb in (o, getattr(getattr(o, "data", None), "shape_keys", None)):
            ad = getattr(idb, "animation_data", None)
            if ad is not None and ad.action is not None:
                return ad.action.name.split("|", 1)[0]
    return "Take"


def export_fbx(path, objects, *, frame_start: int, frame_end: int, verify: bool = True,
               global_scale: float = 1.0, preset: str = "generic", take_name: str | None = None,
               face_only: bool = False, takes=None) -> Path:
    """Export ``objects`` (plus their armatures) with their animation to an FBX file.

    The file is written under a temporary name in the same folder and renamed when complete.
    Axes: Blender's -Y forward, +Z up are written as FBX's -Z forward, +Y up (the exporter's
    ``axis_forward='-Z', axis_up='Y'``), which Unreal, Unity and Maya read as facing forward;
    with the engine presets the conversion (and Unreal's centimetres) is in the geometry and
    the bones, the roots at rotation 0 and scale 1 (:func:`_armatures_in_file_space`).
    Times: frame / the clip's rate (:func:`clip_rate`), whatever the scene's rate.
    Keys: as baked: a dense bake one key per frame, a reduced one (``retarget_bake`` with a
    tolerance) only its keys (:func:`_keys_as_baked`).

    Args:
        path: the .fbx file to write.
        objects: mesh objects (and/or armatures) to export.
        frame_start, frame_end: the frame range baked into the take.
        verify: re-import the file (:func:`read_fbx_animation`) and raise
            :class:`FbxExportError` when an animated object comes back without animation.
        preset: "unity", "unreal", "generic" (engine-ready: see :data:`PRESETS` and
            :func:`_engine_ready`: the take named after the clip, a neutral rest pose, the
            character at its own origin, transforms applied) or "plain" (the exporter's own
            output, for comparison).
        take_name: the take's name (default: the clip's, from the baked actions).
        face_only: export only the meshes with shape keys (and their armature).
        takes: the character's takes (``operators.scene.takes``) to write instead of the assigned
            actions: a list of take names, or ``"all"``; one animation stack per take, named
            after it, starting at 0 s (:func:`_export_takes`; ``frame_start``/``frame_end``
            are not used then: each stack covers its take).
    Returns:
        the path written.
    """
    path = Path(path)
    if path.suffix.lower() != ".fbx":
        path = path.with_suffix(".fbx")
    if not path.parent.is_dir():
        raise FbxExportError(f"output folder {path.parent} does not exist")
    if preset not in PRESETS:
        raise FbxExportError(f"unknown FBX preset {preset!r}: one of {', '.join(PRESETS)}")
    objs = objects_to_export(objects, face_only, FbxExportError)
    if takes is not None:
        return _export_takes(path, objs, None if takes == "all" else list(takes), preset,
                             global_scale, verify)
    scene = bpy.context.scene
    reduced = baked_reduced(objs)
    as_baked = _keys_as_baked(frame_start, objs) if reduced else contextlib.nullcontext()
    with exporting(objs, frame_start, frame_end, engine_ready=preset != "plain",
                   take_name=take_name, unreal=preset == "unreal",
                   file_space=None if preset == "plain" else _global_matrix(
                       scene, PRESETS[preset], global_scale)):
        with as_baked, capture_file.written_beside(path, suffix=".fbx.part") as tmp:
            res = _fbx_call(tmp, global_scale, preset, reduced, nla=False)
            if "FINISHED" not in res:
                raise FbxExportError(f"the FBX exporter returned {res}")
            if preset != "plain":
                fps = scene.render.fps / scene.render.fps_base
                _set_time_span(tmp, int(frame_start) / fps, int(frame_end) / fps)

    if verify:
        # named "Armature" for Unreal (see _engine_ready)
        check_reimport(objs, read_fbx_animation(path), path, FbxExportError,
                       armature_alias="Armature" if preset == "unreal" else None)
    return path


def _fbx_call(tmp, global_scale: float, preset: str, reduced: bool, nla: bool):
    return bpy.ops.export_scene.fbx(
        filepath=tmp, check_existing=False, use_selection=True,
        object_types={"ARMATURE", "MESH", "EMPTY"},
        global_scale=global_scale, apply_unit_scale=True,
        axis_forward="-Z", axis_up="Y", **PRESETS[preset],
        use_mesh_modifiers=False, mesh_smooth_type="FACE", use_tspace=False,
        add_leaf_bones=False, primary_bone_axis="Y", secondary_bone_axis="X",
        armature_nodetype="NULL",
        bake_anim=True, bake_anim_use_all_bones=True,
        bake_anim_use_nla_strips=nla, bake_anim_use_all_actions=False,
        bake_anim_force_startend_keying=True, bake_anim_step=1.0,
        bake_anim_simplify_factor=1.0 if reduced else 0.0, path_mode="AUTO",
        embed_textures=False)


def _export_takes(path: Path, objs, names, preset: str, global_scale: float,
                  verify: bool) -> Path:
    """The takes ``names`` (all when None) of the character ``objs`` as one animation
    stack each, named after the take, in timeline order, each from 0 s to its length at the
    takes' rate (:func:`takes.take_rate`), through the exporter's NLA-strip mode (see
    ``operators/scene/takes.py`` for what bpy 5.0.1 does with it); the other takes' strips are
    muted for the duration, a take without an object strip gets a temporary one
    (:func:`takes.carriers`). Rest pose, origin and transforms as :func:`export_fbx`'s
    presets; the file's global time span is 0 to the longest take. Verified by importing
    it back: every take is a stack with the shape keys and bones it animates
    (:func:`read_fbx_takes`)."""
    from . import takes as takes_mod

    scene = bpy.context.scene
    try:
        tk, rate, first, last = takes_mod.export_span(objs, names, scene)
    except takes_mod.TakeError as e:
        raise FbxExportError(str(e)) from None
    reduced = any(float(t.action.get(TOLERANCE_PROP, 0.0) or 0.0) > 0 for t in tk)
    as_baked = _keys_as_baked(first, objs, tk) if reduced else contextlib.nullcontext()
    with exporting(objs, first, last, engine_ready=preset != "plain", take_name=tk[0].name,
                   unreal=preset == "unreal", rate=rate,
                   file_space=None if preset == "plain" else _global_matrix(
                       scene, PRESETS[preset], global_scale)):
        with takes_mod.only_takes(objs, [t.name for t in tk]), \
                takes_mod.carriers(objs, tk), as_baked, \
                capture_file.written_beside(path, suffix=".fbx.part") as tmp:
            res = _fbx_call(tmp, global_scale, preset, reduced, nla=True)
            if "FINISHED" not in res:
                raise FbxExportError(f"the FBX exporter returned {res}")
            if preset != "plain":
                _set_time_span(tmp, 0.0, max(t.frame_end - t.frame_start for t in tk) / rate)
    if verify:
        check_takes_reimport(objs, tk, read_fbx_takes(path), path, FbxExportError,
                             armature_alias="Armature" if preset == "unreal" else None)
    return path


def check_takes_reimport(objs, takes, got: dict, path, error=ExportError,
                         armature_alias=None) -> None:
    """Raise ``error`` unless the re-import ``got`` ({take: {object: entry}}, as
    :func:`read_fbx_takes`) has every take of ``takes`` as its own animation, with shape-key
    curves for each mesh and bone curves for the armature that the take animates."""
    from . import takes as takes_mod

    problems = []
    missing = [t.name for t in takes if t.name not in got]
    if missing:
        problems.append(f"no animation named {', '.join(missing)} (found "
                        f"{', '.join(got) or 'none'})")
    for t in takes:
        entry = got.get(t.name)
        if entry is None:
            continue
        for o in objs:
            idb = o.data.shape_keys if o.type == "MESH" else o
            if idb is None or takes_mod._slot_for(t.action, idb) is None:
                continue
            e = entry.get(o.name)
            if e is None and armature_alias and o.type == "ARMATURE":
                e = entry.get(armature_alias)
            kind = "shape_keys" if o.type == "MESH" else "bones"
            if not (e and e[kind]):
                problems.append(f"{t.name}: {o.name} has no {kind.replace('_', '-')} animation")
    if problems:
        raise error(f"{Path(path).name} was written but its re-import lacks: "
                    + "; ".join(problems))


def _global_matrix(scene, options: dict, global_scale: float):
    """The matrix the exporter puts on root nodes with ``options`` (bpy 5.0.1's
    ``export_fbx_bin.save_single``): the axis conversion to -Z forward, +Y up, times the
    unit scale where ``apply_scale_options`` is "FBX_SCALE_NONE"."""
    from bpy_extras.io_utils import axis_conversion
    from io_scene_fbx.fbx_utils import units_blender_to_fbx_factor
    from mathutils import Matrix

    G = axis_conversion(to_forward="-Z", to_up="Y").to_4x4()
    if options["apply_scale_options"] == "FBX_SCALE_NONE":
        G = Matrix.Scale(units_blender_to_fbx_factor(scene) * global_scale, 4) @ G
    return G


def clip_rate(objs, scene) -> float:
    """The frame rate of the clip baked on ``objs``: the capture's rate the bake recorded
    on their actions (:data:`FPS_PROP`; one capture frame per scene frame), else the
    scene's ``fps / fps_base``."""
    rates = set()
    for o in objs:
        for idb in (o, getattr(getattr(o, "data", None), "shape_keys", None)):
            ad = getattr(idb, "animation_data", None)
            if ad is not None and ad.action is not None and FPS_PROP in ad.action:
                rates.add(round(float(ad.action[FPS_PROP]), 6))
    if len(rates) == 1:
        return rates.pop()
    return scene.render.fps / scene.render.fps_base


def objects_to_export(objects, face_only: bool, error=ExportError) -> list:
    """``objects`` plus their armatures (only meshes with shape keys when ``face_only``);
    raises ``error`` when there is nothing, or an object is not in the view layer."""
    if face_only:
        objects = [o for o in objects if o is not None and (o.type == "ARMATURE" or (
            o.type == "MESH" and o.data.shape_keys is not None))]
    objs = _with_armatures(objects)
    if face_only:
        objs = [o for o in objs if o.type != "MESH" or o.data.shape_keys is not None]
    if not objs:
        raise error("nothing to export: no objects given")
    view_layer = bpy.context.view_layer
    view_layer.update()   # the view layer's object list is resynced lazily
    in_layer = {o.name for o in view_layer.objects}
    missing = [o.name for o in objs if o.name not in in_layer]
    if missing:
        raise error(f"objects not in the current view layer: {', '.join(missing)}")
    return objs


@contextlib.contextmanager
def exporting(objs, frame_start: int, frame_end: int, *, engine_ready: bool = True,
              take_name: str | None = None, unreal: bool = False, file_space=None,
              rate: float | None = None):
    """For the duration of an exporter call: object mode, exactly ``objs`` selected (and
    shown), the scene's range ``frame_start..frame_end``, the scene's frame rate ``rate``,
    by default the clip's (:func:`clip_rate`: a frame's time is frame / the capture's rate,
    whatever the scene's rate), a context override naming them, and with ``engine_ready`` what
    :func:`_engine_ready` does (the take named ``take_name``, default :func:`take_name_of`;
    neutral rest; the character at its origin; armatures in ``file_space``). Everything is
    put back afterwards."""
    scene = bpy.context.scene
    view_layer = bpy.context.view_layer
    if bpy.context.mode != "OBJECT" and view_layer.objects.active is not None:
        bpy.ops.object.mode_set(mode="OBJECT")
    prev_sel = [o for o in view_layer.objects if o.select_get()]
    prev_active = view_layer.objects.active
    prev_range = (scene.frame_start, scene.frame_end)
    prev_rate = (scene.render.fps, scene.render.fps_base)
    rate = clip_rate(objs, scene) if rate is None else float(rate)
    hidden = [o for o in objs if o.hide_get()]
    try:
        if abs(rate - prev_rate[0] / prev_rate[1]) > 1e-6 * rate:
            scene.render.fps = max(1, int(round(rate)))
            scene.render.fps_base = scene.render.fps / rate
        for o in view_layer.objects:
            o.select_set(False)
        for o in hidden:
            o.hide_set(False)
        for o in objs:
            o.select_set(True)
        view_layer.objects.active = objs[0]
        scene.frame_start, scene.frame_end = int(frame_start), int(frame_end)
        ready = _engine_ready(objs, scene, int(frame_start), take_name or take_name_of(objs),
                              unreal, file_space, int(frame_end)) if engine_ready else \
            contextlib.nullcontext()
        with ready, bpy.context.temp_override(selected_objects=objs, active_object=objs[0]):
            yield
    finally:
        scene.frame_start, scene.frame_end = prev_range
        scene.render.fps, scene.render.fps_base = prev_rate
        for o in objs:
            o.select_set(False)
        for o in hidden:
            o.hide_set(True)
        for o in prev_sel:
            o.select_set(True)
        view_layer.objects.active = prev_active


def check_reimport(objs, got: dict, path, error=ExportError, armature_alias=None) -> None:
    """Raise ``error`` when an object of ``objs`` animated on its shape keys or bones comes
    back from the re-import ``got`` (:func:`read_fbx_animation`'s form) without them."""
    problems = []
    for o in objs:
        animated_keys = o.type == "MESH" and o.data.shape_keys is not None and \
            blender_anim.read_fcurves(o.data.shape_keys)
        animated_bones = o.type == "ARMATURE" and blender_anim.read_fcurves(o)
        entry = got.get(o.name)
        if entry is None and armature_alias and o.type == "ARMATURE":
            entry = got.get(armature_alias)
        if animated_keys and not (entry and entry["shape_keys"]):
            problems.append(f"{o.name}: shape-key animation missing")
        if animated_bones and not (entry and entry["bones"]):
            problems.append(f"{o.name}: bone animation missing")
    if problems:
        raise error(f"{Path(path).name} was written but its re-import lacks: "
                    + "; ".join(problems))


_ID_COLLECTIONS = ("objects", "meshes", "armatures", "actions", "materials", "images",
                   "shape_keys", "textures", "node_groups", "cameras", "lights", "collections")
_KEY_RE = re.compile(r'^key_blocks\["(.*)"\]\.value$')


def _snapshot() -> dict[str, set]:
    return {c: set(getattr(bpy.data, c)) for c in _ID_COLLECTIONS}


def read_fbx_animation(path) -> dict:
    """Import an FBX into a temporary scene and read its animation back.

    Nothing of the user's scene changes: the import goes into a new scene that is deleted
    afterwards together with every datablock the import created.

    Returns:
        {object_name: {"shape_keys": {key_name: (frames (N,), values (N,))},
                       "bones": {bone: {"rotation_quaternion": (frames, (N,4)) |
                                        "rotation_euler": (frames, (N,3)), ...}}}}
        Object names are the FBX's (an import suffix like ``.001``, added because the user's
        file already has an object of that name, is removed).
    """
    def fbx_import():
        return bpy.ops.import_scene.fbx(filepath=str(path), use_anim=True,
                                        automatic_bone_orientation=False,
                                        ignore_leaf_bones=False, use_custom_props=False,
                                        anim_offset=0.0)
    with imported(path, fbx_import, FbxExportError) as (new_objects, tmp_scene, old_names):
        # The importer placed keys at seconds * render.fps (the integer): undo its fps_base
        # omission so frames are the exporting scene's frames.
        return animation_of(new_objects, old_names, 1.0 / tmp_scene.render.fps_base)


@contextlib.contextmanager
def imported(path, do_import, error=ExportError, fps_base: float | None = None):
    """Run the importer call ``do_import()`` into a temporary scene with the current
    scene's frame rate (``fps_base`` replaces its base where given) and yield
    (the objects it created, that scene, the names objects had before); afterwards the
    scene and every datablock the import created are deleted and the user's scene is
    current again."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist")
    before = _snapshot()
    old_names = {o.name for o in before["objects"]}
    window = bpy.context.window
    prev_scene = window.scene if window is not None else None
    tmp_scene = bpy.data.scenes.new("emoca_import_check")
    cur = bpy.context.scene
    if cur is not None:   # same time base as the exporting scene (the importer may override)
        tmp_scene.render.fps, tmp_scene.render.fps_base = cur.render.fps, cur.render.fps_base
    if fps_base is not None:
        tmp_scene.render.fps_base = fps_base
    try:
        vl = tmp_scene.view_layers[0]
        if window is not None:
            window.scene = tmp_scene
        with bpy.context.temp_override(scene=tmp_scene, view_layer=vl):
            res = do_import()
        if "FINISHED" not in res:
            raise error(f"the importer returned {res} for {path.name}")
        yield set(bpy.data.objects) - before["objects"], tmp_scene, old_names
    finally:
        if window is not None and prev_scene is not None:
            window.scene = prev_scene
        after = _snapshot()
        for coll in ("objects",) + tuple(c for c in _ID_COLLECTIONS if c != "objects"):
            if coll == "shape_keys":
                continue  # Key datablocks go with their meshes
            data = getattr(bpy.data, coll)
            for idb in after[coll] - before[coll]:
                try:
                    data.remove(idb)
                except (ReferenceError, RuntimeError):
                    pass
        bpy.data.scenes.remove(tmp_scene)


def animation_of(new_objects, old_names, frame_scale: float = 1.0) -> dict:
    """The shape-key and bone curves of imported objects in :func:`read_fbx_animation`'s
    form; frames multiplied by ``frame_scale`` and rounded to 1e-4 (importers that convert
    float32 seconds give 0.9999991 for frame 1)."""
    result: dict = {}
    for o in new_objects:
        entry = {"shape_keys": {}, "bones": {}}
        if o.type == "MESH" and o.data.shape_keys is not None:
            _add_curves(entry, blender_anim.read_fcurves(o.data.shape_keys), frame_scale)
        if o.type == "ARMATURE":
            _add_curves(entry, blender_anim.read_fcurves(o), frame_scale)
        if entry["shape_keys"] or entry["bones"] or o.type in ("MESH", "ARMATURE"):
            result[_import_name(o.name, old_names)] = entry
    return result


def _import_name(name: str, old_names) -> str:
    """An imported object's name without the ``.001`` the importer added because the
    user's file has an object of that name."""
    m = re.match(r"^(.*)\.\d{3}$", name)
    return m.group(1) if m and m.group(1) in old_names else name


def _add_curves(entry: dict, curves: dict, frame_scale: float = 1.0) -> None:
    """Shape-key and bone curves of ``curves`` ({(data_path, index): (frames, values)})
    into ``entry`` (:func:`read_fbx_animation`'s form), frames times ``frame_scale`` rounded
    to 1e-4 (importers that convert float32 seconds give 0.9999991 for frame 1)."""
    def frames_of(fr):
        return np.round(fr * frame_scale, 4)
    chans: dict[tuple[str, str], dict[int, tuple]] = {}
    for (dp, idx), fv in curves.items():
        km = _KEY_RE.match(dp)
        if km:
            entry["shape_keys"][_unescape(km.group(1))] = (frames_of(fv[0]), fv[1])
            continue
        bm = _BONE_RE.match(dp)
        if bm:
            chans.setdefault((_unescape(bm.group(1)), bm.group(2)), {})[idx] = fv
    for (bone, prop), comps in chans.items():
        n = 4 if prop == "rotation_quaternion" else 3
        if sorted(comps) != list(range(n)):
            continue
        fr = comps[0][0]
        vals = np.stack([np.interp(fr, *comps[i]) for i in range(n)], -1)
        entry["bones"].setdefault(bone, {})[prop] = (frames_of(fr), vals)


def _bag_curves(bag) -> dict:
    """{(data_path, index): (frames, values)} of one channelbag, as float64."""
    out = {}
    for fc in bag.fcurves:
        n = len(fc.keyframe_points)
        co = np.empty(2 * n, dtype=np.float32)
        fc.keyframe_points.foreach_get("co", co)
        co = co.astype(np.float64).reshape(n, 2)
        out[(fc.data_path, fc.array_index)] = (co[:, 0], co[:, 1])
    return out


def actions_by_take(actions, new_objects, old_names, frame_scale: float = 1.0,
                    name_of=None, old_actions=()) -> dict:
    """The imported ``actions`` grouped by take: {take: {object name: {"shape_keys",
    "bones"}}}. ``name_of(action)`` gives (take, datablock name) (FBX's importer names its
    actions ``<datablock>|<stack>``); each action slot's curves go to the imported object
    it animates: a shape-key slot to the mesh whose shape keys have that name (glTF's
    importer names slots after the mesh), an object slot to that object. A take name the
    import suffixed (``laugh.001``, because the user's file has an action ``laugh``:
    ``old_actions``) is read without the suffix."""
    objs = {o.name: o for o in new_objects}
    keys = {}
    for o in new_objects:
        if o.type == "MESH" and o.data.shape_keys is not None:
            keys[o.data.shape_keys.name] = o
            keys.setdefault(o.name, o)
    out: dict = {}
    for act in actions:
        take, id_name = name_of(act) if name_of else (act.name, None)
        take = _import_name(take, old_actions)
        for slot in act.slots:
            target = id_name or slot.name_display
            o = keys.get(target) if slot.target_id_type == "KEY" else objs.get(target)
            if o is None:
                continue
            curves = {}
            for layer in act.layers:
                for st in layer.strips:
                    bag = st.channelbag(slot)
                    if bag is not None:
                        curves.update(_bag_curves(bag))
            entry = out.setdefault(take, {}).setdefault(
                _import_name(o.name, old_names), {"shape_keys": {}, "bones": {}})
            _add_curves(entry, curves, frame_scale)
    return out


def read_fbx_takes(path) -> dict:
    """Import an FBX with several animation stacks (takes) into a temporary scene and read
    every stack back: {stack name: {object name: {"shape_keys": {...}, "bones": {...}}}} in
    :func:`read_fbx_animation`'s entry form, frames counted from the stack's start. The
    user's scene is left as it was."""
    before = set(bpy.data.actions)

    def fbx_import():
        return bpy.ops.import_scene.fbx(filepath=str(path), use_anim=True,
                                        automatic_bone_orientation=False,
                                        ignore_leaf_bones=False, use_custom_props=False,
                                        anim_offset=0.0)

    def name_of(act):
        id_name, _, stack = act.name.partition("|")
        return stack, id_name
    with imported(path, fbx_import, FbxExportError) as (new_objects, tmp_scene, old_names):
        new = [a for a in bpy.data.actions if a not in before]
        return actions_by_take(new, new_objects, old_names, 1.0 / tmp_scene.render.fps_base,
                               name_of)


def save_blend(path, relative_remap: bool = True) -> Path:
    """Save the current file as ``path`` atomically (temporary file + rename).

    Uses ``save_as_mainfile(copy=True)`` so the open file keeps its own path.
    ``relative_remap=False`` keeps absolute paths absolute (Blender otherwise makes every
    path of a never-saved file relative)."""
    path = Path(path)
    if path.suffix.lower() != ".blend":
        path = path.with_suffix(".blend")
    if not path.parent.is_dir():
        raise OSError(f"output folder {path.parent} does not exist")
    # no placeholder file, so Blender makes no ".blend1" backup of it
    with capture_file.written_beside(path, suffix=".blend", placeholder=False) as tmp:
        res = bpy.ops.wm.save_as_mainfile(filepath=tmp, copy=True, check_existing=False,
                                          compress=False, relative_remap=relative_remap)
        if "FINISHED" not in res:
            raise OSError(f"saving {path.name} failed ({res})")
    return path


__all__ = ["export_fbx", "read_fbx_animation", "read_fbx_takes", "actions_by_take",
           "check_takes_reimport", "save_blend", "ExportError", "FbxExportError",
           "PRESETS", "take_name_of", "objects_to_export", "exporting", "check_reimport",
           "imported", "animation_of", "clip_rate", "FPS_PROP"]
