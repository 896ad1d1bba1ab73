"""The capture worker: a subprocess running ``python -m emoca_blender capture ...``.

Blender never runs the heavy part (video decoding, MediaPipe, torch) itself: the Capture
operator starts the core's CLI in a separate Python (the add-on preference "Worker Python")
and follows it through the JSON lines it prints with ``--progress json``::

    {"stage": "track", "frame": 12, "total": 480, "fps": 55.1, "eta": 8.5}
    {"stage": "message", "message": "..."}
    {"stage": "error", "message": "..."}
    {"stage": "done", "output": "/path/clip.capture.npz"}

On bad input the worker exits with code 2 and one ``error: ...`` line on stderr.

This module is bpy-free (it is unit tested without Blender). :class:`WorkerJob` starts the
process, reads stdout and stderr in two daemon threads into a queue, and turns what arrives
into state the UI polls without blocking (:meth:`WorkerJob.poll`); :meth:`WorkerJob.cancel`
terminates the whole process group and deletes any partial output; :meth:`WorkerJob.save_log`
writes what the worker said next to the output when something went wrong.
"""
from __future__ import annotations

import collections
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

#: The extension root: the folder holding ``emoca_blender/`` (the core), ``operators/``...
#: The worker runs with this as its working directory so ``-m emoca_blender`` finds the core.
EXTENSION_ROOT = Path(__file__).resolve().parent.parent

CAPTURE_SUFFIX = ".capture.npz"
SIDECAR_SUFFIX = ".capture.json"

# States of a job.
IDLE, RUNNING, DONE, FAILED, CANCELLED = "idle", "running", "done", "failed", "cancelled"


#: Where the user fixes a bad worker Python (said in every message about it).
PREFERENCE_HINT = ("Set Edit > Preferences > Add-ons > EMOCA Face Capture > Worker Python, "
                   "or click Install Runtime there")


class WorkerError(RuntimeError):
    """The worker could not be started; the message is one line meant for the user."""


# --------------------------------------------------------------------------------------
# Paths


def sidecar_for(output: str | os.PathLike) -> Path:
    """``clip.capture.npz`` -> ``clip.capture.json`` (same rule as ``capture_file``)."""
    p = Path(output)
    if p.name.endswith(CAPTURE_SUFFIX):
        return p.with_name(p.name[: -len(CAPTURE_SUFFIX)] + SIDECAR_SUFFIX)
    return p.with_name(p.stem + SIDECAR_SUFFIX)


def log_path_for(output: str | os.PathLike) -> Path:
    """Where a failed run's log goes: ``clip.capture.npz`` -> ``clip.capture.log``."""
    p = Path(output)
    if p.name.endswith(CAPTURE_SUFFIX):
        return p.with_name(p.name[: -len(CAPTURE_SUFFIX)] + ".capture.log")
    return p.with_name(p.name + ".log")


def default_output_for(video: str | os.PathLike) -> Path:
    """The capture written for a video when the user gave no output path: beside the video."""
    v = Path(video)
    return v.with_name(v.stem + CAPTURE_SUFFIX)


def venv_python(root: str | os.PathLike) -> Path | None:
    """The Python of a virtual environment ``<root>/.venv`` if there is one."""
    root = Path(root)
    for rel in (("bin", "python"), ("bin", "python3"), ("Scripts", "python.exe")):
        p = root.joinpath(".venv", *rel)
        if p.is_file():
            return p
    return None


def resolve_worker_python(preference: str = "", root: str | os.PathLike = EXTENSION_ROOT,
                          runtime_venv: str | os.PathLike | None = None) -> tuple[str, str]:
    """The Python that runs the worker and where that choice came from.

    The preference wins when set; else the runtime that Install Runtime made
    (``runtime_venv``, in the extension's user folder) when it has a Python; else the
    project's ``.venv`` next to the add-on (a development checkout installed as the add-on);
    else the Python running this code (Blender's own, which then needs the worker's packages
    installed). Returns ``(path, source)`` with source ``"preferences"``,
    ``"installed runtime"``, ``"add-on .venv"`` or ``"this Python"``.
    """
    if preference and preference.strip():
        return os.path.expanduser(preference.strip()), "preferences"
    if runtime_venv:
        for rel in (("bin", "python"), ("Scripts", "python.exe")):
            p = Path(runtime_venv).joinpath(*rel)
            if p.is_file():
                return str(p), "installed runtime"
    v = venv_python(root)
    if v is not None:
        return str(v), "add-on .venv"
    return sys.executable, "this Python"


# --------------------------------------------------------------------------------------
# Command line


@dataclass(frozen=True)
class Backend:
    id: str
    label: str
    description: str
    licence: str
    #: The model files (add-on preferences) it needs, in the order a message names them:
    #: ``"emoca"`` (--emoca-checkpoint), ``"flame"`` (--flame-dir).
    needs: tuple[str, ...] = ()


#: The capture backends the UI offers, in menu order (README "Backends"; DESIGN.md 5 and 8).
BACKENDS: tuple[Backend, ...] = (
    Backend("mediapipe", "MediaPipe",
            "MediaPipe FaceLandmarker: bundled, nothing to download, real time on the CPU; "
            "ARKit curves, head pose, jaw, gaze, blinks",
            "Apache-2.0 (MediaPipe models)"),
    Backend("flame-fit", "FLAME Fit",
            "FLAME fitted to MediaPipe's landmarks (torch): needs the FLAME folder "
            "(generic_model.pkl and mediapipe_landmark_embedding.npz) in the add-on "
            "preferences; FLAME identity, expression, jaw, pose, eyes + ARKit curves",
            "FLAME: MPI-IS licence, user-supplied", needs=("flame",)),
    Backend("emoca", "EMOCA",
            "EMOCA networks, on the GPU when there is one (torch): needs the EMOCA checkpoint "
            "(or DECA's deca_model.tar) and the FLAME folder in the add-on preferences; FLAME "
            "expression, jaw, pose, detail displacement maps + ARKit curves",
            "EMOCA: non-commercial research licence, user-supplied; FLAME: MPI-IS licence",
            needs=("emoca", "flame")),
)


def find_backend(backend_id: str) -> Backend | None:
    """The UI's description of a backend, or None."""
    return next((b for b in BACKENDS if b.id == backend_id), None)


def core_command(python: str, command: str, *args: str) -> list[str]:
    """A worker command line for any of the core CLI's commands, with JSON progress::

        python -u -m emoca_blender COMMAND ARGS... --progress json
    """
    return [str(python), "-u", "-m", "emoca_blender", command, *map(str, args),
            "--progress", "json"]


def capture_command(python: str, video: str | os.PathLike, output: str | os.PathLike, *,
                    backend: str = "mediapipe", device: str = "auto", face_index: int = 0,
                    filter_strength: float = 0.5, cache_dir: str | os.PathLike | None = None,
                    flame_dir: str | os.PathLike | None = None,
                    emoca_checkpoint: str | os.PathLike | None = None,
                    extra: Sequence[str] = ()) -> list[str]:
    """The worker's command line (the core's CLI, ``emoca_blender/cli/main.py``)::

        python -u -m emoca_blender capture VIDEO -o OUT --backend B --progress json
               --device D --face-index I --filter S [--cache-dir DIR]
               [--flame-dir DIR] [--emoca-checkpoint FILE]

    ``--flame-dir`` and ``--emoca-checkpoint`` are passed when given (the backends that need
    them: ``Backend.needs``).
    """
    cmd = core_command(python, "capture", str(video), "-o", str(output), "--backend", backend,
                       "--device", device or "auto", "--face-index", str(int(face_index)),
                       "--filter", f"{min(max(float(filter_strength), 0.0), 1.0):g}")
    if flame_dir:
        cmd += ["--flame-dir", str(flame_dir)]
    if emoca_checkpoint:
        cmd += ["--emoca-checkpoint", str(emoca_checkpoint)]
    if cache_dir:
        cmd += ["--cache-dir", str(cache_dir)]
    cmd += list(extra)
    return cmd


def takes_capture_command(python: str, videos: Sequence[str | os.PathLike],
                          out_dir: str | os.PathLike, **options) -> list[str]:
    """The worker's command line for several videos (takes) in one job::

        python -u -m emoca_blender capture V1 V2 ... -o FOLDER ... --stdin-control

    One ``FOLDER/<stem>.capture.npz`` per video, captured in order in one process; every
    progress line carries its take's index, each take is announced and closed by a
    ``{"stage": "take", ...}`` line, and ``cancel N`` / ``cancel all`` on the worker's
    stdin cancel one take or the job (:meth:`WorkerJob.send`). ``options``: as
    :func:`capture_command`."""
    cmd = capture_command(python, str(videos[0]), out_dir, **options)
    i = cmd.index("capture") + 1
    cmd[i:i + 1] = [str(v) for v in videos]
    return cmd + ["--stdin-control"]


def refine_command(python: str, capture: str | os.PathLike, output: str | os.PathLike, *,
                   keyframes: int = 5, strength: float = 1.0,
                   video: str | os.PathLike | None = None,
                   iterations: int | None = None) -> list[str]:
    """Emotion-consistent refinement of a capture into a new capture (``refine``)."""
    args = [str(capture), "-o", str(output), "--keyframes", str(max(1, int(keyframes))),
            "--strength", f"{min(max(float(strength), 0.0), 1.0):g}"]
    if video:
        args += ["--video", str(video)]
    if iterations:
        args += ["--iterations", str(int(iterations))]
    return core_command(python, "refine", *args)


def emotion_train_command(python: str, table: str | os.PathLike,
                          output: str | os.PathLike, *, max_epochs: int = 200) -> list[str]:
    """Train the emotion MLP on a labelled table of captures (``emotion-train``)."""
    return core_command(python, "emotion-train", str(table), "-o", str(output),
                        "--max-epochs", str(max(1, int(max_epochs))))


def emotion_predict_command(python: str, capture: str | os.PathLike,
                            model: str | os.PathLike) -> list[str]:
    """Valence and arousal of every frame from a trained MLP, written into the capture
    (``emotion-predict``, in place)."""
    return core_command(python, "emotion-predict", str(capture), "--model", str(model))


# --------------------------------------------------------------------------------------
# Progress


@dataclass
class Progress:
    """What the UI shows; updated by :meth:`WorkerJob.poll`."""

    stage: str = ""
    frame: int = 0
    total: int = 0
    fps: float = 0.0
    eta: float | None = None
    message: str = ""
    take: int = -1           # a several-video capture: the take running (0-based) of `takes`
    takes: int = 0

    @property
    def factor(self) -> float:
        """Fraction of the current stage done, in [0, 1]."""
        if self.total > 0:
            return min(max(self.frame / self.total, 0.0), 1.0)
        return 0.0

    def text(self) -> str:
        """One short line, e.g. ``track 120/480 · 55 fps · 7 s left`` (``take 2/3 · track
        ...`` while a several-video capture runs its second take)."""
        parts = [self.stage or "starting"]
        if self.total > 0:
            parts[0] += f" {self.frame}/{self.total}"
        elif self.frame:
            parts[0] += f" {self.frame}"
        if self.fps > 0:
            parts.append(f"{self.fps:.0f} fps")
        if self.eta is not None and self.eta >= 0 and self.total > 0:
            parts.append(f"{format_seconds(self.eta)} left")
        if self.take >= 0 and self.takes > 1:
            parts.insert(0, f"take {self.take + 1}/{self.takes}")
        return " · ".join(parts)


def format_seconds(s: float) -> str:
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f} s"
    m, s = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}:{s:02d} min"
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d} h"


def parse_progress_line(line: str) -> dict[str, Any] | None:
    """A JSON progress object, or None when the line is not one (plain text is logged)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _num(v: Any, default: float | None = 0.0) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return f if f == f else default  # NaN -> default


def error_line(stderr_lines: Sequence[str], returncode: int | None,
               json_error: str | None = None) -> str:
    """The one readable line that says why the worker failed."""
    msg = ""
    for line in reversed(stderr_lines):  # the CLI's own "error: ..." line wins
        s = line.strip()
        if s.lower().startswith("error:"):
            msg = s[len("error:"):].strip()
            break
    if not msg and json_error:
        msg = json_error.strip()
    if not msg:
        for line in reversed(stderr_lines):  # e.g. the last line of a traceback
            if line.strip():
                msg = line.strip()
                break
    if msg and returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        msg += f" (the worker died: {name})"
    if not msg:
        if returncode is not None and returncode < 0:
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = str(-returncode)
            msg = f"the worker was killed ({name})"
        else:
            msg = f"the worker exited with code {returncode} without saying why"
    if "No module named" in msg:
        msg += " (the worker Python lacks this package: choose another Worker Python in " \
               "the add-on preferences, see README)"
    return msg[:1].upper() + msg[1:]


def complete_capture(path: str | os.PathLike) -> bool:
    """True when ``path`` is a capture npz whose sidecar vouches for it (completely
    published by the core's atomic write protocol)."""
    from ._core import capture_file

    return Path(path).name.endswith(CAPTURE_SUFFIX) and capture_file.is_complete(path)


def complete_output(path: str | os.PathLike) -> bool:
    """True when the file at ``path`` is whole: a capture whose sidecar vouches for it, or a
    torch ``.pt`` (the Emotion MLP, a zip the core writes atomically) whose zip directory
    reads and whose members' checksums match. A file half written in place fails both; any
    other kind of file is not vouched for."""
    p = Path(path)
    if p.name.endswith(CAPTURE_SUFFIX):
        return complete_capture(p)
    if p.suffix == ".pt":
        import zipfile

        try:
            with zipfile.ZipFile(p) as z:
                return z.testzip() is None and any(n.endswith("/data.pkl") for n in z.namelist())
        except (OSError, zipfile.BadZipFile, EOFError):
            return False
    return False


# --------------------------------------------------------------------------------------
# The job


@dataclass
class _Snapshot:
    """What existed at the output paths before the run, so cancel deletes only what is new."""

    stats: dict[str, tuple[int, int] | None] = field(default_factory=dict)

    @classmethod
    def take(cls, paths: Sequence[Path]) -> "_Snapshot":
        out = {}
        for p in paths:
            try:
                st = p.stat()
                out[str(p)] = (st.st_mtime_ns, st.st_size)
            except OSError:
                out[str(p)] = None
        return cls(out)

    def changed(self, p: Path) -> bool:
        try:
            st = p.stat()
        except OSError:
            return False  # nothing there now: nothing to delete
        return self.stats.get(str(p)) != (st.st_mtime_ns, st.st_size)


class WorkerJob:
    """One worker run. Not thread-safe: call it from one thread (Blender's main thread).

    >>> job = WorkerJob(cmd, output="clip.capture.npz")
    >>> job.start()
    >>> while job.state == RUNNING:   # in Blender: once per timer event
    ...     job.poll()
    >>> job.state, job.error, job.output
    """

    LOG_LINES = 5000  # kept for the log (progress lines are frequent; keep the tail)

    def __init__(self, cmd: Sequence[str], *, output: str | os.PathLike | None = None,
                 cwd: str | os.PathLike | None = EXTENSION_ROOT,
                 env: dict[str, str] | None = None):
        self.cmd = [str(c) for c in cmd]
        self.output = Path(output) if output is not None else None
        self.cwd = Path(cwd) if cwd is not None else None
        self.env = env
        self.state = IDLE
        self.progress = Progress()
        self.error: str | None = None
        self.returncode: int | None = None
        self.events: list[dict[str, Any]] = []  # non-progress events (done, error, message)
        self.messages: list[str] = []
        self.progress_count = 0  # progress lines received (the UI shows the latest only)
        self.started_at = 0.0
        self.ended_at = 0.0
        self._json_error: str | None = None
        self._done_output: str | None = None
        #: a several-video capture (``--stdin-control``): its stdin takes ``cancel N`` lines
        self.stdin_control = "--stdin-control" in self.cmd
        #: per take (several videos): {index: {"state", "name", "video", "output",
        #: "progress", "message", "frames", ...}} from its ``take`` lines and progress
        self.takes: dict[int, dict[str, Any]] = {}
        self._log: collections.deque[str] = collections.deque(maxlen=self.LOG_LINES)
        self._stderr: collections.deque[str] = collections.deque(maxlen=200)
        self._queue: queue.Queue[tuple[str, str | None]] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._proc: subprocess.Popen | None = None
        self._snapshot = _Snapshot()
        self.kept: Path | None = None   # a complete capture a failed run had published

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    def start(self) -> "WorkerJob":
        if self.state != IDLE:
            raise WorkerError("this job was already started")
        if self.output is not None:
            if not self.output.parent.is_dir():
                raise WorkerError(f"Output folder {self.output.parent} does not exist")
            self._snapshot = _Snapshot.take([self.output, sidecar_for(self.output)])
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("PYTHONIOENCODING", "utf-8")
        if self.cwd is not None:
            # `-m emoca_blender` resolves from the working directory; PYTHONPATH makes it
            # robust to interpreters started with -I/-P or a changed cwd.
            env["PYTHONPATH"] = os.pathsep.join(
                [str(self.cwd)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        kw: dict[str, Any] = {}
        if os.name == "posix":
            kw["start_new_session"] = True  # own process group: cancel reaches grandchildren
        else:
            kw["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | \
                getattr(subprocess, "CREATE_NO_WINDOW", 0)
        self._log.append(f"$ {subprocess.list2cmdline(self.cmd)}")
        if self.cwd is not None:
            self._log.append(f"# cwd: {self.cwd}")
        try:
            self._proc = subprocess.Popen(
                self.cmd, cwd=str(self.cwd) if self.cwd else None, env=env,
                stdin=subprocess.PIPE if self.stdin_control else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, encoding="utf-8", errors="replace", bufsize=1, **kw)
        except FileNotFoundError:
            raise WorkerError(f"Worker Python not found: {self.cmd[0]}. {PREFERENCE_HINT}") \
                from None
        except PermissionError:
            raise WorkerError(f"Worker Python is not executable: {self.cmd[0]}. "
                              f"{PREFERENCE_HINT}") from None
        except OSError as e:
            raise WorkerError(f"Cannot start the worker {self.cmd[0]}: {e.strerror or e}") \
                from None
        self.started_at = time.monotonic()
        self.state = RUNNING
        for name, stream in (("out", self._proc.stdout), ("err", self._proc.stderr)):
            t = threading.Thread(target=self._reader, args=(name, stream),
                                 name=f"emoca-worker-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def send(self, line: str) -> bool:
        """Write one control line (``cancel 2``, ``cancel all``) to a several-video
        capture's stdin; False when the worker does not read it (or has ended)."""
        proc = self._proc
        if proc is None or not self.stdin_control or proc.stdin is None or \
                self.state != RUNNING:
            return False
        try:
            proc.stdin.write(line.rstrip("\n") + "\n")
            proc.stdin.flush()
        except (OSError, ValueError):
            return False
        self._log.append(f"# sent: {line.strip()}")
        return True

    def cancel_take(self, index: int) -> bool:
        """Cancel take ``index`` of a several-video capture (queued: skipped; running:
        stopped, nothing written); the other takes go on."""
        ok = self.send(f"cancel {int(index)}")
        if ok:
            t = self.takes.setdefault(int(index), {})
            if t.get("state") in (None, "queued", "running"):
                t["cancel_requested"] = True
        return ok

    def _reader(self, name: str, stream) -> None:
        try:
            for line in iter(stream.readline, ""):
                self._queue.put((name, line.rstrip("\r\n")))
        except (OSError, ValueError):
            pass
        finally:
            self._queue.put((name, None))  # end of stream

    def poll(self) -> bool:
        """Take in what the worker said since the last call and update the state.
        Never blocks. Returns True when something changed."""
        if self._proc is None or self.state not in (RUNNING,):
            return False
        changed = self._drain()
        if self._proc.poll() is not None and not any(t.is_alive() for t in self._threads):
            self._drain()
            self._finish(self._proc.returncode)
            changed = True
        return changed

    def wait(self, timeout: float | None = None, interval: float = 0.05,
             on_progress=None) -> str:
        """Block until the worker ends (or ``timeout`` seconds); returns the state.
        For background/scripted use; the UI polls instead."""
        t_end = None if timeout is None else time.monotonic() + timeout
        while self.state == RUNNING:
            if self.poll() and on_progress is not None:
                on_progress(self)
            if t_end is not None and time.monotonic() > t_end:
                break
            time.sleep(interval)
        return self.state

    def cancel(self, timeout: float = 3.0) -> None:
        """Stop the worker (SIGTERM to its process group, SIGKILL after ``timeout`` s) and
        delete any partial output. Safe to call in any state."""
        if self.state != RUNNING or self._proc is None:
            return
        self._terminate(timeout)
        self._drain()
        for t in self._threads:
            t.join(timeout=1.0)
        self._drain()
        self._close_stdin()
        self.returncode = self._proc.returncode
        self.state = CANCELLED
        self.ended_at = time.monotonic()
        self._log.append(f"# cancelled (exit code {self.returncode})")
        self.cleanup_partial_output()

    def _terminate(self, timeout: float) -> None:
        proc = self._proc
        assert proc is not None
        if proc.poll() is not None:
            return
        try:
            if os.name == "posix":
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.terminate()
        except (ProcessLookupError, PermissionError, OSError):
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                if os.name == "posix":
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
            except (ProcessLookupError, PermissionError, OSError):
                pass
            proc.wait(timeout=timeout)
        if os.name == "posix":  # grandchildren that outlived the worker itself
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, OSError):
                pass

    # -- output --------------------------------------------------------------------------

    def _drain(self) -> bool:
        changed = False
        while True:
            try:
                name, line = self._queue.get_nowait()
            except queue.Empty:
                return changed
            if line is None:
                continue
            changed = True
            if name == "err":
                self._stderr.append(line)
                self._log.append(f"[stderr] {line}")
                continue
            obj = parse_progress_line(line)
            if obj is None:
                self._log.append(line)
                continue
            self._handle(obj, line)

    def _handle(self, obj: dict[str, Any], raw: str) -> None:
        stage = str(obj.get("stage") or "")
        take = obj.get("take")
        if stage == "take" and isinstance(take, int):
            self._log.append(raw)
            self.events.append(obj)
            t = self.takes.setdefault(take, {})
            t.update({k: v for k, v in obj.items() if k != "stage"})
            if obj.get("state") == "done":
                t["progress"] = 1.0
            self.progress.take = take
            self.progress.takes = int(_num(obj.get("takes"), 0) or 0)
            return
        if isinstance(take, int) and stage not in ("done", "error", "message"):
            t = self.takes.setdefault(take, {})
            total = _num(obj.get("total"), 0) or 0
            if total > 0:
                t["progress"] = min(max((_num(obj.get("frame"), 0) or 0) / total, 0.0), 1.0)
            t["stage"] = stage
        if stage == "done":
            self._log.append(raw)
            self.events.append(obj)
            if obj.get("output"):
                self._done_output = str(obj["output"])
            for info in obj.get("takes") or ():
                if isinstance(info, dict) and isinstance(info.get("take"), int):
                    self.takes.setdefault(info["take"], {}).update(info)
            return
        if stage == "error":
            self._log.append(raw)
            self.events.append(obj)
            self._json_error = str(obj.get("message") or "")
            return
        if stage == "message" or ("message" in obj and "frame" not in obj):
            self._log.append(raw)
            self.events.append(obj)
            text = str(obj.get("message") or "")
            if text:
                self.messages.append(text)
                self.progress.message = text
            return
        p = self.progress
        self.progress_count += 1
        if stage and stage != p.stage:
            self._log.append(raw)  # the first line of each stage goes to the log
            p.stage = stage
        p.frame = int(_num(obj.get("frame"), 0) or 0)
        total = obj.get("total")
        p.total = int(_num(total, 0) or 0) if total is not None else 0
        p.fps = float(_num(obj.get("fps"), 0.0) or 0.0)
        eta = obj.get("eta")
        p.eta = None if eta is None else _num(eta, None)

    def _close_stdin(self) -> None:
        stdin = getattr(self._proc, "stdin", None)
        if stdin is not None:
            try:
                stdin.close()
            except OSError:
                pass

    def _finish(self, returncode: int) -> None:
        self._close_stdin()
        self.returncode = returncode
        self.ended_at = time.monotonic()
        self._log.append(f"# exit code {returncode}")
        if returncode == 0:
            if self._done_output:
                self.output = Path(self._done_output)
            if self.output is not None and not self.output.is_file():
                self.state = FAILED
                what = "capture" if self.output.name.endswith(CAPTURE_SUFFIX) else "file"
                self.error = f"The worker finished but wrote no {what} at {self.output}"
                return
            self.state = DONE
            return
        self.state = FAILED
        self.error = error_line(list(self._stderr), returncode, self._json_error)
        self.cleanup_partial_output()

    def cleanup_partial_output(self) -> list[Path]:
        """Delete what this run left behind: temporary ``.part`` files next to the output,
        and the output and its sidecar when they are new or changed since the start and
        are not complete. An output that was complete before the run and untouched stays;
        so does one the run published completely before it failed or was cancelled (a
        capture its sidecar vouches for, an Emotion MLP whose zip reads whole:
        :func:`complete_output`): the core's writes are atomic, so such a file is whole,
        and deleting it would lose both the old file it replaced and the new one
        (``self.kept`` names it). Returns what went."""
        removed: list[Path] = []
        self.kept = None
        if self.output is None:
            return removed
        out = self.output
        candidates = [out, sidecar_for(out)]
        if self._snapshot.changed(out) and complete_output(out):
            self.kept = out
            self._log.append(f"# kept {out.name}: the run had published it completely")
            what = "capture" if out.name.endswith(CAPTURE_SUFFIX) else "file"
            if self.error:
                self.error += f" (the {what} it had written, {out.name}, is complete and was kept)"
            candidates = []
        for p in candidates:
            if self._snapshot.changed(p):
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:
                    pass
        try:
            prefixes = tuple(f".{p.name}." for p in candidates)
            for q in out.parent.iterdir():
                if q.name.startswith(prefixes) and q.name.endswith(".part"):
                    try:
                        q.unlink()
                        removed.append(q)
                    except OSError:
                        pass
        except OSError:
            pass
        return removed

    def log_text(self) -> str:
        head = [f"# emoca_blender worker log, state {self.state}"]
        if self.error:
            head.append(f"# error: {self.error}")
        if self.ended_at and self.started_at:
            head.append(f"# ran {self.ended_at - self.started_at:.1f} s")
        return "\n".join(head + list(self._log)) + "\n"

    def save_log(self, path: str | os.PathLike | None = None) -> Path | None:
        """Write the log (command, stages, messages, stderr, exit code); by default beside
        the output as ``<name>.capture.log``. Returns the path, or None if it could not be
        written."""
        if path is None:
            if self.output is None:
                return None
            path = log_path_for(self.output)
        path = Path(path)
        try:
            path.write_text(self.log_text(), encoding="utf-8")
        except OSError:
            return None
        return path


__all__ = ["WorkerJob", "WorkerError", "PREFERENCE_HINT", "Progress", "Backend", "BACKENDS",
           "find_backend", "core_command", "capture_command", "takes_capture_command",
           "refine_command",
           "emotion_train_command", "emotion_predict_command",
           "resolve_worker_python", "venv_python", "default_output_for", "log_path_for",
           "sidecar_for", "parse_progress_line", "error_line", "format_seconds",
           "EXTENSION_ROOT", "IDLE", "RUNNING", "DONE", "FAILED", "CANCELLED"]
