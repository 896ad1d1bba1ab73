"""Bench: accuracy of the ``flame-fit`` backend's fitter on synthetic clips.

A synthetic FLAME model in the official layout (tests/flame_synthetic.py, on FLAME's own
topology from ../shared/flame_aux/head_template.obj) animates a clip with known identity
(100 coefficients ~ N(0,1)), expression (50 smooth curves), jaw, head and eye rotations.
The 105 MediaPipe landmarks embedded in FLAME (mediapipe_landmark_embedding.npz) and the two
pupil centres are projected (weak perspective) at a 224 px face (EMOCA's crop: 1.375 x the
landmark box = 224 px) with 1 px Gaussian noise per coordinate, and fitted back.

Metrics:
- face-region vertex error, mm-equivalent: mean over frames and FLAME_masks 'face' vertices of
  the distance between fitted and true meshes with the head pose removed (identity,
  expression, jaw, eyes), after one similarity alignment for the whole clip (a monocular fit
  knows the face up to scale); the synthetic model is in metres, so 1 unit = 1000 mm.
- expression correlation: Pearson r between fitted and true curves over time, mean over the
  50 components (also the minimum). Targets: <= 1.5 mm, >= 0.9.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.ROOT / "tests"))

N_FRAMES = 120
FACE_PX = 224.0
NOISE_PX = 1.0


def make_clip(m, emb, eye_ids, seed=0, n=N_FRAMES, fps=25.0, E=50, S=100):
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(n) / fps
    w = lambda a, f, p: a * np.sin(2 * np.pi * f * t + p)  # noqa: E731
    beta = rng.normal(0, 1, S)
    expr = np.stack([w(1.2, rng.uniform(0.2, 1.0), rng.uniform(0, 6)) for _ in range(E)], 1)
    pose = np.zeros((n, 5, 3))
    pose[:, 0] = np.stack([w(0.2, 0.3, 0.0), w(0.35, 0.2, 1.0), w(0.1, 0.4, 2.0)], 1)
    pose[:, 2, 0] = 0.12 + w(0.12, 0.7, 0.5)
    pose[:, 3] = pose[:, 4] = np.stack([w(0.15, 0.5, 0.3), w(0.2, 0.4, 0.9), 0 * t], 1)
    v, _ = m.forward(beta[None].repeat(n, 0), expr, pose)
    pts = np.concatenate([emb.points(v, m.faces), v[:, eye_ids]], 1)[..., :2] * [1, -1]
    width = np.ptp(pts[0, :-2], 0).max()
    s = FACE_PX / 1.375 / width
    px = s * pts + FACE_PX / 2
    px += rng.normal(0, NOISE_PX, px.shape)
    return dict(beta=beta, expr=expr, pose=pose, lmk=px[:, :-2], iris=px[:, -2:])


def similarity(a, b):
    """Align a onto b (P,3) with one scale, rotation and translation; returns aligned a."""
    import numpy as np

    ma, mb = a.mean(0), b.mean(0)
    A, B = a - ma, b - mb
    U, S, Vt = np.linalg.svd(A.T @ B)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.diag([1, 1, d])
    R = (U @ D @ Vt).T
    s = (S * np.diag(D)).sum() / (A ** 2).sum()
    return s * A @ R.T + mb


def run() -> list[dict]:
    import numpy as np

    import flame_synthetic as fs
    from emoca_blender import flame
    from emoca_blender.backends import flame_fit

    need = ("head_template.obj", "mediapipe_landmark_embedding.npz", "FLAME_masks.pkl")
    if any(fs.aux(n) is None for n in need):
        return [common.row("flame_fit_accuracy", "-", "skipped", float("nan"), "",
                           f"needs {fs.SHARED_AUX}", None)]
    d = fs.make_flame_dict(n_shape=100, n_expr=50, template=fs.aux("head_template.obj"), seed=0)
    tmp = common.ROOT / ".cache" / "bench"
    tmp.mkdir(parents=True, exist_ok=True)
    m = flame.load_flame(fs.write_flame_pickle(tmp / "generic_model.pkl", d), strict=True)
    emb = flame.load_mediapipe_embedding(fs.aux("mediapipe_landmark_embedding.npz"), 9976)
    masks = flame.load_masks(fs.aux("FLAME_masks.pkl"), m.n_vertices)
    eye_ids = flame_fit.eye_vertices(m, masks)
    rows = []
    for seed in (0, 1):
        c = make_clip(m, emb, eye_ids, seed=seed)
        t0 = time.perf_counter()
        r = flame_fit.fit_landmarks(m, emb, c["lmk"], iris=c["iris"], eye_ids=eye_ids,
                                    settings=flame_fit.FitSettings(device="cpu"))
        dt = time.perf_counter() - t0
        n = len(c["expr"])
        p_true, p_fit = c["pose"].copy(), r.pose.copy()
        p_true[:, 0] = 0
        p_fit[:, 0] = 0
        vt, _ = m.forward(c["beta"][None].repeat(n, 0), c["expr"], p_true)
        vf, _ = m.forward(r.shape[None].repeat(n, 0), r.expression, p_fit)
        face = masks["face"]
        a = similarity(vf[:, face].reshape(-1, 3), vt[:, face].reshape(-1, 3))
        err_mm = 1000 * np.linalg.norm(a - vt[:, face].reshape(-1, 3), axis=1).mean()
        ce = c["expr"] - c["expr"].mean(0)
        fe = r.expression - r.expression.mean(0)
        corr = (ce * fe).sum(0) / np.sqrt((ce ** 2).sum(0) * (fe ** 2).sum(0))
        case = f"clip {seed}: {n} fr, {FACE_PX:.0f} px face, {NOISE_PX:g} px noise"
        rows += [
            common.row("flame_fit_accuracy", case, "face vertex error", round(float(err_mm), 3),
                       "mm", "<= 1.5", bool(err_mm <= 1.5)),
            common.row("flame_fit_accuracy", case, "expression r (mean of 50)",
                       round(float(corr.mean()), 3), "", ">= 0.9", bool(corr.mean() >= 0.9)),
            common.row("flame_fit_accuracy", case, "expression r (min)", round(float(corr.min()), 3), ""),
            common.row("flame_fit_accuracy", case, "landmark residual", round(float(r.residual_px.mean()), 3), "px"),
            common.row("flame_fit_accuracy", case, "fit time (CPU)", round(dt, 2), "s"),
        ]
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
