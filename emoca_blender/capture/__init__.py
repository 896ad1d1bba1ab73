"""Capture: from a video to a Capture file.

The stages: :mod:`.video` (streaming decoding), :mod:`.solve` (per-frame blendshape and pose
solves shared by the backends), :mod:`.landmark_solve` (the landmark-space solve),
:mod:`.calibration` (the actor's neutral, per-channel offset and gain), :mod:`.filters`
(temporal filtering and gaps), :mod:`.progress` (progress lines). The jobs:
:mod:`.pipeline` (video -> backend -> gaps -> filter -> emotion -> Capture file, cached) and
:mod:`.takes` (several videos, one job).

May import: the top-level leaves (``errors``, ``arkit``, ``capture_file``, ``rotations``, ...)
and :mod:`..models`. The stages never import :mod:`..backends`, :mod:`..emotion`,
:mod:`..retarget` or :mod:`..cli`; the jobs (``pipeline``, ``takes``) are the one place below
the CLI that joins subsystems, and may also import :mod:`..backends` and :mod:`..emotion`
(the order is checked by ``tests/test_layers.py``).
"""
