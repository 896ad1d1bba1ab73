"""Engine-ready FBX presets, read back two ways: Blender's importer, and the FBX file's own
records through Blender's FBX parser (``io_scene_fbx.parse_fbx``, which builds nothing):
the take's name, the rest shape-key weights (DeformPercent), the roots' transforms (rotation
0, scale 1), the file's global time span and its key times (the clip's frame times whatever
the scene's rate; also read by three.js); Blender's re-import puts every vertex back."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
bpy = pytest.importorskip("bpy")

from operators.scene import blender_anim, cli_scene, fbx_io, gltf_io  # noqa: E402
from test_blender_rig import empty_scene, synthetic_capture  # noqa: E402,F401
from test_threejs_client import jaw_open_tracks, load_in_threejs, node  # noqa: E402,F401

KTIME = 46186158000


def _records(path):
    from io_scene_fbx import parse_fbx

    root, _ = parse_fbx.parse(str(path))

    def find(e, id_):
        return [c for c in e.elems if c.id == id_]
    objs = find(root, b"Objects")[0]
    models = {}
    for m in find(objs, b"Model"):
        p70 = find(m, b"Properties70")
        models[m.props[1].split(b"\x00")[0].decode()] = {
            c.props[0].decode(): list(c.props[4:]) for c in (p70[0].elems if p70 else [])}
    deform = [c.props[0] for d in find(objs, b"Deformer") for c in find(d, b"DeformPercent")]
    stacks = {s.props[1].split(b"\x00")[0].decode():
              {c.props[0].decode(): c.props[4] for c in find(s, b"Properties70")[0].elems}
              for s in find(objs, b"AnimationStack")}
    gs = {c.props[0].decode(): c.props[4:] for c in
          find(find(root, b"GlobalSettings")[0], b"Properties70")[0].elems}
    return models, np.array(deform), stacks, gs


def _key_times(path) -> list[np.ndarray]:
    """Every animation curve's key times in the file (seconds)."""
    from io_scene_fbx import parse_fbx

    root, _ = parse_fbx.parse(str(path))
    objs = next(e for e in root.elems if e.id == b"Objects")
    return [np.asarray(k.props[0], np.int64) / KTIME for c in objs.elems
            if c.id == b"AnimationCurve" for k in c.elems if k.id == b"KeyTime"]


def _scene(offset=0.2):
    cli_scene.new_scene()
    cap = synthetic_capture(n=24)
    s = cli_scene.retarget(cap, "sample", offset=offset)
    return [bpy.data.objects[n] for n in s["objects"]], bpy.context.scene


@pytest.mark.parametrize("preset", ["unity", "unreal", "generic"])
def test_presets_take_rest_origin_span(empty_scene, tmp_path, preset):
    objs, scene = _scene()
    arm = next(o for o in objs if o.type == "ARMATURE")
    mesh = next(o for o in objs if o.type == "MESH")
    # the character's own pose at frame 1: 10+ shapes above 5% (what the plain export rests in)
    scene.frame_set(1)
    assert sum(kb.value > 0.05 for kb in mesh.data.shape_keys.key_blocks[1:]) > 10
    path = fbx_io.export_fbx(tmp_path / f"c_{preset}.fbx", objs, frame_start=scene.frame_start,
                             frame_end=scene.frame_end, preset=preset)
    # the user's scene is as it was
    assert scene.name == "Scene" and arm.name == "Character_rig"
    assert abs(arm.location.x - 0.2) < 1e-6
    models, deform, stacks, gs = _records(path)
    assert list(stacks) == ["actor_take1"]                     # the clip, not "Scene"
    assert len(deform) == 52 and np.abs(deform).max() < 1e-6   # rest = neutral
    fps = scene.render.fps / scene.render.fps_base
    st = stacks["actor_take1"]
    assert gs["TimeSpanStart"][0] == st["LocalStart"] == round(scene.frame_start / fps * KTIME)
    assert gs["TimeSpanStop"][0] == st["LocalStop"] == round(scene.frame_end / fps * KTIME)
    root = "Armature" if preset == "unreal" else "Character_rig"
    assert root in models
    # every root (the armature and the meshes) at the origin with rotation 0 and scale 1;
    # metres for Unity and generic use (UnitScaleFactor 100 cm), centimetres for Unreal
    for name in (root, "Character"):
        m = models[name]
        assert np.abs(m.get("Lcl Translation", [0, 0, 0])).max() < 1e-6, (name, m)
        assert np.abs(m.get("Lcl Rotation", [0, 0, 0])).max() < 1e-4, (name, m)   # degrees
        assert np.allclose(m.get("Lcl Scaling", [1, 1, 1]), 1, atol=1e-6), (name, m)
    assert gs["UnitScaleFactor"][0] == (1.0 if preset == "unreal" else 100.0)


def test_unity_preset_imports_back_neutral_at_scale_one(empty_scene, tmp_path):
    objs, scene = _scene()
    path = fbx_io.export_fbx(tmp_path / "u.fbx", objs, frame_start=scene.frame_start,
                             frame_end=scene.frame_end, preset="unity")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.fbx(filepath=str(path), anim_offset=0.0)
    roots = [o for o in bpy.data.objects if o.parent is None]
    assert roots
    # the file's roots have rotation 0 in its +Y-up space (test above); Blender, +Z up, puts
    # its importer's axis conversion (+90 degrees on X) on them, and nothing else
    from bpy_extras.io_utils import axis_conversion
    to_blender = np.array(axis_conversion(from_forward="-Z", from_up="Y"))
    for o in roots:
        assert np.allclose(o.scale, 1, atol=1e-6) and np.allclose(o.location, 0, atol=1e-6)
        assert np.allclose(np.array(o.matrix_world)[:3, :3], to_blender, atol=1e-6), o.name
    acts = {a.name.split("|")[-1] for a in bpy.data.actions}
    assert acts == {"actor_take1"}


def test_face_only_leaves_meshes_without_shape_keys_out(empty_scene, tmp_path):
    objs, scene = _scene()
    arm = next(o for o in objs if o.type == "ARMATURE")
    me = bpy.data.meshes.new("Body")
    me.from_pydata([(0, 0, 0), (0.1, 0, 0), (0, 0.1, 0)], [], [(0, 1, 2)])
    body = bpy.data.objects.new("Body", me)
    scene.collection.objects.link(body)
    body.parent = arm
    path = fbx_io.export_fbx(tmp_path / "f.fbx", objs + [body], frame_start=scene.frame_start,
                             frame_end=scene.frame_end, face_only=True)
    models = _records(path)[0]
    assert "Body" not in models and "Character" in models
    path = fbx_io.export_fbx(tmp_path / "all.fbx", objs + [body], frame_start=scene.frame_start,
                             frame_end=scene.frame_end)
    assert "Body" in _records(path)[0]


def _world_vertices(objs, frames) -> dict:
    """{mesh name: [(V, 3) evaluated world positions at each frame]}."""
    from test_blender_rig import evaluated_vertices
    return {o.name: [evaluated_vertices(o, f) for f in frames] for o in objs
            if o.type == "MESH"}


@pytest.mark.parametrize("preset", ["unity", "unreal", "generic"])
def test_presets_reimport_puts_every_vertex_where_it_was(empty_scene, tmp_path, preset):
    """The armature's axis conversion (and Unreal's unit scale) is baked into its rest pose
    for the export only: the .blend is unchanged afterwards, and Blender's importer puts
    every vertex of the file where the .blend's evaluated mesh is (less the character's
    offset, which the engine presets leave out) at two frames."""
    objs, scene = _scene(offset=0.2)
    arm = next(o for o in objs if o.type == "ARMATURE")
    frames = (5, 17)
    before = _world_vertices(objs, frames)
    rest = {b.name: (b.head_local.copy(), b.tail_local.copy(), b.matrix_local.copy())
            for b in arm.data.bones}
    data_name, n_arm = arm.data.name, len(bpy.data.armatures)
    path = fbx_io.export_fbx(tmp_path / f"v_{preset}.fbx", objs, frame_start=scene.frame_start,
                             frame_end=scene.frame_end, preset=preset)
    # the user's scene is as it was: same armature data and rest pose, same vertices
    assert arm.data.name == data_name and len(bpy.data.armatures) == n_arm
    assert tuple(arm.location) == pytest.approx((0.2, 0, 0)) and tuple(arm.rotation_euler) == (
        0, 0, 0) and tuple(arm.scale) == (1, 1, 1)
    for b in arm.data.bones:
        h, t, m = rest[b.name]
        assert b.head_local == h and b.tail_local == t and b.matrix_local == m, b.name
    after = _world_vertices(objs, frames)
    for name in before:
        for a, b in zip(before[name], after[name]):
            assert np.abs(a - b).max() == 0.0, name
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.fbx(filepath=str(path), anim_offset=0.0)
    assert bpy.context.scene.render.fps == 30 and bpy.context.scene.render.fps_base == 1.0
    got = _world_vertices(bpy.data.objects, frames)
    worst = 0.0
    for name, want in before.items():
        for f, w, g in zip(frames, want, got[name]):
            err = np.abs(g - (w - [0.2, 0, 0])).max()
            assert err < 1e-4, (preset, name, f, err)
            worst = max(worst, err)
    print(f"{preset}: re-imported vertices within {worst:.1e} m of the .blend's at {frames}")
    assert np.ptp(before["Character"][0] - before["Character"][1]) > 1e-3   # frames differ


def _clip_in_scene_rate(rate: float, scene_fps: int, n=24):
    """A capture at ``rate`` baked onto the sample, in a scene at ``scene_fps`` fps (the
    user's project rate: the bake sets the capture's rate, the user sets the scene's)."""
    cli_scene.new_scene()
    s = cli_scene.retarget(synthetic_capture(n=n, fps=rate), "sample",
                           tolerance=None)   # dense: a key per frame
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = scene_fps, 1.0
    return [bpy.data.objects[n] for n in s["objects"]], scene


@pytest.mark.parametrize("rate,scene_fps", [(24 / 1.001, 24), (30 / 1.001, 30)])
def test_keys_at_the_clips_frame_times_whatever_the_scenes_rate(empty_scene, tmp_path, rate,
                                                                 scene_fps):
    """A 23.976 (29.97) fps capture in a 24 (30) fps scene: the file's keys are at the clip's
    frame times (frame i at i / rate from the take's start), its time span and rate are the
    clip's, the scene keeps its rate, and the re-import gives the keys back at the bake's
    frames (not 1.001 x frame)."""
    objs, scene = _clip_in_scene_rate(rate, scene_fps)
    n = scene.frame_end - scene.frame_start + 1
    assert n == 24 and fbx_io.clip_rate(objs, scene) == pytest.approx(rate, abs=1e-6)
    path = fbx_io.export_fbx(tmp_path / "r.fbx", objs, frame_start=scene.frame_start,
                             frame_end=scene.frame_end, preset="unity")
    assert (scene.render.fps, scene.render.fps_base) == (scene_fps, 1.0)
    times = _key_times(path)
    assert len(times) > 100
    want = (scene.frame_start + np.arange(n)) / rate
    for t in times:
        assert len(t) == n and np.abs(t - want).max() < 1e-6, (t[:3], want[:3])
        assert np.abs((t - t[0]) - np.arange(n) / rate).max() < 1e-4
    models, _, stacks, gs = _records(path)
    assert gs["CustomFrameRate"][0] == pytest.approx(rate, rel=1e-9)
    st = stacks["actor_take1"]
    # (fps_base is a float32 in Blender: 1.001 to 7 digits)
    assert abs(st["LocalStart"] / KTIME - scene.frame_start / rate) < 1e-6
    assert abs(st["LocalStop"] / KTIME - scene.frame_end / rate) < 1e-6
    assert gs["TimeSpanStart"][0] == st["LocalStart"] and gs["TimeSpanStop"][0] == st["LocalStop"]
    got = fbx_io.read_fbx_animation(path)["Character"]["shape_keys"]["jawOpen"][0]
    assert np.array_equal(got, scene.frame_start + np.arange(n)), got[:4]


def test_threejs_reads_the_clips_frame_times_in_a_24_fps_scene(empty_scene, tmp_path, node):
    """three.js (tools/threejs) loads the unity FBX and the GLB of a 23.976 fps clip in a
    24 fps scene: jawOpen's keys at i / 23.976 s from the take's start, the baked values."""
    rate = 24 / 1.001
    objs, scene = _clip_in_scene_rate(rate, 24)
    mesh = next(o for o in objs if o.type == "MESH" and o.data.shape_keys)
    jfr, jval = blender_anim.read_fcurves(mesh.data.shape_keys)[('key_blocks["jawOpen"].value',
                                                                  0)]
    n = scene.frame_end - scene.frame_start + 1
    for path in (fbx_io.export_fbx(tmp_path / "c.fbx", objs, frame_start=scene.frame_start,
                                   frame_end=scene.frame_end, preset="unity"),
                 gltf_io.export_gltf(tmp_path / "c.glb", objs, frame_start=scene.frame_start,
                                     frame_end=scene.frame_end)):
        d = load_in_threejs(node, path)
        for t, w in jaw_open_tracks(d):
            assert len(t) == n, path.suffix
            assert np.abs(t - t[0] - np.arange(n) / rate).max() < 1e-4, (path.suffix, t[:3])
            assert abs(t[0] - scene.frame_start / rate) < 1e-4, path.suffix
            assert np.abs(w - jval).max() < 1e-4 and np.array_equal(jfr, scene.frame_start
                                                                     + np.arange(n))
    assert (scene.render.fps, scene.render.fps_base) == (24, 1.0)
