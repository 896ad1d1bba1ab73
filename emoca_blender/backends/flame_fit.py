"""Backend ``flame-fit``: FLAME fitted to MediaPipe landmarks, in torch (GPU when present).

MediaPipe tracks the clip (through :class:`MediaPipeBackend`'s public ``track``); then one
identity for the whole clip and, per frame, expression, jaw, neck, global rotation, eye
rotations and a weak-perspective camera are fitted to the 105 MediaPipe landmarks embedded
in FLAME (``mediapipe_landmark_embedding.npz``) and the two iris centres, by Levenberg-Marquardt
(exact Jacobians, block-tridiagonal normal equations: :func:`fit_landmarks`) on

    sum_t sum_l ||proj(FLAME_t)_l - x_tl||^2 / sigma^2           (landmarks, pixels)
    + |beta|^2 + w_e sum_t |e_t|^2 + w_jaw |jaw_t|^2 + w_neck |neck_t|^2   (priors: FLAME's
                                                                   coefficients are N(0,1))
    + w_s sum_t |e_t - e_t-1|^2 + |pose_t - pose_t-1|^2 ...        (temporal smoothness)
    + w_size (G beta)^2                   (the identity keeps the head's in-plane size)
    + sum_t log det(J_et^T J_et / w_e + I)    (the expression's Occam factor)

The last two terms undo the bias of a joint maximum a posteriori over one identity and
thousands of per-frame expression coefficients: a smaller head seen through a larger camera
scale makes every frame's expression cheaper under its prior, so the plain joint MAP shrinks
the head (on the synthetic bench by 2.4x, 19 mm face error). Weak perspective cannot see the
head's absolute size, so the identity's in-plane size change ``G beta`` (:func:`size_gradient`)
is held at 0; the log-determinant (J_et: the frame's landmark Jacobian in its expression) is
what integrating the expression out (Laplace) adds to the cost, and it grows with the camera
scale as the expression prior falls (applied to the log camera scale, eigenvalues refreshed
every iteration).

Camera: ``pixel = s * (X, -Y) + (tx, ty)`` of the posed head in OpenGL camera axes; the
Capture's head rotation is FLAME's global rotation composed with the neck (the Capture has
no neck curve), its translation a pinhole reading of the weak-perspective scale (focal
length = the image's larger side). ARKit curves: FLAME's fitted face (identity removed) at the
embedded landmarks -> the open head model's landmark-space ARKit basis -> the shared bounded
least-squares solve (:func:`landmark_solve.box_qp`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..models import flame as F
from ..errors import BadInput
from . import Tracked

IRIS = (473, 468)          # MediaPipe iris centres: subject's left, right


@dataclass
class FitSettings:
    """Weights are in units of the landmark term, whose residuals are pixels / ``sigma_px``
    (so every prior below is a Gaussian with variance 1 / weight, in its own unit)."""

    n_shape: int = 100
    n_expr: int = 50
    sigma_px: float = 1.0          # landmark noise, pixels
    w_shape: float = 1.0           # identity prior (FLAME's coefficients are N(0,1))
    w_expr: float = 1.0            # expression prior (x N(0,1))
    w_jaw: float = 10.0            # per radian^2
    w_neck: float = 1e3            # per radian^2 (the neck and the global rotation overlap)
    w_eye_rot: float = 10.0        # per radian^2 (a pupil point cannot see the eye's roll)
    w_eyes: float = 1.0            # weight of the pupil points against a landmark
    w_size: float = 1e8            # per (relative in-plane size change by the identity)^2:
    #                                weak perspective cannot see the head's absolute size (the
    #                                camera scale absorbs it), so it is held at the template's
    occam_expr: bool = True        # the expression's Occam factor (module docstring)
    smooth_expr: float = 4.0       # temporal smoothness, per unit coefficient change^2
    smooth_pose: float = 400.0     # per radian change^2 (global, neck, jaw, eyes)
    smooth_scale: float = 0.0      # per (relative scale change)^2
    smooth_shift: float = 0.0      # per pixel^2 of camera shift change
    iters: int = 30                # Levenberg-Marquardt iterations (all parameters)
    rigid_iters: int = 8           # LM iterations of the rigid stage
    tol: float = 1e-6              # stop when the cost falls by less than this fraction
    device: str = "auto"


@dataclass
class FitResult:
    shape: np.ndarray              # (S,)
    expression: np.ndarray         # (N,E)
    pose: np.ndarray               # (N,5,3) global, neck, jaw, left eye, right eye
    scale: np.ndarray              # (N,) pixels per metre
    trans: np.ndarray              # (N,2) pixels
    residual_px: np.ndarray        # (N,) RMS landmark residual (2D distance)
    info: dict = field(default_factory=dict)


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BadInput("device 'cuda' asked for, but torch sees no CUDA GPU; use --device cpu")
    return device


def eye_vertices(m: F.FlameModel, masks: dict | None = None) -> np.ndarray:
    """(2,) vertex at the front of the subject's left and right eyeball (pupil centre)."""
    out = []
    for j, name in ((3, "left_eyeball"), (4, "right_eyeball")):
        if masks is not None and name in masks:
            ids = masks[name]
        else:
            ids = np.flatnonzero(m.lbs_weights[:, j] >= 0.5 * m.lbs_weights[:, j].max())
        out.append(int(ids[np.argmax(m.v_template[ids, 2])]))
    return np.array(out)


class LandmarkModel:
    """FLAME at a few embedded points (landmarks and pupils), projected weak-perspective,
    with exact Jacobians; torch tensors on ``device``, float64.

    Per-frame parameters ``x`` (N,P), P = E + 18: expression (E), then global, neck, jaw,
    left eye, right eye axis-angles (15), log scale (pixels per metre) and the 2D shift
    (pixels); one identity ``beta`` (S,) for the clip. A point X (FLAME's posed model axes:
    +X subject's left, +Y up, +Z towards the camera) lands at ``exp(logs) * (X, -Y) + shift``
    (pixels, x right, y down).
    """

    def __init__(self, m: F.FlameModel, emb: F.Embedding, S: int, E: int, eye_ids=None,
                 device: str = "cpu"):
        import torch

        self.S, self.E, self.P = S, E, E + 18
        self.dev, self.dt = device, torch.float64
        tri = np.asarray(m.faces)[emb.face_idx]                             # (L,3)
        bary = np.asarray(emb.bary, np.float64)
        if eye_ids is not None:
            e = np.asarray(eye_ids, np.int64)
            tri = np.concatenate([tri, np.stack([e, e, e], 1)])
            bary = np.concatenate([bary, np.tile([1.0, 0.0, 0.0], (len(e), 1))])
        ids, inv = np.unique(tri.ravel(), return_inverse=True)
        self.n_points = len(tri)
        self.tf = F.TorchFlame(m, S, E, vertex_ids=ids, device=device, dtype=self.dt)
        self.tri = torch.tensor(inv.reshape(tri.shape), device=device)
        self.bary = torch.tensor(bary, dtype=self.dt, device=device)

    # -------------------------------------------------------------- forward
    def _skin(self, x, beta):
        import torch

        tf, N, E = self.tf, x.shape[0], self.E
        coeffs = torch.cat([beta[None].expand(N, self.S), x[:, :E]], 1)
        pose = x[:, E:E + 15].reshape(N, 5, 3)
        v_shaped = tf.v_template[None] + torch.einsum("bc,vkc->bvk", coeffs, tf.dirs)
        joints = tf.J_template[None] + torch.einsum("jkc,bc->bjk", tf.J_dirs, coeffs)
        R = F.batch_rodrigues(pose.reshape(-1, 3)).view(N, 5, 3, 3)
        eye = torch.eye(3, dtype=x.dtype, device=x.device)
        v_posed = v_shaped + torch.matmul((R[:, 1:] - eye).reshape(N, -1),
                                          tf.posedirs).view(N, -1, 3)
        _, A = F.batch_rigid_transform(R, joints, tf.parents)
        T = torch.einsum("vj,bjik->bvik", tf.lbs_weights, A)
        v = torch.einsum("bvik,bvk->bvi", T[..., :3, :3], v_posed) + T[..., :3, 3]
        return v, A

    def _points(self, v):
        return (v[:, self.tri] * self.bary[None, :, :, None]).sum(2)       # (N,L,3)

    def project(self, x, beta):
        """(N,L,2) pixels of the embedded points (pupils last)."""
        import torch

        v, _ = self._skin(x, beta)
        p = self._points(v)
        s = torch.exp(x[:, self.E + 15])[:, None]
        return torch.stack([s * p[..., 0], -s * p[..., 1]], -1) + x[:, None, self.E + 16:]

    # -------------------------------------------------------------- Jacobians
    def jacobians(self, x, beta, coeffs: bool = True):
        """Projections (N,L,2) and their exact Jacobians: d/d coefficients (N,L,2,S+E)
        (the posed mesh is affine in the coefficients at a fixed pose; None when
        ``coeffs`` is False) and d/d (five rotations, log scale, shift) (N,L,2,18). Only the
        joint transforms (N,J,3,4) and the pose-corrective features are differentiated by
        forward-mode autodiff; the rest is closed form, so the cost is a few small matmuls."""
        import torch
        from torch.func import jvp, vmap

        N, E, S = x.shape[0], self.E, self.S
        tf = self.tf
        x, beta = x.detach(), beta.detach()
        J = len(tf.parents)
        coef = torch.cat([beta[None].expand(N, S), x[:, :E]], 1)
        v_shaped = tf.v_template[None] + torch.einsum("bc,vkc->bvk", coef, tf.dirs)
        joints = tf.J_template[None] + torch.einsum("jkc,bc->bjk", tf.J_dirs, coef)
        eye3 = torch.eye(3, dtype=x.dtype, device=x.device)

        def pose_parts(q):                       # (N,15) -> A (N,J,3,4), features (N,9(J-1))
            R = F.batch_rodrigues(q.reshape(-1, 3)).view(N, J, 3, 3)
            _, A = F.batch_rigid_transform(R, joints, tf.parents)
            return A[..., :3, :], (R[:, 1:] - eye3).reshape(N, -1)

        q0 = x[:, E:E + 15].contiguous()
        tang = torch.eye(15, dtype=x.dtype, device=x.device)[:, None, :].expand(15, N, 15)
        (A, feat), (dA, dfeat) = vmap(lambda t: jvp(pose_parts, (q0,), (t.contiguous(),)),
                                      out_dims=(None, 0))(tang)
        # A (N,J,3,4); dA (15,N,J,3,4); dfeat (15,N,P9)
        npd = tf.posedirs.shape[0]
        pd = tf.posedirs.view(npd, -1, 3)                                     # (P9,V',3)
        v_posed = v_shaped + torch.matmul(feat, tf.posedirs).view(N, -1, 3)
        W = tf.lbs_weights                                                    # (V',J)
        Rg = A[..., :3]                                                       # (N,J,3,3)
        TR = torch.einsum("vj,njab->nvab", W, Rg)                             # (N,V',3,3)
        Tt = torch.einsum("vj,nja->nva", W, A[..., 3])                        # (N,V',3)
        v = torch.einsum("nvab,nvb->nva", TR, v_posed) + Tt
        # d v / d pose = sum_j w_j dA_j [v_posed; 1] + TR d v_posed
        dWA = torch.einsum("vj,qnjab->qnvab", W, dA)                          # (15,N,V',3,4)
        dv = torch.einsum("qnvab,nvb->qnva", dWA[..., :3], v_posed) + dWA[..., 3]
        dvp = torch.matmul(dfeat, tf.posedirs).view(15, N, -1, 3)
        dv = dv + torch.einsum("nvab,qnvb->qnva", TR, dvp)                    # (15,N,V',3)
        del pd

        b = self.bary
        p = (v[:, self.tri] * b[None, :, :, None]).sum(2)                    # (N,L,3)
        dp = (dv[:, :, self.tri] * b[None, None, :, :, None]).sum(3)          # (15,N,L,3)
        s = torch.exp(x[:, E + 15])
        sx = s[:, None]
        proj = torch.stack([sx * p[..., 0], -sx * p[..., 1]], -1) + x[:, None, E + 16:]
        Jq = torch.zeros(N, p.shape[1], 2, 18, dtype=x.dtype, device=x.device)
        Jq[..., 0, :15] = (sx[..., None] * dp[..., 0].permute(1, 2, 0))
        Jq[..., 1, :15] = -(sx[..., None] * dp[..., 1].permute(1, 2, 0))
        Jq[..., 15] = proj - x[:, None, E + 16:]
        Jq[..., 0, 16] = 1.0
        Jq[..., 1, 17] = 1.0
        if not coeffs:
            return proj, None, Jq
        # coefficients: dv = TR dirs + sum_j w_j (dposed_j - Rg_j dJ_j)
        dJ = tf.J_dirs                                                        # (J,3,C)
        dposed = [dJ[0].expand(N, *dJ[0].shape)]
        for j in range(1, J):
            q = tf.parents[j]
            dposed.append(dposed[q] + torch.matmul(Rg[:, q], dJ[j] - dJ[q]))
        K = torch.stack(dposed, 1) - torch.matmul(Rg, dJ[None])               # (N,J,3,C)
        C = dJ.shape[-1]
        Wl = (W[self.tri] * b[..., None]).sum(1)                              # (L,J)
        TRc = TR[:, self.tri] * b[None, :, :, None, None]                     # (N,L,3,3,3)
        Dl = tf.dirs[self.tri]                                                # (L,3,3,C)
        L = p.shape[1]
        # sum over corner k and b: (L, N*3, 9) @ (L, 9, C)
        lhs = TRc.permute(1, 0, 3, 2, 4).reshape(L, N * 3, 9)
        dpc = torch.matmul(lhs, Dl.reshape(L, 9, C)).view(L, N, 3, C).permute(1, 0, 2, 3)
        dpc = dpc + torch.matmul(Wl, K.permute(1, 0, 2, 3).reshape(J, -1)).view(L, N, 3, C) \
            .permute(1, 0, 2, 3)
        Jc = torch.stack([sx[..., None] * dpc[:, :, 0], -sx[..., None] * dpc[:, :, 1]], 2)
        return proj, Jc, Jq


def _block_tridiag_solve(D: np.ndarray, b: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Solve the symmetric positive definite block-tridiagonal system with diagonal blocks
    ``D`` (N,P,P) and off-diagonal blocks ``-diag(b)`` (b: (P,), the same between every pair
    of consecutive frames) for right-hand sides ``R`` (N,P,K): block LDL^T, O(N P^3)."""
    from scipy.linalg import cho_factor, cho_solve

    N, P, _ = D.shape
    Y = np.empty_like(R)
    facs = []
    Sinv_prev = None
    for t in range(N):
        S = D[t] if t == 0 else D[t] - b[:, None] * Sinv_prev * b[None, :]
        f = cho_factor(S)
        facs.append(f)
        Y[t] = R[t] if t == 0 else R[t] + b[:, None] * Z
        Z = cho_solve(f, Y[t])                     # S_t^-1 Y_t, reused by the next frame
        if t + 1 < N:
            Sinv_prev = cho_solve(f, np.eye(P))
    X = np.empty_like(R)
    X[N - 1] = Z
    for t in range(N - 2, -1, -1):
        X[t] = cho_solve(facs[t], Y[t] + b[:, None] * X[t + 1])
    return X


def _path_laplacian_apply(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """sum_t w (x_t - x_t-1)^2 / 2 gradient: (N,P) -> (N,P)."""
    g = np.zeros_like(x)
    d = (x[1:] - x[:-1]) * w
    g[1:] += d
    g[:-1] -= d
    return g


def size_gradient(m: F.FlameModel, emb: F.Embedding, S: int) -> np.ndarray:
    """(1,S) G such that ``G @ beta`` is the relative in-plane (x, y: the image plane of a
    frontal view) size change the identity ``beta`` makes to the embedded landmarks: the
    least-squares scale of the displaced landmark set about its centre, linearised at the
    template. The weak-perspective camera scale absorbs it exactly, so the fit holds it at 0."""
    p0 = emb.points(m.v_template[None], m.faces)[0][:, :2]                # (L,2)
    pc = p0 - p0.mean(0)
    dirs = np.asarray(m.shapedirs[:, :2, :S], np.float64)                 # (V,2,S)
    tri = np.asarray(m.faces)[emb.face_idx]                               # (L,3)
    D = np.einsum("lk,lkdc->ldc", np.asarray(emb.bary, np.float64), dirs[tri])   # (L,2,S)
    D = D - D.mean(0)
    return (np.einsum("ld,ldc->c", pc, D) / (pc ** 2).sum())[None]


def fit_landmarks(m: F.FlameModel, emb: F.Embedding, lmk: np.ndarray,
                  iris: np.ndarray | None = None, eye_ids: np.ndarray | None = None,
                  init_rot: np.ndarray | None = None, settings: FitSettings | None = None,
                  progress=None, cancel=None, init: FitResult | None = None) -> FitResult:
    """Fit FLAME to 2D landmarks of a clip (maximum a posteriori, Levenberg-Marquardt).

    The unknowns are one identity and, per frame, expression, the five joint rotations and
    a weak-perspective camera. The cost

        sum_t sum_l ||proj_tl - x_tl||^2 / sigma^2  (+ w_eyes x the pupils)
        + w_shape |beta|^2 + sum_t (w_expr |e_t|^2 + w_jaw |jaw_t|^2 + w_neck |neck_t|^2
                                    + w_eye_rot |eyes_t|^2)
        + sum_t smooth_expr |e_t - e_t-1|^2 + smooth_pose |pose_t - pose_t-1|^2 (+ camera)
        + w_size |G beta|^2 + sum_t log det(J_et^T J_et / w_expr + I)   (module docstring)

    is a sum of squares; its Gauss-Newton normal matrix is block tridiagonal in the frames
    plus a dense identity border, solved exactly each iteration (banded Cholesky of the
    frames, Schur complement for the identity): a rigid stage (rotation and camera), then
    everything. Jacobians are exact (:class:`LandmarkModel`), in torch on ``settings.device``.

    Args:
        lmk: (N,L,2) pixels (x right, y down) of the embedded landmarks, in embedding order.
        iris: optional (N,2,2) pixels of the left/right pupil centres (``eye_ids`` vertices).
        init_rot: optional (N,3) head rotation to start from (camera axes, OpenGL).
        init: optional FitResult to start from (e.g. the truth, in tests: the fit must stay
            there); skips the rigid stage.
    Returns:
        FitResult (``info``: iterations, final cost, seconds).
    """
    import time

    import torch
    from scipy.linalg import cho_factor, cho_solve

    t_start = time.perf_counter()
    st = settings or FitSettings()
    dev = pick_device(st.device)
    S, E = min(st.n_shape, m.n_shape), min(st.n_expr, m.n_expr)
    lmk = np.asarray(lmk, np.float64)
    N, L, _ = lmk.shape
    use_iris = iris is not None and eye_ids is not None
    lm = LandmarkModel(m, emb, S, E, eye_ids if use_iris else None, device=dev)
    P = lm.P
    obs = lmk if not use_iris else np.concatenate([lmk, np.asarray(iris, np.float64)], 1)
    wpt = np.ones(obs.shape[1])
    if use_iris:
        wpt[L:] = np.sqrt(st.w_eyes)
    wpt = np.repeat(wpt[None, :, None] / st.sigma_px, N, 0)              # (N,L',1)
    # landmarks MediaPipe did not give (NaN) carry no weight
    bad = ~np.isfinite(obs)
    wpt = np.broadcast_to(wpt, obs.shape).copy()
    wpt[bad] = 0.0
    obs = np.where(bad, 0.0, obs)
    obs_t = torch.tensor(obs, dtype=lm.dt, device=dev)
    wpt_t = torch.tensor(wpt, dtype=lm.dt, device=dev)

    # priors and smoothness per parameter (expression, 5 rotations, log scale, shift)
    prior = np.zeros(P)
    prior[:E] = st.w_expr
    prior[E + 3:E + 6] = st.w_neck
    prior[E + 6:E + 9] = st.w_jaw
    prior[E + 9:E + 15] = st.w_eye_rot
    smooth = np.zeros(P)
    smooth[:E] = st.smooth_expr
    smooth[E:E + 15] = st.smooth_pose
    smooth[E + 15] = st.smooth_scale
    smooth[E + 16:] = st.smooth_shift

    # initial camera: the template's landmarks (x, -y) scaled onto the observations
    v0, _ = m.forward()
    p0 = emb.points(v0, m.faces)[0][:, :2] * np.array([1.0, -1.0])
    s0 = np.nanmean(np.ptp(lmk, axis=1), 0).mean() / np.ptp(p0, axis=0).mean()
    x = np.zeros((N, P))
    if init_rot is not None:
        x[:, E:E + 3] = np.asarray(init_rot, np.float64)
    x[:, E + 15] = np.log(s0)
    x[:, E + 16:] = np.nanmean(lmk, 1) - s0 * p0.mean(0)
    g = size_gradient(m, emb, S)         # the identity's in-plane size change: g @ beta
    beta = np.zeros(S)
    if init is not None:
        x[:, :E] = init.expression[:, :E]
        x[:, E:E + 15] = np.asarray(init.pose).reshape(N, 15)
        x[:, E + 15] = np.log(init.scale)
        x[:, E + 16:] = init.trans
        beta = np.asarray(init.shape, np.float64)[:S].copy()
    tt = lambda a: torch.tensor(a, dtype=lm.dt, device=dev)  # noqa: E731

    def residual(x, beta):
        proj = lm.project(tt(x), tt(beta))
        return ((proj - obs_t) * wpt_t).cpu().numpy()

    def cost_of(r, x, beta):
        d = x[1:] - x[:-1]
        return float((r ** 2).sum() + (prior * x ** 2).sum() + st.w_shape * (beta ** 2).sum()
                     + st.w_size * float(((g @ beta) ** 2).sum()) + (smooth * d ** 2).sum()
                     + occam_cost(x))

    iters_done = [0, 0]
    occam = {"u0": None, "ls0": None}   # expression Occam factor, frozen per iteration

    def occam_cost(x):
        if occam["u0"] is None:
            return 0.0
        u = np.exp(2 * (x[:, E + 15] - occam["ls0"]))[:, None] * occam["u0"]
        return float(np.log1p(u).sum())

    def lm_stage(x, beta, active_p, active_b, iters, stage):
        lam = 1e-6
        r = residual(x, beta)
        cost = cost_of(r, x, beta)
        ap = active_p.astype(np.float64)
        nb = int(active_b)
        for it in range(iters):
            if cancel is not None and cancel():
                break
            need_c = bool(nb or ap[:E].any())
            proj, Jc, Jq = lm.jacobians(tt(x), tt(beta), coeffs=need_c)
            w = wpt_t[..., None]
            if Jc is None:
                Jc = Jq.new_zeros(Jq.shape[:-1] + (S + E,))
            Jp = torch.cat([Jc[..., S:], Jq], -1) * w                       # (N,L,2,P)
            Jb = Jc[..., :S] * w                                             # (N,L,2,S)
            rr = ((proj - obs_t) * wpt_t)
            Jp = Jp.reshape(N, -1, P) * tt(ap)
            Jb = Jb.reshape(N, Jp.shape[1], S)
            rr = rr.reshape(N, -1)
            if st.occam_expr and ap[:E].any() and ap[E + 15] and st.w_expr > 0:
                Je = Jp[..., :E]
                lam_e = torch.linalg.eigvalsh(torch.einsum("nri,nrj->nij", Je, Je))
                occam["u0"] = np.clip(lam_e.cpu().numpy(), 0, None) / st.w_expr
                occam["ls0"] = x[:, E + 15].copy()
                cost = cost_of(residual(x, beta), x, beta)
            Hpp = torch.einsum("nri,nrj->nij", Jp, Jp).cpu().numpy()
            gp = torch.einsum("nri,nr->ni", Jp, rr).cpu().numpy()
            if nb:
                Hpb = torch.einsum("nri,nrj->nij", Jp, Jb).cpu().numpy()
                Hbb = torch.einsum("nri,nrj->ij", Jb, Jb).cpu().numpy()
                gb = torch.einsum("nri,nr->i", Jb, rr).cpu().numpy()
                Hbb = Hbb + st.w_shape * np.eye(S) + st.w_size * g.T @ g
                gb = gb + st.w_shape * beta + st.w_size * g.T @ (g @ beta)
            # priors and smoothness (frozen parameters: identity rows, zero gradient)
            pr = prior * ap + (1 - ap)
            sm = smooth * ap
            gp = (gp + prior * x + _path_laplacian_apply(x, smooth)) * ap
            Hpp[:, np.arange(P), np.arange(P)] += pr
            deg = np.full(N, 2.0)
            deg[0] = deg[-1] = 1.0
            if N == 1:
                deg[:] = 0.0
            Hpp[:, np.arange(P), np.arange(P)] += deg[:, None] * sm
            if occam["u0"] is not None and ap[E + 15]:     # d/d log scale of log(1 + u)
                u = occam["u0"]
                gp[:, E + 15] += (u / (1 + u)).sum(1)        # (half gradient, as above)
                Hpp[:, E + 15, E + 15] += (2 * u / (1 + u) ** 2).sum(1)
            dg = np.diagonal(Hpp, axis1=1, axis2=2).copy()
            while True:
                Dl = Hpp.copy()
                Dl[:, np.arange(P), np.arange(P)] += lam * (dg + 1e-9)
                rhs = gp[..., None] if not nb else np.concatenate([gp[..., None], Hpb], 2)
                try:
                    X = _block_tridiag_solve(Dl, sm, rhs)
                    if nb:
                        Sb = Hbb + lam * np.diag(np.diag(Hbb) + 1e-9) \
                            - np.einsum("npi,npj->ij", Hpb, X[..., 1:])
                        db = cho_solve(cho_factor(Sb),
                                       -gb + np.einsum("npi,np->i", Hpb, X[..., 0]))
                        dx = -(X[..., 0] + X[..., 1:] @ db)
                    else:
                        db = np.zeros(S)
                        dx = -X[..., 0]
                except np.linalg.LinAlgError:
                    lam *= 10
                    if lam > 1e8:
                        raise
                    continue
                xn, bn = x + dx.reshape(N, P), beta + db
                rn = residual(xn, bn)
                cn = cost_of(rn, xn, bn)
                if np.isfinite(cn) and cn <= cost:
                    lam = max(lam / 10, 1e-12)
                    break
                lam *= 10
                if lam > 1e8:
                    xn, bn, cn = x, beta, cost
                    break
            iters_done[stage] += 1
            done = cost - cn <= st.tol * max(cost, 1e-30)
            x, beta, cost = xn, bn, cn
            if done:
                break
        return x, beta, cost

    rigid = np.zeros(P, bool)
    rigid[E:E + 3] = True
    rigid[E + 15:] = True
    if init is None:
        x, beta, _ = lm_stage(x, beta, rigid, False, st.rigid_iters, 0)
    if progress is not None:
        progress.message("flame-fit: rigid pose done")
    x, beta, cost = lm_stage(x, beta, np.ones(P, bool), S > 0, st.iters, 1)
    proj = lm.project(tt(x), tt(beta)).cpu().numpy()[:, :L]
    d2 = ((proj - lmk) ** 2).sum(-1)
    res = np.sqrt(np.nanmean(np.where(np.isfinite(d2), d2, np.nan), 1))
    pose = x[:, E:E + 15].reshape(N, 5, 3)
    return FitResult(shape=beta, expression=x[:, :E].copy(), pose=pose.copy(),
                     scale=np.exp(x[:, E + 15]), trans=x[:, E + 16:].copy(), residual_px=res,
                     info={"iterations": iters_done, "cost": cost, "device": dev,
                           "seconds": round(time.perf_counter() - t_start, 3)})


# ---------------------------------------------------------------------------------------------
# FLAME -> ARKit through landmark space
# ---------------------------------------------------------------------------------------------
def arkit_from_flame(m: F.FlameModel, emb: F.Embedding, shape, expression, jaw):
    """(N,52) ARKit weights: FLAME's expression + jaw at the embedded landmarks (identity
    removed, head frame) solved against the open head model's ARKit basis at the same
    MediaPipe landmarks, scaled to the open head's size, with the shared bounded solve."""
    from ..capture import landmark_solve as ls
    from ..arkit import INDEX

    N = expression.shape[0]
    pose = np.zeros((N, 5, 3))
    pose[:, 2] = jaw
    b = np.broadcast_to(np.asarray(shape)[None], (N, len(shape)))
    v, _ = m.forward(b, expression, pose)
    v0, _ = m.forward(np.asarray(shape)[None], None, None)
    d = emb.points(v, m.faces) - emb.points(v0, m.faces)                 # (N,L,3)
    basis = ls.open_head_basis()
    idx = emb.mediapipe_idx
    t = basis.template[idx]
    p0 = emb.points(v0, m.faces)[0]
    scale = np.sqrt(((t - t.mean(0)) ** 2).sum() / ((p0 - p0.mean(0)) ** 2).sum())
    B = basis.basis[:, idx].reshape(basis.basis.shape[0], -1)            # (K, L*3)
    G = B @ B.T
    G += ls.RIDGE * float(np.mean(np.diag(G))) * np.eye(len(G))
    K = G.shape[0]
    hi = np.ones(K)
    hi[INDEX["tongueOut"]] = 0.0
    w = ls.box_qp(G, (d.reshape(N, -1) * scale) @ B.T, np.zeros(K), hi)
    return np.clip(w, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------
class FlameFitBackend:
    name = "flame-fit"

    def __init__(self, face_index: int = 0, neutral_frame: int = -1, flame_dir=None,
                 device: str = "auto", settings: FitSettings | None = None):
        flame_dir = flame_dir or os.environ.get("EMOCA_BLENDER_FLAME_DIR")
        if not flame_dir:
            raise BadInput("the flame-fit backend needs your FLAME download: pass --flame-dir "
                           "(or set EMOCA_BLENDER_FLAME_DIR) to the folder holding "
                           "generic_model.pkl and mediapipe_landmark_embedding.npz")
        try:
            self.assets = F.load_assets(flame_dir, need=(F.MEDIAPIPE_EMBEDDING,))
        except F.FlameError as e:
            raise BadInput(str(e)) from None
        self.flame_dir = Path(flame_dir)
        self.face_index, self.neutral_frame = int(face_index), int(neutral_frame)
        self.settings = settings or FitSettings(device=device)
        self.head_model = self.assets.model.model_id()

    def model_files(self) -> dict[str, str]:
        from ..models.mediapipe_topology import task_path

        m = self.assets.model
        files = {"flame_model": m.source, "face_landmarker": str(task_path())}
        emb = Path(m.source).parent / F.MEDIAPIPE_EMBEDDING
        if emb.is_file():
            files["mediapipe_embedding"] = str(emb)
        return files

    def track(self, frames, n_hint, fps, width, height, num_faces=0, progress=None,
              cancel=None, **extra) -> Tracked:
        from .mediapipe_backend import MediaPipeBackend

        mp = MediaPipeBackend(face_index=self.face_index, neutral_frame=self.neutral_frame)
        tr = mp.track(frames, n_hint, fps, width, height, num_faces=num_faces,
                      progress=progress, cancel=cancel, **extra)
        m, emb = self.assets.model, self.assets.mediapipe
        N = tr.found.shape[0]
        Fi = np.flatnonzero(tr.found)
        a = dict(tr.arrays)
        if Fi.size == 0:
            return tr
        if progress is not None:
            progress.message(f"flame-fit: fitting FLAME to {Fi.size} frames "
                             f"({pick_device(self.settings.device)})")
        lm = np.asarray(a["landmarks2d"])[Fi]
        eye_ids = eye_vertices(m, self.assets.masks)
        r = fit_landmarks(m, emb, lm[:, emb.mediapipe_idx], iris=lm[:, list(IRIS)],
                          eye_ids=eye_ids, init_rot=np.asarray(a["head_rotation"])[Fi],
                          settings=self.settings)
        from scipy.spatial.transform import Rotation

        Rg = Rotation.from_rotvec(r.pose[:, 0]) * Rotation.from_rotvec(r.pose[:, 1])
        E = r.expression.shape[1]
        out = lambda shape: np.zeros((N,) + shape, np.float32)  # noqa: E731
        expr, head, jaw, eyes, tra = out((E,)), out((3,)), out((3,)), out((2, 3)), out((3,))
        expr[Fi], head[Fi], jaw[Fi], eyes[Fi] = (r.expression, Rg.as_rotvec(), r.pose[:, 2],
                                                 r.pose[:, 3:5])
        focal = float(max(width, height))
        tra[Fi, 0] = (r.trans[:, 0] - width / 2) / r.scale
        tra[Fi, 1] = -(r.trans[:, 1] - height / 2) / r.scale
        tra[Fi, 2] = -focal / r.scale
        ark = np.array(a["arkit"], np.float32)
        ark[Fi] = arkit_from_flame(m, emb, r.shape, r.expression, r.pose[:, 2])
        from ..arkit import INDEX

        a.update(expression=expr, head_rotation=head, jaw=jaw, eyes=eyes,
                 head_translation=tra, arkit=ark)
        a["blinks"] = np.stack([ark[:, INDEX["eyeBlinkLeft"]], ark[:, INDEX["eyeBlinkRight"]]], 1)
        info = dict(tr.info)
        info["flame_fit"] = {"model": self.head_model, "version": m.version,
                             "n_shape": int(r.shape.size), "n_expr": int(E),
                             "residual_px_median": round(float(np.median(r.residual_px)), 3)}
        return Tracked(found=tr.found, arrays=a, names={"expression": m.expression_names(E)},
                       shape=r.shape.astype(np.float32), head_model=self.head_model, info=info)
