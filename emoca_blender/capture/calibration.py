"""Calibration to the actor: the actor's neutral, and per-channel offset and gain.

A blendshape model's scores are biased per person: a narrow-eyed actor reads as half
squinting at rest, a downturned mouth as frowning. We find the actor's neutral, either a
frame the user marks or estimated as the calmest stretch of the clip, and map each ARKit
channel so that the neutral reads 0 and full activation still reads 1::

    calibrated = clip((score - offset) * gain, 0, 1),   gain = 1 / (1 - offset)

(a left/right pair's gain is that of its shared offset, see :func:`one_sided_rest`).

The offset is capped per channel (:data:`MAX_OFFSET`): a clip that holds one expression
throughout (surprised brows, a held smile) has no neutral to estimate, and an uncapped
offset would remove the very expression we want. The cap is 0.1 on the expression channels:
one clip cannot tell an actor's resting bias from an expression held all clip long, and a
held expression lost is worse than a small resting bias kept; where the actor's resting face
matters, calibrate to a neutral take of the same actor (``capture --neutral-from``) or a
frame (``--neutral-frame``). The lids' scores keep a 0.6 cap (their per-person bias is
large), though the default capture takes the lids from the landmarks. Gaze channels
(eyeLook*) are absolute directions and are not offset. The cap applies to what both sides of
a left/right pair hold; what one side reads over the other at rest is removed whole
(:func:`one_sided_rest`), with the pair sharing one gain. The same neutral frames give the
actor's neutral landmarks for the landmark-space solve.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..arkit import ARKIT_NAMES, INDEX

#: largest neutral offset believed, per channel (above it, it is expression, not identity)
MAX_OFFSET = np.full(len(ARKIT_NAMES), 0.1)
for _n in ("eyeBlinkLeft", "eyeBlinkRight", "eyeSquintLeft", "eyeSquintRight"):
    MAX_OFFSET[INDEX[_n]] = 0.6      # eye channels carry most of the per-person bias
for _n in ARKIT_NAMES:
    if _n.startswith("eyeLook"):
        MAX_OFFSET[INDEX[_n]] = 0.0  # gaze is absolute
#: channels that measure expression intensity for finding the calm frames (no gaze, no blink)
ENERGY_CHANNELS = np.array([i for i, n in enumerate(ARKIT_NAMES)
                            if not n.startswith(("eyeLook", "eyeBlink"))])
#: fraction of frames taken as the estimated rest segment
REST_FRACTION = 0.1
MIN_REST_FRAMES = 3


@dataclass
class Calibration:
    """Per-channel calibration (K = 52 ARKit channels)."""

    offset: np.ndarray          # (K,)
    gain: np.ndarray            # (K,)
    neutral_frames: np.ndarray  # indices (into the rows given) used as the neutral
    source: str                 # "user frame N" or "auto (calmest M frames)"

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """(N,K) raw scores -> calibrated scores in [0, 1]."""
        return np.clip((np.asarray(scores, np.float64) - self.offset) * self.gain, 0.0, 1.0)

    def to_meta(self) -> dict:
        nz = np.flatnonzero(self.offset > 0.02)
        return {"source": self.source,
                "neutral_frames": [int(i) for i in self.neutral_frames[:50]],
                "offset": {ARKIT_NAMES[i]: round(float(self.offset[i]), 4) for i in nz}}


def rest_frames(scores: np.ndarray, fraction: float = REST_FRACTION,
                min_frames: int = MIN_REST_FRAMES, frontal: np.ndarray | None = None
                ) -> np.ndarray:
    """Indices of the calmest frames: lowest summed expression scores (gaze and blinks
    excluded), the lowest ``fraction`` of the clip and at least ``min_frames``. With
    ``frontal`` (N,) bool, they are taken among the frontal frames when there are at least
    ``min_frames`` of them: a turned face's scores and landmarks make a poor neutral (its
    depth is poorly observed), and everything else is measured against the neutral."""
    s = np.asarray(scores, np.float64)
    n = s.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    energy = s[:, ENERGY_CHANNELS].sum(1)
    pool = np.arange(n)
    if frontal is not None:
        fr = np.flatnonzero(np.asarray(frontal, bool))
        if len(fr) >= min(min_frames, n):
            pool = fr
    k = int(min(len(pool), max(min_frames, round(fraction * len(pool)))))
    return np.sort(pool[np.argsort(energy[pool], kind="stable")[:k]])


def neutral_window(n: int, frame: int, half: int = 1) -> np.ndarray:
    """A user-marked neutral frame and its immediate neighbours (tames per-frame noise)."""
    return np.arange(max(0, frame - half), min(n, frame + half + 1))


#: (left, right) column pairs whose resting difference is the actor's, not expression
PAIRS = np.array([(INDEX[n], INDEX[n[:-4] + "Right"]) for n in ARKIT_NAMES
                  if n.endswith("Left") and not n.startswith("eyeLook")], np.int64)
#: largest offset of one side (keeps the gain 1 / (1 - offset) bounded)
MAX_ONE_SIDED = 0.8


def one_sided_rest(rest: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, gains) with each left/right pair's resting difference removed whole.

    The cap of :data:`MAX_OFFSET` is meant for what both sides hold (raised brows all clip
    long). What one side reads over the other at rest is the actor's asymmetry, or the
    scores' bias for a face seen at an angle, and is removed: the side that reads more at
    rest gets the capped shared part plus its excess as offset, and both sides keep the
    gain of the shared part, so equal motion on both sides reads equal. On real clips the
    excess is up to 0.5 (browDownRight 0.52 against 0.02 on a head turned 35 degrees, which
    otherwise frowned with one brow through the whole clip; browOuterUp 0.55 against 0.33
    on a symmetric raise, which read 0.29 apart). A one-sided expression held through the
    whole clip reads as asymmetry and is removed too; a neutral take or frame of the same
    actor keeps it.

    Args:
        rest: (K,) the neutral frames' median scores.
        offset: (K,) the capped offsets.
    """
    rest = np.clip(np.asarray(rest, np.float64), 0.0, 1.0)
    out = np.array(offset, np.float64, copy=True)
    L, R = PAIRS[:, 0], PAIRS[:, 1]
    shared = np.minimum(rest[L], rest[R])
    gain = 1.0 / (1.0 - out)
    for side in (L, R):
        base = np.minimum(shared, out[side])
        out[side] = np.minimum(base + rest[side] - shared, MAX_ONE_SIDED)
        gain[side] = 1.0 / (1.0 - base)
    return out, gain


def calibrate(scores: np.ndarray, neutral_frame: int = -1,
              frontal: np.ndarray | None = None) -> Calibration:
    """Calibration from raw (N,52) scores of the frames with a face.

    Args:
        scores: (N,52) raw ARKit scores (rows = tracked frames only).
        neutral_frame: row index of a user-marked neutral frame, or -1 for automatic.
        frontal: optional (N,) bool: frames facing the camera, preferred for the automatic
            neutral (:func:`rest_frames`).
    """
    s = np.asarray(scores, np.float64)
    n = s.shape[0]
    if neutral_frame is not None and neutral_frame >= 0:
        if neutral_frame >= n:
            raise ValueError(f"neutral frame {neutral_frame} is outside the {n} tracked frames")
        frames = neutral_window(n, int(neutral_frame))
        source = f"user frame {int(neutral_frame)}"
        cap = np.where(MAX_OFFSET > 0, 0.95, 0.0)  # the user's word is trusted (gaze excepted)
    else:
        frames = rest_frames(s, frontal=frontal)
        source = f"auto (calmest {len(frames)} frames)"
        cap = MAX_OFFSET
    rest = np.median(s[frames], axis=0) if len(frames) else np.zeros(s.shape[1])
    offset = np.clip(rest, 0.0, cap)
    if neutral_frame is not None and neutral_frame >= 0:
        gain = 1.0 / (1.0 - offset)
    else:
        offset, gain = one_sided_rest(rest, offset)
    return Calibration(offset, gain, frames, source)


def identity(k: int = len(ARKIT_NAMES)) -> Calibration:
    return Calibration(np.zeros(k), np.ones(k), np.zeros(0, np.int64), "none")
