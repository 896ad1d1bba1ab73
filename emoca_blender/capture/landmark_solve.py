"""Landmark-space solve: expression weights and rigid head pose from 478 MediaPipe landmarks.

The bundled ICT head's 52 sculpted ARKit shapes, evaluated at its embedded MediaPipe
landmarks, form a linear basis ``B`` (52, 478, 3). Given per-frame landmarks
in the camera frame, the solve alternates, vectorised over frames:

1. rigid pose: a weighted similarity Procrustes of the frame's points onto the expected
   shape (first the actor's neutral on stable points, then ``neutral + w B`` on all points),
   which removes head rotation, translation and the face's size in pixels;
2. expression: a bounded least squares ``min_w ||(P - neutral) - w B||^2_W + lam ||w||^2``
   with ``0 <= w <= 1`` (channels may be pinned to 0), solved for all frames at once by a
   primal-dual active-set method on the 52x52 normal equations (exact in a few iterations;
   a projected-gradient polish guards the rare frame whose active set has not settled);
3. frames that still misfit (a strongly turned face, whose hidden side MediaPipe invents)
   are refitted robustly: iteratively reweighted least squares with Cauchy point weights.

Conventions as in capture_file.py: head frame +X subject's left, +Y up, +Z out of the face,
metres; camera frame OpenGL-style (x right, y up, z towards the viewer). MediaPipe image
landmarks (x right, y down, z with smaller = nearer, all in pixels) enter through
:func:`camera_points`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..models.mediapipe_topology import STABLE_POINTS
from ..rotations import similarity_align

#: relative weight of the depth coordinate (MediaPipe's z is the least reliable)
Z_WEIGHT = 0.5
#: ridge, relative to each component's own squared size (the diagonal of B B^T): breaks exact
#: ties (mouthLeft = -mouthRight) and shrinks every weight by the same 0.2%, whether its shape
#: moves the landmarks a lot (jawOpen) or a little (cheekPuff)
RIDGE = 2e-3
#: frames per block of the batched solve (bounds memory: block x 52 x 52 doubles)
BLOCK = 1024
#: robust refit (see :func:`robust_refit`): frames whose RMS residual after the plain fit
#: exceeds ROBUST_FROM_MM are refitted with Cauchy weights of scale ROBUST_SCALE_MM,
#: ROBUST_ITERS reweightings. On a face turned 40-55 degrees MediaPipe's far-side landmarks
#: (jaw line, chin, the hidden cheek) are invented and misfit by 10-20 mm; least squares then
#: bends the visible mouth to them (a talking mouth read as closed). Frontal frames fit to
#: 1-2 mm and are left as they are.
ROBUST_FROM_MM = 2.5
ROBUST_SCALE_MM = 2.0
ROBUST_ITERS = 4


@dataclass(frozen=True)
class LandmarkBasis:
    """A head model's expression shapes at the 478 landmarks.

    Attributes:
        template: (478,3) neutral landmarks, metres, head frame.
        basis: (K,478,3) offsets of each expression component at weight 1.
        names: K component names (ARKit order for the ICT head).
    """

    template: np.ndarray
    basis: np.ndarray
    names: tuple[str, ...]

    @property
    def flat(self) -> np.ndarray:
        """(K, 478*3) basis rows."""
        return self.basis.reshape(self.basis.shape[0], -1)


def _landmark_basis(file_name: str) -> LandmarkBasis:
    """A bundled head model's expression shapes at its MediaPipe landmarks, read-only."""
    from ..models.head_model import bundled, load_head_model

    m = load_head_model(bundled(file_name))
    if m.landmark_tri is None and m.landmark_vertices is None:
        m.landmark_vertices = np.arange(478)          # its first 478 vertices are them
    t = np.asarray(m.landmarks(m.v_template), np.float64)
    b = np.asarray(m.landmarks(m.expression_basis), np.float64)
    t.setflags(write=False)
    b.setflags(write=False)
    return LandmarkBasis(t, b, tuple(m.expression_names))


@functools.lru_cache(maxsize=1)
def open_head_basis() -> LandmarkBasis:
    """The open head model's 52 ARKit shapes at its 478 vertices (its vertices are the
    landmarks): the FLAME backends' ARKit solve (``flame_fit.arkit_from_flame``, checked on
    synthetic FLAME models only; no real FLAME here to measure a switch to the ICT head)."""
    from ..models.head_model import OPEN_HEAD
    return _landmark_basis(OPEN_HEAD)


@functools.lru_cache(maxsize=1)
def ict_head_basis() -> LandmarkBasis:
    """The bundled ICT head's 52 sculpted ARKit shapes at its embedded MediaPipe landmarks.

    The eyeballs do not move in ICT's shapes (gaze is the eye joints'), so the iris rows are
    zero: the capture pins the eyeLook* channels to the gaze it measures from the irises and
    leaves the iris points out of the fit (``solve.from_mediapipe``)."""
    from ..models.head_model import ICT_HEAD
    return _landmark_basis(ICT_HEAD)


def camera_points(lmk_px: np.ndarray) -> np.ndarray:
    """(N,478,3) MediaPipe image landmarks (pixels, y down, z smaller = nearer) ->
    camera frame (x right, y up, z towards the viewer), still in pixels."""
    return np.asarray(lmk_px, np.float64) * np.array([1.0, -1.0, -1.0])


def point_weights(n_points: int = 478, z_weight: float = Z_WEIGHT) -> np.ndarray:
    """(n_points*3,) per-coordinate weights of the expression fit."""
    w = np.ones((n_points, 3))
    w[:, 2] = z_weight
    return w.reshape(-1)


# ---------------------------------------------------------------------------------------------
# Bounded least squares, batched
# ---------------------------------------------------------------------------------------------
def box_qp(G: np.ndarray, h: np.ndarray, lo: np.ndarray, hi: np.ndarray,
           iters: int = 10, polish: int = 100, start: np.ndarray | None = None) -> np.ndarray:
    """Solve ``min_w 1/2 w^T G w - h_n^T w`` s.t. ``lo <= w <= hi`` for every row h_n.

    Primal-dual active set (Hintermueller, Ito, Kunisch 2003): each iteration guesses
    which bounds are active from ``w - c * grad``, solves the free variables exactly with
    one batched linear solve, and stops when no frame's guess changes. Frames that have
    not settled after ``iters`` get a projected-gradient polish.

    Args:
        G: (K,K) symmetric positive definite, shared by all rows, or (N,K,K) one per row.
        h: (N,K) linear terms.
        lo, hi: (K,) bounds (lo == hi pins a variable).
        start: optional (N,K) first guess (e.g. the solution of a nearby problem): its
            active set is the first guess, instead of the clipped unconstrained solution's.
    Returns:
        (N,K) solutions.
    """
    G = np.asarray(G, np.float64)
    h = np.asarray(h, np.float64)
    N, K = h.shape
    out = np.empty((N, K))
    eye = np.eye(K, dtype=bool)
    per_row = G.ndim == 3
    for a in range(0, N, BLOCK):
        hb = h[a:a + BLOCK]
        n = hb.shape[0]
        Gb = G[a:a + n] if per_row else G
        diagG = np.diagonal(Gb, axis1=-2, axis2=-1)               # (K,) or (n,K)

        def G_of(rows):
            return Gb[rows] if per_row else Gb[None]

        def times_G(w, rows):
            return np.einsum("nk,nkl->nl", w, Gb[rows]) if per_row else w @ Gb

        def diag_of(rows):
            return diagG[rows] if per_row else diagG

        allrows = np.arange(n)
        if start is not None:
            w0 = np.asarray(start[a:a + n], np.float64)
        else:
            w0 = (np.linalg.solve(Gb, hb[..., None])[..., 0] if per_row
                  else np.linalg.solve(Gb, hb.T).T)
        w = np.clip(w0, lo, hi)
        grad = times_G(w, allrows) - hb
        state = np.zeros((n, K), np.int8)
        todo = np.arange(n)                       # frames whose active set may still change
        for it in range(iters):
            y = w[todo] - grad[todo] / diag_of(todo)
            at_lo = y <= lo
            at_hi = (y >= hi) & ~at_lo
            new = at_lo.astype(np.int8) - at_hi.astype(np.int8)
            changed = (new != state[todo]).any(1) | (it == 0)
            todo, new, at_lo, at_hi = todo[changed], new[changed], at_lo[changed], at_hi[changed]
            if todo.size == 0:
                break
            state[todo] = new
            free = ~(at_lo | at_hi)
            fixed = np.where(at_lo, lo, np.where(at_hi, hi, 0.0))
            rhs = np.where(free, hb[todo] - times_G(fixed, todo), fixed)
            M = np.where(free[:, :, None] & free[:, None, :], G_of(todo), 0.0)
            M[:, eye] = np.where(free, diag_of(todo), 1.0)
            wt = np.linalg.solve(M, rhs[..., None])[..., 0]
            w[todo] = np.where(free, wt, fixed)
            grad[todo] = times_G(w[todo], todo) - hb[todo]
        w = np.clip(w, lo, hi)
        # KKT check; polish frames that are not optimal yet (projected gradient, step 1/L)
        grad = times_G(w, allrows) - hb
        bad = np.abs(np.where((w <= lo) & (grad > 0) | (w >= hi) & (grad < 0), 0.0, grad)).max(1)
        todo = np.flatnonzero(bad > 1e-9 * max(1.0, float(np.abs(hb).max())))
        if todo.size and polish:
            L = np.linalg.eigvalsh(G_of(todo))[..., -1][:, None]
            ww, hh = w[todo], hb[todo]
            for _ in range(polish):
                ww = np.clip(ww - (times_G(ww, todo) - hh) / L, lo, hi)
            w[todo] = ww
        out[a:a + n] = w
    return out


@dataclass
class SolveResult:
    """Per-frame output of :func:`solve_sequence` (N frames, K components)."""

    weights: np.ndarray          # (N,K) in [0,1]
    rotation: np.ndarray         # (N,3,3) camera_point = s R head_point + t (pixels)
    scale: np.ndarray            # (N,) pixels per metre
    translation: np.ndarray      # (N,3) pixels
    pose_free: np.ndarray        # (N,478,3) metres, head frame
    residual_mm: np.ndarray      # (N,) RMS landmark residual after the fit, millimetres


def _align(src: np.ndarray, dst: np.ndarray, weights: np.ndarray, with_points: bool = True):
    """Similarity head->camera from per-frame points: returns (s, R, t) such that
    camera = s R head + t, and the pose-free points R^T (camera - t) / s."""
    s, R, t = similarity_align(src, dst, weights)          # s R src + t ~ dst (camera->head)
    pose_free = (s[:, None, None] * (src @ np.swapaxes(R, 1, 2)) + t[:, None]  # R @ p
                 if with_points else None)
    Rc = np.transpose(R, (0, 2, 1))                          # head -> camera
    sc = 1.0 / s
    tc = -sc[:, None] * np.einsum("nij,nj->ni", Rc, t)
    return sc, Rc, tc, pose_free


def solve_sequence(cam_pts: np.ndarray, neutral: np.ndarray | None = None,
                   basis: LandmarkBasis | None = None, pinned: np.ndarray | None = None,
                   rounds: int = 2, ridge: float = RIDGE,
                   stable_weights: np.ndarray | None = None,
                   fixed: np.ndarray | None = None,
                   point_mask: np.ndarray | None = None,
                   robust: bool = True) -> SolveResult:
    """Head pose and bounded expression weights for every frame.

    Args:
        cam_pts: (N,478,3) landmarks in the camera frame (see :func:`camera_points`), any
            uniform scale (pixels).
        neutral: (478,3) the actor's neutral landmarks in the head frame, metres (default:
            the model's template).
        pinned: (K,) bool, components held at 0 (e.g. tongueOut: no evidence in landmarks).
        rounds: pose/expression alternations after the first stable-point alignment.
        fixed: optional (N,K) weights of the pinned components known from elsewhere (the
            eyeLook* channels from the irises): their shapes are part of the fit's target
            and of the result, not solved.
        point_mask: optional (P,) weights of the points in the fit (0 leaves a point out,
            e.g. the irises of a basis whose eyeballs do not move).
        robust: refit the frames that misfit by more than ROBUST_FROM_MM with Cauchy point
            weights (:func:`robust_refit`); False: plain least squares everywhere.
    Returns:
        SolveResult.
    """
    basis = basis or ict_head_basis()
    neutral = basis.template if neutral is None else np.asarray(neutral, np.float64)
    X = np.asarray(cam_pts, np.float64)
    N, P, _ = X.shape
    K = basis.basis.shape[0]
    Bf = basis.flat                                            # (K, P*3)
    allw = np.ones(P) if point_mask is None else np.asarray(point_mask, np.float64)
    pw = point_weights(P) * np.repeat(allw, 3)
    # the expression is solved jointly with a small rigid correction of the pose (7 free
    # columns: translation, rotation, scale about the neutral's centre): a shape that also
    # moves the alignment points (ICT's cheekPuff swells the cheeks out to the temples) is
    # then not partly taken for head motion by the alignment
    Jr = rigid_columns(neutral, allw)                          # (7, P*3)
    # each rigid column scaled to the shapes' mean size (the columns are free, so this
    # changes nothing but the conditioning of the active-set solve)
    Jr = Jr * (np.linalg.norm(Bf, axis=1).mean() / np.linalg.norm(Jr, axis=1))[:, None]
    hi_k = np.ones(K) if pinned is None else np.where(np.asarray(pinned, bool), 0.0, 1.0)
    # the pinned components (held at 0 or known) leave the fit's columns: the solution is
    # the same, the normal equations are smaller (52 -> 43 columns with gaze and tongue out)
    free = np.flatnonzero(hi_k > 0)
    Kf = free.size
    A = np.vstack([Bf[free], Jr])
    G = (A * pw) @ A.T
    dg = np.diag(G).copy()
    G += ridge * np.diag(np.maximum(dg, 1e-6 * float(dg[:Kf].mean() if Kf else 1.0)))
    lo = np.r_[np.zeros(Kf), np.full(7, -np.inf)]
    hi = np.r_[np.ones(Kf), np.full(7, np.inf)]
    known = np.zeros((N, P * 3)) if fixed is None else (
        np.where(hi_k > 0, 0.0, np.asarray(fixed, np.float64)) @ Bf)
    sw = np.ones(len(STABLE_POINTS)) if stable_weights is None else stable_weights
    s, R, t, pf = _align(X[:, STABLE_POINTS], neutral[STABLE_POINTS], sw)
    pf = (((X - t[:, None]) @ R) / s[:, None, None])
    w = np.zeros((N, K))
    for r in range(rounds + 1):
        d = (pf - neutral).reshape(N, -1) - known
        wr = box_qp(G, (d * pw) @ A.T, lo, hi)
        if r == rounds and robust:
            wr = robust_refit(A, d, wr, pw, allw, ridge, lo, hi)
        w = np.zeros((N, K))
        w[:, free] = wr[:, :Kf]
        if r == rounds:
            pf = pf - (wr[:, Kf:] @ Jr).reshape(N, P, 3)       # the rigid drift left over
            break
        target = neutral + (w @ Bf + known).reshape(N, P, 3)
        s, R, t, _ = _align(X, target, allw, with_points=False)
        pf = (((X - t[:, None]) @ R) / s[:, None, None])
    if fixed is not None:
        w = np.where(hi_k > 0, w, np.asarray(fixed, np.float64))
    fit = neutral + (w @ Bf).reshape(N, P, 3)
    sq = ((pf - fit) ** 2).sum(-1)
    res = np.sqrt((sq * allw).sum(-1) / allw.sum()) * 1000.0
    return SolveResult(w, R, s, t, pf.astype(np.float32), res)


def robust_refit(A: np.ndarray, d: np.ndarray, wr: np.ndarray, pw: np.ndarray,
                 allw: np.ndarray, ridge: float, lo: np.ndarray, hi: np.ndarray,
                 from_mm: float | None = None, scale_mm: float | None = None,
                 iters: int | None = None) -> np.ndarray:
    """Iteratively reweighted refit of the frames that misfit.

    Args:
        A: (K',P*3) the fit's columns (expression shapes and rigid correction).
        d: (N,P*3) the targets (pose-free landmarks minus the neutral, minus known shapes).
        wr: (N,K') the plain least-squares solution.
        pw: (P*3,) per-coordinate weights of the plain fit; allw: (P,) point mask.
    Returns:
        (N,K') with the frames whose RMS residual (over the masked points) exceeds
        ``from_mm`` refitted: each point weighted by ``1 / (1 + (r / scale_mm)^2)`` (Cauchy)
        of its residual r in the previous fit, ``iters`` times, each a bounded solve with
        that frame's own normal equations. Other frames are returned as they are.
    """
    from_mm = ROBUST_FROM_MM if from_mm is None else from_mm
    scale_mm = ROBUST_SCALE_MM if scale_mm is None else scale_mm
    iters = ROBUST_ITERS if iters is None else iters
    N = d.shape[0]
    P = allw.size

    def residual_mm(rows, sol):
        e = (d[rows] - sol @ A).reshape(len(rows), P, 3)
        return np.sqrt((e ** 2).sum(-1)) * 1000.0

    r_pt = residual_mm(np.arange(N), wr)
    rms = np.sqrt((r_pt ** 2 * allw).sum(1) / max(allw.sum(), 1e-12))
    bad = np.flatnonzero(rms > from_mm)
    if bad.size == 0:
        return wr
    out = wr.copy()
    r_pt = r_pt[bad]
    pw3 = pw.reshape(P, 3)
    Kp = A.shape[0]
    Ap = A.reshape(Kp, P, 3)
    # each point's share of the normal equations, once: G_n = sum_p cw_np C_p, one GEMM
    # for all refitted frames (P x K'^2 doubles, 13 MB for the ICT basis)
    Bp = np.ascontiguousarray((Ap * np.sqrt(pw3)).transpose(1, 0, 2))   # (P,K',3)
    C = np.matmul(Bp, Bp.transpose(0, 2, 1)).reshape(P, Kp * Kp)     # 3x faster than einsum
    diag = np.arange(Kp)
    for _ in range(iters):
        cw = allw / (1.0 + (r_pt / scale_mm) ** 2)                  # (n,P) Cauchy weights
        G = (cw @ C).reshape(len(bad), Kp, Kp)
        dg = G[:, diag, diag]
        G[:, diag, diag] += ridge * np.maximum(dg, 1e-6 * dg.mean(1, keepdims=True))
        W = (cw[:, :, None] * pw3).reshape(len(bad), -1)            # (n,P*3)
        out[bad] = box_qp(G, (d[bad] * W) @ A.T, lo, hi, start=out[bad])   # warm start
        r_pt = residual_mm(bad, out[bad])
    return out


def rigid_columns(points: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """(7, P*3) first-order displacements of ``points`` (P,3) under a small similarity
    about their (weighted) centre: translation x, y, z, rotation about x, y, z, scale."""
    p = np.asarray(points, np.float64)
    w = np.ones(len(p)) if weights is None else np.asarray(weights, np.float64)
    q = p - (w[:, None] * p).sum(0) / max(w.sum(), 1e-12)
    cols = [np.broadcast_to(e, p.shape) for e in np.eye(3)]
    cols += [np.cross(e, q) for e in np.eye(3)]
    cols.append(q)
    return np.stack([c.reshape(-1) for c in cols])


def rotation_angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> np.ndarray:
    """(N,) angle in degrees of Ra^T Rb for (N,3,3) rotations."""
    tr = np.einsum("nij,nij->n", Ra, Rb)
    return np.degrees(np.arccos(np.clip((tr - 1) / 2, -1.0, 1.0)))


def solve_chunked(lmk_px: np.ndarray, chunk: int = 2048, each=None, **kw):
    """:func:`solve_sequence` on MediaPipe image landmarks (N,478,3), ``chunk`` frames at a
    time, so the float64 work arrays stay small whatever the clip length (frames are
    independent given the neutral). With ``each`` (a function of one chunk's SolveResult
    returning a tuple of per-frame arrays), only those arrays are kept and returned,
    concatenated: a pass that needs a few numbers per frame holds no pose-free landmarks."""
    N = lmk_px.shape[0]
    fixed = kw.pop("fixed", None)
    parts = []
    for a in range(0, max(N, 1), chunk):
        r = solve_sequence(camera_points(lmk_px[a:a + chunk]), **kw,
                           fixed=None if fixed is None else fixed[a:a + chunk])
        parts.append(r if each is None else each(r))
    if each is not None:
        return tuple(np.concatenate(x) for x in zip(*parts))
    if len(parts) == 1:
        return parts[0]
    cat = lambda k: np.concatenate([getattr(p, k) for p in parts])  # noqa: E731
    return SolveResult(cat("weights"), cat("rotation"), cat("scale"), cat("translation"),
                       cat("pose_free"), cat("residual_mm"))
