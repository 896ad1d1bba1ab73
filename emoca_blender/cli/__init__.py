"""The command line, ``python -m emoca_blender ...`` (:mod:`emoca_blender.__main__` calls
:func:`.main.main`): :mod:`.main` (capture, rig, retarget, export, run, detail, info and the
dispatch), one module per further group of commands: :mod:`.emotion`, :mod:`.livelink`,
:mod:`.landmarks`, :mod:`.takes`.

May import every subsystem of the core, and the Blender side (``operators.scene``) only
through ``main._blender_side`` inside a Blender scene job. Nothing imports it (checked by
``tests/test_layers.py``).
"""
