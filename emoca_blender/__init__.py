"""emoca_blender core: video -> face track -> Capture -> (Blender side) rig, retarget, export.

Nothing here imports bpy; heavy packages (torch, mediapipe, cv2) are imported lazily by the
modules that need them, so ``import emoca_blender`` is cheap.
"""
__version__ = "0.1.0"
