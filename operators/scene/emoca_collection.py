"""The scene's ``EMOCA`` collection, where the rigs and the reference video go.

Blender side (needs bpy), no operators: Build Rig and Add Sample Character (``ops_rig``) and
the reference video (``ops_reference``) put their objects in it.
"""

import bpy


COLLECTION = "EMOCA"


def ensure_collection(scene, name: str = COLLECTION):
    """The scene's ``EMOCA`` collection, created and linked when missing."""
    coll = bpy.data.collections.get(name)
    if coll is None:
        coll = bpy.data.collections.new(name)
    if coll.name not in scene.collection.children and coll != scene.collection:
        try:
            scene.collection.children.link(coll)
        except RuntimeError:
            pass  # already linked somewhere below the scene collection
    return coll


__all__ = ["COLLECTION", "ensure_collection"]
