"""Displacement operators: play a capture's displacement maps on the FLAME rig's material, and
build one frame's dense detail mesh. Thin: the node trees and meshes are built by
:mod:`.scene.displacement_material`.
"""
from __future__ import annotations

import bpy

from .scene.displacement_material import apply_to_rig, build_detail_mesh, displacement_node


class EMOCA_OT_displacement_material(bpy.types.Operator):
    """Play a capture's displacement maps (emoca backend) on the active FLAME rig's material"""

    bl_idname = "emoca.displacement_material"
    bl_label = "Displacement Maps"
    bl_options = {"REGISTER", "UNDO"}

    capture: bpy.props.StringProperty(name="Capture", subtype="FILE_PATH")
    frame_start: bpy.props.IntProperty(name="First Frame", default=1)

    @classmethod
    def poll(cls, context):
        o = context.active_object
        return o is not None and o.type == "MESH"

    def execute(self, context):
        try:
            apply_to_rig(context.active_object, bpy.path.abspath(self.capture), self.frame_start)
        except Exception as e:  # noqa: BLE001 - one line for the user
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        return {"FINISHED"}


class EMOCA_OT_detail_mesh(bpy.types.Operator):
    """Build the dense detail mesh of the active FLAME rig at the current frame: its surface
    upsampled to one vertex per displacement-map texel and displaced by that frame's map (a
    static high-resolution mesh for sculpting, baking or stills)"""

    bl_idname = "emoca.detail_mesh"
    bl_label = "Detail Mesh at Frame"
    bl_options = {"REGISTER", "UNDO"}

    scale: bpy.props.FloatProperty(name="Displacement Scale", default=1.0, min=0.0, soft_max=5.0)

    @classmethod
    def poll(cls, context):
        o = context.active_object
        if o is None or o.type != "MESH":
            return False
        return displacement_node(o)[1] is not None

    def execute(self, context):
        try:
            out = build_detail_mesh(context, context.active_object, scale=self.scale)
        except Exception as e:  # noqa: BLE001 - one line for the user
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"{out.name}: {len(out.data.vertices)} vertices")
        return {"FINISHED"}


CLASSES = (EMOCA_OT_displacement_material, EMOCA_OT_detail_mesh)
classes = CLASSES
