"""Retarget operator: bake the capture onto a character's shape keys and bones.

The targets are the selected objects ("Selected Objects" on) or the Face Mesh / Armature
fields. ``retarget_bake`` does the work: ARKit names matched to shape keys, head/jaw/eye
rotations to guessed bones, plain keyframes.
"""
import traceback

import bpy

from . import properties
from .ops_capture import capture_file_problem, capture_stem, load_capture


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


class EMOCA_OT_retarget(bpy.types.Operator):
    """Bake the capture onto the character: ARKit curves onto its shape keys (matched by
    name), head, jaw and eye rotations onto its bones"""

    bl_idname = "emoca.retarget"
    bl_label = "Retarget Capture onto Character"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        problem = capture_file_problem(context) or targets_problem(context)
        if problem:
            cls.poll_message_set(problem)
            return False
        return True

    def execute(self, context):
        from ._core import capture_file
        props = context.scene.emoca
        try:
            cap = load_capture(context)
        except capture_file.CaptureError as e:
            self.report({'ERROR'}, str(e))
            return {'CANCELLED'}
        try:
            from . import retarget_bake
            meshes, armature = retarget_bake.find_targets(target_objects(context))
            if not props.use_selection and props.target_armature is not None:
                armature = props.target_armature
            names = sorted({kb.name for m in meshes for kb in m.data.shape_keys.key_blocks[1:]})
            mapping = retarget_bake.arkit_name_mapping(names) if names else {}
            bones = retarget_bake.guess_bones(armature) if armature is not None else {}
            if not mapping and not bones:
                what = f"{len(names)} shape keys" if names else "no shape keys"
                self.report({'ERROR'}, f"Nothing to retarget onto: {what} match an ARKit name "
                            "and no head, jaw or eye bone was found")
                return {'CANCELLED'}
            stem = capture_stem(properties.abspath(props.capture_path))
            summary = retarget_bake.bake_capture(
                cap, meshes, armature=armature, mapping=None, bones=bones,
                frame_start=props.frame_start, action_name=f"EMOCA_{stem}")
        except ValueError as e:
            self.report({'ERROR'}, f"Retarget failed: {e}")
            return {'CANCELLED'}
        except Exception as e:  # noqa: BLE001 - reported, with the traceback on the console
            traceback.print_exc()
            self.report({'ERROR'}, f"Retarget failed: {type(e).__name__}: {e}")
            return {'CANCELLED'}
        self.report({'INFO'}, summary_line(summary, len(mapping)))
        missing = summary.get("missing_bones") if isinstance(summary, dict) else None
        if armature is not None and missing:
            self.report({'WARNING'}, f"No bone found for: {', '.join(missing)} "
                        f"(rename the bones or key them by hand)")
        return {'FINISHED'}


def summary_line(summary, n_channels: int) -> str:
    if not isinstance(summary, dict):
        return "Retargeted the capture"
    parts = [f"{n_channels}/52 ARKit channels"]
    bones = summary.get("bones") or {}
    if bones:
        parts.append(f"bones {', '.join(f'{r}={b}' for r, b in bones.items())}")
    frames = summary.get("frames")
    if frames:
        parts.append(f"frames {frames[0]}-{frames[1]}")
    parts.append(f"{summary.get('keys', 0)} keys")
    return "Retargeted: " + ", ".join(parts)


CLASSES = (EMOCA_OT_retarget,)
