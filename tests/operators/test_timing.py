"""Frame rates (issue 15 item 4): a clip's keys land at its real frame times in any scene
rate (23.976, 29.97 and 60 fps clips into 24 and 30 fps scenes: frame = 1 + t * scene rate,
between whole frames where the rates differ), or, with the choice to retime the scene to the
clip, the scene takes the clip's rate (30000/1001 for 29.97) and a key per whole frame; the
actor rig and the character keep in step; the exports carry the real times; the Retarget
operator (Scene Rate), Build Rig and the command line (--scene-fps) do the same."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
bpy = pytest.importorskip("bpy")

from conftest import run_cli  # noqa: E402
from emoca_blender import capture_file as cf  # noqa: E402
from emoca_blender.arkit import ARKIT_NAMES  # noqa: E402
from operators.scene import blender_anim, cli_scene, fbx_io, gltf_io, retarget_bake, rig_build
from test_blender_rig import empty_scene, synthetic_capture  # noqa: E402,F401

JAW = ('key_blocks["jawOpen"].value', 0)
NTSC = {23.976: 24000 / 1001, 29.97: 30000 / 1001}


def _bake(clip_fps, scene_fps, n=40, timing="scene", **kw):
    cli_scene.new_scene()
    scene = bpy.context.scene
    rig_build.set_scene_rate(scene, scene_fps)
    cap = synthetic_capture(n=n, fps=clip_fps, k=52, expression_names=tuple(ARKIT_NAMES))
    objs = cli_scene.load_character("sample")
    meshes, arm = retarget_bake.find_targets(objs)
    s = retarget_bake.bake_capture(cap, meshes, armature=arm, frame_start=1, timing=timing,
                                   tolerance=None, **kw)
    return cap, objs, meshes[0], arm, s, scene


@pytest.mark.parametrize("clip", [23.976, 29.97, 60.0])
@pytest.mark.parametrize("scene_fps", [24.0, 30.0])
def test_keys_at_the_clips_real_times_in_the_scenes_rate(empty_scene, clip, scene_fps):
    clip_fps = NTSC.get(clip, clip)
    cap, objs, mesh, arm, s, scene = _bake(clip_fps, scene_fps)
    t = cap["timestamps"] - cap["timestamps"][0]
    want = 1 + t * scene_fps                                  # frame = 1 + t * scene rate
    fr, val = blender_anim.read_fcurves(mesh.data.shape_keys)[JAW]
    assert np.abs(fr - want).max() < 1e-4, (fr[:4], want[:4])
    assert np.abs(val - cap.column("arkit", "jawOpen")).max() < 1e-6
    for (dp, _i), (bfr, _v) in blender_anim.read_fcurves(arm).items():   # bones too
        assert np.abs(bfr - want).max() < 1e-4, dp
    # the scene keeps its rate, its range covers the last key
    assert (scene.render.fps, scene.render.fps_base) == (int(scene_fps), 1.0)
    assert (scene.frame_start, scene.frame_end) == (1, math.ceil(want[-1] - 1e-6))
    assert s["rate"] == scene_fps and s["timing"] == "scene"
    action = mesh.data.shape_keys.animation_data.action
    assert action[blender_anim.FPS_PROP] == scene_fps               # the rate the frames are in
    if abs(clip_fps - scene_fps) > 1e-6:
        assert np.abs(want - np.round(want)).max() > 0.01     # between whole frames
    # Blender plays it at the clip's times: at scene frame 1 + t_i * rate, frame i's value
    i = len(t) // 2
    scene.frame_set(int(want[i]), subframe=float(want[i] % 1))
    assert mesh.data.shape_keys.key_blocks["jawOpen"].value == pytest.approx(
        float(cap.column("arkit", "jawOpen")[i]), abs=1e-5)


def test_retime_sets_the_scene_to_30000_1001(empty_scene):
    """Retime Scene to Clip: the scene takes the clip's rate, exactly 30000/1001 for a
    29.97 fps clip, also when its container rounds it to 29.97; a key per whole frame."""
    for fps in (30000 / 1001, 29.97):
        cap, objs, mesh, arm, s, scene = _bake(fps, 24.0, timing="clip")
        assert scene.render.fps == 30
        assert scene.render.fps / scene.render.fps_base == pytest.approx(30000 / 1001, rel=1e-7)
        fr, _ = blender_anim.read_fcurves(mesh.data.shape_keys)[JAW]
        assert np.array_equal(fr, 1 + np.arange(cap.n_frames))
        assert (scene.frame_start, scene.frame_end) == (1, cap.n_frames)


def test_actor_rig_and_character_in_step(empty_scene):
    """The actor rig (Build Rig) keyed with the same timing lands on the character's
    frames: a 29.97 fps clip in a 24 fps scene."""
    cap, objs, mesh, arm, s, scene = _bake(30000 / 1001, 24.0, n=30)
    actor, actor_arm = cli_scene.build_actor(cap, timing="scene")
    afr = next(v[0] for k, v in blender_anim.read_fcurves(actor.data.shape_keys).items())
    cfr = blender_anim.read_fcurves(mesh.data.shape_keys)[JAW][0]
    assert np.abs(afr - cfr).max() < 1e-5
    assert (scene.render.fps, scene.render.fps_base) == (24, 1.0)


@pytest.mark.parametrize("kind", ["fbx", "glb"])
def test_exports_of_a_scene_rate_bake(empty_scene, tmp_path, kind):
    """A 29.97 fps clip kept in a 24 fps scene: the files sample the scene's frames at
    t = frame / 24 (the clip's real times), with the values Blender plays there."""
    cap, objs, mesh, arm, s, scene = _bake(30000 / 1001, 24.0, n=48)
    frames = np.arange(scene.frame_start, scene.frame_end + 1)
    fc = mesh.data.shape_keys.animation_data.action
    fr, val = blender_anim.read_fcurves(mesh.data.shape_keys)[JAW]
    want = np.interp(frames, fr, val)
    if kind == "fbx":
        path = fbx_io.export_fbx(tmp_path / "t.fbx", objs, frame_start=scene.frame_start,
                                 frame_end=scene.frame_end, preset="unity")
        got = fbx_io.read_fbx_animation(path)["Character"]["shape_keys"]["jawOpen"]
    else:
        path = gltf_io.export_gltf(tmp_path / "t.glb", objs, frame_start=scene.frame_start,
                                   frame_end=scene.frame_end)
        got = gltf_io.read_gltf_animation(path)["Character"]["shape_keys"]["jawOpen"]
        doc, blob = gltf_io.read_gltf(path)
        times = gltf_io.accessor(doc, blob, doc["animations"][0]["samplers"][0]["input"])
        # t = frame / 24, every scene frame to the last key's (38.6 here: the frame after it
        # holds the same value and is not sampled)
        assert len(times) >= len(frames) - 1
        assert np.abs(times - frames[:len(times)] / 24.0).max() < 1e-5
    assert fc[blender_anim.FPS_PROP] == 24.0
    assert np.abs(np.interp(frames, got[0], got[1]) - want).max() < 1e-3, kind
    assert (scene.render.fps, scene.render.fps_base) == (24, 1.0)


@pytest.fixture
def addon():
    import operators
    import panels

    bpy.ops.wm.read_factory_settings(use_empty=True)
    operators.register()
    panels.register()
    yield bpy.context.scene
    panels.unregister()
    operators.unregister()
    bpy.ops.wm.read_factory_settings(use_empty=True)


def test_retarget_operator_scene_rate(addon, tmp_path):
    """The Retarget operator: Scene Rate Keep Scene Rate (the default) keys a 29.97 fps
    capture at 1 + t * 24 in the factory 24 fps scene; Retime Scene to Clip sets the scene
    to 30000/1001 with a key per frame; Build Rig follows the same choice."""
    scene = addon
    cap = synthetic_capture(n=30, fps=30000 / 1001)
    path = tmp_path / "take.capture.npz"
    cf.save_capture(cap, path)
    props = scene.emoca
    props.capture_path = str(path)
    assert props.timing == 'SCENE' and scene.render.fps == 24
    assert bpy.ops.emoca.add_sample_character() == {'FINISHED'}
    scene.emoca_retarget.reduce_keys = False
    assert bpy.ops.emoca.retarget() == {'FINISHED'}
    fr, _ = blender_anim.read_fcurves(props.target_mesh.data.shape_keys)[JAW]
    t = cap["timestamps"] - cap["timestamps"][0]
    assert np.abs(fr - (1 + t * 24)).max() < 1e-4
    assert (scene.render.fps, scene.render.fps_base) == (24, 1.0)
    assert bpy.ops.emoca.build_rig() == {'FINISHED'}
    afr = next(v[0] for v in blender_anim.read_fcurves(props.actor_mesh.data.shape_keys).values())
    assert np.abs(afr - (1 + t * 24)).max() < 1e-4
    props.timing = 'CLIP'
    assert bpy.ops.emoca.retarget() == {'FINISHED'}
    fr, _ = blender_anim.read_fcurves(props.target_mesh.data.shape_keys)[JAW]
    assert np.array_equal(fr, 1 + np.arange(cap.n_frames))
    assert scene.render.fps / scene.render.fps_base == pytest.approx(30000 / 1001, rel=1e-7)


def test_cli_scene_fps(empty_scene, tmp_path):
    """``retarget --scene-fps 24`` keeps a 24 fps scene (keys at 1 + t * 24); the default
    retimes it to the clip; a rate that is not one is exit 2."""
    cap = synthetic_capture(n=20, fps=30000 / 1001)
    path = tmp_path / "take.capture.npz"
    cf.save_capture(cap, path)
    t = cap["timestamps"] - cap["timestamps"][0]
    for arg, want_rate, want_frames in (("24", 24.0, 1 + t * 24),
                                        ("clip", 30000 / 1001, 1 + np.arange(20)),
                                        ("30000/1001", 30000 / 1001, 1 + np.arange(20))):
        out = tmp_path / f"c_{arg.replace('/', '_')}.blend"
        r = run_cli("retarget", path, "-o", out, "--scene-fps", arg, "--dense")
        assert r.returncode == 0, r.stderr[-2000:]
        bpy.ops.wm.open_mainfile(filepath=str(out))
        scene = bpy.context.scene
        assert scene.render.fps / scene.render.fps_base == pytest.approx(want_rate, rel=1e-6)
        key = bpy.data.objects["Character"].data.shape_keys
        fr, _ = blender_anim.read_fcurves(key)[JAW]
        assert np.abs(fr - want_frames).max() < 1e-4, arg
    r = run_cli("retarget", path, "-o", tmp_path / "x.blend", "--scene-fps", "fast")
    assert r.returncode == 2 and "not a frame rate" in r.stderr


def test_emotion_timeline_maps_captured_frames_to_the_scenes(empty_scene):
    """The Emotion panel's timeline and jumps follow the keys: a 30 fps clip kept in a 24
    fps scene has captured frame i at scene frame Start + 0.8 i (and back); in a scene at
    the clip's rate one frame each."""
    from operators import ops_emotion

    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 24, 1.0
    assert ops_emotion.frame_ratio(scene, 30.0) == pytest.approx(0.8)
    assert ops_emotion.scene_frame(scene, 1, 30.0, 10) == 9
    scene.frame_set(9)
    assert ops_emotion.capture_index(scene, 1, 30.0) == 10
    scene.render.fps, scene.render.fps_base = 30, 1.001
    assert ops_emotion.frame_ratio(scene, 29.97) == pytest.approx(1.0, abs=1e-6)
    assert ops_emotion.scene_frame(scene, 1, 29.97, 471) == 472
