"""The add-on's settings: the Scene PropertyGroup ``scene.emoca`` and the AddonPreferences.

Only bpy and the bpy-free :mod:`.worker` are imported here: registering must stay cheap.
"""

import os
import time

import bpy
from bpy.props import (BoolProperty, EnumProperty, FloatProperty, IntProperty,
                       PointerProperty, StringProperty)

from . import runtime, worker

#: The add-on's module name as Blender knows it ("bl_ext.user_default.emoca_blender" for the
#: extension, "emoca_blender" as a legacy add-on): the key of its preferences.
ADDON_ID = (__package__ or "").rpartition(".")[0] or "emoca_blender"


# --------------------------------------------------------------------------------------
# Folders


def user_folder(sub: str = "", create: bool = False) -> str:
    """The add-on's writable folder: ``bpy.utils.extension_path_user`` when running as an
    extension (``.../extensions/.user/user_default/emoca_blender/SUB``), else (a legacy
    add-on, scripts) ``~/.cache/emoca_blender/SUB``."""
    path = ""
    if ADDON_ID.startswith("bl_ext."):
        try:
            path = bpy.utils.extension_path_user(ADDON_ID, path=sub, create=create)
        except (ValueError, RuntimeError, OSError):
            path = ""
    if not path:
        path = os.path.join(os.path.expanduser("~"), ".cache", "emoca_blender", sub)
        if create:
            os.makedirs(path, exist_ok=True)
    return os.path.normpath(path)


def runtime_venv() -> str:
    """Where Install Runtime puts the worker's virtual environment."""
    return user_folder("runtime")


def cache_folder(context=None) -> str:
    """The capture cache: the preference, else ``<user folder>/cache``."""
    return abspath(get_prefs(context).cache_folder) or user_folder("cache")


# --------------------------------------------------------------------------------------
# Preferences

_STATUS_CACHE: dict = {}


def file_status(kind: str, path: str) -> "runtime.FileStatus":
    """The status line of a model-file preference (``flame``, ``emoca``, ``deca``), cached
    by path, mtime and size: cheap enough for draw(). Never imports torch: existence, size
    and magic bytes only (see runtime.py)."""
    path = abspath(path)
    try:
        st = os.stat(path) if path else None
        stamp = (st.st_mtime_ns, st.st_size) if st else None
    except OSError:
        stamp = None
    key = (kind, path)
    hit = _STATUS_CACHE.get(key)
    if hit is not None and hit[0] == stamp and hit[2] > time.monotonic():
        return hit[1]
    if kind == "flame":
        status = runtime.check_flame_folder(path)
    else:
        status = runtime.check_checkpoint(path, kind)
    # A folder's contents change without its stamp changing (much): look again after 2 s.
    _STATUS_CACHE[key] = (stamp, status, time.monotonic() + 2.0)
    return status


_DEVICE_ITEMS = [('auto', "Auto", "CUDA when available, else the Apple GPU (MPS), else the CPU"),
                 ('cpu', "CPU", "Always the CPU"),
                 ('cuda', "CUDA", "An NVIDIA GPU (the worker Python needs torch with CUDA)"),
                 ('mps', "Apple GPU (MPS)", "Apple silicon's GPU, where it gives the CPU's "
                  "results (checked at the start of each capture), else the CPU")]


def _status_row(layout, status, label: str = "") -> None:
    row = layout.row()
    row.alert = status.state in (runtime.MISSING, runtime.WRONG)
    row.label(text=(label + status.text) if label else status.text, icon=status.icon)


class EMOCA_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    worker_python: StringProperty(
        name="Worker Python",
        description="Python interpreter that runs the capture worker (needs numpy, opencv, "
                    "mediapipe; torch for the FLAME/EMOCA backends). Empty: the runtime made "
                    "by Install Runtime, else the add-on's own .venv if there is one, else "
                    "Blender's Python",
        subtype='FILE_PATH', default="")
    device: EnumProperty(
        name="Device", description="Where the network backends run by default (a scene can "
        "override it in the Capture panel). MediaPipe always runs on the CPU",
        items=_DEVICE_ITEMS, default='auto')
    cache_folder: StringProperty(
        name="Cache Folder",
        description="Where finished captures are cached, keyed by video content, backend and "
                    "settings, so running the same capture again is instant. Empty: the "
                    "extension's user folder",
        subtype='DIR_PATH', default="")
    flame_folder: StringProperty(
        name="FLAME Folder",
        description="Folder holding the FLAME model you downloaded from flame.is.tue.mpg.de "
                    "(generic_model.pkl for FLAME 2020, flame2023.pkl for FLAME 2023), for "
                    "the flame-fit and EMOCA backends",
        subtype='DIR_PATH', default="")
    emoca_checkpoint: StringProperty(
        name="EMOCA Checkpoint",
        description="EMOCA v2 checkpoint (.ckpt, or the folder it was unpacked into), for the "
                    "EMOCA backend (non-commercial research licence)",
        subtype='FILE_PATH', default="")
    deca_checkpoint: StringProperty(
        name="DECA Checkpoint",
        description="DECA model (deca_model.tar), for the detail (displacement) decoder when "
                    "the EMOCA checkpoint has none (non-commercial research licence)",
        subtype='FILE_PATH', default="")
    runtime_with_torch: BoolProperty(
        name="Include torch",
        description="Also install torch (about 1 GB; only the FLAME and EMOCA backends need it)",
        default=False)
    runtime_torch_target: EnumProperty(
        name="Run On", description="What the worker's torch runs the FLAME and EMOCA networks "
        "on: the build of torch Install Runtime installs (macOS: always the macOS build, "
        "the Apple GPU through MPS)",
        items=[('cpu', "CPU", "The CPU-only build of torch (about 200 MB)"),
               ('cuda', "NVIDIA GPU", "A CUDA build of torch from the PyTorch wheel index "
                "(about 3 GB with its CUDA libraries); needs an NVIDIA driver")],
        default='cpu')
    runtime_cuda: EnumProperty(
        name="CUDA", description="The CUDA version of the torch build (the NVIDIA driver "
        "must support it; Check Device says when it does not)",
        items=[(t, lbl, d) for t, lbl, d in runtime.CUDA_BUILDS],
        default=runtime.CUDA_BUILDS[0][0])
    runtime_torch_index: StringProperty(
        name="PyTorch Index",
        description="The PyTorch wheel index pip installs torch from (--index-url); the "
                    "build's folder (cpu, cu126...) is added unless the URL ends in one. "
                    "Change it for a mirror",
        default=runtime.TORCH_INDEX)
    runtime_wheel_folder: StringProperty(
        name="Wheel Folder",
        description="Install from the wheels in this folder only (pip --no-index "
                    "--find-links): no network. Empty: download from the Python Package Index "
                    "(needs Online Access)",
        subtype='DIR_PATH', default="")
    runtime_status: StringProperty(name="Runtime Status", default="", options={'SKIP_SAVE'})
    device_status: StringProperty(name="Device Status", default="", options={'SKIP_SAVE'})

    def draw(self, context):
        draw_preferences(self, self.layout, context)


def draw_preferences(prefs, layout, context) -> None:
    """The preferences UI (a function so tests can draw it with a recording layout)."""
    col = layout.column()
    col.label(text="Worker", icon='CONSOLE')
    col.prop(prefs, "worker_python")
    path, source = worker.resolve_worker_python(abspath(prefs.worker_python),
                                                runtime_venv=runtime_venv())
    row = col.row()
    ok = os.path.isfile(path)
    row.alert = not ok
    row.label(text=f"Using {path} ({source})" if ok else f"Not found: {path} ({source})",
              icon='CHECKMARK' if ok else 'ERROR')
    col.prop(prefs, "device")
    draw_device_check(col, prefs)
    col.prop(prefs, "cache_folder")
    row = col.row()
    row.label(text=f"Cache: {cache_folder(context)}", icon='FILE_FOLDER')

    box = layout.box()
    box.label(text="Install Runtime (a Python environment for the worker)", icon='PACKAGE')
    box.label(text=f"Into {runtime_venv()} (no admin rights needed)")
    box.prop(prefs, "runtime_with_torch")
    if prefs.runtime_with_torch:
        sub = box.column()
        if runtime.is_macos():
            sub.label(text="macOS: the Apple GPU (MPS) on Apple silicon, else the CPU",
                      icon='INFO')
        else:
            sub.row().prop(prefs, "runtime_torch_target", expand=True)
            if prefs.runtime_torch_target == 'cuda':
                sub.prop(prefs, "runtime_cuda")
            sub.prop(prefs, "runtime_torch_index")
        sub.label(text="torch: " + runtime.torch_choice_text(
            prefs.runtime_torch_target, prefs.runtime_cuda, prefs.runtime_torch_index))
    box.prop(prefs, "runtime_wheel_folder")
    if not prefs.runtime_wheel_folder and not bpy.app.online_access:
        box.label(text="Online Access is off (Preferences > System > Network): choose a "
                       "wheel folder, or allow it", icon='INTERNET_OFFLINE')
    row = box.row()
    row.operator("emoca.install_runtime", icon='IMPORT').dry_run = False
    row.operator("emoca.install_runtime", text="Show Commands", icon='TEXT').dry_run = True
    if prefs.runtime_status:
        for line in prefs.runtime_status.splitlines()[:12]:
            box.label(text=line)

    box = layout.box()
    box.label(text="Models for the FLAME and EMOCA backends (your downloads, never bundled)",
              icon='MESH_MONKEY')
    for prop, kind in (("flame_folder", "flame"), ("emoca_checkpoint", "emoca"),
                       ("deca_checkpoint", "deca")):
        box.prop(prefs, prop)
        _status_row(box, file_status(kind, getattr(prefs, prop)))


def draw_device_check(layout, prefs) -> None:
    """The Check Device button and what the worker saw the last time (preferences and the
    Capture panel)."""
    row = layout.row()
    row.operator("emoca.check_device", icon='MEMORY')
    for i, line in enumerate((prefs.device_status or "").splitlines()[:8]):
        row = layout.row()
        row.alert = line.startswith(("warning", "Check Device failed"))
        row.label(text=line, icon='BLANK1' if i else 'INFO')


class _DefaultPrefs:
    """Preference values when the add-on runs without its preferences registered (scripts
    that call register() directly)."""

    worker_python = ""
    device = "auto"
    cache_folder = ""
    flame_folder = ""
    emoca_checkpoint = ""
    deca_checkpoint = ""
    runtime_with_torch = False
    runtime_torch_target = "cpu"
    runtime_cuda = runtime.CUDA_BUILDS[0][0]
    runtime_torch_index = runtime.TORCH_INDEX
    runtime_wheel_folder = ""
    runtime_status = ""
    device_status = ""


def get_prefs(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    prefs = getattr(addon, "preferences", None) if addon is not None else None
    return prefs if prefs is not None else _DefaultPrefs()


def poll_ok(cls, problem: str | None) -> bool:
    """An operator's poll: True without a problem, else False with the problem as the
    greyed-out button's tooltip."""
    if problem:
        cls.poll_message_set(problem)
        return False
    return True


def abspath(path: str) -> str:
    """A path property's value as an absolute, user-expanded path ('' stays '')."""
    if not path:
        return ""
    return os.path.normpath(os.path.expanduser(bpy.path.abspath(path)))


def worker_python(context=None) -> tuple[str, str]:
    """``(path, source)`` of the Python that runs the worker (see worker.resolve_worker_python)."""
    prefs = get_prefs(context)
    return worker.resolve_worker_python(abspath(prefs.worker_python),
                                        runtime_venv=runtime_venv())


def timing(context=None) -> str:
    """The bakes' ``timing`` from the scene's Scene Rate: "scene" (keep the scene's rate,
    keys at the clip's real times) or "clip" (retime the scene to the clip)."""
    context = context or bpy.context
    props = getattr(context.scene, "emoca", None)
    return "clip" if getattr(props, "timing", "SCENE") == "CLIP" else "scene"


def device(context=None) -> str:
    """The device the capture asks for: the scene's choice, else the preference."""
    context = context or bpy.context
    props = getattr(context.scene, "emoca", None)
    d = getattr(props, "device", "PREFS") if props is not None else "PREFS"
    return get_prefs(context).device if d == "PREFS" else d


# --------------------------------------------------------------------------------------
# Scene settings


_BACKEND_ITEMS = [(b.id, b.label, f"{b.description}. Licence: {b.licence}")
                  for b in worker.BACKENDS]


def _poll_mesh(self, obj):
    return obj.type == 'MESH'


def _poll_armature(self, obj):
    return obj.type == 'ARMATURE'


def _reference_update(self, context):
    """The Rig panel's reference toggles, applied to the scene's reference plane and strip."""
    from .scene import reference_video
    reference_video.apply_settings(self.id_data, self.show_reference, self.reference_opacity,
                                   self.reference_placement, self.reference_sound)


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
        items=[('PREFS', "From Preferences", "The device chosen in the add-on preferences")]
        + _DEVICE_ITEMS,
        default='PREFS')
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
    timing: EnumProperty(
        name="Scene Rate", description="How the capture's frames are timed in the scene "
        "(Build Rig, Retarget and takes)",
        items=[('SCENE', "Keep Scene Rate", "The scene keeps its frame rate and every "
                "captured frame is keyed at its real time in it (a 29.97 fps clip in a 24 fps "
                "scene: frame i at Start + t_i x 24, between whole frames where the rates "
                "differ)"),
               ('CLIP', "Retime Scene to Clip", "Set the scene's frame rate to the clip's "
                "(e.g. 30000/1001 for 29.97 fps): one key per captured frame, on whole "
                "frames")],
        default='SCENE')
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
    # -- reference video (beside the actor rig; see reference_video.py) ------------------
    show_reference: BoolProperty(
        name="Show Reference", description="Show the actor's video beside the rig, playing "
        "frame-locked to the timeline", default=True, update=_reference_update)
    reference_opacity: FloatProperty(
        name="Opacity", description="Opacity of the reference video plane",
        default=1.0, min=0.0, max=1.0, subtype='FACTOR', update=_reference_update)
    reference_placement: EnumProperty(
        name="Placement", description="Where the reference video plane stands",
        items=[('SIDE', "Side by Side", "Left of the actor rig, its face at the rig's face "
                "height"),
               ('BEHIND', "Behind", "Behind the actor rig, the video's face behind the rig's "
                "face")],
        default='SIDE', update=_reference_update)
    reference_sound: BoolProperty(
        name="Sound", description="Play the video's sound (its strip in the sequencer; "
        "scrubbing plays it too)", default=True, update=_reference_update)
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
