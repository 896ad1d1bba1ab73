"""Takes on the command line and in the worker (issue 15 item 3): several videos (or a
folder) captured in ONE process, in order, a queue whose every progress line names its
take; a take cancelled while queued or while running (``cancel N`` on the worker's stdin)
writes nothing and the queue goes on; a bad video fails its take only; the inputs that
cannot work are refused before any capture. No Blender needed."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from emoca_blender.capture import takes as core_takes
from emoca_blender.errors import BadInput
from operators import worker

PY = ROOT / ".venv" / "bin" / "python"


def cut_clip(src: Path, dst: Path, start: int, n: int, fps: float) -> Path:
    """``n`` frames of ``src`` from ``start`` as a new mp4 at ``fps`` (OpenCV, mp4v)."""
    import cv2

    cap = cv2.VideoCapture(str(src))
    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    out = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for _ in range(n):
        ok, frame = cap.read()
        if not ok:
            break
        out.write(frame)
    out.release()
    cap.release()
    return dst


@pytest.fixture(scope="module")
def clips(tmp_path_factory, demo_clip) -> list[Path]:
    """Three short clips (the demo clip's first 48 frames, cut three times)."""
    d = tmp_path_factory.mktemp("tclips")
    return [cut_clip(demo_clip, d / f"{n}.mp4", s, 48, 30.0)
            for n, s in (("one", 0), ("two", 10), ("three", 20))]


def _lines(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines() if x.startswith("{")]


def test_folder_in_order_one_process(clips, tmp_path):
    r = run_cli("--progress", "json", "capture", clips[0].parent, "-o", tmp_path / "caps",
                "--no-cache")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = _lines(r.stdout)
    done = lines[-1]
    assert done["stage"] == "done"
    # a folder: its videos by name
    assert [t["name"] for t in done["takes"]] == ["one", "three", "two"]
    assert all(t["state"] == "done" and t["frames"] == 48 for t in done["takes"])
    assert sorted(p.name for p in (tmp_path / "caps").glob("*.capture.npz")) == [
        "one.capture.npz", "three.capture.npz", "two.capture.npz"]
    tracked = [x["take"] for x in lines if x.get("stage") == "track"]
    assert tracked == sorted(tracked) and set(tracked) == {0, 1, 2}
    # the human form says what it wrote
    r = run_cli("capture", *clips, "-o", tmp_path / "caps2")
    assert r.returncode == 0 and r.stdout.count("wrote ") == 3, r.stdout


def test_bad_inputs_refused_before_any_capture(clips, tmp_path):
    r = run_cli("capture", *clips, "-o", tmp_path / "x.capture.npz")
    assert r.returncode == 2 and "give -o FOLDER" in r.stderr
    other = tmp_path / "other"
    other.mkdir()
    twin = other / clips[0].name
    twin.write_bytes(clips[0].read_bytes())
    r = run_cli("capture", clips[0], twin, "-o", tmp_path / "o")
    assert r.returncode == 2 and "would both be written as one.capture.npz" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("capture", empty, "-o", tmp_path / "o")
    assert r.returncode == 2 and "holds no video" in r.stderr
    r = run_cli("run", clips[0], clips[0], "-o", tmp_path / "o")
    assert r.returncode == 2 and "given twice" in r.stderr
    assert not list(tmp_path.rglob("*.capture.npz"))


def test_a_bad_video_fails_its_take_only(clips, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    r = run_cli("--progress", "json", "capture", bad, clips[1], "-o", tmp_path / "caps",
                "--no-cache")
    assert r.returncode == 2
    assert "error: take 1 (broken.mp4):" in r.stderr
    takes = _lines(r.stdout)[-1]["takes"]
    assert [t["state"] for t in takes] == ["failed", "done"]
    assert takes[0]["message"]
    assert (tmp_path / "caps" / "two.capture.npz").is_file()
    assert not (tmp_path / "caps" / "broken.capture.npz").exists()


@pytest.mark.skipif(not PY.is_file(), reason="the worker Python .venv/bin/python is missing")
def test_cancel_one_take_while_running_and_one_queued(clips, tmp_path):
    """The worker (Blender's WorkerJob) with ``--stdin-control``: take 0 cancelled while
    it tracks, take 1 cancelled while queued, take 2 captured; the cancelled takes leave
    nothing behind; the job ends in success."""
    out = tmp_path / "caps"
    out.mkdir()
    cmd = worker.takes_capture_command(str(PY), clips, out) + ["--no-cache"]
    job = worker.WorkerJob(cmd).start()
    sent = set()
    t_end = time.monotonic() + 300
    while job.running and time.monotonic() < t_end:
        job.poll()
        t0 = job.takes.get(0, {})
        if 0 not in sent and t0.get("state") == "running" and t0.get("progress", 0) > 0:
            assert job.cancel_take(0) and job.cancel_take(1)
            sent |= {0, 1}
        time.sleep(0.01)
    assert job.state == worker.DONE, (job.state, job.error)
    states = {i: t.get("state") for i, t in job.takes.items()}
    assert states == {0: "cancelled", 1: "cancelled", 2: "done"}
    assert 0 < job.takes[0].get("progress", 0) < 1          # really stopped mid-take
    assert sorted(p.name for p in out.iterdir()) == ["three.capture.json",
                                                      "three.capture.npz"]
    assert not job.send("cancel 2")                          # the job is over


def test_take_control_and_outputs():
    c = core_takes.TakeControl()
    for line in ("cancel 2", "cancel x", "stop 1", "CANCEL 4\n"):
        c.command(line)
    assert [c.cancelled(i) for i in range(5)] == [False, False, True, False, True]
    c.command("cancel all")
    assert c.cancelled(0) and c.all
    assert core_takes.take_outputs([Path("a/x.mp4"), Path("b/y.mov")], Path("o")) == [
        Path("o/x.capture.npz"), Path("o/y.capture.npz")]
    with pytest.raises(BadInput, match="would both be written"):
        core_takes.take_outputs([Path("a/X.mp4"), Path("b/x.mov")], Path("o"))


def test_cli_parses_the_several_video_forms():
    from emoca_blender.cli import main as cli

    p = cli.build_parser()
    a = p.parse_args(["capture", "a.mp4", "b.mp4", "-o", "caps", "--stdin-control"])
    assert a.video == ["a.mp4", "b.mp4"] and a.stdin_control
    a = p.parse_args(["run", "a.mp4", "b.mp4", "--per-take", "--scene-fps", "30000/1001"])
    assert a.per_take and a.scene_fps == pytest.approx(30000 / 1001)
    a = p.parse_args(["retarget", "a.capture.npz", "b.capture.npz", "-o", "c.blend"])
    assert a.capture == ["a.capture.npz", "b.capture.npz"] and a.scene_fps is None
    a = p.parse_args(["export", "c.blend", "-o", "c.fbx", "--take", "a", "--take", "b",
                      "--per-take"])
    assert a.take == ["a", "b"] and a.per_take
    cmd = worker.takes_capture_command("/py", ["/v/a.mp4", "/v/b.mp4"], "/o", cache_dir="/c")
    a = p.parse_args(cmd[4:])
    assert a.video == ["/v/a.mp4", "/v/b.mp4"] and a.output == "/o" and a.stdin_control
