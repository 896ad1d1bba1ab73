"""Rig operators: build the actor's head rig from a capture, add the bundled sample character.

Thin: they gather the scene settings and call ``rig_build`` (Blender data) with the core's
Capture and head model; every failure becomes one readable report.
"""
import os
import traceback

import bpy

from . import properties, worker
from .ops_capture import capture_file_problem, capture_stem, load_capture
from .scene.emoca_collection import ensure_collection


ICT_HEAD = "ict_head.npz"     # the actor rig and the sample character are ICT heads


def bundled_path(name: str) -> str:
    """Path of a model in ``bundled_models/`` (without importing the core: used by poll)."""
    return str(worker.EXTENSION_ROOT / "bundled_models" / name)


def select_only(context, objects) -> None:
    objects = [o for o in objects if o is not None]
    view_layer = context.view_layer
    for o in view_layer.objects:
        if o.select_get():
            o.select_set(False)
    for o in objects:
        if o.name in view_layer.objects:
            o.select_set(True)
    if objects and objects[0].name in view_layer.objects:
        view_layer.objects.active = objects[0]


def _unexpected(op, what: str, e: Exception) -> set:
    traceback.print_exc()
    op.report({'ERROR'}, f"{what} failed: {type(e).__name__}: {e}")
    return {'CANCELLED'}


class EMOCA_OT_build_rig(bpy.types.Operator):
    """Build the actor's head (mesh with expression shape keys, and an armature) from the
    bundled open head model and animate it with the capture"""

    bl_idname = "emoca.build_rig"
    bl_label = "Build Actor Rig from Capture"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        problem = capture_file_problem(context)
        if problem is None and not os.path.isfile(bundled_path(ICT_HEAD)):
            problem = f"{ICT_HEAD} is missing from bundled_models/ (rebuild it, see README)"
        return properties.poll_ok(cls, problem)

    def execute(self, context):
        from ._core import capture_file, head_model
        props = context.scene.emoca
        try:
            cap = load_capture(context)
            if str(cap.meta.get("head_model") or "").startswith("FLAME-"):
                return self._build_flame(context, cap)
            from .scene import rig_build
            model, identity = rig_build.arkit_head(cap)
        except (capture_file.CaptureError, head_model.HeadModelError) as e:
            self.report({'ERROR'}, str(e))
            return {'CANCELLED'}
        channels = props.rig_channels
        if channels == 'AUTO':
            cols = tuple(cap.names.get("expression", ()))
            channels = "expression" if cols and set(cols) <= set(model.expression_names) \
                else "arkit"
        try:
            kw = {"shape": identity} if identity is not None else {}
            stem = capture_stem(properties.abspath(props.capture_path))
            mesh, arm = rig_build.build_head_object(
                model, f"Actor_{stem}", collection=ensure_collection(context.scene),
                with_armature=True, **kw)
            summary = rig_build.animate_head_rig(mesh, arm, cap, frame_start=props.frame_start,
                                                 channels=channels,
                                                 timing=properties.timing(context))
        except ValueError as e:
            self.report({'ERROR'}, f"Build rig failed: {e}")
            return {'CANCELLED'}
        except Exception as e:  # noqa: BLE001 - reported, with the traceback on the console
            return _unexpected(self, "Build rig", e)
        props.actor_mesh = mesh
        if arm is not None:
            props.actor_armature = arm
        _key_emotion(arm or mesh, cap, props.frame_start, properties.timing(context))
        select_only(context, [arm or mesh, mesh])
        n_keys = len(summary.get("shape_keys", ())) if isinstance(summary, dict) else 0
        first, last = (summary.get("frames") if isinstance(summary, dict) else None) or \
            (props.frame_start, props.frame_start + cap.n_frames - 1)
        msg = f"Built {mesh.name}: {n_keys} animated shape keys, frames {first}-{last}"
        missing = summary.get("missing", []) if isinstance(summary, dict) else []
        if missing:
            msg += f" ({len(missing)} capture channels have no shape key)"
        self.report({'INFO'}, msg)
        _add_reference(self, context, cap)
        return {'FINISHED'}


    def _build_flame(self, context, cap):
        """A FLAME/EMOCA capture: the FLAME rig from the user's FLAME folder (preferences),
        with the capture's displacement maps on its material when the emoca backend wrote
        them."""
        from .scene import cli_scene, rig_build
        from .properties import get_prefs
        props = context.scene.emoca
        flame_dir = properties.abspath(getattr(get_prefs(context), "flame_folder", "") or "")
        if not flame_dir:
            self.report({'ERROR'}, "This capture was made with FLAME: set the FLAME folder in "
                                   "Edit > Preferences > Add-ons > EMOCA Face Capture")
            return {'CANCELLED'}
        capture_path = properties.abspath(props.capture_path)
        try:
            model = cli_scene._flame_model_for(cap, flame_dir)
            stem = capture_stem(capture_path)
            mesh, arm, summary = rig_build.build_flame_rig(
                model, cap, f"Actor_{stem}", collection=ensure_collection(context.scene),
                frame_start=props.frame_start, timing=properties.timing(context))
            from .scene import displacement_material as dm
            if dm._core_module("models.displacement").sequence_dir(capture_path).is_dir():
                dm.apply_to_rig(mesh, capture_path, frame_start=props.frame_start)
        except Exception as e:  # noqa: BLE001 - BadInput and FLAME errors read as one line
            if type(e).__name__ in ("BadInput", "FlameError", "HeadModelError", "CaptureError"):
                self.report({'ERROR'}, str(e))
                return {'CANCELLED'}
            return _unexpected(self, "Build FLAME rig", e)
        props.actor_mesh = mesh
        if arm is not None:
            props.actor_armature = arm
        _key_emotion(arm or mesh, cap, props.frame_start, properties.timing(context))
        select_only(context, [arm or mesh, mesh])
        self.report({'INFO'}, f"Built FLAME rig {mesh.name}: {cap.n_frames} frames")
        _add_reference(self, context, cap)
        return {'FINISHED'}


def _add_reference(op, context, cap) -> None:
    """The capture's video beside the new rig, with its sound (ops_reference); reported, and
    never failing the build."""
    from .ops_reference import add_reference
    try:
        _added, level, msg = add_reference(context, cap)
    except Exception as e:  # noqa: BLE001 - the rig is built; the reference is extra
        traceback.print_exc()
        level, msg = 'WARNING', f"Reference video not added: {type(e).__name__}: {e}"
    op.report({level}, msg)


def _key_emotion(obj, cap, frame_start: int, timing: str = "clip") -> None:
    """The capture's emotion curves, when it has them, keyed on the rig (custom properties),
    at the rig's key frames."""
    if "emotion_probs" in cap:
        from .scene import emotion_curves, rig_build
        frames = rig_build.capture_key_frames(cap, frame_start,
                                              rig_build.timing_rate(cap, timing))
        emotion_curves.key_emotion_curves(obj, cap, frame_start, frames=frames)


class EMOCA_OT_add_sample_character(bpy.types.Operator):
    """Add the bundled sample character (a head with ARKit-named shape keys and head, jaw and
    eye bones) and make it the retarget target"""

    bl_idname = "emoca.add_sample_character"
    bl_label = "Add Sample Character"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        if getattr(context.scene, "emoca", None) is None:
            cls.poll_message_set("The EMOCA add-on is not registered")
            return False
        if not os.path.isfile(bundled_path(ICT_HEAD)):
            cls.poll_message_set(f"{ICT_HEAD} is missing from bundled_models/ "
                                 "(rebuild it, see README)")
            return False
        return True

    def execute(self, context):
        from ._core import head_model
        props = context.scene.emoca
        from .scene import rig_build
        try:
            model, identity = rig_build.arkit_head()
        except head_model.HeadModelError as e:
            self.report({'ERROR'}, str(e))
            return {'CANCELLED'}
        try:
            mesh, arm = rig_build.build_head_object(
                model, "Sample_Character", collection=ensure_collection(context.scene),
                with_armature=True, shape=identity)
        except Exception as e:  # noqa: BLE001
            return _unexpected(self, "Add sample character", e)
        # Beside the actor rather than inside it.
        for o in (arm, mesh):
            if o is not None and o.parent is None:
                o.location.x += 0.3
        props.target_mesh = mesh
        if arm is not None:
            props.target_armature = arm
        props.use_selection = False
        select_only(context, [arm or mesh, mesh])
        self.report({'INFO'}, f"Added {mesh.name} as the retarget target")
        return {'FINISHED'}


CLASSES = (EMOCA_OT_build_rig, EMOCA_OT_add_sample_character)
