"""Capture operators: run the worker on a video (modal, cancellable) and cancel it.

``emoca.capture`` started from the UI (invoke) is modal: the worker runs in its own process,
a window-manager timer polls it ten times a second, the sidebar shows its progress, and Esc
(or a right-click over the sidebar, or the Cancel button) stops it and deletes the partial
output. Run from a script (``bpy.ops.emoca.capture()``, execute) it blocks until the worker
ends, printing progress, which is what background mode (``blender -b``) needs.

The modal machinery is a mixin, :class:`WorkerJobOperator`, that the emotion jobs
(``ops_emotion_jobs``: refine, train, predict) share.

Also the helpers the other operators and the panels share: why a capture cannot start, why
a capture file cannot be read, a cached capture loader, and a cheap capture summary (the
sidecar JSON only, so drawing a panel never reads the npz).
"""

import json
import os
import time
from pathlib import Path

import bpy

from . import properties, runtime, worker

TIMER_INTERVAL = 0.1  # seconds between polls of the worker

# The one capture job of this Blender session (a second capture waits for the first).
_ACTIVE: dict[str, worker.WorkerJob | None] = {"job": None, "last": None}


def active_job() -> worker.WorkerJob | None:
    job = _ACTIVE["job"]
    return job if job is not None and job.running else None


def cancel_active_job() -> bool:
    """Stop the running capture (if any) and delete its partial output."""
    job = active_job()
    if job is None:
        return False
    job.cancel()
    return True


# --------------------------------------------------------------------------------------
# Paths and problems (shared with the panels: one sentence each, shown as the reason a
# button is disabled)


def output_path(props) -> str:
    """Where the capture will be written: the Capture field, else beside the video. Always
    ends in ``.capture.npz`` (the rule of the core's CLI)."""
    out = properties.abspath(props.capture_path)
    if not out:
        video = properties.abspath(props.video_path)
        if not video:
            return ""
        out = str(worker.default_output_for(video))
    p = Path(out)
    if not p.name.endswith(worker.CAPTURE_SUFFIX):
        if p.suffix == ".npz":
            p = p.with_name(p.name[: -len(".npz")] + worker.CAPTURE_SUFFIX)
        else:
            p = p.with_name(p.name + worker.CAPTURE_SUFFIX)
    return str(p)


def capture_problem(context) -> str | None:
    """Why Capture cannot start now, or None."""
    props = getattr(context.scene, "emoca", None)
    if props is None:
        return "The EMOCA add-on is not registered"
    video = properties.abspath(props.video_path)
    if not video:
        return "Choose a video first"
    if not os.path.isfile(video):
        return f"Video not found: {os.path.basename(video) or video}"
    out = output_path(props)
    folder = os.path.dirname(out)
    if folder and not os.path.isdir(folder):
        return f"Output folder does not exist: {folder}"
    return capture_models(context)[1] or worker_problem(context)


def model_statuses(context, backend: worker.Backend) -> dict[str, "runtime.FileStatus"]:
    """The preferences' status of each model file the backend needs (``backend.needs``):
    cheap (existence, size, magic bytes; cached). The EMOCA checkpoint, when not set, falls
    back to the DECA checkpoint (the emoca backend reads DECA's deca_model.tar too)."""
    prefs = properties.get_prefs(context)
    out = {}
    for kind in backend.needs:
        if kind == "flame":
            out[kind] = properties.file_status("flame", prefs.flame_folder)
        elif kind == "emoca":
            st = properties.file_status("emoca", prefs.emoca_checkpoint)
            if st.state == runtime.UNSET and prefs.deca_checkpoint:
                st = properties.file_status("deca", prefs.deca_checkpoint)
            out[kind] = st
    return out


def capture_models(context) -> tuple[dict[str, str], str | None]:
    """``(model arguments for worker.capture_command, None)`` for the scene's backend, or
    ``({}, why it cannot run)`` naming the missing or wrong preference."""
    props = context.scene.emoca
    backend = worker.find_backend(props.backend)
    if backend is None:
        return {}, f"Unknown backend {props.backend!r}"
    if not backend.needs:
        return {}, None
    return runtime.capture_model_args(backend.label, backend.needs,
                                      model_statuses(context, backend))


def worker_problem(context) -> str | None:
    """Why no worker job (capture, emotion job) can start now, or None."""
    if active_job() is not None:
        return "A capture or emotion job is already running"
    python, source = properties.worker_python(context)
    if not os.path.isfile(python):
        return f"Worker Python not found: {python} ({source}). {worker.PREFERENCE_HINT}"
    return None


def capture_file_problem(context) -> str | None:
    """Why the scene's capture file cannot be used now, or None."""
    props = getattr(context.scene, "emoca", None)
    if props is None:
        return "The EMOCA add-on is not registered"
    path = properties.abspath(props.capture_path)
    if active_job() is not None and path and os.path.abspath(path) == \
            os.path.abspath(str(active_job().output)):
        return "Wait for the capture to finish"
    if not path:
        return "No capture yet: capture a video or choose a .capture.npz file"
    if not os.path.isfile(path):
        return f"Capture file not found: {os.path.basename(path)}"
    return None


_SUMMARY_CACHE: dict[str, tuple[tuple[int, int], dict | None]] = {}


def capture_summary(path: str) -> dict | None:
    """The capture's sidecar metadata (frame_count, fps, backend...), cached by mtime; None
    when there is no readable sidecar. Cheap enough for a panel's draw()."""
    if not path:
        return None
    side = worker.sidecar_for(path)
    try:
        st = side.stat()
    except OSError:
        return None
    key = (st.st_mtime_ns, st.st_size)
    hit = _SUMMARY_CACHE.get(str(side))
    if hit is not None and hit[0] == key:
        return hit[1]
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            meta = None
    except (OSError, ValueError):
        meta = None
    _SUMMARY_CACHE[str(side)] = (key, meta)
    return meta


def summary_text(meta: dict) -> str:
    n = meta.get("frame_count", "?")
    fps = meta.get("fps")
    backend = meta.get("backend")
    if isinstance(backend, dict):
        backend = backend.get("name")
    parts = [f"{n} frames"]
    if isinstance(fps, (int, float)) and fps > 0:
        parts.append(f"{fps:g} fps")
        if isinstance(n, int):
            parts.append(f"{n / fps:.1f} s")
    if backend:
        parts.append(str(backend))
    return " · ".join(parts)


_CAPTURE_CACHE: dict[str, object] = {}


def load_capture(context):
    """The scene's capture (a ``capture_file.Capture``), loaded once per file version.
    Raises ``capture_file.CaptureError`` with a readable message."""
    from ._core import capture_file

    props = context.scene.emoca
    path = properties.abspath(props.capture_path)
    try:
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
    except OSError:
        key = None
    if key is not None and _CAPTURE_CACHE.get("key") == key:
        return _CAPTURE_CACHE["capture"]
    cap = capture_file.load_capture(path)
    _CAPTURE_CACHE.clear()
    if key is not None:
        _CAPTURE_CACHE.update(key=key, capture=cap)
    return cap


def capture_stem(path: str) -> str:
    name = os.path.basename(path)
    if name.endswith(worker.CAPTURE_SUFFIX):
        return name[: -len(worker.CAPTURE_SUFFIX)]
    return os.path.splitext(name)[0] or "capture"


def tag_redraw(context=None) -> None:
    """Redraw every 3D View sidebar (where the progress bar is)."""
    wm = (context or bpy.context).window_manager
    for window in getattr(wm, "windows", ()):
        screen = window.screen
        if screen is None:
            continue
        for area in screen.areas:
            if area.type == 'VIEW_3D':
                for region in area.regions:
                    if region.type == 'UI':
                        region.tag_redraw()


def _show_progress(props, job: worker.WorkerJob) -> None:
    p = job.progress
    props.progress = p.factor
    props.progress_text = p.text()
    props.fps = p.fps
    props.eta = -1.0 if p.eta is None else float(p.eta)


def _over_sidebar(context, event) -> bool:
    screen = getattr(context.window, "screen", None)
    if screen is None:
        return False
    x, y = event.mouse_x, event.mouse_y
    for area in screen.areas:
        if area.type != 'VIEW_3D':
            continue
        for region in area.regions:
            if region.type == 'UI' and region.x <= x < region.x + region.width \
                    and region.y <= y < region.y + region.height:
                return True
    return False


# --------------------------------------------------------------------------------------
# Operators


class WorkerJobOperator:
    """The modal machinery of an operator that runs one worker command: start it, follow its
    JSON progress on a timer (the sidebar's progress bar), Esc / right-click over the sidebar
    / Cancel stop it and delete its partial output, a failure saves the worker's log. A
    mixin (not a bpy.types.Operator: Blender registers each operator class on its own);
    an operator adds ``bpy.types.Operator`` and defines ``noun``, ``_problem`` (classmethod:
    why it cannot start), ``_command`` (command line, output file, status line) and
    ``_done`` (apply the finished job to the scene; returns the status line). One worker
    job runs at a time (``active_job``)."""

    noun = "Job"
    _timer = None
    _job = None

    @classmethod
    def poll(cls, context):
        return properties.poll_ok(cls, cls._problem(context))

    # -- start ---------------------------------------------------------------------------

    def _start(self, context) -> worker.WorkerJob | None:
        props = context.scene.emoca
        # Checked again here: the inputs or the worker Python may have gone since poll().
        problem = self._problem(context)
        if problem:
            self.report({'ERROR'}, f"{self.noun} cannot start: {problem}")
            props.last_error = problem
            props.status = f"{self.noun} not started"
            return None
        cmd, out, status = self._command(context)
        job = worker.WorkerJob(cmd, output=out)
        try:
            job.start()
        except worker.WorkerError as e:
            self.report({'ERROR'}, str(e))
            props.last_error = str(e)
            props.status = f"{self.noun} not started"
            return None
        _ACTIVE["job"] = job
        _ACTIVE["last"] = job
        self._job = job
        props.is_capturing = True
        props.progress = 0.0
        props.progress_text = "starting the worker"
        props.fps = 0.0
        props.eta = -1.0
        props.status = status
        props.last_error = ""
        props.last_log = ""
        return job

    def invoke(self, context, event):
        job = self._start(context)
        if job is None:
            return {'CANCELLED'}
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_INTERVAL, window=context.window)
        wm.modal_handler_add(self)
        tag_redraw(context)
        return {'RUNNING_MODAL'}

    def execute(self, context):
        """Blocking run, for scripts and background mode."""
        job = self._start(context)
        if job is None:
            return {'CANCELLED'}
        props = context.scene.emoca
        last = [0.0]

        def show(j):
            _show_progress(props, j)
            now = time.monotonic()
            if now - last[0] > 1.0:
                last[0] = now
                print(f"EMOCA {self.noun.lower()}: {j.progress.text()}", flush=True)

        try:
            job.wait(on_progress=show)
        except KeyboardInterrupt:
            job.cancel()
        return self._finish(context, job)

    # -- run -----------------------------------------------------------------------------

    def modal(self, context, event):
        job = self._job
        if job is None:
            return self._finish(context, None)
        if event.type == 'TIMER':
            job.poll()
            props = context.scene.emoca
            _show_progress(props, job)
            tag_redraw(context)
            if not job.running:
                return self._finish(context, job)
            return {'PASS_THROUGH'}
        if event.value == 'PRESS' and (
                event.type == 'ESC' or
                (event.type == 'RIGHTMOUSE' and _over_sidebar(context, event))):
            job.cancel()
            return self._finish(context, job)
        return {'PASS_THROUGH'}

    def cancel(self, context):
        # Blender calls this when the modal handler is removed (e.g. loading another file).
        if self._job is not None and self._job.running:
            self._job.cancel()
        self._finish(context, self._job)

    def _finish(self, context, job):
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        if _ACTIVE["job"] is job:
            _ACTIVE["job"] = None
        self._job = None
        props = getattr(context.scene, "emoca", None)
        if props is None or job is None:
            return {'CANCELLED'}
        props.is_capturing = False
        try:
            if job.state == worker.DONE:
                props.progress = 1.0
                props.status = self._done(context, job)
                props.progress_text = ""
                self.report({'INFO'}, props.status)
                return {'FINISHED'}
            if job.state == worker.CANCELLED:
                props.status = f"{self.noun} cancelled"
                props.progress_text = ""
                self.report({'WARNING'}, f"{self.noun} cancelled; partial output deleted")
                return {'CANCELLED'}
            log = job.save_log()
            props.last_error = job.error or "the worker failed"
            props.last_log = str(log) if log else ""
            props.status = f"{self.noun} failed"
            props.progress_text = ""
            where = f" (log: {log})" if log else ""
            self.report({'ERROR'}, f"{self.noun} failed: {props.last_error}{where}")
            return {'CANCELLED'}
        finally:
            tag_redraw(context)


class EMOCA_OT_capture(WorkerJobOperator, bpy.types.Operator):
    """Capture the actor's face from the video into a .capture.npz file, in a separate worker
    process (Esc cancels)"""

    bl_idname = "emoca.capture"
    bl_label = "Capture Face from Video"
    bl_options = {'REGISTER'}

    noun = "Capture"

    @classmethod
    def _problem(cls, context) -> str | None:
        """Why the job cannot start now (one sentence, shown as the disabled reason)."""
        return capture_problem(context)

    def _command(self, context) -> tuple[list[str], str, str]:
        """(worker command line, its output file, the status line while it runs)."""
        props = context.scene.emoca
        video = properties.abspath(props.video_path)
        out = output_path(props)
        python, _source = properties.worker_python(context)
        models, _problem = capture_models(context)   # _start checked the problem
        cmd = worker.capture_command(
            python, video, out, backend=props.backend, device=properties.device(context),
            face_index=props.face_index, filter_strength=props.filter_strength,
            cache_dir=properties.cache_folder(context), **models)
        return cmd, out, f"Capturing {os.path.basename(video)}"

    def _done(self, context, job) -> str:
        """Apply a finished job to the scene; returns the status line."""
        props = context.scene.emoca
        props.capture_path = str(job.output)
        meta = capture_summary(str(job.output))
        text = summary_text(meta) if meta else "done"
        cached = any(e.get("stage") == "done" and e.get("cached") for e in job.events)
        return f"Captured {os.path.basename(str(job.output))}: {text}" + \
            (" (from cache)" if cached else "")


class EMOCA_OT_cancel_capture(bpy.types.Operator):
    """Stop the running capture and delete its partial output"""

    bl_idname = "emoca.cancel_capture"
    bl_label = "Cancel Capture"
    bl_options = {'REGISTER'}

    @classmethod
    def poll(cls, context):
        if active_job() is None:
            cls.poll_message_set("No capture is running")
            return False
        return True

    def execute(self, context):
        if not cancel_active_job():
            self.report({'WARNING'}, "No capture is running")
            return {'CANCELLED'}
        # The modal operator sees the job cancelled at its next timer tick and cleans up;
        # the scene shows it at once (also when no modal operator is left to do it).
        props = context.scene.emoca
        props.is_capturing = False
        props.status = "Capture cancelled"
        props.progress_text = ""
        self.report({'INFO'}, "Capture cancelled; partial output deleted")
        tag_redraw(context)
        return {'FINISHED'}


CLASSES = (EMOCA_OT_capture, EMOCA_OT_cancel_capture)
