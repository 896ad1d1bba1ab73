"""Accuracy of the landmark-space solve (issue 3).

Landmark sequences are generated from the bundled ICT head (its 52 sculpted shapes at the
embedded landmarks, the basis of the default capture's solve) with known ARKit weights (a
neutral rest segment, then frames with 6 random active channels each; mouthLeft/Right and
jawLeft/Right never together; tongueOut 0), a known head pose (yaw +-30, pitch +-20, roll
+-15 degrees) and a 200 px face (weak perspective, as MediaPipe's image landmarks), with
Gaussian noise of sigma 0.5 px on every coordinate. They go through the same code as a
capture: the actor's neutral from the rest segment, then the pose/expression alternation
of ``landmark_solve.solve_sequence`` (irises out of the fit, as in the capture: ICT's
eyeballs turn with the eye joints). Targets: mean absolute weight error <= 0.05 and
head-rotation error <= 1 degree.

    python bench/solve_accuracy.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

FRAMES = 3000
REST = 15
FACE_PX = 200.0
SIGMA_PX = 0.5


def make_sequence(seed: int = 0, frames: int = FRAMES):
    """Returns (image landmarks (N,478,3) px, true weights (N,52), true R (N,3,3))."""
    from emoca_blender.capture import landmark_solve as ls
    from emoca_blender.arkit import INDEX
    from emoca_blender.rotations import rotvec_to_matrix as rodrigues

    b = ls.ict_head_basis()
    rng = np.random.default_rng(seed)
    K = b.basis.shape[0]
    W = np.zeros((frames, K))
    choices = np.array([k for k in range(K) if k != INDEX["tongueOut"]])
    for n in range(REST, frames):
        ch = rng.choice(choices, 6, replace=False)
        W[n, ch] = rng.uniform(0, 1, 6)
        for a, c in (("mouthLeft", "mouthRight"), ("jawLeft", "jawRight")):
            if W[n, INDEX[a]] > 0 and W[n, INDEX[c]] > 0:
                W[n, INDEX[c]] = 0.0
    rot = np.deg2rad(rng.uniform(-1, 1, (frames, 3)) * [20.0, 30.0, 15.0])
    rot[:REST] *= 0.2                             # the rest segment is roughly frontal
    R = rodrigues(rot)
    V = b.template + np.einsum("nk,kpc->npc", W, b.basis)
    s = FACE_PX / np.ptp(b.template[:, 1])        # pixels per metre: a 200 px face
    cam = s * np.einsum("nij,npj->npi", R, V) + np.array([640.0, -360.0, 0.0])
    cam += rng.normal(0.0, SIGMA_PX, cam.shape)
    img = cam * np.array([1.0, -1.0, -1.0])       # camera frame -> MediaPipe image convention
    return img, W, R


def solve(img: np.ndarray):
    from emoca_blender.capture import landmark_solve as ls
    from emoca_blender.capture.solve import SOLVE_POINTS, TONGUE_ONLY

    b = ls.ict_head_basis()
    kw = dict(basis=b, pinned=TONGUE_ONLY, point_mask=SOLVE_POINTS)
    first = ls.solve_sequence(ls.camera_points(img[:REST]), rounds=0, **kw)
    neutral = first.pose_free[:REST].astype(np.float64).mean(0)
    return ls.solve_chunked(img, neutral=neutral, rounds=2, **kw)


def run() -> list[dict]:
    from emoca_blender.capture import landmark_solve as ls

    img, W, R = make_sequence()
    t0 = time.perf_counter()
    res = solve(img)
    dt = time.perf_counter() - t0
    err = np.abs(res.weights - W)[REST:]
    active = W[REST:] > 0
    ang = ls.rotation_angle_deg(res.rotation, R)[REST:]
    case = f"{FRAMES} synthetic frames, sigma {SIGMA_PX} px at a {FACE_PX:.0f} px face"
    r = common.row
    return [
        r("solve_accuracy", case, "mean abs weight error (all 52)", float(err.mean()), "",
          "<= 0.05", bool(err.mean() <= 0.05)),
        r("solve_accuracy", case, "mean abs weight error (active channels)",
          float(err[active].mean()), ""),
        r("solve_accuracy", case, "worst channel's mean abs error", float(err.mean(0).max()), ""),
        r("solve_accuracy", case, "head rotation error, mean", float(ang.mean()), "deg",
          "<= 1", bool(ang.mean() <= 1.0)),
        r("solve_accuracy", case, "head rotation error, 99th percentile",
          float(np.percentile(ang, 99)), "deg"),
        r("solve_accuracy", case, "solve time per frame", dt / FRAMES * 1000, "ms"),
    ]


if __name__ == "__main__":
    from run import main

    sys.exit(main(["solve_accuracy"]))
