"""Per-frame solves shared by the backends, vectorised over frames.

From MediaPipe's per-frame outputs (image landmarks, blendshape scores, facial
transformation matrix) to the Capture's head pose, pose-free landmarks, jaw, gaze and
blinks. Conventions are those of capture_file.py (head frame: +X subject's left, +Y up,
+Z out of the face; camera frame OpenGL-style, zero rotation = facing the camera).
"""
from __future__ import annotations

import contextlib
import threading

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


_BLAS_LOCK = threading.Lock()
_BLAS_DEPTH = 0
_BLAS_SAVED: list[tuple] = []
_BLAS_FUNCS: list[tuple] | None = None


def _openblas_funcs() -> list[tuple]:
    """(get, set) thread-count functions of every OpenBLAS that numpy/scipy loaded."""
    global _BLAS_FUNCS
    if _BLAS_FUNCS is not None:
        return _BLAS_FUNCS
    import ctypes
    import glob
    import os

    paths: set[str] = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                p = line.split()[-1] if "/" in line else ""
                if "openblas" in os.path.basename(p).lower():
                    paths.add(p)
    except OSError:
        pass
    if not paths:   # not Linux: the wheels' bundled copies
        import numpy
        root = os.path.dirname(os.path.dirname(numpy.__file__))
        for pat in ("numpy.libs/*openblas*", "numpy/.libs/*openblas*", "numpy/.dylibs/*openblas*",
                    "scipy.libs/*openblas*", "scipy/.dylibs/*openblas*"):
            paths.update(glob.glob(os.path.join(root, pat)))
    funcs = []
    for p in sorted(paths):
        try:
            lib = ctypes.CDLL(p)
        except OSError:
            continue
        for pre in ("openblas", "scipy_openblas"):
            for suf in ("64_", "", "_64"):
                g = getattr(lib, f"{pre}_get_num_threads{suf}", None)
                s = getattr(lib, f"{pre}_set_num_threads{suf}", None)
                if g is not None and s is not None:
                    g.restype = ctypes.c_int
                    s.argtypes = [ctypes.c_int]
                    funcs.append((g, s))
                    break
            else:
                continue
            break
    _BLAS_FUNCS = funcs
    return funcs


@contextlib.contextmanager
def single_threaded_blas():
    """Run the body with numpy's OpenBLAS on one thread (restored afterwards; nests).

    The capture's numpy work is small matrices (52x52 batched solves, the emotion network's
    im2col products) next to MediaPipe's own threads: a threaded BLAS only adds hand-offs,
    and on a loaded machine each hand-off waits for a time slice (measured: the solve of a
    27-frame clip took 0.96 s with 2 BLAS threads on a busy 2-core machine, 0.02 s with 1).
    """
    global _BLAS_DEPTH
    try:
        funcs = _openblas_funcs()
    except Exception:  # noqa: BLE001 - an optimisation only
        funcs = []
    with _BLAS_LOCK:
        if _BLAS_DEPTH == 0:
            _BLAS_SAVED[:] = [(s, int(g())) for g, s in funcs]
            for setter, _ in _BLAS_SAVED:
                setter(1)
        _BLAS_DEPTH += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_DEPTH -= 1
            if _BLAS_DEPTH == 0:
                for setter, n in _BLAS_SAVED:
                    setter(max(1, n))
                _BLAS_SAVED.clear()


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


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """(N,3,3) rotation matrices (orthonormalised first) -> (N,3) axis-angle."""
    from scipy.spatial.transform import Rotation

    U, _, Vt = np.linalg.svd(np.asarray(R, np.float64))
    d = np.sign(np.linalg.det(U @ Vt))
    U[..., :, 2] *= d[..., None]
    return Rotation.from_matrix(U @ Vt).as_rotvec()


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


# Eye geometry for gaze from the iris points (head frame, metres, canonical scale).
EYEBALL_RADIUS = 0.012       # iris centre to eyeball centre (the open head model's eye joints)
IRIS_CENTRES = (473, 468)    # subject's left, right iris centre
BLINK_GAZE_FADE = (0.45, 0.75)  # blink range over which iris gaze fades to the score gaze


def eyes_from_iris(pose_free: np.ndarray, neutral: np.ndarray) -> np.ndarray:
    """Gaze from the iris centres' displacement from the actor's neutral, head frame.

    Args:
        pose_free: (N,478,3) pose-free landmarks, metres.
        neutral: (478,3) the actor's neutral landmarks (looking ahead), metres.
    Returns:
        (N,2,3) axis-angle of the subject's left and right eye (yaw about +Y, positive
        towards the subject's left; pitch about +X, positive down), as eyes_from_arkit.
    """
    eyes = np.zeros((pose_free.shape[0], 2, 3))
    for e, k in enumerate(IRIS_CENTRES):
        d = (np.asarray(pose_free[:, k], np.float64) - neutral[k]) / EYEBALL_RADIUS
        eyes[:, e, 1] = np.arcsin(np.clip(d[:, 0], -0.95, 0.95))
        eyes[:, e, 0] = np.arcsin(np.clip(-d[:, 1], -0.95, 0.95))
    return eyes


# Jaw fusion. MediaPipe's blendshape jawOpen under-reports the jaw on some actors (the chin
# drops 2-5 mm and the teeth show while the score stays ~0.02), whereas the landmark solve's
# jawOpen follows the chin and lower jawline. The landmark jaw is trusted per frame in
# proportion to its reliability: fully while the fit is good and the face is frontal, fading
# to nothing as the landmark residual grows (a neutral that does not fit the face, a face the
# landmarker distorts) and as the face turns away from the camera (the depth of a turned face
# is poorly observed, and head rotation leaks into the jaw).
JAW_TRUST_MAX = 1.0
# Where the landmark jaw reads less than the score, the trust is scaled by this: a score
# above the chin's opening is mostly the lower lip pulled down (a wide smile), which a rig's
# jawOpen moves too and which geometric retargets onto other faces also read as jaw.
JAW_TRUST_LOWER = 0.5
JAW_TRUST_RESIDUAL_MM = (3.0, 4.5)   # full trust below, none above (RMS landmark residual)
JAW_TRUST_TILT_DEG = (20.0, 35.0)    # same, for the face's angle away from the camera axis
# inner-lip point pairs (upper, lower): the centre and either side
LIP_PAIRS = np.array([[13, 14], [82, 87], [312, 317]], dtype=np.int64)


def jaw_trust(residual_mm: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """(N,) weight in [0, 1] of the landmark solve's jaw against the blendshape score.

    Args:
        residual_mm: (N,) RMS landmark residual of the landmark solve.
        rotation: (N,3,3) head -> camera rotations (camera +Z towards the viewer).
    """
    r0, r1 = JAW_TRUST_RESIDUAL_MM
    t0, t1 = JAW_TRUST_TILT_DEG
    tilt = np.degrees(np.arccos(np.clip(np.asarray(rotation, np.float64)[:, 2, 2], -1.0, 1.0)))
    k_res = np.clip((r1 - np.asarray(residual_mm, np.float64)) / (r1 - r0), 0.0, 1.0)
    k_tilt = np.clip((t1 - tilt) / (t1 - t0), 0.0, 1.0)
    return JAW_TRUST_MAX * k_res * k_tilt


def fuse_jaw(a: np.ndarray, w: np.ndarray, trust: np.ndarray, pose_free: np.ndarray,
             neutral: np.ndarray, basis) -> np.ndarray:
    """jawOpen from the blendshape score and the landmark solve; the lip channels follow so
    that the rig's lips part as the landmarks show.

    jawOpen = score + trust * (landmark jaw - score) (trust scaled by JAW_TRUST_LOWER where
    the landmark jaw is the lower). Moving the jaw moves the lower lip with it: in the open
    head model a change dj of jawOpen parts the inner lips by dj * g_jaw. That change may
    bring the rig's inner-lip parting (the scores' weights through the open model) towards
    the parting the landmarks show (pose-free, against the actor's neutral), never past it;
    the lip channels undo the rest, as ARKit defines them: a jaw opened further than the
    lips part is a seal, carried by mouthClose (lips together over an open jaw; at most
    jawOpen); a jaw closed further than the lips close leaves the lower lip lowered on its
    own: less mouthClose first, then mouthLowerDownLeft/Right.

    Args:
        a: (N,52) calibrated scores (not modified).
        w: (N,52) landmark-solve weights.
        trust: (N,) from :func:`jaw_trust`.
        pose_free: (N,478,3) pose-free landmarks, metres.
        neutral: (478,3) the actor's neutral landmarks, metres.
        basis: the open head model's LandmarkBasis.
    Returns:
        (N,52) weights: jawOpen fused, mouthClose and mouthLowerDown* adjusted.
    """
    J, C = INDEX["jawOpen"], INDEX["mouthClose"]
    LD = [INDEX["mouthLowerDownLeft"], INDEX["mouthLowerDownRight"]]
    out = np.array(a, np.float64, copy=True)
    j0 = out[:, J]
    dj = w[:, J] - j0
    k = np.asarray(trust, np.float64) * np.where(dj < 0, JAW_TRUST_LOWER, 1.0)
    jf = np.clip(j0 + k * dj, 0.0, 1.0)
    u, lo = LIP_PAIRS[:, 0], LIP_PAIRS[:, 1]
    g = (basis.basis[:, u, 1] - basis.basis[:, lo, 1]).mean(1)     # (K,) parting per unit, m
    pf = np.asarray(pose_free)
    g_obs = ((pf[:, u, 1] - pf[:, lo, 1]).astype(np.float64).mean(1)
             - float((neutral[u, 1] - neutral[lo, 1]).mean()))        # (N,) observed parting
    g0 = out @ g                                                     # rig parting, scores
    g1 = g0 + (jf - j0) * g[J]                                       # ... with the new jaw
    target = np.clip(g1, np.minimum(g0, g_obs), np.maximum(g0, g_obs))
    comp = target - g1            # < 0: close the lips (jaw went up), > 0: part them
    g_close = max(-float(g[C]), 1e-9)
    g_down = max(float(g[LD].sum()), 1e-9)
    mc = out[:, C]
    # sealing: more mouthClose, at most jawOpen (ARKit: lips together over an open jaw)
    seal = np.maximum(-comp, 0.0) / g_close
    mc_new = np.where(seal > 0, np.clip(mc + seal, mc, np.maximum(mc, jf)), mc)
    # parting: less mouthClose, then the lower lip down on its own
    part = np.maximum(comp, 0.0)
    less = np.minimum(mc_new, part / g_close)
    mc_new = mc_new - less
    down = (part - less * g_close) / g_down
    out[:, LD] = np.clip(out[:, LD] + down[:, None], 0.0, 1.0)
    out[:, C] = mc_new
    out[:, J] = jf
    return out


def _pearson_cols(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    return np.where(den > 1e-12, (a * b).sum(0) / np.maximum(den, 1e-12), np.nan)


def from_mediapipe(lmk_px: np.ndarray, arkit: np.ndarray, matrices: np.ndarray,
                   found: np.ndarray | None = None, neutral_frame: int = -1,
                   scored: np.ndarray | None = None) -> tuple[dict, dict]:
    """Capture fields from MediaPipe outputs, calibrated to the actor.

    Args:
        lmk_px: (N,478,3) image landmarks in pixels (MediaPipe convention).
        arkit: (N,52) raw blendshape scores in ARKit order (tongueOut = 0).
        matrices: (N,4,4) facial transformation matrices (centimetres).
        found: (N,) bool, rows with a face (others are junk; default all).
        neutral_frame: row of a user-marked neutral frame, -1 = estimate the actor's neutral.
        scored: (N,) bool, rows that also have blendshape scores and a transformation
            matrix (default: all found rows). Rows found without them (landmarks recovered
            by another tracker) take their ARKit weights from the landmark-space solve and
            their head rotation from its Procrustes pose; translation is interpolated.
    Returns:
        (arrays, info): Capture fields (rows without a face are zeros; the pipeline's gap
        filling overwrites them) and a JSON-able dict with the calibration and the
        cross-checks of the landmark-space solve against the blendshape scores and of the
        Procrustes head pose against the transformation matrix.
    """
    from . import calibration, landmark_solve as ls
    from .arkit import ARKIT_NAMES

    N = arkit.shape[0]
    found = np.ones(N, bool) if found is None else np.asarray(found, bool)
    F = np.flatnonzero(found)
    out: dict[str, np.ndarray] = {
        "arkit": np.zeros((N, 52), np.float32),
        "head_rotation": np.zeros((N, 3), np.float32),
        "head_translation": np.zeros((N, 3), np.float32),
        "landmarks3d": np.zeros((N, 478, 3), np.float32),
        "jaw": np.zeros((N, 3), np.float32),
        "eyes": np.zeros((N, 2, 3), np.float32),
        "blinks": np.zeros((N, 2), np.float32),
    }
    info: dict = {}
    if F.size == 0:
        out["expression"] = out["arkit"].copy()
        return out, info
    S = np.ones(F.size, bool) if scored is None else np.asarray(scored, bool)[F]
    if not S.any():
        S[:] = True          # no scores at all: treat the landmark solve as the scores below
    FS = F[S]
    raw = np.clip(np.asarray(arkit, np.float64)[FS], 0.0, 1.0)
    nf = -1
    if neutral_frame is not None and neutral_frame >= 0:
        # the nearest scored frame to the one the user marked
        nf = int(np.argmin(np.abs(FS - int(neutral_frame))))
    # the automatic neutral prefers frames facing the camera (within the jaw fusion's
    # full-trust angle): a turned face is a poor reference for everything measured from it
    R_scored = np.asarray(matrices, np.float64)[FS, :3, :3]
    tilt = np.degrees(np.arccos(np.clip(R_scored[:, 2, 2], -1.0, 1.0)))
    cal = calibration.calibrate(raw, nf, frontal=tilt < JAW_TRUST_TILT_DEG[0])
    a = np.zeros((F.size, 52))
    a[S] = cal.apply(raw)

    # landmark-space solve against the actor's neutral (from the same neutral frames)
    basis = ls.open_head_basis()
    L = np.asarray(lmk_px)[F]
    pinned = np.zeros(basis.basis.shape[0], bool)
    pinned[INDEX["tongueOut"]] = True
    LS = L[S]
    first = ls.solve_sequence(ls.camera_points(LS[cal.neutral_frames]), pinned=pinned, rounds=0)
    del LS
    # the actor's neutral: the neutral frames' pose-free landmarks, minus whatever
    # expression the calibrated scores still see in them
    neutral = (first.pose_free.astype(np.float64)
               - (a[S][cal.neutral_frames] @ basis.flat).reshape(-1, 478, 3)).mean(0)
    res = ls.solve_chunked(L, neutral=neutral, pinned=pinned, rounds=1)
    del L
    w = res.weights
    a[~S] = w[~S]                                         # recovered frames: landmarks only
    a[:, INDEX["cheekPuff"]] = w[:, INDEX["cheekPuff"]]   # the blendshape model misses it
    a[:, INDEX["tongueOut"]] = 0.0                        # no evidence in landmarks or scores

    from scipy.spatial.transform import Rotation
    rot = np.zeros((F.size, 3))
    rot[S] = matrix_to_rotvec(np.asarray(matrices, np.float64)[FS, :3, :3])
    if (~S).any():
        rot[~S] = matrix_to_rotvec(res.rotation[~S])
    R_all = Rotation.from_rotvec(rot).as_matrix()
    ang = ls.rotation_angle_deg(R_all[S], res.rotation[S])

    # jawOpen (and with it the jaw bone) from the scores and the landmark jaw, by reliability
    trust = jaw_trust(res.residual_mm, R_all)
    a_scores = a
    a = fuse_jaw(a, w, trust, res.pose_free, neutral, basis)

    eyes_s = eyes_from_arkit(a)
    eyes_i = eyes_from_iris(res.pose_free, neutral)
    blink = np.stack([a[:, INDEX["eyeBlinkLeft"]], a[:, INDEX["eyeBlinkRight"]]], 1)
    lo, hi = BLINK_GAZE_FADE
    k = np.clip((hi - blink) / (hi - lo), 0.0, 1.0)[:, :, None]
    eyes = k * eyes_i + (1 - k) * eyes_s

    out["arkit"][F] = a
    out["head_rotation"][F] = rot
    t = np.asarray(matrices, np.float64)[F, :3, 3] / 100.0
    if (~S).any():
        for c in range(3):
            t[~S, c] = np.interp(F[~S], FS, t[S, c])
    out["head_translation"][F] = t
    out["landmarks3d"][F] = res.pose_free
    out["jaw"][F] = jaw_from_arkit(a)
    out["eyes"][F] = eyes
    out["blinks"][F] = blink
    out["expression"] = out["arkit"].copy()

    r = _pearson_cols(a_scores[S], w[S])
    data_ch = [n for n in ARKIT_NAMES if n.startswith(("mouthSmile", "eyeBlink", "browInnerUp",
                                                       "browOuterUp", "mouthLowerDown",
                                                       "mouthUpperUp", "jawOpen"))]
    info = {
        "frames_from_landmarks_only": int((~S).sum()),
        "calibration": cal.to_meta(),
        "cross_check": {
            "landmark_residual_mm_median": round(float(np.median(res.residual_mm)), 3),
            "procrustes_vs_matrix_deg_median": round(float(np.median(ang)), 3),
            "landmark_vs_scores_pearson": {n: (None if not np.isfinite(r[INDEX[n]])
                                               else round(float(r[INDEX[n]]), 3))
                                           for n in data_ch},
            "landmark_vs_scores_mean_abs": round(float(np.abs(a_scores[S] - w[S]).mean()), 4),
        },
        "jaw_fusion": {
            "landmark_trust_mean": round(float(trust.mean()), 3),
            "jawOpen_change_mean": round(float((a[:, INDEX["jawOpen"]]
                                                - a_scores[:, INDEX["jawOpen"]]).mean()), 4),
            "mouthClose_change_mean": round(float((a[:, INDEX["mouthClose"]]
                                                   - a_scores[:, INDEX["mouthClose"]]).mean()), 4),
        },
    }
    return out, info
