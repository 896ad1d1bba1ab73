"""The Emotion panel (under Rig): the capture's emotion timeline -- the dominant class per
stretch of frames as a row of labelled boxes (click one to jump there) -- the current
frame's class probabilities, Key Emotion Curves, and Find Similar Frames with its list of
matches (a pose-library helper)."""
import bpy

try:
    from ..operators import ops_emotion
    from .sidebar import _EmocaPanel, _button, _reason
except ImportError:  # panels/ imported as a top-level package (tests from the repo root)
    from operators import ops_emotion
    from panels.sidebar import _EmocaPanel, _button, _reason


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
        scene = context.scene
        props, es = scene.emoca, scene.emoca_emotion
        problem = ops_emotion.emotion_problem(context)
        if problem:
            _reason(layout, problem)
            return
        tl = ops_emotion.timeline(context)
        if tl is None:
            _reason(layout, "The capture's emotion curves cannot be read")
            return
        classes, n = tl["classes"], tl["n"]
        f = scene.frame_current - props.frame_start
        layout.label(text=f"Emotion over {n} frames (dominant class)", icon='SEQUENCE')
        row = layout.row(align=True)
        for first, last, c in tl["segments"]:
            box = row.row(align=True)
            box.ui_units_x = max(1.0, 12.0 * (last - first + 1) / max(n, 1))
            name = classes[c] if c < len(classes) else "?"
            op = box.operator("emoca.emotion_jump", text=name.capitalize(),
                              depress=first <= f <= last)
            op.frame = first + props.frame_start
        sub = layout.row()
        sub.alignment = 'RIGHT'
        sub.label(text=" | ".join(f"{a + props.frame_start}-{b + props.frame_start}"
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
        if target is not None and any(k.startswith(ops_emotion.PREFIX) for k in target.keys()):
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


CLASSES = (EMOCA_UL_emotion_matches, EMOCA_PT_emotion)
