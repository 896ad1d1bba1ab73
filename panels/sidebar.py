"""View3D > Sidebar > "EMOCA": Capture, Rig, Retarget, Export, in the order of the job.

Drawing is cheap: paths are checked with ``os.path``, the capture summary comes from the
sidecar JSON (cached), and the reasons a button is disabled are the same sentences the
operators' poll() gives (``*_problem`` functions), shown under the button.
"""
import os

import bpy

try:
    from ..operators import ops_capture, ops_export, ops_retarget, properties, runtime, worker
    from ..operators.scene import displacement_material, reference_video
except ImportError:  # panels/ imported as a top-level package (tests from the repo root)
    from operators import ops_capture, ops_export, ops_retarget, properties, runtime, worker
    from operators.scene import displacement_material, reference_video


def _reason(layout, problem) -> None:
    if problem:
        row = layout.row()
        row.alert = False
        row.label(text=problem, icon='INFO')


def _button(layout, idname: str, problem, icon: str = 'NONE', text: str | None = None):
    row = layout.row()
    row.scale_y = 1.3
    row.enabled = problem is None
    if text is None:
        row.operator(idname, icon=icon)
    else:
        row.operator(idname, icon=icon, text=text)
    _reason(layout, problem)


def _model_status(layout, context, backend_id: str) -> None:
    """One line per model file the backend needs (its ``needs``): found, or what is wrong
    (preferences)."""
    backend = worker.find_backend(backend_id)
    if backend is None or not backend.needs:
        row = layout.row()
        row.alignment = 'RIGHT'
        row.label(text="Model: bundled, nothing to download", icon='CHECKMARK')
        return
    for kind, st in ops_capture.model_statuses(context, backend).items():
        row = layout.row()
        row.alert = not st.ok
        name = runtime.MODEL_PREFS[kind]
        if st.ok:
            text = st.text
        elif st.state == runtime.UNSET:
            text = f"{name[0].upper()}{name[1:]}: not set (add-on preferences)"
        else:
            text = f"{st.text} (fix it in the preferences)"
        row.label(text=text, icon=st.icon)


class _EmocaPanel:
    """Shared by every EMOCA sidebar panel (also those in other modules of panels/): the
    View3D sidebar tab "EMOCA", shown when the add-on's scene settings exist."""

    bl_space_type = 'VIEW_3D'
    bl_region_type = 'UI'
    bl_category = "EMOCA"

    @classmethod
    def poll(cls, context):
        return getattr(context.scene, "emoca", None) is not None


class EMOCA_PT_capture(_EmocaPanel, bpy.types.Panel):
    bl_idname = "EMOCA_PT_capture"
    bl_label = "Capture"
    bl_order = 0

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        props = context.scene.emoca
        job = ops_capture.active_job()

        col = layout.column()
        col.enabled = job is None
        col.prop(props, "video_path")
        col.prop(props, "capture_path", text="Output")
        out = ops_capture.output_path(props)
        if out and not props.capture_path:
            sub = col.row()
            sub.alignment = 'RIGHT'
            sub.label(text=os.path.basename(out), icon='FILE')
        col.separator()
        col.prop(props, "backend")
        backend = worker.find_backend(props.backend)
        if backend is not None:
            sub = col.row()
            sub.alignment = 'RIGHT'
            sub.label(text=f"Licence: {backend.licence}")
        sub = col.column()
        sub.active = props.backend != "mediapipe"  # MediaPipe runs on the CPU
        sub.prop(props, "device")
        if job is None:   # what the worker's torch sees (Check Device; preferences too)
            properties.draw_device_check(sub, properties.get_prefs(context))
        col.prop(props, "face_index")
        col.prop(props, "filter_strength")
        _model_status(col, context, props.backend)

        layout.separator()
        if job is not None:
            p = job.progress
            layout.progress(factor=p.factor, type='BAR', text=p.text())
            if p.message:
                layout.label(text=p.message, icon='INFO')
            row = layout.row()
            row.scale_y = 1.3
            row.operator("emoca.cancel_capture", icon='CANCEL')
            layout.label(text="Esc also cancels")
        else:
            _button(layout, "emoca.capture", ops_capture.capture_problem(context), icon='REC')
            # several videos in one job: the take list (Retarget > Takes)
            layout.operator("emoca.take_add_videos", text="Several Videos as Takes...",
                            icon='ADD')
        if props.status and job is None:
            layout.label(text=props.status,
                         icon='ERROR' if props.last_error else 'CHECKMARK')
        if props.last_error and job is None:
            box = layout.box()
            box.alert = True
            box.label(text=props.last_error, icon='ERROR')
            if props.last_log:
                box.label(text=f"Log: {os.path.basename(props.last_log)}")
        if job is None:
            python, source = properties.worker_python(context)
            if not os.path.isfile(python):
                pass  # the button's reason says so
            elif source == "this Python" and props.backend == "mediapipe":
                layout.label(text="Worker: Blender's Python (Install Runtime in preferences)",
                             icon='PREFERENCES')
            elif source == "this Python":
                layout.label(text="Worker: Blender's Python; this backend needs torch: "
                                  "Install Runtime with Include torch", icon='PREFERENCES')


class EMOCA_PT_rig(_EmocaPanel, bpy.types.Panel):
    bl_idname = "EMOCA_PT_rig"
    bl_label = "Rig"
    bl_order = 1

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        props = context.scene.emoca

        path = properties.abspath(props.capture_path)
        if path:
            if os.path.isfile(path):
                meta = ops_capture.capture_summary(path)
                text = ops_capture.summary_text(meta) if meta else "no sidecar (incomplete?)"
                layout.label(text=f"{os.path.basename(path)}: {text}", icon='FILE_MOVIE')
            else:
                layout.label(text=f"Capture file not found: {os.path.basename(path)}",
                             icon='ERROR')
        else:
            layout.label(text="No capture yet", icon='INFO')
        col = layout.column()
        col.prop(props, "capture_path", text="Capture")
        col.prop(props, "frame_start")
        col.prop(props, "rig_channels")
        _button(layout, "emoca.build_rig", ops_capture.capture_file_problem(context),
                icon='OUTLINER_OB_ARMATURE')
        if props.actor_mesh is not None:
            mesh = props.actor_mesh
            keys = getattr(mesh.data, "shape_keys", None)
            n = max(0, len(keys.key_blocks) - 1) if keys is not None else 0
            arm = props.actor_armature
            text = f"Actor: {mesh.name}, {n} shape keys"
            if arm is not None:
                text += f", {len(arm.data.bones)} bones"
            layout.label(text=text, icon='MESH_DATA')
            if displacement_material.displacement_node(mesh)[1] is not None:
                row = layout.row()
                row.operator("emoca.detail_mesh", icon='MOD_DISPLACE')
                if context.active_object != mesh:
                    layout.label(text=f"Select {mesh.name} to build its detail mesh",
                                 icon='INFO')
        _draw_reference(layout, context)
        layout.separator()
        layout.operator("emoca.add_sample_character", icon='USER')


def _draw_reference(layout, context) -> None:
    """The reference video: its toggles when the scene has one, else the button that adds
    it; and Frame All."""
    props = context.scene.emoca
    box = layout.box()
    plane = reference_video.find(context.scene)
    if plane is None:
        box.label(text="Reference video: none", icon='FILE_MOVIE')
        _button(box, "emoca.add_reference_video", ops_capture.capture_file_problem(context),
                icon='FILE_MOVIE')
    else:
        st = reference_video.settings(plane)
        video = st.get("video", "")
        missing = not os.path.isfile(video)
        row = box.row()
        row.alert = missing
        row.label(text=f"Reference: {os.path.basename(video)}" +
                  (" (not found)" if missing else ""), icon='FILE_MOVIE')
        col = box.column()
        col.prop(props, "show_reference")
        sub = col.column()
        sub.active = props.show_reference
        sub.prop(props, "reference_opacity")
        sub.row().prop(props, "reference_placement", expand=True)
        row = col.row()
        if reference_video.sound_strip(context.scene) is None:
            row.label(text="No sound (the video has no audio track)", icon='MUTE_IPO_ON')
        else:
            row.prop(props, "reference_sound", icon='SPEAKER')
        box.operator("emoca.add_reference_video", text="Reload Reference Video",
                     icon='FILE_REFRESH')
    row = box.row()
    row.operator("emoca.frame_all", icon='VIEW_CAMERA')


# The Retarget and Export panels are in panels/retarget.py.


class EMOCA_MT_face_capture(bpy.types.Menu):
    """Every EMOCA operator in one menu (Object > EMOCA Face Capture), which also makes them
    findable with F3 menu search"""

    bl_idname = "EMOCA_MT_face_capture"
    bl_label = "EMOCA Face Capture"

    def draw(self, context):
        layout = self.layout
        layout.operator("emoca.capture", icon='REC')
        layout.operator("emoca.cancel_capture", icon='CANCEL')
        layout.separator()
        layout.operator("emoca.build_rig", icon='OUTLINER_OB_ARMATURE')
        layout.operator("emoca.detail_mesh", icon='MOD_DISPLACE')
        layout.operator("emoca.add_sample_character", icon='USER')
        layout.operator("emoca.add_reference_video", icon='FILE_MOVIE')
        layout.operator("emoca.frame_all", icon='VIEW_CAMERA')
        layout.operator("emoca.retarget", icon='ACTION')
        layout.operator("emoca.take_add_videos", icon='ADD')       # takes (Retarget > Takes)
        layout.operator("emoca.capture_takes", icon='REC')
        layout.operator("emoca.retarget_takes", icon='ACTION')
        layout.separator()
        layout.operator("emoca.export_fbx", icon='EXPORT')
        layout.operator("emoca.export_gltf", icon='EXPORT')
        layout.operator("emoca.save_capture_blend", icon='FILE_BLEND')
        layout.separator()
        layout.operator("emoca.install_runtime", icon='PACKAGE')
        layout.operator("emoca.check_device", icon='MEMORY')


def menu_object(self, context):
    self.layout.separator()
    self.layout.menu(EMOCA_MT_face_capture.bl_idname, icon='MONKEY')


def menu_export(self, context):
    self.layout.operator("emoca.export_fbx", text="EMOCA Face Animation (.fbx)")
    self.layout.operator("emoca.export_gltf", text="EMOCA Face Animation (.glb/.gltf)")


CLASSES = (EMOCA_PT_capture, EMOCA_PT_rig, EMOCA_MT_face_capture)

# (menu class name, draw function) appended on register, removed on unregister.
MENU_HOOKS = (("VIEW3D_MT_object", menu_object), ("TOPBAR_MT_file_export", menu_export))
