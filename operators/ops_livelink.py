"""Live Link Face CSV (Epic's iPhone app, Unreal, Faceit): import a recording as a capture
(and bake it onto the character), export the capture's curves.

``emoca_blender.retarget.livelink`` reads and writes the files; these operators pick the paths and
the targets. A CSV import writes ``NAME.capture.npz`` beside the CSV (the Capture file every
other step reads) and makes it the scene's capture.
"""
import importlib
import os
import traceback

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from . import properties
from .ops_capture import capture_file_problem, capture_stem, load_capture


def _livelink():
    from ._core import core
    return importlib.import_module(core.__name__ + ".retarget.livelink")


def import_csv(context, path: str, bake: bool) -> tuple[str, dict | None, list[str]]:
    """Read a Live Link CSV into NAME.capture.npz beside it, make it the scene's capture and
    (``bake``) retarget it onto the targets by name. Returns (capture path, bake summary or
    None, warnings). Raises livelink.LiveLinkError / ValueError with a message."""
    from ._core import capture_file
    from . import ops_retarget
    ll = _livelink()
    data = ll.read_csv(path)
    cap = ll.to_capture(data, os.path.basename(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    out = os.path.join(os.path.dirname(os.path.abspath(path)), stem + ".capture.npz")
    capture_file.save_capture(cap, out)
    context.scene.emoca.capture_path = out
    summary, warnings = None, []
    if not data.get("has_angles"):
        warnings.append(f"{os.path.basename(path)} has no head/eye angle columns: head and "
                        f"eyes stay still")
    if data["lost_rows"] or data["dropped"] or data["clamped"]:
        warnings.append(f"{os.path.basename(path)}: {ll.import_summary(data)}")
    if bake:
        summary, _, w = ops_retarget.run_retarget(context, cap, ops_retarget.settings(context),
                                                  method="name")
        warnings += w
    return out, summary, warnings


class EMOCA_OT_import_livelink(bpy.types.Operator, ImportHelper):
    """Import a Live Link Face CSV (iPhone recording, Unreal, Faceit) as the capture, and
    bake it onto the character"""

    bl_idname = "emoca.import_livelink"
    bl_label = "Import Live Link Face CSV"
    bl_options = {'REGISTER', 'UNDO'}

    filename_ext = ".csv"
    filter_glob: StringProperty(default="*.csv", options={'HIDDEN'})
    bake: BoolProperty(name="Bake onto Character", description="Retarget the recording onto "
                       "the retarget targets (by name) right away", default=True)

    @classmethod
    def poll(cls, context):
        if getattr(context.scene, "emoca", None) is None:
            cls.poll_message_set("The EMOCA add-on is not registered")
            return False
        return True

    def execute(self, context):
        from . import ops_retarget
        ll = _livelink()
        path = properties.abspath(self.filepath)
        bake = self.bake and ops_retarget.targets_problem(context) is None
        try:
            out, summary, warnings = import_csv(context, path, bake)
        except (ll.LiveLinkError, ValueError, OSError) as e:
            self.report({'ERROR'}, str(e))
            return {'CANCELLED'}
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            self.report({'ERROR'}, f"Live Link import failed: {type(e).__name__}: {e}")
            return {'CANCELLED'}
        msg = f"Imported {os.path.basename(path)} as {os.path.basename(out)}"
        if summary is not None:
            n = len({c for i in summary["shape_keys"].values() for c in i["mapped"]})
            msg += f"; {ops_retarget.summary_line(summary, n)}"
        elif self.bake:
            warnings.append("Not baked: " + (ops_retarget.targets_problem(context) or ""))
        self.report({'INFO'}, msg)
        for w in warnings:
            self.report({'WARNING'}, w)
        return {'FINISHED'}


def export_problem(context) -> str | None:
    return capture_file_problem(context)


class EMOCA_OT_export_livelink(bpy.types.Operator, ExportHelper):
    """Export the capture's ARKit, head and eye curves as a Live Link Face CSV (52 shapes +
    9 angles, PascalCase, timecodes) for Unreal, Faceit or Live Link tools"""

    bl_idname = "emoca.export_livelink"
    bl_label = "Export Live Link Face CSV"
    bl_options = {'REGISTER'}

    filename_ext = ".csv"
    filter_glob: StringProperty(default="*.csv", options={'HIDDEN'})
    calibrated: BoolProperty(
        name="Calibrated", description="Apply the Retarget panel's neutral frame and "
        "per-channel calibration (gain, offset, clamp, smoothing) to the curves",
        default=False)

    @classmethod
    def poll(cls, context):
        problem = export_problem(context)
        return properties.poll_ok(cls, problem)

    def invoke(self, context, event):
        if not self.filepath:
            cap = properties.abspath(context.scene.emoca.capture_path)
            self.filepath = os.path.join(os.path.dirname(cap), capture_stem(cap) + ".csv")
        context.window_manager.fileselect_add(self)
        return {'RUNNING_MODAL'}

    def execute(self, context):
        from ._core import capture_file
        ll = _livelink()
        path = bpy.path.ensure_ext(properties.abspath(self.filepath), ".csv")
        try:
            cap = load_capture(context)
            if self.calibrated:
                cap = calibrated_capture(context, cap)
            out = ll.export_capture(cap, path)
        except (capture_file.CaptureError, ll.LiveLinkError, ValueError, OSError) as e:
            self.report({'ERROR'}, f"Live Link export failed: {e}")
            return {'CANCELLED'}
        self.report({'INFO'}, f"Exported {cap.n_frames} frames to {out}")
        return {'FINISHED'}


def calibrated_capture(context, cap):
    """A copy of ``cap`` whose ARKit curves have the Retarget panel's neutral frame and
    per-channel calibration applied."""
    import copy

    from ._core import core
    from . import ops_retarget
    retarget = importlib.import_module(core.__name__ + ".retarget.mapping")
    rs = ops_retarget.settings(context)
    _, calib = ops_retarget.mapping_from_settings(rs) if len(rs.channels) else (None, {})
    nf = rs.neutral_frame if rs.use_neutral_frame else None
    names = list(cap.names.get("arkit"))
    out = copy.copy(cap)
    out.arrays = dict(cap.arrays)
    out.arrays["arkit"] = retarget.calibrate(cap["arkit"], names, calib, nf).astype(
        cap["arkit"].dtype)
    return out


def menu_import(self, context):
    self.layout.operator("emoca.import_livelink", text="Live Link Face CSV (.csv)")


CLASSES = (EMOCA_OT_import_livelink, EMOCA_OT_export_livelink)
