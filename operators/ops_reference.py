"""Reference video operators: put the capture's video (and its sound) beside the actor rig,
and aim the camera at actor, character and video.

Thin: the scene building is :mod:`.reference_video`; Build Rig calls :func:`add_reference`
too, so a rig built from a capture comes with its video.
"""
import os

import bpy

from . import properties
from .ops_capture import capture_file_problem, load_capture


def video_of(cap, props) -> str | None:
    """The capture's video: the path its sidecar recorded, else the scene's Video field when
    that file is the same size as the captured one (the clip moved); None when neither."""
    src = cap.meta.get("source") or {}
    path = str(src.get("path") or "")
    if path and os.path.isfile(path):
        return os.path.abspath(path)
    other = properties.abspath(props.video_path)
    if other and os.path.isfile(other):
        size = src.get("size")
        if size is None or os.path.getsize(other) == int(size):
            return other
    return None


def actor_objects(props) -> list:
    return [o for o in (props.actor_armature, props.actor_mesh) if o is not None]


def add_reference(context, cap) -> tuple[bool, str, str]:
    """The capture's video beside the scene's actor rig, with the Rig panel's settings;
    ``(added, report level, message)``. A missing video or one without audio is a warning,
    never an error."""
    from .scene import reference_video
    from .scene.emoca_collection import ensure_collection

    scene = context.scene
    props = scene.emoca
    video = video_of(cap, props)
    if video is None:
        name = (cap.meta.get("source") or {}).get("name") or "the captured video"
        return False, 'WARNING', f"Reference video not found ({name}): choose it in the Video field " \
                          f"and click Add Reference Video"
    ref = reference_video.from_capture(cap, frame_start=props.frame_start, video=video)
    info = reference_video.add(
        scene, ref, actor_objects(props), placement=props.reference_placement,
        opacity=props.reference_opacity, visible=props.show_reference,
        sound=props.reference_sound, collection=ensure_collection(scene))
    level = 'INFO' if info["sound"] else 'WARNING'
    return True, level, f"Reference video {os.path.basename(video)}: " + "; ".join(info["messages"])


class EMOCA_OT_add_reference_video(bpy.types.Operator):
    """Put the capture's video beside the actor rig, playing frame-locked to the timeline, and
    its sound in the sequencer (scrubbing plays it); replaces the reference already there"""

    bl_idname = "emoca.add_reference_video"
    bl_label = "Add Reference Video"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        return properties.poll_ok(cls, capture_file_problem(context))

    def execute(self, context):
        from ._core import capture_file
        try:
            cap = load_capture(context)
            added, level, msg = add_reference(context, cap)
        except capture_file.CaptureError as e:
            self.report({'ERROR'}, str(e))
            return {'CANCELLED'}
        except (OSError, RuntimeError) as e:   # an unreadable movie
            self.report({'ERROR'}, f"Add reference video failed: {e}")
            return {'CANCELLED'}
        self.report({level}, msg)
        return {'FINISHED'} if added else {'CANCELLED'}


def framed_objects(context) -> list:
    """What Frame All frames: the actor rig, the retarget target and the shown reference."""
    from .scene import reference_video

    props = context.scene.emoca
    objs = actor_objects(props) + [o for o in (props.target_armature, props.target_mesh)
                                   if o is not None]
    plane = reference_video.find(context.scene)
    if plane is not None and not plane.hide_viewport:
        objs.append(plane)
    return objs


class EMOCA_OT_frame_all(bpy.types.Operator):
    """Aim the scene camera (a new one when there is none) from the front so the actor rig,
    the character and the reference video are all in view, and look through it"""

    bl_idname = "emoca.frame_all"
    bl_label = "Frame All"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        if getattr(context.scene, "emoca", None) is None:
            return properties.poll_ok(cls, "The EMOCA add-on is not registered")
        return properties.poll_ok(cls, None if framed_objects(context) else
                                  "Nothing to frame: build the actor rig first")

    def execute(self, context):
        from .scene import reference_video
        objs = framed_objects(context)
        cam = reference_video.frame_all(context.scene, objs)
        if cam is None:
            self.report({'WARNING'}, "Nothing to frame")
            return {'CANCELLED'}
        space = context.space_data
        if space is not None and space.type == 'VIEW_3D' and space.region_3d is not None:
            space.region_3d.view_perspective = 'CAMERA'
        self.report({'INFO'}, f"{cam.name} frames {', '.join(o.name for o in objs)}")
        return {'FINISHED'}


CLASSES = (EMOCA_OT_add_reference_video, EMOCA_OT_frame_all)
