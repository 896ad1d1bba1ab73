"""The add-on's settings: the Scene PropertyGroup ``scene.emoca`` and the AddonPreferences.

Only bpy and the bpy-free :mod:`.worker` are imported here: registering must stay cheap.
"""

import os

import bpy
from bpy.props import (BoolProperty, EnumProperty, FloatProperty, IntProperty,
                       PointerProperty, StringProperty)

from . import worker

#: The add-on's module name as Blender knows it ("bl_ext.user_default.emoca_blender" for the
#: extension, "emoca_blender" as a legacy add-on): the key of its preferences.
ADDON_ID = (__package__ or "").rpartition(".")[0] or "emoca_blender"


# --------------------------------------------------------------------------------------
# Preferences


class EMOCA_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    worker_python: StringProperty(
        name="Worker Python",
        description="Python interpreter that runs the capture worker (needs numpy, opencv, "
                    "mediapipe; torch for the FLAME/EMOCA backends). Empty: the add-on's own "
                    ".venv if there is one, else Blender's Python",
        subtype='FILE_PATH', default="")
    cache_folder: StringProperty(
        name="Cache Folder",
        description="Where finished captures are cached, keyed by video content, backend and "
                    "settings, so running the same capture again is instant. Empty: "
                    "~/.cache/emoca_blender",
        subtype='DIR_PATH', default="")
    flame_folder: StringProperty(
        name="FLAME Folder",
        description="(Not used yet: for the flame-fit and emoca backends, coming later.) "
                    "Folder holding the FLAME model you downloaded (generic_model.pkl)",
        subtype='DIR_PATH', default="")
    emoca_checkpoint: StringProperty(
        name="EMOCA Checkpoint",
        description="(Not used yet: for the emoca backend, coming later.) EMOCA v2 .ckpt file "
                    "(non-commercial research licence)",
        subtype='FILE_PATH', default="")

    def draw(self, context):
        layout = self.layout
        col = layout.column()
        col.prop(self, "worker_python")
        path, source = worker.resolve_worker_python(bpy.path.abspath(self.worker_python))
        row = col.row()
        row.alignment = 'RIGHT'
        icon = 'CHECKMARK' if os.path.isfile(path) else 'ERROR'
        row.label(text=f"Using {path} ({source})", icon=icon)
        col.prop(self, "cache_folder")
        box = layout.box()
        box.label(text="Later backends (placeholders, not used yet)", icon='INFO')
        box.prop(self, "flame_folder")
        box.prop(self, "emoca_checkpoint")


class _DefaultPrefs:
    """Preference values when the add-on runs without its preferences registered (scripts
    that call register() directly)."""

    worker_python = ""
    cache_folder = ""
    flame_folder = ""
    emoca_checkpoint = ""


def get_prefs(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    prefs = getattr(addon, "preferences", None) if addon is not None else None
    return prefs if prefs is not None else _DefaultPrefs()


def abspath(path: str) -> str:
    """A path property's value as an absolute, user-expanded path ('' stays '')."""
    if not path:
        return ""
    return os.path.normpath(os.path.expanduser(bpy.path.abspath(path)))


def worker_python(context=None) -> tuple[str, str]:
    """``(path, source)`` of the Python that runs the worker (see worker.resolve_worker_python)."""
    prefs = get_prefs(context)
    return worker.resolve_worker_python(bpy.path.abspath(prefs.worker_python))


# --------------------------------------------------------------------------------------
# Scene settings


_BACKEND_ITEMS = [(b.id, b.label, f"{b.description}. Licence: {b.licence}")
                  for b in worker.BACKENDS]


def _poll_mesh(self, obj):
    return obj.type == 'MESH'


def _poll_armature(self, obj):
    return obj.type == 'ARMATURE'


class EMOCA_SceneProperties(bpy.types.PropertyGroup):
    # -- capture input/output ------------------------------------------------------------
    video_path: StringProperty(
        name="Video", description="Video of the actor's face to capture",
        subtype='FILE_PATH', default="")
    capture_path: StringProperty(
        name="Capture",
        description="Capture file (.capture.npz): written by Capture (empty: beside the "
                    "video), read by Build Rig, Retarget and Export",
        subtype='FILE_PATH', default="")
    backend: EnumProperty(
        name="Backend", description="How faces are reconstructed from the video",
        items=_BACKEND_ITEMS, default=worker.BACKENDS[0].id)
    device: EnumProperty(
        name="Device", description="Where the network backends run (MediaPipe runs on the CPU)",
        items=[('auto', "Auto", "CUDA when available, else the CPU"),
               ('cpu', "CPU", "Always the CPU"),
               ('cuda', "CUDA", "An NVIDIA GPU")],
        default='auto')
    face_index: IntProperty(
        name="Face", description="Which face to track when several appear: 0 = the largest "
        "at the start, 1 = the next largest...", default=0, min=0, soft_max=8)
    filter_strength: FloatProperty(
        name="Smoothing", description="Temporal filtering of the curves: 0 = off (raw, "
        "jittery), 1 = strongest (smooth, softer fast motion)",
        default=0.5, min=0.0, max=1.0, subtype='FACTOR')
    frame_start: IntProperty(
        name="Start Frame", description="Scene frame where the capture's first frame lands",
        default=1)
    # -- rig ------------------------------------------------------------------------------
    rig_channels: EnumProperty(
        name="Channels", description="Which capture curves drive the actor rig's shape keys",
        items=[('AUTO', "Auto", "The capture's own expression coefficients when they match "
                "the head model, else ARKit weights"),
               ('expression', "Expression", "The head model's expression coefficients"),
               ('arkit', "ARKit", "The 52 ARKit weights")],
        default='AUTO')
    actor_mesh: PointerProperty(
        name="Actor Mesh", description="The actor rig's mesh built from the capture",
        type=bpy.types.Object, poll=_poll_mesh)
    actor_armature: PointerProperty(
        name="Actor Armature", description="The actor rig's armature",
        type=bpy.types.Object, poll=_poll_armature)
    # -- retarget -------------------------------------------------------------------------
    use_selection: BoolProperty(
        name="Selected Objects", description="Retarget onto the selected objects instead of "
        "the target fields", default=False)
    target_mesh: PointerProperty(
        name="Face Mesh", description="Character mesh whose shape keys receive the ARKit "
        "curves (matched by name)", type=bpy.types.Object, poll=_poll_mesh)
    target_armature: PointerProperty(
        name="Armature", description="Character armature whose head, neck, jaw and eye bones "
        "receive the rotations", type=bpy.types.Object, poll=_poll_armature)
    # -- status (written by the operators, shown by the panels) ---------------------------
    is_capturing: BoolProperty(name="Capturing", default=False, options={'SKIP_SAVE'})
    progress: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0,
                            subtype='FACTOR', options={'SKIP_SAVE'})
    progress_text: StringProperty(name="Progress Text", default="", options={'SKIP_SAVE'})
    fps: FloatProperty(name="Frames per Second", default=0.0, options={'SKIP_SAVE'})
    eta: FloatProperty(name="Seconds Left", default=-1.0, options={'SKIP_SAVE'})
    status: StringProperty(name="Status", default="")
    last_error: StringProperty(name="Last Error", default="")
    last_log: StringProperty(name="Last Log", subtype='FILE_PATH', default="")


CLASSES = (EMOCA_AddonPreferences, EMOCA_SceneProperties)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.emoca = PointerProperty(type=EMOCA_SceneProperties)


def unregister():
    if hasattr(bpy.types.Scene, "emoca"):
        del bpy.types.Scene.emoca
    for cls in reversed(CLASSES):
        if cls.is_registered:
            bpy.utils.unregister_class(cls)
