"""Dense detail mesh of one frame: the EMOCA/DECA displacement map applied to the coarse
FLAME surface by upsampling in UV space (issue 5's optional dense mesh).

DECA builds its detail mesh on a dense template made from the 256x256 UV map: one vertex per
texel covered by the UV layout, placed at the coarse surface point with that UV, displaced
along the interpolated coarse normal by the map's value (``uv_coarse_vertices + uv_z *
uv_coarse_normals``). DECA reads that template from its ``texture_data_256.npy``; here it is
computed from the mesh's own UVs (``head_template.obj``'s), so nothing beyond the user's
FLAME folder is needed and any UV resolution works:

1. :func:`uv_samples`: for every texel centre, the UV triangle that holds it and its
   barycentric coordinates (point-in-triangle tests over each triangle's texel bounding box,
   vectorised; the first triangle wins on shared edges). This is a lookup, not a renderer:
   no depth, no shading, no rasterizer dependency.
2. :func:`build`: texel positions = barycentric blend of the frame's coarse vertices, plus
   the texel's displacement along the barycentric blend of the coarse vertex normals
   (area-weighted, renormalised). Faces: two triangles per 2x2 block of covered texels, each
   wound like the coarse surface under it, dropped where the block straddles a UV seam
   (an edge longer than ``SEAM_FACTOR`` texels of the local surface scale), so islands are
   never stitched to each other.
3. :func:`write_obj`: OBJ with ``v``, ``vt`` (the texel centres) and ``f v/vt``, written
   atomically.

Map convention (``displacement.py``): row 0 is v = 1, metres along the outward normal.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInput

SEAM_FACTOR = 4.0


@dataclass
class UVSamples:
    """Texels of a ``res`` x ``res`` map covered by a UV layout."""

    res: int
    rows: np.ndarray        # (N,) int
    cols: np.ndarray        # (N,) int
    face: np.ndarray        # (N,) int: the triangle holding the texel centre
    bary: np.ndarray        # (N,3) float64: its barycentric coordinates in that triangle

    @property
    def uv(self) -> np.ndarray:
        """(N,2) UVs of the texel centres."""
        return np.stack([(self.cols + 0.5) / self.res, 1.0 - (self.rows + 0.5) / self.res], 1)

    def index_map(self) -> np.ndarray:
        """(res,res) sample index of each texel, -1 where no triangle covers it."""
        m = np.full((self.res, self.res), -1, np.int64)
        m[self.rows, self.cols] = np.arange(len(self.rows))
        return m


def _cross2(a, b):
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def uv_samples(face_uvs: np.ndarray, res: int = 256) -> UVSamples:
    """Texel centres of a ``res`` map inside the UV triangles ``face_uvs`` (F,3,2)."""
    fu = np.asarray(face_uvs, np.float64)
    if fu.ndim != 3 or fu.shape[1:] != (3, 2):
        raise ValueError(f"face UVs must be (F,3,2), got {fu.shape}")
    # texel (r, c) has its centre at x = c, y = r in these coordinates
    P = np.stack([fu[..., 0] * res - 0.5, (1.0 - fu[..., 1]) * res - 0.5], -1)   # (F,3,2)
    a, b, c = P[:, 0], P[:, 1], P[:, 2]
    den = _cross2(b - a, c - a)
    lo = np.maximum(np.ceil(P.min(1) - 1e-9), 0).astype(np.int64)                # (F,2)
    hi = np.minimum(np.floor(P.max(1) + 1e-9), res - 1).astype(np.int64)
    ext = hi - lo + 1
    usable = (np.abs(den) > 1e-12) & (ext > 0).all(1)
    size = np.where(usable, ext.max(1), 0)
    out_f, out_p, out_w = [], [], []
    K = 1
    while True:
        sel = np.flatnonzero((size > K // 2) & (size <= K)) if K > 1 else np.flatnonzero(size == 1)
        if sel.size:
            oy, ox = np.mgrid[0:K, 0:K]
            off = np.stack([ox.ravel(), oy.ravel()], 1)                          # (K*K,2) x,y
            pts = lo[sel][:, None, :] + off[None]                                # (n,K*K,2)
            inbox = (pts <= hi[sel][:, None, :]).all(-1)
            p = pts.astype(np.float64)
            A, B, C = a[sel][:, None], b[sel][:, None], c[sel][:, None]
            d = den[sel][:, None]
            wa = _cross2(B - p, C - p) / d
            wb = _cross2(C - p, A - p) / d
            wc = 1.0 - wa - wb
            inside = inbox & (wa >= -1e-9) & (wb >= -1e-9) & (wc >= -1e-9)
            t, k = np.nonzero(inside)
            out_f.append(sel[t])
            out_p.append(pts[t, k])
            out_w.append(np.stack([wa[t, k], wb[t, k], wc[t, k]], 1))
        if K >= max(int(size.max(initial=0)), 1):
            break
        K *= 2
    if not out_f:
        raise ValueError("the UV layout covers no texel centre")
    f = np.concatenate(out_f)
    p = np.concatenate(out_p)
    w = np.clip(np.concatenate(out_w), 0.0, 1.0)
    w /= w.sum(1, keepdims=True)
    ids = p[:, 1] * res + p[:, 0]
    order = np.lexsort((f, ids))                   # per texel, the lowest face index first
    ids, f, p, w = ids[order], f[order], p[order], w[order]
    keep = np.r_[True, ids[1:] != ids[:-1]]
    return UVSamples(res=int(res), rows=p[keep, 1], cols=p[keep, 0], face=f[keep],
                     bary=w[keep])


def face_cross(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F,3) cross products of each triangle's edges: twice its area along its normal."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    return np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])


def vertex_normals(vertices: np.ndarray, faces: np.ndarray,
                   cross: np.ndarray | None = None) -> np.ndarray:
    """(V,3) area-weighted unit vertex normals (right-handed winding = outward);
    ``cross``: :func:`face_cross` when already computed."""
    f = np.asarray(faces, np.int64)
    fn = face_cross(vertices, f) if cross is None else cross
    V = len(vertices)
    n = np.zeros((V, 3))
    for k in range(3):
        for j in range(3):
            n[:, j] += np.bincount(f[:, k], fn[:, j], minlength=V)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-20)


@dataclass
class DenseMesh:
    vertices: np.ndarray    # (N,3)
    faces: np.ndarray       # (M,3) indices into vertices
    uvs: np.ndarray         # (N,2) texel-centre UVs
    base: np.ndarray        # (N,3) the undisplaced surface points
    normals: np.ndarray     # (N,3) interpolated coarse normals (the displacement direction)
    displacement: np.ndarray  # (N,) metres applied along ``normals``


def build(vertices: np.ndarray, faces: np.ndarray, face_uvs: np.ndarray,
          displacement_map: np.ndarray | None, samples: UVSamples | None = None,
          scale: float = 1.0) -> DenseMesh:
    """The dense detail mesh of one frame.

    Args:
        vertices: (V,3) the frame's coarse mesh (any space; the output is in the same space).
        faces: (F,3) its triangles.
        face_uvs: (F,3,2) UVs of each triangle's corners.
        displacement_map: (R,R) metres along the outward normal (row 0 = v 1), or None for
            the undisplaced dense surface.
        samples: :func:`uv_samples` of ``face_uvs`` at the map's resolution (computed when
            None; pass it to reuse over frames).
        scale: multiplies the displacement (1 = as captured).
    """
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    if displacement_map is not None:
        D = np.asarray(displacement_map, np.float64)
        if D.ndim != 2 or D.shape[0] != D.shape[1]:
            raise ValueError(f"displacement map must be square, got {D.shape}")
        res = D.shape[0]
    else:
        D, res = None, (samples.res if samples is not None else 256)
    if samples is None:
        samples = uv_samples(face_uvs, res)
    elif samples.res != res:
        raise ValueError(f"UV samples are for {samples.res} px, the map is {res} px")
    tri = f[samples.face]                                           # (N,3)
    w = samples.bary[:, :, None]
    base = (v[tri] * w).sum(1)
    fc = face_cross(v, f)
    vn = vertex_normals(v, f, fc)
    n = (vn[tri] * w).sum(1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-20)
    d = np.zeros(len(base)) if D is None else D[samples.rows, samples.cols] * float(scale)
    dense = base + d[:, None] * n
    # faces: two triangles per 2x2 block of covered texels
    idx = samples.index_map()
    q00, q01, q10, q11 = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    t1 = np.stack([q00, q10, q01], -1).reshape(-1, 3)
    t2 = np.stack([q01, q10, q11], -1).reshape(-1, 3)
    tris = np.concatenate([t1, t2])
    tris = tris[(tris >= 0).all(1)]
    # seams: an edge much longer than the local texel size joins two UV islands
    fu = np.asarray(face_uvs, np.float64)
    area3 = 0.5 * np.linalg.norm(fc, axis=1)
    areauv = 0.5 * np.abs(_cross2(fu[:, 1] - fu[:, 0], fu[:, 2] - fu[:, 0])) * res * res
    texel = np.sqrt(area3 / np.maximum(areauv, 1e-20))[samples.face]   # metres per texel
    e = np.stack([np.linalg.norm(base[tris[:, i]] - base[tris[:, (i + 1) % 3]], axis=1)
                  for i in range(3)], 1).max(1)
    tris = tris[e <= SEAM_FACTOR * texel[tris].max(1) + 1e-12]
    # wind each triangle like the coarse surface under it
    tn = face_cross(base, tris)
    flip = (tn * n[tris].sum(1)).sum(1) < 0
    tris[flip] = tris[flip][:, [0, 2, 1]]
    return DenseMesh(vertices=dense, faces=tris, uvs=samples.uv, base=base, normals=n,
                     displacement=d)


def write_obj(path: str | os.PathLike, mesh: DenseMesh, comment: str = "") -> Path:
    """OBJ with positions, texel UVs and faces (``f v/vt``, 1-based), written atomically."""
    from ..capture_file import atomic_write_bytes

    path = Path(path)
    if not path.parent.is_dir():
        raise BadInput(f"output folder {path.parent} does not exist")
    lines = [f"# {c}" for c in comment.splitlines()]
    lines.append(f"# emoca_blender dense detail mesh: {len(mesh.vertices)} vertices, "
                 f"{len(mesh.faces)} faces")
    body = "\n".join(lines) + "\n"
    v = "\n".join("v %.7g %.7g %.7g" % tuple(p) for p in mesh.vertices)
    vt = "\n".join("vt %.7g %.7g" % tuple(t) for t in mesh.uvs)
    F = mesh.faces + 1
    fs = "\n".join("f %d/%d %d/%d %d/%d" % (a, a, b, b, c, c) for a, b, c in F)
    data = (body + v + "\n" + vt + "\n" + fs + "\n").encode()
    atomic_write_bytes(path, lambda fh: fh.write(data))
    return path


def read_obj(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices, uvs, faces) of an OBJ written by :func:`write_obj` (for checks)."""
    from .flame import parse_obj

    v, vt, fv, _ = parse_obj(path)
    return v, vt, fv


# -- a capture's frame ------------------------------------------------------------------

def frame_index(capture, video_frame: int | None) -> int:
    """Captured-frame index of ``video_frame`` (None: the middle valid frame); BadInput when
    the frame is outside the capture or has no face."""
    first = int(capture.meta.get("frame_start", 0))
    valid = np.asarray(capture["valid"], bool)
    if not valid.any():
        raise BadInput("the capture has no frame with a face")
    if video_frame is None:
        ok = np.flatnonzero(valid)
        return int(ok[len(ok) // 2])
    i = int(video_frame) - first
    if not 0 <= i < capture.n_frames:
        raise BadInput(f"frame {video_frame} is not in the capture (video frames {first}.."
                       f"{first + capture.n_frames - 1})")
    if not valid[i]:
        near = np.flatnonzero(valid)
        j = near[np.argmin(np.abs(near - i))]
        raise BadInput(f"frame {video_frame} has no face (the capture holds the last pose "
                       f"there); the nearest frame with a face is {first + j}")
    return i


def flame_frame_vertices(model, capture, i: int, head_pose: bool = False) -> np.ndarray:
    """(V,3) the FLAME mesh of captured frame ``i``: the capture's identity, expression, jaw
    and eyes (and its head rotation when ``head_pose``), in FLAME's model space (metres)."""
    from .flame import check_capture_model

    check_capture_model(capture, model)
    J = len(model.parents)
    pose = np.zeros((1, J, 3))
    pose[0, 2] = capture["jaw"][i]
    pose[0, 3:5] = capture["eyes"][i]
    if head_pose:
        pose[0, 0] = capture["head_rotation"][i]
    expr = np.asarray(capture["expression"][i:i + 1], np.float64)
    shape = np.asarray(capture["shape"], np.float64)[None]
    v, _ = model.forward(betas=shape, expression=expr, pose=pose)
    return v[0]


def capture_detail_mesh(capture, capture_path, flame_dir, video_frame: int | None = None,
                        head_pose: bool = False, scale: float = 1.0):
    """The dense detail mesh of one frame of an emoca-backend capture, from the user's FLAME
    folder (model + ``head_template.obj``) and the displacement sequence beside the capture.
    Returns (DenseMesh, video frame number)."""
    from . import displacement, flame

    i = frame_index(capture, video_frame)
    folder = displacement.sequence_dir(capture_path)
    try:
        m = displacement.read_manifest(folder)
    except FileNotFoundError as e:
        raise BadInput(f"{Path(capture_path).name} has no complete displacement sequence "
                       f"({folder.name}/): capture with --backend emoca and a checkpoint "
                       "holding the detail networks") from e
    if not displacement.is_complete(capture_path):
        raise BadInput(f"{folder.name}/ does not belong to {Path(capture_path).name} or is "
                       "incomplete (the capture was rewritten?): capture again")
    a = flame.load_assets(flame_dir, need=(flame.HEAD_TEMPLATE,))
    fu = a.uv_coords[a.uv_faces]
    v = flame_frame_vertices(a.model, capture, i, head_pose=head_pose)
    disp = displacement.read_map(displacement.frame_files(folder, m)[i])
    return build(v, a.model.faces, fu, disp, scale=scale), int(m["first"]) + i


__all__ = ["UVSamples", "DenseMesh", "uv_samples", "face_cross", "vertex_normals", "build",
           "write_obj", "read_obj", "frame_index", "flame_frame_vertices",
           "capture_detail_mesh"]
