"""View3D > Sidebar > "EMOCA": the Retarget panel (targets, method, bake) with its Mapping,
Bones and Timing & Presets sub-panels, and the Export panel (FBX, glTF, Live Link Face
CSV).

The mapping (capture channel -> shape keys, with per-channel calibration) and the bones are
shown before baking and edited per row; ``Guess Mapping`` (or the first Retarget) fills
them, a preset loads them. Drawing reads properties only (nothing heavy is imported).
"""
import bpy

try:
    from ..operators import ops_capture, ops_export, ops_livelink, ops_retarget, ops_takes
    from .sidebar import _EmocaPanel, _button, _reason
except ImportError:  # panels/ imported as a top-level package (tests from the repo root)
    from operators import ops_capture, ops_export, ops_livelink, ops_retarget, ops_takes
    from panels.sidebar import _EmocaPanel, _button, _reason

_ROLE_LABELS = {"head": "Head", "jaw": "Jaw", "left_eye": "Left Eye", "right_eye": "Right Eye"}


def _targets(context):
    """(face mesh or None, armature or None) for the pickers, without importing the core."""
    props = context.scene.emoca
    objs = ops_retarget.target_objects(context)
    mesh = props.target_mesh if props.target_mesh in objs else None
    arm = props.target_armature if props.target_armature in objs else None
    for o in objs:
        if mesh is None and o.type == 'MESH' and ops_retarget._has_shape_keys(o):
            mesh = o
        if arm is None and o.type == 'ARMATURE':
            arm = o
    if arm is None and mesh is not None and mesh.parent is not None \
            and mesh.parent.type == 'ARMATURE':
        arm = mesh.parent
    return mesh, arm


class EMOCA_UL_retarget_channels(bpy.types.UIList):
    """One row per capture channel: enabled, the channel, the shape keys it drives."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname,
                  index=0):
        row = layout.row(align=True)
        row.prop(item, "enabled", text="")
        sub = row.row()
        sub.active = item.enabled and bool(item.keys)
        sub.label(text=item.channel)
        sub.label(text=item.keys or "(no shape key)",
                  icon='SHAPEKEY_DATA' if item.keys else 'BLANK1')
        if (item.gain, item.offset, item.min, item.max, item.smoothing) != (1.0, 0.0, 0.0, 1.0, 0.0):
            row.label(text="", icon='MODIFIER')


class EMOCA_PT_retarget(_EmocaPanel, bpy.types.Panel):
    bl_idname = "EMOCA_PT_retarget"
    bl_label = "Retarget"
    bl_order = 2

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        props = context.scene.emoca
        rs = ops_retarget.settings(context)

        col = layout.column()
        col.prop(props, "use_selection")
        sub = col.column()
        sub.active = not props.use_selection
        sub.prop(props, "target_mesh")
        sub.prop(props, "target_armature")
        targets = ops_retarget.target_objects(context)
        n_keys = 0
        for o in targets:
            key = getattr(o.data, "shape_keys", None) if o.type == 'MESH' else None
            if key is not None:
                n_keys += max(0, len(key.key_blocks) - 1)
        if targets:
            col.label(text=f"{len(targets)} objects, {n_keys} shape keys", icon='OBJECT_DATA')
        if rs is not None:
            col.separator()
            col.prop(rs, "method", expand=True)
            if rs.method == 'geometry':
                row = col.row()
                row.operator("emoca.retarget_find_face", icon='VIEWZOOM')
                if rs.correspondence:
                    col.label(text=rs.correspondence,
                              icon='ERROR' if rs.correspondence.startswith("No") else 'CHECKMARK')
        col.prop(props, "frame_start")
        if rs is not None:
            col.prop(rs, "frame_offset")
            col.prop(rs, "reduce_keys")
            sub = col.column(align=True)
            sub.active = rs.reduce_keys
            sub.prop(rs, "key_tolerance")
            sub.prop(rs, "angle_tolerance")
        cap_problem = ops_capture.capture_file_problem(context)
        target_problem = ops_retarget.targets_problem(context)
        _button(layout, "emoca.retarget", cap_problem or target_problem, icon='ACTION')
        if cap_problem and target_problem:
            _reason(layout, target_problem)
        if rs is not None and rs.status:
            layout.label(text=rs.status,
                         icon='ERROR' if rs.status.startswith("Failed") else 'CHECKMARK')


class _RetargetSub(_EmocaPanel):
    bl_parent_id = "EMOCA_PT_retarget"

    @classmethod
    def poll(cls, context):
        return (getattr(context.scene, "emoca", None) is not None
                and getattr(context.scene, "emoca_retarget", None) is not None)


class EMOCA_PT_retarget_mapping(_RetargetSub, bpy.types.Panel):
    bl_idname = "EMOCA_PT_retarget_mapping"
    bl_label = "Shape Key Mapping"
    bl_order = 0

    def draw(self, context):
        layout = self.layout
        rs = context.scene.emoca_retarget
        mesh, _ = _targets(context)
        if rs.method == 'geometry':
            layout.label(text="By Geometry: every shape key of "
                         f"{mesh.name if mesh else 'the face mesh'} is solved", icon='INFO')
            layout.label(text="from the landmarks (the mapping is used if no face is found)")
        row = layout.row(align=True)
        row.operator("emoca.retarget_guess", icon='VIEWZOOM')
        row.operator("emoca.retarget_clear", text="", icon='X')
        layout.prop(rs, "use_aliases")
        if len(rs.channels) == 0:
            layout.label(text="Not guessed yet: Guess Mapping (Retarget guesses it too)",
                         icon='INFO')
            return
        n = sum(1 for c in rs.channels if c.enabled and c.keys)
        layout.label(text=f"{n} of {len(rs.channels)} channels drive shape keys",
                     icon='SHAPEKEY_DATA')
        if mesh is not None and rs.mapping_target and rs.mapping_target != mesh.name:
            box = layout.box()
            box.alert = True
            box.label(text=f"Mapped for {rs.mapping_target}, not {mesh.name}: Guess again?",
                      icon='ERROR')
        layout.template_list("EMOCA_UL_retarget_channels", "", rs, "channels", rs,
                             "active_channel", rows=6)
        if 0 <= rs.active_channel < len(rs.channels):
            item = rs.channels[rs.active_channel]
            box = layout.box()
            col = box.column()
            col.use_property_split = True
            col.use_property_decorate = False
            col.label(text=item.channel, icon='SHAPEKEY_DATA')
            col.prop(item, "keys")
            keys = getattr(mesh.data, "shape_keys", None) if mesh is not None else None
            if keys is not None:
                col.prop_search(item, "key_pick", keys, "key_blocks", text="Set Key")
            col.prop(item, "enabled")
            col.prop(item, "gain")
            col.prop(item, "offset")
            row = col.row(align=True)
            row.prop(item, "min")
            row.prop(item, "max")
            col.prop(item, "smoothing")
        if rs.unmapped_keys:
            keys = [k for k in rs.unmapped_keys.split(", ") if k]
            more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
            layout.label(text=f"{len(keys)} shape keys not driven:", icon='INFO')
            layout.label(text=", ".join(keys[:6]) + more)


class EMOCA_PT_retarget_bones(_RetargetSub, bpy.types.Panel):
    bl_idname = "EMOCA_PT_retarget_bones"
    bl_label = "Bones"
    bl_order = 1

    def draw_header(self, context):
        self.layout.prop(context.scene.emoca_retarget, "use_bones", text="")

    def draw(self, context):
        layout = self.layout
        rs = context.scene.emoca_retarget
        _, arm = _targets(context)
        layout.active = rs.use_bones
        if arm is None:
            layout.label(text="No armature among the targets", icon='INFO')
            return
        row = layout.row()
        row.prop(rs, "eye_drive")
        if rs.eye_status:
            layout.label(text=f"Eyes: {rs.eye_status}", icon='HIDE_OFF')
        if len(rs.bones) == 0:
            layout.label(text="Guess Mapping finds the head, jaw and eye bones", icon='INFO')
            return
        if not any(b.bone for b in rs.bones):
            box = layout.box()
            box.alert = True
            box.label(text=f"No head, jaw or eye bone recognised in {arm.name}:", icon='ERROR')
            box.label(text="pick them below")
        for b in rs.bones:
            box = layout.box()
            row = box.row(align=True)
            row.prop(b, "enabled", text="")
            row.prop_search(b, "bone", arm.data, "bones", text=_ROLE_LABELS.get(b.role, b.role))
            if b.bone and b.bone not in arm.data.bones:
                box.label(text=f"{arm.name} has no bone {b.bone}", icon='ERROR')
            if not (b.enabled and b.bone):
                continue
            col = box.column(align=True)
            row = col.row(align=True)
            row.label(text="Axes")
            row.prop(b, "axis_x", text="")
            row.prop(b, "axis_y", text="")
            row.prop(b, "axis_z", text="")
            col.prop(b, "gain")
            col.prop(b, "offset")
            col.prop(b, "limit_min")
            col.prop(b, "limit_max")


class EMOCA_PT_retarget_timing(_RetargetSub, bpy.types.Panel):
    bl_idname = "EMOCA_PT_retarget_timing"
    bl_label = "Neutral, Frames & Presets"
    bl_order = 2

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        rs = context.scene.emoca_retarget
        col = layout.column()
        props = context.scene.emoca
        if hasattr(props, "timing"):
            col.prop(props, "timing")
            scene = context.scene
            rate = scene.render.fps / scene.render.fps_base
            col.label(text=f"Scene: {rate:.5g} fps" + (
                ", keys at the clip's real times" if props.timing == 'SCENE' else
                ", set to the clip's rate by the next bake"), icon='TIME')
            col.separator()
        col.prop(rs, "use_neutral_frame")
        sub = col.column()
        sub.active = rs.use_neutral_frame
        sub.prop(rs, "neutral_frame")
        col.prop(rs, "use_frame_range")
        sub = col.column(align=True)
        sub.active = rs.use_frame_range
        sub.prop(rs, "frame_first")
        sub.prop(rs, "frame_last")
        col.prop(rs, "frame_offset")
        layout.separator()
        layout.prop(rs, "preset_path")
        row = layout.row(align=True)
        row.operator("emoca.retarget_preset_load", icon='IMPORT', text="Load")
        row.operator("emoca.retarget_preset_save", icon='EXPORT', text="Save")


class EMOCA_UL_takes(bpy.types.UIList):
    """One row per take: its state, name, frames (or the capture's progress), and its
    buttons: audition and re-bake (baked), cancel (while the job captures it)."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname,
                  index=0):
        row = layout.row(align=True)
        row.label(text=item.name, icon=ops_takes.ICONS.get(item.state, 'BLANK1'))
        job = ops_capture.active_job()
        if item.state == 'CAPTURING' or (item.state == 'QUEUED' and item.job_index >= 0):
            sub = row.row()
            sub.progress(factor=item.progress, type='BAR',
                         text=item.message or f"{item.progress * 100:.0f}%")
            if job is not None:
                op = row.operator("emoca.take_cancel", text="", icon='X', emboss=False)
                op.index = index
            return
        if item.state == 'BAKED':
            row.label(text=f"{item.frame_start}-{item.frame_end}")
            op = row.operator("emoca.take_audition", text="", icon='PLAY', emboss=False)
            op.index = index
            op = row.operator("emoca.take_rebake", text="", icon='FILE_REFRESH', emboss=False)
            op.index = index
        elif item.state == 'CAPTURED':
            row.label(text=f"{item.frames} frames" + (f" · {item.fps:.4g} fps" if item.fps
                                                      else ""))
        elif item.state in ('FAILED', 'CANCELLED'):
            sub = row.row()
            sub.alert = item.state == 'FAILED'
            sub.label(text=item.message or item.state.title())
        else:
            row.label(text="queued")


class EMOCA_PT_takes(_EmocaPanel, bpy.types.Panel):
    """The take list: several clips captured in one job, each its own action on the
    character, switched, auditioned and re-baked here."""

    bl_idname = "EMOCA_PT_takes"
    bl_label = "Takes"
    bl_parent_id = "EMOCA_PT_retarget"
    bl_order = 3

    @classmethod
    def poll(cls, context):
        return ops_takes.take_list(context) is not None and \
            getattr(context.scene, "emoca", None) is not None

    def draw(self, context):
        layout = self.layout
        tl = context.scene.emoca_takes
        job = ops_capture.active_job()
        row = layout.row()
        row.template_list("EMOCA_UL_takes", "", tl, "items", tl, "active", rows=4)
        col = row.column(align=True)
        col.operator("emoca.take_add_videos", text="", icon='ADD')
        col.operator("emoca.take_add_captures", text="", icon='FILE_MOVIE')
        col.operator("emoca.take_remove", text="", icon='REMOVE')
        col.separator()
        col.operator("emoca.takes_show_all", text="", icon='SEQ_STRIP_META')
        col = layout.column()
        col.use_property_split = True
        col.use_property_decorate = False
        col.prop(tl, "folder")
        col.prop(tl, "retarget_after")
        if job is not None and job.stdin_control:
            layout.operator("emoca.cancel_capture", text="Cancel All", icon='CANCEL')
        else:
            _button(layout, "emoca.capture_takes", ops_takes.capture_takes_problem(context),
                    icon='REC')
        row = layout.row(align=True)
        row.operator("emoca.retarget_takes", icon='ACTION')
        row.operator("emoca.take_rebake", text="Re-bake", icon='FILE_REFRESH')
        row.operator("emoca.take_audition", text="Audition", icon='PLAY')
        if tl.status:
            layout.label(text=tl.status, icon='INFO')
        if 0 <= tl.active < len(tl.items):
            it = tl.items[tl.active]
            if it.message and it.state in ('FAILED', 'BAKED'):
                box = layout.box()
                box.alert = it.state == 'FAILED'
                box.label(text=it.message, icon='ERROR' if it.state == 'FAILED' else 'INFO')


class EMOCA_PT_export(_EmocaPanel, bpy.types.Panel):
    bl_idname = "EMOCA_PT_export"
    bl_label = "Export"
    bl_order = 3

    def draw(self, context):
        layout = self.layout
        scene = context.scene
        layout.label(text=f"Frames {scene.frame_start}-{scene.frame_end} at "
                     f"{scene.render.fps / scene.render.fps_base:.4g} fps")
        problem = ops_export.export_problem(context)
        row = layout.row(align=True)
        row.scale_y = 1.3
        row.enabled = problem is None
        row.operator("emoca.export_fbx", icon='EXPORT', text="Export FBX")
        row.operator("emoca.export_gltf", icon='EXPORT', text="Export glTF")
        _reason(layout, problem)
        _button(layout, "emoca.export_livelink", ops_livelink.export_problem(context),
                icon='EXPORT', text="Export Live Link Face CSV")
        layout.operator("emoca.import_livelink", icon='IMPORT', text="Import Live Link Face CSV")
        layout.operator("emoca.save_capture_blend", icon='FILE_BLEND')


CLASSES = (EMOCA_UL_retarget_channels, EMOCA_PT_retarget, EMOCA_PT_retarget_mapping,
           EMOCA_PT_retarget_bones, EMOCA_PT_retarget_timing, EMOCA_UL_takes,
           EMOCA_PT_takes, EMOCA_PT_export)

# (menu class name, draw function) appended on register, removed on unregister.
MENU_HOOKS = (("TOPBAR_MT_file_import", ops_livelink.menu_import),)
