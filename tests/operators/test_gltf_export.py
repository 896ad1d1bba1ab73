"""glTF export of the demo pipeline's character (the sample character retargeted from a
capture), read back two ways: the file's own JSON (one animation named after the take,
morph targets named by ARKit names with default weights 0, the armature at the origin) and
Blender's glTF importer (every shape-key curve and the bones' motion come back); the CLI
picks the format from the output's name."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
bpy = pytest.importorskip("bpy")

from conftest import run_cli  # noqa: E402
from emoca_blender.arkit import ARKIT_NAMES  # noqa: E402
from operators.scene import blender_anim, cli_scene, fbx_io, gltf_io  # noqa: E402
from test_blender_rig import empty_scene, synthetic_capture  # noqa: E402,F401


def character(fps=30.0, frame_start=1, offset=0.2, n=24):
    """The demo pipeline's character: the sample retargeted from a capture, away from the
    origin (``offset``) as in ``make demo``'s scene. Returns (objects, scene, the bones the
    capture's curves went to: {"jaw": name, "head": name, ...})."""
    cli_scene.new_scene()
    s = cli_scene.retarget(synthetic_capture(n=n, fps=fps), "sample", frame_start=frame_start,
                           offset=offset, tolerance=None)   # dense: a key per frame
    return [bpy.data.objects[n] for n in s["objects"]], bpy.context.scene, s["bones"]


def mesh_and_armature(objs):
    """The face mesh (the one with shape keys) and the armature of ``objs``."""
    return (next(o for o in objs if o.type == "MESH" and o.data.shape_keys),
            next(o for o in objs if o.type == "ARMATURE"))


def _node(doc, name):
    return next(n for n in doc["nodes"] if n.get("name") == name)


@pytest.mark.parametrize("ext", [".glb", ".gltf"])
def test_one_take_neutral_rest_at_origin(empty_scene, tmp_path, ext):
    objs, scene, bones = character(frame_start=10)
    mesh, arm = mesh_and_armature(objs)
    arm_x = arm.location.x
    scene.frame_set(10)        # the character's own pose at the first frame is not neutral
    assert sum(kb.value > 0.05 for kb in mesh.data.shape_keys.key_blocks[1:]) > 10
    sel = {o.name for o in scene.objects if o.select_get()}
    path = gltf_io.export_gltf(tmp_path / f"c{ext}", objs, frame_start=scene.frame_start,
                               frame_end=scene.frame_end)
    assert path == tmp_path / f"c{ext}" and sorted(p.name for p in tmp_path.iterdir()) == [
        f"c{ext}"]                                     # one file, no temporary left
    # the user's scene is as it was
    assert scene.name == "Scene" and abs(arm_x) > 0.1 and arm.location.x == arm_x
    assert (scene.frame_start, scene.frame_end, scene.frame_current) == (10, 33, 10)
    assert {o.name for o in scene.objects if o.select_get()} == sel

    doc, blob = gltf_io.read_gltf(path)
    if ext == ".gltf":
        assert path.read_bytes()[:1] == b"{" and doc["buffers"][0]["uri"].startswith("data:")
    assert [a["name"] for a in doc["animations"]] == ["actor_take1"]   # the clip's take
    anim = doc["animations"][0]
    targets = {(doc["nodes"][c["target"]["node"]]["name"], c["target"]["path"])
               for c in anim["channels"]}
    assert (mesh.name, "weights") in targets
    assert {(b, "rotation") for b in bones.values()} <= targets      # jaw, head, eyes
    gmesh = doc["meshes"][_node(doc, mesh.name)["mesh"]]
    names = gmesh["extras"]["targetNames"]
    assert names == [kb.name for kb in mesh.data.shape_keys.key_blocks[1:]]
    assert set(ARKIT_NAMES) <= set(names)
    assert np.abs(gmesh.get("weights", [0.0])).max() == 0.0            # rest = neutral
    rig = _node(doc, arm.name)
    assert np.abs(rig.get("translation", [0, 0, 0])).max() < 1e-9      # at its own origin
    assert np.allclose(rig.get("scale", [1, 1, 1]), 1)
    fps = scene.render.fps / scene.render.fps_base
    times = gltf_io.accessor(doc, blob, anim["samplers"][0]["input"])
    assert np.allclose(times, np.arange(10, 34) / fps, atol=1e-6)


@pytest.mark.parametrize("fps", [30.0, 29.97])
def test_blender_reimport_gives_the_animation_back(empty_scene, tmp_path, fps):
    """Blender's glTF importer: every shape-key curve equals the bake; each bone's motion
    (its head and its rotation relative to the first frame, in armature space) too."""
    objs, scene, bones = character(fps=fps)
    mesh, arm = mesh_and_armature(objs)
    baked = blender_anim.read_fcurves(mesh.data.shape_keys)
    frames = list(range(scene.frame_start, scene.frame_end + 1))

    def motion(a):
        out = {}
        for pb in a.pose.bones:
            ms = []
            for f in frames:
                scene.frame_set(f)
                ms.append(np.array(pb.matrix))
            out[pb.name] = (np.array([m[:3, 3] for m in ms]),
                            np.array([m[:3, :3] @ ms[0][:3, :3].T for m in ms]))
        return out
    before = motion(arm)
    path = gltf_io.export_gltf(tmp_path / "c.glb", objs, frame_start=scene.frame_start,
                               frame_end=scene.frame_end)

    got = gltf_io.read_gltf_animation(path)           # what export_gltf's check reads
    keys = got[mesh.name]["shape_keys"]
    assert set(keys) == {kb.name for kb in mesh.data.shape_keys.key_blocks[1:]}
    for name, (fr, val) in keys.items():
        bfr, bval = baked[(f'key_blocks["{name}"].value', 0)]
        assert np.array_equal(fr, frames), (name, fr[:3])
        assert np.abs(val - np.interp(fr, bfr, bval)).max() < 1e-5, name
    assert set(bones.values()) <= set(got[arm.name]["bones"])

    base = scene.render.fps_base
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 30, 1.0 / base   # bpy 5.0.1's glTF time base
    bpy.ops.import_scene.gltf(filepath=str(path), disable_bone_shape=True)
    assert {a.name for a in bpy.data.actions} == {"actor_take1"}
    arm2 = next(o for o in bpy.data.objects if o.type == "ARMATURE")
    assert np.allclose(arm2.matrix_world, np.eye(4), atol=1e-6)     # origin, scale 1
    after = motion(arm2)
    for bone, (heads, rots) in before.items():
        assert np.abs(after[bone][0] - heads).max() < 1e-5, bone
        assert np.abs(after[bone][1] - rots).max() < 1e-4, bone
    jaw_rot = before[bones["jaw"]][1]
    jaw_turn = np.arccos(np.clip((np.trace(jaw_rot, axis1=1, axis2=2) - 1) / 2, -1, 1))
    assert jaw_turn.max() > 0.1                                      # the jaw really moves


def test_face_only_and_errors(empty_scene, tmp_path):
    objs, scene, _ = character()
    bpy.ops.mesh.primitive_plane_add(size=0.1)      # a mesh without shape keys
    body = bpy.context.active_object
    body.name, body.parent = "Body", next(o for o in objs if o.type == "ARMATURE")
    p = gltf_io.export_gltf(tmp_path / "f.glb", objs + [body], frame_start=1, frame_end=24,
                            face_only=True, verify=False)
    assert "Body" not in {n.get("name") for n in gltf_io.read_gltf(p)[0]["nodes"]}
    with pytest.raises(gltf_io.GltfExportError, match="does not exist"):
        gltf_io.export_gltf(tmp_path / "nope" / "x.glb", objs, frame_start=1, frame_end=24)
    with pytest.raises(gltf_io.GltfExportError, match="nothing to export"):
        gltf_io.export_gltf(tmp_path / "x.glb", [], frame_start=1, frame_end=24)
    assert isinstance(gltf_io.GltfExportError("x"), fbx_io.ExportError)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["f.glb"]


def test_cli_export_picks_the_format_from_the_name(empty_scene, tmp_path):
    character()
    blend = cli_scene.save_blend(tmp_path / "char.blend")
    r = run_cli("export", blend, "-o", tmp_path / "x.glb")
    assert r.returncode == 0, r.stderr[-2000:]
    doc = gltf_io.read_gltf(tmp_path / "x.glb")[0]
    assert [a["name"] for a in doc["animations"]] == ["actor_take1"]
    r = run_cli("export", blend, "-o", tmp_path / "x.gltf")
    assert r.returncode == 0, r.stderr[-2000:]
    assert gltf_io.read_gltf(tmp_path / "x.gltf")[0]["animations"][0]["name"] == "actor_take1"
    for args, says in ((["-o", tmp_path / "x.obj"], "give a name ending in .fbx, .glb, .gltf"),
                       (["-o", tmp_path / "x.glb.txt"], "give a name ending in"),
                       (["-o", tmp_path / "y.glb", "--preset", "unity"], "--preset is for FBX")):
        r = run_cli("export", blend, *args)
        assert r.returncode == 2, (args, r.stderr[-2000:])
        assert says in r.stderr, r.stderr
    assert sorted(q.name for q in tmp_path.iterdir()) == ["char.blend", "x.glb", "x.gltf"]
