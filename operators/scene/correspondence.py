"""Find where MediaPipe's face landmarks lie on a character's mesh, automatically.

1. Render the character's face head-on (Workbench, orthographic camera looking along +Y at
   the Front view, so the character is taken to face -Y in world space like every Blender
   character) from a temporary copy of the mesh at its basis shape, alone in a temporary
   scene: the user's scene, selection and frame are not touched.
2. Run MediaPipe FaceLandmarker on the render: in this Python when mediapipe imports (tests,
   the command line), else in the worker Python (``python -m emoca_blender landmarks IMAGE
   --json``), since Blender's own Python has no mediapipe.
3. Cast a ray from each landmark's pixel along the view direction onto the mesh; the first
   hit gives a triangle and barycentric weights, so any shape key's displacement can be read
   at the landmark (:mod:`geometric_retarget`).

The face is found on the part of the mesh that the shape keys move (a body mesh with face
shapes is framed on its face, not its feet). When MediaPipe finds no face (a stylised or
cartoon character), :class:`NoFaceFound` says so; the caller falls back to name mapping or
to points the user picks (:func:`correspondence_from_points`).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile

import bpy
import numpy as np

from .._core import core
from .rig_build import fill_triangle_mesh

#: MediaPipe landmarks used: all 478 (the 10 iris points land on the eyeballs when the mesh
#: has them, which makes gaze keys observable; misses are left out of the solve).
N_MESH = 478
#: framings rendered for the correspondence: (zoom, x offset, z offset), offsets in face sizes
VIEWS = ((1.0, 0.0, 0.0), (0.85, 0.04, 0.03), (1.2, -0.04, -0.03), (0.92, -0.03, 0.04),
         (1.1, 0.03, -0.04))
#: smallest nose-tip protrusion in front of the outer eye corners, relative to their distance
MIN_NOSE_PROTRUSION = 0.25


class NoFaceFound(ValueError):
    """MediaPipe found no face in the render of the character."""


class CorrespondenceError(ValueError):
    """The correspondence cannot be made (message says why and what to do)."""


def _landmarks_module():
    import importlib
    return importlib.import_module(core.__name__ + ".backends.mediapipe_backend")


# ----------------------------------------------------------------------------- geometry

def basis_world(obj) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mesh at its basis shape in world space.

    Returns:
        vertices (V,3) float64 world coordinates, triangles (T,3) int64 (polygons
        triangulated), and the (T,) polygon index of each triangle.
    """
    me = obj.data
    V = len(me.vertices)
    co = np.empty(3 * V, np.float32)
    key = me.shape_keys
    if key is not None and len(key.key_blocks):
        key.reference_key.data.foreach_get("co", co)
    else:
        me.vertices.foreach_get("co", co)
    co = co.reshape(V, 3).astype(np.float64)
    M = np.array(obj.matrix_world, np.float64)
    world = co @ M[:3, :3].T + M[:3, 3]
    me.calc_loop_triangles()
    T = len(me.loop_triangles)
    tri = np.empty(3 * T, np.int32)
    me.loop_triangles.foreach_get("vertices", tri)
    poly = np.empty(T, np.int32)
    me.loop_triangles.foreach_get("polygon_index", poly)
    return world, tri.reshape(T, 3).astype(np.int64), poly.astype(np.int64)


def shape_key_deltas(obj, names=None) -> tuple[list[str], np.ndarray]:
    """(K, V, 3) world-space (rotation and scale of the object applied) displacement of each
    shape key from the basis. ``names`` picks and orders keys (default: all but the basis)."""
    key = obj.data.shape_keys
    if key is None or len(key.key_blocks) < 2:
        raise CorrespondenceError(f"{obj.name} has no shape keys to solve for")
    blocks = key.key_blocks
    names = list(names) if names is not None else [kb.name for kb in blocks[1:]]
    V = len(obj.data.vertices)
    buf = np.empty(3 * V, np.float32)
    key.reference_key.data.foreach_get("co", buf)
    base = buf.reshape(V, 3).astype(np.float64)
    L = np.array(obj.matrix_world, np.float64)[:3, :3]
    out = np.empty((len(names), V, 3), np.float64)
    for k, n in enumerate(names):
        kb = blocks.get(n)
        if kb is None:
            raise CorrespondenceError(f"{obj.name} has no shape key {n!r}")
        kb.data.foreach_get("co", buf)
        d = buf.reshape(V, 3) - base
        rel = kb.relative_key
        if rel is not None and rel != key.reference_key:
            rel.data.foreach_get("co", buf)
            d = d + base - buf.reshape(V, 3)      # relative to another key: its own delta
        out[k] = d @ L.T
    return names, out


def face_region(world: np.ndarray, deltas: np.ndarray | None) -> np.ndarray:
    """Boolean (V,) mask of the vertices the face occupies: those some shape key moves by
    more than 1% of the largest displacement (all vertices when no key moves any)."""
    if deltas is None or deltas.size == 0:
        return np.ones(len(world), bool)
    mag = np.sqrt((deltas ** 2).sum(-1)).max(0)
    m = mag > 0.01 * mag.max() if mag.max() > 0 else np.ones(len(world), bool)
    return m if m.sum() >= 10 else np.ones(len(world), bool)


# ----------------------------------------------------------------------------- rendering

def _frame(world: np.ndarray, region: np.ndarray, margin: float = 0.35):
    """Orthographic framing of the face region seen from -Y: (centre x, centre z, scale)."""
    p = world[region]
    lo, hi = p.min(0), p.max(0)
    cx, cz = 0.5 * (lo[0] + hi[0]), 0.5 * (lo[2] + hi[2])
    size = max(hi[0] - lo[0], hi[2] - lo[2]) * (1.0 + margin)
    return float(cx), float(cz), float(max(size, 1e-6))


def render_front(world: np.ndarray, tri: np.ndarray, path: str, centre_x: float,
                 centre_z: float, scale: float, resolution: int = 512,
                 look: str = "studio", colors: np.ndarray | None = None) -> str:
    """Render the triangle mesh head-on (camera at -Y looking +Y, up +Z) with Workbench into
    ``path`` (PNG) from a temporary scene, removed afterwards. ``colors`` (V,3) linear RGB
    per vertex paints the mesh (brows, lips, irises) instead of one skin colour."""
    scene = bpy.data.scenes.new("EMOCA_correspondence")
    me = bpy.data.meshes.new("EMOCA_correspondence")
    objs, datas = [], [me]
    try:
        fill_triangle_mesh(me, world, tri)
        if colors is not None:
            ca = me.color_attributes.new("Col", "FLOAT_COLOR", "POINT")
            rgba = np.concatenate([np.asarray(colors, np.float32),
                                   np.ones((len(world), 1), np.float32)], 1)
            ca.data.foreach_set("color", rgba.ravel())
            me.color_attributes.active_color = ca
        me.update()
        ob = bpy.data.objects.new("EMOCA_correspondence", me)
        scene.collection.objects.link(ob)
        objs.append(ob)
        cam_data = bpy.data.cameras.new("EMOCA_correspondence")
        datas.append(cam_data)
        cam_data.type = "ORTHO"
        cam_data.ortho_scale = scale
        depth = float(np.ptp(world[:, 1])) + scale
        cam_data.clip_start, cam_data.clip_end = 1e-4 * scale, 4 * depth + 10 * scale
        cam = bpy.data.objects.new("EMOCA_correspondence_cam", cam_data)
        scene.collection.objects.link(cam)
        objs.append(cam)
        cam.location = (centre_x, float(world[:, 1].min()) - depth, centre_z)
        cam.rotation_euler = (np.pi / 2, 0.0, 0.0)     # looks along +Y, up +Z
        scene.camera = cam
        scene.render.engine = "BLENDER_WORKBENCH"
        scene.render.resolution_x = scene.render.resolution_y = int(resolution)
        scene.render.resolution_percentage = 100
        scene.render.film_transparent = False
        scene.render.image_settings.file_format = "PNG"
        scene.render.image_settings.color_mode = "RGB"
        scene.render.filepath = path
        sh = scene.display.shading
        sh.light = "STUDIO"
        sh.color_type = "SINGLE" if colors is None else "VERTEX"
        sh.single_color = (0.80, 0.62, 0.52) if look == "studio" else (0.7, 0.7, 0.7)
        sh.show_cavity = look == "studio"
        if look == "studio":
            sh.cavity_type = "WORLD"
        sh.background_type = "VIEWPORT"
        sh.background_color = (0.05, 0.05, 0.05)
        scene.display.render_aa = "8"
        try:
            scene.view_settings.view_transform = "Standard"
        except TypeError:
            pass
        bpy.ops.render.render(write_still=True, scene=scene.name)
    finally:
        for o in objs:
            bpy.data.objects.remove(o)
        bpy.data.scenes.remove(scene)
        for d in datas:
            if d.users == 0:
                getattr(bpy.data, "meshes" if isinstance(d, bpy.types.Mesh) else "cameras").remove(d)
    if not os.path.isfile(path):
        raise CorrespondenceError(f"the Workbench render of the character failed ({path} "
                                  f"was not written)")
    return path


def detect_landmarks(image_path: str, worker_python: str | None = None) -> np.ndarray | None:
    """MediaPipe's (478, 3) landmarks (pixels, origin top-left) in an image, or None.

    In-process when mediapipe imports here, else through ``worker_python -m emoca_blender
    landmarks IMAGE --json`` (Blender's Python has no mediapipe)."""
    try:
        import mediapipe  # noqa: F401
        in_process = worker_python is None
    except ImportError:
        in_process = False
    if in_process:
        return _landmarks_module().detect_landmarks(image_path)
    if not worker_python:
        raise CorrespondenceError("MediaPipe is not importable in Blender's Python and no "
                                  "worker Python is set (add-on preferences > Worker Python)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(core.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([worker_python, "-m", core.__name__.rpartition(".")[2], "landmarks",
                        image_path, "--json", "--progress", "none"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=root)
    if r.returncode != 0:
        msg = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise CorrespondenceError(f"landmark detection in the worker failed: {msg}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return np.asarray(out["landmarks"], np.float64) if out.get("found") else None


# ----------------------------------------------------------------------------- ray casting

def _barycentric(p, a, b, c):
    v0, v1, v2 = b - a, c - a, p - a
    d00, d01, d11 = (v0 * v0).sum(-1), (v0 * v1).sum(-1), (v1 * v1).sum(-1)
    d20, d21 = (v2 * v0).sum(-1), (v2 * v1).sum(-1)
    den = d00 * d11 - d01 * d01
    den = np.where(np.abs(den) < 1e-30, 1e-30, den)
    v = (d11 * d20 - d01 * d21) / den
    w = (d00 * d21 - d01 * d20) / den
    return np.stack([1 - v - w, v, w], -1)


def cast_front(world: np.ndarray, tri: np.ndarray, xz: np.ndarray):
    """Cast rays along +Y through world points (x, z); the first hit per ray.

    Returns:
        (triangle vertex indices (L,3), barycentric weights (L,3), hit mask (L,)).
    """
    from mathutils import Vector
    from mathutils.bvhtree import BVHTree

    bvh = BVHTree.FromPolygons(world.tolist(), tri.tolist(), all_triangles=True)
    y0 = float(world[:, 1].min()) - 1.0 - float(np.ptp(world))
    L = len(xz)
    tri_idx = np.zeros(L, np.int64)
    hit = np.zeros(L, bool)
    pts = np.zeros((L, 3))
    d = Vector((0.0, 1.0, 0.0))
    for i, (x, z) in enumerate(xz):
        loc, _n, idx, _dist = bvh.ray_cast(Vector((float(x), y0, float(z))), d)
        if idx is not None:
            hit[i], tri_idx[i], pts[i] = True, idx, loc
    verts = tri[tri_idx]
    bary = _barycentric(pts, world[verts[:, 0]], world[verts[:, 1]], world[verts[:, 2]])
    bary = np.clip(bary, 0.0, 1.0)
    bary /= bary.sum(-1, keepdims=True)
    return verts, bary, hit


def find_correspondence(obj, worker_python: str | None = None, resolution: int = 512,
                        keep_image: str | None = None, views: int = 5) -> dict:
    """Automatic correspondence between MediaPipe's landmarks and ``obj``'s mesh.

    Args:
        obj: the face mesh (with shape keys), facing -Y in world space.
        worker_python: Python with mediapipe, used when this one has none.
        resolution: render size in pixels (square).
        keep_image: save the first render there (for the user to look at).
        views: how many framings to render and detect in (median of the detections).
    Returns:
        {"vertices": (L,3) int vertex indices, "weights": (L,3) barycentric weights,
         "valid": (L,) bool (ray hit the mesh), "landmark_ids": (L,) MediaPipe indices,
         "image": path or None, "source": "render", "points": (L,3) world positions,
         "view_vertices"/"view_weights"/"view_valid": (R,L,3)/(R,L,3)/(R,L) each render's
         own hits (they weight the landmarks in the solve)}  with L = 478.
    Raises:
        NoFaceFound: MediaPipe saw no face in the render (the message says what to do).
    """
    if obj is None or obj.type != "MESH":
        raise CorrespondenceError("pick the character's face mesh (a mesh object)")
    world, tri, _ = basis_world(obj)
    if len(tri) == 0:
        raise CorrespondenceError(f"{obj.name} has no faces to render")
    deltas = None
    if obj.data.shape_keys is not None and len(obj.data.shape_keys.key_blocks) > 1:
        _, deltas = shape_key_deltas(obj)
    region = face_region(world, deltas)
    cx0, cz0, scale0 = _frame(world, region)
    xz_all, pts = [], None
    with tempfile.TemporaryDirectory(prefix="emoca_corr_") as tmp:
        # several framings (zoom and offset): MediaPipe's landmark errors differ between
        # them, and the median of the detections in world space is steadier than any one
        for v, (zoom, dx, dz) in enumerate(VIEWS[:max(1, int(views))]):
            scale = scale0 * zoom
            cx, cz = cx0 + dx * scale0, cz0 + dz * scale0
            img = keep_image if (keep_image and v == 0) else os.path.join(tmp, f"front{v}.png")
            found = None
            for look in ("studio", "flat"):
                render_front(world, tri, img, cx, cz, scale, resolution, look=look)
                found = detect_landmarks(img, worker_python)
                if found is not None:
                    break
            if found is None:
                if v == 0:
                    break
                continue
            R = float(resolution)
            found = found[:N_MESH]
            pts = found if pts is None else pts
            xz_all.append(np.stack([cx + (found[:, 0] / R - 0.5) * scale,
                                    cz + (0.5 - found[:, 1] / R) * scale], -1))
    if not xz_all:
        raise NoFaceFound(f"MediaPipe found no face in a head-on render of {obj.name} (a "
                          f"stylised face, or not facing -Y/the Front view?): use name "
                          f"mapping, or pick a few landmark points on the mesh")
    xz = np.median(np.stack(xz_all), axis=0)
    x, z = xz[:, 0], xz[:, 1]
    verts, bary, hit = cast_front(world, tri, np.stack([x, z], -1))
    # a landmark must land on the face the shape keys move (not a hat or a hand in front)
    on_face = region[verts].any(-1)
    valid = hit & on_face
    # MediaPipe "sees" faces in blobs at low confidence; a real face has a nose: its tip
    # (landmark 1) stands out in front of the outer eye corners (33, 263) by a good part
    # of their distance (~0.4 on human faces, ~0.1 on a sphere)
    p3 = (world[verts] * bary[..., None]).sum(1)
    pair = next(((a, b) for a, b in ((33, 263), (130, 359), (133, 362))
                 if valid[[1, a, b]].all()), None)
    if pair is not None:
        a, b = pair
        iod = abs(p3[b, 0] - p3[a, 0])
        protrusion = 0.5 * (p3[a, 1] + p3[b, 1]) - p3[1, 1]
        if iod <= 0 or protrusion / iod < MIN_NOSE_PROTRUSION:
            raise NoFaceFound(f"MediaPipe's guess of a face on {obj.name} has no nose in "
                              f"front of the eyes (depth {protrusion / max(iod, 1e-9):.2f} of "
                              f"the eye distance): not a face, or not facing -Y/the Front "
                              f"view. Use name mapping, or pick a few landmark points")
    if valid.sum() < 0.5 * N_MESH:
        raise NoFaceFound(f"only {int(valid.sum())} of {N_MESH} landmarks found on "
                          f"{obj.name}'s face mesh: use name mapping or pick points")
    # each render's own hits: where they disagree on what the keys do, the landmark is
    # unreliable (a lip or eyelid edge) and the solve trusts it less
    view_hits = [cast_front(world, tri, v_xz) for v_xz in xz_all]
    return {"vertices": verts, "weights": bary, "valid": valid,
            "landmark_ids": np.arange(N_MESH), "image": keep_image, "source": "render",
            "pixels": pts, "points": p3,
            "view_vertices": np.stack([h[0] for h in view_hits]),
            "view_weights": np.stack([h[1] for h in view_hits]),
            "view_valid": np.stack([h[2] & region[h[0]].any(-1) for h in view_hits])}


def correspondence_from_points(obj, picks: dict[int, int]) -> dict:
    """A correspondence from points the user picked: {MediaPipe landmark id: vertex index}.
    Unpicked landmarks are invalid (the solve uses only the picked ones)."""
    if len(picks) < 6:
        raise CorrespondenceError(f"pick at least 6 landmark points, got {len(picks)}")
    n_v = len(obj.data.vertices)
    ids = np.array(sorted(picks), np.int64)
    verts = np.array([picks[i] for i in ids], np.int64)
    if ids.min() < 0 or ids.max() >= 478:
        raise CorrespondenceError("landmark ids must be in 0..477")
    if verts.min() < 0 or verts.max() >= n_v:
        raise CorrespondenceError(f"picked vertex outside {obj.name}'s {n_v} vertices")
    return {"vertices": np.repeat(verts[:, None], 3, 1), "weights": np.tile([1.0, 0, 0], (len(ids), 1)),
            "valid": np.ones(len(ids), bool), "landmark_ids": ids, "image": None,
            "source": "picked"}


# ----------------------------------------------------------------------------- solve

def _geo():
    import importlib
    return importlib.import_module(core.__name__ + ".retarget.geometric")


def landmark_basis(obj, corr: dict, names=None):
    """The character's shape keys read at the landmarks of a correspondence (model axes:
    the character faces -Y in world space)."""
    geo = _geo()
    world, _, _ = basis_world(obj)
    names, deltas = shape_key_deltas(obj, names)
    return geo.LandmarkBasis.from_mesh(
        names, geo.blender_to_model(world), geo.blender_to_model(deltas), corr["vertices"],
        corr["weights"], corr["valid"], corr["landmark_ids"],
        view_vertices=corr.get("view_vertices"), view_weights=corr.get("view_weights"),
        view_valid=corr.get("view_valid"))


def geometric_curves(capture, obj, corr: dict | None = None, names=None,
                     neutral_frame: int | None = None, worker_python: str | None = None,
                     reg: float = 1e-3, sparsity: float = 0.0) -> tuple[dict, dict]:
    """Solve the capture's landmark motion onto ``obj``'s shape keys.

    Args:
        capture: a Capture with MediaPipe's 478 pose-free ``landmarks3d``.
        obj: the face mesh.
        corr: a correspondence (default: :func:`find_correspondence`, which may raise
            :class:`NoFaceFound`).
        names: the shape keys to solve for (default all); the others stay untouched.
        neutral_frame: the capture frame where the actor rests (default: the calmest frames).
    Returns:
        ({key name: (N,) weights in [0, 1]}, info dict with the correspondence source and
        the number of landmarks used).
    """
    geo = _geo()
    if corr is None:
        corr = find_correspondence(obj, worker_python=worker_python)
    basis = landmark_basis(obj, corr, names)
    lm = np.asarray(capture["landmarks3d"], np.float64)
    ark = np.asarray(capture["arkit"], np.float64) if "arkit" in capture else None
    w = geo.solve_capture(basis, lm, ark, neutral_frame, reg=reg, sparsity=sparsity)
    info = {"source": corr.get("source"), "landmarks": int(np.sum(corr["valid"])),
            "keys": len(basis.names)}
    return {n: w[:, k] for k, n in enumerate(basis.names)}, info


__all__ = ["find_correspondence", "correspondence_from_points", "shape_key_deltas",
           "basis_world", "landmark_basis", "geometric_curves", "NoFaceFound",
           "CorrespondenceError"]
