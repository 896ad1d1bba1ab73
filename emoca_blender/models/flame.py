"""FLAME: the official model files, linear blend skinning, landmarks, masks, UVs.

FLAME (Li, Bolkart, Black, Li, Romero, SIGGRAPH Asia 2017) is supplied by the user (2020
``generic_model.pkl``, 2023 ``flame2023.pkl``, 2023 Open); it is never shipped. The official
pickle holds chumpy objects (``chumpy.ch.Ch``, whose pickled state keeps the array under
``'x'``) and a scipy sparse ``J_regressor``. :func:`load_flame` reads it without chumpy: a
restricted unpickler maps every ``chumpy.*`` class to a stand-in that only keeps its state,
keeps scipy sparse matrices and numpy arrays, and refuses anything else, so that a pickle
that is not FLAME is named as such instead of running arbitrary code.

Shapes (V vertices, F triangles, S identity + E expression components, J = 5 joints:
root/global, neck, jaw, left eye, right eye; P = 9 (J - 1) pose-corrective components):

============== ================ ==========================================================
file key       shape            meaning
============== ================ ==========================================================
v_template     (V,3) f8 Ch      neutral mesh, metres, +X subject's left, +Y up, +Z out
f              (F,3) u4         triangles
shapedirs      (V,3,S+E) f8 Ch  identity components first, then expression components
posedirs       (V,3,P) f8 Ch    pose correctives, weights (R_j - I) of joints 1..J-1
J_regressor    (J,V) sparse     joints from the shaped mesh
kintree_table  (2,J) int        row 0: parent of each joint (root: 2**32-1), row 1: ids
weights        (V,J) f8 Ch      skinning weights
J              (J,3) f8 Ch      rest joints of the template
bs_style       str              'lbs'
bs_type        str              'lrotmin'
============== ================ ==========================================================

The identity/expression split of ``shapedirs`` is read from the data: FLAME's components are
PCA directions scaled by their standard deviation, so the norms decrease within each block and
jump up where the expression block starts (:func:`split_components`); 2020 has 300 + 100.

LBS follows the SMPL/FLAME formulation in the style of smplx's ``lbs.py``: pure functions,
shapes in the docstrings, a torch version (batched, differentiable, any device) and a numpy
version (float64). Pose vectors are (B, J, 3) axis-angle, joint order as above; EMOCA's
15-value pose is [global, neck = 0, jaw, eyes = 0].
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..rotations import rotvec_to_matrix
from .head_model import HeadModel, HeadModelError

JOINT_NAMES = ("root", "neck", "jaw", "left_eye", "right_eye")
FLAME_PARENTS = np.array([-1, 0, 1, 1, 1])
FLAME_VERTICES = 5023
FLAME_FACES = 9976
REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table",
                 "weights")
# Files a user's FLAME folder may hold (the model itself is any *.pkl with the FLAME keys).
MEDIAPIPE_EMBEDDING = "mediapipe_landmark_embedding.npz"
LANDMARK68_EMBEDDING = "landmark_embedding.npy"
MASKS = "FLAME_masks.pkl"
HEAD_TEMPLATE = "head_template.obj"
MODEL_NAMES = ("generic_model.pkl", "flame2023.pkl", "flame2023_no_jaw.pkl", "FLAME2020.pkl",
               "flame2023_open.pkl")


class FlameError(HeadModelError):
    """A FLAME file is missing, damaged or not what it claims to be; the message says which
    file and what is wrong."""


# ---------------------------------------------------------------------------------------------
# Reading the pickle without chumpy
# ---------------------------------------------------------------------------------------------
class _ChumpyStandIn:
    """Takes the place of any chumpy class while unpickling; keeps the pickled state."""

    _chumpy_class = "chumpy.ch.Ch"

    def __setstate__(self, state):
        self.__dict__["_state"] = state

    def __reduce__(self):  # pragma: no cover - never pickled again
        raise TypeError("chumpy stand-ins are read-only")


_STANDINS: dict[str, type] = {}


def _standin(module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in _STANDINS:
        _STANDINS[key] = type(name, (_ChumpyStandIn,), {"_chumpy_class": key})
    return _STANDINS[key]


_ALLOWED = {
    ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
    ("copyreg", "__newobj__"), ("__builtin__", "object"), ("builtins", "object"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("numpy", "core"),
    ("__builtin__", "set"), ("builtins", "set"), ("__builtin__", "frozenset"),
    ("builtins", "frozenset"), ("__builtin__", "slice"), ("builtins", "slice"),
    ("collections", "OrderedDict"), ("_codecs", "encode"),
}


class _FlameUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "chumpy" or module.startswith("chumpy."):
            return _standin(module, name)
        if module.startswith("scipy.sparse"):
            import scipy.sparse as sp

            if hasattr(sp, name):         # old pickles name scipy.sparse.csc, .csr, .coo...
                return getattr(sp, name)
        if (module, name) in _ALLOWED:
            if module.startswith("numpy._core"):
                module = module.replace("numpy._core", "numpy.core")
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it references {module}.{name}, which a FLAME model "
                                     "never holds")


def _to_numpy(value: Any, key: str, path: Path) -> Any:
    """chumpy stand-ins -> numpy arrays (their ``x``); everything else as it is."""
    if isinstance(value, _ChumpyStandIn):
        st = value.__dict__.get("_state")
        if isinstance(st, dict) and "x" in st:
            return np.asarray(_to_numpy(st["x"], key, path))
        raise FlameError(f"{path.name}: {key} is a {value._chumpy_class} expression, not a "
                         "plain chumpy array; re-export the model with plain arrays "
                         "(e.g. numpy.array(model[key]) in a Python with chumpy)")
    return value


def read_pickle(path: str | os.PathLike, what: str = "FLAME model") -> Any:
    """Unpickle an official FLAME file (Python 2 pickles included) without chumpy.

    Raises FlameError naming the file when it is missing, truncated, or holds anything a
    FLAME file never holds.
    """
    path = Path(path)
    if not path.is_file():
        raise FlameError(f"{what} {path} does not exist")
    data = path.read_bytes()
    if not data:
        raise FlameError(f"{path.name} is empty: download the {what} again")
    try:
        obj = _FlameUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError,
            AttributeError, ImportError, KeyError, MemoryError, OverflowError) as e:
        if isinstance(e, EOFError) or "truncated" in str(e) or "ran out" in str(e):
            raise FlameError(f"{path.name} is truncated ({len(data):,} bytes, it ends in the "
                             f"middle of the data): download the {what} again") from None
        raise FlameError(f"{path.name} is not a {what} ({e})") from None
    if isinstance(obj, dict):
        obj = {str(k): _to_numpy(v, str(k), path) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
@dataclass
class FlameModel:
    """A FLAME model as numpy arrays (float64), in the smplx layout.

    Attributes:
        v_template: (V,3) neutral vertices, metres.
        faces: (F,3) int64 triangles.
        shapedirs: (V,3,S) identity components.
        exprdirs: (V,3,E) expression components.
        posedirs: (P,V*3) pose correctives (rows: joint-major, row-major (R - I) entries).
        J_regressor: (J,V) scipy sparse (csr) joint regressor.
        parents: (J,) parent joint of each joint, -1 for the root.
        lbs_weights: (V,J) skinning weights.
        J_rest: (J,3) rest joints stored in the file.
    """

    v_template: np.ndarray
    faces: np.ndarray
    shapedirs: np.ndarray
    exprdirs: np.ndarray
    posedirs: np.ndarray
    J_regressor: Any
    parents: np.ndarray
    lbs_weights: np.ndarray
    J_rest: np.ndarray
    name: str = "FLAME"
    version: str = ""
    source: str = ""
    joint_names: tuple[str, ...] = JOINT_NAMES
    info: dict = field(default_factory=dict)

    @property
    def n_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def n_shape(self) -> int:
        return int(self.shapedirs.shape[2])

    @property
    def n_expr(self) -> int:
        return int(self.exprdirs.shape[2])

    @property
    def is_flame_topology(self) -> bool:
        return self.n_vertices == FLAME_VERTICES and self.faces.shape[0] == FLAME_FACES

    @property
    def J_regressor_dense(self) -> np.ndarray:
        """(J,V) dense joint regressor."""
        return np.asarray(self.J_regressor.toarray(), np.float64)

    def model_id(self) -> str:
        """A short content identifier: ``FLAME-<S>x<E>-<hash>`` (hash of template, faces and
        expression basis), recorded in captures so a rig can check it was made with the same
        model."""
        h = hashlib.sha1()
        for a in (self.v_template.astype(np.float32), self.faces.astype(np.int32),
                  self.exprdirs.astype(np.float32)):
            h.update(np.ascontiguousarray(a).tobytes())
        return f"FLAME-{self.n_shape}x{self.n_expr}-{h.hexdigest()[:12]}"

    def expression_names(self, n: int | None = None) -> tuple[str, ...]:
        return tuple(f"exp_{k:03d}" for k in range(self.n_expr if n is None else n))

    def joints(self, betas: np.ndarray | None = None) -> np.ndarray:
        """(J,3) joints of the neutral face of identity ``betas`` (S',) (default: template)."""
        v = self.v_template
        if betas is not None and len(betas):
            b = np.asarray(betas, np.float64)
            v = v + blend_shapes_np(b[None], self.shapedirs[:, :, :len(b)])[0]
        return np.asarray(self.J_regressor @ v)

    def forward(self, betas=None, expression=None, pose=None, transl=None):
        """Numpy FLAME: vertices and joints.

        Args:
            betas: (B,S') identity, S' <= S (default zeros).
            expression: (B,E') expression, E' <= E (default zeros).
            pose: (B,J,3) axis-angle per joint (default zeros).
            transl: (B,3) translation added at the end.
        Returns:
            vertices (B,V,3), joints (B,J,3), float64.
        """
        B = next((np.asarray(a).shape[0] for a in (betas, expression, pose, transl)
                  if a is not None), 1)
        coeffs, dirs = _coeffs_and_dirs(self, betas, expression, B)
        pose = np.zeros((B, len(self.parents), 3)) if pose is None else np.asarray(pose, np.float64)
        v, j = lbs_np(coeffs, pose, self.v_template, dirs, self.posedirs, self.J_regressor,
                      self.parents, self.lbs_weights)
        if transl is not None:
            t = np.asarray(transl, np.float64)[:, None]
            v, j = v + t, j + t
        return v, j


def _coeffs_and_dirs(m: FlameModel, betas, expression, B: int):
    b = np.zeros((B, 0)) if betas is None else np.asarray(betas, np.float64).reshape(B, -1)
    e = np.zeros((B, 0)) if expression is None else np.asarray(expression, np.float64).reshape(B, -1)
    if b.shape[1] > m.n_shape or e.shape[1] > m.n_expr:
        raise ValueError(f"{b.shape[1]} identity / {e.shape[1]} expression coefficients given, "
                         f"the model has {m.n_shape} / {m.n_expr}")
    dirs = np.concatenate([m.shapedirs[:, :, :b.shape[1]], m.exprdirs[:, :, :e.shape[1]]], 2)
    return np.concatenate([b, e], 1), dirs


def split_components(shapedirs: np.ndarray, n_shape: int | None = None) -> int:
    """Number of identity components at the front of ``shapedirs`` (V,3,C).

    FLAME's components are PCA directions scaled by their standard deviations: norms fall
    within the identity block and jump up at the first expression component. The largest
    upward jump (at least 1.5x) is the split; without one, FLAME's 300 (or all of them).
    """
    C = shapedirs.shape[2]
    if n_shape is not None:
        if not 0 < n_shape <= C:
            raise FlameError(f"n_shape={n_shape} outside 1..{C}")
        return int(n_shape)
    norms = np.sqrt((np.asarray(shapedirs, np.float64) ** 2).sum((0, 1)))
    if C >= 2:
        ratio = norms[1:] / np.maximum(norms[:-1], 1e-30)
        k = int(np.argmax(ratio))
        if ratio[k] >= 1.5:
            return k + 1
    return 300 if C > 300 else C


def flame_from_dict(d: Any, path: str | os.PathLike = "FLAME model", n_shape: int | None = None,
                    strict: bool = False) -> FlameModel:
    """Validate the unpickled dict of an official FLAME file and convert it (float64 arrays).

    Raises FlameError naming every problem found. ``strict`` also requires FLAME's own
    topology (5023 vertices, 9976 triangles), which the landmark, UV and mask files need.
    """
    path = Path(path)
    nm = path.name
    if not isinstance(d, dict):
        raise FlameError(f"{nm} is a pickle of a {type(d).__name__}, not a FLAME model "
                         "(expected a dict with v_template, f, shapedirs, posedirs, "
                         "J_regressor, kintree_table, weights)")
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        found = ", ".join(sorted(d)[:12]) or "none"
        raise FlameError(f"{nm} is not a FLAME model: it lacks {', '.join(missing)} "
                         f"(keys found: {found})")
    import scipy.sparse as sp

    p: list[str] = []

    def arr(k, dtype=np.float64):
        try:
            a = np.asarray(d[k], dtype=dtype)
        except (TypeError, ValueError) as e:
            p.append(f"{k} is not numeric ({e})")
            return None
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            p.append(f"{k} holds NaN/inf")
        return a

    vt = arr("v_template")
    V = vt.shape[0] if vt is not None and vt.ndim == 2 else -1
    if vt is not None and (vt.ndim != 2 or vt.shape[1] != 3):
        p.append(f"v_template has shape {vt.shape}, expected (V,3)")
    f = arr("f", np.int64)
    if f is not None:
        if f.ndim != 2 or f.shape[1] != 3:
            p.append(f"f has shape {f.shape}, expected (F,3)")
        elif V > 0 and (f.min() < 0 or f.max() >= V):
            p.append(f"f indexes vertices outside [0, {V})")
    kt = arr("kintree_table", np.int64)
    J = -1
    parents = None
    if kt is not None:
        if kt.ndim != 2 or kt.shape[0] != 2:
            p.append(f"kintree_table has shape {kt.shape}, expected (2,J)")
        else:
            J = kt.shape[1]
            ids = {int(i): n for n, i in enumerate(kt[1])}
            par = kt[0].astype(np.int64)
            parents = np.array([-1 if (q < 0 or q >= 2**31) else ids.get(int(q), -2)
                                for q in par])
            if J != 5:
                p.append(f"kintree_table has {J} joints, FLAME has 5 (global, neck, jaw, "
                         "left eye, right eye)")
            elif not np.array_equal(parents, FLAME_PARENTS):
                p.append(f"kintree_table parents are {parents.tolist()}, FLAME's are "
                         f"{FLAME_PARENTS.tolist()}")
    sd = arr("shapedirs")
    if sd is not None and (sd.ndim != 3 or sd.shape[:2] != (V, 3) or sd.shape[2] < 2):
        p.append(f"shapedirs has shape {sd.shape}, expected ({V},3,S+E)")
    pdirs = arr("posedirs")
    P = 9 * (J - 1) if J > 0 else -1
    if pdirs is not None and pdirs.shape != (V, 3, P):
        p.append(f"posedirs has shape {pdirs.shape}, expected ({V},3,{P}) "
                 f"(9 x {max(J - 1, 0)} non-root joints)")
    w = arr("weights")
    if w is not None:
        if w.shape != (V, J):
            p.append(f"weights has shape {w.shape}, expected ({V},{J})")
        elif not np.allclose(w.sum(1), 1.0, atol=1e-4):
            p.append("weights rows do not sum to 1")
    Jr = d["J_regressor"]
    if sp.issparse(Jr):
        Jr = sp.csr_matrix(Jr, dtype=np.float64)
    else:
        try:
            Jr = sp.csr_matrix(np.asarray(Jr, np.float64))
        except (TypeError, ValueError):
            p.append(f"J_regressor is a {type(Jr).__name__}, expected a (J,V) matrix")
            Jr = None
    if Jr is not None and Jr.shape != (J, V):
        p.append(f"J_regressor has shape {Jr.shape}, expected ({J},{V})")
    if strict and not p and (V != FLAME_VERTICES or f.shape[0] != FLAME_FACES):
        p.append(f"{V} vertices and {f.shape[0]} triangles, FLAME's topology has "
                 f"{FLAME_VERTICES} and {FLAME_FACES} (the landmark, UV and mask files need it)")
    if p:
        raise FlameError(f"{nm} is not a valid FLAME model: " + "; ".join(p))
    S = split_components(sd, n_shape)
    if S >= sd.shape[2]:
        raise FlameError(f"{nm}: shapedirs has {sd.shape[2]} components and no expression "
                         "block (pass n_shape= to say where identity ends)")
    Jfile = arr("J") if "J" in d else None
    if Jfile is None or Jfile.shape != (J, 3):
        Jfile = np.asarray(Jr @ vt)
    for k in ("bs_style", "bs_type"):
        if k in d and str(d[k]) not in ("lbs", "lrotmin"):
            raise FlameError(f"{nm}: {k} is {d[k]!r}, this loader knows FLAME's 'lbs'/'lrotmin'")
    return FlameModel(
        v_template=vt, faces=f, shapedirs=sd[:, :, :S].copy(), exprdirs=sd[:, :, S:].copy(),
        posedirs=pdirs.reshape(-1, P).T.copy(), J_regressor=Jr, parents=parents,
        lbs_weights=w, J_rest=Jfile, name=path.stem, version=guess_version(path.name, S,
                                                                              sd.shape[2] - S),
        source=str(path), info={"n_shape": S, "n_expr": int(sd.shape[2] - S)})


def guess_version(filename: str, S: int, E: int) -> str:
    low = filename.lower()
    if "2023" in low:
        return "FLAME 2023 Open" if ("open" in low or "cc" in low) else "FLAME 2023"
    if "generic" in low or "2020" in low:
        return "FLAME 2020"
    return f"FLAME ({S} identity, {E} expression components)"


def load_flame(path: str | os.PathLike, n_shape: int | None = None,
               strict: bool = False) -> FlameModel:
    """Load an official FLAME pickle (2020 ``generic_model.pkl``, 2023, 2023 Open) without
    chumpy; counts are read from the file. Raises FlameError naming what is wrong."""
    path = Path(path)
    return flame_from_dict(read_pickle(path), path, n_shape=n_shape, strict=strict)


# ---------------------------------------------------------------------------------------------
# LBS, numpy (float64)
# ---------------------------------------------------------------------------------------------
def blend_shapes_np(coeffs: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """(B,C) coefficients, (V,3,C) directions -> (B,V,3) offsets."""
    return np.einsum("bl,mkl->bmk", coeffs, dirs)


def rigid_transform_np(rot_mats: np.ndarray, joints: np.ndarray, parents: np.ndarray):
    """Forward kinematics.

    Args:
        rot_mats: (B,J,3,3) rotations relative to the parent.
        joints: (B,J,3) rest joints.
        parents: (J,) parent indices (-1 root), parents before children.
    Returns:
        posed joints (B,J,3), relative transforms (B,J,4,4) (rest joint location removed).
    """
    B, J = joints.shape[:2]
    rel = joints.copy()
    rel[:, 1:] -= joints[:, parents[1:]]
    T = np.zeros((B, J, 4, 4))
    T[..., :3, :3] = rot_mats
    T[..., :3, 3] = rel
    T[..., 3, 3] = 1.0
    chain = [T[:, 0]]
    for j in range(1, J):
        chain.append(chain[parents[j]] @ T[:, j])
    G = np.stack(chain, 1)
    posed = G[..., :3, 3].copy()
    A = G.copy()
    A[..., :3, 3] -= np.einsum("bjik,bjk->bji", G[..., :3, :3], joints)
    return posed, A


def lbs_np(coeffs, pose, v_template, dirs, posedirs, J_regressor, parents, lbs_weights):
    """FLAME/SMPL linear blend skinning, numpy float64.

    Args:
        coeffs: (B,C) identity+expression coefficients.
        pose: (B,J,3) axis-angle per joint.
        v_template: (V,3).
        dirs: (V,3,C) blend shapes.
        posedirs: (P,V*3) pose correctives, P = 9 (J-1).
        J_regressor: (J,V) dense or scipy sparse.
        parents: (J,).
        lbs_weights: (V,J).
    Returns:
        vertices (B,V,3), posed joints (B,J,3).
    """
    coeffs = np.asarray(coeffs, np.float64)
    pose = np.asarray(pose, np.float64)
    B = pose.shape[0]
    v_shaped = v_template[None] + blend_shapes_np(coeffs, dirs)
    J = np.stack([np.asarray(J_regressor @ v_shaped[b]) for b in range(B)])
    R = rotvec_to_matrix(pose.reshape(-1, 3)).reshape(B, -1, 3, 3)
    feat = (R[:, 1:] - np.eye(3)).reshape(B, -1)
    v_posed = v_shaped + (feat @ posedirs).reshape(B, -1, 3)
    posed_j, A = rigid_transform_np(R, J, np.asarray(parents))
    T = np.einsum("vj,bjik->bvik", lbs_weights, A)
    v = np.einsum("bvik,bvk->bvi", T[..., :3, :3], v_posed) + T[..., :3, 3]
    return v, posed_j


def vertices2landmarks_np(vertices: np.ndarray, faces: np.ndarray, face_idx: np.ndarray,
                          bary: np.ndarray) -> np.ndarray:
    """(B,V,3) vertices -> (B,L,3) landmarks embedded by triangle index (L,) and barycentric
    coordinates (L,3) (or per-batch (B,L), (B,L,3))."""
    tri = np.asarray(faces)[np.asarray(face_idx)]                  # (..L,3)
    if tri.ndim == 2:
        pts = vertices[:, tri]                                     # (B,L,3,3)
        return np.einsum("blkc,lk->blc", pts, bary) if np.ndim(bary) == 2 else \
            np.einsum("blkc,blk->blc", pts, bary)
    pts = np.stack([vertices[b, tri[b]] for b in range(vertices.shape[0])])
    return np.einsum("blkc,blk->blc", pts, bary)


# ---------------------------------------------------------------------------------------------
# LBS, torch (batched, differentiable, any device)
# ---------------------------------------------------------------------------------------------
def batch_rodrigues(rot_vecs, eps: float = 1e-16):
    """(N,3) axis-angle -> (N,3,3) rotation matrices, differentiable at zero."""
    import torch

    theta = torch.sqrt((rot_vecs * rot_vecs).sum(-1, keepdim=True) + eps)
    k = rot_vecs / theta
    kx, ky, kz = k.unbind(-1)
    zero = torch.zeros_like(kx)
    K = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], -1).view(-1, 3, 3)
    s = torch.sin(theta)[..., None]
    c = torch.cos(theta)[..., None]
    eye = torch.eye(3, dtype=rot_vecs.dtype, device=rot_vecs.device)
    return eye + s * K + (1 - c) * torch.bmm(K, K)


def batch_rigid_transform(rot_mats, joints, parents):
    """Forward kinematics (torch).

    Args:
        rot_mats: (B,J,3,3); joints: (B,J,3) rest joints; parents: (J,) sequence of ints.
    Returns:
        posed joints (B,J,3), relative transforms (B,J,4,4).
    """
    import torch

    B, J = joints.shape[:2]
    par = [int(q) for q in parents]
    rel = torch.cat([joints[:, :1], joints[:, 1:] - joints[:, par[1:]]], 1)
    top = torch.cat([rot_mats, rel[..., None]], -1)                            # (B,J,3,4)
    bottom = torch.zeros(B, J, 1, 4, dtype=joints.dtype, device=joints.device)
    bottom[..., 0, 3] = 1.0
    T = torch.cat([top, bottom], -2)
    chain = [T[:, 0]]
    for j in range(1, J):
        chain.append(torch.matmul(chain[par[j]], T[:, j]))
    G = torch.stack(chain, 1)
    posed = G[..., :3, 3]
    corr = torch.einsum("bjik,bjk->bji", G[..., :3, :3], joints)
    A = torch.cat([G[..., :3, :3], (G[..., :3, 3] - corr)[..., None]], -1)
    A = torch.cat([A, G[..., 3:, :]], -2)
    return posed, A


def lbs(coeffs, pose, v_template, dirs, posedirs, J_regressor, parents, lbs_weights,
        joints=None):
    """FLAME/SMPL linear blend skinning (torch).

    Args:
        coeffs: (B,C) identity+expression coefficients.
        pose: (B,J,3) axis-angle per joint.
        v_template: (V,3).
        dirs: (V,3,C) blend shapes.
        posedirs: (P,V*3) pose correctives.
        J_regressor: (J,V) dense tensor (unused when ``joints`` is given).
        parents: (J,) ints.
        lbs_weights: (V,J).
        joints: optional (B,J,3) rest joints of the shaped mesh, for subsets of vertices
            whose joints were regressed from the full mesh (:class:`TorchFlame`).
    Returns:
        vertices (B,V,3), posed joints (B,J,3).
    """
    import torch

    B = pose.shape[0]
    v_shaped = v_template[None] + torch.einsum("bl,mkl->bmk", coeffs, dirs)
    if joints is None:
        joints = torch.einsum("jv,bvk->bjk", J_regressor, v_shaped)
    R = batch_rodrigues(pose.reshape(-1, 3)).view(B, -1, 3, 3)
    eye = torch.eye(3, dtype=pose.dtype, device=pose.device)
    feat = (R[:, 1:] - eye).reshape(B, -1)
    v_posed = v_shaped + torch.matmul(feat, posedirs).view(B, -1, 3)
    posed_j, A = batch_rigid_transform(R, joints, parents)
    T = torch.einsum("vj,bjik->bvik", lbs_weights, A)
    v = torch.einsum("bvik,bvk->bvi", T[..., :3, :3], v_posed) + T[..., :3, 3]
    return v, posed_j


def vertices2landmarks(vertices, faces, face_idx, bary):
    """(B,V,3) vertices -> (B,L,3) landmarks; faces (F,3) long, face_idx (L,) long,
    bary (L,3)."""
    tri = faces[face_idx]                                        # (L,3)
    return torch_einsum("blkc,lk->blc", vertices[:, tri], bary)


def torch_einsum(eq, *ops):
    import torch

    return torch.einsum(eq, *ops)


class TorchFlame:
    """FLAME as torch tensors on a device, optionally restricted to a subset of vertices
    (joints still regressed from the full mesh through precomputed joint bases), for fitting.

    ``forward(coeffs (B,C), pose (B,J,3)) -> vertices (B,V',3), joints (B,J,3)``; C counts
    the first ``n_shape`` identity then the first ``n_expr`` expression components.
    """

    def __init__(self, m: FlameModel, n_shape: int, n_expr: int, vertex_ids=None,
                 device="cpu", dtype=None):
        import torch

        dtype = dtype or torch.float32
        dirs = np.concatenate([m.shapedirs[:, :, :n_shape], m.exprdirs[:, :, :n_expr]], 2)
        Jd = m.J_regressor_dense
        self.J_template = torch.tensor(Jd @ m.v_template, dtype=dtype, device=device)
        self.J_dirs = torch.tensor(np.einsum("jv,vkc->jkc", Jd, dirs), dtype=dtype, device=device)
        ids = np.arange(m.n_vertices) if vertex_ids is None else np.asarray(vertex_ids)
        self.vertex_ids = ids
        t = lambda a: torch.tensor(np.ascontiguousarray(a), dtype=dtype, device=device)  # noqa: E731
        self.v_template = t(m.v_template[ids])
        self.dirs = t(dirs[ids])
        pd = m.posedirs.reshape(m.posedirs.shape[0], -1, 3)[:, ids].reshape(m.posedirs.shape[0], -1)
        self.posedirs = t(pd)
        self.lbs_weights = t(m.lbs_weights[ids])
        self.parents = [int(q) for q in m.parents]
        self.n_shape, self.n_expr = n_shape, n_expr

    def forward(self, coeffs, pose):
        import torch

        joints = self.J_template[None] + torch.einsum("jkc,bc->bjk", self.J_dirs, coeffs)
        return lbs(coeffs, pose, self.v_template, self.dirs, self.posedirs, None,
                   self.parents, self.lbs_weights, joints=joints)


# ---------------------------------------------------------------------------------------------
# Landmark embeddings, masks, UVs
# ---------------------------------------------------------------------------------------------
@dataclass
class Embedding:
    """Landmarks embedded in FLAME triangles: ``face_idx`` (L,), ``bary`` (L,3), and for the
    MediaPipe embedding ``mediapipe_idx`` (L,) (which MediaPipe landmark each one is)."""

    face_idx: np.ndarray
    bary: np.ndarray
    mediapipe_idx: np.ndarray | None = None

    def points(self, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """(B,V,3) -> (B,L,3)."""
        return vertices2landmarks_np(np.asarray(vertices, np.float64), faces, self.face_idx,
                                     self.bary)

    def vertex_ids(self, faces: np.ndarray) -> np.ndarray:
        """Vertices the embedding touches (sorted unique)."""
        return np.unique(np.asarray(faces)[self.face_idx].ravel())


def _check_embedding(e: Embedding, n_faces: int | None, name: str) -> Embedding:
    p = []
    if e.face_idx.ndim != 1 or e.bary.shape != (e.face_idx.shape[0], 3):
        p.append(f"triangle indices {e.face_idx.shape} and barycentric coordinates "
                 f"{e.bary.shape} do not match (expected (L,) and (L,3))")
    elif not np.allclose(e.bary.sum(1), 1.0, atol=1e-3):
        p.append("barycentric coordinates do not sum to 1")
    if n_faces is not None and e.face_idx.size and e.face_idx.max() >= n_faces:
        p.append(f"it indexes triangle {int(e.face_idx.max())}, the model has {n_faces} "
                 f"(the file is for FLAME's {FLAME_FACES}-triangle topology)")
    if p:
        raise FlameError(f"{name}: " + "; ".join(p))
    return e


def load_mediapipe_embedding(path: str | os.PathLike, n_faces: int | None = None) -> Embedding:
    """``mediapipe_landmark_embedding.npz``: 105 MediaPipe landmarks embedded in FLAME
    (``lmk_face_idx``, ``lmk_b_coords``, ``landmark_indices``)."""
    path = Path(path)
    if not path.is_file():
        raise FlameError(f"MediaPipe landmark embedding {path} does not exist (it comes with "
                         f"FLAME's auxiliary files as {MEDIAPIPE_EMBEDDING})")
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001
        raise FlameError(f"{path.name} is not a readable npz ({e})") from None
    miss = [k for k in ("lmk_face_idx", "lmk_b_coords", "landmark_indices") if k not in d]
    if miss:
        raise FlameError(f"{path.name} lacks {', '.join(miss)}: not a MediaPipe embedding")
    e = Embedding(d["lmk_face_idx"].astype(np.int64), d["lmk_b_coords"].astype(np.float64),
                  d["landmark_indices"].astype(np.int64))
    if e.mediapipe_idx.shape != e.face_idx.shape or e.mediapipe_idx.max() >= 478:
        raise FlameError(f"{path.name}: landmark_indices must be (L,) MediaPipe indices < 478")
    return _check_embedding(e, n_faces, path.name)


def load_landmark68_embedding(path: str | os.PathLike, n_faces: int | None = None
                              ) -> dict[str, Any]:
    """``landmark_embedding.npy`` (DECA/EMOCA's 68-point embedding): returns ``full``
    (Embedding of the 68 points), ``static`` (the 51 inner points) and ``dynamic_face_idx``
    (79,17) / ``dynamic_bary`` (79,17,3) contour tables indexed by yaw."""
    path = Path(path)
    if not path.is_file():
        raise FlameError(f"68-point landmark embedding {path} does not exist (FLAME auxiliary "
                         f"file {LANDMARK68_EMBEDDING})")
    try:
        d = np.load(path, allow_pickle=True, encoding="latin1")[()]
    except Exception as e:  # noqa: BLE001
        raise FlameError(f"{path.name} is not a readable landmark embedding ({e})") from None
    need = ("full_lmk_faces_idx", "full_lmk_bary_coords", "static_lmk_faces_idx",
            "static_lmk_bary_coords")
    if not isinstance(d, dict) or any(k not in d for k in need):
        raise FlameError(f"{path.name} lacks {', '.join(need)}: not a 68-point embedding")
    full = _check_embedding(Embedding(np.asarray(d["full_lmk_faces_idx"], np.int64).reshape(-1),
                                      np.asarray(d["full_lmk_bary_coords"], np.float64).reshape(-1, 3)),
                            n_faces, path.name)
    static = _check_embedding(Embedding(np.asarray(d["static_lmk_faces_idx"], np.int64).reshape(-1),
                                        np.asarray(d["static_lmk_bary_coords"], np.float64).reshape(-1, 3)),
                              n_faces, path.name)
    out: dict[str, Any] = {"full": full, "static": static}
    if "dynamic_lmk_faces_idx" in d:
        out["dynamic_face_idx"] = np.asarray(d["dynamic_lmk_faces_idx"], np.int64)
        out["dynamic_bary"] = np.asarray(d["dynamic_lmk_bary_coords"], np.float64)
    return out


def load_masks(path: str | os.PathLike, n_vertices: int | None = None) -> dict[str, np.ndarray]:
    """``FLAME_masks.pkl``: region name -> vertex indices (face, lips, nose, eye_region...)."""
    path = Path(path)
    d = read_pickle(path, what="FLAME mask file")
    if not isinstance(d, dict) or not d:
        raise FlameError(f"{path.name} is not a FLAME mask file (expected a dict of vertex lists)")
    out = {}
    for k, v in d.items():
        a = np.asarray(v).astype(np.int64).reshape(-1)
        if n_vertices is not None and a.size and (a.min() < 0 or a.max() >= n_vertices):
            raise FlameError(f"{path.name}: mask {k!r} indexes vertex {int(a.max())}, the model "
                             f"has {n_vertices}")
        out[str(k)] = a
    return out


def parse_obj(path: str | os.PathLike, what: str = "OBJ"):
    """The triangles of an OBJ file: vertices (V,3), uvs (T,2), face vertex indices (F,3)
    and face UV indices (F,3) (-1 where a corner has none), 0-based."""
    vs, vts, fv, ft = [], [], [], []
    path = Path(path)
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("v "):
                vs.append(line.split()[1:4])
            elif line.startswith("vt "):
                vts.append(line.split()[1:3])
            elif line.startswith("f "):
                corners = line.split()[1:]
                if len(corners) != 3:
                    raise FlameError(f"{path.name}: a face with {len(corners)} corners; {what} "
                                     "must be all triangles")
                ids = [re.split("/", c) for c in corners]
                fv.append([int(c[0]) for c in ids])
                ft.append([int(c[1]) if len(c) > 1 and c[1] else 0 for c in ids])
    return (np.asarray(vs, np.float64).reshape(-1, 3), np.asarray(vts, np.float64).reshape(-1, 2),
            np.asarray(fv, np.int64).reshape(-1, 3) - 1, np.asarray(ft, np.int64).reshape(-1, 3) - 1)


def load_obj_uvs(path: str | os.PathLike, faces: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UVs of ``head_template.obj``.

    Returns:
        vertices (V,3) of the obj, uv_coords (T,2), uv_faces (F,3) (a UV index per triangle
        corner). With ``faces`` given, the obj's triangles must be the model's.
    """
    path = Path(path)
    if not path.is_file():
        raise FlameError(f"FLAME UV template {path} does not exist ({HEAD_TEMPLATE} from "
                         "FLAME's auxiliary files)")
    v, vt, fv_a, ft_a = parse_obj(path, "FLAME's template")
    if not len(vt) or not len(fv_a):
        raise FlameError(f"{path.name} has no UVs or no faces: not FLAME's head_template.obj")
    if ft_a.min() < 0:
        raise FlameError(f"{path.name}: some faces have no UV indices")
    if faces is not None and (fv_a.shape != np.shape(faces) or not np.array_equal(fv_a, faces)):
        raise FlameError(f"{path.name}: its {len(fv_a)} triangles are not the model's "
                         f"{len(faces)} (the UVs belong to another topology)")
    return v, vt, ft_a


@dataclass
class FlameAssets:
    """A user's FLAME folder: the model and whichever auxiliary files are there."""

    model: FlameModel
    mediapipe: Embedding | None = None
    landmarks68: dict | None = None
    masks: dict | None = None
    uv_coords: np.ndarray | None = None
    uv_faces: np.ndarray | None = None
    missing: tuple[str, ...] = ()


def find_model_file(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    if folder.is_file():
        return folder
    if not folder.is_dir():
        raise FlameError(f"FLAME folder {folder} does not exist; download FLAME from "
                         "https://flame.is.tue.mpg.de and point the FLAME folder setting at it")
    for n in MODEL_NAMES:
        if (folder / n).is_file():
            return folder / n
    pkls = sorted(p for p in folder.glob("*.pkl") if p.name != MASKS)
    if not pkls:
        raise FlameError(f"no FLAME model (*.pkl, e.g. generic_model.pkl) in {folder}")
    return pkls[0]


def load_assets(folder: str | os.PathLike, need: tuple[str, ...] = (),
                aux_dirs: tuple[str | os.PathLike, ...] = (), n_shape: int | None = None
                ) -> FlameAssets:
    """Load the model in ``folder`` and the auxiliary files found there (or in ``aux_dirs``).

    ``need`` names auxiliary files that must be present (e.g. ``(MEDIAPIPE_EMBEDDING,)``);
    a missing one raises FlameError naming it and where it was looked for.
    """
    mpath = find_model_file(folder)
    m = load_flame(mpath, n_shape=n_shape)
    dirs = [mpath.parent] + [Path(a) for a in aux_dirs]

    def find(name):
        for d in dirs:
            if (d / name).is_file():
                return d / name
        return None

    missing = [n for n in (MEDIAPIPE_EMBEDDING, LANDMARK68_EMBEDDING, MASKS, HEAD_TEMPLATE)
               if find(n) is None]
    bad = [n for n in need if n in missing]
    if bad:
        raise FlameError(f"missing FLAME file(s) {', '.join(bad)}: looked in "
                         f"{', '.join(str(d) for d in dirs)}; put them beside {mpath.name}")
    F = m.faces.shape[0]
    a = FlameAssets(model=m, missing=tuple(missing))
    if find(MEDIAPIPE_EMBEDDING):
        a.mediapipe = load_mediapipe_embedding(find(MEDIAPIPE_EMBEDDING), F)
    if find(LANDMARK68_EMBEDDING):
        a.landmarks68 = load_landmark68_embedding(find(LANDMARK68_EMBEDDING), F)
    if find(MASKS):
        a.masks = load_masks(find(MASKS), m.n_vertices)
    if find(HEAD_TEMPLATE):
        _, a.uv_coords, a.uv_faces = load_obj_uvs(find(HEAD_TEMPLATE), m.faces)
    return a


# ---------------------------------------------------------------------------------------------
# FLAME -> HeadModel (what the Blender rig is built from)
# ---------------------------------------------------------------------------------------------
def to_head_model(m: FlameModel, shape: np.ndarray | None = None, n_expr: int | None = None,
                  uv_coords: np.ndarray | None = None, uv_faces: np.ndarray | None = None
                  ) -> HeadModel:
    """A HeadModel of one identity: ``shape`` baked into the template, joints regressed from
    the shaped mesh, ``n_expr`` expression components (default all), FLAME's posedirs and
    weights, joint names root/neck/jaw/left_eye/right_eye.

    ``extra['joint_expression']`` (E,J,3) holds how each expression component moves the
    joints (FLAME regresses joints from the expressed mesh); the rig keys that as bone
    locations so the evaluated mesh is FLAME's exactly. ``extra['model_id']`` is
    :meth:`FlameModel.model_id`.
    """
    E = m.n_expr if n_expr is None else int(n_expr)
    if not 0 < E <= m.n_expr:
        raise FlameError(f"{E} expression components asked for, the model has {m.n_expr}")
    v = m.v_template.copy()
    s = np.zeros(0) if shape is None else np.asarray(shape, np.float64).reshape(-1)
    if s.size > m.n_shape:
        raise FlameError(f"{s.size} identity coefficients, the model has {m.n_shape}")
    if s.size:
        v = v + blend_shapes_np(s[None], m.shapedirs[:, :, :s.size])[0]
    Jd = m.J_regressor_dense
    basis = np.moveaxis(m.exprdirs[:, :, :E], 2, 0)                    # (E,V,3)
    hm = HeadModel(
        v_template=v.astype(np.float32), faces=m.faces.astype(np.int32),
        expression_basis=basis.astype(np.float32),
        expression_names=m.expression_names(E), joint_names=JOINT_NAMES,
        joints=(Jd @ v).astype(np.float32), parents=m.parents.astype(np.int32),
        lbs_weights=m.lbs_weights.astype(np.float32), posedirs=m.posedirs.astype(np.float32),
        name=f"{m.name}", licence="FLAME (MPI-IS licence, user-supplied)",
        uv_coords=None if uv_coords is None else np.asarray(uv_coords, np.float32),
        uv_faces=None if uv_faces is None else np.asarray(uv_faces, np.int32),
        extra={"joint_expression": np.einsum("jv,evk->ejk", Jd, basis).astype(np.float64),
               "model_id": np.array(m.model_id()),
               "shape": s.astype(np.float32)})
    hm.validate()
    return hm


def check_capture_model(capture, model) -> None:
    """Raise FlameError when ``capture`` was not made with ``model`` (a FlameModel, a
    HeadModel from :func:`to_head_model`, or a model id string)."""
    if isinstance(model, FlameModel):
        rig_id = model.model_id()
    elif isinstance(model, HeadModel):
        rig_id = str(model.extra.get("model_id", model.name))
    else:
        rig_id = str(model)
    cap_id = str(capture.meta.get("head_model", "") or "unknown")
    if cap_id == rig_id:
        return
    cols = list(capture.names.get("expression", ()))
    src = capture.meta.get("source")
    src = (src.get("name") or src.get("path")) if isinstance(src, dict) else (src or "the capture")
    what = (f"{len(cols)} expression components {', '.join(cols[:2])}..." if cols
            else "no expression components")
    hint = ("capture the video again with --backend flame-fit --flame-dir pointing at this "
            "FLAME model" if rig_id.startswith("FLAME-") else "build the rig of that model")
    raise FlameError(f"{src} was captured with head model {cap_id!r} ({what}), but the rig is "
                     f"{rig_id!r}: its curves do not drive this rig; {hint}, or build the rig "
                     "of the head model the capture used")


def head_model_for_capture(m: FlameModel, capture, n_expr: int | None = None,
                           uv_coords=None, uv_faces=None) -> HeadModel:
    """:func:`to_head_model` with the capture's identity (``capture['shape']``), after
    checking that the capture was made with ``m``."""
    check_capture_model(capture, m)
    E = int(n_expr or m.n_expr)
    k = len(capture.names.get("expression", ()))
    if k > E:
        raise FlameError(f"the capture has {k} expression components, the rig would have {E}")
    return to_head_model(m, shape=np.asarray(capture["shape"], np.float64), n_expr=E,
                         uv_coords=uv_coords, uv_faces=uv_faces)
