"""Geometric retargeting: drive a character's shape keys, whatever their names, so its face
moves like the actor's.

Inputs (all bpy-free arrays; ``operators/scene/correspondence.py`` makes them in Blender):

* a correspondence: for each MediaPipe landmark ``l`` a triangle of the character's mesh and
  barycentric weights (from a head-on render, or points the user picked);
* the character's neutral vertices and each shape key's vertex displacement, in *model axes*
  (+X the subject's left, +Y up, +Z out of the face; :func:`blender_to_model` converts
  Blender world coordinates of a character facing -Y);
* the capture's pose-free ``landmarks3d`` (N, 478, 3).

Then:

1. Each shape key is read at the landmarks: ``B[k] = sum_j w_lj * delta_k[v_lj]`` (K, L, 3),
   and the character's neutral landmarks ``P_c`` likewise.
2. The actor's expression displacement per frame is ``landmarks3d[t] - neutral_actor``, the
   neutral being a frame the user picks or the mean of the calmest frames of the clip.
3. It is scaled to the character's proportions by ``A = diag(a) s R``: ``s R`` the similarity
   (Procrustes) taking the actor's neutral landmarks onto the character's, ``a`` the per-axis
   ratio of the two spreads after it (a wider character gets wider smiles).
4. Per frame, the bounded least squares ``min_w sum_l r_l ||B_l w - A d_lt||^2 + lambda ||w||^2``
   (``r_l`` each landmark's reliability, 1 without it: see :func:`reliability`) with
   ``lo <= w <= hi`` (plus a small L1 pull ``mu sum(w)`` so antagonist keys that cancel each
   other do not both switch on) is solved for all frames at once: projected coordinate
   descent from the clipped unconstrained solution, each coordinate step one vectorised
   update over all frames. Well under 1 ms per frame for 52 keys and 468 landmarks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BadInput

#: MediaPipe landmarks on the face surface (the 10 iris points ride the eyeballs)
N_MESH = 468


def blender_to_model(v) -> np.ndarray:
    """Blender world axes (Z up, character facing -Y) -> model axes: (x, y, z) -> (x, z, -y)."""
    v = np.asarray(v, np.float64)
    return np.stack([v[..., 0], v[..., 2], -v[..., 1]], axis=-1)


def sample(values: np.ndarray, vertices: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Barycentric interpolation: values (..., V, 3) at (L, 3) vertex triples with (L, 3)
    weights -> (..., L, 3)."""
    v = np.asarray(values)
    return np.einsum("...ljc,lj->...lc", v[..., vertices, :], weights)


@dataclass
class LandmarkBasis:
    """A character's shape keys expressed at MediaPipe landmarks (model axes)."""

    names: list[str]              # K shape-key names
    neutral: np.ndarray           # (L, 3) character landmarks at rest
    deltas: np.ndarray            # (K, L, 3) displacement of each key at the landmarks
    landmark_ids: np.ndarray      # (L,) MediaPipe landmark index of each row
    valid: np.ndarray             # (L,) bool: usable landmark
    reliability: np.ndarray | None = None   # (L,) weight of each landmark in the solve

    @classmethod
    def from_mesh(cls, names, neutral_vertices, key_deltas, corr_vertices, corr_weights,
                  valid=None, landmark_ids=None, view_vertices=None, view_weights=None,
                  view_valid=None) -> "LandmarkBasis":
        """Build from mesh arrays (model axes) and a correspondence.

        Args:
            names: K shape-key names.
            neutral_vertices: (V, 3) character at rest.
            key_deltas: (K, V, 3) displacement of each key at value 1.
            corr_vertices, corr_weights: (L, 3) vertex triples and barycentric weights.
            valid: (L,) bool, default all.
            landmark_ids: (L,) MediaPipe indices, default 0..L-1.
            view_vertices, view_weights, view_valid: (R, L, 3), (R, L, 3), (R, L): the
                correspondence found in each of R renders; when given, each landmark is
                weighted by :func:`reliability` (how little the keys' motion read there
                changes between the renders).
        """
        cv = np.asarray(corr_vertices, np.int64)
        cw = np.asarray(corr_weights, np.float64)
        L = len(cv)
        kd = np.asarray(key_deltas, np.float64)
        if kd.ndim != 3 or kd.shape[0] != len(names):
            raise ValueError(f"key_deltas {kd.shape} do not match {len(names)} names")
        valid = np.ones(L, bool) if valid is None else np.asarray(valid, bool)
        deltas = sample(kd, cv, cw)
        rel = None
        if view_vertices is not None and len(view_vertices) >= 3:
            views = np.stack([sample(kd, np.asarray(v, np.int64), np.asarray(w, np.float64))
                              for v, w in zip(view_vertices, view_weights)])
            vv = (np.ones(views.shape[0:1] + (L,), bool) if view_valid is None
                  else np.asarray(view_valid, bool))
            rel = reliability(deltas, views, vv, valid)
        return cls(names=list(names), neutral=sample(neutral_vertices, cv, cw),
                   deltas=deltas,
                   landmark_ids=np.arange(L) if landmark_ids is None else np.asarray(landmark_ids),
                   valid=valid, reliability=rel)


def reliability(deltas: np.ndarray, view_deltas: np.ndarray, view_valid: np.ndarray,
                valid: np.ndarray, scale: float = 2.0) -> np.ndarray:
    """Weight of each landmark from how much the keys' displacement read at it changes
    between renders: ``1 / (1 + v_l / (scale * median(v)))`` with ``v_l`` the mean over
    keys and renders of ``|B_view - B|^2``. Landmarks where a millimetre of detection error
    moves the reading onto another lip or eyelid get little weight; those on smooth skin
    keep about 1.

    Args:
        deltas: (K, L, 3) the keys read at the correspondence used.
        view_deltas: (R, K, L, 3) the keys read at each render's own correspondence.
        view_valid: (R, L) bool: render r's ray hit the face for landmark l (a miss
            counts as the largest disagreement seen).
        valid: (L,) bool: usable landmarks (the median is over them).
    """
    d2 = ((view_deltas - deltas[None]) ** 2).sum(-1).mean(1)          # (R, L)
    m = np.asarray(view_valid, bool)
    # a render whose ray missed the face there disagrees as much as any render does
    worst = float(d2[m].max()) if m.any() else 0.0
    v = np.where(m, d2, worst).mean(0)
    ref = np.median(v[valid]) if np.any(valid) else 0.0
    if not np.isfinite(ref) or ref <= 0:
        return np.ones(len(v))
    return 1.0 / (1.0 + v / (scale * ref))


def actor_neutral(landmarks3d: np.ndarray, arkit: np.ndarray | None = None,
                  neutral_frame: int | None = None, fraction: float = 0.1) -> np.ndarray:
    """The actor's resting landmarks (L, 3): the picked frame, else the mean over the calmest
    ``fraction`` of frames (lowest summed ARKit activity, gaze excluded), else the median."""
    lm = np.asarray(landmarks3d, np.float64)
    n = len(lm)
    if neutral_frame is not None:
        if not -n <= int(neutral_frame) < n:
            raise BadInput(f"neutral frame {neutral_frame} is outside the capture's {n} frames")
        return lm[int(neutral_frame)]
    if arkit is None:
        return np.median(lm, axis=0)
    from ..arkit import ARKIT_NAMES

    cols = [i for i, c in enumerate(ARKIT_NAMES) if not c.startswith("eyeLook")]
    energy = np.asarray(arkit, np.float64)[:, cols].sum(1)
    m = max(1, int(round(fraction * n)))
    return lm[np.argsort(energy, kind="stable")[:m]].mean(0)


def proportion_transform(actor: np.ndarray, character: np.ndarray) -> np.ndarray:
    """3x3 ``A = diag(a) s R`` mapping actor displacements to the character's proportions.

    Args:
        actor, character: (L, 3) corresponding neutral landmarks (model axes).
    """
    X = actor - actor.mean(0)
    Y = character - character.mean(0)
    U, S, Vt = np.linalg.svd(X.T @ Y)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.diag([1.0, 1.0, d])
    R = (U @ D @ Vt).T                       # rotation: actor -> character
    s = float((S * np.diag(D)).sum() / max((X ** 2).sum(), 1e-30))
    Xr = s * X @ R.T
    a = np.sqrt((Y ** 2).sum(0) / np.maximum((Xr ** 2).sum(0), 1e-30))
    a = np.clip(a, 0.25, 4.0)
    return np.diag(a) @ (s * R)


class GeometricSolver:
    """Per-frame bounded least squares from actor landmark displacements to key weights.

    Args:
        basis: the character's :class:`LandmarkBasis`.
        actor_neutral: (478, 3) or (L, 3) actor landmarks at rest (model axes), indexed by
            ``basis.landmark_ids`` when 478 rows.
        lower, upper: bounds of the weights (scalars or (K,)).
        reg: ridge weight, relative to each key's squared size (diagonal of ``B^T B``), so
            the solve does not depend on how far a key moves.
        sparsity: L1 weight in the same relative units (``sum_k mu_k w_k``, w >= 0): a key
            is shrunk by about ``sparsity``.
    """

    def __init__(self, basis: LandmarkBasis, actor_neutral: np.ndarray, lower=0.0, upper=1.0,
                 reg: float = 1e-3, sparsity: float = 0.01):
        ids = np.asarray(basis.landmark_ids)
        valid = np.asarray(basis.valid, bool)
        an = np.asarray(actor_neutral, np.float64)
        if an.shape[0] != len(ids):
            an = an[ids]
        if valid.sum() < 6:
            raise BadInput(f"only {int(valid.sum())} landmarks correspond to the character's "
                           f"mesh; at least 6 are needed")
        self.names = list(basis.names)
        self.ids = ids[valid]
        self.A = proportion_transform(an[valid], basis.neutral[valid])
        self.actor_neutral = an[valid]
        B = basis.deltas[:, valid, :].reshape(len(self.names), -1).T    # (3L, K)
        self.B = B
        K = B.shape[1]
        # each landmark's weight in ||B w - A d||^2 (the correspondence's reliability)
        rel = getattr(basis, "reliability", None)
        self.w = (np.ones(int(valid.sum())) if rel is None
                  else np.asarray(rel, np.float64)[valid])
        Bw = (B.reshape(-1, 3, K) * self.w[:, None, None]).reshape(-1, K)
        G = B.T @ Bw
        K = G.shape[0]
        dg = np.maximum(np.diag(G), 1e-12 * max(float(np.diag(G).max()), 1e-30))
        self.G = G + np.diag(float(reg) * dg)      # ridge relative to each key's own size
        self.lo = np.broadcast_to(np.asarray(lower, np.float64), (K,)).copy()
        self.hi = np.broadcast_to(np.asarray(upper, np.float64), (K,)).copy()
        if np.any(self.lo > self.hi):
            raise ValueError("lower bound above upper bound")
        self.Ginv = np.linalg.inv(self.G)
        # a small L1 pull towards 0 (the weights are >= 0, so it is linear): of two keys
        # that cancel (jawLeft/jawRight), only the one the actor uses stays on
        self.mu = float(sparsity) * dg
        # rows of the actor displacement map straight to B's rows: d (N,L,3) -> (N,3L) @ A^T
        # B^T (A d) = (A^T-applied B)^T d: fold A into B once
        self.BA = np.einsum("lck,cj->ljk", Bw.reshape(-1, 3, K), self.A).reshape(-1, K)

    def targets(self, landmarks3d: np.ndarray) -> np.ndarray:
        """(N, L, 3) actor displacements scaled to the character (the solve's right side)."""
        lm = np.asarray(landmarks3d, np.float64)
        if lm.shape[1] != len(self.ids):
            lm = lm[:, self.ids]
        return (lm - self.actor_neutral) @ self.A.T

    def solve(self, landmarks3d: np.ndarray) -> np.ndarray:
        """(N, 478, 3) pose-free actor landmarks -> (N, K) key weights within the bounds."""
        lm = np.asarray(landmarks3d, np.float64)
        if lm.ndim != 3 or lm.shape[2] != 3:
            raise BadInput(f"landmarks3d has shape {lm.shape}, expected (N, 478, 3)")
        if lm.shape[1] != len(self.ids):
            if lm.shape[1] <= int(self.ids.max()):
                raise BadInput(f"the capture has {lm.shape[1]} landmarks; the geometric "
                               f"retarget needs MediaPipe's 478")
            lm = lm[:, self.ids]
        d = (lm - self.actor_neutral).reshape(len(lm), -1)       # (N, 3L)
        r = d @ self.BA                                           # (N, K) = B^T A d
        return self.solve_normal(r)

    def objective(self, x: np.ndarray, r: np.ndarray) -> np.ndarray:
        return 0.5 * np.einsum("nk,nk->n", x @ self.G, x) - np.einsum("nk,nk->n", r, x)

    def solve_normal(self, r: np.ndarray, sweeps: int = 20, tol: float = 1e-5) -> np.ndarray:
        """Box-constrained ``min 0.5 x^T G x - r^T x + mu sum(x)`` for each row of r (N, K),
        by projected coordinate descent vectorised over the rows (each coordinate step is
        one (N, K) update of the gradient), from the clipped unconstrained solution."""
        G, lo, hi = self.G, self.lo, self.hi
        r = np.asarray(r, np.float64) - self.mu
        x = np.clip(r @ self.Ginv.T, lo, hi)
        g = x @ G - r                         # gradient, kept up to date
        diag = np.diag(G).copy()
        xT, gT = np.ascontiguousarray(x.T), np.ascontiguousarray(g.T)   # rows per key: fast
        for _ in range(sweeps):
            biggest = 0.0
            for k in range(G.shape[0]):
                xk = xT[k]
                new = np.clip(xk - gT[k] / diag[k], lo[k], hi[k])
                delta = new - xk
                xT[k] = new
                gT += G[:, k:k + 1] * delta[None]
                biggest = max(biggest, float(np.abs(delta).max(initial=0.0)))
            if biggest < tol:
                break
        return xT.T.copy()


def solve_capture(basis: LandmarkBasis, landmarks3d: np.ndarray, arkit: np.ndarray | None = None,
                  neutral_frame: int | None = None, lower=0.0, upper=1.0, reg: float = 1e-3,
                  sparsity: float = 0.01) -> np.ndarray:
    """One call: the actor's neutral, the solver, and the (N, K) key weights of a capture."""
    lm = np.asarray(landmarks3d, np.float64)
    if lm.ndim != 3 or lm.shape[1] < N_MESH or not np.isfinite(lm).all():
        raise BadInput(f"the capture's landmarks3d {lm.shape} are not MediaPipe's 478 pose-free "
                       f"landmarks: the geometric retarget needs a MediaPipe capture")
    neutral = actor_neutral(lm, arkit, neutral_frame)
    return GeometricSolver(basis, neutral, lower, upper, reg, sparsity).solve(lm)


__all__ = ["LandmarkBasis", "GeometricSolver", "reliability", "actor_neutral", "proportion_transform",
           "solve_capture", "blender_to_model", "sample"]
