"""The dense detail mesh (issue 5, optional part): UV-space upsampling of the coarse surface,
displaced by a frame's map. Geometry on a procedural plane (always runs) and on FLAME's own
template and UVs (../shared/flame_aux); then the CLI ``detail`` command on an emoca-backend
capture (synthetic checkpoint and FLAME) and the Blender operator on the rig, checked against
the core."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import run_cli  # noqa: E402

from emoca_blender.models import detail_mesh as dm  # noqa: E402


def _plane(n=4, uv_lo=0.1, uv_hi=0.9, size=0.2):
    """An n x n grid in z = 0, x/y in [0, size], UVs an affine map of x/y into [lo, hi]."""
    g = np.linspace(0, 1, n + 1)
    X, Y = np.meshgrid(g, g)
    v = np.stack([X.ravel() * size, Y.ravel() * size, 0 * X.ravel()], 1)
    uv = np.stack([uv_lo + (uv_hi - uv_lo) * X.ravel(), uv_lo + (uv_hi - uv_lo) * Y.ravel()], 1)
    f = []
    for r in range(n):
        for c in range(n):
            a, b, d, e = r * (n + 1) + c, r * (n + 1) + c + 1, (r + 1) * (n + 1) + c, (r + 1) * (n + 1) + c + 1
            f += [[a, b, e], [a, e, d]]                    # counter-clockwise seen from +z
    return v, np.array(f), uv


def _area(v, f):
    return 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1).sum()


def test_plane_samples_positions_and_constant_displacement():
    v, f, uv = _plane()
    res = 64
    s = dm.uv_samples(uv[f], res)
    # texel centres inside [0.1, 0.9]^2: (c + 0.5)/64 in [0.1, 0.9] -> c = 6..57 (52 per axis)
    assert len(s.rows) == 52 * 52
    assert len(np.unique(s.rows * res + s.cols)) == len(s.rows)
    rec = (uv[f][s.face] * s.bary[:, :, None]).sum(1)
    assert np.abs(rec - s.uv).max() < 1e-12
    # zero map: texels lie on the plane where their UV says
    mesh = dm.build(v, f, uv[f], np.zeros((res, res)), samples=s)
    want_xy = (s.uv - 0.1) / 0.8 * 0.2
    assert np.abs(mesh.vertices[:, :2] - want_xy).max() < 1e-12
    assert np.abs(mesh.vertices[:, 2]).max() < 1e-15
    # every dense triangle faces +z like the plane, and they tile it: 51 x 51 blocks
    tn = np.cross(mesh.vertices[mesh.faces[:, 1]] - mesh.vertices[mesh.faces[:, 0]],
                  mesh.vertices[mesh.faces[:, 2]] - mesh.vertices[mesh.faces[:, 0]])
    assert (tn[:, 2] > 0).all() and len(mesh.faces) == 2 * 51 * 51
    assert _area(mesh.vertices, mesh.faces) == pytest.approx((51 / 64 / 0.8 * 0.2) ** 2, rel=1e-9)
    # a constant map moves every texel by exactly that along the normal (+z)
    d = np.full((res, res), 0.0015)
    moved = dm.build(v, f, uv[f], d, samples=s)
    assert np.allclose(moved.vertices[:, 2], 0.0015, atol=1e-15)
    assert np.allclose(moved.vertices[:, :2], mesh.vertices[:, :2], atol=1e-15)
    # scale, and a bump lands on its texel only
    bump = np.zeros((res, res))
    bump[20, 30] = 0.004
    b = dm.build(v, f, uv[f], bump, samples=s, scale=0.5)
    k = np.flatnonzero((s.rows == 20) & (s.cols == 30))
    assert b.vertices[k, 2] == pytest.approx(0.002) and np.count_nonzero(b.vertices[:, 2]) == 1


def test_mirrored_islands_keep_their_winding_and_seams_are_not_stitched():
    """Two UV islands side by side in UV but a metre apart in 3-D (one mirrored in U): no dense
    triangle joins them, and each island's triangles face like its own surface."""
    v, f, uv = _plane(n=2, uv_lo=0.05, uv_hi=0.45)
    v2 = v + [1.0, 0.0, 0.0]
    uv2 = uv.copy()
    uv2[:, 0] = 1.0 - uv2[:, 0] + 0.0                   # mirrored, in [0.55, 0.95]
    V = np.concatenate([v, v2])
    F = np.concatenate([f, f + len(v)])
    UV = np.concatenate([uv, uv2])
    mesh = dm.build(V, F, UV[F], np.zeros((32, 32)))
    side = mesh.vertices[:, 0] > 0.5
    assert side.any() and (~side).any()
    assert (side[mesh.faces].all(1) | (~side[mesh.faces]).all(1)).all()
    tn = np.cross(mesh.vertices[mesh.faces[:, 1]] - mesh.vertices[mesh.faces[:, 0]],
                  mesh.vertices[mesh.faces[:, 2]] - mesh.vertices[mesh.faces[:, 0]])
    assert (tn[:, 2] > 0).all()
    # the gap column between islands is not bridged even though its texels are neighbours:
    # with a bridge, some edge would be ~1 m long
    e = np.linalg.norm(mesh.vertices[mesh.faces[:, 0]] - mesh.vertices[mesh.faces[:, 1]], axis=1)
    assert e.max() < 0.05


def _template():
    from emoca_blender.models import flame

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import flame_synthetic as fs

    p = fs.aux("head_template.obj")
    if p is None:
        pytest.skip("../shared/flame_aux is absent (FLAME's head_template.obj)")
    v, uvc, f, uvf = flame.parse_obj(p)
    return v, f, uvc[uvf], fs


def test_flame_template_dense_mesh():
    v, f, fu, fs = _template()
    s = dm.uv_samples(fu, 256)
    # the sampled texels are the UV layout's area (in texels), within its boundary texels
    a_uv = 0.5 * np.abs((fu[:, 1, 0] - fu[:, 0, 0]) * (fu[:, 2, 1] - fu[:, 0, 1])
                        - (fu[:, 1, 1] - fu[:, 0, 1]) * (fu[:, 2, 0] - fu[:, 0, 0])).sum()
    assert abs(len(s.rows) - a_uv * 256 ** 2) < 0.02 * a_uv * 256 ** 2
    assert len(s.rows) > 50_000                     # DECA's dense template: ~59k at 256 px
    flat = dm.build(v, f, fu, np.zeros((256, 256)), samples=s)
    # the dense surface is the coarse one, upsampled: same area but the seams' and borders'
    # half-texel strips
    assert _area(flat.vertices, flat.faces) == pytest.approx(_area(v, f), rel=0.05)
    # normals point out of the face: FLAME looks down +z, its face region's normals too
    masks = fs.aux("FLAME_masks.pkl")
    if masks is not None:
        from emoca_blender.models import flame

        face = flame.load_masks(masks, len(v))["face"]
        n = dm.vertex_normals(v, f)
        assert np.mean(n[face, 2] > 0) > 0.95
    # a Gaussian bump in the map moves the surface out by its height at its texel, and
    # leaves texels far from it (in UV) in place
    k = int(np.argmin(np.abs(s.uv - [0.5, 0.45]).sum(1)))      # a texel on the face
    r0, c0 = s.rows[k], s.cols[k]
    yy, xx = np.mgrid[0:256, 0:256]
    bump = 0.003 * np.exp(-((yy - r0) ** 2 + (xx - c0) ** 2) / (2 * 3.0 ** 2))
    m = dm.build(v, f, fu, bump, samples=s)
    off = ((m.vertices - flat.vertices) * flat.normals).sum(1)
    assert off[k] == pytest.approx(0.003, rel=1e-9)
    far = (s.rows - r0) ** 2 + (s.cols - c0) ** 2 > 30 ** 2
    assert np.abs(m.vertices[far] - flat.vertices[far]).max() < 1e-9
    assert np.linalg.norm(m.vertices - flat.vertices, axis=1).max() == pytest.approx(0.003)


# ---------------------------------------------------------------- CLI and Blender
@pytest.fixture(scope="module")
def emoca_capture(tmp_path_factory, demo_clip):
    pytest.importorskip("torch")
    import emoca_synthetic as es

    if not es.flame_aux_available():
        pytest.skip("../shared/flame_aux is absent")
    import torch

    from emoca_blender.capture.pipeline import CaptureSettings, run_capture

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("detail") / "clip.capture.npz"
        run_capture(demo_clip, out, CaptureSettings(
            backend="emoca", end=4, emotion=False, flame_dir=str(es.cached("flame")),
            emoca_checkpoint=str(es.cached("emoca"))), cache_dir=None)
    finally:
        torch.set_num_threads(n)
    return out, es.cached("flame")


def test_cli_detail_writes_the_frame_mesh(emoca_capture, tmp_path):
    from emoca_blender import capture_file
    from emoca_blender.models import displacement, flame

    path, fdir = emoca_capture
    cap = capture_file.load_capture(path)
    first = int(cap.meta["frame_start"])
    out = tmp_path / "d.obj"
    r = run_cli("detail", path, "--flame-dir", fdir, "--frame", first + 2, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "vertices" in r.stdout and out.is_file()
    V, UV, Fc = dm.read_obj(out)
    # the core's mesh of that frame: FLAME of the capture's parameters, the frame's map
    a = flame.load_assets(fdir)
    coarse = dm.flame_frame_vertices(a.model, cap, 2)
    folder = displacement.sequence_dir(path)
    disp = displacement.read_map(displacement.frame_files(folder)[2])
    want = dm.build(coarse, a.model.faces, a.uv_coords[a.uv_faces], disp)
    assert V.shape == want.vertices.shape and np.abs(V - want.vertices).max() < 1e-6
    assert np.array_equal(Fc, want.faces) and np.abs(UV - want.uvs).max() < 1e-6
    assert np.abs(want.displacement).max() > 0          # the map does move the surface
    # --head-pose applies the frame's head rotation: a rotated copy of the same mesh
    out2 = tmp_path / "p.obj"
    assert run_cli("detail", path, "--flame-dir", fdir, "--frame", first + 2, "-o", out2,
                   "--head-pose").returncode == 0
    V2 = dm.read_obj(out2)[0]
    assert np.abs(V2 - V).max() > 1e-4
    assert np.allclose(np.linalg.norm(V2 - V2.mean(0), axis=1),
                       np.linalg.norm(V - V.mean(0), axis=1), atol=1e-5)
    # bad input: a frame outside the capture, and a capture without displacement maps
    r = run_cli("detail", path, "--flame-dir", fdir, "--frame", first + 999, "-o", out)
    assert r.returncode == 2 and "not in the capture" in r.stderr
    bare = tmp_path / "bare.capture.npz"
    capture_file.save_capture(cap, bare)
    r = run_cli("detail", bare, "--flame-dir", fdir, "-o", tmp_path / "x.obj")
    assert r.returncode == 2 and "displacement" in r.stderr
    assert not (tmp_path / "x.obj").exists()


def test_blender_operator_matches_core(emoca_capture):
    bpy = pytest.importorskip("bpy")
    from emoca_blender import capture_file
    from emoca_blender.models import displacement, flame
    from operators.scene import displacement_material as dmat
    from operators import ops_displacement
    from operators.scene import rig_build

    import cv2

    path, fdir = emoca_capture
    cap = capture_file.load_capture(path)
    a = flame.load_assets(fdir)
    # give captured frame 2 a map unlike its neighbours' (a 4 mm ridge), so showing the
    # wrong frame's map cannot pass
    files = displacement.frame_files(displacement.sequence_dir(path))
    ridge = displacement.read_map(files[2])
    ridge[:, 100:140] += 0.004
    cv2.imwrite(str(files[2]), displacement.encode(ridge)[0])
    bpy.ops.wm.read_factory_settings(use_empty=True)
    hm = flame.head_model_for_capture(a.model, cap, n_expr=50, uv_coords=a.uv_coords,
                                      uv_faces=a.uv_faces)
    mesh, arm, _ = rig_build.build_flame_rig(hm, cap, "FLAME", frame_start=1)
    dmat.apply_to_rig(mesh, path, frame_start=1)
    bpy.context.view_layer.objects.active = mesh
    F = 3                                                   # captured frame 2
    bpy.context.scene.frame_set(F)
    registered = not hasattr(bpy.types, "EMOCA_OT_detail_mesh")
    if registered:
        bpy.utils.register_class(ops_displacement.EMOCA_OT_detail_mesh)
    try:
        assert bpy.ops.emoca.detail_mesh() == {"FINISHED"}
        bpy.context.view_layer.objects.active = arm
        assert not bpy.ops.emoca.detail_mesh.poll()      # not a mesh with displacement maps
    finally:
        if registered:
            bpy.utils.unregister_class(ops_displacement.EMOCA_OT_detail_mesh)
    obj = next(o for o in bpy.data.objects if o.name.startswith(mesh.name + "_detail_"))
    m = displacement.read_manifest(displacement.sequence_dir(path))
    assert obj["emoca_detail_frame"] == m["first"] + 2
    got = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", got)
    got = got.reshape(-1, 3).astype(np.float64)
    # the core detail mesh of the same frame, from FLAME with the frame's head rotation,
    # rigidly aligned on the coarse meshes (the rig may place the head elsewhere)
    ev = mesh.evaluated_get(bpy.context.evaluated_depsgraph_get()).to_mesh()
    rig_v = dmat.mesh_arrays(ev)[0]
    mesh.evaluated_get(bpy.context.evaluated_depsgraph_get()).to_mesh_clear()
    core_v = dm.flame_frame_vertices(a.model, cap, 2, head_pose=True)
    mu_r, mu_c = rig_v.mean(0), core_v.mean(0)
    U, _, Wt = np.linalg.svd((core_v - mu_c).T @ (rig_v - mu_r))
    R = (U @ Wt).T
    if np.linalg.det(R) < 0:
        U[:, -1] *= -1
        R = (U @ Wt).T
    size = np.ptp(core_v, 0).max()
    assert np.abs((core_v - mu_c) @ R.T + mu_r - rig_v).max() < 1e-4 * size
    disp = displacement.read_map(displacement.frame_files(displacement.sequence_dir(path))[2])
    want = dm.build(core_v, a.model.faces, a.uv_coords[a.uv_faces], disp)
    assert got.shape == want.vertices.shape
    assert np.abs((want.vertices - mu_c) @ R.T + mu_r - got).max() < 2e-4 * size
    uv = np.empty(len(obj.data.loops) * 2, np.float32)
    obj.data.uv_layers["UVMap"].data.foreach_get("uv", uv)
    assert np.abs(uv.reshape(-1, 2) - want.uvs[want.faces.ravel()]).max() < 1e-6
