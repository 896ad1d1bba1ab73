"""Emotion in Blender: the capture's emotion curves keyed on the rig, the emotion timeline
the panel draws, and emotion retrieval (a pose-library helper: "jump to the frames that
feel like this one").

* ``emoca.key_emotion``: one custom property per emotion class (``emotion_happy``...,
  plus ``emotion_valence`` / ``emotion_arousal`` when the capture has them, and
  ``emotion_refined``, the refinement's Strength on the frames it changed) on the actor
  rig (its armature, else its mesh), keyed once per captured frame as plain keyframes
  (data paths ``'["emotion_happy"]'`` on the object, in the object's own action: the
  rig's bone curves are kept).
* ``emoca.emotion_find_similar``: the frames of the scene's capture (and of the captures
  in an optional library folder) nearest to the current frame in the emotion network's
  feature space; lists them and jumps the scene to the best one of this capture.
* ``emoca.emotion_jump``: jump to a listed match, or to a frame of the timeline.

Settings and matches live in ``scene.emoca_emotion``. Only bpy is imported at
registration; numpy and the core are imported when an operator runs or the panel draws
a capture's timeline.
"""
import os

import bpy
from bpy.props import (CollectionProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

from . import properties
from .ops_capture import capture_file_problem, capture_stem, capture_summary, load_capture
from .scene.emotion_curves import key_emotion_curves


# -- data: timeline and curves (no bpy state) ------------------------------------------------

def emotion_problem(context) -> str | None:
    """Why the scene's capture has no emotion curves to use, or None. Cheap (the sidecar)."""
    problem = capture_file_problem(context)
    if problem:
        return problem
    meta = capture_summary(properties.abspath(context.scene.emoca.capture_path))
    if meta is None:
        return "The capture has no sidecar .json (incomplete file?)"
    if not meta.get("emotion"):
        return "This capture has no emotion curves: capture again with Emotion on"
    return None


_TIMELINE_CACHE: dict = {}


def frame_ratio(scene, clip_fps: float) -> float:
    """Scene frames per captured frame: the scene's rate over the clip's (1 in a scene
    retimed to the clip; 0.8 for a 30 fps clip keyed at its real times in a 24 fps scene,
    ``rig_build.capture_key_frames``)."""
    from .scene.rig_build import ntsc_rate
    rate = scene.render.fps / scene.render.fps_base
    return rate / ntsc_rate(clip_fps) if clip_fps and clip_fps > 0 else 1.0


def capture_index(scene, frame_start: int, clip_fps: float) -> int:
    """The captured frame shown at the scene's current frame."""
    return int(round((scene.frame_current - frame_start) / frame_ratio(scene, clip_fps)))


def scene_frame(scene, frame_start: int, clip_fps: float, index: int) -> int:
    """The scene frame nearest to captured frame ``index``."""
    return int(round(frame_start + index * frame_ratio(scene, clip_fps)))


def timeline(context, max_segments: int = 8) -> dict | None:
    """The capture's emotion at a glance, cached per file version: {"classes", "probs"
    (N,C), "dominant" (N,), "segments": [(first, last, class)] (capture frames, short
    stretches merged into their neighbours so at most ``max_segments`` remain), "valid"}."""
    if emotion_problem(context) is not None:
        return None
    path = properties.abspath(context.scene.emoca.capture_path)
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (path, st.st_mtime_ns, st.st_size, max_segments)
    if _TIMELINE_CACHE.get("key") == key:
        return _TIMELINE_CACHE["value"]
    import numpy as np

    try:
        cap = load_capture(context)
    except Exception:  # noqa: BLE001 - the panel says so; operators report the details
        return None
    if "emotion_probs" not in cap:
        return None
    probs = np.asarray(cap["emotion_probs"], np.float64)
    classes = tuple(cap.names.get("emotion_probs", ()))
    dom = probs.argmax(1)
    value = {"classes": classes, "probs": probs, "dominant": dom,
             "segments": segments(dom, max_segments), "valid": np.asarray(cap["valid"]),
             "n": int(probs.shape[0]), "fps": float(cap.fps)}
    _TIMELINE_CACHE.clear()
    _TIMELINE_CACHE.update(key=key, value=value)
    return value


def segments(labels, max_segments: int = 8, min_frames: int = 3
             ) -> list[tuple[int, int, int]]:
    """Runs of equal labels as (first, last, label), the shortest run merged into its
    longer neighbour while one is shorter than ``min_frames`` (flicker) or more than
    ``max_segments`` remain (a readable row of boxes)."""
    runs = []
    for i, lab in enumerate(list(map(int, labels))):
        if runs and runs[-1][2] == lab:
            runs[-1][1] = i
        else:
            runs.append([i, i, lab])
    def too_many():
        return len(runs) > max(1, max_segments) or (
            len(runs) > 1 and min(r[1] - r[0] + 1 for r in runs) < min_frames)

    while too_many():
        j = min(range(len(runs)), key=lambda k: runs[k][1] - runs[k][0])
        if j == 0:
            nb = 1
        elif j == len(runs) - 1:
            nb = j - 1
        else:
            left, right = runs[j - 1], runs[j + 1]
            nb = j - 1 if left[1] - left[0] >= right[1] - right[0] else j + 1
        a, b = sorted((j, nb))
        runs[a] = [runs[a][0], runs[b][1], runs[nb][2]]
        del runs[b]
        k = max(a - 1, 0)                     # neighbours of one label fuse
        while k < len(runs) - 1:
            if runs[k][2] == runs[k + 1][2]:
                runs[k][1] = runs[k + 1][1]
                del runs[k + 1]
            else:
                k += 1
    return [tuple(r) for r in runs]


def emotion_target(context):
    """The object the emotion curves go on: the actor rig's armature, else its mesh, else
    the active object."""
    props = context.scene.emoca
    return props.actor_armature or props.actor_mesh or context.active_object


# -- settings --------------------------------------------------------------------------------

class EMOCA_EmotionMatch(bpy.types.PropertyGroup):
    clip: StringProperty(name="Clip")
    frame: IntProperty(name="Frame", description="Scene frame (this capture) or capture "
                       "frame (other clips)")
    distance: FloatProperty(name="Distance")
    label: StringProperty(name="Emotion")
    here: bpy.props.BoolProperty(name="In This Capture", default=False)


class EMOCA_EmotionSettings(bpy.types.PropertyGroup):
    count: IntProperty(name="Matches", description="How many similar frames to find",
                       default=5, min=1, soft_max=20)
    min_gap: IntProperty(name="Gap", description="Frames between two matches of this "
                         "capture (and around the current frame)", default=12, min=1,
                         soft_max=120)
    library: StringProperty(
        name="Library", description="A folder of other .capture.npz files to search too "
        "(at most one match per clip); empty: this capture only", subtype='DIR_PATH',
        default="")
    matches: CollectionProperty(type=EMOCA_EmotionMatch)
    active_match: IntProperty(name="Match", default=0, min=0)
    query_frame: IntProperty(name="Query Frame", default=-1)
    status: StringProperty(name="Status", default="")
    # emotion jobs in the worker (ops_emotion_jobs)
    refine_keyframes: IntProperty(
        name="Every", description="Refine every this many measured frames; the change is "
        "interpolated between (1: every frame, about 4 s each on a CPU core)", default=5,
        min=1, soft_max=30)
    refine_strength: FloatProperty(
        name="Strength", description="How much of the refined change to apply (0: the "
        "capture, 1: the optimum)", default=1.0, min=0.0, max=1.0, subtype='FACTOR')
    train_table: StringProperty(
        name="Training Table", description="Labelled table of captures (CSV with the columns "
        "capture,valence,arousal,label[,start,end]; capture paths relative to the CSV)",
        subtype='FILE_PATH', default="")
    mlp_path: StringProperty(
        name="Emotion MLP", description="The trained emotion MLP (.pt): written by Train, "
        "read by Predict", subtype='FILE_PATH', default="")


# -- operators -------------------------------------------------------------------------------

class EMOCA_OT_key_emotion(bpy.types.Operator):
    """Key the capture's emotion curves (one custom property per emotion class) on the actor
    rig, one key per captured frame"""

    bl_idname = "emoca.key_emotion"
    bl_label = "Key Emotion Curves"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        problem = emotion_problem(context)
        if problem is None and emotion_target(context) is None:
            problem = "Build the actor rig first (or select an object)"
        return properties.poll_ok(cls, problem)

    def execute(self, context):
        from ._core import capture_file
        try:
            cap = load_capture(context)
        except capture_file.CaptureError as e:
            self.report({'ERROR'}, str(e))
            return {'CANCELLED'}
        obj = emotion_target(context)
        from .scene import rig_build
        start = context.scene.emoca.frame_start      # the rig's key frames (Scene Rate)
        names = key_emotion_curves(obj, cap, start, frames=rig_build.capture_key_frames(
            cap, start, rig_build.scene_rate(context.scene)))
        context.view_layer.update()
        context.scene.frame_set(context.scene.frame_current)
        if not names:
            self.report({'ERROR'}, "The capture has no emotion curves")
            return {'CANCELLED'}
        self.report({'INFO'}, f"Keyed {len(names)} emotion curves on {obj.name} "
                              f"({cap.n_frames} frames)")
        return {'FINISHED'}


def _library_captures(folder: str, exclude: str) -> list[str]:
    folder = properties.abspath(folder)
    if not folder or not os.path.isdir(folder):
        return []
    ex = os.path.abspath(exclude)
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.endswith(".capture.npz") and os.path.abspath(os.path.join(folder, f)) != ex)


class EMOCA_OT_emotion_find_similar(bpy.types.Operator):
    """Find the frames whose emotion is most like the current frame's (nearest in the
    emotion network's feature space) and jump to the best one: a pose-library helper"""

    bl_idname = "emoca.emotion_find_similar"
    bl_label = "Find Similar Frames"
    bl_options = {'REGISTER'}

    @classmethod
    def poll(cls, context):
        problem = emotion_problem(context)
        return properties.poll_ok(cls, problem)

    def execute(self, context):
        from ._core import capture_file, core
        import importlib
        retrieval = importlib.import_module(core.__name__ + ".emotion.retrieval")
        errors = importlib.import_module(core.__name__ + ".errors")
        scene = context.scene
        props, es = scene.emoca, scene.emoca_emotion
        path = properties.abspath(props.capture_path)
        try:
            cap = load_capture(context)
        except capture_file.CaptureError as e:
            self.report({'ERROR'}, str(e))
            return {'CANCELLED'}
        q = capture_index(scene, props.frame_start, cap.fps)
        if not 0 <= q < cap.n_frames:
            last = scene_frame(scene, props.frame_start, cap.fps, cap.n_frames - 1)
            self.report({'ERROR'}, f"Frame {scene.frame_current} is outside the capture "
                                   f"(frames {props.frame_start}-{last})")
            return {'CANCELLED'}
        me = capture_stem(path)
        try:
            own = retrieval.EmotionIndex()
            own.add_capture(cap, me)
            found = own.query_frame(me, q, k=es.count, per_clip=es.count,
                                    min_gap=es.min_gap, radius=es.min_gap)
            others = []
            lib = _library_captures(es.library, path)
            if lib:
                ix = retrieval.EmotionIndex.from_captures(lib)
                hit = own.features[(own.clip == 0) & (own.frame == q)][0]
                others = ix.query(hit, k=es.count, per_clip=1)
        except (errors.BadInput, capture_file.CaptureError) as e:
            self.report({'ERROR'}, str(e))
            return {'CANCELLED'}
        es.matches.clear()
        tagged = [(m, True) for m in found] + [(m, False) for m in others]
        for m, here in sorted(tagged, key=lambda t: t[0].distance):
            item = es.matches.add()
            item.here = here
            item.clip = m.clip
            item.frame = scene_frame(scene, props.frame_start, cap.fps, m.frame) \
                if item.here else m.frame
            item.distance = m.distance
            item.label = m.label
        es.query_frame = scene.frame_current
        es.active_match = 0
        here = [m for m in es.matches if m.here]
        if not here:
            es.status = f"No other frame of {me} qualifies"
            self.report({'WARNING'}, es.status)
            return {'FINISHED'}
        scene.frame_set(here[0].frame)
        es.active_match = list(es.matches).index(here[0])
        es.status = (f"{len(es.matches)} similar frames to {es.query_frame}; at "
                     f"{here[0].frame} ({here[0].label}, distance {here[0].distance:.2f})")
        self.report({'INFO'}, es.status)
        return {'FINISHED'}


class EMOCA_OT_emotion_jump(bpy.types.Operator):
    """Jump the scene to this frame"""

    bl_idname = "emoca.emotion_jump"
    bl_label = "Jump to Frame"
    bl_options = {'REGISTER'}

    frame: IntProperty(name="Frame", description="Scene frame to jump to (-1: the next "
                       "match of the list)", default=-1)

    @classmethod
    def poll(cls, context):
        if getattr(context.scene, "emoca_emotion", None) is None:
            cls.poll_message_set("The EMOCA add-on is not registered")
            return False
        return True

    def execute(self, context):
        scene = context.scene
        es = scene.emoca_emotion
        frame = self.frame
        if frame < 0:
            here = [i for i, m in enumerate(es.matches) if m.here]
            if not here:
                self.report({'WARNING'}, "No matches in this capture: Find Similar Frames "
                                         "first")
                return {'CANCELLED'}
            nxt = next((i for i in here if i > es.active_match), here[0])
            es.active_match = nxt
            frame = es.matches[nxt].frame
        scene.frame_set(frame)
        return {'FINISHED'}


CLASSES = (EMOCA_EmotionMatch, EMOCA_EmotionSettings, EMOCA_OT_key_emotion,
           EMOCA_OT_emotion_find_similar, EMOCA_OT_emotion_jump)


def register_props():
    bpy.types.Scene.emoca_emotion = PointerProperty(type=EMOCA_EmotionSettings)


def unregister_props():
    if hasattr(bpy.types.Scene, "emoca_emotion"):
        del bpy.types.Scene.emoca_emotion
