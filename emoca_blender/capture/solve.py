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

from ..arkit import INDEX
from ..rotations import matrix_to_rotvec, rotvec_to_matrix

# Jaw rotation (radians, about +X = opening) at jawOpen = 1, and sideways at jawLeft/Right = 1.
# jawOpen = 1 is the bundled ICT head's sculpted jawOpen: its lower teeth turn 25.3 degrees
# (extra_jaw_open_rotvec, fitted by tools/build_ict_head.py), so a character's jaw bone opens
# as far as the rig's sculpted jaw (a scream is not a slit).
JAW_OPEN_RADIANS = 0.44219
JAW_SIDE_RADIANS = 0.12
# Eye rotation at eyeLook* = 1 (radians): horizontal and vertical.
EYE_YAW_RADIANS = 0.55
EYE_PITCH_RADIANS = 0.40


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


# Channel sources of the default capture. MediaPipe's blendshape scores (calibrated to the
# actor) carry every channel except the groups below, which come from the landmark solve on
# the ICT head's sculpted shapes, relative to the actor's neutral: bench/fidelity.py shows
# the scores' jawOpen under-reporting the jaw (a scream read as a slit: lip-gap r 0.21-0.92
# across the clips) and their eyeBlink never closing (0.4-0.8 where the lids touch), and the
# solve tracking both; the blendshape model has no cheekPuff at all. Brows, smile and lip
# corners, nose and cheek squints stay with the scores:
# the solve reads the actor's held expressions and MediaPipe's landmarks barely move the
# nose wings, and the bench shows no gain there (see docs/bench.md).
CHANNEL_GROUPS = {
    "jaw and mouth opening": ("jawOpen", "jawLeft", "jawRight", "jawForward", "mouthClose",
                              "mouthLowerDownLeft", "mouthLowerDownRight"),
    "lids": ("eyeBlinkLeft", "eyeBlinkRight", "eyeSquintLeft", "eyeSquintRight",
             "eyeWideLeft", "eyeWideRight"),
    "lips": ("mouthUpperUpLeft", "mouthUpperUpRight", "mouthFunnel", "mouthPucker",
             "mouthRollLower", "mouthRollUpper", "mouthPressLeft", "mouthPressRight",
             "mouthShrugLower", "mouthShrugUpper"),
    "smile and lip corners": ("mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft",
                              "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight",
                              "mouthStretchLeft", "mouthStretchRight", "mouthLeft",
                              "mouthRight"),
    "brows": ("browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
              "browOuterUpRight"),
    "nose": ("noseSneerLeft", "noseSneerRight"),
    "cheeks": ("cheekSquintLeft", "cheekSquintRight"),
    "cheek puff": ("cheekPuff",),
}
SOLVED_GROUPS = ("jaw and mouth opening", "lids", "cheek puff")
#: groups whose peaks the temporal filter keeps (filters.keep_peaks): the articulators of
#: speech and the lids move fastest; brows, smile, nose and cheeks get the full smoothing
FAST_GROUPS = ("jaw and mouth opening", "lids", "lips")
SOLVED = np.array([INDEX[n] for g in SOLVED_GROUPS for n in CHANNEL_GROUPS[g]], np.int64)
GAZE = np.array([i for n, i in INDEX.items() if n.startswith("eyeLook")], np.int64)
#: the solve's pinned channels: tongueOut (no evidence), eyeLook* (known from the irises)
SOLVE_PINNED = np.zeros(len(INDEX), bool)
SOLVE_PINNED[INDEX["tongueOut"]] = True
SOLVE_PINNED[GAZE] = True
TONGUE_ONLY = np.zeros(len(INDEX), bool)
TONGUE_ONLY[INDEX["tongueOut"]] = True
#: points in the solve: all but the irises (the ICT head's eyeballs turn with the eye
#: joints, not with its shapes)
SOLVE_POINTS = np.ones(478)
SOLVE_POINTS[468:] = 0.0
#: the automatic neutral prefers frames facing the camera within this angle
NEUTRAL_TILT_DEG = 20.0
# lid gap (upper, lower landmark) per eye: subject's left, right
LID_PAIRS = ((386, 374), (159, 145))
#: lid openness (gap / the neutral's gap) over which iris gaze fades in: below the first the
#: iris is hidden (MediaPipe guesses it), above the second it is seen
IRIS_GAZE_OPENNESS = (0.2, 0.5)
#: lid openness at and below which the lids touch, and from which on they are apart (for
#: :func:`lid_closure`). The landmarks sit on the lids' visible edges, which stay a lid's
#: thickness apart when the eye is shut: 1.05 mm of the ICT head's 10.7 mm (0.098) at its
#: eyeBlink 1. Set from the model, not tuned on the bench clips.
LIDS_TOUCH, LIDS_NEAR = 0.12, 0.35


def lid_openness(pose_free: np.ndarray, neutral: np.ndarray) -> np.ndarray:
    """(N,2) vertical lid gap of the subject's left and right eye over the neutral's gap
    (1 = as open as at rest, 0 = the lids touch)."""
    out = np.zeros((pose_free.shape[0], 2))
    for e, (u, lo) in enumerate(LID_PAIRS):
        g0 = max(float(neutral[u, 1] - neutral[lo, 1]), 1e-6)
        out[:, e] = (np.asarray(pose_free[:, u, 1], np.float64) - pose_free[:, lo, 1]) / g0
    return out


def lid_closure(openness: np.ndarray) -> np.ndarray:
    """(N,2) the least eyeBlink that a lid gap implies: 1 where the lids touch (openness
    under LIDS_TOUCH), 0 from LIDS_NEAR up. The solve may share a closing eye between
    eyeBlink and eyeSquint (a lower lid rising to meet the upper one); an eye that is shut
    is a blink whatever else moved. Looking down never brings the lids this close, so gaze
    does not read as a blink."""
    lo, hi = LIDS_TOUCH, LIDS_NEAR
    return np.clip((hi - np.asarray(openness, np.float64)) / (hi - lo), 0.0, 1.0)


#: the open eye's eyeBlink: eyes are open through most of any clip, so each eye's eyeBlink
#: is re-zeroed at its BLINK_REST_PERCENTILE-th percentile over the clip, at most
#: BLINK_REST_MAX (:func:`rest_blinks`). Chosen before measuring (a blink takes a few frames
#: of every hundred; a fifth of the clip is open eyes in any footage the project has seen).
BLINK_REST_PERCENTILE = 20.0
BLINK_REST_MAX = 0.3


def rest_blinks(blink: np.ndarray, rest: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(N,2) eyeBlink -> (re-zeroed (N,2), the rest value per eye (2,)); ``rest`` given (a
    calibration take's), it is used as it is instead of being found in this clip.

    The lids are solved against the actor's neutral frames; when those caught the eyes wider
    than they are through the clip (a look up, raised brows), every open frame read as a
    lid partly lowered (0.15 on a real clip) and the character's eyes stayed half-lidded. An
    eye's rest is the value it holds most of the time: ``(b - rest) / (1 - rest)``, so open
    reads 0 and shut still reads 1. A lid held low all clip long stays (the rest is capped).
    With the automatic neutral only: a neutral frame the user marks is taken at its word,
    and a calibration take brings the rest it found in its own clip (a constant, so a lid
    this clip holds low stays low)."""
    b = np.asarray(blink, np.float64)
    if rest is None:
        if b.shape[0] == 0:
            return b, np.zeros(b.shape[1:])
        rest = np.minimum(np.percentile(b, BLINK_REST_PERCENTILE, axis=0), BLINK_REST_MAX)
        rest = np.maximum(rest, 0.0)
    rest = np.asarray(rest, np.float64)
    return np.clip((b - rest) / (1.0 - rest), 0.0, 1.0), rest


def iris_gaze_trust(openness: np.ndarray) -> np.ndarray:
    """(N,2) weight in [0, 1] of the iris gaze per eye, from :func:`lid_openness`."""
    lo, hi = IRIS_GAZE_OPENNESS
    return np.clip((np.asarray(openness, np.float64) - lo) / (hi - lo), 0.0, 1.0)


def gaze_through_closures(eyes: np.ndarray, trust: np.ndarray, frames: np.ndarray,
                          trusted: float = 0.5) -> np.ndarray:
    """(N,2,3) gaze for frames whose lids hide the iris: per eye, the iris gaze ``eyes``
    (N,2,3) of the frames it is trusted on (``trust`` (N,2) >= ``trusted``) interpolated
    linearly over time (``frames`` (N,) frame numbers), held before the first and after the
    last; straight ahead (0) for an eye never trusted."""
    out = np.zeros_like(np.asarray(eyes, np.float64))
    t = np.asarray(frames, np.float64)
    for e in range(out.shape[1]):
        ok = np.flatnonzero(np.asarray(trust)[:, e] >= trusted)
        if ok.size == 0:
            continue
        for c in range(out.shape[2]):
            out[:, e, c] = np.interp(t, t[ok], eyes[ok, e, c])
    return out


def fit_lids_to_actor(basis, neutral: np.ndarray):
    """The basis with each eye's lid motion scaled to the actor's eye opening.

    A sculpted eyeBlink closes the model's own lid gap; an actor with a narrower (wider)
    opening closes theirs with less (more) travel, and would read as a partial blink. The
    vertical motion of every shape at an eye's contour landmarks is scaled by the actor's
    neutral lid gap over the model's (bounded to 0.5-1.5), so weight 1 closes the actor's
    eye exactly.

    Args:
        basis: a LandmarkBasis in the head frame (metres).
        neutral: (478,3) the actor's neutral landmarks, same frame and scale.
    Returns:
        (LandmarkBasis, (2,) the scale of the subject's left and right eye).
    """
    from ..models import mediapipe_topology as mt
    from .landmark_solve import LandmarkBasis

    b = np.array(basis.basis, np.float64, copy=True)
    scale = np.ones(2)
    for e, ((u, lo), ring) in enumerate(zip(LID_PAIRS, (mt.LEFT_EYE, mt.RIGHT_EYE))):
        g_model = float(basis.template[u, 1] - basis.template[lo, 1])
        g_actor = float(neutral[u, 1] - neutral[lo, 1])
        scale[e] = float(np.clip(g_actor / max(g_model, 1e-6), 0.5, 1.5))
        b[:, list(ring), 1] *= scale[e]
    return LandmarkBasis(basis.template, b, basis.names), scale


def gaze_to_arkit(eyes: np.ndarray) -> np.ndarray:
    """(N,2,3) gaze axis-angle (as :func:`eyes_from_arkit` returns) -> (N,52) weights with
    only the eight eyeLook* channels set, in [0, 1]; :func:`eyes_from_arkit` inverts it
    within those bounds."""
    e = np.asarray(eyes, np.float64)
    a = np.zeros((e.shape[0], len(INDEX)))
    out_l = e[:, 0, 1] / EYE_YAW_RADIANS          # left eye: +yaw looks out (subject's left)
    out_r = -e[:, 1, 1] / EYE_YAW_RADIANS         # right eye: -yaw looks out
    for side, out, pitch in (("Left", out_l, e[:, 0, 0]), ("Right", out_r, e[:, 1, 0])):
        a[:, INDEX["eyeLookOut" + side]] = np.clip(out, 0.0, 1.0)
        a[:, INDEX["eyeLookIn" + side]] = np.clip(-out, 0.0, 1.0)
        a[:, INDEX["eyeLookDown" + side]] = np.clip(pitch / EYE_PITCH_RADIANS, 0.0, 1.0)
        a[:, INDEX["eyeLookUp" + side]] = np.clip(-pitch / EYE_PITCH_RADIANS, 0.0, 1.0)
    return a


def _pearson_cols(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    return np.where(den > 1e-12, (a * b).sum(0) / np.maximum(den, 1e-12), np.nan)


def read_neutral_take(path) -> tuple[np.ndarray, np.ndarray, str, np.ndarray, np.ndarray]:
    """The neutral of a calibration take (a capture of the same actor at rest): (52,)
    blendshape-score offsets, (478,3) pose-free neutral landmarks, its name, the (2,)
    eyeBlink rest it found (:func:`rest_blinks`; 0 for takes captured before it) and the
    (52,) gains of its calibration (``1 / (1 - offset)`` for takes captured before the
    gains were stored)."""
    from pathlib import Path

    from ..capture_file import load_capture
    from ..errors import BadInput

    cap = load_capture(path)
    if "neutral_offset" not in cap.arrays or "neutral_landmarks" not in cap.arrays:
        raise BadInput(f"{Path(path).name} stores no neutral (captured with another backend "
                       f"or an older version): capture the calibration take again")
    lm = np.asarray(cap["neutral_landmarks"], np.float64)
    if lm.shape != (478, 3):
        raise BadInput(f"{Path(path).name}'s neutral has {lm.shape[0]} landmarks, not 478")
    backend = cap.meta.get("backend", {})
    rest = np.asarray(backend.get("blink_rest", [0.0, 0.0]), np.float64)
    if rest.shape != (2,) or not np.all((rest >= 0) & (rest <= BLINK_REST_MAX)):
        rest = np.zeros(2)
    off = np.asarray(cap["neutral_offset"], np.float64)
    gain = np.asarray(backend.get("neutral_gain", []), np.float64)
    if gain.shape != (52,) or not np.all(np.isfinite(gain) & (gain >= 1.0) & (gain <= 20.0)):
        gain = 1.0 / (1.0 - off)
    return off, lm, Path(path).name, rest, gain


def from_mediapipe(lmk_px: np.ndarray, arkit: np.ndarray, matrices: np.ndarray,
                   found: np.ndarray | None = None, neutral_frame: int = -1,
                   scored: np.ndarray | None = None,
                   neutral_take: tuple | None = None) -> tuple[dict, dict]:
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
        neutral_take: (offsets (52,), neutral landmarks (478,3), name[, blink rest (2,),
            gains (52,)]) of a calibration take of the same actor
            (:func:`read_neutral_take`): used instead of estimating the neutral from this
            clip, so expressions held all clip long are kept.
    Returns:
        (arrays, info): Capture fields (rows without a face are zeros; the pipeline's gap
        filling overwrites them) and a JSON-able dict with the calibration and the
        cross-checks of the landmark-space solve against the blendshape scores and of the
        Procrustes head pose against the transformation matrix.
    """
    from . import calibration, landmark_solve as ls
    from ..arkit import ARKIT_NAMES

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
    if neutral_take is not None:
        # a calibration take of the same actor: its offsets and its neutral landmarks
        off = np.asarray(neutral_take[0], np.float64)
        gain = (np.asarray(neutral_take[4], np.float64) if len(neutral_take) > 4
                else 1.0 / (1.0 - off))
        cal = calibration.Calibration(off, gain, np.zeros(0, np.int64),
                                      f"take {neutral_take[2]}")
    else:
        # the automatic neutral prefers frames facing the camera (within NEUTRAL_TILT_DEG):
        # a turned face is a poor reference for everything measured from it
        R_scored = np.asarray(matrices, np.float64)[FS, :3, :3]
        tilt = np.degrees(np.arccos(np.clip(R_scored[:, 2, 2], -1.0, 1.0)))
        cal = calibration.calibrate(raw, nf, frontal=tilt < NEUTRAL_TILT_DEG)
    a = np.zeros((F.size, 52))
    a[S] = cal.apply(raw)

    # landmark-space solve on the ICT head's sculpted shapes, against the actor's neutral
    # (from the same neutral frames); the irises stay out of the fit (ICT's eyeballs do not
    # move in its shapes) and gaze enters as known eyeLook* weights
    basis = ls.ict_head_basis()
    L = np.asarray(lmk_px)[F]
    if neutral_take is not None:
        neutral = np.asarray(neutral_take[1], np.float64)
    else:
        first = ls.solve_sequence(ls.camera_points(L[np.flatnonzero(S)[cal.neutral_frames]]),
                                  basis=basis, pinned=SOLVE_PINNED, rounds=0,
                                  point_mask=SOLVE_POINTS)
        # the actor's neutral: the neutral frames' pose-free landmarks, minus whatever
        # expression the calibrated scores still see in them (gaze aside: the neutral's
        # gaze is where the iris gaze is measured from, the zero of the eyeLook* channels)
        seen = a[S][cal.neutral_frames].copy()
        seen[:, GAZE] = 0.0
        neutral = (first.pose_free.astype(np.float64)
                   - (seen @ basis.flat).reshape(-1, 478, 3)).mean(0)
    out["neutral_landmarks"] = neutral.astype(np.float32)
    out["neutral_offset"] = cal.offset.astype(np.float32)
    basis, lid_scale = fit_lids_to_actor(basis, neutral)
    # a first pass with the eyeLook* shapes free (so a look's lid motion is not taken for
    # head motion) gives the pose-free irises, and from them the gaze
    # (not robust: the irises and lids are measured near their own eye, and the final solve
    # below refits the misfit frames)
    eyes_i, openness = ls.solve_chunked(
        L, neutral=neutral, basis=basis, pinned=TONGUE_ONLY, rounds=0, point_mask=SOLVE_POINTS,
        robust=False, each=lambda r: (eyes_from_iris(r.pose_free, neutral), lid_openness(r.pose_free, neutral)))
    k = iris_gaze_trust(openness)[:, :, None]            # the irises' say, by lid opening
    look = gaze_to_arkit(eyes_i * k)
    res = ls.solve_chunked(L, neutral=neutral, basis=basis, pinned=SOLVE_PINNED, rounds=1,
                           fixed=look, point_mask=SOLVE_POINTS)
    del L
    w = res.weights
    a_scores = a.copy()
    a[~S] = w[~S]                                         # recovered frames: landmarks only
    a[:, SOLVED] = w[:, SOLVED]                           # channel groups the solve carries
    a[:, INDEX["tongueOut"]] = 0.0                        # no evidence in landmarks or scores
    # ARKit's mouthClose closes the lips over an open jaw, never more than the jaw opens
    # (alone, the sculpted shape pushes the lips through each other)
    a[:, INDEX["mouthClose"]] = np.minimum(a[:, INDEX["mouthClose"]], a[:, INDEX["jawOpen"]])
    blinks = [INDEX["eyeBlinkLeft"], INDEX["eyeBlinkRight"]]
    a[:, blinks] = np.maximum(a[:, blinks], lid_closure(lid_openness(res.pose_free, neutral)))
    if neutral_take is not None:          # the take's own open-eye rest, a constant
        take_rest = neutral_take[3] if len(neutral_take) > 3 else np.zeros(2)
        a[:, blinks], blink_rest = rest_blinks(a[:, blinks], take_rest)
    elif nf < 0:
        a[:, blinks], blink_rest = rest_blinks(a[:, blinks])
    else:                                 # a neutral frame the user marked: its word
        blink_rest = np.zeros(2)

    rot = np.zeros((F.size, 3))
    rot[S] = matrix_to_rotvec(np.asarray(matrices, np.float64)[FS, :3, :3])
    if (~S).any():
        rot[~S] = matrix_to_rotvec(res.rotation[~S])
    R_all = rotvec_to_matrix(rot)
    ang = ls.rotation_angle_deg(R_all[S], res.rotation[S])

    # gaze: the irises where the lids are open; as they close, the iris gaze carried through
    # from the open frames around (MediaPipe's blendshape gaze reads shut lids as a look
    # down, 0.6-0.9 on real blinks, and eyeLookDown's lid shape on top of eyeBlink pushes
    # the upper lid 2-3 mm through the lower one)
    eyes = k * eyes_i + (1 - k) * gaze_through_closures(eyes_i, k[:, :, 0], F)
    a[:, GAZE] = gaze_to_arkit(eyes)[:, GAZE]             # the eyeLook* curves say the same
    blink = np.stack([a[:, INDEX["eyeBlinkLeft"]], a[:, INDEX["eyeBlinkRight"]]], 1)

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
        "solved_channels": [ARKIT_NAMES[i] for i in SOLVED],
        "lid_scale": [round(float(x), 3) for x in lid_scale],
        "blink_rest": [round(float(x), 6) for x in blink_rest],
        "neutral_gain": [round(float(x), 6) for x in cal.gain],
    }
    return out, info
