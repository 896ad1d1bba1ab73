"""Emotion (the "EMO" in EMOCA): the emotion network run on the video (:mod:`.network`), the
metrics and recognition loss (:mod:`.metrics`), the emotion MLP on 3DMM parameters
(:mod:`.mlp`), retrieval in emotion-feature space (:mod:`.retrieval`), the prior over real
expressions (:mod:`.expression_prior`) and the emotion-consistent refinement of a capture
(:mod:`.refine`).

May import: the top-level leaves, :mod:`..models`, and the capture's stages
(:mod:`..capture.filters`). Never :mod:`..capture.pipeline` (which runs the emotion network),
:mod:`..retarget` or :mod:`..cli` (checked by ``tests/test_layers.py``).
"""
