"""Gaze for retargeting: one consistent gaze for both eyes, how a character's eyeLook shape
keys turn its eyeballs, and eyeLook weights that reproduce a gaze on such keys.

Angles are in the head model's axes (+X the subject's left, +Y up, +Z out of the face): a
gaze direction ``d`` has ``yaw = atan2(d_x, d_z)`` (positive: towards the subject's left)
and ``up = asin(d_y)``; the rotation of that gaze is ``Ry(yaw) Rx(-up)`` (no torsion).

Why: ARKit avatars (Ready Player Me and the like) often carry eyeLook* shape keys on their
eyeball meshes that *rotate* the eyeballs, and eye bones that rotate them too; keying both
doubles the gaze. :func:`key_rotation` tells a key that rotates a part of a mesh rigidly from
one that deforms lids, so the retarget drives each eye one way only. Captured gazes of the
two eyes also disagree on turned heads (the far iris is seen edge-on):
:func:`consistent_gaze` gives both eyes one gaze, weighted towards the eye nearer the
camera, with bounded vergence unless the actor really crosses their eyes.
"""
from __future__ import annotations

import numpy as np

from ..rotations import rotvec_to_matrix

#: eyeLook channels: (eye index 0 = left, 1 = right, angle, sign)
EYE_LOOK = {
    "eyeLookUpLeft": (0, "up", 1.0), "eyeLookDownLeft": (0, "up", -1.0),
    "eyeLookOutLeft": (0, "yaw", 1.0), "eyeLookInLeft": (0, "yaw", -1.0),
    "eyeLookUpRight": (1, "up", 1.0), "eyeLookDownRight": (1, "up", -1.0),
    "eyeLookOutRight": (1, "yaw", -1.0), "eyeLookInRight": (1, "yaw", 1.0),
}


def gaze_angles(eyes: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle eye rotations -> (..., 2) [yaw, up] of the gaze, radians."""
    d = rotvec_to_matrix(eyes)[..., :, 2]
    return np.stack([np.arctan2(d[..., 0], d[..., 2]),
                     np.arcsin(np.clip(d[..., 1], -1.0, 1.0))], -1)


def angles_to_rotvec(angles: np.ndarray) -> np.ndarray:
    """(..., 2) [yaw, up] -> (..., 3) axis-angle ``Ry(yaw) Rx(-up)``."""
    from scipy.spatial.transform import Rotation
    a = np.asarray(angles, np.float64)
    flat = a.reshape(-1, 2)
    R = Rotation.from_euler("YX", np.stack([flat[:, 0], -flat[:, 1]], -1))
    return R.as_rotvec().reshape(a.shape[:-1] + (3,))


def gaze_direction(eyes: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle -> (..., 3) unit gaze direction (model axes)."""
    return rotvec_to_matrix(eyes)[..., :, 2]


def _runs(mask: np.ndarray):
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return zip(edges[::2], edges[1::2])


def consistent_gaze(eyes: np.ndarray, head_rotation: np.ndarray | None = None,
                    fps: float = 30.0, max_convergence_deg: float = 8.0,
                    max_divergence_deg: float = 1.0, cross_seconds: float = 0.3,
                    turn_deg: float = 30.0) -> tuple[np.ndarray, dict]:
    """One gaze for both eyes.

    Both eyes get the same elevation and a common yaw; their yaw difference (vergence,
    positive = converging) is kept within ``[-max_divergence_deg, max_convergence_deg]``,
    except over runs of at least ``cross_seconds`` where the capture converges further (the
    actor really crosses their eyes: kept as measured). The common gaze weights each eye by
    how well the camera sees it: equal facing the camera, only the near eye when the head
    is turned by ``turn_deg`` or more (``head_rotation``: camera-relative axis-angle, as in
    a Capture; equal weights when None).

    Args:
        eyes: (N, 2, 3) axis-angle of the left and right eye, head frame.
    Returns:
        ((N, 2, 3) axis-angle, {"max_disagreement_deg": largest |yaw/up difference| before,
         "crossed_frames": frames kept converged beyond the bound})
    """
    eyes = np.asarray(eyes, np.float64)
    N = eyes.shape[0]
    a = gaze_angles(eyes)                                   # (N, 2 eyes, [yaw, up])
    w_left = np.full(N, 0.5)
    if head_rotation is not None:
        face = rotvec_to_matrix(np.asarray(head_rotation, np.float64))[:, :, 2]
        # face turned towards camera +x: the left eye (head +X) moves away from the camera
        w_left = 0.5 * (1.0 - np.clip(face[:, 0] / np.sin(np.radians(turn_deg)), -1, 1))
    w = np.stack([w_left, 1 - w_left], -1)
    up = (a[:, :, 1] * w).sum(1)
    yaw = (a[:, :, 0] * w).sum(1)
    verg = a[:, 1, 0] - a[:, 0, 0]                         # right yaw - left yaw
    lo, hi = -np.radians(max_divergence_deg), np.radians(max_convergence_deg)
    bounded = np.clip(verg, lo, hi)
    crossed = np.zeros(N, bool)
    min_len = max(1, int(round(cross_seconds * fps)))
    for s, e in _runs(verg > hi):
        if e - s >= min_len:
            bounded[s:e] = verg[s:e]
            crossed[s:e] = True
    # keep the weighted eye's yaw: the other follows at the bounded vergence
    yaw_l = yaw - w[:, 1] * bounded
    yaw_r = yaw + w[:, 0] * bounded
    target = gaze_direction(angles_to_rotvec(
        np.stack([np.stack([yaw_l, up], -1), np.stack([yaw_r, up], -1)], 1)))
    out = _turn_to(eyes, target)
    dis = np.degrees(np.abs(a[:, 1] - a[:, 0]).max()) if N else 0.0
    return out, {"max_disagreement_deg": float(dis), "crossed_frames": int(crossed.sum())}


def _turn_to(eyes: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle rotations, each turned by the shortest rotation that takes its
    gaze onto the (..., 3) ``target`` direction (the eye's torsion kept)."""
    from scipy.spatial.transform import Rotation
    R = rotvec_to_matrix(eyes)
    d = R[..., :, 2]
    axis = np.cross(d, target)
    s = np.linalg.norm(axis, axis=-1, keepdims=True)
    c = np.sum(d * target, -1, keepdims=True)
    turn = axis / np.maximum(s, 1e-15) * np.arctan2(s, c)
    Rt = rotvec_to_matrix(turn)
    out = Rotation.from_matrix((Rt @ R).reshape(-1, 3, 3)).as_rotvec()
    return out.reshape(np.shape(eyes))


def key_rotation(basis: np.ndarray, shaped: np.ndarray, edges: np.ndarray | None = None,
                 min_vertices: int = 12, min_angle_deg: float = 2.0,
                 max_residual: float = 0.05) -> dict | None:
    """Does a shape key rotate a part of its mesh rigidly (an eyeball), rather than deform it?

    The vertices the key moves are split into connected parts (``edges``, (E, 2)); each part
    of at least ``min_vertices`` vertices is fitted with a rotation about a point (Kabsch).
    Args:
        basis, shaped: (V, 3) vertex positions of the basis and of the key at weight 1, in
            the axes the answer should be in.
    Returns:
        None when no part turns rigidly by ``min_angle_deg`` or more with a residual under
        ``max_residual`` of its motion; else {"rotvec": (3,) the rotation of the largest such
        part, "angle_deg", "center": (3,) its centroid, "vertices": its vertex count}.
    """
    P = np.asarray(basis, np.float64)
    Q = np.asarray(shaped, np.float64)
    d = np.linalg.norm(Q - P, axis=1)
    if d.max(initial=0.0) <= 1e-9:
        return None
    moved = d > 1e-6 * max(d.max(), 1e-12) + 1e-9
    labels = np.zeros(len(P), np.int64)
    if edges is not None and len(edges):
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components
        e = np.asarray(edges, np.int64)
        g = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(len(P), len(P)))
        _, labels = connected_components(g, directed=False)
    best = None
    for lab in np.unique(labels[moved]):
        part = labels == lab
        if part.sum() < min_vertices:
            continue
        A, B = P[part], Q[part]
        ca, cb = A.mean(0), B.mean(0)
        H = (A - ca).T @ (B - cb)
        U, _, Vt = np.linalg.svd(H)
        D = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T))])
        R = Vt.T @ D @ U.T
        fit = (A - ca) @ R.T + cb
        motion = np.sqrt(np.mean(np.sum((B - A) ** 2, 1)))
        resid = np.sqrt(np.mean(np.sum((fit - B) ** 2, 1)))
        from scipy.spatial.transform import Rotation
        rv = Rotation.from_matrix(R).as_rotvec()
        ang = np.degrees(np.linalg.norm(rv))
        if ang >= min_angle_deg and resid <= max_residual * motion:
            if best is None or part.sum() > best["vertices"]:
                best = {"rotvec": rv, "angle_deg": float(ang), "center": ca,
                        "vertices": int(part.sum())}
    return best


def eyelook_weights(eyes: np.ndarray, key_angles: dict[str, float]) -> dict[str, np.ndarray]:
    """eyeLook weights that turn eyeballs to a gaze, for keys that rotate them.

    Args:
        eyes: (N, 2, 3) axis-angle gaze of the left and right eye.
        key_angles: {eyeLook channel: the angle (radians, > 0) its key turns the eyeball in
            its own direction at weight 1} (from :func:`key_rotation`).
    Returns:
        {channel: (N,) weights in [0, 1]}: the gaze's yaw or elevation over the key's angle,
        for the channels in ``key_angles``.
    """
    a = gaze_angles(np.asarray(eyes, np.float64))
    out = {}
    for ch, full in key_angles.items():
        if ch not in EYE_LOOK or not full > 0:
            continue
        eye, which, sign = EYE_LOOK[ch]
        v = sign * a[:, eye, 0 if which == "yaw" else 1]
        out[ch] = np.clip(v / full, 0.0, 1.0)
    return out


__all__ = ["EYE_LOOK", "gaze_angles", "angles_to_rotvec", "gaze_direction", "consistent_gaze",
           "key_rotation", "eyelook_weights"]
