"""EMOCA's input crop, from MediaPipe landmarks instead of FAN's 68.

EMOCA (and DECA) crop each frame from its 68 FAN landmarks (``bbox_type='kpt68'``):

    left, right, top, bottom = the landmarks' box
    old_size = (right - left + bottom - top) / 2 * 1.1
    center   = ((left + right) / 2, (top + bottom) / 2)
    size     = int(old_size * 1.25)                   # square side: 1.375 x the mean box side
    similarity transform: (center - size/2) -> (0, 0), size -> 223 (224 x 224 output)
    image = warp(rgb / 255, bilinear, black outside), no mean/std normalisation

We have MediaPipe's 478 landmarks, not FAN's. :data:`MP68` picks, for each of the 68 iBUG
points, the MediaPipe vertex at the same anatomical place (jaw line, brows, nose, eyes, lips),
and the box of those 68 points goes through the formula above unchanged. How it differs from
FAN: MediaPipe's jaw-line points are fixed surface points, whereas FAN's contour follows the
visible silhouette; under a strong head turn (yaw > ~30 degrees) the MediaPipe jaw line sits
on the face and the box is narrower (a tighter crop) than FAN's. Brow and chin points agree
to a few pixels at 224. See the README.

The warp is one ``cv2.warpAffine`` per frame (bilinear, border black, as skimage's
``warp(order=1)``), straight to float32 RGB/255 in CHW order.
"""
from __future__ import annotations

import numpy as np

RESOLUTION = 224
SCALE = 1.25          # DECA/EMOCA's scaling_factor
BOX_FACTOR = 1.1      # bbox2point's 1.1 for kpt68

# MediaPipe face-mesh vertex for each iBUG-68 point (0-16 jaw line from the subject's right
# ear to the left, 17-21 right brow, 22-26 left brow, 27-35 nose, 36-41 right eye,
# 42-47 left eye, 48-59 outer lips, 60-67 inner lips).
MP68 = np.array([
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
    70, 63, 105, 66, 107,
    336, 296, 334, 293, 300,
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    33, 160, 158, 133, 153, 144,
    362, 385, 387, 263, 373, 380,
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
    78, 82, 13, 312, 308, 317, 14, 87,
], dtype=np.int64)
assert MP68.shape == (68,)


def landmarks68(lmk478: np.ndarray) -> np.ndarray:
    """(...,478,2+) MediaPipe landmarks in pixels -> (...,68,2) iBUG-68 equivalents."""
    return np.asarray(lmk478)[..., MP68, :2]


def box_from_points(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(...,L,2) -> centre (...,2) and square side (...,) of EMOCA's crop (kpt68 rule)."""
    pts = np.asarray(pts, np.float64)
    lo, hi = pts.min(-2), pts.max(-2)
    old = ((hi[..., 0] - lo[..., 0]) + (hi[..., 1] - lo[..., 1])) / 2.0 * BOX_FACTOR
    centre = (lo + hi) / 2.0
    size = np.floor(old * SCALE)          # EMOCA: int(old_size * scale)
    return centre, size


def crop_matrix(centre, size, resolution: int = RESOLUTION) -> np.ndarray:
    """(2,3) similarity image -> crop: the square of side ``size`` around ``centre`` to
    [0, resolution-1]^2 (the three-point similarity EMOCA estimates, in closed form)."""
    cx, cy = float(centre[0]), float(centre[1])
    s = max(float(size), 1.0)
    k = (resolution - 1) / s
    x0, y0 = cx - s / 2.0, cy - s / 2.0
    return np.array([[k, 0.0, -k * x0], [0.0, k, -k * y0]])


def crop_to_image(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Crop pixels (...,2) -> image pixels with the inverse of ``M``."""
    k = M[0, 0]
    return (np.asarray(pts, np.float64) - M[:, 2]) / k


def warp(rgb: np.ndarray, M: np.ndarray, resolution: int = RESOLUTION,
         out: np.ndarray | None = None) -> np.ndarray:
    """uint8 (H,W,3) RGB -> float32 (3,res,res) in [0,1] (into ``out`` when given)."""
    import cv2

    c = cv2.warpAffine(rgb, M, (resolution, resolution), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    if out is None:
        out = np.empty((3, resolution, resolution), np.float32)
    np.multiply(c.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=out, casting="unsafe")
    return out


def crop_frame(rgb: np.ndarray, lmk478: np.ndarray, resolution: int = RESOLUTION):
    """One frame: returns (crop (3,res,res) float32, M (2,3), size px)."""
    centre, size = box_from_points(landmarks68(lmk478))
    M = crop_matrix(centre, size, resolution)
    return warp(rgb, M, resolution), M, float(size)
