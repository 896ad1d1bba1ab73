"""Emotion-consistent expression (EMOCA supplementary, "emotion optimization", Eq. 1), on
the ICT head, with a prior over real expressions.

For a frame with input face crop I and captured ARKit expression e0, find::

    e* = argmin_e || A(render(e)) - A(I) ||_2 + 1e-3 ||e||^2          (Eq. 1)
                  + 0.5 * mean_l || P(e)_l - x_l ||                    (landmark term)
                  + w * sqrt(d^T S^-1 d),  d = (e - e0) on the free channels   (prior term)

by gradient descent (Adam) from e0, where A is the emotion network's feature
(:mod:`emotion`, the penultimate activation) and ``render`` a differentiable renderer of the
head producing the 64x64 grayscale face crop the network reads. Only the expression
changes: head pose, camera, jaw*, eyeLook* (the gaze) and tongueOut stay as captured (39
free channels).

What is added to Eq. 1, exactly:

* the landmark term (``landmark_weight`` = 0.5; 0 turns it off): the mean distance of the
  head's 468 MediaPipe landmarks (the ICT head's embedding), projected by the frame's
  camera, to the captured 2-D landmarks, in crop pixels;
* the prior term (``prior_weight`` w = 0.02; 0 turns it off): the Mahalanobis length of the
  change of the free channels under the real-expression prior
  (:mod:`expression_prior`: a Gaussian over 52-channel ARKit vectors of 14 real takes,
  ``bundled_models/arkit_prior.npz``; S is its covariance restricted to the free channels).
  A change along the way real faces move together (both smile corners, cheeks with the
  smile) costs little, a change real faces never make (cheekPuff with noseSneer) a lot;
* a guard (``prior_percentile`` = 99; None turns it off): a result whose Mahalanobis
  distance under the prior exceeds the 99th percentile of the prior's real frames (or the
  capture's own distance, if that is larger) is moved back along its change to that
  radius; a guarded result worse than the capture under the full loss is replaced by the
  capture.

Renderer (plain torch, no pytorch3d): the bundled ICT FaceKit head (:func:`refine_head`)
with the actor's identity (:func:`head_model.fit_identity` to the capture's
``neutral_landmarks``, as the rig is built), driven by its 52 sculpted ARKit shapes. The
face and head are textured with the actor's *neutral* frame (the capture's calibration
neutral, projected through the head at that frame's expression and pose, so the rendering
carries emotion only through the expression's geometry, never by copying the refined
frame's pixels); the parts no frame shows -- mouth socket, gums and tongue, teeth, eye
sockets, eyeballs with a dark iris disc -- get plain gray levels relative to the actor's
skin (the neutral texture's median over the face), the luminance ratios of the rig's own
part colours (:data:`PLAIN_SHADES`); the lashes are left out. The head is closed (the
mouth socket behind the lips, the eyeballs behind the lids), so the input crop never shows
through it: a test checks that the coverage has no hole at rest and with mouth and eyes
wide open. It is drawn over the input crop in the 64x64 box the network reads
(:func:`emotion.crop_box`, so hair, background and neck are the input's), with a
weak-perspective camera: the captured head rotation, scale and offset fitted to the
captured landmarks.

* ``renderer="warp"`` (the default, :func:`render_warp`): hard visibility from an exact
  rasterizer (:func:`rasterize`: every triangle against the sub-pixels of its bounding box,
  the covering triangle nearest the viewer wins; no gradient) and a differentiable texture
  warp (the sub-pixel's barycentric coordinates in its triangle, differentiable in the
  vertices, interpolate texture coordinates; the texture, a 256x256 crop of the neutral
  frame, is sampled bilinearly; plain parts take their gray level), 2x2 supersampled and
  box-filtered to 64x64 as ``cv2.INTER_AREA`` makes the input crop. Gradients reach the
  expression through the textured interior of the face; outlines and plain parts have none.
  About 25 ms per rendering of the 48,836 triangles on one core.
* ``renderer="soft"`` (:func:`render`): a soft rasterizer (SoftRas-style) with per-vertex
  gray levels; blurry at 64x64, kept for comparison.

Optimiser: Adam from e0, twice -- 120 iterations at learning rate 0.05, and 60 at 0.1
(``second_lr``; None: one run) -- keeping the better result; the free channels are
clamped to [0, 1] after each step; the raster is made afresh at every step; the best
iterate by the full loss is kept, and a result worse than the capture under the full loss
is replaced by the capture. The landscape is rough (hard visibility), so Adam's coarse
steps and keeping the best iterate matter.

:func:`emotion_fidelity` compares the network's class and feature on the video crop with
those on renderings of expression curves (the capture's, the refined), frame by frame.

Measured (``python bench/emotion_refine.py``; figures and what they mean in
docs/emotion_refine.md and docs/bench.md): with plausible edits the feature distance falls
far less than the unconstrained optimum reached, and the 30% target is not met on most
MEAD clips; the refined keyframes stay within the prior's 99th percentile.

Options: per frame or on keyframes (every k-th valid frame, the change interpolated
between); ``strength`` scales the change (0 = the capture, 1 = the optimum). Off by
default in the pipeline; ``python -m emoca_blender refine`` runs it on a capture.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import BadInput

REG = 1e-3
# held as captured: the jaw and the gaze (Eq. 1 optimises the expression only), and the
# tongue (the ICT head has no tongueOut shape; on the earlier open head the optimiser used
# it as a spare lip control)
FIXED_ARKIT_PREFIXES = ("jaw", "eyeLook", "tongue")


@dataclass
class RefineSettings:
    iterations: int = 120
    lr: float = 0.05
    second_lr: float | None = 0.1   # a second Adam run from the capture at this rate, for
    #                                 half the iterations; the better of the two is kept
    reg: float = REG
    keyframe_step: int = 1          # 1 = every frame; k = every k-th valid frame, interpolated
    strength: float = 1.0
    renderer: str = "warp"          # "warp": hard visibility, differentiable texture warp,
    #                                 supersampled (render_warp); "soft": soft rasterizer (render)
    supersample: int = 2            # warp: sub-pixels per crop pixel along each axis
    texture_size: int = 256         # resolution of the texture crop (the neutral frame)
    sigma: float = 0.6              # soft: coverage softness, crop pixels
    gamma: float = 1.0              # soft: z-buffer temperature, crop pixels
    candidates: int = 16            # soft: triangles considered per pixel (nearest centroids)
    threads: int | None = 1
    composite: bool = True          # draw the head over the input crop (else a flat gray)
    landmark_weight: float = 0.5    # landmark consistency term (not in Eq. 1; 0 = Eq. 1)
    appearance: str = "neutral"     # "neutral": the actor's neutral frame as the texture;
    #                                 "frame": vertex colours from the refined frame itself
    prior_weight: float = 0.02      # w of the prior term w * sqrt(d^T P d), d the change of
    #                                 the free components, P their inverse covariance under
    #                                 the real-expression prior (0: no term)
    prior_percentile: float | None = 99.0   # the result's Mahalanobis distance is kept
    #                                 within this percentile of the prior's frames (or the
    #                                 capture's own, if larger); None: no such guard


@dataclass
class FrameResult:
    frame: int
    expression: np.ndarray
    feat_dist_before: float
    feat_dist_after: float
    lmk_err_before: float
    lmk_err_after: float
    mahal_before: float = float("nan")     # Mahalanobis distance under the prior
    mahal_after: float = float("nan")
    guard_scale: float = 1.0               # the part of the change kept by the prior guard


@dataclass
class RefineResult:
    expression: np.ndarray                  # (N,K) refined (strength applied, interpolated)
    frames: list[FrameResult] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)     # frames without a face
    free: np.ndarray | None = None          # (K,) bool, components that were optimised

    def summary(self) -> dict:
        if not self.frames:
            return {"frames": 0, "skipped": len(self.skipped)}
        fb = np.array([f.feat_dist_before for f in self.frames])
        fa = np.array([f.feat_dist_after for f in self.frames])
        lb = np.array([f.lmk_err_before for f in self.frames])
        la = np.array([f.lmk_err_after for f in self.frames])
        return {"frames": len(self.frames), "skipped": len(self.skipped),
                "feat_dist_before": float(fb.mean()), "feat_dist_after": float(fa.mean()),
                "feat_drop": float(1 - fa.mean() / max(fb.mean(), 1e-12)),
                "lmk_err_before": float(lb.mean()), "lmk_err_after": float(la.mean()),
                "lmk_rise": float(la.mean() / max(lb.mean(), 1e-12) - 1)}


# -- the renderer ---------------------------------------------------------------------------

def _edge_functions(P, a, b, c):
    """2-D edge functions of points ``P`` against triangles (a, b, c) (broadcasting over
    leading dimensions): cross(c - b, P - b), cross(a - c, P - c), cross(b - a, P - a) --
    the unnormalised barycentrics of a, b, c -- and the signed double area."""

    def edge(p0, p1):
        e = p1 - p0
        return e[..., 0] * (P[..., 1] - p0[..., 1]) - e[..., 1] * (P[..., 0] - p0[..., 0])

    area = (b - a)[..., 0] * (c - a)[..., 1] - (b - a)[..., 1] * (c - a)[..., 0]
    return edge(b, c), edge(c, a), edge(a, b), area


def render(v2, z, colors, faces, size: int = 64, sigma: float = 0.6, gamma: float = 1.0,
           background=0.5, candidates=None, texture=None):
    """Soft-rasterize a mesh to a (size,size) gray image, differentiably.

    Args:
        v2: (V,2) tensor, vertex positions in output pixels (x right, y down).
        z: (V,) tensor, depth towards the viewer (larger = nearer), in pixels.
        colors: (V,) tensor, gray level per vertex.
        background: a gray level, or a (size,size) tensor: the image the mesh is drawn over.
        texture: optional (image (H,W) tensor, uv (V,2) tensor in that image's pixels): the
            surface is textured by the image (bilinear, at the barycentric uv) instead of
            Gouraud-shaded with ``colors``.
        faces: (F,3) long tensor.
        candidates: optional (P,K) long tensor, the triangles each pixel considers (from
            :func:`nearest_faces`; P = size*size); default all F triangles for every pixel.
    Returns:
        (size,size) tensor.
    """
    import torch

    ys, xs = torch.meshgrid(torch.arange(size, dtype=v2.dtype) + 0.5,
                            torch.arange(size, dtype=v2.dtype) + 0.5, indexing="ij")
    P = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)          # (P,2)
    if candidates is None:
        candidates = torch.arange(faces.shape[0])[None].expand(P.shape[0], -1)
    fc = faces[candidates]                                         # (P,K,3)
    a, b, c = v2[fc[..., 0]], v2[fc[..., 1]], v2[fc[..., 2]]       # (P,K,2)
    e0, e1, e2, area = _edge_functions(P[:, None, :], a, b, c)         # (P,K)
    sgn = torch.sign(area).detach()
    ok = (area.abs() > 1e-6).detach()
    aa = area.abs().clamp_min(1e-6)
    e0, e1, e2 = e0 * sgn, e1 * sgn, e2 * sgn                            # inside: all >= 0
    w0, w1, w2 = e0 / aa, e1 / aa, e2 / aa                               # barycentrics
    dist = torch.minimum(torch.minimum(e0 / (c - b).norm(dim=-1).clamp_min(1e-6),
                                       e1 / (a - c).norm(dim=-1).clamp_min(1e-6)),
                         e2 / (b - a).norm(dim=-1).clamp_min(1e-6))
    cov = torch.sigmoid(dist / sigma) * ok                               # (P,K)
    W = torch.stack([w0, w1, w2]).clamp(0, 1)
    W = W / W.sum(0, keepdim=True).clamp_min(1e-8)
    zf = z[fc]                                                           # (P,K,3)
    cf = colors[fc] if texture is None else None
    zp = W[0] * zf[..., 0] + W[1] * zf[..., 1] + W[2] * zf[..., 2]
    if texture is None:
        cp = W[0] * cf[..., 0] + W[1] * cf[..., 1] + W[2] * cf[..., 2]
    else:
        tex, uv = texture
        uf = uv[fc]                                                      # (P,K,3,2)
        up = W[0][..., None] * uf[..., 0, :] + W[1][..., None] * uf[..., 1, :] \
            + W[2][..., None] * uf[..., 2, :]                            # (P,K,2)
        H, Wd = tex.shape[-2:]
        g = torch.stack([up[..., 0] / Wd, up[..., 1] / H], -1) * 2 - 1
        cp = torch.nn.functional.grid_sample(tex[None, None], g[None], align_corners=False,
                                             padding_mode="border")[0, 0]
    # soft z-buffer among the triangles that (nearly) cover the pixel: a far, uncovered
    # triangle must not win by being nearer the camera
    near = (cov > 1e-3).detach()
    logit = torch.nn.functional.logsigmoid(dist / sigma) + zp / gamma
    logit = torch.where(near, logit, logit.detach() * 0 - 1e4)
    wts = torch.softmax(logit, dim=1)
    face_col = (wts * cp).sum(1)
    # coverage summed, not SoftRas' 1 - prod(1 - cov): on an edge shared by two triangles
    # the two halves add up to 1 instead of leaving a see-through seam of alpha 0.75
    alpha = cov.sum(1).clamp(max=1.0)
    if torch.is_tensor(background) and background.dim() > 0:
        background = background.reshape(-1)                          # an image behind
    img = alpha * face_col + (1 - alpha) * background
    return img.reshape(size, size)


def nearest_faces(v2, faces, size: int = 64, k: int = 12):
    """(size*size, k) indices of the triangles whose centroids lie nearest each pixel centre:
    the candidates :func:`render` needs (recomputed as the mesh moves)."""
    import torch

    with torch.no_grad():
        cen = v2[faces].mean(1)                                      # (F,2)
        ys, xs = torch.meshgrid(torch.arange(size, dtype=v2.dtype) + 0.5,
                                torch.arange(size, dtype=v2.dtype) + 0.5, indexing="ij")
        P = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
        d = torch.cdist(P, cen)
        return d.topk(min(k, faces.shape[0]), dim=1, largest=False).indices


def rasterize(v2, z, faces, size: int = 64, supersample: int = 2, eps: float = 1e-4):
    """Hard rasterization (no gradient): the visible triangle of every sub-pixel, exactly.

    Sub-pixel centres lie on a (size*supersample)^2 grid, in output pixels. Every triangle
    is tested against the sub-pixel centres inside its bounding box (clipped to the image);
    among the triangles covering a sub-pixel, the one nearest the viewer (largest
    interpolated z) wins. Exact for any triangle size: an earlier version tested only the
    16 triangles whose centroids lay nearest each pixel, which missed the large triangles
    of the hole caps on 35-69 sub-pixels per MEAD keyframe and let the input crop show
    through the mouth there. About 4-5 ms for the open head model at 64x64, 2x2.
    Returns (face index per sub-pixel, -1 where nothing covers it; sub-pixel centres (S*S,2)).
    """
    import torch

    S = size * supersample
    with torch.no_grad():
        v2, z = v2.detach(), z.detach()
        q = v2[faces] * supersample - 0.5               # (F,3,2), sub-pixel index units
        lo = torch.ceil(q.amin(1)).clamp(-1, S).long().clamp(min=0)
        hi = torch.floor(q.amax(1)).clamp(-1, S).long().clamp(max=S - 1)
        nx = (hi[:, 0] - lo[:, 0] + 1).clamp(min=0)
        ny = (hi[:, 1] - lo[:, 1] + 1).clamp(min=0)
        n = nx * ny
        fid = torch.repeat_interleave(torch.arange(faces.shape[0]), n)
        k = torch.arange(int(n.sum())) - (torch.cumsum(n, 0) - n)[fid]
        px = lo[fid, 0] + k % nx[fid]
        py = lo[fid, 1] + k // nx[fid]
        P = torch.stack([px, py], 1).to(v2.dtype).add(0.5).div(supersample)
        fc = faces[fid]
        a, b, c = v2[fc[:, 0]], v2[fc[:, 1]], v2[fc[:, 2]]
        e0, e1, e2, area = _edge_functions(P, a, b, c)
        ok = area.abs() >= 1e-9
        inv = 1.0 / torch.where(ok, area, torch.ones_like(area))
        w0, w1, w2 = e0 * inv, e1 * inv, e2 * inv
        inside = (w0 >= -eps) & (w1 >= -eps) & (w2 >= -eps) & ok
        zf = z[fc]
        zp = (w0 * zf[:, 0] + w1 * zf[:, 1] + w2 * zf[:, 2])[inside]
        pid = (py * S + px)[inside]
        fid = fid[inside]
        zbuf = torch.full((S * S,), -torch.inf, dtype=zp.dtype).scatter_reduce(
            0, pid, zp, "amax")
        win = zp >= zbuf[pid]
        fmap = torch.full((S * S,), -1, dtype=torch.long)
        fmap[pid[win]] = fid[win]
        c1 = (torch.arange(S, dtype=v2.dtype) + 0.5) / supersample
        ys, xs = torch.meshgrid(c1, c1, indexing="ij")
        return fmap, torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)


def render_warp(v2, z, faces, texture, size: int = 64, supersample: int = 2,
                background=0.5, raster=None, shade=None):
    """Render a textured mesh to a (size,size) gray image: hard visibility, differentiable
    texture warp.

    Each sub-pixel takes its visible triangle from :func:`rasterize` (no gradient), then
    its barycentric coordinates in that triangle -- differentiable in ``v2`` -- interpolate
    the vertices' texture coordinates and the texture is sampled there (bilinear). The
    sub-pixels are averaged to the output pixel (box filter, as ``cv2.INTER_AREA`` does for
    the input crop). The image is thus a piecewise-affine warp of the texture, sharp at
    any resolution of the texture, with gradients through the interior of the face (moving
    a vertex moves the texture under the pixels); coverage of the mesh's outline has no
    gradient.

    Args:
        v2: (V,2) tensor, vertex positions in output pixels (x right, y down).
        z: (V,) tensor, depth towards the viewer (larger = nearer).
        faces: (F,3) long tensor.
        texture: (image (H,W) tensor, uv (V,2) tensor in that image's pixels).
        background: a gray level, or a (size,size) tensor drawn where no triangle covers.
        shade: optional (F,) tensor, a plain gray level per triangle (NaN: textured).
        raster: optional (face map, sub-pixel centres) from :func:`rasterize`, reused
            instead of rasterizing again (the optimiser refreshes it every few steps; in
            between, a sub-pixel whose triangle has moved off it keeps that triangle's
            affine map, extrapolated: the warp stays continuous).
    """
    import torch

    fmap, P = (raster if raster is not None
               else rasterize(v2, z, faces, size, supersample))
    S = size * supersample
    pix = torch.nonzero(fmap >= 0)[:, 0]
    tri = faces[fmap[pix]]
    Pp = P[pix]
    a, b, c = v2[tri[:, 0]], v2[tri[:, 1]], v2[tri[:, 2]]

    e0, e1, e2, area = _edge_functions(Pp, a, b, c)
    area = torch.where(area.abs() < 1e-9, torch.full_like(area, 1e-9), area)
    W = torch.stack([e0, e1, e2], 1) / area[:, None]                             # (n,3)
    tex, uv = texture
    u = (W[:, :, None] * uv[tri]).sum(1)                                          # (n,2)
    H, Wd = tex.shape[-2:]
    g = torch.stack([u[:, 0] / Wd, u[:, 1] / H], -1) * 2 - 1
    col = torch.nn.functional.grid_sample(tex[None, None], g[None, None], align_corners=False,
                                          padding_mode="border")[0, 0, 0]
    if shade is not None:
        sh = shade[fmap[pix]].to(col.dtype)
        col = torch.where(torch.isnan(sh), col, sh)
    if torch.is_tensor(background) and background.dim() > 0:
        bg = background.repeat_interleave(supersample, 0).repeat_interleave(supersample, 1)
        bg = bg.reshape(-1).to(col.dtype)
    else:
        bg = torch.full((S * S,), float(background), dtype=col.dtype)
    img = bg.index_put((pix,), col)
    return torch.nn.functional.avg_pool2d(img.reshape(1, 1, S, S), supersample)[0, 0]


# -- the head drawn: the ICT head with the actor's identity ----------------------------------

#: gray level of each part no frame shows, relative to the actor's skin (the neutral
#: texture's median over the face): the sRGB luminance of the rig's part colours
#: (operators/scene/rig_build.PART_COLOURS) over that of its skin colour, so the rendering's
#: mouth, teeth and eyes look as the rig's do, lit like the actor's face
PLAIN_SHADES = {"mouth_socket": 0.45, "eye_socket": 0.82, "gums_tongue": 0.77, "teeth": 1.30,
                "eyeball": 1.31, "iris": 0.41}
TEXTURED_PARTS = ("face", "head")      # textured from the actor's neutral frame
HIDDEN_PARTS = ("eyelashes",)          # not drawn: thinner than a pixel of the crop; the
#                                        neutral frame's own lashes are in the texture
IRIS_DEG = 28.0                        # eyeball faces within this angle of +Z are iris
N_FACE_LANDMARKS = 468                 # MediaPipe's mesh points (its 10 iris points left out:
#                                        the eyeballs do not turn with the gaze here)


@dataclass
class RefineHead:
    """The mesh the refinement draws (V vertices, F triangles, K expression components).

    vertices (V,3) the neutral head with the actor's identity; basis (K,V,3); faces (F,3);
    shade (F,) each triangle's gray level relative to the skin (NaN: textured); skin (S,)
    vertices whose texture sets the skin level; lmk_tri/lmk_bary (L,3) the landmarks."""

    vertices: np.ndarray
    basis: np.ndarray
    faces: np.ndarray
    shade: np.ndarray
    skin: np.ndarray
    lmk_tri: np.ndarray
    lmk_bary: np.ndarray
    names: tuple[str, ...]


def refine_head(model, identity: np.ndarray | None = None) -> RefineHead:
    """The refinement's mesh from a head model with parts (the bundled ICT head): its
    identity applied (``identity``: coefficients of ``shape_basis``, e.g. from
    :func:`head_model.fit_identity`), the face and head textured, the mouth socket, gums,
    tongue, teeth, eye sockets and eyeballs (iris and sclera) in plain shades, the lashes
    left out."""
    V = np.asarray(model.v_template, np.float64)
    if identity is not None and len(identity) and model.shape_basis is not None:
        k = len(identity)
        V = V + np.tensordot(np.asarray(identity, np.float64), model.shape_basis[:k], axes=1)
    faces = np.asarray(model.faces, np.int64)
    parts = list(model.part_names)
    if model.vertex_part is None or not parts:
        vpart = np.zeros(len(V), np.int64)
        parts = ["face"]
    else:
        vpart = np.asarray(model.vertex_part, np.int64)
    fpart = np.array(parts, dtype=object)[vpart[faces[:, 0]]]
    keep = ~np.isin(fpart, HIDDEN_PARTS)
    faces, fpart = faces[keep], fpart[keep]
    shade = np.full(len(faces), np.nan)
    for name, level in PLAIN_SHADES.items():
        shade[fpart == name] = level
    for side in ("eyeball_left", "eyeball_right"):
        sel = fpart == side
        if not sel.any():
            continue
        centre = V[vpart == parts.index(side)].mean(0)
        u = V[faces[sel]].mean(1) - centre
        ang = np.degrees(np.arccos(np.clip(u[:, 2] / np.linalg.norm(u, axis=1), -1, 1)))
        shade[np.flatnonzero(sel)] = np.where(ang < IRIS_DEG, PLAIN_SHADES["iris"],
                                              PLAIN_SHADES["eyeball"])
    skin = np.flatnonzero(vpart == parts.index("face")) if "face" in parts else np.arange(len(V))
    if model.landmark_tri is not None:
        tri = np.asarray(model.landmark_tri, np.int64)
        bary = np.asarray(model.landmark_bary, np.float64)
    else:
        lv = np.asarray(model.landmark_vertices, np.int64)
        tri, bary = np.repeat(lv[:, None], 3, 1), np.tile([1.0, 0.0, 0.0], (len(lv), 1))
    n = min(N_FACE_LANDMARKS, len(tri))
    return RefineHead(V.astype(np.float32), np.asarray(model.expression_basis, np.float32),
                      faces, shade, skin, tri[:n], bary[:n].astype(np.float32),
                      tuple(model.expression_names))


# -- per-frame problem ----------------------------------------------------------------------

class FrameProblem:
    """Everything fixed for one frame: the input crop and its features, the camera, the
    texture and the plain shades, the fixed expression components, the prior."""

    def __init__(self, head, net, rgb: np.ndarray, lmk2d: np.ndarray, rotation: np.ndarray,
                 e0: np.ndarray, free: np.ndarray, settings: RefineSettings,
                 crop: np.ndarray | None = None, texture=None, crop_hi: np.ndarray | None = None,
                 prior=None):
        import torch

        from . import network as emotion
        from ..rotations import rotvec_to_matrix

        if not isinstance(head, RefineHead):
            head = refine_head(head)
        self.head = head
        self.s = settings
        self.net = net
        box = emotion.crop_box(lmk2d)
        self.box = box
        if crop is None:
            crop = emotion.crop_gray(rgb, box)
        crop = np.asarray(crop, np.float32) / 255.0
        self.crop = torch.from_numpy(crop)
        with torch.no_grad():
            _, self.f_in = net(self.to_net(self.crop))
        self.R = torch.from_numpy(rotvec_to_matrix(np.asarray(rotation, np.float64)).astype(np.float32))
        self.T = torch.from_numpy(head.vertices)
        self.B = torch.from_numpy(head.basis.reshape(len(head.basis), -1))      # (K,V*3)
        self.faces = torch.from_numpy(head.faces)
        self.lmk_tri = torch.from_numpy(head.lmk_tri)
        self.lmk_bary = torch.from_numpy(head.lmk_bary)
        self.obs = torch.from_numpy(np.asarray(lmk2d, np.float32)[:len(head.lmk_tri)])
        self.e0 = torch.from_numpy(np.asarray(e0, np.float32))
        self.free = torch.from_numpy(np.asarray(free, bool))
        self.prior = prior
        self.P = None
        if prior is not None and settings.prior_weight > 0:
            self.P = torch.from_numpy(prior.change_precision(free).astype(np.float32))
        # weak-perspective camera fitted at the captured expression: x = s X + tx, y = -s Y + ty
        with torch.no_grad():
            C = self.landmarks(self.camera_points(self.e0))
            A = torch.zeros(2 * C.shape[0], 3)
            A[0::2, 0], A[0::2, 1] = C[:, 0], 1.0
            A[1::2, 0], A[1::2, 2] = -C[:, 1], 1.0
            rhs = self.obs.reshape(-1)
            self.cam = torch.linalg.lstsq(A, rhs[:, None]).solution[:, 0]      # s, tx, ty
            uv = self.to_crop(self.project(self.camera_points(self.e0)))
            self.uv0 = uv
            g = (uv / 64.0) * 2 - 1
            # vertex colours (the soft renderer): the input crop at the captured vertices
            self.colors = torch.nn.functional.grid_sample(
                self.crop[None, None], g[None, None], align_corners=False,
                padding_mode="border")[0, 0, 0]
            if texture is None:
                # no texture given: the frame's own crop (higher resolution when given)
                hi = crop if crop_hi is None else np.asarray(crop_hi, np.float32) / 255.0
                texture = (torch.from_numpy(np.ascontiguousarray(hi, np.float32)),
                           uv * (hi.shape[0] / 64.0))
            self.texture = texture
            self.shade = torch.from_numpy(
                np.minimum(head.shade * skin_level(texture, head.skin), 1.0).astype(np.float32))
            border = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]])
            self.background = (self.crop.clone() if settings.composite
                               else float(np.median(border)))

    def to_net(self, img):
        return (img * 2 - 1)[None, None]

    def camera_points(self, e):
        V = self.T + (e @ self.B).reshape(self.T.shape)
        return V @ self.R.T

    def landmarks(self, C):
        return (C[self.lmk_tri] * self.lmk_bary[:, :, None]).sum(1)

    def project(self, C):
        s, tx, ty = self.cam
        return torch_stack2(s * C[:, 0] + tx, -s * C[:, 1] + ty)

    def to_crop(self, px):
        x0, y0, side = self.box
        return (px - torch_tensor([x0, y0])) * (64.0 / side)

    def expression(self, free_vals):
        import torch

        return torch.where(self.free, free_vals, self.e0)

    def render(self, e, refresh: bool = False):
        C = self.camera_points(e)
        uv = self.to_crop(self.project(C))
        zs = C[:, 2] * self.cam[0] * (64.0 / self.box[2])
        if self.s.renderer == "warp":
            if refresh or getattr(self, "raster", None) is None:
                self.raster = rasterize(uv.detach(), zs.detach(), self.faces, 64,
                                        self.s.supersample)
            return render_warp(uv, zs, self.faces, self.texture, 64, self.s.supersample,
                               self.background, raster=self.raster, shade=self.shade)
        if refresh or getattr(self, "cand", None) is None:
            self.cand = nearest_faces(uv.detach(), self.faces, 64, self.s.candidates)
        return render(uv, zs, self.colors, self.faces, 64, self.s.sigma, self.s.gamma,
                      self.background, self.cand, self.texture)

    def features(self, e):
        """(class probabilities, feature) of the rendering at ``e``."""
        import torch

        with torch.no_grad():
            img = self.render(torch.as_tensor(e), True)
            p, f = self.net(self.to_net(img))
        self.raster_image = img.numpy()
        return p, f

    def feat_dist(self, e, refresh: bool = False):
        _, f = self.net(self.to_net(self.render(e, refresh)))
        return (f - self.f_in).norm()

    def lmk_term(self, e):
        """Mean landmark distance in crop pixels (the optional consistency term)."""
        p = self.landmarks(self.project(self.camera_points(e)))
        return (p - self.obs).norm(dim=1).mean() * (64.0 / float(self.box[2]))

    def lmk_err(self, e) -> float:
        import torch

        with torch.no_grad():
            p = self.landmarks(self.project(self.camera_points(torch.as_tensor(e))))
            return float((p - self.obs).norm(dim=1).mean())

    def prior_term(self, e):
        """Mahalanobis length of the change of the free components under the prior."""
        d = (e - self.e0)[self.free]
        return (d @ self.P @ d + 1e-12).sqrt()

    def solve(self) -> tuple[np.ndarray, float, float]:
        """Adam from the capture (and a second run at ``second_lr``); returns (refined
        expression, feature distance at the capture, at the result). With a prior and
        ``prior_percentile``, a result whose Mahalanobis distance exceeds that percentile
        of the prior's frames (or the capture's own distance, if larger) is moved back
        along the change until it does not."""
        import torch

        runs = [(self.s.lr, self.s.iterations)]
        if self.s.second_lr:
            runs.append((self.s.second_lr, max(1, self.s.iterations // 2)))
        with torch.no_grad():
            d0 = float(self.feat_dist(self.e0, True))
        # every loss is measured on a fresh raster: the best of the capture (first: never
        # return something worse) and each run's best iterate
        cands = [(self.objective(self.e0), self.e0.clone())] + [self._adam(lr, n)
                                                               for lr, n in runs]
        best_e = min(cands, key=lambda c: c[0])[1]
        self.guard_scale = 1.0
        if self.prior is not None and self.s.prior_percentile is not None:
            best_e = self._guard(best_e)
            if self.objective(best_e) > cands[0][0]:
                best_e = self.e0.clone()
        with torch.no_grad():
            d1 = float(self.feat_dist(best_e, True))
        return best_e.numpy(), d0, d1

    def _guard(self, e):
        e0 = self.e0.numpy().astype(np.float64)
        d = e.numpy().astype(np.float64) - e0
        # a hair inside the percentile's radius, so the float32 result does not round to just
        # outside it; a capture already beyond it keeps its own distance as the limit
        r = max(self.prior.radius(self.s.prior_percentile) * (1.0 - 1e-5),
                float(self.prior.mahalanobis(e0)))
        if float(self.prior.mahalanobis(e0 + d)) <= r:
            return e
        lo, hi = 0.0, 1.0
        for _ in range(30):
            t = 0.5 * (lo + hi)
            lo, hi = (t, hi) if float(self.prior.mahalanobis(e0 + t * d)) <= r else (lo, t)
        self.guard_scale = lo
        import torch

        return torch.from_numpy((e0 + lo * d).astype(np.float32))

    def _adam(self, lr: float, iterations: int) -> tuple[float, object]:
        """One Adam run from the capture: (loss, iterate) of its best iterate, the last one
        (after the final step) included."""
        import torch

        x = self.e0.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        best = (float("inf"), self.e0.clone())
        for it in range(iterations + 1):
            e = self.expression(x)
            loss = self._loss(e)
            value = float(loss.detach())
            if value < best[0]:
                best = (value, e.detach().clone())
            if it == iterations:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
        return best

    def _loss(self, e):
        """The full loss at ``e`` (a tensor), rasterized afresh."""
        loss = self.feat_dist(e, refresh=True) + self.s.reg * (e ** 2).sum()
        if self.s.landmark_weight:
            loss = loss + self.s.landmark_weight * self.lmk_term(e)
        if self.P is not None:
            loss = loss + self.s.prior_weight * self.prior_term(e)
        return loss

    def objective(self, e) -> float:
        """The full loss at ``e``, as minimised by solve()."""
        import torch

        with torch.no_grad():
            return float(self._loss(torch.as_tensor(e)))


def skin_level(texture, skin: np.ndarray) -> float:
    """The median gray level of the texture at the skin vertices' texture coordinates."""
    import torch

    tex, uv = texture
    H, W = tex.shape[-2:]
    u = uv[torch.from_numpy(np.asarray(skin, np.int64))]
    inside = (u[:, 0] >= 0) & (u[:, 0] < W) & (u[:, 1] >= 0) & (u[:, 1] < H)
    if not bool(inside.any()):
        return 0.6
    g = torch.stack([u[inside, 0] / W, u[inside, 1] / H], -1) * 2 - 1
    val = torch.nn.functional.grid_sample(tex[None, None].float(), g[None, None],
                                          align_corners=False)[0, 0, 0]
    return float(val.median())


def torch_stack2(x, y):
    import torch

    return torch.stack([x, y], -1)


def torch_tensor(v):
    import torch

    return torch.tensor(v, dtype=torch.float32)


def free_components(names) -> np.ndarray:
    """Which expression components the refinement may change (jaw and gaze stay fixed)."""
    return np.array([not any(str(n).startswith(p) for p in FIXED_ARKIT_PREFIXES)
                     for n in names], bool)


def neutral_frame(cap, measured: np.ndarray) -> int | None:
    """The actor's neutral frame: the capture's calibration neutral (the calmest frame the
    backend found) when it is measured, else the measured frame with the least expression."""
    cal = (cap.meta.get("backend") or {}).get("calibration") or {}
    E = np.asarray(cap["expression"], np.float64)
    cands = [int(i) for i in cal.get("neutral_frames", []) if 0 <= int(i) < len(measured)
             and measured[int(i)]]
    if cands:
        return min(cands, key=lambda i: float(np.abs(E[i]).sum()))
    idx = np.flatnonzero(measured)
    if idx.size == 0:
        return None
    return int(idx[np.argmin(np.abs(E[idx]).sum(1))])


def capture_head(cap, model=None) -> RefineHead:
    """The refinement's head for a capture: the bundled ICT head (or ``model``) with the
    actor's identity fitted to the capture's ``neutral_landmarks``, as the rig is built
    (operators/scene/rig_build.arkit_head); no identity when the capture has none."""
    from ..models.head_model import fit_identity, ict_head

    model = model or ict_head()
    nl = cap.get("neutral_landmarks") if hasattr(cap, "get") else None
    identity = None
    if nl is not None and np.asarray(nl).shape == (478, 3) and model.shape_basis is not None:
        identity = fit_identity(model, np.asarray(nl))
    return refine_head(model, identity)


class CaptureScene:
    """A capture's frames as the refinement sees them: the head, the emotion network, the
    64x64 crops of the needed frames and the neutral frame's texture (one pass over the
    video)."""

    def __init__(self, cap, frames, need, settings: RefineSettings, head: RefineHead,
                 prior=None):
        import torch

        from . import network as emotion

        self.cap, self.s, self.head, self.prior = cap, settings, head, prior
        self.E = np.asarray(cap["expression"], np.float32)
        N = self.E.shape[0]
        self.measured = cap["valid"] & ~cap["interpolated"]
        self.free = free_components(head.names)
        self.net = emotion.torch_model()
        neutral = neutral_frame(cap, self.measured) if settings.appearance == "neutral" else None
        want = set(int(i) for i in need) | ({neutral} if neutral is not None else set())
        textured = {neutral} if neutral is not None else set(want)
        self.crops: dict[int, np.ndarray] = {}
        self.hi: dict[int, np.ndarray] = {}
        for i, rgb in frames:
            if i >= N or len(self.crops) == len(want):
                break
            if i in want:
                box = emotion.crop_box(cap["landmarks2d"][i])
                self.crops[i] = emotion.crop_gray(rgb, box)
                if i in textured:
                    self.hi[i] = emotion.crop_gray(rgb, box, int(settings.texture_size))
        self.texture = None
        if neutral is not None and neutral in self.crops:
            nprob = self.problem(neutral, self.E[neutral])
            t_img = torch.from_numpy(self.hi[neutral].astype(np.float32) / 255.0)
            self.texture = (t_img, nprob.uv0 * (t_img.shape[0] / 64.0))

    def problem(self, i: int, e0) -> FrameProblem:
        return FrameProblem(self.head, self.net, None, self.cap["landmarks2d"][i],
                            self.cap["head_rotation"][i], e0, self.free, self.s,
                            crop=self.crops[i], texture=self.texture, crop_hi=self.hi.get(i),
                            prior=self.prior)


def _check(cap, s: RefineSettings, head: RefineHead):
    from ..models.head_model import ARKIT_HEADS

    if cap.meta.get("head_model") not in ARKIT_HEADS + ("", None):
        raise BadInput(f"emotion refinement supports captures in ARKit channels (the "
                       f"mediapipe backend); this capture uses {cap.meta.get('head_model')!r}")
    if tuple(head.names) != tuple(cap.names.get("expression", ())):
        raise BadInput("the capture's expression components do not match the head model's")
    if not 0.0 <= s.strength <= 1.0:
        raise BadInput(f"strength must be in [0, 1], got {s.strength}")


def _default_prior(s: RefineSettings, names):
    if s.prior_weight <= 0 and s.prior_percentile is None:
        return None
    from .expression_prior import load_prior

    prior = load_prior()
    if tuple(prior.names) != tuple(names):
        raise BadInput("the expression prior's channels do not match the capture's")
    return prior


def refine_capture(cap, frames, settings: RefineSettings | None = None, model=None,
                   frame_subset=None, progress=None, prior=None, head=None) -> RefineResult:
    """Refine a capture's expression on the frames of its video.

    Args:
        cap: a Capture with ``expression`` in ARKit channels (the default backend).
        frames: iterator of (capture_index, rgb) -- e.g. ``video.iter_frames`` from the
            capture's first frame; only the needed frames are used.
        model: the head model (default: the bundled ICT head), given the capture's identity.
        frame_subset: optional explicit capture frames to refine (keyframes); default every
            ``keyframe_step``-th valid frame.
        prior: the real-expression prior (default: the bundled one, when the settings use
            a prior).
        head: a ready :class:`RefineHead` (else built from ``model`` and the capture).
    Returns RefineResult; frames without a face (invalid or interpolated) are skipped and
    listed in ``skipped``.
    """
    import torch

    from .mlp import torch_threads

    s = settings or RefineSettings()
    head = head or capture_head(cap, model)
    _check(cap, s, head)
    prior = prior if prior is not None else _default_prior(s, head.names)
    E = np.asarray(cap["expression"], np.float32)
    N = E.shape[0]
    measured = cap["valid"] & ~cap["interpolated"]
    if frame_subset is None:
        step = max(1, int(s.keyframe_step))
        want = np.flatnonzero(measured)[::step]
        skipped = np.flatnonzero(~measured).tolist()
    else:
        fs = np.unique(np.asarray(frame_subset, int))
        if fs.size and (fs.min() < 0 or fs.max() >= N):
            raise BadInput(f"refinement frames must be in 0..{N - 1}")
        want = fs[measured[fs]]
        skipped = fs[~measured[fs]].tolist()
    results: list[FrameResult] = []
    with torch_threads(s.threads):
        scene = CaptureScene(cap, frames, want, s, head, prior)
        for i in sorted(int(i) for i in want):
            if i not in scene.crops:
                skipped.append(i)
                continue
            prob = scene.problem(i, E[i])
            e1, d0, d1 = prob.solve()
            m0 = m1 = float("nan")
            if prior is not None:
                m0, m1 = (float(prior.mahalanobis(x)) for x in (E[i], e1))
            results.append(FrameResult(int(i), e1, d0, d1, prob.lmk_err(prob.e0),
                                       prob.lmk_err(torch.from_numpy(e1)), m0, m1,
                                       float(getattr(prob, "guard_scale", 1.0))))
            if progress is not None:
                progress(len(results), len(want))
    out = E.copy()
    if results:
        kf = np.array([r.frame for r in results])
        delta = np.stack([r.expression for r in results]) - E[kf]
        full = np.empty_like(E)
        for j in range(E.shape[1]):
            full[:, j] = np.interp(np.arange(N), kf, delta[:, j])
        out = np.clip(E + s.strength * full * measured[:, None], 0.0, 1.0)
    return RefineResult(out.astype(np.float32), results, sorted(set(skipped)),
                        free_components(head.names))


def emotion_fidelity(cap, frames, curves: dict, frame_list, settings: RefineSettings | None = None,
                     head=None, images_for=()) -> dict:
    """The emotion network on the video crop and on renderings of expression curves.

    Args:
        curves: {name: (N,K) expression curves} (e.g. the capture's and the refined).
        frame_list: the capture frames to compare (frames without a measured face skipped).
    Returns {"frames": [...], "input_class": (n,), and per curve name: {"class": (n,),
    "feat_dist": (n,)}} -- the class is the network's argmax (emotion.CLASS_NAMES) --
    and "images": {frame: {"input": crop, name: rendering}} (64x64 in [0, 1]) for the
    frames in ``images_for``.
    """
    from .mlp import torch_threads

    s = settings or RefineSettings()
    head = head or capture_head(cap)
    _check(cap, s, head)
    measured = cap["valid"] & ~cap["interpolated"]
    fl = [int(i) for i in frame_list if 0 <= int(i) < len(measured) and measured[int(i)]]
    out: dict = {"frames": [], "input_class": [], "images": {}}
    out.update({k: {"class": [], "feat_dist": []} for k in curves})
    with torch_threads(s.threads):
        scene = CaptureScene(cap, frames, fl, s, head)
        for i in fl:
            if i not in scene.crops:
                continue
            prob = scene.problem(i, scene.E[i])
            with __import__("torch").no_grad():
                p_in, _ = scene.net(prob.to_net(prob.crop))
            out["frames"].append(i)
            out["input_class"].append(int(p_in.argmax()))
            for k, C in curves.items():
                p, f = prob.features(np.asarray(C[i], np.float32))
                out[k]["class"].append(int(p.argmax()))
                out[k]["feat_dist"].append(float((f - prob.f_in).norm()))
                if i in images_for:
                    im = out["images"].setdefault(i, {"input": prob.crop.numpy()})
                    im[k] = prob.raster_image
    for k in ("frames", "input_class"):
        out[k] = np.asarray(out[k], int)
    for k in curves:
        out[k] = {kk: np.asarray(v) for kk, v in out[k].items()}
    return out
