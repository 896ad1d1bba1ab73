"""Per-frame solves shared by the backends, vectorised over frames.

From MediaPipe's per-frame outputs (image landmarks, blendshape scores, facial
transformation matrix) to the Capture's head pose, pose-free landmarks, jaw, gaze and
blinks. Conventions are those of capture_file.py (head frame: +X subject's left, +Y up,
+Z out of the face; camera frame OpenGL-style, zero rotation = facing the camera).
"""
from __future__ import annotations

import numpy as np

from .arkit import INDEX

# Jaw rotation (radians, about +X = opening) at jawOpen = 1, and sideways at jawLeft/Right = 1.
# The open head model's jawOpen shape is built to match JAW_OPEN_RADIANS.
JAW_OPEN_RADIANS = 0.20944  # 12 degrees: the open head model's jawOpen (extra_jaw_open_rotvec)
JAW_SIDE_RADIANS = 0.12
# Eye rotation at eyeLook* = 1 (radians): horizontal and vertical.
EYE_YAW_RADIANS = 0.55
EYE_PITCH_RADIANS = 0.40

# MediaPipe mesh points that move little with expression (forehead, nose bridge, temples,
# outer eye corners, upper nose), used to remove the rigid head motion from landmarks.
STABLE_POINTS = np.array([
    10, 151, 9, 8, 168, 6, 197, 195, 5, 4,          # midline forehead -> nose tip
    109, 67, 103, 54, 21, 162, 127, 234,            # subject's right forehead/temple
    338, 297, 332, 284, 251, 389, 356, 454,         # subject's left forehead/temple
    33, 263, 133, 362,                              # eye corners
    98, 327, 129, 358, 48, 278,                     # nose wings
], dtype=np.int64)


def similarity_align(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched weighted similarity Procrustes: find s, R, t minimising
    sum_k w_k || s R src_k + t - dst_k ||^2.

    Args:
        src: (N,P,3) points per frame.
        dst: (P,3) or (N,P,3) target points.
        weights: (P,) non-negative weights (default uniform).
    Returns:
        s (N,), R (N,3,3), t (N,3).
    """
    src = np.asarray(src, np.float64)
    dst = np.broadcast_to(np.asarray(dst, np.float64), src.shape)
    P = src.shape[1]
    w = np.ones(P) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mu_s = np.einsum("p,npk->nk", w, src)
    mu_d = np.einsum("p,npk->nk", w, dst)
    xs = src - mu_s[:, None]
    xd = dst - mu_d[:, None]
    H = np.einsum("p,npi,npj->nij", w, xs, xd)          # (N,3,3)
    U, S, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(np.einsum("nij,njk->nik", U, Vt)))
    D = np.zeros_like(H)
    D[:, 0, 0] = 1
    D[:, 1, 1] = 1
    D[:, 2, 2] = d
    R = np.einsum("nji,njk,nlk->nil", Vt, D, U)          # V D U^T, maps src onto dst
    var_s = np.einsum("p,npk,npk->n", w, xs, xs)
    s = (S * np.stack([np.ones_like(d), np.ones_like(d), d], -1)).sum(-1) / np.maximum(var_s, 1e-12)
    t = mu_d - s[:, None] * np.einsum("nij,nj->ni", R, mu_s)
    return s, R, t


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """(N,3,3) rotation matrices (orthonormalised first) -> (N,3) axis-angle."""
    from scipy.spatial.transform import Rotation

    U, _, Vt = np.linalg.svd(np.asarray(R, np.float64))
    d = np.sign(np.linalg.det(U @ Vt))
    U[..., :, 2] *= d[..., None]
    return Rotation.from_matrix(U @ Vt).as_rotvec()


def pose_free_landmarks(lmk_px: np.ndarray, canonical_cm: np.ndarray) -> np.ndarray:
    """Remove rigid head motion from image landmarks.

    Args:
        lmk_px: (N,478,3) MediaPipe landmarks in pixels (x right, y down, z in x's scale,
            smaller z = nearer the camera).
        canonical_cm: (468,3) MediaPipe's canonical face mesh, centimetres, head frame.
    Returns:
        (N,478,3) landmarks in the head frame, metres, aligned to the canonical mesh on
        the stable points (scale included, so a face's size in pixels does not matter).
    """
    src = np.asarray(lmk_px, np.float64) * np.array([1.0, -1.0, -1.0])
    s, R, t = similarity_align(src[:, STABLE_POINTS], canonical_cm[STABLE_POINTS])
    out = s[:, None, None] * np.einsum("nij,npj->npi", R, src) + t[:, None]
    return (out / 100.0).astype(np.float32)


def jaw_from_arkit(arkit: np.ndarray) -> np.ndarray:
    """(N,52) ARKit weights -> (N,3) jaw axis-angle (head frame)."""
    a = np.asarray(arkit, np.float64)
    jaw = np.zeros((a.shape[0], 3))
    jaw[:, 0] = a[:, INDEX["jawOpen"]] * JAW_OPEN_RADIANS
    jaw[:, 1] = (a[:, INDEX["jawLeft"]] - a[:, INDEX["jawRight"]]) * JAW_SIDE_RADIANS
    return jaw


def eyes_from_arkit(arkit: np.ndarray) -> np.ndarray:
    """(N,52) ARKit weights -> (N,2,3) gaze axis-angle of the subject's left and right eye.

    Yaw about +Y (positive turns the eye towards the subject's left), pitch about +X
    (positive turns it down).
    """
    a = np.asarray(arkit, np.float64)
    g = lambda n: a[:, INDEX[n]]  # noqa: E731
    eyes = np.zeros((a.shape[0], 2, 3))
    # subject's left eye: looking "out" = towards the subject's left
    eyes[:, 0, 1] = (g("eyeLookOutLeft") - g("eyeLookInLeft")) * EYE_YAW_RADIANS
    eyes[:, 1, 1] = (g("eyeLookInRight") - g("eyeLookOutRight")) * EYE_YAW_RADIANS
    eyes[:, 0, 0] = (g("eyeLookDownLeft") - g("eyeLookUpLeft")) * EYE_PITCH_RADIANS
    eyes[:, 1, 0] = (g("eyeLookDownRight") - g("eyeLookUpRight")) * EYE_PITCH_RADIANS
    return eyes


def from_mediapipe(lmk_px: np.ndarray, arkit: np.ndarray, matrices: np.ndarray) -> dict:
    """Capture fields from MediaPipe outputs (rows of frames without a face may be junk;
    the pipeline's gap filling overwrites them)."""
    from .mediapipe_topology import canonical_mesh

    canonical_cm = canonical_mesh()[0]
    N = arkit.shape[0]
    out: dict[str, np.ndarray] = {}
    out["arkit"] = np.clip(arkit, 0.0, 1.0).astype(np.float32)
    out["expression"] = out["arkit"].copy()
    out["head_rotation"] = matrix_to_rotvec(matrices[:, :3, :3]).astype(np.float32) if N else np.zeros((0, 3), np.float32)
    out["head_translation"] = (matrices[:, :3, 3] / 100.0).astype(np.float32)
    out["landmarks3d"] = pose_free_landmarks(lmk_px, canonical_cm) if N else np.zeros((0, 478, 3), np.float32)
    out["jaw"] = jaw_from_arkit(arkit).astype(np.float32)
    out["eyes"] = eyes_from_arkit(arkit).astype(np.float32)
    out["blinks"] = np.stack([arkit[:, INDEX["eyeBlinkLeft"]], arkit[:, INDEX["eyeBlinkRight"]]],
                             1).astype(np.float32)
    return out
