"""emoca_blender core: video -> face track -> Capture -> (Blender side) rig, retarget, export.

Nothing here imports bpy; heavy packages (torch, mediapipe, cv2) are imported lazily by the
modules that need them, so ``import emoca_blender`` is cheap.

The house, lowest first (a module imports only from its own layer or lower ones, never in a
circle; ``tests/test_layers.py`` checks it):

1. top-level leaves, small modules every subsystem shares: :mod:`.errors`, :mod:`.input_files`,
   :mod:`.device_info`, :mod:`.rotations` (shared rotation math), :mod:`.arkit` (the 52 ARKit
   channel names) and :mod:`.capture_file`, the seam between capture and Blender;
2. :mod:`.models`: head models, FLAME, the EMOCA networks and checkpoints, displacement;
3. :mod:`.capture`, its stages: video, solves, calibration, filters, progress;
4. :mod:`.backends`: one module per capture backend;
5. :mod:`.emotion`: emotion network, metrics, MLP, retrieval, prior, refinement;
6. the capture's jobs, :mod:`.capture.pipeline` and :mod:`.capture.takes` (they join a backend,
   the stages and the emotion network);
7. :mod:`.retarget`: retarget mapping, geometric retarget, gaze, key reduction, Live Link Face;
8. :mod:`.cli`: ``python -m emoca_blender ...``; nothing imports it.
"""
__version__ = "0.1.0"
