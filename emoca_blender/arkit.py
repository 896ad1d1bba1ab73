"""The 52 ARKit blendshape channels: the one expression vocabulary every backend fills.

Order is Apple's (the order of Live Link Face CSV columns), names are camelCase as in
ARKit's ``ARFaceAnchor.BlendShapeLocation`` raw values. MediaPipe's FaceLandmarker emits
the same names (plus ``_neutral``, without ``tongueOut``) in a different order; use
:func:`from_mediapipe` to reorder its scores.
"""
from __future__ import annotations

import numpy as np

ARKIT_NAMES: tuple[str, ...] = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft",
    "eyeSquintLeft", "eyeWideLeft",
    "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight",
    "jawForward", "jawRight", "jawLeft", "jawOpen",
    "mouthClose", "mouthFunnel", "mouthPucker", "mouthRight", "mouthLeft",
    "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthUpperUpLeft", "mouthUpperUpRight",
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
    "noseSneerLeft", "noseSneerRight",
    "tongueOut",
)
assert len(ARKIT_NAMES) == 52 and len(set(ARKIT_NAMES)) == 52

INDEX = {name: i for i, name in enumerate(ARKIT_NAMES)}


def pascal(name: str) -> str:
    """``eyeBlinkLeft`` -> ``EyeBlinkLeft`` (Live Link Face and Unreal spelling)."""
    return name[:1].upper() + name[1:]


def mirror_name(name: str) -> str:
    """The name of the mirrored channel (``...Left`` <-> ``...Right``); itself when unsided."""
    if name.endswith("Left"):
        return name[: -len("Left")] + "Right"
    if name.endswith("Right"):
        return name[: -len("Right")] + "Left"
    # jawLeft/jawRight and mouthLeft/mouthRight are handled by the rule above as well.
    return name


MIRROR_INDEX = np.array([INDEX[mirror_name(n)] for n in ARKIT_NAMES], dtype=np.int64)


def from_mediapipe(category_names: list[str], scores: np.ndarray) -> np.ndarray:
    """Reorder MediaPipe blendshape scores into ARKit order.

    Args:
        category_names: MediaPipe's names, length C (includes ``_neutral``).
        scores: (..., C) scores.
    Returns:
        (..., 52) weights in ARKit order; channels MediaPipe lacks (``tongueOut``) are 0.
    """
    scores = np.asarray(scores, dtype=np.float32)
    out = np.zeros(scores.shape[:-1] + (52,), dtype=np.float32)
    for j, name in enumerate(category_names):
        i = INDEX.get(name)
        if i is not None:
            out[..., i] = scores[..., j]
    return out
