"""Progress reporting for long stages: a bar for humans, JSON lines for the Blender worker.

``--progress json`` prints one JSON object per line on stdout, e.g.
``{"stage": "track", "frame": 120, "total": 480, "fps": 61.2, "eta": 5.9}``, at most about
ten a second plus the last frame of each stage, and a final ``{"stage": "done", ...}``.
Errors go to stderr as one line ``error: ...`` (and, in json mode, a
``{"stage": "error", "message": ...}`` line on stdout).
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

MODES = ("auto", "bar", "json", "none")


class Progress:
    def __init__(self, mode: str = "auto", out: TextIO | None = None, err: TextIO | None = None,
                 interval: float = 0.1):
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}")
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.err, "isatty", lambda: False)() else "none"
        self.mode = mode
        self.interval = interval
        self._stage: str | None = None
        self._t0 = 0.0
        self._last = 0.0
        self._bar_open = False
        #: added to every JSON line (a take's index while a several-video job runs it)
        self.fields: dict[str, Any] = {}

    def event(self, stage: str, **info: Any) -> None:
        """One JSON line ``{"stage": stage, ...info}`` (json mode only), e.g. a take's state."""
        self._close_bar()
        if self.mode == "json":
            self._emit({"stage": stage, **info})

    def stage(self, name: str, total: int | None = None) -> None:
        self._close_bar()
        self._stage = name
        self._t0 = time.perf_counter()
        self._last = 0.0
        if self.mode == "json":
            self._emit({"stage": name, "frame": 0, "total": total, "fps": 0.0, "eta": None})

    def update(self, frame: int, total: int | None = None, force: bool = False) -> None:
        now = time.perf_counter()
        last_frame = total is not None and frame >= total
        if not force and not last_frame and now - self._last < self.interval:
            return
        self._last = now
        elapsed = max(now - self._t0, 1e-9)
        fps = frame / elapsed
        eta = (total - frame) / fps if (total and fps > 0) else None
        if self.mode == "json":
            self._emit({"stage": self._stage, "frame": frame, "total": total,
                        "fps": round(fps, 2), "eta": None if eta is None else round(eta, 2)})
        elif self.mode == "bar":
            if total:
                frac = min(frame / total, 1.0)
                n = int(frac * 30)
                bar = "#" * n + "-" * (30 - n)
                text = (f"\r{self._stage:>8} [{bar}] {frame}/{total} {fps:6.1f} fps "
                        f"eta {eta or 0:5.1f}s")
            else:
                text = f"\r{self._stage:>8} {frame} frames {fps:6.1f} fps"
            self.err.write(text)
            self.err.flush()
            self._bar_open = True

    def message(self, text: str) -> None:
        """A human line (a warning, a note): always on stderr, and as a json line in json mode."""
        self._close_bar()
        if self.mode == "json":
            self._emit({"stage": "message", "message": text})
        self.err.write(text + "\n")
        self.err.flush()

    def done(self, **info: Any) -> None:
        self._close_bar()
        if self.mode == "json":
            self._emit({"stage": "done", **info})

    def error(self, text: str) -> None:
        self._close_bar()
        if self.mode == "json":
            self._emit({"stage": "error", "message": text})

    def _close_bar(self) -> None:
        if self._bar_open:
            self.err.write("\n")
            self.err.flush()
            self._bar_open = False

    def _emit(self, obj: dict) -> None:
        if self.fields:
            obj = {**obj, **{k: v for k, v in self.fields.items() if k not in obj}}
        self.out.write(json.dumps(obj, default=str) + "\n")
        self.out.flush()
