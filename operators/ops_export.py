"""Export operators: the animated character (or actor rig) as FBX or glTF, the scene as a
.blend.

``fbx_io`` and ``gltf_io`` do the writing; these only pick the objects, the frame range and
the file.
"""
import os
import traceback

import bpy
from bpy.props import EnumProperty, StringProperty
from bpy_extras.io_utils import ExportHelper

from . import properties
from .ops_capture import capture_stem


def _with_children(objects) -> list:
    """The objects plus the meshes an armature deforms (its children)."""
    out, seen = [], set()
    for o in objects:
        for x in [o] + (list(o.children_recursive) if o.type == 'ARMATURE' else []):
            if x.name not in seen:
                seen.add(x.name)
                out.append(x)
    return out


def export_objects(context, which: str) -> list:
    props = context.scene.emoca
    if which == 'SELECTED':
        objs = list(getattr(context, "selected_objects", None) or ())
    elif which == 'ACTOR':
        objs = [o for o in (props.actor_armature, props.actor_mesh) if o is not None]
    else:
        objs = [o for o in (props.target_armature, props.target_mesh) if o is not None]
    return _with_children(objs)


def default_source(context) -> str:
    props = context.scene.emoca
    if props.target_mesh is not None or props.target_armature is not None:
        return 'TARGETS'
    if props.actor_mesh is not None or props.actor_armature is not None:
        return 'ACTOR'
    return 'SELECTED'


def export_problem(context) -> str | None:
    if getattr(context.scene, "emoca", None) is None:
        return "The EMOCA add-on is not registered"
    if not export_objects(context, default_source(context)):
        return "Nothing to export: build the actor rig, retarget onto a character, or select " \
               "objects"
    return None


def _default_path(context, ext: str) -> str:
    props = context.scene.emoca
    cap = properties.abspath(props.capture_path)
    if cap:
        return os.path.join(os.path.dirname(cap), capture_stem(cap) + ext)
    blend = bpy.data.filepath
    if blend:
        return os.path.splitext(blend)[0] + ext
    return "face_animation" + ext


_TAKES = [('ASSIGNED', "Current Animation", "The animation the objects play now, over the "
           "scene's frame range (one animation)"),
          ('ALL', "All Takes", "Every take on the character as its own named animation, in "
           "one file"),
          ('PER_TAKE', "One File per Take", "Every take in its own file, NAME_<take>.fbx/.glb "
           "beside the file chosen")]


def has_takes(objects) -> bool:
    """Whether the objects carry takes (``operators.scene.takes``)."""
    from .scene import takes
    return bool(takes.find_takes(objects))


_SOURCES = [('TARGETS', "Character", "The retarget targets (Face Mesh and Armature fields)"),
            ('ACTOR', "Actor Rig", "The actor rig built from the capture"),
            ('SELECTED', "Selected", "The selected objects")]


class _AnimationExport(ExportHelper):
    """The common part of the FBX and glTF export operators: the objects, the file, the
    scene's frame range; subclasses name the format and :meth:`write` the file."""

    bl_options = {'REGISTER'}
    format_name = ""

    source: EnumProperty(name="Objects", description="What to export", items=_SOURCES,
                         default='TARGETS')
    takes: EnumProperty(name="Takes", description="What animation to write when the "
                        "character carries takes", items=_TAKES, default='ALL')

    @classmethod
    def poll(cls, context):
        problem = export_problem(context)
        return properties.poll_ok(cls, problem)

    def invoke(self, context, event):
        if not self.properties.is_property_set("source"):
            self.source = default_source(context)
        if not self.properties.is_property_set("takes") and \
                not has_takes(export_objects(context, self.source)):
            self.takes = 'ASSIGNED'
        if not self.filepath:
            self.filepath = _default_path(context, self.filename_ext)
        context.window_manager.fileselect_add(self)
        return {'RUNNING_MODAL'}

    def target_path(self, context) -> str:
        return bpy.path.ensure_ext(properties.abspath(self.filepath) or
                                   _default_path(context, self.filename_ext), self.filename_ext)

    def write(self, path, objects, scene):
        raise NotImplementedError

    def execute(self, context):
        objects = export_objects(context, self.source)
        if not objects:
            self.report({'ERROR'}, f"Nothing to export as {self.source.lower()}: "
                        f"{export_problem(context) or 'no objects'}")
            return {'CANCELLED'}
        path = self.target_path(context)
        folder = os.path.dirname(path)
        if folder and not os.path.isdir(folder):
            self.report({'ERROR'}, f"Folder does not exist: {folder}")
            return {'CANCELLED'}
        scene = context.scene
        what = f"{self.format_name} export failed"
        try:
            if self.takes != 'ASSIGNED' and has_takes(objects):
                from .scene import cli_scene
                outs = cli_scene.export_objects(objects, path, face_only=False, which="all",
                                                per_take=self.takes == 'PER_TAKE')
                out = ", ".join(str(p) for p in outs)
                self.report({'INFO'}, f"Exported {len(objects)} objects, "
                            f"{'one file per take' if len(outs) > 1 else 'every take'}, to "
                            f"{out}")
                return {'FINISHED'}
            out = self.write(path, objects, scene)
        except (OSError, ValueError) as e:
            self.report({'ERROR'}, f"{what}: {e}")
            return {'CANCELLED'}
        except Exception as e:  # noqa: BLE001 - reported, with the traceback on the console
            traceback.print_exc()
            self.report({'ERROR'}, f"{what}: {type(e).__name__}: {e}")
            return {'CANCELLED'}
        self.report({'INFO'}, f"Exported {len(objects)} objects, frames {scene.frame_start}-"
                    f"{scene.frame_end}, to {out}")
        return {'FINISHED'}


class EMOCA_OT_export_fbx(bpy.types.Operator, _AnimationExport):
    """Export the animated face (shape keys and bones) as FBX, over the scene's frame range"""

    bl_idname = "emoca.export_fbx"
    bl_label = "Export Face Animation (FBX)"
    format_name = "FBX"

    filename_ext = ".fbx"
    filter_glob: StringProperty(default="*.fbx", options={'HIDDEN'})

    def write(self, path, objects, scene):
        from .scene import fbx_io
        return fbx_io.export_fbx(path, objects, frame_start=scene.frame_start,
                                 frame_end=scene.frame_end)


class EMOCA_OT_export_gltf(bpy.types.Operator, _AnimationExport):
    """Export the animated face as glTF 2.0 (morph targets named by the shape keys, bone
    animation, one animation named after the take) for three.js, Godot and Unity, over the
    scene's frame range"""

    bl_idname = "emoca.export_gltf"
    bl_label = "Export Face Animation (glTF)"
    format_name = "glTF"

    filename_ext = ".glb"
    filter_glob: StringProperty(default="*.glb;*.gltf", options={'HIDDEN'})

    def _is_gltf(self) -> bool:
        return os.path.splitext(self.filepath)[1].lower() == ".gltf"

    def check(self, context):
        # a name ending in .gltf is kept (the same content as text, buffer embedded)
        return False if self._is_gltf() else super().check(context)

    def target_path(self, context) -> str:
        if self._is_gltf():
            return properties.abspath(self.filepath)
        return super().target_path(context)

    def write(self, path, objects, scene):
        from .scene import gltf_io
        return gltf_io.export_gltf(path, objects, frame_start=scene.frame_start,
                                   frame_end=scene.frame_end)


class EMOCA_OT_save_capture_blend(bpy.types.Operator, ExportHelper):
    """Save the scene (rig, character and baked animation) as a .blend file next to the
    capture"""

    bl_idname = "emoca.save_capture_blend"
    bl_label = "Save Blend File with Capture"
    bl_options = {'REGISTER'}

    filename_ext = ".blend"
    filter_glob: StringProperty(default="*.blend", options={'HIDDEN'})

    @classmethod
    def poll(cls, context):
        if getattr(context.scene, "emoca", None) is None:
            cls.poll_message_set("The EMOCA add-on is not registered")
            return False
        return True

    def invoke(self, context, event):
        if not self.filepath:
            self.filepath = _default_path(context, self.filename_ext)
        context.window_manager.fileselect_add(self)
        return {'RUNNING_MODAL'}

    def execute(self, context):
        path = bpy.path.ensure_ext(properties.abspath(self.filepath) or
                                   _default_path(context, ".blend"), ".blend")
        folder = os.path.dirname(path)
        if folder and not os.path.isdir(folder):
            self.report({'ERROR'}, f"Folder does not exist: {folder}")
            return {'CANCELLED'}
        try:
            from .scene import fbx_io
            out = fbx_io.save_blend(path)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            self.report({'ERROR'}, f"Saving {os.path.basename(path)} failed: {e}")
            return {'CANCELLED'}
        self.report({'INFO'}, f"Saved {out or path}")
        return {'FINISHED'}


CLASSES = (EMOCA_OT_export_fbx, EMOCA_OT_export_gltf, EMOCA_OT_save_capture_blend)
