"""Bench: accuracy of the ``flame-fit`` backend's fitter on synthetic clips.

A synthetic FLAME model in the official layout (tests/flame_synthetic.py, on FLAME's own
topology from ../shared/flame_aux/head_template.obj) animates a clip with known identity
(100 coefficients ~ N(0,1)), expression (50 smooth curves), jaw, head and eye rotations.
Two synthetic models, each a case of its own (same clips, noise, metrics and targets):
- "PCA-like synthetic model" (``spectrum="pca"``): smooth, global leading identity
  components and decaying variance, expression concentrated at the facial features, as a PCA
  of real heads / faces has (see tests/flame_synthetic.py for what it imitates and why);
- "session-1 synthetic model (local bases at every rank)" (``spectrum="local"``): the model
  this bench first ran on, kept so the figures on it stay visible.
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

Units: the synthetic model is built on FLAME's template in metres; "mm-equivalent" = 1e-3
model units. The face spans ~0.117 m = 163 px, so 1 px of noise is ~0.72 mm on the face.

What the targets demand is not all observable (measured here, rows "information bound"):
the linearised Bayesian posterior at the TRUE parameters (landmark Jacobians of the fitter's
own model, 1 px noise, the fitter's N(0,1) priors) gives the error ANY estimator must expect
- identity, with expression/pose/camera known and every frame used: the face-region RMS
  error of the identity alone (the 1787 'face' vertices vs 105 landmarks: forehead, cheeks,
  and depth (weak perspective: only seen through head rotation) are mostly unseen);
- expression, one frame, identity/pose/camera known (prior: the clip's true variance per
  component): the face-region RMS error and the expected correlation
  sqrt(1 - posterior var / true var) per component;
- realised on the clip (row "expression-only MAP per frame, everything else true"): each
  frame's expression solved exactly (the fitter's N(0,1) prior) with identity, pose, jaw,
  eyes and camera true, scored by the face-vertex metric: what the expression alone costs
  when nothing else is estimated.
When these bounds exceed the targets, the targets ask for what 105 landmarks + 2 pupils at
1 px cannot determine; the rows say so ("bound > target"). The observable part is then
scored separately, with the SAME bars: expression r over the components the landmarks
determine (information-bound r >= 0.95), and the 3D error at the observed surface points
(the embedded landmarks and pupils, pose removed, one similarity for the clip).
The rows "face vertex error: identity part / expression part" split the error: the fitted
identity with the true expression and pose, and the fitted expression, jaw and eyes with the
true identity (each through the same metric).
What the rows showed (2026-11-25): the session-1 fitter's joint MAP shrank the head 2.4x
behind a larger camera scale (every frame's expression is cheaper on a smaller head): 16-19 mm
face error, expression r 0.73-0.77, at a LOWER cost than the truth. The fitter now holds the
identity's in-plane size and adds the expression's Occam factor (flame_fit's docstring); what
remains is mostly the expression's depth: per frame, with everything else true, the
expression alone already costs more than 1.5 mm (row "expression-only MAP ..."), and fitting
pose, jaw and camera jointly (about 1 degree of rotation error) adds to it.
"fit time (CPU)" is wall-clock time on the CPU device; the machine's load average and the
process CPU time (all threads) are reported beside it, since the bench machine is shared.
The row "optimiser gap" checks the fitter itself: a fit started from the true parameters
ends at the same cost (relative difference) as the fit from scratch, i.e. the fit reaches
the maximum a posteriori and what remains is the problem's, not the optimiser's.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.ROOT / "tests"))

N_FRAMES = 120
OBSERVABLE_R = 0.95
FACE_PX = 224.0
NOISE_PX = 1.0
MODELS = (   # (case label, flame_synthetic spectrum, clip seeds)
    ("PCA-like synthetic model", "pca", (0, 1)),
    ("session-1 synthetic model (local bases at every rank)", "local", (0, 1)),
)


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
    return dict(beta=beta, expr=expr, pose=pose, lmk=px[:, :-2], iris=px[:, -2:], scale=s,
                shift=np.full((n, 2), FACE_PX / 2))


def information_bounds(m, emb, eye_ids, c, face, S=100, E=50):
    """Linearised posterior at the truth (see the module docstring). Returns identity face
    RMS (mm), expression face RMS (mm, mean over frames), expected r per component (E,), and
    the per-frame expression MAP with everything else true (N,E) (the fitter's N(0,1) prior;
    exact: at a fixed pose and camera the points are affine in the expression)."""
    import numpy as np
    import torch

    from emoca_blender.backends import flame_fit

    n = len(c["expr"])
    lm = flame_fit.LandmarkModel(m, emb, S, E, eye_ids)
    x = np.concatenate([c["expr"], c["pose"].reshape(n, 15), np.full((n, 1), np.log(c["scale"])),
                        c["shift"]], 1)
    x0 = x.copy()
    x0[:, :E] = 0.0
    proj0, Jc, _ = lm.jacobians(torch.tensor(x0), torch.tensor(c["beta"]))
    obs = np.concatenate([c["lmk"], c["iris"]], 1).reshape(n, -1)
    res0 = obs - proj0.numpy().reshape(n, -1)
    Jc = Jc.reshape(n, -1, S + E).numpy()                       # pixels per unit, sigma = 1 px
    Mb = 1000 * m.shapedirs[face][:, :, :S].reshape(-1, S)
    Me = 1000 * m.exprdirs[face][:, :, :E].reshape(-1, E)
    nf = len(face)
    Hb = np.einsum("nri,nrj->ij", Jc[..., :S], Jc[..., :S]) + np.eye(S)
    id_rms = np.sqrt(np.trace(np.linalg.solve(Hb, Mb.T @ Mb)) / nf)   # tr(Mb Hb^-1 Mb^T)
    var_true = c["expr"].var(0)
    MeMe = Me.T @ Me
    ex_ms, r, e_map = [], [], []
    for t in range(n):
        Jt = Jc[t][:, S:]
        e_map.append(np.linalg.solve(Jt.T @ Jt + np.eye(E), Jt.T @ res0[t]))
        He = Jc[t][:, S:].T @ Jc[t][:, S:] + np.diag(1.0 / var_true)
        Ce = np.linalg.inv(He)
        ex_ms.append(np.trace(Ce @ MeMe) / nf)
        r.append(np.sqrt(np.clip(1 - np.diag(Ce) / var_true, 0, 1)))
    return float(id_rms), float(np.sqrt(np.mean(ex_ms))), np.mean(r, 0), np.array(e_map)


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
    import flame_synthetic as fs
    from emoca_blender.models import flame

    need = ("head_template.obj", "mediapipe_landmark_embedding.npz", "FLAME_masks.pkl")
    if any(fs.aux(n) is None for n in need):
        return [common.row("flame_fit_accuracy", "-", "skipped", float("nan"), "",
                           f"needs {fs.SHARED_AUX}", None)]
    emb = flame.load_mediapipe_embedding(fs.aux("mediapipe_landmark_embedding.npz"), 9976)
    v0, f0 = fs.read_template(fs.aux("head_template.obj"))
    focus = emb.points(v0[None], f0)[0]          # the features MediaPipe's landmarks mark
    tmp = common.ROOT / ".cache" / "bench"
    tmp.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, spectrum, seeds in MODELS:
        d = fs.make_flame_dict(n_shape=100, n_expr=50, template=fs.aux("head_template.obj"),
                               seed=0, spectrum=spectrum, expr_focus=focus)
        m = flame.load_flame(fs.write_flame_pickle(tmp / f"generic_model_{spectrum}.pkl", d),
                             strict=True)
        rows += run_model(m, emb, label, seeds)
    return rows


def run_model(m, emb, label, seeds) -> list[dict]:
    import numpy as np

    import flame_synthetic as fs
    from emoca_blender.models import flame
    from emoca_blender.backends import flame_fit

    masks = flame.load_masks(fs.aux("FLAME_masks.pkl"), m.n_vertices)
    eye_ids = flame_fit.eye_vertices(m, masks)
    rows = []
    for seed in seeds:
        c = make_clip(m, emb, eye_ids, seed=seed)
        st = flame_fit.FitSettings(device="cpu")
        load = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        r = flame_fit.fit_landmarks(m, emb, c["lmk"], iris=c["iris"], eye_ids=eye_ids, settings=st)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        n = len(c["expr"])
        truth = flame_fit.FitResult(shape=c["beta"], expression=c["expr"], pose=c["pose"],
                                    scale=np.full(n, c["scale"]), trans=c["shift"],
                                    residual_px=np.zeros(n))
        r_t = flame_fit.fit_landmarks(m, emb, c["lmk"], iris=c["iris"], eye_ids=eye_ids,
                                      settings=st, init=truth)
        gap = (r.info["cost"] - r_t.info["cost"]) / r_t.info["cost"]
        p_true, p_fit = c["pose"].copy(), r.pose.copy()
        p_true[:, 0] = 0
        p_fit[:, 0] = 0
        vt, _ = m.forward(c["beta"][None].repeat(n, 0), c["expr"], p_true)
        vf, _ = m.forward(r.shape[None].repeat(n, 0), r.expression, p_fit)
        face = masks["face"]

        def face_err(vf):                 # the metric: mm, one similarity for the clip
            a = similarity(vf[:, face].reshape(-1, 3), vt[:, face].reshape(-1, 3))
            return 1000 * np.linalg.norm(a - vt[:, face].reshape(-1, 3), axis=1).mean()

        err_mm = face_err(vf)
        # where it comes from: the fitted identity with the true expression and pose, and the
        # fitted expression (and jaw, eyes) with the true identity
        err_id = face_err(m.forward(r.shape[None].repeat(n, 0), c["expr"], p_true)[0])
        err_ex = face_err(m.forward(c["beta"][None].repeat(n, 0), r.expression, p_fit)[0])
        pts = lambda v: np.concatenate([emb.points(v, m.faces), v[:, eye_ids]], 1)  # noqa: E731
        lt, lf = pts(vt).reshape(-1, 3), pts(vf).reshape(-1, 3)
        surf_mm = 1000 * np.linalg.norm(similarity(lf, lt) - lt, axis=1).mean()
        ce = c["expr"] - c["expr"].mean(0)
        fe = r.expression - r.expression.mean(0)
        corr = (ce * fe).sum(0) / np.sqrt((ce ** 2).sum(0) * (fe ** 2).sum(0))
        id_rms, ex_rms, r_bound, e_map = information_bounds(m, emb, eye_ids, c, face)
        err_oracle = face_err(m.forward(c["beta"][None].repeat(n, 0), e_map, p_true)[0])
        obs = r_bound >= OBSERVABLE_R
        case = f"{label}, clip {seed}: {n} fr, {FACE_PX:.0f} px face, {NOISE_PX:g} px noise"
        R = lambda *a: rows.append(common.row("flame_fit_accuracy", case, *a))  # noqa: E731
        R("face vertex error", round(float(err_mm), 3), "mm", "<= 1.5", bool(err_mm <= 1.5))
        R("face vertex error: identity part (fitted identity, true expression + pose)",
          round(float(err_id), 3), "mm")
        R("face vertex error: expression part (fitted expression + jaw + eyes, true identity)",
          round(float(err_ex), 3), "mm")
        R("expression r (mean of 50)", round(float(corr.mean()), 3), "", ">= 0.9",
          bool(corr.mean() >= 0.9))
        R("expression r (min)", round(float(corr.min()), 3), "")
        R("information bound: identity face RMS (all else known)", round(id_rms, 3), "mm",
          "bound > target" if id_rms > 1.5 else "", None)
        R("information bound: expression face RMS (1 frame, all else known)", round(ex_rms, 3),
          "mm", "bound > target" if ex_rms > 1.5 else "", None)
        R("information bound: expression r (mean of 50, 1 frame)",
          round(float(r_bound.mean()), 3), "", "bound < target" if r_bound.mean() < 0.9 else "",
          None)
        R("expression-only MAP per frame, everything else true: face vertex error",
          round(float(err_oracle), 3), "mm", "> target" if err_oracle > 1.5 else "", None)
        R(f"observable expression components (bound r >= {OBSERVABLE_R})", int(obs.sum()), "")
        if obs.any():           # scored only when enough components are observable to mean much
            R("expression r (mean of observable components)", round(float(corr[obs].mean()), 3),
              "", ">= 0.9" if obs.sum() >= 5 else f"(only {int(obs.sum())} observable)",
              bool(corr[obs].mean() >= 0.9) if obs.sum() >= 5 else None)
        R("observed-surface error (landmarks + pupils, 3D)", round(float(surf_mm), 3), "mm",
          "<= 1.5", bool(surf_mm <= 1.5))
        R("landmark residual", round(float(r.residual_px.mean()), 3), "px")
        R("optimiser gap (cost vs fit from the truth)", round(float(gap), 5), "", "<= 1e-3",
          bool(gap <= 1e-3))
        R("fit time (CPU)", round(dt, 2), "s", "<= 30", bool(dt <= 30))
        R(f"fit CPU time, all threads ({os.cpu_count()} cores, load average {load:.1f} "
          "at the start)", round(dc, 2), "s")
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
