"""The command line under faults a careless user makes (issue 18): wrong and damaged input
files, out-of-range options, output names for another kind of file, full disks, signals
inside Blender work, variable-rate and truncated videos, a face index with no face. Every
one: exit 2 with one `error:` line saying what is wrong (130 on cancel), nothing new
written, an existing output intact."""
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import PY, ROOT, run_cli
from emoca_blender import capture_file as cf
from emoca_blender import input_files
from emoca_blender.capture import video
from test_capture_write import _capture, _tmpfs
from test_cli import _one_error_line

DATA = ROOT / "tests" / "data"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One of each kind of file a user hands over by mistake, damaged ones included."""
    d = tmp_path_factory.mktemp("inputs")
    good = cf.save_capture(_capture(1), d / "good.capture.npz")
    data = good.read_bytes()
    out = {"good": good}
    (d / "trunc.capture.npz").write_bytes(data[: len(data) // 2])
    out["truncated capture"] = d / "trunc.capture.npz"
    (d / "random.capture.npz").write_bytes(np.random.default_rng(0).bytes(5000))
    out["random capture"] = d / "random.capture.npz"
    (d / "nosidecar.capture.npz").write_bytes(data)
    out["capture without sidecar"] = d / "nosidecar.capture.npz"
    other = cf.save_capture(_capture(2), d / "other.capture.npz")
    (d / "wrongside.capture.npz").write_bytes(data)
    cf.sidecar_path(d / "wrongside.capture.npz").write_bytes(cf.sidecar_path(other).read_bytes())
    out["capture with wrong sidecar"] = d / "wrongside.capture.npz"
    (d / "future.capture.npz").write_bytes(data)
    cf.sidecar_path(d / "future.capture.npz").write_text(
        cf.sidecar_path(good).read_text().replace('"schema_version": 1', '"schema_version": 9'))
    out["future schema"] = d / "future.capture.npz"
    (d / "face.csv").write_text("Timecode,BlendShapeCount,EyeBlinkLeft\n00:00:00:00.000,61,0.1\n")
    out["livelink csv"] = d / "face.csv"
    blend = _blend_bytes()
    (d / "trunc.blend").write_bytes(blend[:-40])
    out["truncated blend"] = d / "trunc.blend"
    (d / "empty.blend").write_bytes(b"")
    out["empty blend"] = d / "empty.blend"
    (d / "whole.blend").write_bytes(blend)
    out["blend"] = d / "whole.blend"
    (d / "random.fbx").write_bytes(np.random.default_rng(1).bytes(3000))
    out["random fbx"] = d / "random.fbx"
    (d / "csv.fbx").write_text("Timecode,BlendShapeCount,EyeBlinkLeft\n")
    out["csv named fbx"] = d / "csv.fbx"
    (d / "blend.fbx").write_bytes(blend)
    out["blend named fbx"] = d / "blend.fbx"
    return out


def _blend_bytes() -> bytes:
    """A small .blend in Blender 4's layout: 12-byte header, blocks, ENDB (the walker reads
    Blender 5's large header too: see test_identify_real_blender_files)."""
    def block(code, payload):
        return struct.pack("<4siQii", code, len(payload), 0x1000, 0, 1) + payload
    return b"BLENDER-v405" + block(b"GLOB", b"\0" * 104) + block(b"DNA1", b"\0" * 200) + \
        block(b"ENDB", b"")


CASES = [  # command, file, what the line must say
    ("rig", "truncated capture", "is a zip archive, damaged"),
    ("rig", "random capture", "binary data of no kind"),
    ("rig", "capture without sidecar", "has no sidecar"),
    ("rig", "capture with wrong sidecar", "does not match its sidecar"),
    ("rig", "future schema", "schema version 9"),
    ("rig", "livelink csv", "is a Live Link Face CSV; rig expects an EMOCA capture"),
    ("rig", "blend", "is a Blender file (.blend); rig expects an EMOCA capture"),
    ("retarget", "truncated capture", "damaged"),
    ("retarget", "future schema", "newer emoca_blender"),
    ("info", "random capture", "info expects an EMOCA capture"),
    ("export", "truncated capture", "export expects a Blender file"),
    ("export", "random capture", "export expects a Blender file"),
    ("export", "good", "is an EMOCA capture (.capture.npz); export expects a Blender file"),
    ("export", "livelink csv", "is a Live Link Face CSV; export expects a Blender file"),
    ("export", "truncated blend", "is a Blender file (.blend) but damaged: it ends at byte"),
    ("export", "empty blend", "is an empty file (0 bytes); export expects a Blender file"),
    ("export", "random fbx", "export expects a Blender file"),
    ("retarget --character", "random fbx", "binary data of no kind this add-on reads"),
    ("retarget --character", "truncated blend", "but damaged"),
    ("retarget --character", "csv named fbx", "is a Live Link Face CSV; retarget --character"),
    ("retarget --character", "blend named fbx", "is a Blender file (.blend) but is not named"),
    ("run --character", "random fbx", "run --character expects"),
]


@pytest.mark.parametrize("command, which, says", CASES, ids=[f"{c}-{w}" for c, w, _ in CASES])
def test_input_files_checked_by_content(files, tmp_path, demo_clip, command, which, says):
    f = files[which]
    if command == "export":
        args = ["export", f, "-o", tmp_path / "x.fbx"]
    elif command in ("rig", "retarget"):
        args = [command, f, "-o", tmp_path / "x.blend"]
    elif command == "info":
        args = ["info", f]
    elif command == "run --character":
        args = ["run", demo_clip, "-o", tmp_path / "out", "--character", f, "--no-cache"]
    else:
        args = ["retarget", files["good"], "-o", tmp_path / "x.blend", "--character", f]
    r = run_cli(*args)
    assert r.returncode == 2, r.stderr[-2000:]
    line = _one_error_line(r)
    assert f.name in line and says in line, line
    assert not [n for n in os.listdir(tmp_path) if not n.startswith("out")], os.listdir(tmp_path)


def test_identify_real_blender_files(tmp_path):
    """The walker on files Blender itself wrote (this bpy's layout), whole and cut."""
    script = textwrap.dedent(f"""
        import bpy
        bpy.ops.wm.read_factory_settings(use_empty=True)
        bpy.ops.mesh.primitive_monkey_add()
        bpy.ops.wm.save_as_mainfile(filepath={str(tmp_path / 'm.blend')!r}, compress=False)
        bpy.ops.export_scene.fbx(filepath={str(tmp_path / 'm.fbx')!r})
    """)
    r = subprocess.run([PY, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for name, kind in (("m.blend", "blend"), ("m.fbx", "fbx")):
        data = (tmp_path / name).read_bytes()
        assert input_files.identify(tmp_path / name) == (kind, "")
        for cut in (len(data) // 3, len(data) - 200):
            (tmp_path / f"cut_{name}").write_bytes(data[:cut])
            k, damage = input_files.identify(tmp_path / f"cut_{name}")
            assert k == kind and "truncated" in damage, (name, cut, damage)


@pytest.mark.parametrize("option, value, says", [
    ("--filter", "-1", "--filter: -1 is out of range; allowed: [0, 1]"),
    ("--filter", "7", "--filter: 7 is out of range; allowed: [0, 1]"),
    ("--filter", "nan", "--filter: nan is out of range"),
    ("--max-gap", "-1", "--max-gap: -1 is out of range; allowed: >= 0"),
    ("--neutral-frame", "-5", "--neutral-frame: -5 is out of range; allowed: >= -1"),
    ("--face-index", "1.5", "--face-index: '1.5' is not a whole number"),
    ("--start", "-3", "--start: -3 is out of range"),
])
def test_options_out_of_range_refused_in_the_parser(tmp_path, demo_clip, option, value, says):
    r = run_cli("capture", demo_clip, "-o", tmp_path / "x.capture.npz", option, value)
    assert r.returncode == 2
    assert says in _one_error_line(r)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command, name", [
    ("rig", "x.fbx"), ("rig", "noext"), ("retarget", "x.fbx"), ("export", "x.blend"),
    ("capture", "x.npz"), ("capture", "clip.mp4"),
])
def test_output_name_for_another_kind_is_refused(files, tmp_path, demo_clip, command, name):
    """Never rewritten behind the user's back: the user's own x.blend beside stays."""
    mine = tmp_path / "x.blend"
    if name != "x.blend":
        mine.write_bytes(b"the user's own work")
    src = {"rig": files["good"], "retarget": files["good"], "export": files["blend"],
           "capture": demo_clip}[command]
    before = sorted(os.listdir(tmp_path))
    r = run_cli(command, src, "-o", tmp_path / name)
    assert r.returncode == 2
    line = _one_error_line(r)
    assert name in line and "give a name ending in" in line, line
    assert sorted(os.listdir(tmp_path)) == before
    if name != "x.blend":
        assert mine.read_bytes() == b"the user's own work"


@pytest.fixture
def small_disk(tmp_path):
    folder = tmp_path / "disk"
    _tmpfs(folder, "1m")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_full_disk_capture_and_rig(small_disk, demo_clip, files):
    """A real full file system: capture and rig exit 2 naming the folder (no traceback);
    the capture already there still loads."""
    path = small_disk / "a.capture.npz"
    cf.save_capture(_capture(1), path)
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * max(0, free - 100_000))   # 100 kB left
    r = run_cli("capture", demo_clip, "-o", path, "--no-cache")
    assert r.returncode == 2, r.stderr[-2000:]
    line = _one_error_line(r)
    assert str(small_disk) in line and "no space left" in line and "MB free" in line, line
    assert cf.load_capture(path).meta["tag"] == 1
    r = run_cli("rig", files["good"], "-o", small_disk / "rig.blend")
    assert r.returncode == 2, r.stderr[-2000:]
    line = _one_error_line(r)
    assert "rig.blend" in line and str(small_disk) in line and "no space left" in line, line
    assert sorted(os.listdir(small_disk)) == ["a.capture.json", "a.capture.npz", "filler"]


_SIGINT_IN_BPY = """
import os, signal, sys, threading, time
sys.argv = ["emoca_blender"] + sys.argv[1:]
sys.path.insert(0, {root!r})
import bpy
from emoca_blender.cli import main as cli

class SlowOp(bpy.types.Operator):
    bl_idname = "wm.emoca_test_slow"
    bl_label = "slow"
    def execute(self, context):
        t0 = time.time()
        while time.time() - t0 < 30:
            sum(range(1000))
        return {{"FINISHED"}}

bpy.utils.register_class(SlowOp)
scene = cli._blender_side("scene.cli_scene")
real = scene.save_blend

def save_blend(path):
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    bpy.ops.wm.emoca_test_slow()          # a Python operator: the interrupt lands inside it
    return real(path)

scene.save_blend = save_blend
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigint_inside_blender_operator_is_cancel(files, tmp_path):
    """SIGINT while a Blender Python operator runs (Blender turns the interrupt into the
    operator's RuntimeError): exit 130, the cancel line, no output, no temporary file."""
    out = tmp_path / "x.blend"
    code = _SIGINT_IN_BPY.format(root=str(ROOT))
    r = subprocess.run([PY, "-c", code, "rig", str(files["good"]), "-o", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 130, r.stderr[-3000:]
    assert "cancelled; nothing was written" in _one_error_line(r)
    assert os.listdir(tmp_path) == []


def test_sigterm_during_capture_is_cancel(tmp_path, demo_clip):
    """SIGTERM in the middle of a capture: exit 130, the existing capture untouched."""
    out = tmp_path / "a.capture.npz"
    cf.save_capture(_capture(1), out)
    p = subprocess.Popen([PY, "-m", "emoca_blender", "capture", str(demo_clip), "-o", str(out),
                          "--no-cache", "--progress", "json"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if '"stage": "track"' in line:
            break
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert "error: cancelled; nothing was written" in err
    assert cf.load_capture(out).meta["tag"] == 1
    assert sorted(os.listdir(tmp_path)) == ["a.capture.json", "a.capture.npz"]


def test_face_index_message_counts_the_faces(tmp_path, demo_clip):
    r = run_cli("capture", demo_clip, "-o", tmp_path / "x.capture.npz", "--no-cache",
                "--face-index", "5")
    assert r.returncode == 2
    line = _one_error_line(r)
    assert "face index 5" in line and "at most 1 face in one frame, first at frame 0" in line
    assert "a face in 72 of the 72 frames" in line and "no face found" not in line, line


def test_variable_frame_rate_uses_presentation_times():
    """tests/data/vfr_10_then_30fps.mp4: 20 frames at 10 fps then 20 at 30 fps (written by
    PyAV with millisecond pts). The container's average rate (15 fps) puts frame 20 at
    1.33 s; its presentation time is 2.0 s."""
    clip = DATA / "vfr_10_then_30fps.mp4"
    info = video.probe(clip)
    times = []
    n = sum(1 for _ in video.iter_frames(clip, times=times))
    t, vfr = video.frame_times(times, n, 0, info.fps)
    assert n == 40
    assert abs(20 / info.fps - 2.0) > 0.5                 # the average rate is far off...
    assert t[20] == pytest.approx(2.0, abs=1e-3)           # ...the presentation time is not
    assert t[39] == pytest.approx(2.627, abs=1e-3)
    assert vfr is not None and vfr[0] == pytest.approx(10, rel=0.02)
    assert vfr[1] == pytest.approx(30.3, rel=0.02)
    # a constant-rate clip: no warning, the same times as i / fps
    t2, vfr2 = video.frame_times([i / 30 for i in range(72)], 72, 0, 30.0)
    assert vfr2 is None and np.allclose(t2, np.arange(72) / 30)


def test_variable_rate_capture_warns_and_stores_pts(tmp_path, demo_clip, monkeypatch):
    """Through the pipeline: the capture's timestamps are the decoder's times, and a
    variable rate is a warning and a metadata flag."""
    from emoca_blender.capture import pipeline

    real = video.iter_frames
    schedule = np.concatenate([np.arange(36) * 0.1, 3.6 + np.arange(36) / 30])

    def iter_vfr(path, start=0, end=None, prefetch=6, times=None):
        for k, (i, rgb) in enumerate(real(path, start, end, prefetch)):
            times.append(float(schedule[i]))
            yield i, rgb

    monkeypatch.setattr(pipeline.video, "iter_frames", iter_vfr)
    messages = []

    class P:
        mode = "none"
        def message(self, text): messages.append(text)
        def stage(self, *a): pass
        def update(self, *a): pass

    res = pipeline.run_capture(demo_clip, tmp_path / "v.capture.npz", pipeline.CaptureSettings(
        emotion=False), progress=P(), cache_dir=None)
    np.testing.assert_allclose(res.capture["timestamps"], schedule)
    assert res.capture.meta["variable_frame_rate"] is True
    assert any("variable frame rate (10 to 30 fps)" in m for m in messages), messages


def test_truncated_video_warns_how_many_frames(tmp_path, demo_clip):
    import cv2

    src = cv2.VideoCapture(str(demo_clip))
    vw = None
    while True:
        ok, f = src.read()
        if not ok:
            break
        if vw is None:
            vw = cv2.VideoWriter(str(tmp_path / "c.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 30,
                                 (f.shape[1], f.shape[0]))
        vw.write(f)
    vw.release()
    data = (tmp_path / "c.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: int(len(data) * 0.6)])
    r = run_cli("capture", tmp_path / "cut.avi", "-o", tmp_path / "cut.capture.npz",
                "--no-cache", "--no-emotion")
    assert r.returncode == 0, r.stderr[-2000:]
    warn = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: cut.avi holds")]
    assert warn and "its header claims 72" in warn[0], r.stderr[-2000:]
    n = cf.load_capture(tmp_path / "cut.capture.npz").n_frames
    assert 20 < n < 60 and f"holds {n} decodable frames" in warn[0]
