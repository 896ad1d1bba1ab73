"""Backend ``flame-fit``: FLAME fitted to MediaPipe landmarks, in torch (GPU when present).

MediaPipe tracks the clip (through :class:`MediaPipeBackend`'s public ``track``); then one
identity for the whole clip and, per frame, expression, jaw, neck, global rotation, eye
rotations and a weak-perspective camera are fitted to the 105 MediaPipe landmarks embedded
in FLAME (``mediapipe_landmark_embedding.npz``) and the two iris centres, by L-BFGS on

    sum_t sum_l ||proj(FLAME_t)_l - x_tl||^2 / sigma^2           (landmarks, pixels)
    + |beta|^2 + w_e sum_t |e_t|^2 + w_jaw |jaw_t|^2 + w_neck |neck_t|^2   (priors: FLAME's
                                                                   coefficients are N(0,1))
    + w_s sum_t |e_t - e_t-1|^2 + |pose_t - pose_t-1|^2 ...        (temporal smoothness)

Camera: ``pixel = s * (X, -Y) + (tx, ty)`` of the posed head in OpenGL camera axes; the
Capture's head rotation is FLAME's global rotation composed with the neck (the Capture has
no neck curve), its translation a pinhole reading of the weak-perspective scale (focal
length = the image's larger side). ARKit curves: FLAME's fitted face (identity removed) at the
embedded landmarks -> the open head model's landmark-space ARKit basis -> the shared bounded
least-squares solve (:func:`landmark_solve.box_qp`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import flame as F
from ..errors import BadInput
from . import Tracked

IRIS = (473, 468)          # MediaPipe iris centres: subject's left, right


@dataclass
class FitSettings:
    n_shape: int = 100
    n_expr: int = 50
    sigma_px: float = 1.0          # landmark noise, pixels
    w_expr: float = 1.0            # prior weight on expression (x N(0,1))
    w_jaw: float = 10.0
    w_neck: float = 1e3
    w_eyes: float = 1.0
    smooth_expr: float = 4.0       # temporal smoothness (per unit coefficient change)
    smooth_pose: float = 400.0     # per radian change
    iters: int = 300
    device: str = "auto"


@dataclass
class FitResult:
    shape: np.ndarray              # (S,)
    expression: np.ndarray         # (N,E)
    pose: np.ndarray               # (N,5,3) global, neck, jaw, left eye, right eye
    scale: np.ndarray              # (N,) pixels per metre
    trans: np.ndarray              # (N,2) pixels
    residual_px: np.ndarray        # (N,) RMS landmark residual


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


def fit_landmarks(m: F.FlameModel, emb: F.Embedding, lmk: np.ndarray,
                  iris: np.ndarray | None = None, eye_ids: np.ndarray | None = None,
                  init_rot: np.ndarray | None = None, settings: FitSettings | None = None,
                  progress=None) -> FitResult:
    """Fit FLAME to 2D landmarks of a clip.

    Args:
        lmk: (N,L,2) pixels (x right, y down) of the embedded landmarks, in embedding order.
        iris: optional (N,2,2) pixels of the left/right pupil centres (``eye_ids`` vertices).
        init_rot: optional (N,3) head rotation to start from (camera axes, OpenGL).
    Returns:
        FitResult.
    """
    import torch

    st = settings or FitSettings()
    dev = pick_device(st.device)
    dt = torch.float64 if dev == "cpu" else torch.float32
    S, E = min(st.n_shape, m.n_shape), min(st.n_expr, m.n_expr)
    lmk = np.asarray(lmk, np.float64)
    N, L, _ = lmk.shape
    tri = m.faces[emb.face_idx]                                          # (L,3)
    ids = np.unique(np.concatenate([tri.ravel()] + ([] if eye_ids is None else [eye_ids])))
    pos = {int(v): k for k, v in enumerate(ids)}
    tri_l = torch.tensor(np.vectorize(pos.get)(tri), device=dev)
    bary = torch.tensor(emb.bary, dtype=dt, device=dev)
    model = F.TorchFlame(m, S, E, vertex_ids=ids, device=dev, dtype=dt)
    # normalise pixels by the face size so every term is O(1)
    size = float(np.median(np.ptp(lmk, axis=1).max(-1)))
    centre = lmk.mean((0, 1))
    obs = torch.tensor((lmk - centre) / size, dtype=dt, device=dev)
    sig = st.sigma_px / size
    if iris is not None:
        iris_t = torch.tensor((np.asarray(iris, np.float64) - centre) / size, dtype=dt, device=dev)
        eye_l = torch.tensor([pos[int(v)] for v in eye_ids], device=dev)

    # initial camera: template landmarks (x, -y) scaled onto the observations
    v0, _ = m.forward()
    p0 = emb.points(v0, m.faces)[0][:, :2] * np.array([1.0, -1.0])
    s0 = np.ptp(lmk, axis=1).mean(0).mean() / np.ptp(p0, axis=0).mean() / size
    t0 = (lmk.mean(1) - centre) / size - s0 * p0.mean(0)
    z = lambda *shape: torch.zeros(*shape, dtype=dt, device=dev)  # noqa: E731
    beta = z(S).requires_grad_()
    expr = z(N, E).requires_grad_()
    rot = torch.tensor(np.zeros((N, 3)) if init_rot is None else init_rot, dtype=dt,
                       device=dev).requires_grad_()
    neck = z(N, 3).requires_grad_()
    jaw = z(N, 3).requires_grad_()
    eyes = z(N, 2, 3).requires_grad_()
    logs = torch.full((N,), float(np.log(s0)), dtype=dt, device=dev).requires_grad_()
    trans = torch.tensor(t0, dtype=dt, device=dev).requires_grad_()
    flip = torch.tensor([1.0, -1.0], dtype=dt, device=dev)

    def project():
        coeffs = torch.cat([beta[None].expand(N, S), expr], 1)
        pose = torch.stack([rot, neck, jaw, eyes[:, 0], eyes[:, 1]], 1)
        v, _ = model.forward(coeffs, pose)
        pts = torch.einsum("nlkc,lk->nlc", v[:, tri_l], bary)[..., :2] * flip
        s = torch.exp(logs)[:, None, None]
        proj = s * pts + trans[:, None]
        pi = s * v[:, eye_l, :2] * flip + trans[:, None] if iris is not None else None
        return proj, pi

    def loss_fn(full: bool):
        proj, pi = project()
        data = ((proj - obs) ** 2).sum() / sig**2
        if pi is not None:
            data = data + st.w_eyes * ((pi - iris_t) ** 2).sum() / sig**2
        prior = (beta**2).sum() + st.w_expr * (expr**2).sum() + st.w_jaw * (jaw**2).sum() \
            + st.w_neck * (neck**2).sum()
        d = lambda a: ((a[1:] - a[:-1]) ** 2).sum()  # noqa: E731
        smooth = st.smooth_expr * d(expr) + st.smooth_pose * (d(rot) + d(jaw) + d(neck)
                                                              + d(eyes))
        return (data + prior + smooth) / N

    def run(params, iters):
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iters, max_eval=4 * iters, history_size=50,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-9,
                                tolerance_change=1e-12)

        def closure():
            opt.zero_grad()
            loss = loss_fn(True)
            loss.backward()
            return loss
        opt.step(closure)

    run([rot, logs, trans], 40)                                  # rigid first
    if progress is not None:
        progress.message("flame-fit: rigid pose done")
    run([beta, expr, rot, neck, jaw, eyes, logs, trans], st.iters)
    with torch.no_grad():
        proj, _ = project()
        res = ((proj - obs) ** 2).sum(-1).mean(-1).sqrt() * size
        pose = torch.stack([rot, neck, jaw, eyes[:, 0], eyes[:, 1]], 1)
    g = lambda a: a.detach().cpu().numpy().astype(np.float64)  # noqa: E731
    return FitResult(shape=g(beta), expression=g(expr), pose=g(pose),
                     scale=np.exp(g(logs)) / size, trans=g(trans) * size + centre,
                     residual_px=g(res))


# ---------------------------------------------------------------------------------------------
# FLAME -> ARKit through landmark space
# ---------------------------------------------------------------------------------------------
def arkit_from_flame(m: F.FlameModel, emb: F.Embedding, shape, expression, jaw):
    """(N,52) ARKit weights: FLAME's expression + jaw at the embedded landmarks (identity
    removed, head frame) solved against the open head model's ARKit basis at the same
    MediaPipe landmarks, scaled to the open head's size, with the shared bounded solve."""
    from .. import landmark_solve as ls
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
        from ..mediapipe_topology import task_path

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
