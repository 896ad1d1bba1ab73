"""The whole job, as `make demo` runs it: video -> capture -> rig -> retarget onto the
sample character -> FBX + .blend; the FBX is checked by importing it into an empty scene."""
import json

import numpy as np
import pytest

from conftest import run_cli, shared_clips
from emoca_blender import capture_file as cf


def _run(video, out_dir, name):
    r = run_cli("--progress", "json", "run", video, "-o", out_dir, "--name", name, "--no-cache",
                timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    done = json.loads(r.stdout.strip().splitlines()[-1])
    assert done["stage"] == "done"
    return done


def _fbx_animation(path):
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.fbx(filepath=str(path), anim_offset=0)
    shape, bones = {}, {}
    for obj in bpy.data.objects:
        key = getattr(obj.data, "shape_keys", None) if obj.type == "MESH" else None
        ids = [(obj, bones)] + ([(key, shape)] if key is not None else [])
        for idb, out in ids:
            ad = idb.animation_data
            if not ad or not ad.action:
                continue
            for layer in ad.action.layers:
                for strip in layer.strips:
                    for bag in strip.channelbags:
                        for fc in bag.fcurves:
                            co = np.empty(2 * len(fc.keyframe_points))
                            fc.keyframe_points.foreach_get("co", co)
                            out[(fc.data_path, fc.array_index)] = co.reshape(-1, 2)
    return shape, bones


def test_demo_job_fbx_reimports_with_animation(tmp_path, long_demo_clip):
    done = _run(long_demo_clip, tmp_path, "demo")
    cap = cf.load_capture(done["capture"])
    n = cap.n_frames
    assert (tmp_path / "demo.fbx").is_file() and (tmp_path / "demo.blend").is_file()
    assert done["mapped"] >= 51          # every channel the sample character has (52 ARKit)
    shape, bones = _fbx_animation(tmp_path / "demo.fbx")

    def curve(name):
        k = (f'key_blocks["{name}"].value', 0)
        assert k in shape, f"no shape-key curve {name} in the FBX"
        return shape[k]

    # the job bakes reduced keys (0.01 weight by default): fewer keys than frames, and the
    # curve the keys describe (linear between them) is the capture's within 0.01 at every
    # captured frame (+ 1e-3: FBX stores floats). Blender's stock importer puts a 29.97 fps
    # clip's keys at 1.001 x the frame (its integer rate); the first key is frame 1
    for name in ("jawOpen", "eyeBlinkLeft", "eyeBlinkRight", "mouthSmileLeft"):
        c = curve(name)
        assert 2 <= len(c) < n, (name, len(c), n)
        played = np.interp(np.arange(1, n + 1), c[:, 0] / c[0, 0], c[:, 1])
        np.testing.assert_allclose(played, cap.column("arkit", name), atol=0.01 + 1e-3,
                                   err_msg=name)
    assert np.ptp(curve("jawOpen")[:, 1]) > 0.05
    assert np.ptp(curve("eyeBlinkLeft")[:, 1]) > 0.2                # she blinks
    jaw = [v for (path, i), v in bones.items() if 'pose.bones["jaw"]' in path and "rotation" in path]
    assert jaw, f"no jaw bone rotation curve in the FBX: {sorted(bones)[:8]}"
    assert max(np.ptp(v[:, 1]) for v in jaw) > 1e-3                   # and the jaw moves


@pytest.mark.parametrize("clip", shared_clips() or [None], ids=lambda p: p.name if p else "none")
def test_every_shared_clip_end_to_end(tmp_path, clip):
    if clip is None:
        pytest.skip("../shared/media is absent (research clips are not in the repo)")
    done = _run(clip, tmp_path, clip.stem)
    cap = cf.load_capture(done["capture"])
    found = (cap["valid"] & ~cap["interpolated"]).mean()
    assert found >= 0.95, f"face found in {found:.1%} of frames"
    assert (tmp_path / f"{clip.stem}.fbx").stat().st_size > 10_000


def test_demo_blend_has_emotion_curves_on_the_actor(tmp_path, demo_clip):
    """`run` keys the capture's emotion curves on the actor rig (custom properties)."""
    import bpy

    done = _run(demo_clip, tmp_path, "emo")
    cap = cf.load_capture(done["capture"])
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "emo.blend"))
    arm = bpy.data.objects["EMOCA_actor_rig"]
    paths = set()
    for layer in arm.animation_data.action.layers:
        for strip in layer.strips:
            for bag in strip.channelbags:
                for fc in bag.fcurves:
                    paths.add(fc.data_path)
                    if fc.data_path == '["emotion_happy"]':
                        co = np.empty(2 * len(fc.keyframe_points))
                        fc.keyframe_points.foreach_get("co", co)
                        happy = co[1::2]
    assert '["emotion_happy"]' in paths and any("pose.bones" in p for p in paths)
    j = list(cap.names["emotion_probs"]).index("happy")
    np.testing.assert_allclose(happy, cap["emotion_probs"][:, j], atol=1e-5)
    # the smile in the middle of the clip reads as happier than its neutral start
    assert happy[30:45].mean() > happy[:8].mean()
