"""Takes in Blender: a take list (``scene.emoca_takes``, shown as a UIList in the Retarget
panel), captured in one worker job, each baked onto the character as its own action named
after the take and stacked on the NLA (:mod:`.takes`).

* **Add Videos** (several files, or a folder with none picked: every video in it) queues
  takes; **Add Captures** adds existing ``.capture.npz`` files as captured takes.
* **Capture Takes** runs ONE worker (``capture V1 V2 ... -o FOLDER --stdin-control``): a
  queue with a progress bar per take; a take's X cancels that take (queued: skipped;
  running: stopped, nothing written), *Cancel Capture* (or Esc) cancels the job and keeps
  the takes already captured. With *Retarget When Captured* on, the captured takes are
  baked onto the character when the job ends.
* **Retarget Takes** bakes every captured take not baked yet (in list order) onto the
  Retarget panel's targets with its mapping, bones and key reduction; **Re-bake** bakes
  one take again in its place (later takes move along if it grew).
* Clicking a take **switches** the timeline to it (the scene's range is the take's, the
  reference video shows its clip when the reference is in the scene); **Audition** also
  plays it; **Show All** sets the range to every take.

Timing: every take is keyed at its clip's real frame times in the scene's rate; with the
scene's *Scene Rate* set to *Retime Scene to Clip*, the scene first takes the first take's
clip rate (one rate for all takes: the exports need it).
"""
import os

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty,
                       IntProperty, PointerProperty, StringProperty)

from . import ops_capture, properties, worker
from .ops_capture import WorkerJobOperator, tag_redraw

_STATES = [('QUEUED', "Queued", "Waiting to be captured", 'TIME', 0),
           ('CAPTURING', "Capturing", "Being captured by the worker", 'REC', 1),
           ('CAPTURED', "Captured", "Captured, not on the character yet", 'FILE_MOVIE', 2),
           ('BAKED', "Baked", "On the character (an action and NLA strips)", 'ACTION', 3),
           ('FAILED', "Failed", "The capture failed (see the message)", 'ERROR', 4),
           ('CANCELLED', "Cancelled", "Cancelled before it was captured", 'CANCEL', 5)]
ICONS = {s[0]: s[3] for s in _STATES}
VIDEO_GLOB = "*.mp4;*.mov;*.m4v;*.avi;*.mkv;*.webm;*.mpg;*.mpeg;*.wmv"


def _switch(self, context):
    """The active take changed (a click in the list): show it on the timeline."""
    i = self.active
    if 0 <= i < len(self.items) and self.items[i].state == 'BAKED':
        try:
            switch_to(context, self.items[i])
        except Exception as e:  # noqa: BLE001 - a click must never raise
            self.status = f"Cannot switch to {self.items[i].name}: {e}"


class EMOCA_Take(bpy.types.PropertyGroup):
    name: StringProperty(name="Take", description="The take's name: its action and NLA "
                         "track on the character are named after it")
    video: StringProperty(name="Video", subtype='FILE_PATH')
    capture: StringProperty(name="Capture", subtype='FILE_PATH')
    state: EnumProperty(name="State", items=_STATES, default='QUEUED')
    progress: FloatProperty(name="Progress", min=0.0, max=1.0, subtype='FACTOR',
                            options={'SKIP_SAVE'})
    message: StringProperty(name="Message")
    frame_start: IntProperty(name="First Frame")
    frame_end: IntProperty(name="Last Frame")
    fps: FloatProperty(name="Clip Rate", description="The clip's frame rate")
    frames: IntProperty(name="Frames", description="Captured frames")
    job_index: IntProperty(name="Job Index", default=-1, options={'SKIP_SAVE'},
                           description="This take's index in the running capture job")


class EMOCA_TakeList(bpy.types.PropertyGroup):
    items: CollectionProperty(type=EMOCA_Take)
    active: IntProperty(name="Active Take", default=0, min=0, update=_switch)
    folder: StringProperty(
        name="Captures Folder", subtype='DIR_PATH', default="",
        description="Where Capture Takes writes each take's .capture.npz (empty: the folder "
                    "of the first video)")
    retarget_after: BoolProperty(
        name="Retarget When Captured", default=True,
        description="When the capture job ends, bake the captured takes onto the character "
                    "(the Retarget panel's targets)")
    status: StringProperty(name="Status", default="")


# --------------------------------------------------------------------------------------
# Helpers


def take_list(context):
    return getattr(context.scene, "emoca_takes", None)


def character_objects(context) -> list:
    """The character the takes go on: the Retarget panel's meshes with shape keys and its
    armature."""
    from . import ops_retarget
    meshes, arm = ops_retarget.resolve_targets(context)
    return [o for o in [*meshes, arm] if o is not None]


def _unique(tl, stem: str) -> str:
    from .scene import takes
    return takes.take_name(stem, {it.name for it in tl.items})


def find(context, item):
    """The :class:`takes.Take` of a list item on the character, or None."""
    from .scene import takes
    objs = character_objects(context)
    return next((t for t in takes.find_takes(objs) if t.name == item.name), None)


def switch_to(context, item, play: bool = False) -> None:
    """Show take ``item``: the scene's range is its frames, the current frame its first,
    the reference video its clip (when the scene has the reference); ``play`` starts
    playback."""
    from .scene import takes
    t = find(context, item)
    if t is None:
        raise ValueError(f"{item.name} is not on the character (Retarget Takes)")
    takes.show_take(context.scene, t)
    item.frame_start, item.frame_end = t.frames
    _show_reference(context, item, t)
    if play:
        screen = getattr(context, "screen", None)
        if screen is not None and not screen.is_animation_playing:
            try:
                bpy.ops.screen.animation_play()
            except RuntimeError:
                pass


def _show_reference(context, item, take) -> None:
    """When the scene shows a reference video (``reference_video``), make it this take's
    clip, placed as it was. Nothing otherwise (never an error)."""
    try:
        from .scene import reference_video as rv
    except ImportError:
        return
    try:
        scene = context.scene
        plane = rv.find(scene)
        if plane is None or not item.capture or not os.path.isfile(item.capture):
            return
        st = dict(rv.settings(plane))
        if st.get("video") and item.video and os.path.abspath(st["video"]) == \
                os.path.abspath(item.video) and st.get("frame_start") == take.frames[0]:
            return
        from ._core import capture_file
        cap = capture_file.load_capture(item.capture)
        ref = rv.from_capture(cap, frame_start=take.frames[0])
        actors = [bpy.data.objects.get(n) for n in st.get("actor", ())]
        rv.add(scene, ref, [a for a in actors if a is not None],
               placement=st.get("placement", "SIDE"), opacity=float(st.get("opacity", 1.0)),
               visible=bool(st.get("show", True)), sound=bool(st.get("sound_on", True)))
    except Exception as e:  # noqa: BLE001 - the reference is a convenience
        print(f"EMOCA: reference video for take {item.name}: {e}")


def bake_item(context, item, start=None) -> dict:
    """Bake one captured take onto the character (the Retarget panel's mapping, bones and
    key reduction), at ``start`` (default: where it already is, else after the last take),
    as its own action named after it on the NLA. Returns the bake summary."""
    from . import ops_retarget
    from .scene import rig_build, takes
    from ._core import capture_file
    objs = character_objects(context)
    if not objs:
        raise ValueError(ops_retarget.targets_problem(context) or "no character")
    if not item.capture or not os.path.isfile(properties.abspath(item.capture)):
        raise ValueError(f"{item.name}: capture file not found: {item.capture or '(none)'}")
    cap = capture_file.load_capture(properties.abspath(item.capture))
    existing = find(context, item)
    if start is None:
        start = existing.frames[0] if existing is not None else \
            takes.next_start(objs, context.scene.emoca.frame_start)
    summary, _n, warnings = ops_retarget.run_retarget(
        context, cap, ops_retarget.settings(context), frame_start=int(start),
        action_name=item.name, one_action=True, set_scene=False, timing="scene",
        use_range=False)
    t = takes.stack_take(objs, bpy.data.actions[item.name], item.name, start,
                         capture=properties.abspath(item.capture))
    reel = takes.find_takes(objs)
    if any(a.frames[1] >= b.frames[0] for a, b in zip(reel, reel[1:])):
        reel = takes.relayout(objs)      # it grew into the next take: move those along
    for it in take_list(context).items:
        tk = next((x for x in reel if x.name == it.name), None)
        if tk is not None:
            it.frame_start, it.frame_end = tk.frames
    item.state = 'BAKED'
    item.fps = float(cap.fps)
    item.frames = int(cap.n_frames)
    item.message = "; ".join(warnings)[:200]
    summary["take_frames"] = t.frames
    summary["rate"] = rig_build.scene_rate(context.scene)
    return summary


def bake_captured(context, items=None) -> tuple[list[str], list[str]]:
    """Bake every captured (not yet baked) take, in list order (or ``items``); the scene
    first takes the first take's clip rate when the Scene Rate says Retime Scene to Clip
    and the character has no take yet. Returns (baked names, problems)."""
    from .scene import rig_build, takes
    from ._core import capture_file
    tl = take_list(context)
    items = [it for it in tl.items if it.state == 'CAPTURED'] if items is None else items
    done, problems = [], []
    objs = character_objects(context)
    if items and objs and properties.timing(context) == "clip" and not takes.find_takes(objs):
        try:
            cap = capture_file.load_capture(properties.abspath(items[0].capture))
            rig_build.set_scene_rate(context.scene, cap.fps)
        except capture_file.CaptureError as e:
            problems.append(str(e))
    for it in items:
        try:
            bake_item(context, it)
            done.append(it.name)
        except (ValueError, capture_file.CaptureError) as e:
            it.message = str(e)[:200]
            problems.append(f"{it.name}: {e}")
    reel = takes.find_takes(objs) if objs else []
    if reel and done:
        takes.show_take(context.scene, reel[0], reel)
    return done, problems


def _sync(context, job, final: bool = False) -> None:
    """The list items of a running (or finished) capture job take its per-take state."""
    tl = take_list(context)
    if tl is None or job is None:
        return
    for it in tl.items:
        if it.job_index < 0:
            continue
        info = job.takes.get(it.job_index, {})
        st = info.get("state")
        if st == "running":
            it.state = 'CAPTURING'
            it.progress = float(info.get("progress", 0.0) or 0.0)
        elif st == "done":
            it.state = 'CAPTURED'
            it.progress = 1.0
            it.capture = str(info.get("output") or it.capture)
            it.fps = float(info.get("fps") or 0.0)
            it.frames = int(info.get("frames") or 0)
            it.message = "from cache" if info.get("cached") else ""
        elif st == "failed":
            it.state = 'FAILED'
            it.message = str(info.get("message") or "failed")[:200]
        elif st == "cancelled":
            it.state = 'CANCELLED'
            it.message = ""
        elif info.get("cancel_requested"):
            it.message = "cancelling"
        if final:
            if it.state in ('QUEUED', 'CAPTURING'):
                it.state = 'CANCELLED' if job.state == worker.CANCELLED else 'FAILED'
                if it.state == 'FAILED' and not it.message:
                    it.message = job.error or "the worker stopped before this take"
            it.job_index = -1


def _output_folder(tl, items) -> str:
    folder = properties.abspath(tl.folder)
    if not folder and items:
        folder = os.path.dirname(properties.abspath(items[0].video))
    return folder


def capture_takes_problem(context) -> str | None:
    """Why Capture Takes cannot start now, or None."""
    tl = take_list(context)
    if tl is None or getattr(context.scene, "emoca", None) is None:
        return "The EMOCA add-on is not registered"
    todo = _to_capture(tl)
    if not todo:
        return "Add videos to the take list first (Add Videos)"
    missing = [it for it in todo if not os.path.isfile(properties.abspath(it.video))]
    if missing:
        return f"Video not found: {os.path.basename(missing[0].video) or missing[0].name}"
    folder = _output_folder(tl, todo)
    if folder and not os.path.isdir(folder):
        return f"Captures folder does not exist: {folder}"
    return ops_capture.capture_models(context)[1] or ops_capture.worker_problem(context)


def _to_capture(tl) -> list:
    return [it for it in tl.items if it.video and it.state in ('QUEUED', 'FAILED', 'CANCELLED')]


def _index(context, index: int):
    tl = take_list(context)
    i = tl.active if index < 0 else index
    return (tl.items[i], i) if 0 <= i < len(tl.items) else (None, i)


# --------------------------------------------------------------------------------------
# Operators


class EMOCA_OT_take_add_videos(bpy.types.Operator):
    """Queue videos as takes: pick several files, or pick none to take every video in the
    folder"""

    bl_idname = "emoca.take_add_videos"
    bl_label = "Add Videos as Takes"
    bl_options = {'REGISTER', 'UNDO'}

    files: CollectionProperty(type=bpy.types.OperatorFileListElement,
                              options={'HIDDEN', 'SKIP_SAVE'})
    directory: StringProperty(subtype='DIR_PATH', options={'HIDDEN', 'SKIP_SAVE'})
    filter_glob: StringProperty(default=VIDEO_GLOB, options={'HIDDEN'})

    @classmethod
    def poll(cls, context):
        return properties.poll_ok(cls, None if take_list(context) is not None else
                                  "The EMOCA add-on is not registered")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {'RUNNING_MODAL'}

    def execute(self, context):
        from ._core import core
        import importlib
        core_takes = importlib.import_module(core.__name__ + ".capture.takes")
        folder = properties.abspath(self.directory)
        names = [f.name for f in self.files if f.name]
        try:
            videos = core_takes.expand_videos([os.path.join(folder, n) for n in names]
                                              if names else [folder])
        except Exception as e:  # noqa: BLE001 - BadInput: one line
            self.report({'ERROR'}, str(e))
            return {'CANCELLED'}
        tl = take_list(context)
        have = {os.path.abspath(properties.abspath(it.video)) for it in tl.items if it.video}
        added = 0
        for v in videos:
            if os.path.abspath(str(v)) in have:
                continue
            it = tl.items.add()
            it.name = _unique(tl, core_takes.take_stem(v))
            it.video = str(v)
            it.state = 'QUEUED'
            added += 1
        tl.status = f"Queued {added} takes" + (f" ({len(videos) - added} already listed)"
                                               if added < len(videos) else "")
        self.report({'INFO'}, tl.status)
        return {'FINISHED'}


class EMOCA_OT_take_add_captures(bpy.types.Operator):
    """Add captures you already have (.capture.npz) as takes"""

    bl_idname = "emoca.take_add_captures"
    bl_label = "Add Captures as Takes"
    bl_options = {'REGISTER', 'UNDO'}

    files: CollectionProperty(type=bpy.types.OperatorFileListElement,
                              options={'HIDDEN', 'SKIP_SAVE'})
    directory: StringProperty(subtype='DIR_PATH', options={'HIDDEN', 'SKIP_SAVE'})
    filter_glob: StringProperty(default="*.capture.npz", options={'HIDDEN'})

    poll = EMOCA_OT_take_add_videos.poll

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {'RUNNING_MODAL'}

    def execute(self, context):
        folder = properties.abspath(self.directory)
        names = [f.name for f in self.files if f.name]
        if not names and os.path.isdir(folder):
            names = sorted(n for n in os.listdir(folder) if n.endswith(worker.CAPTURE_SUFFIX))
        tl = take_list(context)
        added = []
        for n in names:
            path = os.path.join(folder, n)
            if not os.path.isfile(path) or not n.endswith(worker.CAPTURE_SUFFIX):
                self.report({'WARNING'}, f"Not a capture file: {n}")
                continue
            meta = ops_capture.capture_summary(path) or {}
            it = tl.items.add()
            it.name = _unique(tl, ops_capture.capture_stem(path))
            it.capture = path
            src = meta.get("source")
            it.video = str(src.get("path", "")) if isinstance(src, dict) else ""
            it.fps = float(meta.get("fps") or 0.0)
            it.frames = int(meta.get("frame_count") or 0)
            it.state = 'CAPTURED'
            added.append(it.name)
        if not added:
            self.report({'ERROR'}, "No capture file (.capture.npz) picked")
            return {'CANCELLED'}
        tl.status = f"Added {len(added)} captured takes"
        self.report({'INFO'}, tl.status)
        return {'FINISHED'}


class EMOCA_OT_capture_takes(WorkerJobOperator, bpy.types.Operator):
    """Capture every queued take in ONE worker process, one after another (a progress bar
    per take; a take's X cancels it, Esc or Cancel Capture cancels the job and keeps the
    takes already captured)"""

    bl_idname = "emoca.capture_takes"
    bl_label = "Capture Takes"
    bl_options = {'REGISTER'}

    noun = "Takes capture"

    @classmethod
    def _problem(cls, context) -> str | None:
        return capture_takes_problem(context)

    def _command(self, context):
        props = context.scene.emoca
        tl = take_list(context)
        todo = _to_capture(tl)
        folder = _output_folder(tl, todo)
        python, _source = properties.worker_python(context)
        models, _problem = ops_capture.capture_models(context)
        for i, it in enumerate(todo):
            it.job_index = i
            it.state = 'QUEUED'
            it.progress = 0.0
            it.message = ""
        cmd = worker.takes_capture_command(
            python, [properties.abspath(it.video) for it in todo], folder,
            backend=props.backend, device=properties.device(context),
            face_index=props.face_index, filter_strength=props.filter_strength,
            cache_dir=properties.cache_folder(context), **models)
        tl.status = f"Capturing {len(todo)} takes into {folder}"
        return cmd, None, f"Capturing {len(todo)} takes"

    # (the machinery is called as WorkerJobOperator.x(self, ...), not super(), so that a
    # stand-in for the operator can drive it: tests/operators/test_takes_ui.py)
    def _start(self, context):
        job = WorkerJobOperator._start(self, context)
        if job is None:
            tl = take_list(context)
            for it in tl.items:
                it.job_index = -1
        return job

    def modal(self, context, event):
        job = self._job
        result = WorkerJobOperator.modal(self, context, event)
        if job is not None and event.type == 'TIMER':
            _sync(context, job)
        return result

    def _apply(self, context, job) -> str:
        """The finished (or stopped) job's takes: states, then the captured ones baked when
        Retarget When Captured is on and the character is set. Returns a status line."""
        from . import ops_retarget
        _sync(context, job, final=True)
        tl = take_list(context)
        got = [it for it in tl.items if it.state == 'CAPTURED']
        n_failed = sum(1 for it in tl.items if it.state == 'FAILED')
        line = f"Captured {len(got)} takes" + (f", {n_failed} failed" if n_failed else "")
        if got and tl.retarget_after:
            problem = ops_retarget.targets_problem(context)
            if problem:
                line += f"; to bake them: {problem[0].lower()}{problem[1:]}, then Retarget Takes"
            else:
                done, problems = bake_captured(context, got)
                line += f"; baked {len(done)} onto the character"
                if problems:
                    line += f" ({len(problems)} failed: {problems[0]})"
        tl.status = line
        return line

    def _done(self, context, job) -> str:
        return self._apply(context, job)

    def _finish(self, context, job):
        line = None
        if job is not None and job.state in (worker.FAILED, worker.CANCELLED):
            line = self._apply(context, job)
        result = WorkerJobOperator._finish(self, context, job)
        if line and getattr(context.scene, "emoca", None) is not None:
            tl = take_list(context)
            tl.status = line
        return result


class EMOCA_OT_take_cancel(bpy.types.Operator):
    """Cancel this take in the running capture job (queued: skipped; running: stopped,
    nothing written); the other takes go on"""

    bl_idname = "emoca.take_cancel"
    bl_label = "Cancel Take"
    bl_options = {'REGISTER'}

    index: IntProperty(default=-1, options={'SKIP_SAVE'})

    @classmethod
    def poll(cls, context):
        job = ops_capture.active_job()
        return properties.poll_ok(cls, None if job is not None and job.stdin_control else
                                  "No takes capture is running")

    def execute(self, context):
        item, _i = _index(context, self.index)
        job = ops_capture.active_job()
        if item is None or job is None or item.job_index < 0:
            self.report({'WARNING'}, "This take is not in the running capture")
            return {'CANCELLED'}
        if not job.cancel_take(item.job_index):
            self.report({'WARNING'}, f"Could not cancel {item.name}")
            return {'CANCELLED'}
        item.message = "cancelling"
        self.report({'INFO'}, f"Cancelling take {item.name}")
        tag_redraw(context)
        return {'FINISHED'}


def _needs_character(cls, context, state=None) -> bool:
    from . import ops_retarget
    tl = take_list(context)
    if tl is None:
        return properties.poll_ok(cls, "The EMOCA add-on is not registered")
    problem = ops_retarget.targets_problem(context)
    if problem is None and state is not None and not any(it.state in state for it in tl.items):
        problem = "No captured take to bake (capture takes or add captures)"
    return properties.poll_ok(cls, problem)


def _has_baked(cls, context) -> bool:
    tl = take_list(context)
    ok = tl is not None and any(it.state == 'BAKED' for it in tl.items)
    return properties.poll_ok(cls, None if ok else "No take on the character yet")


class EMOCA_OT_retarget_takes(bpy.types.Operator):
    """Bake every captured take onto the character, in list order: an action per take,
    named after it, on the NLA one after another (the Retarget panel's mapping, bones and
    key reduction)"""

    bl_idname = "emoca.retarget_takes"
    bl_label = "Retarget Takes"
    bl_options = {'REGISTER', 'UNDO'}

    rebake_all: BoolProperty(name="Re-bake All", default=False,
                             description="Also bake the takes already on the character")

    @classmethod
    def poll(cls, context):
        return _needs_character(cls, context, ('CAPTURED', 'BAKED'))

    def execute(self, context):
        tl = take_list(context)
        items = [it for it in tl.items if it.state == 'CAPTURED' or
                 (self.rebake_all and it.state == 'BAKED')]
        if not items:
            self.report({'WARNING'}, "Every captured take is already baked (Re-bake All "
                                     "bakes them again)")
            return {'CANCELLED'}
        done, problems = bake_captured(context, items)
        tl.status = f"Baked {len(done)} takes onto the character" + (
            f"; {len(problems)} failed" if problems else "")
        for p in problems:
            self.report({'WARNING'}, p)
        self.report({'INFO'}, tl.status)
        return {'FINISHED'} if done else {'CANCELLED'}


class EMOCA_OT_take_rebake(bpy.types.Operator):
    """Bake this take again with the current mapping, bones and key reduction, in its place
    (the takes after it move along if it grew)"""

    bl_idname = "emoca.take_rebake"
    bl_label = "Re-bake Take"
    bl_options = {'REGISTER', 'UNDO'}

    index: IntProperty(default=-1, options={'SKIP_SAVE'})

    @classmethod
    def poll(cls, context):
        return _needs_character(cls, context, ('CAPTURED', 'BAKED'))

    def execute(self, context):
        from ._core import capture_file
        item, _i = _index(context, self.index)
        if item is None or item.state not in ('CAPTURED', 'BAKED'):
            self.report({'ERROR'}, "Pick a captured take")
            return {'CANCELLED'}
        try:
            s = bake_item(context, item)
        except (ValueError, capture_file.CaptureError) as e:
            self.report({'ERROR'}, f"Re-bake failed: {e}")
            return {'CANCELLED'}
        switch_to(context, item)
        tl = take_list(context)
        tl.status = (f"Baked {item.name}: frames {s['take_frames'][0]}-{s['take_frames'][1]}, "
                     f"{s.get('keys', 0)} keys")
        self.report({'INFO'}, tl.status)
        return {'FINISHED'}


class EMOCA_OT_take_audition(bpy.types.Operator):
    """Switch the timeline to this take and play it (with the reference video and sound
    when the scene has them)"""

    bl_idname = "emoca.take_audition"
    bl_label = "Audition Take"
    bl_options = {'REGISTER'}

    index: IntProperty(default=-1, options={'SKIP_SAVE'})
    play: BoolProperty(default=True, options={'SKIP_SAVE'})

    @classmethod
    def poll(cls, context):
        return _has_baked(cls, context)

    def execute(self, context):
        tl = take_list(context)
        item, i = _index(context, self.index)
        if item is None or item.state != 'BAKED':
            self.report({'ERROR'}, "Pick a take that is on the character")
            return {'CANCELLED'}
        tl.active = i            # switches the timeline (_switch)
        try:
            switch_to(context, item, play=self.play)
        except ValueError as e:
            self.report({'ERROR'}, str(e))
            return {'CANCELLED'}
        return {'FINISHED'}


class EMOCA_OT_takes_show_all(bpy.types.Operator):
    """Set the scene's frame range to every take on the character"""

    bl_idname = "emoca.takes_show_all"
    bl_label = "Show All Takes"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        return _has_baked(cls, context)

    def execute(self, context):
        from .scene import takes
        reel = takes.find_takes(character_objects(context))
        if not reel:
            self.report({'ERROR'}, "No take on the character")
            return {'CANCELLED'}
        takes.show_take(context.scene, reel[0], reel)
        return {'FINISHED'}


class EMOCA_OT_take_remove(bpy.types.Operator):
    """Remove the take from the list, and its action and strips from the character"""

    bl_idname = "emoca.take_remove"
    bl_label = "Remove Take"
    bl_options = {'REGISTER', 'UNDO'}

    index: IntProperty(default=-1, options={'SKIP_SAVE'})

    @classmethod
    def poll(cls, context):
        tl = take_list(context)
        problem = None if tl is not None and len(tl.items) else "The take list is empty"
        if problem is None and ops_capture.active_job() is not None:
            problem = "Wait for the capture to finish"
        return properties.poll_ok(cls, problem)

    def execute(self, context):
        from .scene import takes
        tl = take_list(context)
        item, i = _index(context, self.index)
        if item is None:
            return {'CANCELLED'}
        name = item.name
        objs = character_objects(context)
        if objs:
            takes.remove_take(objs, name)
        tl.items.remove(i)
        tl["active"] = max(0, min(tl.active, len(tl.items) - 1))
        tl.status = f"Removed {name}"
        return {'FINISHED'}


CLASSES = (EMOCA_Take, EMOCA_TakeList, EMOCA_OT_take_add_videos, EMOCA_OT_take_add_captures,
           EMOCA_OT_capture_takes, EMOCA_OT_take_cancel, EMOCA_OT_retarget_takes,
           EMOCA_OT_take_rebake, EMOCA_OT_take_audition, EMOCA_OT_takes_show_all,
           EMOCA_OT_take_remove)


def register_props():
    bpy.types.Scene.emoca_takes = PointerProperty(type=EMOCA_TakeList)


def unregister_props():
    if hasattr(bpy.types.Scene, "emoca_takes"):
        del bpy.types.Scene.emoca_takes
