"""Build ``bundled_models/ict_head.npz``: the bundled head, derived from ICT FaceKit Light.

    python tools/build_ict_head.py [--ict ../shared/ict_facekit] [--out bundled_models/ict_head.npz]
                                   [--identities 50] [--keep-renders DIR]

Source: the ICT FaceKit "Face Model Light" (USC ICT Vision and Graphics Lab, MIT licence;
``../shared/ict_facekit/ict_facekit.npz``, see ``../shared/README.md``). Its LICENSE and
CREDITS are copied beside the output as ``ict_head.LICENSE`` / ``ict_head.CREDITS.md``.
The build is deterministic (MediaPipe on the CPU, no random numbers).

Geometry
--------
* Units and axes: ICT's centimetres, +Y up, +Z out of the face, +X the subject's left, to
  metres in the same axes (the head-model frame of ``emoca_blender.models.head_model``).
* Parts kept (ICT vertex ranges, inclusive): face 0-9408, head and neck 9409-11247, mouth
  socket 11248-13293, eye sockets 13294-14061, gums and tongue 14062-17038, teeth
  17039-21450, eyeballs 21451-24590 (sclera, then iris, per eye), eyelashes 25351-26718.
  Dropped: the lacrimal fluid, eye blend and eye occlusion shells (24591-25350), which are
  transparent helpers of ICT's own renderer and would show as grey shells in Blender.
  ``part_names``/``vertex_part`` name each vertex's part; ``extra_landmarks68`` holds ICT's
  68 Multi-PIE landmark vertices (they paint the brows and lips of the landmark renders).
* Polygons: ICT's quads and triangles, triangulated (a quad a-b-c-d as a-b-c, a-c-d), with
  ICT's per-corner UVs (``uv_coords``/``uv_faces``).
* Expressions in ARKit order (52): ICT's 53 sculpted shapes, with ``browInnerUp`` =
  ``browInnerUp_L + browInnerUp_R`` and ``cheekPuff`` = ``cheekPuff_L + cheekPuff_R`` (ARKit
  has one of each), ``_L``/``_R`` -> ``Left``/``Right`` (ICT's ``_L`` moves +X, the subject's
  left, as ARKit's ``Left``), and ``tongueOut`` all zero (ICT has no such shape; it stays
  pinned in solves). The split halves are kept as ``extra_split_shapes`` (4,V,3).
* Identity: the first ``--identities`` of ICT's 100 PCA modes (``shape_basis``).
* Bases stored as float16: the build checks that the largest rounding error stays under
  0.05 mm (``MAX_HALF_ERROR_M``) and prints it.
* Joints: root (base of the neck), neck (top of the spine, behind the jaw), jaw (the
  centre of rotation that best explains the lower teeth's motion in ``jawOpen``, a rigid
  fit), left_eye/right_eye (centres of spheres fitted to each sclera). Skinning: eyeballs
  (sclera and iris) on their eye joint, so gaze turns the eyes; every other vertex on the
  neck, blended to the root below the jaw line. The teeth, gums and tongue move with the
  sculpted jaw shapes (``jawOpen`` drops the lower teeth 4 cm), so the jaw joint carries
  no skin weight in the model: a rig keys either the shapes or the bone, never both.
  ``extra_jaw_open_rotvec`` is the rotation of the lower teeth at ``jawOpen`` = 1.

Landmarks (MediaPipe's 478 on the ICT surface)
----------------------------------------------
1. The neutral head is painted with vertex colours (skin, darker brows along ICT's own
   68-point brow landmarks, lips inside its outer-lip contour, dark irises, white sclera,
   lashes a shade darker than the skin, a dark mouth) and rendered head-on with Workbench in several framings; MediaPipe
   FaceLandmarker (IMAGE mode) finds the 478 landmarks in each, and the median position per
   landmark is taken (as ``operators/scene/correspondence.py`` does for characters).
2. Each landmark is cast along the view onto the part it belongs to: the irises onto the
   eyeballs; the eye contours onto the upper or lower lid's skin, the inner lip contours
   onto the upper or lower lip; everything else onto the face skin (never the lashes). A
   ray that misses its part (a lid landmark over the eyeball, an inner-lip landmark over the
   seam of a closed mouth) moves away from the opening (up for upper lids and lips, down
   for lower ones) in 0.1 mm steps until it meets the part: it lands on the lid's or lip's
   visible edge, so the two lips (and lids) are told apart even where they touch.
3. Symmetry: ICT's neutral is mirror-symmetric, MediaPipe's detections are not quite (up to
   ~1.7 mm on a symmetric render); each left/right landmark pair is cast at the mean of its
   own and its mirror's mirrored position, midline landmarks at x = 0.
4. Depth: MediaPipe's depth is not used; points are on the surface.
The build prints the embedding's check: on renders of the neutral and of expressions
(jawOpen, eyeBlink, mouthSmile, browInnerUp), MediaPipe's detections against the embedded
landmarks projected, in mm, per landmark group.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emoca_blender.models import mediapipe_topology as mt  # noqa: E402
from emoca_blender.arkit import ARKIT_NAMES  # noqa: E402
from emoca_blender.models.head_model import BUNDLED_DIR, ICT_HEAD, HeadModel, save_head_model

DEFAULT_ICT = ROOT.parent / "shared" / "ict_facekit"
CM = 0.01
MAX_HALF_ERROR_M = 5e-5
#: ICT parts kept: name -> inclusive vertex range
PARTS = (("face", 0, 9408), ("head", 9409, 11247), ("mouth_socket", 11248, 13293),
         ("eye_socket", 13294, 14061), ("gums_tongue", 14062, 17038),
         ("teeth", 17039, 21450), ("eyeball_left", 21451, 23020),
         ("eyeball_right", 23021, 24590), ("eyelashes", 25351, 26718))
SCLERA_END = {"eyeball_left": 22220, "eyeball_right": 23790}   # last sclera vertex (inclusive)
RESOLUTION = 768
IRIS_DEG, PUPIL_DEG = 28.0, 11.0   # painted iris and pupil, angle from the eye's axis
#: framings: (zoom, x offset, y offset) in face sizes, as the character correspondence
VIEWS = ((1.0, 0.0, 0.0), (0.85, 0.04, 0.03), (1.2, -0.04, -0.03), (0.92, -0.03, 0.04),
         (1.1, 0.03, -0.04))
STEP_M = 1e-4           # 0.1 mm steps of a ray that missed its part
MAX_STEPS = 120         # ... up to 12 mm


# ----------------------------------------------------------------------------- ICT -> model

def kept_vertices() -> np.ndarray:
    return np.concatenate([np.arange(a, b + 1) for _, a, b in PARTS])


def triangulate(sizes: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ICT's polygons (3 or 4 corners) -> (F,3) triangles and (F,3) corner positions in
    ``idx`` (to carry per-corner UVs along)."""
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    tris, corners = [], []
    for n in (3, 4):
        s = starts[sizes == n]
        if n == 3:
            c = s[:, None] + np.arange(3)
            corners.append(c)
        else:
            corners.append(s[:, None] + np.array([0, 1, 2]))
            corners.append(s[:, None] + np.array([0, 2, 3]))
    if set(np.unique(sizes)) - {3, 4}:
        raise ValueError("ICT polygons other than triangles and quads")
    c = np.concatenate(corners)
    tris = idx[c]
    return tris, c


def arkit_shapes(names: list[str], deltas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ICT's shapes -> (52,V,3) in ARKit order, and the 4 split halves kept aside."""
    ict = {n: i for i, n in enumerate(names)}
    out = np.zeros((len(ARKIT_NAMES),) + deltas.shape[1:], np.float64)
    for k, a in enumerate(ARKIT_NAMES):
        if a in ("browInnerUp", "cheekPuff"):
            out[k] = deltas[ict[a + "_L"]] + deltas[ict[a + "_R"]]
        elif a == "tongueOut":
            continue
        else:
            n = a
            if a not in ict:          # eyeBlinkLeft -> eyeBlink_L (jawLeft stays jawLeft)
                n = a[:-4] + "_L" if a.endswith("Left") else a[:-5] + "_R"
            if n not in ict:
                raise KeyError(f"ICT has no shape for {a} (looked for {n})")
            out[k] = deltas[ict[n]]
    split = np.stack([deltas[ict[n]] for n in ("browInnerUp_L", "browInnerUp_R",
                                               "cheekPuff_L", "cheekPuff_R")])
    return out, split


def fit_sphere(p: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares sphere through points (algebraic fit)."""
    A = np.c_[2 * p, np.ones(len(p))]
    b = (p ** 2).sum(1)
    x = np.linalg.lstsq(A, b, rcond=None)[0]
    c = x[:3]
    return c, float(np.sqrt(x[3] + c @ c))


def fit_rigid(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R and translation t with dst ~ src R^T + t (Kabsch, no scale)."""
    ms, md = src.mean(0), dst.mean(0)
    U, _, Vt = np.linalg.svd((src - ms).T @ (dst - md))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T))])
    R = Vt.T @ D @ U.T
    return R, md - R @ ms


def rotation_centre(R: np.ndarray, t: np.ndarray, axis_hint: np.ndarray) -> np.ndarray:
    """The point on the rotation axis (nearest the origin's projection) of x -> R x + t."""
    # (I - R) c = t has a one-dimensional null space along the axis: least squares + the
    # component along the axis fixed by the hint point
    A = np.eye(3) - R
    c = np.linalg.lstsq(A, t, rcond=None)[0]
    from scipy.spatial.transform import Rotation
    ax = Rotation.from_matrix(R).as_rotvec()
    ax = ax / max(np.linalg.norm(ax), 1e-12)
    return c + ax * float((axis_hint - c) @ ax)


def build_geometry(ict_dir: Path, n_identities: int) -> tuple[HeadModel, dict]:
    d = np.load(ict_dir / "ict_facekit.npz")
    keep = kept_vertices()
    remap = -np.ones(d["neutral"].shape[0], np.int64)
    remap[keep] = np.arange(len(keep))
    V = d["neutral"][keep].astype(np.float64) * CM

    tris_all, corners = triangulate(d["face_sizes"], d["face_indices"])
    ok = (remap[tris_all] >= 0).all(1)
    if ((remap[tris_all] >= 0).any(1) & ~ok).any():
        raise ValueError("a polygon straddles a kept and a dropped ICT part")
    faces = remap[tris_all[ok]].astype(np.int32)
    uv_faces = d["uv_face_indices"][corners[ok]].astype(np.int32)
    uv_coords = d["uv"].astype(np.float32)

    part = np.zeros(len(keep), np.int32)
    names = []
    for i, (name, a, b) in enumerate(PARTS):
        part[remap[np.arange(a, b + 1)]] = i
        names.append(name)

    shapes, split = arkit_shapes([str(n) for n in d["expression_names"]],
                                 d["expression_deltas"][:, keep].astype(np.float64) * CM)
    ident = d["identity_deltas"][:n_identities][:, keep].astype(np.float64) * CM

    # joints
    eye_c = {}
    for side in ("left", "right"):
        pname = f"eyeball_{side}"
        _, a, _b = next(p for p in PARTS if p[0] == pname)
        sclera = remap[np.arange(a, SCLERA_END[pname] + 1)]
        eye_c[side], _r = fit_sphere(V[sclera])
    teeth = np.flatnonzero(part == names.index("teeth"))
    J = shapes[ARKIT_NAMES.index("jawOpen")]
    lower = teeth[np.linalg.norm(J[teeth], axis=1) > 0.5 * np.linalg.norm(J[teeth], axis=1).max()]
    R, t = fit_rigid(V[lower], V[lower] + J[lower])
    rigid_err = np.linalg.norm(V[lower] @ R.T + t - (V[lower] + J[lower]), axis=1).max()
    from scipy.spatial.transform import Rotation
    jaw_rotvec = Rotation.from_matrix(R).as_rotvec()
    jaw_c = rotation_centre(R, t, np.array([0.0, V[lower, 1].mean(), V[lower, 2].mean()]))
    jaw_c[0] = 0.0
    neck_top = np.array([0.0, jaw_c[1] - 0.01, jaw_c[2] - 0.03])
    root = np.array([0.0, V[:, 1].min() + 0.02, neck_top[2]])
    joints = np.stack([root, neck_top, jaw_c, eye_c["left"], eye_c["right"]])
    joint_names = ("root", "neck", "jaw", "left_eye", "right_eye")
    parents = np.array([-1, 0, 1, 1, 1], np.int32)
    W = np.zeros((len(V), 5))
    # neck vs root: smooth step over the neck, below the jaw line
    y0, y1 = root[1], neck_top[1] - 0.02
    k = np.clip((V[:, 1] - y0) / (y1 - y0), 0, 1)
    k = k * k * (3 - 2 * k)
    W[:, 1] = k
    W[:, 0] = 1 - k
    for j, side in ((3, "left"), (4, "right")):
        e = part == names.index(f"eyeball_{side}")
        W[e] = 0.0
        W[e, j] = 1.0

    # float16 bases, checked
    shapes16 = shapes.astype(np.float16)
    ident16 = ident.astype(np.float16)
    err = max(float(np.abs(shapes16.astype(np.float64) - shapes).max()),
              float(np.abs(ident16.astype(np.float64) - ident).max()))
    if err > MAX_HALF_ERROR_M:
        raise ValueError(f"float16 rounding error {err * 1000:.3f} mm exceeds "
                         f"{MAX_HALF_ERROR_M * 1000} mm")
    model = HeadModel(
        v_template=V.astype(np.float32), faces=faces, expression_basis=shapes16,
        expression_names=tuple(ARKIT_NAMES), joint_names=joint_names,
        joints=joints.astype(np.float32), parents=parents, lbs_weights=W.astype(np.float32),
        shape_basis=ident16, vertex_part=part, part_names=tuple(names),
        uv_coords=uv_coords, uv_faces=uv_faces, name="ICT FaceKit Light head",
        licence="MIT (ICT FaceKit, USC Institute for Creative Technologies); see "
                "bundled_models/ict_head.LICENSE",
        extra={"split_shapes": split.astype(np.float16),
               "split_names": np.array(["browInnerUp_L", "browInnerUp_R", "cheekPuff_L",
                                        "cheekPuff_R"]),
               "jaw_open_rotvec": jaw_rotvec.astype(np.float32),
               "landmarks68": remap[np.asarray(json.loads(str(d["vertex_indices_json"]))[
                   "idx_to_landmark_verts"], np.int64)].astype(np.int32)})
    info = {"vertices": len(V), "triangles": int(len(faces)),
            "identities": int(n_identities), "half_error_mm": round(err * 1000, 4),
            "jaw_rigid_fit_mm": round(float(rigid_err) * 1000, 3),
            "jaw_open_deg": round(float(np.degrees(np.linalg.norm(jaw_rotvec))), 2),
            "chin_drop_mm": round(float(-J[lower, 1].min()) * 1000, 1)}
    d.close()
    return model, info


# ----------------------------------------------------------------------------- painting

def paint_colors(model: HeadModel, lm68: np.ndarray) -> np.ndarray:
    """(V,3) linear RGB vertex colours for the landmark renders (see the module docstring).

    Args:
        lm68: (68,) model vertex index of each of ICT's 68 Multi-PIE landmarks.
    """
    V = model.v_template.astype(np.float64)
    part = model.vertex_part
    pn = list(model.part_names)
    col = np.tile(np.array([0.60, 0.38, 0.28]), (len(V), 1))
    skin = (part == pn.index("face")) | (part == pn.index("head"))
    # brows: a band along ICT's brow landmarks (17-21, 22-26), 3.5 mm below to 5.5 mm above
    for a, b in ((17, 21), (22, 26)):
        P = V[lm68[a:b + 1]]
        for i in range(len(P) - 1):
            p0, p1 = P[i], P[i + 1]
            seg = p1[:2] - p0[:2]
            tt = np.clip(((V[:, :2] - p0[:2]) @ seg) / (seg @ seg), 0, 1)
            q = p0 + tt[:, None] * (p1 - p0)
            ends = (tt > 0) & (tt < 1) | (i > 0) & (tt <= 0) | (i < len(P) - 2) & (tt >= 1)
            dy = V[:, 1] - q[:, 1]
            brow = (skin & ends & (dy > -0.0035) & (dy < 0.0055)
                    & (np.abs(V[:, 2] - q[:, 2]) < 0.01))
            col[brow] = (0.07, 0.045, 0.03)
    # lips: inside the outer lip contour (48-59) seen from the front, in front of the teeth
    poly = V[lm68[48:60], :2]
    lips = skin & _inside_polygon(V[:, :2], poly) & (V[:, 2] > V[lm68[48:60], 2].min() - 0.004)
    col[lips] = (0.55, 0.20, 0.18)
    col[part == pn.index("mouth_socket")] = (0.15, 0.03, 0.03)
    col[part == pn.index("gums_tongue")] = (0.45, 0.12, 0.12)
    col[part == pn.index("teeth")] = (0.75, 0.72, 0.65)
    # lashes: ICT's lash cards are broad; painted black they read as an open eye when
    # the lids are shut, so they are a shade darker than the skin
    col[part == pn.index("eyelashes")] = (0.30, 0.18, 0.13)
    col[part == pn.index("eye_socket")] = (0.35, 0.18, 0.15)
    # eyes: by the angle from the eyeball's forward axis (the cornea covers the iris, so
    # both are painted): pupil within 11 degrees, iris within 28, sclera beyond
    for side in ("left", "right"):
        e = np.flatnonzero(part == pn.index(f"eyeball_{side}"))
        c, _r = fit_sphere(V[e])
        u = V[e] - c
        ang = np.degrees(np.arccos(np.clip(u[:, 2] / np.linalg.norm(u, axis=1), -1, 1)))
        col[e] = (0.80, 0.78, 0.75)
        col[e[ang < IRIS_DEG]] = (0.12, 0.07, 0.04)
        col[e[ang < PUPIL_DEG]] = (0.01, 0.01, 0.01)
    return col


def _inside_polygon(p: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test of (N,2) points against a closed (M,2) polygon."""
    x, y = p[:, 0], p[:, 1]
    inside = np.zeros(len(p), bool)
    for i in range(len(poly)):
        (x0, y0), (x1, y1) = poly[i], poly[(i + 1) % len(poly)]
        cross = (y0 > y) != (y1 > y)
        xi = x0 + (y - y0) * (x1 - x0) / np.where(y1 == y0, 1e-30, y1 - y0)
        inside ^= cross & (x < xi)
    return inside


# ----------------------------------------------------------------------------- rendering

def to_blender(v: np.ndarray) -> np.ndarray:
    """Head-model axes -> Blender's (Z up, face towards -Y)."""
    v = np.asarray(v, np.float64)
    return np.stack([v[..., 0], -v[..., 2], v[..., 1]], -1)


def detect_views(model: HeadModel, vertices: np.ndarray, colors: np.ndarray, tmp: Path,
                 tag: str, keep: Path | None = None, views=VIEWS,
                 pixels: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's landmarks on head-on renders of ``vertices`` in every framing.

    Returns:
        (R,478,2) landmark positions in model x/y (metres) per framing that found a face
        (with ``pixels``: MediaPipe's (R,478,3) image landmarks as detected), and (R,) zoom
        of each.
    """
    from operators.scene.correspondence import detect_landmarks, render_front

    world = to_blender(vertices)
    skin = np.isin(model.vertex_part, [0])
    face = vertices[skin]
    cx0 = 0.5 * (face[:, 0].min() + face[:, 0].max())
    cy0 = 0.5 * (face[:, 1].min() + face[:, 1].max())
    size0 = max(np.ptp(face[:, 0]), np.ptp(face[:, 1])) * 1.25
    out = []
    for v, (zoom, dx, dy) in enumerate(views):
        s = size0 * zoom
        cx, cy = cx0 + dx * size0, cy0 + dy * size0
        img = str(tmp / f"{tag}_{v}.png")
        render_front(world, model.faces, img, cx, cy, s, RESOLUTION, colors=colors)
        if keep is not None and v == 0:
            shutil.copy(img, keep / f"{tag}.png")
        lm = detect_landmarks(img)
        if lm is None:
            continue
        R = float(RESOLUTION)
        out.append(lm if pixels else
                   np.stack([cx + (lm[:, 0] / R - 0.5) * s, cy + (0.5 - lm[:, 1] / R) * s], -1))
    if not out:
        raise RuntimeError(f"MediaPipe found no face in the renders of the ICT head ({tag})")
    return np.stack(out), np.array([views[i][0] for i in range(len(out))])


# ----------------------------------------------------------------------------- casting

def _cast_front_xy(vertices: np.ndarray, tri: np.ndarray, xy: np.ndarray):
    """Rays along -Z (from the front) through model (x, y): first hit per ray.
    Returns (tri vertex ids (L,3), bary (L,3), hit (L,))."""
    from operators.scene.correspondence import cast_front
    world = to_blender(vertices)
    # Blender x = model x, Blender z = model y
    return cast_front(world, tri, np.asarray(xy, np.float64))


def landmark_classes() -> dict[int, tuple[str, float]]:
    """MediaPipe landmark -> (part group, direction to move a ray that misses: +1 up, -1
    down, 0 none)."""
    cls: dict[int, tuple[str, float]] = {}
    for i in range(mt.N_LANDMARKS):
        cls[i] = ("skin", 0.0)
    for i in mt.IRISES:
        cls[i] = ("iris", 0.0)
    for up, lo in ((mt.RIGHT_EYE_UPPER, mt.RIGHT_EYE_LOWER),
                   (mt.LEFT_EYE_UPPER, mt.LEFT_EYE_LOWER)):
        for i in up[1:-1]:
            cls[i] = ("upper_lid", 1.0)
        for i in lo[1:-1]:
            cls[i] = ("lower_lid", -1.0)
        for i in (up[0], up[-1]):
            cls[i] = ("lid_corner", 0.0)
    for i in mt.LIPS_INNER_UPPER[1:-1]:
        cls[i] = ("upper_lip", 1.0)
    for i in mt.LIPS_INNER_LOWER[1:-1]:
        cls[i] = ("lower_lip", -1.0)
    for i in mt.MOUTH_CORNERS_INNER:
        cls[i] = ("lip_corner", 0.0)
    return cls


def part_triangles(model: HeadModel, xy_lm: np.ndarray) -> dict[str, np.ndarray]:
    """Triangle subsets each landmark group is cast onto.

    The lids and lips are split by the line through their corners (detected landmarks):
    upper-lid skin is face skin above the line through the eye's corners and within 20 mm
    of the eye, and so on."""
    V = model.v_template.astype(np.float64)
    pn = list(model.part_names)
    part = model.vertex_part
    F = model.faces
    fpart = part[F]
    skin_f = (fpart == pn.index("face")).all(1) | (fpart == pn.index("head")).all(1)
    eyes_f = np.isin(fpart, [pn.index("eyeball_left"), pn.index("eyeball_right")]).all(1)
    cen = V[F].mean(1)
    sets = {"skin": F[skin_f], "iris": F[eyes_f]}

    front_f = (fpart == pn.index("face")).all(1)

    def split(c0, c1, radius):
        """Face-skin triangles near the opening between two corners, above and below the
        line through them, and in front (a ray through a closed seam must not reach the
        back of the head)."""
        a, b = xy_lm[c0], xy_lm[c1]
        mid = 0.5 * (a + b)
        near = np.linalg.norm(cen[:, :2] - mid, axis=1) < radius
        zc = np.median(cen[front_f & near, 2])
        near &= front_f & (np.abs(cen[:, 2] - zc) < radius)
        yline = a[1] + (cen[:, 0] - a[0]) * (b[1] - a[1]) / (b[0] - a[0])
        return near & (cen[:, 1] > yline), near & (cen[:, 1] <= yline)

    ru, rl = split(33, 133, 0.02)
    lu, ll = split(263, 362, 0.02)
    sets["upper_lid"] = F[ru | lu]
    sets["lower_lid"] = F[rl | ll]
    sets["lid_corner"] = F[skin_f]
    mu, ml = split(78, 308, 0.035)
    sets["upper_lip"] = F[mu]
    sets["lower_lip"] = F[ml]
    sets["lip_corner"] = F[skin_f]
    return sets


def embed(model: HeadModel, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Cast the (478,2) detected landmark positions (model x/y) onto the neutral surface
    by class (see the module docstring). Returns (tri (478,3), bary (478,3), info)."""
    V = model.v_template.astype(np.float64)
    cls = landmark_classes()
    sets = part_triangles(model, xy)
    L = len(xy)
    tri = np.zeros((L, 3), np.int64)
    bary = np.zeros((L, 3))
    moved = np.zeros(L)
    for group, F in sets.items():
        ids = np.array([i for i in range(L) if cls[i][0] == group])
        if ids.size == 0:
            continue
        direction = np.array([cls[i][1] for i in ids])
        steps = np.arange(MAX_STEPS + 1) * STEP_M
        # every landmark tried at every step in one cast; the first hit per landmark wins
        q = np.repeat(xy[ids], len(steps), 0).reshape(len(ids), len(steps), 2).copy()
        q[:, :, 1] += direction[:, None] * steps[None, :]
        if not direction.any():
            q = q[:, :1]
        t, b, h = _cast_front_xy(V, F, q.reshape(-1, 2))
        h = h.reshape(q.shape[:2])
        if not h.any(1).all():
            bad = ids[~h.any(1)]
            raise RuntimeError(f"landmarks {bad.tolist()} ({group}) hit no surface")
        first = h.argmax(1)
        sel = np.arange(len(ids)) * q.shape[1] + first
        tri[ids] = t[sel]
        bary[ids] = b[sel]
        moved[ids] = first * STEP_M
    info = {"moved_mm_max": {g: round(float(max([moved[i] for i in range(L)
                                                  if cls[i][0] == g] or [0])) * 1000, 2)
                             for g in sets}}
    return tri, bary, info


def symmetrise(xy: np.ndarray, mirror: np.ndarray) -> tuple[np.ndarray, float]:
    """Mean of each landmark and its mirror's mirror image (midline points: x = 0)."""
    m = xy[mirror] * np.array([-1.0, 1.0])
    asym = float(np.linalg.norm(xy - m, axis=1).max()) / 2
    return 0.5 * (xy + m), asym


def groups() -> dict[str, tuple[int, ...]]:
    return {"eyes": mt.RIGHT_EYE + mt.LEFT_EYE, "irises": mt.IRISES,
            "brows": mt.RIGHT_BROW + mt.LEFT_BROW, "lips": mt.LIPS, "nose": mt.NOSE,
            "oval": mt.FACE_OVAL}


def check(model: HeadModel, colors: np.ndarray, tmp: Path, keep: Path | None) -> dict:
    """Detections on renders of expressions against the embedded landmarks, mm."""
    tests = {"neutral": {}, "jawOpen": {"jawOpen": 0.5}, "eyeBlink": {"eyeBlinkLeft": 1.0,
                                                                       "eyeBlinkRight": 1.0},
             "mouthSmile": {"mouthSmileLeft": 0.8, "mouthSmileRight": 0.8},
             "browInnerUp": {"browInnerUp": 1.0}}
    out = {}
    for tag, ws in tests.items():
        w = np.zeros(len(ARKIT_NAMES))
        for n, x in ws.items():
            w[ARKIT_NAMES.index(n)] = x
        v = model.expression_vertices(w).astype(np.float64)
        det, _ = detect_views(model, v, colors, tmp, "check_" + tag, keep)
        lm = model.landmarks(v)[:, :2]
        e = np.linalg.norm(np.median(det, 0) - lm, axis=1) * 1000
        out[tag] = {g: round(float(e[list(ix)].mean()), 2) for g, ix in groups().items()}
        out[tag]["all"] = round(float(e.mean()), 2)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ict", type=Path, default=DEFAULT_ICT)
    ap.add_argument("--out", type=Path, default=BUNDLED_DIR / ICT_HEAD)
    ap.add_argument("--identities", type=int, default=50)
    ap.add_argument("--keep-renders", type=Path, default=None)
    ap.add_argument("--no-check", action="store_true")
    a = ap.parse_args(argv)
    if not (a.ict / "ict_facekit.npz").is_file():
        print(f"error: {a.ict / 'ict_facekit.npz'} not found (ICT FaceKit Light, see "
              f"../shared/README.md)", file=sys.stderr)
        return 2
    model, info = build_geometry(a.ict, a.identities)
    colors = paint_colors(model, model.extra["landmarks68"])
    if a.keep_renders:
        a.keep_renders.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ict_build_") as tmp:
        tmp = Path(tmp)
        det, _ = detect_views(model, model.v_template.astype(np.float64), colors, tmp,
                              "neutral", a.keep_renders)
        xy = np.median(det, 0)
        info["views"] = int(len(det))
        info["view_spread_mm"] = round(float(np.linalg.norm(det - xy, axis=2).mean()) * 1000, 3)
        xy, asym = symmetrise(xy, mt.landmark_mirror_map())
        info["detection_asymmetry_mm_max"] = round(asym * 1000, 2)
        tri, bary, einfo = embed(model, xy)
        info.update(einfo)
        model.landmark_tri = tri.astype(np.int32)
        model.landmark_bary = bary.astype(np.float32)
        if not a.no_check:
            info["check_mm"] = check(model, colors, tmp, a.keep_renders)
    model.extra["build_info"] = np.array(json.dumps(info))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    save_head_model(model, a.out)
    shutil.copyfile(a.ict / "LICENSE", a.out.with_name("ict_head.LICENSE"))
    shutil.copyfile(a.ict / "CREDITS.md", a.out.with_name("ict_head.CREDITS.md"))
    info["file_mb"] = round(a.out.stat().st_size / 1e6, 2)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
