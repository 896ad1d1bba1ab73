# SPDX-License-Identifier: GPL-3.0-or-later
"""EMOCA Face Capture: turn a video of an actor into facial animation on characters.

The Blender extension (``blender_manifest.toml``). Layout (see DESIGN.md):
``emoca_blender/`` the bpy-free core (video, tracking, backends, Capture files, CLI),
``operators/`` the Blender operators and settings, ``panels/`` the sidebar UI.

Registering imports only bpy and this package's thin UI modules: no numpy-heavy code,
no torch, mediapipe or OpenCV (those run in the worker process, see operators/worker.py).
"""

# Used only when installed as a legacy add-on (a folder in scripts/addons); as an extension,
# Blender reads blender_manifest.toml and ignores this.
bl_info = {
    "name": "EMOCA Face Capture",
    "author": "EMOCA Blender contributors",
    "version": (0, 1, 0),
    "blender": (4, 2, 0),
    "location": "View3D > Sidebar > EMOCA",
    "description": "Turn a video of an actor into facial animation on characters",
    "category": "Animation",
}

_registered = False


def register():
    global _registered
    if _registered:  # idempotent: a second register() first undoes the first
        unregister()
    from . import operators, panels
    operators.register()
    try:
        panels.register()
    except Exception:
        operators.unregister()
        raise
    _registered = True


def unregister():
    global _registered
    from . import operators, panels
    panels.unregister()
    operators.unregister()
    _registered = False
