"""Streaming video decoding: frames come out one at a time, upright, RGB, never buffered whole.

OpenCV's FFmpeg backend applies the container's rotation metadata (phone videos) when
``CAP_PROP_ORIENTATION_AUTO`` is on, which we set explicitly. Grayscale sources decode to
three equal channels. Decoding runs in a background thread feeding a small bounded queue,
so decode overlaps tracking and memory stays flat whatever the clip length.
"""
from __future__ import annotations

import math
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import BadInput

DEFAULT_FPS = 30.0


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    fps: float
    width: int           # of the upright frames we deliver
    height: int
    frame_count: int     # container's estimate; the decoded count can differ slightly
    fps_known: bool      # False when the container gave no frame rate (DEFAULT_FPS used)

    @property
    def duration(self) -> float:
        return self.frame_count / self.fps


def _cv2():
    import cv2  # local: keeps `import emoca_blender.capture.video` cheap

    return cv2


def _open(path: Path):
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        cap = cv2.VideoCapture(str(path))
    if cap.isOpened() and hasattr(cv2, "CAP_PROP_ORIENTATION_AUTO"):
        cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    return cap


def probe(path: str | os.PathLike) -> VideoInfo:
    """Open a video and read its first frame; raise BadInput with a clear reason when the
    file is missing, is not a video, or holds no frames."""
    cv2 = _cv2()
    path = Path(path)
    if not path.exists():
        raise BadInput(f"video file {path} does not exist")
    if path.is_dir():
        raise BadInput(f"{path} is a folder, not a video file")
    if not os.access(path, os.R_OK):
        raise BadInput(f"video file {path} is not readable (permissions)")
    if path.stat().st_size == 0:
        raise BadInput(f"video file {path} is empty (0 bytes)")
    cap = _open(path)
    try:
        if not cap.isOpened():
            raise BadInput(f"{path} is not a video that FFmpeg/OpenCV can decode")
        ok, frame = cap.read()
        if not ok or frame is None:
            raise BadInput(f"{path} holds no decodable frames (0-frame or corrupt video)")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        fps_known = math.isfinite(fps) and 1.0 <= fps <= 1000.0
        if not fps_known:
            fps = DEFAULT_FPS
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        h, w = frame.shape[:2]
        return VideoInfo(path, fps, int(w), int(h), max(count, 1), fps_known)
    finally:
        cap.release()


def frame_times(times: list, n: int, start: int, fps: float) -> tuple[np.ndarray, tuple | None]:
    """Seconds from the video's start of ``n`` decoded frames: the decoder's presentation
    ``times`` (:func:`iter_frames`) when they are there and increase, else ``(start + i) /
    fps``; and ``(lowest, highest)`` frame rate when the rate varies (more than 1.5x between
    the shortest and the longest frame interval), else None."""
    t = np.asarray(times[:n], np.float64)
    if len(t) != n or n < 2 or not np.all(np.isfinite(t)) or not np.all(np.diff(t) > 0):
        return (start + np.arange(n)) / fps, None
    dt = np.diff(t)
    if dt.max() > 1.5 * dt.min():
        return t, (1.0 / dt.max(), 1.0 / dt.min())
    return t, None


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


class _Stop:
    pass


def iter_frames(path: str | os.PathLike, start: int = 0, end: int | None = None,
                prefetch: int = 6, times: list | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(frame_index, rgb_uint8[H,W,3])`` for frames ``start <= i < end``.

    Decoding runs in a daemon thread with a queue of ``prefetch`` frames. Closing the
    generator (or breaking out of the loop) stops the thread. ``times``, when given, gets
    each yielded frame's presentation time in seconds from the decoder (the container's
    timestamps: a variable-rate clip's frames are not ``i / fps`` apart).
    """
    path = Path(path)
    q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker() -> None:
        cap = _open(path)
        try:
            i = 0
            while not stop.is_set():
                if end is not None and i >= end:
                    break
                if i < start:
                    if not cap.grab():
                        break
                    i += 1
                    continue
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                if times is not None:
                    times.append(cap.get(_cv2().CAP_PROP_POS_MSEC) / 1000.0)
                item = (i, _to_rgb(frame))
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                i += 1
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            errors.append(e)
        finally:
            cap.release()
            while True:
                try:
                    q.put(_Stop, timeout=0.1)
                    break
                except queue.Full:
                    if stop.is_set():
                        break

    t = threading.Thread(target=worker, name="emoca-decode", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _Stop:
                break
            yield item
        if errors:
            raise errors[0]
    finally:
        stop.set()
        # drain so the worker can exit
        try:
            while True:
                q.get_nowait()
        except queue.Empty:
            pass
        t.join(timeout=2.0)
