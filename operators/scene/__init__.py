"""Scene builders: the Blender-side library the operators and the command line's scene jobs
call. Rigs (:mod:`.rig_build`), retarget bakes (:mod:`.retarget_bake`), animation data
(:mod:`.blender_anim`), FBX and glTF I/O (:mod:`.fbx_io`, :mod:`.gltf_io`), materials
(:mod:`.displacement_material`), landmark correspondence (:mod:`.correspondence`), emotion
curves (:mod:`.emotion_curves`), the reference video, the takes, and the command line's
scenes (:mod:`.cli_scene`, :mod:`.cli_takes`).

They need bpy but define no operators: they may import each other, ``operators._core`` (the
core) and the operators' plain helpers (``properties``, ``runtime``, ``worker``), never an
operator module (``ops_*``; checked by ``tests/test_layers.py``).
"""
