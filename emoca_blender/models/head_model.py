"""Head models: FLAME-shaped data that a rig is built from.

A head model holds (V = vertices, F = triangles, K = expression components, J = joints):

================== =========== ========================================================
key                shape       meaning
================== =========== ========================================================
v_template         (V,3) f4    neutral vertices, metres, +Y up, +Z out of the face,
                               +X towards the subject's left (FLAME / MediaPipe frame)
faces              (F,3) i4    triangles, counter-clockwise seen from outside
uv                 (V,2) f4    optional per-vertex UVs in [0,1] (origin bottom-left)
uv_coords/uv_faces (T,2)/(F,3) optional per-corner UVs (with seams): FLAME's template
expression_basis   (K,V,3) f4  vertex offsets of each expression component at weight 1
expression_names   (K,)  str   component names (ARKit camelCase for ARKit bases)
joint_names        (J,)  str   e.g. root, neck, jaw, left_eye, right_eye
joints             (J,3) f4    rest positions of the joints
parents            (J,)  i4    parent joint index, -1 for the root
lbs_weights        (V,J) f4    skinning weights, rows sum to 1
================== =========== ========================================================

Optional: ``shape_basis`` (S,V,3), ``posedirs`` (P,V*3) pose correctives,
``mirror`` (V,) index of each vertex's mirror image, ``landmark_vertices`` (L,) vertex
index of each MediaPipe landmark, or ``landmark_tri`` (L,3) / ``landmark_bary`` (L,3) the
triangle (its three vertex indices) and barycentric weights of each landmark on the surface
(a landmark between vertices: the ICT head's embedding), ``part_names``/``vertex_part``
(which part a vertex belongs to: skin, eyes, teeth...), ``name`` and ``licence`` strings.

Files are ``.npz`` written with :func:`save_head_model`; every model shipped in
``bundled_models/`` is built by a script in ``tools/``. The bases (``expression_basis``,
``shape_basis``) may be stored as float16 (give them as float16 to the writer) and are read
back as float32.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..rotations import rotvec_to_matrix

BUNDLED_DIR = Path(__file__).resolve().parents[2] / "bundled_models"
OPEN_HEAD = "open_head.npz"
ICT_HEAD = "ict_head.npz"
#: a capture's ``head_model`` meaning its expression is the 52 ARKit channels (the default
#: backend writes "ict_head"; captures before the ICT head say "open_head")
ARKIT_HEADS = ("ict_head", "open_head")


class HeadModelError(ValueError):
    """A head model file is missing or malformed. The message names the problem."""


@dataclass
class HeadModel:
    v_template: np.ndarray
    faces: np.ndarray
    expression_basis: np.ndarray
    expression_names: tuple[str, ...]
    joint_names: tuple[str, ...]
    joints: np.ndarray
    parents: np.ndarray
    lbs_weights: np.ndarray
    uv: np.ndarray | None = None
    shape_basis: np.ndarray | None = None
    posedirs: np.ndarray | None = None
    mirror: np.ndarray | None = None
    landmark_vertices: np.ndarray | None = None
    vertex_part: np.ndarray | None = None
    part_names: tuple[str, ...] = ()
    name: str = "head"
    licence: str = ""
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    uv_coords: np.ndarray | None = None   # (T,2) per-corner UVs (FLAME's head_template.obj)
    uv_faces: np.ndarray | None = None    # (F,3) UV index of each triangle corner
    landmark_tri: np.ndarray | None = None   # (L,3) vertices of each landmark's triangle
    landmark_bary: np.ndarray | None = None  # (L,3) its barycentric weights

    @property
    def n_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def n_expressions(self) -> int:
        return int(self.expression_basis.shape[0])

    def joint_index(self, name: str) -> int:
        try:
            return self.joint_names.index(name)
        except ValueError:
            raise KeyError(f"head model {self.name!r} has no joint {name!r} "
                           f"(joints: {', '.join(self.joint_names)})") from None

    def expression_vertices(self, weights: np.ndarray) -> np.ndarray:
        """Vertices with expression weights applied, no pose.

        Args:
            weights: (K,) or (N,K).
        Returns:
            (V,3) or (N,V,3).
        """
        w = np.asarray(weights, dtype=np.float32)
        flat = self.expression_basis.reshape(self.n_expressions, -1)
        out = w @ flat
        return self.v_template + out.reshape(w.shape[:-1] + (self.n_vertices, 3))

    def landmarks(self, vertices: np.ndarray) -> np.ndarray:
        """The MediaPipe landmarks on a posed or expressed mesh.

        Args:
            vertices: (V,3) or (N,V,3) vertices of this model.
        Returns:
            (L,3) or (N,L,3): barycentric points when the model has ``landmark_tri``, else
            the ``landmark_vertices`` rows.
        """
        v = np.asarray(vertices)
        if self.landmark_tri is not None:
            return (v[..., self.landmark_tri, :] * self.landmark_bary[:, :, None]).sum(-2)
        if self.landmark_vertices is None:
            raise HeadModelError(f"head model {self.name!r} has no landmark embedding")
        return v[..., self.landmark_vertices, :]

    def validate(self) -> None:
        validate(self)


def validate(m: HeadModel) -> None:
    p = []
    V = m.v_template.shape[0] if m.v_template.ndim == 2 else -1
    if m.v_template.ndim != 2 or m.v_template.shape[1] != 3:
        p.append(f"v_template has shape {m.v_template.shape}, expected (V,3)")
    if m.faces.ndim != 2 or m.faces.shape[1] != 3:
        p.append(f"faces has shape {m.faces.shape}, expected (F,3)")
    elif m.faces.size and (m.faces.min() < 0 or m.faces.max() >= V):
        p.append(f"faces index vertices outside [0, {V})")
    K = len(m.expression_names)
    if m.expression_basis.shape != (K, V, 3):
        p.append(f"expression_basis has shape {m.expression_basis.shape}, expected ({K},{V},3)")
    J = len(m.joint_names)
    if m.joints.shape != (J, 3):
        p.append(f"joints has shape {m.joints.shape}, expected ({J},3)")
    if m.parents.shape != (J,):
        p.append(f"parents has shape {m.parents.shape}, expected ({J},)")
    elif J and (m.parents[0] != -1 or np.any(m.parents[1:] >= np.arange(1, J))
                or np.any(m.parents[1:] < 0)):
        p.append("parents must be -1 for joint 0 and point to an earlier joint otherwise")
    if m.lbs_weights.shape != (V, J):
        p.append(f"lbs_weights has shape {m.lbs_weights.shape}, expected ({V},{J})")
    elif V > 0 and not np.allclose(m.lbs_weights.sum(1), 1.0, atol=1e-4):
        p.append("lbs_weights rows do not sum to 1")
    if m.uv is not None and m.uv.shape != (V, 2):
        p.append(f"uv has shape {m.uv.shape}, expected ({V},2)")
    if (m.uv_coords is None) != (m.uv_faces is None):
        p.append("uv_coords and uv_faces come together")
    elif m.uv_faces is not None and (m.uv_faces.shape != m.faces.shape or (
            m.uv_faces.size and (m.uv_faces.min() < 0 or m.uv_faces.max() >= len(m.uv_coords)))):
        p.append(f"uv_faces has shape {m.uv_faces.shape} or indexes outside uv_coords")
    if m.mirror is not None and (m.mirror.shape != (V,) or m.mirror.min() < 0 or m.mirror.max() >= V):
        p.append("mirror must be (V,) vertex indices")
    if m.landmark_vertices is not None and m.landmark_vertices.size and (
            m.landmark_vertices.min() < 0 or m.landmark_vertices.max() >= V):
        p.append("landmark_vertices index vertices outside the mesh")
    if (m.landmark_tri is None) != (m.landmark_bary is None):
        p.append("landmark_tri and landmark_bary come together")
    elif m.landmark_tri is not None and (
            m.landmark_tri.ndim != 2 or m.landmark_tri.shape[1] != 3
            or m.landmark_bary.shape != m.landmark_tri.shape
            or m.landmark_tri.min() < 0 or m.landmark_tri.max() >= V
            or not np.allclose(m.landmark_bary.sum(1), 1.0, atol=1e-4)):
        p.append("landmark_tri/landmark_bary must be (L,3) vertex indices and (L,3) "
                 "barycentric weights summing to 1")
    if m.vertex_part is not None and m.vertex_part.shape != (V,):
        p.append(f"vertex_part has shape {m.vertex_part.shape}, expected ({V},)")
    for k in ("v_template", "expression_basis", "joints", "lbs_weights"):
        a = getattr(m, k)
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            p.append(f"{k} holds NaN/inf")
    if p:
        raise HeadModelError(f"head model {m.name!r}: " + "; ".join(p))


_ARRAYS_F = ("v_template", "expression_basis", "joints", "lbs_weights", "uv", "shape_basis",
             "posedirs", "uv_coords", "landmark_bary")
_ARRAYS_I = ("faces", "parents", "mirror", "landmark_vertices", "vertex_part", "uv_faces",
             "landmark_tri")
#: arrays that may be stored as float16 (read back as float32)
_HALF_OK = ("expression_basis", "shape_basis")
_STRINGS = ("expression_names", "joint_names", "part_names")


def save_head_model(m: HeadModel, path: str | os.PathLike) -> Path:
    """Validate and write a head model npz (atomically)."""
    from ..capture_file import atomic_write_bytes

    validate(m)
    payload: dict[str, Any] = {}
    for k in _ARRAYS_F:
        a = getattr(m, k)
        if a is not None:
            half = k in _HALF_OK and np.asarray(a).dtype == np.float16
            payload[k] = np.asarray(a, np.float16 if half else np.float32)
    for k in _ARRAYS_I:
        a = getattr(m, k)
        if a is not None:
            payload[k] = np.asarray(a, np.int32)
    for k in _STRINGS:
        payload[k] = np.array(list(getattr(m, k)), dtype=np.str_)
    payload["info_json"] = np.array(json.dumps({"name": m.name, "licence": m.licence}))
    for k, v in m.extra.items():
        payload["extra_" + k] = np.asarray(v)
    path = Path(path)
    atomic_write_bytes(path, lambda f: np.savez_compressed(f, **payload))
    return path


def load_head_model(path: str | os.PathLike) -> HeadModel:
    """Load and validate a head model npz."""
    path = Path(path)
    if not path.is_file():
        raise HeadModelError(f"head model file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        raise HeadModelError(f"{path.name} is not a readable head model ({e})") from None
    missing = [k for k in ("v_template", "faces", "expression_basis", "expression_names",
                           "joint_names", "joints", "parents", "lbs_weights") if k not in d]
    if missing:
        raise HeadModelError(f"{path.name} lacks {', '.join(missing)}: not a head model")
    info = json.loads(str(d.get("info_json", "{}")))
    kw: dict[str, Any] = {}
    for k in _ARRAYS_F + _ARRAYS_I:
        if k in d:
            kw[k] = d[k].astype(np.float32) if d[k].dtype == np.float16 else d[k]
    for k in _STRINGS:
        if k in d:
            kw[k] = tuple(str(x) for x in d[k])
    kw["extra"] = {k[6:]: v for k, v in d.items() if k.startswith("extra_")}
    m = HeadModel(name=info.get("name", path.stem), licence=info.get("licence", ""), **kw)
    validate(m)
    return m


#: the sample character: the bundled ICT head with these identity coefficients (ICT's PCA
#: modes, in standard deviations), a face unlike the typical actor's (longer, narrower, with
#: a stronger jaw), fixed so the sample is the same everywhere. It stands in for a customer's
#: character: 52 ARKit shape keys, jaw and eye bones, teeth, tongue and eyeballs.
SAMPLE_IDENTITY = np.array([1.8, -1.5, 1.2, 0.9, -1.0, 0.0, 0.8, -0.6])
#: landmark misfit allowed in the identity fit (metres, per coordinate): MediaPipe's face
#: geometry is not ICT's (its landmarks are a learned surface, ICT's embedding a render of
#: it), so besides ~1.5 mm of detection noise there is a model mismatch; at 5 mm the fitted
#: coefficients come out with an RMS of 0.7-1.1 standard deviations on the bench clips, as
#: the unit prior expects (at 1.5 mm they reach 4-13: the fit explains the mismatch with
#: identity)
IDENTITY_NOISE_M = 5e-3


def ict_head() -> HeadModel:
    """The bundled ICT FaceKit head (``bundled_models/ict_head.npz``)."""
    return load_head_model(bundled(ICT_HEAD))


def fit_identity(model: HeadModel, neutral: np.ndarray, point_weights: np.ndarray | None = None,
                 noise: float = IDENTITY_NOISE_M) -> np.ndarray:
    """The identity coefficients whose neutral landmarks best match an actor's.

    A MAP fit with a unit-Gaussian prior on the coefficients (ICT's modes are in standard
    deviations) and ``noise`` per coordinate, alternated three times with a similarity
    alignment of the actor's landmarks onto the model's (one camera does not see the head's
    size, so the scale is taken out).

    Args:
        model: a head model with ``shape_basis`` and a landmark embedding.
        neutral: (L,3) the actor's neutral landmarks (a capture's ``neutral_landmarks``).
        point_weights: (L,) weights (default: every mesh landmark, irises left out).
    Returns:
        (S,) coefficients.
    """
    from ..rotations import similarity_align

    if model.shape_basis is None:
        return np.zeros(0)
    N = np.asarray(neutral, np.float64)
    L0 = np.asarray(model.landmarks(model.v_template), np.float64)
    B = np.asarray(model.landmarks(model.shape_basis), np.float64)       # (S,L,3)
    w = np.ones(len(L0)) if point_weights is None else np.asarray(point_weights, np.float64)
    if point_weights is None and len(L0) == 478:
        w[468:] = 0.0
    Bf = B.reshape(len(B), -1)
    W = np.repeat(w, 3)
    G = (Bf * W) @ Bf.T + noise ** 2 * np.eye(len(B))
    beta = np.zeros(len(B))
    for _ in range(3):
        target = L0 + np.tensordot(beta, B, axes=1)
        s, R, t = similarity_align(N[None], target, w)
        A = s[0] * N @ R[0].T + t[0]
        beta = np.linalg.solve(G, (Bf * W) @ (A - L0).reshape(-1))
    return beta


def bundled(name: str) -> Path:
    """Path of a model shipped in ``bundled_models/``; a clear error when it is missing."""
    p = BUNDLED_DIR / name
    if not p.is_file():
        raise HeadModelError(f"bundled model {name} is missing from {BUNDLED_DIR}; rebuild it "
                             f"with the script in tools/ (see README)")
    return p


def pose_vertices(m: HeadModel, vertices: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Linear blend skinning of already-shaped vertices (no pose correctives).

    Args:
        vertices: (V,3) or (N,V,3) unposed vertices.
        pose: (J,3) or (N,J,3) axis-angle of each joint relative to its parent.
    Returns:
        posed vertices, same shape as ``vertices``.
    """
    v = np.asarray(vertices, np.float64)
    pose = np.asarray(pose, np.float64)
    batched = v.ndim == 3
    if not batched:
        v, pose = v[None], pose[None]
    N, J = pose.shape[0], len(m.joint_names)
    R = rotvec_to_matrix(pose)                             # (N,J,3,3)
    G = np.zeros((N, J, 4, 4))
    for j in range(J):
        local = np.eye(4)[None].repeat(N, 0)
        local[:, :3, :3] = R[:, j]
        p = m.parents[j]
        rel = m.joints[j] - (m.joints[p] if p >= 0 else 0.0)
        local[:, :3, 3] = rel
        G[:, j] = local if p < 0 else G[:, p] @ local
    # remove rest-pose joint location: G_j * T(-J_j)
    Gs = G.copy()
    Gs[:, :, :3, 3] -= np.einsum("njab,jb->nja", G[:, :, :3, :3], m.joints)
    T = np.einsum("vj,njab->nvab", m.lbs_weights.astype(np.float64), Gs)  # (N,V,4,4)
    out = np.einsum("nvab,nvb->nva", T[..., :3, :3], v) + T[..., :3, 3]
    return out if batched else out[0]
