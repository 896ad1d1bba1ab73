"""Retargeting and interchange, the bpy-free part: which character shape key each capture
channel drives (:mod:`.mapping`), geometric retargeting for any shape-key names
(:mod:`.geometric`), gaze for the character's eyes (:mod:`.gaze`), key reduction of the baked
curves (:mod:`.keyreduce`: it runs when the Blender side bakes and exports retargeted
animation, so it lives beside its users) and Live Link Face CSV takes (:mod:`.livelink`).
The ARKit channel names themselves are the top-level :mod:`..arkit` (the Capture file's
vocabulary, used by every subsystem).

May import: the top-level leaves, :mod:`..models` and the capture's stages
(:mod:`..capture.filters`). Never :mod:`..cli` (checked by ``tests/test_layers.py``).
"""
