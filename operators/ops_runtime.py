"""Install Runtime: create or repair the worker's Python environment, without admin rights.

A virtual environment in the extension's user folder (``properties.runtime_venv``) with the
pinned worker requirements (``runtime.plan_install``). The commands are shown before anything
runs ("Show Commands", ``dry_run=True``: they are reported, printed and kept in the
preferences' status), and run in a separate process (``runtime.py run PLAN.json``) followed
by a timer like the capture, so Blender never freezes; Esc cancels. pip downloads from the
Python Package Index, so the operator refuses when ``bpy.app.online_access`` is off, unless a
local wheel folder is chosen (``--no-index --find-links``, no network). torch, on request, is
built for what the worker runs on (preferences: Run On CPU or NVIDIA GPU with a CUDA version,
the PyTorch wheel index; see ``runtime.plan_install``).

Check Device runs ``python -m emoca_blender device`` in the worker Python (the core's
``device_info``) and shows its lines in the preferences and the Capture panel: torch's build,
the GPU or why there is none, the precision and batch size EMOCA will use.
"""
import os
import sys
import tempfile
import time

import bpy
from bpy.props import BoolProperty, StringProperty

from . import properties, runtime, worker

TIMER_INTERVAL = 0.2

#: The last plan made (tests and scripts read the commands from here).
LAST: dict = {"plan": None, "job": None, "device_job": None, "device": None}


def make_plan(context, base_python: str = "", recreate: bool = False) -> runtime.InstallPlan:
    prefs = properties.get_prefs(context)
    wheels = properties.abspath(prefs.runtime_wheel_folder) or None
    return runtime.plan_install(properties.runtime_venv(), base_python or sys.executable,
                                with_torch=prefs.runtime_with_torch, wheel_dir=wheels,
                                recreate=recreate,
                                torch_target=getattr(prefs, "runtime_torch_target", "cpu"),
                                cuda=getattr(prefs, "runtime_cuda", runtime.CUDA_BUILDS[0][0]),
                                torch_index=getattr(prefs, "runtime_torch_index", "")
                                or runtime.TORCH_INDEX)


def online_problem(plan: runtime.InstallPlan) -> str | None:
    if plan.needs_network and not bpy.app.online_access:
        return ("Online Access is disabled (Edit > Preferences > System > Network): allow it, "
                "or choose a Wheel Folder to install from, or run the commands yourself "
                "(Show Commands)")
    return None


def _set_status(context, text: str) -> None:
    prefs = properties.get_prefs(context)
    if hasattr(prefs, "bl_rna"):
        prefs.runtime_status = text


class _ModalJob:
    """Following one worker job on a timer (Install Runtime, Check Device): the operator
    starts ``self._job``, calls ``_follow``; ``_on_progress`` shows what arrives, ``_done``
    applies the end; Esc cancels. Blender never waits on the job."""

    _timer = None
    _job = None

    def _follow(self, context):
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_INTERVAL, window=context.window)
        wm.modal_handler_add(self)
        return {'RUNNING_MODAL'}

    def _on_progress(self, context, job) -> None:
        pass

    def modal(self, context, event):
        job = self._job
        if job is None:
            return self._finish(context, None)
        if event.type == 'TIMER':
            if job.poll():
                self._on_progress(context, job)
            if not job.running:
                return self._finish(context, job)
            return {'PASS_THROUGH'}
        if event.type == 'ESC' and event.value == 'PRESS':
            job.cancel()
            return self._finish(context, job)
        return {'PASS_THROUGH'}

    def _finish(self, context, job):
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        self._job = None
        if job is None:
            return {'CANCELLED'}
        return self._done(context, job)


def _redraw(context) -> None:
    for area in getattr(getattr(context, "screen", None), "areas", ()) or ():
        area.tag_redraw()


class EMOCA_OT_install_runtime(_ModalJob, bpy.types.Operator):
    """Create or repair the worker's Python environment (a virtual environment in the
    add-on's user folder with the pinned packages); no admin rights needed"""

    bl_idname = "emoca.install_runtime"
    bl_label = "Install Runtime"
    bl_options = {'REGISTER'}

    dry_run: BoolProperty(
        name="Show Commands Only",
        description="Only show the commands that would run (nothing is installed)",
        default=False, options={'SKIP_SAVE'})
    recreate: BoolProperty(
        name="Recreate", description="Delete and recreate the environment first",
        default=False, options={'SKIP_SAVE'})
    base_python: StringProperty(
        name="Base Python", description="Python that creates the environment (empty: "
        "Blender's own Python)", default="", subtype='FILE_PATH', options={'SKIP_SAVE'})

    @classmethod
    def poll(cls, context):
        job = LAST.get("job")
        if job is not None and job.running:
            cls.poll_message_set("The runtime is being installed")
            return False
        return True

    def _plan(self, context):
        try:
            plan = make_plan(context, properties.abspath(self.base_python), self.recreate)
        except (OSError, ValueError) as e:
            self.report({'ERROR'}, f"Install Runtime: {e}")
            return None
        LAST["plan"] = plan
        return plan

    def _show(self, context, plan) -> None:
        lines = plan.text()
        head = [f"Would run ({len(lines)} commands):"] + [f"$ {c}" for c in lines] + plan.notes
        problem = online_problem(plan)
        if problem:
            head.append(problem)
        _set_status(context, "\n".join(head))
        print("EMOCA Install Runtime (dry run):\n" + "\n".join(head), flush=True)
        self.report({'INFO'}, f"Install Runtime would run {len(lines)} commands (shown in "
                    "the add-on preferences and on the console)")

    def _start(self, context, plan):
        problem = online_problem(plan)
        if problem:
            self.report({'ERROR'}, problem)
            _set_status(context, problem)
            return None
        folder = os.path.dirname(plan.venv)
        try:
            os.makedirs(folder, exist_ok=True)
            fd, plan_file = tempfile.mkstemp(prefix="install_plan.", suffix=".json",
                                             dir=folder)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(plan.to_json())
        except OSError as e:
            self.report({'ERROR'}, f"Install Runtime: cannot write in {folder}: {e}")
            return None
        script = os.path.join(os.path.dirname(os.path.abspath(runtime.__file__)), "runtime.py")
        base = plan.base_python
        job = worker.WorkerJob([base, "-u", script, "run", plan_file], output=None, cwd=None)
        try:
            job.start()
        except worker.WorkerError as e:
            self.report({'ERROR'}, str(e))
            return None
        job.plan_file = plan_file
        LAST["job"] = job
        self._job = job
        _set_status(context, f"Installing into {plan.venv}...")
        return job

    def execute(self, context):
        plan = self._plan(context)
        if plan is None:
            return {'CANCELLED'}
        if self.dry_run:
            self._show(context, plan)
            return {'FINISHED'}
        job = self._start(context, plan)
        if job is None:
            return {'CANCELLED'}
        last = [0.0]

        def show(j):
            if time.monotonic() - last[0] > 2.0:
                last[0] = time.monotonic()
                print(f"EMOCA Install Runtime: {j.progress.message or j.progress.text()}",
                      flush=True)
        try:
            job.wait(on_progress=show)
        except KeyboardInterrupt:
            job.cancel()
        return self._finish(context, job)

    def invoke(self, context, event):
        plan = self._plan(context)
        if plan is None:
            return {'CANCELLED'}
        if self.dry_run:
            self._show(context, plan)
            return {'FINISHED'}
        if self._start(context, plan) is None:
            return {'CANCELLED'}
        return self._follow(context)

    def _on_progress(self, context, job) -> None:
        _set_status(context, f"Installing: {job.progress.message or job.progress.text()}")
        _redraw(context)

    def _done(self, context, job):
        try:
            os.unlink(getattr(job, "plan_file", ""))
        except OSError:
            pass
        log = job.save_log(os.path.join(os.path.dirname(LAST["plan"].venv),
                                        "install_runtime.log"))
        if job.state == worker.DONE:
            _set_status(context, f"Runtime ready: {LAST['plan'].python} (Check Device shows "
                        "what it runs on)")
            self.report({'INFO'}, f"Worker runtime installed in {LAST['plan'].venv}")
            return {'FINISHED'}
        if job.state == worker.CANCELLED:
            _set_status(context, "Install cancelled (run it again to repair)")
            self.report({'WARNING'}, "Install Runtime cancelled")
            return {'CANCELLED'}
        msg = f"Install Runtime failed: {job.error}" + (f" (log: {log})" if log else "")
        _set_status(context, msg)
        self.report({'ERROR'}, msg)
        return {'CANCELLED'}


# --------------------------------------------------------------------------------------
# Check Device: what the worker's torch sees


def device_command(context) -> list[str]:
    """``python -u -m emoca_blender device --device D --progress json`` in the worker
    Python (the core's ``device_info``: imports torch only)."""
    python, _source = properties.worker_python(context)
    return worker.core_command(python, "device", "--device", properties.device(context))


def device_result(job: worker.WorkerJob) -> tuple[dict | None, list[str]]:
    """(the worker's device report, the lines to show) from a finished Check Device job."""
    info = next((e.get("device") for e in reversed(job.events)
                 if e.get("stage") == "done" and isinstance(e.get("device"), dict)), None)
    if job.state == worker.DONE and info is not None:
        return info, [str(t) for t in info.get("lines") or ()]
    if job.state == worker.CANCELLED:
        return None, ["Check Device cancelled"]
    return None, [f"Check Device failed: {job.error or 'the worker said nothing'}"]


def _set_device_status(context, text: str) -> None:
    prefs = properties.get_prefs(context)
    if hasattr(prefs, "bl_rna"):
        prefs.device_status = text
    else:
        type(prefs).device_status = text


class EMOCA_OT_check_device(_ModalJob, bpy.types.Operator):
    """Ask the worker what it runs the FLAME and EMOCA networks on: torch's version and
    build, the GPU (or why there is none), the precision and batch size"""

    bl_idname = "emoca.check_device"
    bl_label = "Check Device"
    bl_options = {'REGISTER'}

    @classmethod
    def poll(cls, context):
        job = LAST.get("device_job")
        if job is not None and job.running:
            cls.poll_message_set("The worker is being asked")
            return False
        python, source = properties.worker_python(context)
        return properties.poll_ok(cls, None if os.path.isfile(python) else
                                  f"Worker Python not found: {python} ({source})")

    def _start(self, context):
        job = worker.WorkerJob(device_command(context), output=None)
        try:
            job.start()
        except worker.WorkerError as e:
            self.report({'ERROR'}, str(e))
            _set_device_status(context, f"Check Device failed: {e}")
            return None
        LAST["device_job"] = job
        self._job = job
        _set_device_status(context, "Asking the worker (importing torch)...")
        return job

    def execute(self, context):
        job = self._start(context)
        if job is None:
            return {'CANCELLED'}
        try:
            job.wait(timeout=120)
        except KeyboardInterrupt:
            pass
        if job.running:
            job.cancel()
        return self._finish(context, job)

    def invoke(self, context, event):
        if self._start(context) is None:
            return {'CANCELLED'}
        return self._follow(context)

    def _done(self, context, job):
        info, lines = device_result(job)
        LAST["device"] = info
        _set_device_status(context, "\n".join(lines))
        _redraw(context)
        print("EMOCA Check Device:\n  " + "\n  ".join(lines), flush=True)
        if info is None:
            self.report({'ERROR'}, lines[0])
            return {'CANCELLED'}
        self.report({'INFO'}, info.get("summary") or lines[-1])
        return {'FINISHED'}


CLASSES = (EMOCA_OT_install_runtime, EMOCA_OT_check_device)
