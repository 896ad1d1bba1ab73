"""The CLI on real footage, and every bad input it must refuse cleanly (exit 2, one line,
no partial output that looks complete)."""
import json
import os
import shutil
from pathlib import Path
import sys

import numpy as np
import pytest

from conftest import run_cli
from emoca_blender import capture_file as cf
from emoca_blender.arkit import INDEX


def _no_capture_left(folder):
    """Nothing in ``folder`` that could be taken for a finished capture, and no temp files."""
    names = os.listdir(folder)
    assert not [n for n in names if n.endswith((".capture.npz", ".capture.json", ".part"))], names


def _one_error_line(r):
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def demo_capture(tmp_path_factory, demo_clip):
    out = tmp_path_factory.mktemp("cap") / "demo.capture.npz"
    r = run_cli("capture", demo_clip, "-o", out, "--no-cache", "--progress", "json")
    assert r.returncode == 0, r.stderr
    return out, r


def test_capture_real_clip(demo_capture):
    out, r = demo_capture
    cap = cf.load_capture(out)
    assert cap.n_frames == 72 and cap.fps == pytest.approx(30.0, rel=1e-3)
    assert cap["valid"].mean() >= 0.95
    # neutral -> smile -> neutral: the smile channels rise in the middle of the clip
    smile = (cap.column("arkit", "mouthSmileLeft") + cap.column("arkit", "mouthSmileRight")) / 2
    assert smile[30:45].mean() > 3 * smile[:8].mean() + 0.1
    assert cap.names["expression"][INDEX["jawOpen"]] == "jawOpen"
    assert cap.meta["backend"]["name"] == "mediapipe"
    assert cap.meta["source"]["hash"] == cf.file_hash(cap.meta["source"]["path"])
    # landmarks sit on the face inside the image, pose-free landmarks are metric (~15 cm face)
    assert (cap["landmarks2d"][..., 0] > 0).all() and (cap["landmarks2d"][..., 0] < 640).all()
    span = np.ptp(cap["landmarks3d"][:, :468, 1], axis=1)
    assert 0.10 < span.mean() < 0.25
    # json progress: one object per line, monotone frames, ends with done
    msgs = [json.loads(ln) for ln in r.stdout.splitlines()]
    track = [m for m in msgs if m["stage"] == "track"]
    assert track and track[-1]["frame"] == track[-1]["total"] == 72
    assert all(a["frame"] <= b["frame"] for a, b in zip(track, track[1:]))
    assert msgs[-1]["stage"] == "done" and msgs[-1]["valid"] >= 69


def test_cache_makes_second_run_instant(tmp_path, demo_clip):
    cache = tmp_path / "cache"
    a = run_cli("capture", demo_clip, "-o", tmp_path / "a.capture.npz", "--cache-dir", cache,
                "--progress", "json")
    assert a.returncode == 0, a.stderr
    b = run_cli("capture", demo_clip, "-o", tmp_path / "b.capture.npz", "--cache-dir", cache,
                "--progress", "json")
    assert json.loads(b.stdout.splitlines()[-1])["cached"] is True
    ca, cb = cf.load_capture(tmp_path / "a.capture.npz"), cf.load_capture(tmp_path / "b.capture.npz")
    np.testing.assert_array_equal(ca["arkit"], cb["arkit"])
    # the same video (by content) at another path: served from the cache, and the capture
    # names the video it was given (the reference plane and the emotion tools open it)
    moved = tmp_path / "elsewhere" / "take1.mp4"
    moved.parent.mkdir()
    shutil.copyfile(demo_clip, moved)
    m = run_cli("capture", moved, "-o", tmp_path / "m.capture.npz", "--cache-dir", cache,
                "--progress", "json")
    assert json.loads(m.stdout.splitlines()[-1])["cached"] is True
    src = cf.load_capture(tmp_path / "m.capture.npz").meta["source"]
    assert src["path"] == str(moved.resolve()) and src["name"] == "take1.mp4"
    assert cb.meta["source"]["path"] == str(Path(demo_clip).resolve())
    # other settings -> another key -> a fresh capture
    c = run_cli("capture", demo_clip, "-o", tmp_path / "c.capture.npz", "--cache-dir", cache,
                "--filter", "0", "--progress", "json")
    assert json.loads(c.stdout.splitlines()[-1])["cached"] is False
    cc = cf.load_capture(tmp_path / "c.capture.npz")
    np.testing.assert_array_equal(cc["arkit"], cc["arkit_raw"])     # filter 0 = off
    assert not np.array_equal(ca["arkit"], ca["arkit_raw"])


def test_help_for_every_command():
    for cmd in ("capture", "rig", "retarget", "export", "run", "info"):
        r = run_cli(cmd, "--help")
        assert r.returncode == 0 and "usage" in r.stdout.lower(), cmd


def test_info(demo_capture):
    out, _ = demo_capture
    r = run_cli("info", out)
    assert r.returncode == 0 and "72 at 30 fps" in r.stdout


# -- bad input ------------------------------------------------------------------------

def _write_video(path, frames, fps=25):
    import cv2

    h, w = frames[0].shape[:2] if frames else (64, 64)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        vw.write(f)
    vw.release()


def test_missing_file(tmp_path):
    r = run_cli("capture", tmp_path / "nope.mp4", "-o", tmp_path / "x.capture.npz")
    assert r.returncode == 2
    assert "does not exist" in _one_error_line(r)
    _no_capture_left(tmp_path)


def test_text_file_renamed_mp4(tmp_path):
    p = tmp_path / "notes.mp4"
    p.write_text("this is not a video\n" * 50)
    r = run_cli("capture", p, "-o", tmp_path / "x.capture.npz")
    assert r.returncode == 2
    assert "notes.mp4" in _one_error_line(r)
    _no_capture_left(tmp_path)


def test_zero_frame_video(tmp_path):
    p = tmp_path / "empty.mp4"
    _write_video(p, [])
    r = run_cli("capture", p, "-o", tmp_path / "x.capture.npz")
    assert r.returncode == 2
    line = _one_error_line(r)
    assert "empty" in line or "no decodable frames" in line
    _no_capture_left(tmp_path)


def test_video_without_face(tmp_path):
    rng = np.random.default_rng(0)
    frames = [np.full((120, 160, 3), (40 + i * 3) % 255, np.uint8) for i in range(30)]
    frames = [np.clip(f + rng.integers(0, 20, f.shape, dtype=np.uint8), 0, 255).astype(np.uint8)
              for f in frames]
    p = tmp_path / "wall.mp4"
    _write_video(p, frames)
    r = run_cli("capture", p, "-o", tmp_path / "x.capture.npz", "--no-cache")
    assert r.returncode == 2
    line = _one_error_line(r)
    assert "no face found" in line and "30 frames" in line
    _no_capture_left(tmp_path)


def test_unwritable_output_folder(tmp_path, demo_clip):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    r = run_cli("capture", demo_clip, "-o", blocker / "x.capture.npz")
    assert r.returncode == 2
    assert "output folder" in _one_error_line(r)
    r = run_cli("capture", demo_clip, "-o", tmp_path / "missing" / "x.capture.npz")
    assert r.returncode == 2 and "does not exist" in _one_error_line(r)
    if os.geteuid() != 0:  # root writes anywhere; the read-only folder case needs a user
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        r = run_cli("capture", demo_clip, "-o", ro / "x.capture.npz")
        assert r.returncode == 2 and "not writable" in _one_error_line(r)
        _no_capture_left(ro)
    _no_capture_left(tmp_path)


def test_bad_capture_file_for_rig(tmp_path):
    p = tmp_path / "x.capture.npz"
    p.write_bytes(b"garbage")
    r = run_cli("info", p)
    assert r.returncode == 2
    assert "x.capture.npz is a text file; info expects an EMOCA capture" in _one_error_line(r)


def test_neutral_frame_flag_calibrates_to_that_frame(tmp_path, demo_clip):
    """--neutral-frame makes that frame the actor's rest: its calibrated smile is ~0, and a
    neutral frame outside the clip is refused with exit 2."""
    out = tmp_path / "n.capture.npz"
    r = run_cli("capture", demo_clip, "-o", out, "--no-cache", "--neutral-frame", "40",
                "--filter", "0")
    assert r.returncode == 0, r.stderr
    cap = cf.load_capture(out)
    smile = cap.column("arkit", "mouthSmileLeft")
    assert smile[40] < 0.05                       # frame 40 (mid-smile) is now the rest
    assert cap.meta["settings"]["neutral_frame"] == 40
    r = run_cli("capture", demo_clip, "-o", tmp_path / "m.capture.npz", "--no-cache",
                "--neutral-frame", "5000")
    assert r.returncode == 2 and "neutral frame 5000" in _one_error_line(r)
