"""Engine-ready FBX presets, read back two ways: Blender's importer, and the FBX file's own
records through Blender's FBX parser (``io_scene_fbx.parse_fbx``, which builds nothing):
the take's name, the rest shape-key weights (DeformPercent), the roots' transforms and the
file's global time span."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
bpy = pytest.importorskip("bpy")

from operators import cli_scene, fbx_io  # noqa: E402
from test_blender_rig import empty_scene, synthetic_capture  # noqa: E402,F401

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
    assert np.abs(models[root].get("Lcl Translation", [0, 0, 0])).max() < 1e-9   # at origin
    if preset == "unity":
        assert models[root].get("Lcl Scaling", [1, 1, 1]) == [1.0, 1.0, 1.0]


def test_unity_preset_imports_back_neutral_at_scale_one(empty_scene, tmp_path):
    objs, scene = _scene()
    path = fbx_io.export_fbx(tmp_path / "u.fbx", objs, frame_start=scene.frame_start,
                             frame_end=scene.frame_end, preset="unity")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.fbx(filepath=str(path), anim_offset=0.0)
    roots = [o for o in bpy.data.objects if o.parent is None]
    assert roots
    for o in roots:
        assert np.allclose(o.scale, 1, atol=1e-6) and np.allclose(o.rotation_euler, 0, atol=1e-6)
        assert np.allclose(o.location, 0, atol=1e-6)
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
