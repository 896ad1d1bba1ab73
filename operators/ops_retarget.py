"""Retarget operators: bake the capture onto a character's shape keys and bones, and the
tools around it (Guess Mapping, Find Face, presets).

The targets are the selected objects ("Selected Objects" on) or the Face Mesh / Armature
fields of ``scene.emoca``; the retarget settings are ``scene.emoca_retarget``
(:mod:`.retarget_props`): the mapping (channel -> shape keys, shown and editable before
baking), per-channel calibration, bones with axis mapping / gain / offset / limits, the
method (by name or by geometry), neutral frame, frame range and offset.
``retarget_bake`` and ``correspondence`` do the work; numpy and the core are imported only
when an operator runs.
"""
import importlib
import importlib.util
import os
import traceback

import bpy
from bpy.props import StringProperty

from . import properties
from .ops_capture import capture_file_problem, capture_stem, load_capture


def _core(name: str):
    from ._core import core
    return importlib.import_module(f"{core.__name__}.{name}")


# --------------------------------------------------------------------------------------
# Targets


def target_objects(context) -> list:
    props = context.scene.emoca
    if props.use_selection:
        return list(getattr(context, "selected_objects", None) or ())
    return [o for o in (props.target_mesh, props.target_armature) if o is not None]


def _has_shape_keys(obj) -> bool:
    key = getattr(obj.data, "shape_keys", None) if obj.type == 'MESH' else None
    return key is not None and len(key.key_blocks) > 1


def targets_problem(context) -> str | None:
    """Why there is nothing to retarget onto, or None (a cheap check, for poll and panels)."""
    props = getattr(context.scene, "emoca", None)
    if props is None:
        return "The EMOCA add-on is not registered"
    objects = target_objects(context)
    if not objects:
        if props.use_selection:
            return "Select the character's face mesh and/or armature"
        return "Choose a face mesh or an armature (or add the sample character)"
    usable = any(o.type == 'ARMATURE' or _has_shape_keys(o) or
                 (o.type == 'MESH' and o.parent is not None and o.parent.type == 'ARMATURE')
                 for o in objects)
    if not usable:
        return "The targets have no shape keys and no armature"
    return None


def settings(context):
    return getattr(context.scene, "emoca_retarget", None)


def resolve_targets(context) -> tuple[list, object]:
    """(meshes with shape keys, armature or None) of the current targets."""
    from .scene import retarget_bake
    props = context.scene.emoca
    meshes, armature = retarget_bake.find_targets(target_objects(context))
    if not props.use_selection and props.target_armature is not None:
        armature = props.target_armature
    return meshes, armature


def primary_mesh(context, meshes):
    """The face mesh: the Face Mesh field when it is a target, else the mesh with most keys."""
    props = context.scene.emoca
    if props.target_mesh is not None and props.target_mesh in meshes:
        return props.target_mesh
    if not meshes:
        return None
    return max(meshes, key=lambda o: len(o.data.shape_keys.key_blocks))


def _key_names(meshes) -> list[str]:
    names = []
    for m in meshes:
        names += [kb.name for kb in m.data.shape_keys.key_blocks[1:] if kb.name not in names]
    return names


def _tables(rs) -> tuple:
    retarget = _core("retarget.mapping")
    return retarget.TABLES if (rs is None or rs.use_aliases) else ("arkit",)


# --------------------------------------------------------------------------------------
# The mapping shown in the panel <-> the bake's arguments


def split_keys(text: str) -> list[str]:
    return [k.strip() for k in text.split(",") if k.strip()]


def fill_mapping(rs, mapping: dict, key_names, target: str = "", calibration=None) -> None:
    """Write a mapping {channel: [keys]} (and calibration) into the panel's channel list:
    every ARKit channel gets a row (unmatched ones with no keys), in ARKit order."""
    arkit = _core("arkit")
    retarget = _core("retarget.mapping")
    calibration = calibration or {}
    rs.channels.clear()
    order = list(arkit.ARKIT_NAMES) + [c for c in mapping if c not in arkit.ARKIT_NAMES]
    for ch in order:
        row = rs.channels.add()
        row.channel = ch
        row.keys = ", ".join(mapping.get(ch, []))
        row.enabled = bool(mapping.get(ch))
        c = calibration.get(ch)
        if c is not None:
            row.gain, row.offset, row.min, row.max, row.smoothing = (
                c.gain, c.offset, c.min, c.max, c.smoothing)
    rs.active_channel = 0
    rs.mapping_target = target
    rs.unmapped_keys = ", ".join(retarget.unmapped_keys(key_names, mapping))


def mapping_from_settings(rs) -> tuple[dict, dict]:
    """({channel: [keys]}, {channel: ChannelCalibration}) of the enabled rows (calibration
    only where it differs from the identity clamp to [0, 1])."""
    retarget = _core("retarget.mapping")
    mapping, calib = {}, {}
    default = retarget.ChannelCalibration()
    for row in rs.channels:
        keys = split_keys(row.keys)
        if not row.enabled or not keys:
            continue
        mapping[row.channel] = keys
        c = retarget.ChannelCalibration(gain=row.gain, offset=row.offset, min=row.min,
                                        max=row.max, smoothing=row.smoothing)
        c.validate(f"channel {row.channel}")
        if c != default:
            calib[row.channel] = c
    retarget.check_mapping(mapping)
    return mapping, calib


def fill_bones(rs, bones: dict, bone_settings=None) -> None:
    """One row per role, with the guessed (or preset) bone and settings."""
    retarget = _core("retarget.mapping")
    bone_settings = bone_settings or {}
    rs.bones.clear()
    for role in retarget.ROLES:
        row = rs.bones.add()
        row.role = role
        st = bone_settings.get(role)
        row.bone = (st.bone if st is not None and st.bone else "") or bones.get(role, "")
        if role == "head" and not row.bone:
            row.bone = bones.get("root", "")
        row.enabled = bool(row.bone)
        if st is not None:
            row.axis_x, row.axis_y, row.axis_z = st.axes
            row.gain = st.gain
            row.offset, row.limit_min, row.limit_max = st.offset, st.min, st.max


def bones_from_settings(rs) -> tuple[dict, dict]:
    """({role: bone}, {role: BoneSettings}) of the enabled rows that name a bone."""
    retarget = _core("retarget.mapping")
    bones, st = {}, {}
    for row in rs.bones:
        if not row.enabled or not row.bone:
            continue
        s = retarget.BoneSettings(bone=row.bone, axes=(row.axis_x, row.axis_y, row.axis_z),
                                  gain=row.gain, offset=tuple(row.offset),
                                  min=tuple(row.limit_min), max=tuple(row.limit_max))
        s.validate(f"bone {row.role}")
        bones[row.role] = row.bone
        st[row.role] = s
    return bones, st


def guess_into_settings(context, rs) -> dict:
    """Guess the mapping and the bones of the current targets into the panel's lists.
    Returns {"mapped": n channels, "keys": n keys, "unmapped": [keys], "bones": {...}}."""
    from .scene import retarget_bake
    meshes, armature = resolve_targets(context)
    names = _key_names(meshes)
    mapping = retarget_bake.arkit_name_mapping(names, _tables(rs)) if names else {}
    mesh = primary_mesh(context, meshes)
    fill_mapping(rs, mapping, names, mesh.name if mesh is not None else "")
    bones = retarget_bake.guess_bones(armature) if armature is not None else {}
    fill_bones(rs, bones)
    return {"mapped": len(mapping), "keys": len(names),
            "unmapped": split_keys(rs.unmapped_keys), "bones": bones}


def preset_from_settings(context, name: str = ""):
    retarget = _core("retarget.mapping")
    rs = settings(context)
    mapping, _ = mapping_from_settings(rs)
    calib = {row.channel: retarget.ChannelCalibration(row.gain, row.offset, row.min, row.max,
                                                      row.smoothing)
             for row in rs.channels if split_keys(row.keys) and row.enabled}
    _, bone_st = bones_from_settings(rs)
    return retarget.Preset(mapping=mapping, channels=calib, bones=bone_st,
                           neutral_frame=rs.neutral_frame if rs.use_neutral_frame else None,
                           frame_offset=rs.frame_offset, method=rs.method, name=name)


def apply_preset(context, preset) -> None:
    rs = settings(context)
    meshes, _ = resolve_targets(context)
    mesh = primary_mesh(context, meshes)
    fill_mapping(rs, preset.mapping, _key_names(meshes), mesh.name if mesh else "",
                 preset.channels)
    fill_bones(rs, {}, preset.bones)
    rs.use_neutral_frame = preset.neutral_frame is not None
    rs.neutral_frame = preset.neutral_frame or 0
    rs.frame_offset = preset.frame_offset
    rs.method = preset.method


# --------------------------------------------------------------------------------------
# Messages


def _names(items, n: int = 8) -> str:
    items = list(items)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def unmapped_text(shape_keys: dict) -> str:
    """What the bake left out, per mesh: shape keys no channel drives (non-ARKit keys) and
    channels with no key. '' when everything is driven."""
    parts = []
    for mesh, info in shape_keys.items():
        keys = info.get("unmapped_keys") or []
        if keys:
            parts.append(f"{len(keys)} shape keys of {mesh} are not driven (no matching "
                         f"channel; map them in the Retarget panel): {_names(keys)}")
        chans = info.get("unmapped_channels") or []
        if chans and len(chans) < 52:
            parts.append(f"capture channels with no shape key on {mesh}: {_names(chans)}")
    return "; ".join(parts)


def summary_line(summary, n_channels: int) -> str:
    if not isinstance(summary, dict):
        return "Retargeted the capture"
    parts = [f"{n_channels} channels"]
    bones = summary.get("bones") or {}
    if bones:
        parts.append(f"bones {', '.join(f'{r}={b}' for r, b in bones.items())}")
    frames = summary.get("frames")
    if frames:
        parts.append(f"frames {frames[0]}-{frames[1]}")
    keys, dense = summary.get("keys", 0), summary.get("keys_dense", 0)
    if dense and keys < dense:
        parts.append(f"{keys} keys (dense {dense}, {dense / max(keys, 1):.1f}x fewer)")
    else:
        parts.append(f"{keys} keys")
    return "Retargeted: " + ", ".join(parts)


# --------------------------------------------------------------------------------------
# Geometric method: the correspondence, cached per mesh shape


_CORR: dict = {}


def _mesh_stamp(obj) -> tuple:
    import numpy as np
    me = obj.data
    co = np.empty(3 * len(me.vertices), np.float32)
    key = me.shape_keys
    (key.reference_key.data if key is not None else me.vertices).foreach_get("co", co)
    return (obj.name, len(me.vertices), len(me.polygons), float(co.sum()),
            tuple(round(x, 6) for row in obj.matrix_world for x in row))


def worker_python_for_landmarks(context):
    """None when mediapipe imports here (in-process), else the worker Python."""
    if importlib.util.find_spec("mediapipe") is not None:
        return None
    return properties.worker_python(context)[0]


def correspondence_for(context, obj, refresh: bool = False) -> dict:
    """The render-based correspondence of ``obj`` (cached until its basis or transform
    changes). Raises correspondence.NoFaceFound / CorrespondenceError."""
    from .scene import correspondence
    stamp = _mesh_stamp(obj)
    hit = _CORR.get(obj.name)
    if hit is not None and hit[0] == stamp and not refresh:
        return hit[1]
    corr = correspondence.find_correspondence(obj, worker_python=worker_python_for_landmarks(context))
    _CORR[obj.name] = (stamp, corr)
    return corr


# --------------------------------------------------------------------------------------
# Operators


class EMOCA_OT_retarget(bpy.types.Operator):
    """Bake the capture onto the character: capture curves onto its shape keys (by the
    mapping below, or by geometry), head, jaw and eye rotations onto its bones"""

    bl_idname = "emoca.retarget"
    bl_label = "Retarget Capture onto Character"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        problem = capture_file_problem(context) or targets_problem(context)
        return properties.poll_ok(cls, problem)

    def execute(self, context):
        from ._core import capture_file
        props = context.scene.emoca
        rs = settings(context)
        try:
            cap = load_capture(context)
        except capture_file.CaptureError as e:
            self.report({'ERROR'}, str(e))
            return {'CANCELLED'}
        try:
            summary, n_channels, warnings = run_retarget(context, cap, rs)
        except ValueError as e:
            self.report({'ERROR'}, f"Retarget failed: {e}")
            if rs is not None:
                rs.status = f"Failed: {e}"
            return {'CANCELLED'}
        except Exception as e:  # noqa: BLE001 - reported, with the traceback on the console
            traceback.print_exc()
            self.report({'ERROR'}, f"Retarget failed: {type(e).__name__}: {e}")
            return {'CANCELLED'}
        line = summary_line(summary, n_channels)
        self.report({'INFO'}, line)
        if rs is not None:
            rs.status = line
        for w in warnings:
            self.report({'WARNING'}, w)
        return {'FINISHED'}


def run_retarget(context, cap, rs=None, method: str | None = None, *,
                 frame_start: int | None = None, action_name: str | None = None,
                 one_action: bool = False, set_scene: bool = True,
                 timing: str | None = None, use_range: bool = True
                 ) -> tuple[dict, int, list[str]]:
    """The Retarget operator's work (also for scripts): returns (bake summary, channels
    baked, warnings). ``method`` overrides the settings' ('name' for captures without
    landmarks). The takes (``ops_takes``) bake through here too, with their own
    ``frame_start``, ``action_name`` (one action per take: ``one_action``) and ``set_scene``,
    and without the panel's frame range and offset (``use_range`` False); ``timing``
    defaults to the scene's Scene Rate (``properties.timing``). Raises ValueError
    (RetargetError...) with a message for the user."""
    from .scene import retarget_bake
    props = context.scene.emoca
    meshes, armature = resolve_targets(context)
    warnings = []
    curves = mapping = calibration = None
    nf = rs.neutral_frame if (rs is not None and rs.use_neutral_frame) else None
    if nf is not None and nf >= cap.n_frames:
        raise retarget_bake.RetargetError(
            f"neutral frame {nf} is outside the capture's {cap.n_frames} frames "
            f"(0-{cap.n_frames - 1})")
    method = method or (rs.method if rs is not None else "name")
    if method == "geometry" and meshes:
        from .scene import correspondence
        mesh = primary_mesh(context, meshes)
        try:
            corr = correspondence_for(context, mesh)
        except correspondence.NoFaceFound as e:
            warnings.append(f"{e}. Used name mapping instead")
            if rs is not None:
                rs.correspondence = "No face found: fell back to name mapping"
        else:
            curves, info = correspondence.geometric_curves(
                cap, mesh, corr, neutral_frame=nf,
                worker_python=worker_python_for_landmarks(context))
            mapping = {k: [k] for k in curves}
            meshes = [mesh]
            if rs is not None:
                rs.correspondence = f"Face found on {mesh.name}: {info['landmarks']} landmarks"
    if curves is None and meshes:
        if rs is not None:
            if len(rs.channels) == 0:
                guess_into_settings(context, rs)
            mapping, calibration = mapping_from_settings(rs)
        else:
            mapping = retarget_bake.arkit_name_mapping(_key_names(meshes))
    bones, bone_st = None, None
    if armature is not None and (rs is None or rs.use_bones):
        if rs is not None:
            if len(rs.bones) == 0:
                fill_bones(rs, retarget_bake.guess_bones(armature))
            bones, bone_st = bones_from_settings(rs)
        if not bones and not mapping:
            listed = ", ".join(b.name for b in list(armature.data.bones)[:12])
            raise retarget_bake.RetargetError(
                f"No head, jaw or eye bone found in armature {armature.name} (bones: "
                f"{listed or 'none'}) and no shape key to drive: pick the bones in the "
                f"Retarget panel's Bones section")
    elif rs is not None and not rs.use_bones:
        armature = None
    if not meshes and armature is None:
        names = ", ".join(o.name for o in target_objects(context)) or "nothing"
        raise retarget_bake.RetargetError(
            f"Nothing to retarget onto: {names} has no shape keys and no armature. Select "
            f"the character's face mesh (with shape keys) and/or its armature")
    if meshes and not mapping and not bones:
        raise retarget_bake.RetargetError(
            f"None of the {len(_key_names(meshes))} shape keys matches a capture channel "
            f"and no bone is picked: set the shape keys in the mapping list (or Guess "
            f"Mapping), or use the By Geometry method")
    frame_range = None
    first = 0
    timing = properties.timing(context) if timing is None else timing
    if rs is not None and rs.use_frame_range and use_range:
        frame_range = (rs.frame_first, rs.frame_last)
        first = rs.frame_first
        if timing == "scene" and 0 <= first < cap.n_frames:   # its real time, in scene frames
            from .scene import rig_build
            first = int(round(rig_build.capture_seconds(cap)[first] *
                              rig_build.timing_rate(cap, timing)))
    offset = rs.frame_offset if (rs is not None and use_range) else 0
    stem = capture_stem(properties.abspath(props.capture_path))
    summary = retarget_bake.bake_capture(
        cap, meshes, armature=armature, mapping=mapping, bones=bones if bones else {},
        frame_start=(props.frame_start if frame_start is None else frame_start) + offset + first,
        action_name=action_name or f"EMOCA_{stem}",
        calibration=calibration or None, neutral_frame=nf if curves is None else None,
        bone_settings=bone_st or None, frame_range=frame_range, curves=curves,
        tables=_tables(rs), eye_drive=rs.eye_drive if rs is not None else "auto",
        timing=timing, one_action=one_action, set_scene=set_scene, **key_tolerances(rs))
    eyes = summary.get("eyes", {})
    if rs is not None and eyes:
        rs.eye_status = f"{eyes['drive'].replace('_', ' ')}: {eyes['reason']}"
    text = unmapped_text(summary.get("shape_keys", {})) if curves is None else ""
    if text:
        warnings.append(text)
    warnings += summary.get("warnings", [])
    if armature is not None and summary.get("missing_bones"):
        warnings.append(f"No bone picked for: {', '.join(summary['missing_bones'])} (pick "
                        f"them in the Bones section)")
    n = len({ch for info in summary["shape_keys"].values() for ch in info["mapped"]})
    return summary, n, warnings


def key_tolerances(rs) -> dict:
    """bake_capture's tolerances from the panel's Reduce Keys settings (None: dense)."""
    if rs is None:
        return {}
    if not rs.reduce_keys:
        return {"tolerance": None, "angle_tolerance_deg": None}
    return {"tolerance": float(rs.key_tolerance), "angle_tolerance_deg": float(rs.angle_tolerance)}


def _needs_targets(cls, context) -> bool:
    problem = targets_problem(context) or (None if settings(context) is not None else
                                           "The EMOCA add-on is not registered")
    return properties.poll_ok(cls, problem)


class EMOCA_OT_retarget_guess(bpy.types.Operator):
    """Guess which shape key each capture channel drives (by name) and which bones are the
    head, jaw and eyes; shown in the lists below, editable before baking"""

    bl_idname = "emoca.retarget_guess"
    bl_label = "Guess Mapping"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        return _needs_targets(cls, context)

    def execute(self, context):
        rs = settings(context)
        g = guess_into_settings(context, rs)
        msg = f"{g['mapped']} channels matched {g['keys']} shape keys"
        if g["bones"]:
            msg += f"; bones: {', '.join(f'{r}={b}' for r, b in g['bones'].items())}"
        self.report({'INFO'}, msg)
        if g["unmapped"]:
            self.report({'WARNING'}, f"{len(g['unmapped'])} shape keys are not driven: "
                        f"{_names(g['unmapped'])}")
        meshes, armature = resolve_targets(context)
        if armature is not None and not g["bones"]:
            self.report({'WARNING'}, f"No head, jaw or eye bone recognised in "
                        f"{armature.name}: pick them in the Bones section")
        rs.status = msg
        return {'FINISHED'}


class EMOCA_OT_retarget_find_face(bpy.types.Operator):
    """Find the character's face for the By Geometry method: render it head-on, detect the
    face landmarks, and cast them back onto the mesh"""

    bl_idname = "emoca.retarget_find_face"
    bl_label = "Find Face"
    bl_options = {'REGISTER'}

    @classmethod
    def poll(cls, context):
        return _needs_targets(cls, context)

    def execute(self, context):
        from .scene import correspondence
        rs = settings(context)
        meshes, _ = resolve_targets(context)
        mesh = primary_mesh(context, meshes)
        if mesh is None:
            self.report({'ERROR'}, "The By Geometry method needs a face mesh with shape keys")
            return {'CANCELLED'}
        try:
            corr = correspondence_for(context, mesh, refresh=True)
        except (correspondence.NoFaceFound, correspondence.CorrespondenceError) as e:
            rs.correspondence = "No face found: use By Name"
            self.report({'ERROR'}, str(e))
            return {'CANCELLED'}
        rs.correspondence = f"Face found on {mesh.name}: {int(corr['valid'].sum())} landmarks"
        self.report({'INFO'}, rs.correspondence)
        return {'FINISHED'}


class EMOCA_OT_retarget_clear(bpy.types.Operator):
    """Forget the mapping and bones (the next Retarget guesses them again)"""

    bl_idname = "emoca.retarget_clear"
    bl_label = "Clear Mapping"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        return settings(context) is not None

    def execute(self, context):
        rs = settings(context)
        rs.channels.clear()
        rs.bones.clear()
        rs.mapping_target = rs.unmapped_keys = ""
        return {'FINISHED'}


class _PresetOp:
    filepath: StringProperty(name="File Path", subtype='FILE_PATH', default="")
    filter_glob: StringProperty(default="*.json", options={'HIDDEN'})

    @classmethod
    def poll(cls, context):
        if settings(context) is None:
            cls.poll_message_set("The EMOCA add-on is not registered")
            return False
        return True

    def _path(self, context) -> str:
        return properties.abspath(self.filepath) or properties.abspath(
            settings(context).preset_path)

    def invoke(self, context, event):
        if not self.filepath:
            self.filepath = settings(context).preset_path or "retarget_preset.json"
        context.window_manager.fileselect_add(self)
        return {'RUNNING_MODAL'}


class EMOCA_OT_retarget_preset_save(_PresetOp, bpy.types.Operator):
    """Save the mapping, calibration, bones, neutral frame and frame offset as a JSON preset"""

    bl_idname = "emoca.retarget_preset_save"
    bl_label = "Save Retarget Preset"
    bl_options = {'REGISTER'}

    def execute(self, context):
        retarget = _core("retarget.mapping")
        path = self._path(context)
        if not path:
            self.report({'ERROR'}, "Choose a preset file (.json)")
            return {'CANCELLED'}
        path = bpy.path.ensure_ext(path, ".json")
        try:
            preset = preset_from_settings(context, os.path.splitext(os.path.basename(path))[0])
            retarget.save_preset(preset, path)
        except (ValueError, OSError) as e:
            self.report({'ERROR'}, f"Saving the preset failed: {e}")
            return {'CANCELLED'}
        settings(context).preset_path = path
        self.report({'INFO'}, f"Saved {len(preset.mapping)} channels, {len(preset.bones)} "
                    f"bones to {path}")
        return {'FINISHED'}


class EMOCA_OT_retarget_preset_load(_PresetOp, bpy.types.Operator):
    """Load a retarget preset (JSON): mapping, calibration, bones, neutral frame, offset"""

    bl_idname = "emoca.retarget_preset_load"
    bl_label = "Load Retarget Preset"
    bl_options = {'REGISTER', 'UNDO'}

    def execute(self, context):
        retarget = _core("retarget.mapping")
        path = self._path(context)
        if not path:
            self.report({'ERROR'}, "Choose a preset file (.json)")
            return {'CANCELLED'}
        try:
            preset = retarget.load_preset(path)
        except retarget.PresetError as e:
            self.report({'ERROR'}, str(e))
            return {'CANCELLED'}
        apply_preset(context, preset)
        settings(context).preset_path = path
        self.report({'INFO'}, f"Loaded {os.path.basename(path)}: {len(preset.mapping)} "
                    f"channels, {len(preset.bones)} bones")
        return {'FINISHED'}


CLASSES = (EMOCA_OT_retarget, EMOCA_OT_retarget_guess, EMOCA_OT_retarget_find_face,
           EMOCA_OT_retarget_clear, EMOCA_OT_retarget_preset_save,
           EMOCA_OT_retarget_preset_load)
