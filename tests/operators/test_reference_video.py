"""The actor's video and its sound in the scene (operators/scene/reference_video.py): after `run` on
the demo clip, the reference plane shows, at the first, middle and last frame, the video
frame OpenCV decodes there, read back through the image datablock and through a Workbench
render of the plane; the sound strip is the clip's length and plays the clip's audio on the
right frame; a capture that starts later in the video, a scene at another frame rate, a
video without audio and a moved .blend; and the Rig panel's toggles and Frame All in the
installed extension.

Comparing pictures: Blender's and OpenCV's movie decoders differ by a uniform 1-2 levels per
channel (a YUV->RGB rounding difference), so the mean absolute difference is taken after
removing the per-channel median difference. What is left between a frame and itself is
about 0.0015 (pixels) and 0.002 (render); between neighbouring frames of the demo clip at
the frames compared it is 0.0039 or more, so TOL = 0.003 fails a one-frame offset, which
each comparison also checks (the neighbours' differences exceed TOL).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import MEDIA, ROOT, run_cli

bpy = pytest.importorskip("bpy")
cv2 = pytest.importorskip("cv2")

from operators.scene import cli_scene, reference_video as rv  # noqa: E402  (after bpy)

TOL = 0.003          # mean absolute difference (0..1), per-channel offset removed
NO_AUDIO = ROOT / "tests" / "data" / "vfr_10_then_30fps.mp4"   # a video track only


# --------------------------------------------------------------------------------------
# helpers


@functools.lru_cache(maxsize=4)
def video_frames(clip: str) -> tuple:
    """Every frame of the clip as decoded by OpenCV, RGB float 0..1."""
    vc = cv2.VideoCapture(clip)
    out = []
    while True:
        ok, f = vc.read()
        if not ok:
            break
        out.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0)
    vc.release()
    return tuple(out)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    d = (a - b).reshape(-1, 3)
    d = d - np.median(d, axis=0)
    return float(np.abs(d).mean())


def plane_node(scene):
    plane = rv.find(scene)
    assert plane is not None, "no reference plane in the scene"
    return plane, plane.data.materials[0].node_tree.nodes[rv.NODE]


def shown_frame(scene, frame: int) -> int:
    """The video frame (0-based) the plane's image user shows at ``frame``, as Blender
    evaluates it (the driver included)."""
    scene.frame_set(frame)
    plane, node = plane_node(scene)
    mat = plane.data.materials[0].evaluated_get(bpy.context.evaluated_depsgraph_get())
    return mat.node_tree.nodes[rv.NODE].image_user.frame_current - 1


def image_pixels(img, video_frame: int) -> np.ndarray:
    """The movie datablock's pixels at ``video_frame`` (0-based), RGB float, top row first."""
    w, h = img.size
    img.scale(w, h, frame=video_frame + 1)     # loads that frame into the image's buffer
    a = np.empty(w * h * 4, np.float32)
    img.pixels.foreach_get(a)
    return a.reshape(h, w, 4)[::-1, :, :3]


def render_plane(scene, path: Path) -> np.ndarray:
    """A Workbench render of the reference plane alone, filling an orthographic camera at
    the video's resolution (flat light, texture colour, the Standard view transform)."""
    plane, node = plane_node(scene)
    w, h = node.image.size
    cam = bpy.data.objects.get("test_plane_camera")
    if cam is None:
        cam = bpy.data.objects.new("test_plane_camera", bpy.data.cameras.new("test_plane_camera"))
        scene.collection.objects.link(cam)
    for o in scene.objects:
        o.hide_render = o not in (plane, cam)
    bpy.context.view_layer.update()
    xs = [(plane.matrix_world @ v.co) for v in plane.data.vertices]
    lo = [min(p[i] for p in xs) for i in range(3)]
    hi = [max(p[i] for p in xs) for i in range(3)]
    cam.data.type = 'ORTHO'
    cam.data.ortho_scale = hi[0] - lo[0]
    cam.location = ((lo[0] + hi[0]) / 2, lo[1] - 1.0, (lo[2] + hi[2]) / 2)
    cam.rotation_euler = (math.pi / 2, 0.0, 0.0)
    scene.camera = cam
    r = scene.render
    r.engine = 'BLENDER_WORKBENCH'
    r.resolution_x, r.resolution_y, r.resolution_percentage = w, h, 100
    r.film_transparent = False
    r.image_settings.file_format = 'PNG'
    r.filepath = str(path)
    sh = scene.display.shading
    sh.light = 'FLAT'
    sh.color_type = 'TEXTURE'
    scene.display.render_aa = 'OFF'
    scene.view_settings.view_transform = 'Standard'
    bpy.ops.render.render(write_still=True)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def check_frame(picture: np.ndarray, clip: str, k: int, what: str) -> dict:
    """``picture`` is video frame ``k``: within TOL of it, and its neighbours are not."""
    frames = video_frames(clip)
    d = {j: mad(picture, frames[j]) for j in (k - 1, k, k + 1) if 0 <= j < len(frames)}
    assert d[k] < TOL, f"{what}: frame {k} differs by {d[k]:.4f} (TOL {TOL}): {d}"
    for j, v in d.items():
        if j != k:
            assert v > TOL, f"{what}: neighbouring frame {j} is within TOL too ({d})"
    return d


def mixdown(scene, path: Path, rate: int) -> np.ndarray:
    """The scene's sound over its frame range (mono, float)."""
    import aud

    r = bpy.ops.sound.mixdown(filepath=str(path), container='WAV', codec='PCM', format='F32',
                              mixrate=rate)
    assert r == {"FINISHED"}, r
    return aud.Sound(str(path)).data()[:, 0].astype(np.float64)


def audio_lag(clip: str, mix: np.ndarray) -> tuple[float, float]:
    """(samples into the clip's audio where ``mix`` starts, normalised correlation there)."""
    import aud

    src = aud.Sound(clip).data()[:, 0].astype(np.float64)
    n = 1 << int(math.ceil(math.log2(len(src) + len(mix))))
    a, b = src - src.mean(), mix - mix.mean()
    cc = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)
    k = int(np.argmax(cc[: len(src)]))
    seg = src[k:k + len(mix)]
    m = mix[: len(seg)]
    corr = float(np.dot(seg - seg.mean(), m - m.mean()) /
                 (np.linalg.norm(seg - seg.mean()) * np.linalg.norm(m - m.mean()) + 1e-30))
    return k, corr


# --------------------------------------------------------------------------------------
# `run` on the demo clip (one capture for the module; the capture cache makes it quick)


@pytest.fixture(scope="module")
def run_scene(tmp_path_factory, demo_clip):
    out = tmp_path_factory.mktemp("refrun")
    r = run_cli("--progress", "json", "run", demo_clip, "-o", out, "--name", "demo",
                timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(x) for x in r.stdout.strip().splitlines() if x.startswith("{")]
    done = lines[-1]
    assert done["stage"] == "done"
    done["lines"] = lines
    return out, done


def test_run_scene_plays_the_video_frame_locked_with_its_sound(run_scene, demo_clip, tmp_path):
    out, done = run_scene
    clip = str(demo_clip.resolve())
    n = done["frames"]
    assert done["reference"] == rv.PLANE_NAME and done["sound"] == rv.SOUND_NAME, done
    assert any(x.get("stage") == "message" and "sound strip" in x["message"]
               for x in done["lines"])
    bpy.ops.wm.open_mainfile(filepath=str(out / "demo.blend"))
    scene = bpy.context.scene
    plane, node = plane_node(scene)
    img = node.image
    assert img.source == 'MOVIE' and img.filepath == clip       # absolute, as documented
    assert len(video_frames(clip)) == n == 72
    clip_fps, scene_fps = 30.0, rv.scene_fps(scene)
    length = round(n * scene_fps / clip_fps)                    # n when the scene is at 30
    assert (scene.frame_start, scene.frame_end) == (1, length)
    iu = node.image_user
    assert (iu.frame_start, iu.frame_offset, iu.use_auto_refresh) == (1, 0, True)

    def expected(f):   # the video frame nearest in time to scene frame f
        return min(round((f - 1) * clip_fps / scene_fps), n - 1)

    # at the first, middle and last frame the plane shows the clip's frame there (f - 1
    # when the scene runs at the clip's rate): read back through the image datablock, and
    # seen in a Workbench render of the plane
    report = {}
    frames = (1, 1 + length // 2, length)
    for f in frames:
        k = shown_frame(scene, f)
        assert k == expected(f), (f, k)
        report[f] = {"pixels": check_frame(image_pixels(img, k), clip, k, f"pixels at {f}")}
    for f in frames:
        scene.frame_set(f)
        pic = render_plane(scene, tmp_path / f"plane_{f}.png")
        report[f]["render"] = check_frame(pic, clip, expected(f), f"render at {f}")
    print(f"reference plane vs OpenCV at {scene_fps:g} fps (mean abs difference by video "
          f"frame):", report)

    # the sound strip: the clip's length from frame 1, scrubbing on, and the scene's sound
    # is the clip's audio from its start (within half a frame: the MP4 edit list's encoder
    # priming, 481 samples = 11 ms on this clip, is skipped by Blender's reader and not by
    # the raw decode compared with), the wrong frame would be 33 ms off
    strip = rv.sound_strip(scene)
    assert strip is not None and strip.type == 'SOUND'
    assert (strip.frame_final_start, strip.frame_final_duration) == (1, length)
    assert strip.sound.filepath == clip and strip.sound.samplerate > 0
    assert scene.use_audio_scrub and scene.sync_mode == 'AUDIO_SYNC'
    rate = strip.sound.samplerate
    mix = mixdown(scene, tmp_path / "mix.wav", rate)
    lag, corr = audio_lag(clip, mix[: int(length / scene_fps * rate)])
    print(f"scene audio = clip audio from sample {lag} ({lag / rate * 1000:.1f} ms), "
          f"correlation {corr:.4f}")
    assert corr > 0.95
    assert abs(lag / rate) < 0.5 / clip_fps


def test_moved_blend_still_finds_the_video_and_its_sound(run_scene, demo_clip, tmp_path):
    """Paths are stored absolute: the .blend copied elsewhere still plays the clip (a
    relative path, '//../..', would point nowhere from the new folder)."""
    out, _done = run_scene
    moved = tmp_path / "elsewhere" / "deeper" / "copy.blend"
    moved.parent.mkdir(parents=True)
    shutil.copy(out / "demo.blend", moved)
    bpy.ops.wm.open_mainfile(filepath=str(moved))
    scene = bpy.context.scene
    plane, node = plane_node(scene)
    strip = rv.sound_strip(scene)
    for path in (node.image.filepath, strip.sound.filepath, rv.settings(plane)["video"]):
        assert not path.startswith("//") and os.path.isfile(bpy.path.abspath(path)), path
    clip = str(demo_clip.resolve())
    k = shown_frame(scene, 10)
    assert k == round(9 * 30.0 / rv.scene_fps(scene))
    check_frame(image_pixels(node.image, k), clip, k, "moved .blend, frame 10")
    assert strip.sound.samplerate > 0


def _speech_clip():
    clips = sorted((MEDIA / "mead").glob("*.mp4")) if (MEDIA / "mead").is_dir() else []
    return clips[0] if clips else None


@pytest.mark.parametrize("which", ["demo", "mead"])
def test_capture_start_offset_and_other_frame_rates_stay_in_sync(which, demo_clip, tmp_path):
    """A capture that starts at video frame 10, keyed from scene frame 5, in a 24 fps scene
    (the clip is 30 or 25 fps): each scene frame shows the video frame nearest in time, the
    sound starts 10 video frames into the clip; changing the scene's rate afterwards keeps
    the sync (the driver reads it). 'mead' is a speech clip from ../shared/media."""
    clip = demo_clip if which == "demo" else _speech_clip()
    if clip is None:
        pytest.skip(f"../shared/media/mead is absent ({MEDIA}): research clips are not in the "
                    "repo")
    clip = str(Path(clip).resolve())
    vc = cv2.VideoCapture(clip)
    fps = vc.get(cv2.CAP_PROP_FPS)
    vc.release()
    frames = video_frames(clip)
    start, n, f0 = 10, 40, 5
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 24, 1.0
    bpy.ops.mesh.primitive_cube_add(size=0.3)
    actor = bpy.context.active_object
    ref = rv.Reference(video=clip, fps=fps, video_start=start, n_frames=n, frame_start=f0,
                       audio_start=start / fps)
    info = rv.add(scene, ref, [actor])
    assert info["sound"] == rv.SOUND_NAME, info
    length = round(n * 24 / fps)
    scene.frame_start, scene.frame_end = f0, f0 + length - 1

    def expected(f, scene_fps):
        return start + min(max(round((f - f0) * fps / scene_fps), 0), n - 1)

    img = plane_node(scene)[1].image
    for f in (f0, f0 + 7, f0 + 16, f0 + length - 1):
        k = shown_frame(scene, f)
        assert k == expected(f, 24) == rv.movie_frame(ref, f, 24), (f, k)
        d = {j: mad(image_pixels(img, k), frames[j]) for j in (k - 1, k, k + 1)}
        assert d[k] < TOL and min(d, key=d.get) == k, (f, d)
    assert shown_frame(scene, 1) == start                 # before: the first frame held
    assert shown_frame(scene, f0 + 200) == start + n - 1  # after: the last

    strip = rv.sound_strip(scene)
    assert (strip.frame_final_start, strip.frame_final_duration) == (f0, length)
    rate = strip.sound.samplerate
    mix = mixdown(scene, tmp_path / "mix.wav", rate)
    lag, corr = audio_lag(clip, mix[: int(length / 24 * rate)])
    print(f"{Path(clip).name}: sound from {lag / rate:.4f} s (expected {start / fps:.4f}), "
          f"correlation {corr:.4f}")
    assert corr > 0.95
    assert abs(lag / rate - start / fps) < 0.5 / fps

    scene.render.fps = 30                                 # retimed afterwards: still in sync
    for f in (f0, f0 + 11, f0 + 20):
        assert shown_frame(scene, f) == expected(f, 30), f


def test_video_without_audio_gets_no_sound_strip(tmp_path):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    clip = str(NO_AUDIO)
    vc = cv2.VideoCapture(clip)
    n = int(vc.get(cv2.CAP_PROP_FRAME_COUNT))
    vc.release()
    ref = rv.Reference(video=clip, fps=30.0, video_start=0, n_frames=n, frame_start=1,
                       audio_start=0.0)
    info = rv.add(scene, ref)
    assert info["sound"] is None
    assert any("has no audio track" in m for m in info["messages"]), info
    assert rv.find(scene) is not None and rv.sound_strip(scene) is None
    se = scene.sequence_editor
    assert se is None or len(se.strips_all) == 0
    assert len(bpy.data.sounds) == 0                      # the probe left nothing behind
    # toggles on a reference without sound are harmless
    assert rv.apply_settings(scene, True, 0.5, "BEHIND", False)
    # adding it again replaces it (one plane, one movie)
    rv.add(scene, ref)
    assert sum(1 for o in scene.objects if rv.KEY in o.keys()) == 1
    assert len(bpy.data.images) == 1


def test_missing_video_is_a_message_not_a_failure(run_scene):
    """cli_scene.add_reference (what `run` and `rig` call) when the captured video is gone:
    no plane, a message, the camera still frames the rig."""
    from emoca_blender import capture_file as cf

    out, done = run_scene
    cap = cf.load_capture(done["capture"])
    cap.meta["source"] = dict(cap.meta["source"], path=str(out / "gone.mp4"))
    cli_scene.new_scene()
    mesh, arm = cli_scene.build_actor(cap)
    info = cli_scene.add_reference(cap, [mesh, arm])
    assert info["reference"] is None and info["sound"] is None
    assert any("not found" in m for m in info["messages"]), info
    assert rv.find(bpy.context.scene) is None and bpy.context.scene.camera is not None


# --------------------------------------------------------------------------------------
# The Rig panel in the installed extension: Build Rig adds the reference, the toggles,
# Frame All


def _tx():
    try:
        return importlib.import_module("test_extension")
    except ImportError:  # --import-mode=importlib
        spec = importlib.util.spec_from_file_location(
            "test_extension", Path(__file__).parents[1].joinpath("test_extension.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


def test_rig_panel_toggles_and_frame_all(run_scene, tmp_path):
    tx = _tx()
    out, done = run_scene
    built_zip = tx.bx.build(ROOT, tmp_path / "dist")
    res = tx.run_blender_script(tmp_path, r'''
        install(enable=True)
        from bpy_extras.object_utils import world_to_camera_view
        from mathutils import Vector
        rv = importlib.import_module(MOD + ".operators.scene.reference_video")
        scene = bpy.context.scene
        props = scene.emoca
        for o in list(bpy.data.objects):
            bpy.data.objects.remove(o)
        props.capture_path = sys.argv[2]
        out = {"rig": sorted(bpy.ops.emoca.build_rig())}
        plane = rv.find(scene)
        strip = rv.sound_strip(scene)
        out["plane"] = plane.name if plane else None
        out["scene_fps"] = scene.render.fps / scene.render.fps_base
        out["range"] = [scene.frame_start, scene.frame_end]
        out["strip"] = [strip.frame_final_start, strip.frame_final_duration] if strip else None
        d = draw_all()
        out["panel"] = d["Rig"]

        def bounds(objs):
            bpy.context.view_layer.update()
            pts = [o.matrix_world @ Vector(c) for o in objs for c in o.bound_box]
            return ([min(p[i] for p in pts) for i in range(3)],
                    [max(p[i] for p in pts) for i in range(3)])

        actor = props.actor_mesh
        a_lo, a_hi = bounds([actor])
        p_lo, p_hi = bounds([plane])
        out["side"] = dict(plane_right=p_hi[0], actor_left=a_lo[0])
        props.reference_placement = "BEHIND"
        p_lo, p_hi = bounds([plane])
        out["behind"] = dict(plane_y=p_lo[1], actor_back=a_hi[1],
                             plane_x=(p_lo[0] + p_hi[0]) / 2, actor_x=(a_lo[0] + a_hi[0]) / 2)
        props.reference_placement = "SIDE"
        props.reference_opacity = 0.4
        mat = plane.data.materials[0]
        out["opacity"] = [mat.node_tree.nodes[rv.MIX].inputs[0].default_value,
                          mat.diffuse_color[3]]
        props.show_reference = False
        out["hidden"] = [plane.hide_viewport, plane.hide_render]
        out["frame_all_poll_hidden"] = bpy.ops.emoca.frame_all.poll()
        props.show_reference = True
        props.reference_sound = False
        out["muted"] = strip.mute
        props.reference_sound = True
        out["unmuted"] = not strip.mute

        bpy.ops.emoca.add_sample_character()
        out["frame_all"] = sorted(bpy.ops.emoca.frame_all())
        cam = scene.camera
        objs = [props.actor_mesh, props.target_mesh, plane]
        bpy.context.view_layer.update()
        uv = [world_to_camera_view(scene, cam, o.matrix_world @ Vector(c))
              for o in objs for c in o.bound_box]
        out["in_view"] = [min(p.x for p in uv), max(p.x for p in uv),
                          min(p.y for p in uv), max(p.y for p in uv)]
        out["cam"] = cam.name
        out["rig_again"] = sorted(bpy.ops.emoca.build_rig())
        out["planes"] = sum(1 for o in scene.objects if rv.KEY in o.keys())
        out["strips"] = len(scene.sequence_editor.strips_all)
        out["reload"] = sorted(bpy.ops.emoca.add_reference_video())
        out["planes_after_reload"] = sum(1 for o in scene.objects if rv.KEY in o.keys())
        out["panel_after"] = draw_all()["Rig"]
        result(out)
    ''', str(built_zip), done["capture"], libs=tx.FAKE_LAYOUT, timeout=600)

    assert res["rig"] == ["FINISHED"] and res["plane"] == "EMOCA_reference"
    length = round(done["frames"] * res["scene_fps"] / 30.0)   # the scene's rate or the clip's
    assert res["strip"] == [1, length] and res["range"] == [1, length], res
    drawn = res["panel"]
    props = [c[1] for c in drawn if c[0] == "prop"]
    for p in ("show_reference", "reference_opacity", "reference_placement", "reference_sound"):
        assert p in props, props
    assert ["label", "Reference: single_face.mp4"] in drawn
    assert ["operator", "emoca.frame_all"] in drawn
    s = res["side"]
    assert s["plane_right"] < s["actor_left"], s           # beside the rig, left of it
    b = res["behind"]
    assert b["plane_y"] > b["actor_back"] and abs(b["plane_x"] - b["actor_x"]) < 0.1, b
    assert res["opacity"] == pytest.approx([0.4, 0.4])
    assert res["hidden"] == [True, True] and res["frame_all_poll_hidden"] is True
    assert res["muted"] is True and res["unmuted"] is True
    assert res["frame_all"] == ["FINISHED"] and res["cam"] == "EMOCA_camera"
    x0, x1, y0, y1 = res["in_view"]
    assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0, res["in_view"]
    assert x1 - x0 > 0.8 or y1 - y0 > 0.8, res["in_view"]   # framed, not lost in the distance
    assert res["rig_again"] == ["FINISHED"] and res["planes"] == 1 and res["strips"] == 1
    assert res["reload"] == ["FINISHED"] and res["planes_after_reload"] == 1
