"""Emotion jobs that run in the worker process, with the capture's progress bar, Esc /
Cancel and failure log (ops_capture.WorkerJobOperator; one worker job at a time):

* ``emoca.emotion_refine``: the emotion-consistent expression (EMOCA's emotion
  optimisation, ``python -m emoca_blender refine``) of the scene's capture, on every K-th
  measured frame with the change interpolated between, into ``<name>_refined.capture.npz``
  beside it; the refined capture becomes the scene's capture (build the rig or retarget
  again to key it). What it touched is visible at once: timeline markers ``emotion S=0.50``
  (the Strength) at the refined keyframes, and the ``emotion_refined`` custom property
  (the Strength on the frames it changed, 0 elsewhere) keyed on the actor rig.
* ``emoca.emotion_train``: the 3DMM emotion MLP trained on a labelled table of captures
  (``emotion-train``), written to the Emotion MLP file.
* ``emoca.emotion_predict``: valence and arousal of every frame from that MLP, written into
  the scene's capture (``emotion-predict``, in place and atomically); Key Emotion Curves
  then keys them as ``emotion_valence`` / ``emotion_arousal``.

Blender never imports torch: the worker does the work.
"""
import os

import bpy
from bpy.props import IntProperty

from . import properties, worker
from .ops_capture import (WorkerJobOperator, capture_file_problem, capture_stem,
                          capture_summary, load_capture, worker_problem)

OPEN_HEAD = "open_head"
ARKIT_HEADS = ("ict_head", "open_head")   # head_model.ARKIT_HEADS (no core import at poll)


def refined_output_for(capture: str) -> str:
    """``a.capture.npz`` -> ``a_refined.capture.npz`` (a refined capture refined again is
    overwritten, not renamed ``a_refined_refined``)."""
    stem = capture_stem(capture)
    if not stem.endswith("_refined"):
        stem += "_refined"
    return os.path.join(os.path.dirname(capture), stem + worker.CAPTURE_SUFFIX)


def capture_video(context, meta: dict | None) -> str:
    """The capture's video: the path stored in it when that file exists, else the scene's
    Video; '' when neither exists."""
    src = ((meta or {}).get("source") or {}).get("path") or ""
    if src and os.path.isfile(src):
        return src
    video = properties.abspath(context.scene.emoca.video_path)
    return video if video and os.path.isfile(video) else ""


def _done_info(job) -> dict:
    return next((e for e in reversed(job.events) if e.get("stage") == "done"), {})


def _scene_capture(context) -> str:
    return properties.abspath(context.scene.emoca.capture_path)


MARKER_PREFIX = "emotion S="


def mark_refined(context, keyframes, strength: float) -> str | None:
    """Show what the refinement touched: timeline markers ``emotion S=<Strength>`` at the
    refined keyframes (earlier ones replaced) and, when the actor rig exists, the scene
    capture's ``emotion_refined`` flag keyed on it. Returns the object keyed, if any."""
    from .ops_emotion import emotion_target
    from .scene.emotion_curves import PREFIX, key_emotion_curves

    scene = context.scene
    for m in [m for m in scene.timeline_markers if m.name.startswith(MARKER_PREFIX)]:
        scene.timeline_markers.remove(m)
    start = scene.emoca.frame_start
    for f in keyframes:
        scene.timeline_markers.new(f"{MARKER_PREFIX}{strength:.2f}", frame=start + int(f))
    obj = emotion_target(context)
    if obj is None or obj.type not in {'ARMATURE', 'MESH'}:
        return None
    try:
        cap = load_capture(context)
    except Exception:  # noqa: BLE001 - the markers stay; the flag is keyed with Key Emotion
        return None
    if not key_emotion_curves(obj, cap, start, only=(PREFIX + "refined",)):
        return None
    return obj.name


class EMOCA_OT_emotion_refine(WorkerJobOperator, bpy.types.Operator):
    """Refine the capture's expression so that a rendering of the head carries the emotion
    seen in the video (EMOCA's emotion optimisation), into a new capture beside it. Runs in
    the worker; Esc cancels"""

    bl_idname = "emoca.emotion_refine"
    bl_label = "Refine Expression (Emotion)"
    bl_options = {'REGISTER'}
    noun = "Refinement"

    iterations: IntProperty(name="Iterations", description="Optimiser steps per keyframe "
                            "(0: the default)", default=0, min=0, options={'HIDDEN'})

    @classmethod
    def _problem(cls, context) -> str | None:
        problem = capture_file_problem(context) or worker_problem(context)
        if problem:
            return problem
        meta = capture_summary(_scene_capture(context))
        if meta is None:
            return "The capture has no sidecar .json (incomplete file?)"
        model = meta.get("head_model") or OPEN_HEAD
        if model not in ARKIT_HEADS:
            return (f"Refinement needs a capture in ARKit channels (MediaPipe backend); "
                    f"this one uses {model}")
        if not capture_video(context, meta):
            return "The capture's video is not found: choose it in Video"
        return None

    def _command(self, context):
        es = context.scene.emoca_emotion
        cap = _scene_capture(context)
        out = refined_output_for(cap)
        python, _source = properties.worker_python(context)
        cmd = worker.refine_command(python, cap, out, keyframes=es.refine_keyframes,
                                    strength=es.refine_strength,
                                    video=capture_video(context, capture_summary(cap)),
                                    iterations=self.iterations or None)
        return cmd, out, f"Refining {os.path.basename(cap)}"

    def _done(self, context, job) -> str:
        context.scene.emoca.capture_path = str(job.output)
        info = _done_info(job)
        name = os.path.basename(str(job.output))
        mark_refined(context, info.get("keyframes") or [], float(info.get("strength", 1.0)))
        if not info.get("frames"):
            return f"Wrote {name}: nothing refined (no keyframe with a face)"
        return (f"Refined {info['frames']} keyframes into {name}: emotion distance "
                f"{info['feat_dist_before']:.2f} -> {info['feat_dist_after']:.2f}. Build the "
                f"rig or retarget again to key it")


class EMOCA_OT_emotion_train(WorkerJobOperator, bpy.types.Operator):
    """Train the emotion MLP (identity + expression + jaw -> valence, arousal, class) on a
    labelled table of captures (CSV: capture,valence,arousal,label[,start,end]). Runs in
    the worker; Esc cancels"""

    bl_idname = "emoca.emotion_train"
    bl_label = "Train Emotion MLP"
    bl_options = {'REGISTER'}
    noun = "Training"

    @classmethod
    def _problem(cls, context) -> str | None:
        if getattr(context.scene, "emoca_emotion", None) is None:
            return "The EMOCA add-on is not registered"
        es = context.scene.emoca_emotion
        table = properties.abspath(es.train_table)
        if not table:
            return "Choose a training table (.csv) first"
        if not os.path.isfile(table):
            return f"Training table not found: {os.path.basename(table)}"
        model = properties.abspath(es.mlp_path)
        if not model:
            return "Choose where the Emotion MLP (.pt) goes"
        if not os.path.isdir(os.path.dirname(model)):
            return f"Output folder does not exist: {os.path.dirname(model)}"
        return worker_problem(context)

    def _command(self, context):
        es = context.scene.emoca_emotion
        model = properties.abspath(es.mlp_path)
        python, _source = properties.worker_python(context)
        cmd = worker.emotion_train_command(python, properties.abspath(es.train_table), model)
        return cmd, model, f"Training {os.path.basename(model)}"

    def _done(self, context, job) -> str:
        info = _done_info(job)
        return (f"Trained {os.path.basename(str(job.output))} on {info.get('samples', '?')} "
                f"frames: validation CCC valence {info.get('val_ccc_valence', float('nan')):.2f},"
                f" arousal {info.get('val_ccc_arousal', float('nan')):.2f}, accuracy "
                f"{info.get('val_accuracy', float('nan')):.2f}")


class EMOCA_OT_emotion_predict(WorkerJobOperator, bpy.types.Operator):
    """Valence and arousal of every frame from the Emotion MLP, written into the capture
    (then Key Emotion Curves keys them). Runs in the worker"""

    bl_idname = "emoca.emotion_predict"
    bl_label = "Predict Valence and Arousal"
    bl_options = {'REGISTER'}
    noun = "Prediction"

    @classmethod
    def _problem(cls, context) -> str | None:
        problem = capture_file_problem(context)
        if problem:
            return problem
        model = properties.abspath(context.scene.emoca_emotion.mlp_path)
        if not model:
            return "Choose an Emotion MLP (.pt) first (train one, or emotion-train)"
        if not os.path.isfile(model):
            return f"Emotion MLP not found: {os.path.basename(model)}"
        return worker_problem(context)

    def _command(self, context):
        cap = _scene_capture(context)
        python, _source = properties.worker_python(context)
        cmd = worker.emotion_predict_command(
            python, cap, properties.abspath(context.scene.emoca_emotion.mlp_path))
        # no output for the job: the capture is rewritten atomically by the worker, and a
        # failed or cancelled run must never delete it as "partial output"
        return cmd, None, f"Predicting valence and arousal for {os.path.basename(cap)}"

    def _done(self, context, job) -> str:
        return (f"Valence and arousal written into "
                f"{os.path.basename(_scene_capture(context))}: Key Emotion Curves keys them")


CLASSES = (EMOCA_OT_emotion_refine, EMOCA_OT_emotion_train, EMOCA_OT_emotion_predict)
