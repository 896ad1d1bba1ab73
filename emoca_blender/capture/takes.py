"""Takes: several videos captured in one job, one process, one after another.

``capture a.mp4 b.mp4 c.mp4 -o DIR`` (or ``capture FOLDER -o DIR``) writes
``DIR/a.capture.npz``, ``DIR/b.capture.npz``... in that order, in one worker process (the
models load once per backend and stay warm in the file cache; a cached take is instant).
A take that fails (an undecodable video, no face) is reported and the queue goes on; a
cancelled take writes nothing and the queue goes on; cancelling all (Ctrl-C, SIGTERM) stops
the job, keeping the takes already written.

With ``--progress json`` each take is announced and closed by a line::

    {"stage": "take", "take": 0, "takes": 3, "state": "running", "video": ".../a.mp4",
     "output": ".../a.capture.npz", "name": "a"}
    {"stage": "track", "frame": 12, "total": 96, "fps": 55.1, "eta": 1.5, "take": 0}
    {"stage": "take", "take": 0, "takes": 3, "state": "done", "frames": 96, "valid": 96,
     "cached": false, ...}

(``state``: running, done, failed with a ``message``, cancelled), every progress line of a
take carries its index, and the job ends with ``{"stage": "done", "takes": [...],
"outputs": [...]}``.

With ``--stdin-control`` (the Blender worker) the job reads lines on stdin while it runs:
``cancel N`` cancels take N (queued: skipped; running: stopped, nothing written),
``cancel all`` cancels the job.
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import BadInput, Cancelled

#: what a folder given as input contributes: its files with these endings, by name
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv")


def expand_videos(inputs) -> list[Path]:
    """The videos of ``inputs`` in order: files as given, a folder as the videos in it
    (:data:`VIDEO_SUFFIXES`, sorted by name, not recursive). A missing file is kept (its
    take fails with the capture's own message); a folder without videos is BadInput."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            vids = sorted((q for q in p.iterdir() if q.is_file() and
                           q.suffix.lower() in VIDEO_SUFFIXES), key=lambda q: q.name.lower())
            if not vids:
                raise BadInput(f"folder {p} holds no video ({', '.join(VIDEO_SUFFIXES)})")
            out += vids
        else:
            out.append(p)
    if not out:
        raise BadInput("no video given")
    seen: dict[str, Path] = {}
    for v in out:
        key = str(v.resolve()) if v.exists() else str(v)
        if key in seen:
            raise BadInput(f"{v} is given twice")
        seen[key] = v
    return out


def take_stem(video) -> str:
    """A take's name: its video's file stem."""
    return Path(video).stem or "take"


def take_outputs(videos, out_dir) -> list[Path]:
    """``out_dir/<stem>.capture.npz`` for each video; two videos with one stem (from two
    folders) are BadInput naming both (never renamed behind the user's back)."""
    from ..capture_file import SUFFIX

    out, by_stem = [], {}
    for v in videos:
        stem = take_stem(v)
        if stem.lower() in by_stem:
            raise BadInput(f"{by_stem[stem.lower()]} and {v} would both be written as "
                           f"{stem}{SUFFIX}: rename one of them, or capture them separately")
        by_stem[stem.lower()] = v
        out.append(Path(out_dir) / f"{stem}{SUFFIX}")
    return out


class TakeControl:
    """Which takes were cancelled: from ``cancel N`` / ``cancel all`` lines on a stream
    (stdin in the Blender worker), read in a daemon thread; or set directly."""

    def __init__(self, stream=None):
        self._lock = threading.Lock()
        self._cancelled: set[int] = set()
        self.all = False
        if stream is not None:
            threading.Thread(target=self._read, args=(stream,), name="emoca-take-control",
                             daemon=True).start()

    def _read(self, stream) -> None:
        try:
            for line in iter(stream.readline, ""):
                self.command(line)
        except (OSError, ValueError):
            pass

    def command(self, line: str) -> None:
        words = line.strip().lower().split()
        if len(words) != 2 or words[0] != "cancel":
            return
        with self._lock:
            if words[1] == "all":
                self.all = True
            elif words[1].isdigit():
                self._cancelled.add(int(words[1]))

    def cancel(self, index: int) -> None:
        with self._lock:
            self._cancelled.add(int(index))

    def cancelled(self, index: int) -> bool:
        with self._lock:
            return self.all or int(index) in self._cancelled


@dataclass
class TakeResult:
    index: int
    video: Path
    output: Path
    name: str
    state: str = "queued"          # done, failed, cancelled
    message: str = ""
    frames: int = 0
    valid: int = 0
    fps: float = 0.0
    cached: bool = False
    capture: object = field(default=None, repr=False)

    def info(self) -> dict:
        d = {"take": self.index, "name": self.name, "video": str(self.video),
             "output": str(self.output), "state": self.state}
        if self.message:
            d["message"] = self.message
        if self.state == "done":
            d.update(frames=self.frames, valid=self.valid, fps=self.fps, cached=self.cached)
        return d


def capture_takes(videos, outputs, settings, progress=None, cache_dir=None,
                  cancel: Callable[[], bool] | None = None,
                  control: TakeControl | None = None,
                  bad_input=(BadInput,)) -> list[TakeResult]:
    """Capture every video into its output, in order, in this process
    (``pipeline.run_capture`` each). ``cancel()`` true cancels the job (Cancelled is
    raised, the takes already written stay); ``control`` cancels single takes. A take whose
    input is bad (``bad_input`` exceptions) is failed with the message and the next one runs.
    Returns one :class:`TakeResult` per video."""
    from .pipeline import run_capture

    control = control or TakeControl()
    n = len(videos)
    results = [TakeResult(i, Path(v), Path(o), take_stem(v)) for i, (v, o) in
               enumerate(zip(videos, outputs))]

    def job_cancelled() -> bool:
        return bool(control.all or (cancel is not None and cancel()))

    def emit(r: TakeResult) -> None:
        if progress is None:
            return
        if getattr(progress, "mode", "") == "json":
            progress.event("take", takes=n, **r.info())
        elif r.state in ("running",):
            progress.message(f"take {r.index + 1}/{n}: {r.video.name} -> {r.output.name}")
        elif r.state != "done":
            progress.message(f"take {r.index + 1}/{n} ({r.video.name}): {r.state}"
                             + (f": {r.message}" if r.message else ""))

    for r in results:
        if job_cancelled():
            raise Cancelled("cancelled")
        if control.cancelled(r.index):
            r.state = "cancelled"
            emit(r)
            continue
        r.state = "running"
        emit(r)
        if progress is not None:
            progress.fields["take"] = r.index
        try:
            res = run_capture(r.video, r.output, settings, progress, cache_dir=cache_dir,
                              cancel=lambda i=r.index: job_cancelled() or control.cancelled(i))
        except Cancelled:
            if job_cancelled():
                raise
            r.state = "cancelled"
        except bad_input as e:
            r.state, r.message = "failed", str(e)
        else:
            cap = res.capture
            r.state, r.cached, r.capture = "done", bool(res.cached), cap
            r.output = Path(res.path)
            r.frames, r.valid, r.fps = cap.n_frames, int(cap["valid"].sum()), float(cap.fps)
        finally:
            if progress is not None:
                progress.fields.pop("take", None)
        emit(r)
    return results


def stdin_control() -> TakeControl:
    """A :class:`TakeControl` reading this process's stdin."""
    return TakeControl(sys.stdin)


__all__ = ["expand_videos", "take_stem", "take_outputs", "TakeControl", "TakeResult",
           "capture_takes", "stdin_control", "VIDEO_SUFFIXES"]

