"""Synthetic FLAME files for tests and benches, in the official file layout.

:func:`write_flame_pickle` writes a pickle with exactly the keys, dtypes and object types of
FLAME's ``generic_model.pkl``: ``v_template``, ``shapedirs``, ``posedirs``, ``weights`` and
``J`` as ``chumpy.ch.Ch`` objects (pickled as chumpy pickles them: ``copyreg.__newobj__``
of the class plus its ``__dict__`` state holding the array under ``'x'``), ``J_regressor`` as
a ``scipy.sparse.csc_matrix``, ``f`` uint32, ``kintree_table`` int64 (root parent 2**32-1),
``bs_style`` 'lbs', ``bs_type`` 'lrotmin', pickle protocol 2. chumpy is never installed:
a throwaway module stands in for it while pickling, so the file references
``chumpy.ch.Ch`` as the official one does.

The bases are random but smooth (Gaussian radial fields a few centimetres wide), scaled like
FLAME's PCA components (standard deviations decreasing within each block, so the identity /
expression split is where the norms jump up). The mesh is FLAME's own topology when
``head_template.obj`` is given (from ../shared/flame_aux), otherwise a closed ellipsoid head.

Two spectra (``make_flame_dict(spectrum=...)``):
- ``"local"`` (the default; the session-1 model, unchanged): every identity component is a
  field of 5 cm bumps at 160 random centres, standard deviation 4 mm / sqrt(1 + k); every
  expression component 3 cm bumps inside a face mask, 3 mm / sqrt(1 + k). Every rank is
  equally local and the variance decays slowly, so much of the identity lives in detail the
  105 MediaPipe landmarks never touch: with everything else known, the linearised posterior
  of the identity alone still leaves 2.1 mm RMS on the face (bench/flame_fit_accuracy.py,
  "information bound"), above that bench's 1.5 mm target, i.e. no estimator could meet it.
- ``"pca"``: what a PCA of real heads looks like (the official FLAME's identity basis: the
  leading components are global and very smooth, head size, face width / length, jaw line,
  nose, and carry most of the variance; fine local detail comes only at high rank, with
  small variance): component k is a field of bumps 9 cm / sqrt(1 + k) wide (9 cm to 9 mm)
  with standard deviation 10 mm / (1 + k). Expression components are likewise smooth and
  sit where faces move (FLAME's expression PCA moves the mouth, jaw, eyelids and brows):
  bumps 4 cm / (1 + k)^0.3 wide inside the face mask, weighted towards ``expr_focus``
  (feature points, e.g. the embedded MediaPipe landmarks on the template: lips, eyes, brows,
  nose, jaw line; a Gaussian of 1.5 cm around the nearest one), standard deviation
  5 mm / (1 + k)^0.75. The identity information bound falls to 0.35 mm.
Both keep the official layout exactly (keys, dtypes, shapes, chumpy pickling).
"""
from __future__ import annotations

import contextlib
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import scipy.sparse as sp

SHARED_AUX = Path(__file__).resolve().parents[2] / "shared" / "flame_aux"


# ---------------------------------------------------------------- chumpy emulation

class _Ch:
    """Pickles like chumpy.ch.Ch: NEWOBJ of the class, then BUILD with the instance dict."""

    def __init__(self, x):
        self.__dict__.update({"x": np.asarray(x, np.float64), "_dirty_vars": set(), "_itr": None,
                              "_depends_on_deps": {}, "_make_dense": False,
                              "_make_sparse": False})

    def __reduce_ex__(self, protocol):
        import copyreg

        return copyreg.__newobj__, (type(self),), dict(self.__dict__)


@contextlib.contextmanager
def fake_chumpy():
    """``chumpy`` and ``chumpy.ch`` in sys.modules for the duration, with ``Ch`` = a class
    named ``chumpy.ch.Ch``; removed afterwards (the real chumpy is never imported)."""
    saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
    pkg = types.ModuleType("chumpy")
    ch = types.ModuleType("chumpy.ch")
    Ch = type("Ch", (_Ch,), {"__module__": "chumpy.ch"})
    Ch.__qualname__ = "Ch"
    ch.Ch = Ch
    pkg.ch = ch
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = pkg, ch
    try:
        yield Ch
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


# ---------------------------------------------------------------- geometry

def uv_sphere(n_lat: int = 24, n_lon: int = 32, margin: float = 0.12):
    """A closed unit UV sphere (model axes: +Y up, +Z out of the face): ``n_lat`` rings from
    ``margin`` to pi - ``margin`` of ``n_lon`` vertices, then the two poles. Returns (V,3)
    vertices, (F,3) int64 triangles (outward winding)."""
    lat = np.linspace(margin, np.pi - margin, n_lat)
    lon = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    th, ph = np.meshgrid(lat, lon, indexing="ij")
    u = np.stack([np.sin(th) * np.sin(ph), np.cos(th), np.sin(th) * np.cos(ph)], -1).reshape(-1, 3)
    u = np.concatenate([u, [[0, 1, 0], [0, -1, 0]]])
    V = len(u)
    faces = []
    for i in range(n_lat - 1):
        for j in range(n_lon):
            a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
            c, d = a + n_lon, b + n_lon
            faces += [(a, c, b), (b, c, d)]
    top, bot = V - 2, V - 1
    last = (n_lat - 1) * n_lon
    for j in range(n_lon):
        faces.append((top, j, (j + 1) % n_lon))
        faces.append((bot, last + (j + 1) % n_lon, last + j))
    return u, np.array(faces, np.int64)


def ellipsoid_head(n_lat: int = 24, n_lon: int = 32):
    """A closed 16 x 22 x 19 cm ellipsoid (model axes), FLAME-like placement: returns
    (V,3) vertices, (F,3) triangles."""
    u, f = uv_sphere(n_lat, n_lon)
    return u * np.array([0.08, 0.11, 0.095]) + np.array([0.0, 0.0, 0.0]), f


def read_template(path: Path):
    """FLAME's head_template.obj -> (V,3) vertices (moved so the head centre is near the
    origin, as in FLAME), (F,3) triangles."""
    vs, fs = [], []
    for line in open(path):
        if line.startswith("v "):
            vs.append(line.split()[1:4])
        elif line.startswith("f "):
            fs.append([int(c.split("/")[0]) - 1 for c in line.split()[1:4]])
    v = np.asarray(vs, np.float64) - np.array([0.0, 1.5, 0.0])
    return v, np.asarray(fs, np.int64)


def _smooth_fields(v, n, rng, width, centres=96, mask=None):
    """(n, V, 3) random smooth vector fields: sums of Gaussian bumps ``width`` wide at random
    vertices (within ``mask`` when given), unit RMS each, orthogonalised. ``width`` may be a
    sequence (one width per component, in rank order: QR keeps the span of the first k)."""
    V = len(v)
    pool = np.flatnonzero(mask) if mask is not None else np.arange(V)
    widths = np.broadcast_to(np.asarray(width, np.float64), (n,))
    c = v[rng.choice(pool, min(centres, len(pool)), replace=False)]
    d2 = ((v[:, None] - c[None]) ** 2).sum(-1)                                  # (V,M)
    if np.all(widths == widths[0]):
        phi = np.exp(-d2 / (2 * widths[0] ** 2))
        if mask is not None:
            phi = phi * mask[:, None]
        coef = rng.normal(size=(n, phi.shape[1], 3))
        f = np.einsum("vm,nmk->nvk", phi, coef).reshape(n, -1)
    else:
        coef = rng.normal(size=(n, c.shape[0], 3))
        f = np.empty((n, V * 3))
        for k in range(n):
            phi = np.exp(-d2 / (2 * widths[k] ** 2))
            if mask is not None:
                phi = phi * mask[:, None]
            f[k] = (phi @ coef[k]).ravel()
    q, _ = np.linalg.qr(f.T)                                                    # orthonormal
    q = q.T[:n] * np.sqrt(V)                                                    # unit RMS/vertex
    return q.reshape(n, V, 3)


def make_flame_dict(n_shape=300, n_expr=100, template: Path | str | None = None, seed=0,
                    n_lat=24, n_lon=32, spectrum: str = "local", expr_focus=None):
    """The dict an official FLAME pickle holds, with numpy arrays (see module docstring).
    ``spectrum``: "local" (session-1 model) or "pca" (PCA-like); ``expr_focus``: optional
    (K,3) feature points the "pca" expression basis concentrates around."""
    rng = np.random.default_rng(seed)
    if template is not None:
        v, f = read_template(Path(template))
    else:
        v, f = ellipsoid_head(n_lat, n_lon)
    V = len(v)
    lo, hi = v.min(0), v.max(0)
    size = hi - lo
    # joints: root low in the neck, neck above it, jaw hinge, eye centres
    joints = np.array([
        [0.0, lo[1] + 0.12 * size[1], lo[2] + 0.35 * size[2]],
        [0.0, lo[1] + 0.25 * size[1], lo[2] + 0.35 * size[2]],
        [0.0, lo[1] + 0.40 * size[1], lo[2] + 0.55 * size[2]],
        [0.3 * size[0] * 0.5, lo[1] + 0.66 * size[1], lo[2] + 0.80 * size[2]],
        [-0.3 * size[0] * 0.5, lo[1] + 0.66 * size[1], lo[2] + 0.80 * size[2]],
    ])
    # skinning weights: smooth, rows sum to 1
    yrel = (v[:, 1] - lo[1]) / size[1]
    zrel = (v[:, 2] - lo[2]) / size[2]
    W = np.zeros((V, 5))
    jaw = np.clip((0.45 - yrel) / 0.12, 0, 1) * np.clip((zrel - 0.55) / 0.2, 0, 1)
    eye_l = np.exp(-((v - joints[3]) ** 2).sum(1) / (2 * (0.012) ** 2))
    eye_r = np.exp(-((v - joints[4]) ** 2).sum(1) / (2 * (0.012) ** 2))
    eye_l[eye_l < 1e-3] = 0
    eye_r[eye_r < 1e-3] = 0
    W[:, 2] = 0.9 * jaw
    W[:, 3] = 0.9 * eye_l
    W[:, 4] = 0.9 * eye_r
    rest = 1 - W[:, 2:].sum(1)
    neck_share = np.clip((yrel - 0.1) / 0.2, 0, 1)
    W[:, 1] = rest * neck_share
    W[:, 0] = rest - W[:, 1]
    # sparse joint regressor: inverse-distance weights of the 12 nearest vertices
    rows, cols, vals = [], [], []
    for j, p in enumerate(joints):
        d = np.linalg.norm(v - p, axis=1)
        nn = np.argsort(d)[:12]
        w = 1.0 / (d[nn] + 1e-3)
        rows += [j] * len(nn)
        cols += nn.tolist()
        vals += (w / w.sum()).tolist()
    Jr = sp.csc_matrix((vals, (rows, cols)), shape=(5, V))
    # bases: identity over the whole head, expression over the face (front, lower 3/4)
    face = (np.clip((zrel - 0.45) / 0.2, 0, 1) * np.clip((0.85 - yrel) / 0.1, 0, 1))
    if spectrum == "local":            # session-1 model: equally local bases at every rank
        ident = _smooth_fields(v, n_shape, rng, 0.05, centres=160)
        ident *= (0.004 / np.sqrt(1 + np.arange(n_shape)))[:, None, None]
        expr = _smooth_fields(v, n_expr, rng, 0.03, mask=face)
        expr *= (0.003 / np.sqrt(1 + np.arange(n_expr)))[:, None, None]
    elif spectrum == "pca":            # PCA-like: smooth global leading components
        k = np.arange(n_shape)
        ident = _smooth_fields(v, n_shape, rng, 0.09 / (1 + k) ** 0.5, centres=160)
        ident *= (0.010 / (1 + k))[:, None, None]
        k = np.arange(n_expr)
        if expr_focus is not None:     # where faces move: near the given feature points
            dist = np.sqrt(((v[:, None] - np.asarray(expr_focus)[None]) ** 2).sum(-1)).min(1)
            face = face * np.exp(-dist ** 2 / (2 * 0.015 ** 2))
        expr = _smooth_fields(v, n_expr, rng, 0.04 / (1 + k) ** 0.3, mask=face)
        expr *= (0.005 / (1 + k) ** 0.75)[:, None, None]
    else:
        raise ValueError(f"spectrum {spectrum!r}: 'local' or 'pca'")
    shapedirs = np.concatenate([ident, expr], 0).transpose(1, 2, 0)           # (V,3,S+E)
    pdirs = _smooth_fields(v, 36, rng, 0.04) * 0.004
    posedirs = pdirs.transpose(1, 2, 0)                                        # (V,3,36)
    return {
        "v_template": v, "f": f.astype(np.uint32), "shapedirs": shapedirs,
        "posedirs": posedirs, "J_regressor": Jr,
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64),
        "weights": W, "J": np.asarray(Jr @ v), "bs_style": "lbs", "bs_type": "lrotmin",
    }


def write_flame_pickle(path, d=None, **kw) -> Path:
    """Write a FLAME pickle in the official layout (``d`` from :func:`make_flame_dict`)."""
    d = make_flame_dict(**kw) if d is None else d
    path = Path(path)
    with fake_chumpy() as Ch:
        out = dict(d)
        for k in ("v_template", "shapedirs", "posedirs", "weights", "J"):
            out[k] = Ch(d[k])
        with open(path, "wb") as fh:
            pickle.dump(out, fh, protocol=2)
    return path


def write_smplx_files(folder, d) -> Path:
    """The same model for smplx's FLAME layer: ``FLAME_NEUTRAL.pkl`` with plain numpy arrays
    (smplx would need chumpy for the official one) and a ``flame_static_embedding.pkl`` of
    a few landmarks. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "FLAME_NEUTRAL.pkl", "wb") as fh:
        pickle.dump(dict(d), fh, protocol=2)
    F = len(d["f"])
    idx = np.arange(0, F, max(1, F // 10))[:10].astype(np.int64)
    b = np.tile([0.2, 0.3, 0.5], (len(idx), 1))
    with open(folder / "flame_static_embedding.pkl", "wb") as fh:
        pickle.dump({"lmk_face_idx": idx, "lmk_b_coords": b}, fh, protocol=2)
    return folder


def aux(name: str) -> Path | None:
    p = SHARED_AUX / name
    return p if p.is_file() else None
