"""Emotion-consistent expression (EMOCA supplementary, "emotion optimization", Eq. 1).

For a frame with input face crop I and captured expression e0, find::

    e* = argmin_e || A(render(e)) - A(I) ||_2 + 1e-3 ||e||^2

by gradient descent (Adam) from e0, where A is the emotion network's feature
(:mod:`emotion`, the penultimate activation) and ``render`` is a differentiable renderer
of the head model producing the 64x64 grayscale face crop the network reads. Only the
expression changes: the head pose, the camera and the jaw stay as captured (for the open
head model's ARKit basis the jaw* components are the jaw and the eyeLook* components the
gaze; tongueOut is held too, as the model has no tongue).

Deviation from Eq. 1 as written (on by default, ``landmark_weight=0`` turns it off): a
landmark consistency term ``w * mean_l ||P(e)_l - x_l||`` (the head model's landmarks
projected by the frame's camera against the captured 2-D landmarks, in crop pixels,
w = 0.5) is added, so that the emotion is fitted without drifting from the face's geometry
(EMOCA trains with landmark losses beside its emotion loss; the supplementary's test-time
optimisation lists only the emotion and regularisation terms).

Renderer (plain torch, no pytorch3d), in the same 64x64 grayscale crop box the emotion
network reads for the input (the box from the frame's captured landmarks,
:func:`emotion.crop_box`), drawn over the input crop itself (hair, background and neck are
then identical and the distance measures the face). The camera is weak-perspective: the
captured head rotation, with scale and image offset fitted to the captured 2-D landmarks.

* ``renderer="warp"`` (the default, :func:`render_warp`): hard visibility from an exact
  rasterizer (:func:`rasterize`: every triangle against the sub-pixels of its bounding box,
  the covering triangle nearest the viewer wins; no gradient) and a differentiable texture
  warp (the sub-pixel's barycentric coordinates in its triangle, differentiable in the
  vertices, interpolate texture coordinates; the texture is sampled bilinearly), 2x2
  supersampled and box-filtered to 64x64 as ``cv2.INTER_AREA`` makes the input crop. The
  texture is a 256x256 crop, so the rendering is as sharp as the input. Gradients reach
  the expression through the interior of the face (moving a vertex moves the texture under
  the pixels); the mesh's outline against the background has none.
* ``renderer="soft"`` (:func:`render`): a soft rasterizer (SoftRas-style: per-triangle
  sigmoid coverage of the signed distance to the triangle's edges, a soft z-buffer, alpha =
  the summed coverage, clamped to 1), directly at 64x64. Blurry at that size: rendered with
  the frame's own crop as texture at the captured expression, its feature distance to the
  input is 1.5-2.2 (the warp's: 0.06-0.13), about the size of the feature itself.

Appearance (``appearance="neutral"``, the default): the face is textured with the actor's
*neutral* frame (the capture's calibration neutral), mapped through the head model at that
frame's expression and pose, so the rendering carries emotion only through the expression's
geometry, never by copying the refined frame's pixels; ``"frame"``: the refined frame
itself (as the texture for ``warp``; as per-vertex gray levels sampled at the captured
expression for ``soft``). The mesh's holes (the mouth opening, the eye openings around the
iris discs) are capped (:func:`hole_caps`: a fan over each inner boundary loop, textured
like the rest) and, for the warp renderer, the caps get their own vertices drawn behind
the mesh (``caps_behind``), so a cap shows only through its hole (in place, the fan over
the non-convex mouth rim overlapped the lips). No pixel of the refined frame shows through
the face: a test checks that the capped head's coverage has no hole. (Two leaks were found
and closed: the uncapped holes, and a rasterizer that tested only the 16 triangles with
the nearest centroids per pixel and so missed the caps' large triangles; each had let the
input's own teeth show through the mouth and inflated the measured drop. The history is in
docs/emotion_refine.md.)

Optimiser: Adam from e0, twice -- 120 iterations at learning rate 0.05, and 60 at 0.1
(``second_lr``; None: one run) -- keeping the better result; the free components are
clamped to [0, 1] after each step (a projection: a component at a bound leaves it as soon
as its gradient turns, where a sigmoid parameterisation would flatten the gradient near
the bounds). The raster is made afresh at every step (4-5 ms): with a raster reused
between refreshes (10 steps, before the exact rasterizer), the loss was measured on a
stale raster (the warp extrapolated), which the optimiser learned to exploit. The best
iterate by the full loss is kept, and a result worse than the capture under the full loss
is replaced by the capture. The landscape is rough
(hard visibility: a lip edge crossing a sub-pixel of the mouth cap moves the distance by
0.1-0.2 in one small step), so Adam's coarse steps and keeping the best iterate matter.

Measured (``python bench/emotion_refine.py``, 3 keyframes in the middle third of each MEAD
clip; figures in docs/bench.md; what was tried and measured on the way, with the renderer
each figure came from, in docs/emotion_refine.md): the feature distance falls by about
38% (angry), 24% (neutral), 27% (surprised) and 23% (happy), against a 30% target met on
one clip; the landmark error moves by -4% to +11%. What limits it: the head model has no
teeth and no mouth interior and the jaw is held as captured, while the happy and surprised
inputs show teeth in an open mouth.

Options: per frame or on keyframes (every k-th valid frame, the change interpolated
between); ``strength`` scales the change (0 = the capture, 1 = the optimum). Off by
default in the pipeline; ``python -m emoca_blender refine`` runs it on a capture.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import BadInput

REG = 1e-3
# held as captured: the jaw and the gaze (Eq. 1 optimises the expression only), and the
# tongue, which the head model does not have (its tongueOut shape only moves the lips, so
# the optimiser used it as a spare lip control: +1.0 on several MEAD keyframes)
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
    caps_behind: float = 1000.0     # warp: the hole caps get their own vertices, pushed this
    #                                 far (crop pixels) from the viewer: seen only through
    #                                 the holes, never over the lips or lids (0: in place)


@dataclass
class FrameResult:
    frame: int
    expression: np.ndarray
    feat_dist_before: float
    feat_dist_after: float
    lmk_err_before: float
    lmk_err_after: float


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


def hole_caps(faces: np.ndarray) -> np.ndarray:
    """(C,3) triangles closing every boundary loop of a triangle mesh but the longest (the
    outer outline): a fan from the loop's first vertex. For the open head model: the mouth
    (20 points), the two eye openings (16 each) and the iris discs' rims."""
    from collections import defaultdict

    f = np.asarray(faces, np.int64)
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1)
    uniq, count = np.unique(edges, axis=0, return_counts=True)
    adj: dict[int, list[int]] = defaultdict(list)
    for a, b in uniq[count == 1]:
        adj[int(a)].append(int(b))
        adj[int(b)].append(int(a))
    seen: set[int] = set()
    loops = []
    for start in sorted(adj):
        if start in seen:
            continue
        loop, prev, cur = [start], None, start
        seen.add(start)
        while True:
            nxt = [x for x in adj[cur] if x != prev and x not in seen]
            if not nxt:
                break
            prev, cur = cur, nxt[0]
            loop.append(cur)
            seen.add(cur)
        loops.append(loop)
    loops.sort(key=len)
    caps = [[lp[0], lp[i], lp[i + 1]] for lp in loops[:-1] if len(lp) >= 3
            for i in range(1, len(lp) - 1)]
    return np.asarray(caps, np.int64).reshape(-1, 3)


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
                background=0.5, raster=None):
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
    if torch.is_tensor(background) and background.dim() > 0:
        bg = background.repeat_interleave(supersample, 0).repeat_interleave(supersample, 1)
        bg = bg.reshape(-1).to(col.dtype)
    else:
        bg = torch.full((S * S,), float(background), dtype=col.dtype)
    img = bg.index_put((pix,), col)
    return torch.nn.functional.avg_pool2d(img.reshape(1, 1, S, S), supersample)[0, 0]


# -- per-frame problem ----------------------------------------------------------------------

class FrameProblem:
    """Everything fixed for one frame: the input crop and its features, the camera, the
    mesh's vertex colours, the fixed expression components."""

    def __init__(self, model, net, rgb: np.ndarray, lmk2d: np.ndarray, rotation: np.ndarray,
                 e0: np.ndarray, free: np.ndarray, settings: RefineSettings,
                 crop: np.ndarray | None = None, texture=None, crop_hi: np.ndarray | None = None):
        import torch

        from . import emotion
        from .head_model import rodrigues

        self.s = settings
        self.net = net
        box = emotion.crop_box(lmk2d)
        self.box = box
        if crop is None:
            crop = emotion.crop_gray(rgb, box)
        crop = np.asarray(crop, np.float32) / 255.0
        self.texture = texture
        self.crop = torch.from_numpy(crop)
        with torch.no_grad():
            _, self.f_in = net(self.to_net(self.crop))
        self.R = torch.from_numpy(rodrigues(np.asarray(rotation, np.float64)).astype(np.float32))
        self.T = torch.from_numpy(model.v_template.astype(np.float32))
        self.B = torch.from_numpy(model.expression_basis.astype(np.float32))  # (K,V,3)
        f = model.faces.astype(np.int64)
        self.faces = torch.from_numpy(np.concatenate([f, hole_caps(f)]))   # holes closed
        self.lmk_idx = torch.from_numpy(np.asarray(model.landmark_vertices, np.int64))
        self.obs = torch.from_numpy(np.asarray(lmk2d, np.float32))
        self.e0 = torch.from_numpy(np.asarray(e0, np.float32))
        self.free = torch.from_numpy(np.asarray(free, bool))
        # weak-perspective camera fitted at the captured expression: x = s X + tx, y = -s Y + ty
        with torch.no_grad():
            C = self.camera_points(self.e0)[self.lmk_idx]
            A = torch.zeros(2 * C.shape[0], 3)
            A[0::2, 0], A[0::2, 1] = C[:, 0], 1.0
            A[1::2, 0], A[1::2, 2] = -C[:, 1], 1.0
            rhs = self.obs.reshape(-1)
            self.cam = torch.linalg.lstsq(A, rhs[:, None]).solution[:, 0]      # s, tx, ty
            # vertex colours: the input crop sampled at the captured vertex positions
            uv = self.to_crop(self.project(self.camera_points(self.e0)))
            self.uv0 = uv
            g = (uv / 64.0) * 2 - 1
            self.colors = torch.nn.functional.grid_sample(
                self.crop[None, None], g[None, None], align_corners=False,
                padding_mode="border")[0, 0, 0]
            if self.texture is None and settings.renderer == "warp":
                # no texture given: the frame's own crop (higher resolution when given)
                hi = crop if crop_hi is None else np.asarray(crop_hi, np.float32) / 255.0
                self.texture = (torch.from_numpy(np.ascontiguousarray(hi, np.float32)),
                                uv * (hi.shape[0] / 64.0))
            border = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]])
            self.background = (self.crop.clone() if settings.composite
                               else float(np.median(border)))
        self.cap_src, self.cap_dz = None, 0.0
        if settings.caps_behind > 0 and settings.renderer == "warp" and self.texture is not None:
            self._split_caps(f.shape[0], float(settings.caps_behind))

    def _split_caps(self, n_open: int, dz: float):
        """Give the hole caps their own vertices (copies of the holes' rims, same texture
        coordinates), drawn ``dz`` crop pixels behind the mesh: a cap then shows only
        through its hole. (In place, the fan over a non-convex rim -- the mouth -- overlaps
        the lips, and the cap's fan triangles won the z-test over 22-40 of the 140-325
        sub-pixels the caps covered on the MEAD keyframes.)"""
        import torch

        V = self.T.shape[0]
        caps = self.faces[n_open:]
        src, inv = torch.unique(caps.reshape(-1), return_inverse=True)
        self.faces = torch.cat([self.faces[:n_open], (V + inv).reshape(-1, 3)])
        self.cap_src, self.cap_dz = src, dz
        tex, tuv = self.texture
        self.texture = (tex, torch.cat([tuv, tuv[src]]))

    def _with_caps(self, x, dz: float = 0.0):
        """Per-vertex values extended by the caps' own vertices (their rims' values)."""
        import torch

        return x if self.cap_src is None else torch.cat([x, x[self.cap_src] - dz])

    def to_net(self, img):
        return (img * 2 - 1)[None, None]

    def camera_points(self, e):
        V = self.T + (e[:, None, None] * self.B).sum(0)
        return V @ self.R.T

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
        uv = self._with_caps(self.to_crop(self.project(C)))
        zs = self._with_caps(C[:, 2] * self.cam[0] * (64.0 / self.box[2]), self.cap_dz)
        if self.s.renderer == "warp":
            if refresh or getattr(self, "raster", None) is None:
                self.raster = rasterize(uv.detach(), zs.detach(), self.faces, 64,
                                        self.s.supersample)
            return render_warp(uv, zs, self.faces, self.texture, 64, self.s.supersample,
                               self.background, raster=self.raster)
        if refresh or getattr(self, "cand", None) is None:
            self.cand = nearest_faces(uv.detach(), self.faces, 64, self.s.candidates)
        return render(uv, zs, self.colors, self.faces, 64, self.s.sigma, self.s.gamma,
                      self.background, self.cand, self.texture)

    def feat_dist(self, e, refresh: bool = False):
        _, f = self.net(self.to_net(self.render(e, refresh)))
        return (f - self.f_in).norm()

    def lmk_term(self, e):
        """Mean landmark distance in crop pixels (the optional consistency term)."""
        p = self.project(self.camera_points(e))[self.lmk_idx]
        return (p - self.obs).norm(dim=1).mean() * (64.0 / float(self.box[2]))

    def lmk_err(self, e) -> float:
        import torch

        with torch.no_grad():
            p = self.project(self.camera_points(e))[self.lmk_idx]
            return float((p - self.obs).norm(dim=1).mean())

    def solve(self) -> tuple[np.ndarray, float, float]:
        """Adam from the capture (and a second run at ``second_lr``); returns (refined
        expression, feature distance at the capture, at the result)."""
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
        with torch.no_grad():
            d1 = float(self.feat_dist(best_e, True))
        return best_e.numpy(), d0, d1

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
        return loss

    def objective(self, e) -> float:
        """The full loss at ``e``, as minimised by solve()."""
        import torch

        with torch.no_grad():
            return float(self._loss(e))


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


def refine_capture(cap, frames, settings: RefineSettings | None = None, model=None,
                   frame_subset=None, progress=None) -> RefineResult:
    """Refine a capture's expression on the frames of its video.

    Args:
        cap: a Capture with ``expression`` in the open head model's ARKit basis.
        frames: iterator of (capture_index, rgb) -- e.g. ``video.iter_frames`` from the
            capture's first frame; only the needed frames are used.
        frame_subset: optional explicit capture frames to refine (keyframes); default every
            ``keyframe_step``-th valid frame.
    Returns RefineResult; frames without a face (invalid or interpolated) are skipped and
    listed in ``skipped``.
    """
    import torch

    from . import emotion
    from .emotion_mlp import torch_threads
    from .head_model import ARKIT_HEADS, OPEN_HEAD, bundled, load_head_model

    s = settings or RefineSettings()
    if cap.meta.get("head_model") not in ARKIT_HEADS + ("", None) and model is None:
        raise BadInput(f"emotion refinement supports captures in ARKit channels (the "
                       f"mediapipe backend); this capture uses {cap.meta.get('head_model')!r}")
    model = model or load_head_model(bundled(OPEN_HEAD))
    names = tuple(cap.names.get("expression", ()))
    if tuple(model.expression_names) != names:
        raise BadInput("the capture's expression components do not match the head model's")
    if not 0.0 <= s.strength <= 1.0:
        raise BadInput(f"strength must be in [0, 1], got {s.strength}")
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
    free = free_components(names)
    net = emotion.torch_model()
    results: list[FrameResult] = []
    wanted = set(int(i) for i in want)
    neutral = neutral_frame(cap, measured) if s.appearance == "neutral" else None
    need = wanted | ({neutral} if neutral is not None else set())
    # the texture's frames: the neutral one, else each refined frame itself
    textured = {neutral} if neutral is not None else wanted
    # one pass over the video keeps only the 64x64 crops the network reads, and the
    # texture crops (same box, texture_size pixels)
    crops: dict[int, np.ndarray] = {}
    hi: dict[int, np.ndarray] = {}
    for i, rgb in frames:
        if i >= N or len(crops) == len(need):
            break
        if i in need:
            box = emotion.crop_box(cap["landmarks2d"][i])
            crops[i] = emotion.crop_gray(rgb, box)
            if i in textured:
                hi[i] = emotion.crop_gray(rgb, box, int(s.texture_size))
    with torch_threads(s.threads):
        texture = None
        if neutral is not None and neutral in crops:
            nprob = FrameProblem(model, net, None, cap["landmarks2d"][neutral],
                                 cap["head_rotation"][neutral], E[neutral], free, s,
                                 crop=crops[neutral], crop_hi=hi.get(neutral))
            t_img = torch.from_numpy(hi[neutral].astype(np.float32) / 255.0)
            texture = (t_img, nprob.uv0 * (t_img.shape[0] / 64.0))
        for i in sorted(wanted):
            if i not in crops:
                skipped.append(i)
                continue
            prob = FrameProblem(model, net, None, cap["landmarks2d"][i], cap["head_rotation"][i],
                                E[i], free, s, crop=crops[i], texture=texture,
                                crop_hi=hi.get(i))
            e1, d0, d1 = prob.solve()
            results.append(FrameResult(int(i), e1, d0, d1, prob.lmk_err(prob.e0),
                                       prob.lmk_err(torch.from_numpy(e1))))
            if progress is not None:
                progress(len(results), len(wanted))
    out = E.copy()
    if results:
        kf = np.array([r.frame for r in results])
        delta = np.stack([r.expression for r in results]) - E[kf]
        full = np.empty_like(E)
        for j in range(E.shape[1]):
            full[:, j] = np.interp(np.arange(N), kf, delta[:, j])
        out = np.clip(E + s.strength * full * measured[:, None], 0.0, 1.0)
    return RefineResult(out.astype(np.float32), results, sorted(set(skipped)), free)
