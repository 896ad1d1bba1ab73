"""The Emotion panel (under Rig): the capture's emotion timeline -- the dominant class per
stretch of frames as a row of labelled boxes (click one to jump there) -- the current
frame's class probabilities, Key Emotion Curves, and Find Similar Frames with its list of
matches (a pose-library helper)."""
import bpy

try:
    from ..operators import ops_capture, ops_emotion, ops_emotion_jobs
    from ..operators.scene import emotion_curves
    from .sidebar import _EmocaPanel, _button, _reason
except ImportError:  # panels/ imported as a top-level package (tests from the repo root)
    from operators import ops_capture, ops_emotion, ops_emotion_jobs
    from operators.scene import emotion_curves
    from panels.sidebar import _EmocaPanel, _button, _reason


def _settings_box(layout, title: str, icon: str, data, names):
    box = layout.box()
    box.label(text=title, icon=icon)
    col = box.column()
    col.use_property_split = True
    col.use_property_decorate = False
    for name in names:
        col.prop(data, name)
    return box


def draw_jobs(context, layout):
    """Refinement and the emotion MLP (worker jobs), with the running job's progress."""
    es = context.scene.emoca_emotion
    job = ops_capture.active_job()
    props = context.scene.emoca
    box = _settings_box(layout, "Emotion-Consistent Expression", 'SHADERFX', es,
                        ("refine_keyframes", "refine_strength"))
    _button(box, "emoca.emotion_refine",
            ops_emotion_jobs.EMOCA_OT_emotion_refine._problem(context), icon='SHADERFX')
    box = _settings_box(layout, "Valence and Arousal (Emotion MLP)", 'NETWORK_DRIVE', es,
                        ("mlp_path", "train_table"))
    row = box.row(align=True)
    reasons = []
    for cls, icon in ((ops_emotion_jobs.EMOCA_OT_emotion_train, 'EXPERIMENTAL'),
                      (ops_emotion_jobs.EMOCA_OT_emotion_predict, 'PLAY')):
        reason = cls._problem(context)
        sub = row.row(align=True)
        sub.enabled = reason is None
        sub.operator(cls.bl_idname, icon=icon)
        if reason and job is None:
            reasons.append(f"{cls.bl_label}: {reason}")
    for reason in reasons:
        _reason(box, reason)
    if job is not None:
        p = job.progress
        layout.progress(factor=p.factor, type='BAR', text=p.text())
        layout.operator("emoca.cancel_capture", text="Cancel", icon='CANCEL')
    elif props.status.startswith(("Refine", "Train", "Predict", "Valence", "Wrote")):
        failed = props.status.endswith(("failed", "not started"))
        layout.label(text=props.status, icon='ERROR' if failed else 'CHECKMARK')
        if failed and props.last_error:
            err = layout.box()
            err.alert = True
            err.label(text=props.last_error, icon='ERROR')

def draw_curves(context, layout, tl):
    scene = context.scene
    props, es = scene.emoca, scene.emoca_emotion
    classes, n = tl["classes"], tl["n"]
    fps = tl.get("fps", 0.0)
    f = ops_emotion.capture_index(scene, props.frame_start, fps)
    layout.label(text=f"Emotion over {n} frames (dominant class)", icon='SEQUENCE')
    row = layout.row(align=True)
    for first, last, c in tl["segments"]:
        box = row.row(align=True)
        box.ui_units_x = max(1.0, 12.0 * (last - first + 1) / max(n, 1))
        name = classes[c] if c < len(classes) else "?"
        op = box.operator("emoca.emotion_jump", text=name.capitalize(),
                          depress=first <= f <= last)
        op.frame = ops_emotion.scene_frame(scene, props.frame_start, fps, first)
    sub = layout.row()
    sub.alignment = 'RIGHT'
    sub.label(text=" | ".join(f"{ops_emotion.scene_frame(scene, props.frame_start, fps, a)}-"
                              f"{ops_emotion.scene_frame(scene, props.frame_start, fps, b)}"
                              for a, b, _ in tl["segments"]))
    if 0 <= f < n:
        p = tl["probs"][f]
        col = layout.column(align=True)
        col.label(text=f"Frame {scene.frame_current}"
                  + ("" if tl["valid"][f] else " (no face: held)"))
        for j in p.argsort()[::-1][:3]:
            col.progress(factor=float(min(max(p[j], 0.0), 1.0)), type='BAR',
                         text=f"{classes[j]} {100 * p[j]:.0f}%")
    else:
        layout.label(text=f"Frame {scene.frame_current} is outside the capture",
                     icon='INFO')
    layout.separator()
    target = ops_emotion.emotion_target(context)
    _button(layout, "emoca.key_emotion",
            None if target is not None else "Build the actor rig first (or select an "
            "object)", icon='KEYINGSET')
    if target is not None and any(k.startswith(emotion_curves.PREFIX) for k in target.keys()):
        layout.label(text=f"Keyed on {target.name}", icon='CHECKMARK')
    layout.separator()
    col = layout.column()
    col.use_property_split = True
    col.use_property_decorate = False
    col.prop(es, "count")
    col.prop(es, "min_gap")
    col.prop(es, "library")
    _button(layout, "emoca.emotion_find_similar", None, icon='VIEWZOOM')
    if len(es.matches):
        layout.template_list("EMOCA_UL_emotion_matches", "", es, "matches", es,
                             "active_match", rows=4)
        layout.operator("emoca.emotion_jump", text="Next Match", icon='FF').frame = -1
    if es.status:
        layout.label(text=es.status, icon='INFO')


class EMOCA_UL_emotion_matches(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname,
                  index=0, flt_flag=0):
        row = layout.row(align=True)
        if item.here:
            op = row.operator("emoca.emotion_jump", text=f"Frame {item.frame}",
                              icon='PLAY', emboss=False)
            op.frame = item.frame
        else:
            row.label(text=f"{item.clip} {item.frame}", icon='FILE_MOVIE')
        row.label(text=item.label or "-")
        row.label(text=f"{item.distance:.2f}")


class EMOCA_PT_emotion(_EmocaPanel, bpy.types.Panel):
    bl_idname = "EMOCA_PT_emotion"
    bl_label = "Emotion"
    bl_parent_id = "EMOCA_PT_rig"
    bl_order = 10

    @classmethod
    def poll(cls, context):
        return (getattr(context.scene, "emoca", None) is not None
                and getattr(context.scene, "emoca_emotion", None) is not None)

    def draw(self, context):
        layout = self.layout
        problem = ops_emotion.emotion_problem(context)
        tl = None if problem else ops_emotion.timeline(context)
        if problem or tl is None:
            _reason(layout, problem or "The capture's emotion curves cannot be read")
        else:
            draw_curves(context, layout, tl)
        draw_jobs(context, layout)


CLASSES = (EMOCA_UL_emotion_matches, EMOCA_PT_emotion)
