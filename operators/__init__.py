"""Blender-side code: operator classes (``ops_*.py``, thin: they gather options and call the
core or a scene builder), settings (:mod:`.properties`, :mod:`.retarget_props`), the worker
process and runtime (:mod:`.worker`, :mod:`.runtime`), the core as seen from here
(:mod:`._core`), and in :mod:`.scene` the scene builders they call (rig, bake, FBX/glTF I/O,
materials, reference video, takes, the command line's scenes). Scene builders never import
operator modules.

Importing this package imports nothing (not even bpy), so the bpy-free :mod:`.worker` can be
tested alone; :func:`register` imports the operator modules. The scene builders, and through
them numpy and the core, are imported only when an operator runs.
"""
import importlib

# Registration order: settings first (operators and panels read scene.emoca). One module a
# line: add new ones at the end of their group.
MODULES = (
    "properties",
    "retarget_props",
    "ops_capture",
    "ops_rig",
    "ops_reference",
    "ops_displacement",
    "ops_runtime",
    "ops_retarget",
    "ops_export",
    "ops_livelink",
    "ops_emotion",
    "ops_emotion_jobs",
    "ops_takes",
)

_registered: list = []


def _modules():
    return [importlib.import_module(f"{__name__}.{m}") for m in MODULES]


def classes() -> list:
    """Every operator class, in registration order (properties excluded)."""
    out = []
    for mod in _modules()[1:]:
        out.extend(mod.CLASSES)
    return out


def register():
    import bpy
    if _registered:
        unregister()
    mods = _modules()
    mods[0].register()
    _registered.append(mods[0].unregister)
    for cls in classes():
        bpy.utils.register_class(cls)
        _registered.append(lambda cls=cls: cls.is_registered and bpy.utils.unregister_class(cls))
    for mod in mods[1:]:   # scene pointers to a module's PropertyGroups (after its classes)
        if hasattr(mod, "register_props"):
            mod.register_props()
            _registered.append(mod.unregister_props)


def unregister():
    import sys
    # A running capture must not outlive the add-on (nor keep writing a file).
    ops_capture = sys.modules.get(f"{__name__}.ops_capture")
    if ops_capture is not None:
        ops_capture.cancel_active_job()
    while _registered:
        undo = _registered.pop()
        try:
            undo()
        except (RuntimeError, ValueError) as e:  # already gone: keep unregistering the rest
            print(f"EMOCA: unregister: {e}")
