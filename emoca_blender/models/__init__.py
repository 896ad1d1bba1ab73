"""Head models and networks: the head model interface and the bundled ICT head
(:mod:`.head_model`), FLAME (:mod:`.flame`), MediaPipe's face-mesh topology and landmark
groups (:mod:`.mediapipe_topology`), the EMOCA / DECA networks in plain torch (:mod:`.resnet`,
:mod:`.emoca_net`), their checkpoints (:mod:`.emoca_checkpoint`) and input crop
(:mod:`.emoca_crop`), and the displacement maps with the dense detail mesh
(:mod:`.displacement`, :mod:`.detail_mesh`).

May import: only the top-level leaves (``errors``, ``arkit``, ``capture_file``,
``rotations``, ...). Every other subsystem may import it (checked by ``tests/test_layers.py``).
"""
