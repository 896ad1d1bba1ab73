"""Install Runtime: create or repair the worker's Python environment, without admin rights.

A virtual environment in the extension's user folder (``properties.runtime_venv``) with the
pinned worker requirements (``runtime.plan_install``). The commands are shown before anything
runs ("Show Commands", ``dry_run=True``: they are reported, printed and kept in the
preferences' status), and run in a separate process (``runtime.py run PLAN.json``) followed
by a timer like the capture, so Blender never freezes; Esc cancels. pip downloads from the
Python Package Index, so the operator refuses when ``bpy.app.online_access`` is off, unless a
local wheel folder is chosen (``--no-index --find-links``, no network).
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
LAST: dict = {"plan": None, "job": None}


def make_plan(context, base_python: str = "", recreate: bool = False) -> runtime.InstallPlan:
    prefs = properties.get_prefs(context)
    wheels = properties.abspath(prefs.runtime_wheel_folder) or None
    return runtime.plan_install(properties.runtime_venv(), base_python or sys.executable,
                                with_torch=prefs.runtime_with_torch, wheel_dir=wheels,
                                recreate=recreate)


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


class EMOCA_OT_install_runtime(bpy.types.Operator):
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

    _timer = None
    _job = None

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
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_INTERVAL, window=context.window)
        wm.modal_handler_add(self)
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        job = self._job
        if job is None:
            return self._finish(context, None)
        if event.type == 'TIMER':
            if job.poll():
                _set_status(context, f"Installing: {job.progress.message or job.progress.text()}")
                for area in getattr(context.screen, "areas", ()):
                    area.tag_redraw()
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
        try:
            os.unlink(getattr(job, "plan_file", ""))
        except OSError:
            pass
        log = job.save_log(os.path.join(os.path.dirname(LAST["plan"].venv),
                                        "install_runtime.log"))
        if job.state == worker.DONE:
            _set_status(context, f"Runtime ready: {LAST['plan'].python}")
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


CLASSES = (EMOCA_OT_install_runtime,)
