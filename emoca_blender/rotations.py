"""Rotation math shared by the core and the Blender side (numpy, bpy-free): weighted
similarity (Procrustes) alignment of point sets, axis-angle <-> rotation matrix (Rodrigues;
the way back through scipy, imported when called), axis-angle <-> unit quaternion
(w, x, y, z), the Hamilton product and sign continuity of quaternion sequences.

A leaf: it imports nothing from the project, so every subsystem (the solves, the head
models, the Blender rig and bake through ``operators._core``) may use it.
"""
from __future__ import annotations

import numpy as np


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
    H = np.swapaxes(xs * w[:, None], 1, 2) @ xd          # (N,3,3), sum_p w x_s x_d^T
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


def rotvec_to_matrix(r: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle -> (..., 3, 3) rotation matrices (Rodrigues; the identity at 0)."""
    r = np.asarray(r, dtype=np.float64)
    theta = np.linalg.norm(r, axis=-1, keepdims=True)
    k = r / np.where(theta > 0, theta, 1.0)
    zero = np.zeros_like(k[..., 0])
    K = np.stack([zero, -k[..., 2], k[..., 1], k[..., 2], zero, -k[..., 0],
                  -k[..., 1], k[..., 0], zero], -1).reshape(r.shape[:-1] + (3, 3))
    s = np.sin(theta)[..., None]
    c = np.cos(theta)[..., None]
    return np.eye(3) + s * K + (1 - c) * (K @ K)


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) matrices, orthonormalised first (nearest rotation) -> (..., 3) axis-angle
    with the angle in [0, pi]."""
    from scipy.spatial.transform import Rotation

    R = np.asarray(R, np.float64)
    U, _, Vt = np.linalg.svd(R)
    d = np.sign(np.linalg.det(U @ Vt))
    U[..., :, 2] *= d[..., None]
    flat = (U @ Vt).reshape(-1, 3, 3)
    return Rotation.from_matrix(flat).as_rotvec().reshape(R.shape[:-2] + (3,))


def rotvec_to_quat(r: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle -> (..., 4) unit quaternions (w, x, y, z), w >= 0 for |r| <= pi."""
    r = np.asarray(r, dtype=np.float64)
    theta = np.linalg.norm(r, axis=-1, keepdims=True)
    half = 0.5 * theta
    # sin(theta/2)/theta, with its limit 1/2 at theta -> 0
    k = np.where(theta > 1e-8, np.sin(half) / np.maximum(theta, 1e-300), 0.5 - theta**2 / 48.0)
    return np.concatenate([np.cos(half), r * k], axis=-1)


def quat_to_rotvec(q: np.ndarray) -> np.ndarray:
    """(..., 4) unit quaternions (w, x, y, z) -> (..., 3) axis-angle with angle in [0, pi]."""
    q = np.asarray(q, dtype=np.float64)
    q = np.where(q[..., :1] < 0, -q, q)
    s = np.linalg.norm(q[..., 1:], axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(s, q[..., :1])
    k = np.where(s > 1e-12, angle / np.maximum(s, 1e-300), 2.0)
    return q[..., 1:] * k


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (..., 4) quaternions (w, x, y, z)."""
    aw, ax, ay, az = np.moveaxis(np.asarray(a, np.float64), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, np.float64), -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw], axis=-1)


def quat_continuous(q: np.ndarray) -> np.ndarray:
    """Flip signs of an (N, 4) quaternion sequence so consecutive keys have dot >= 0."""
    q = np.array(q, dtype=np.float64)
    if len(q) < 2:
        return q
    d = np.einsum("ij,ij->i", q[1:], q[:-1])
    flips = np.cumprod(np.where(d < 0, -1.0, 1.0))
    q[1:] *= flips[:, None]
    return q


__all__ = ["similarity_align", "rotvec_to_matrix", "matrix_to_rotvec", "rotvec_to_quat", "quat_to_rotvec", "quat_mul", "quat_continuous"]
