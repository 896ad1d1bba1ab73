"""Keyframe writing and reading for Blender 5.0's layered (slotted) Actions.

Blender 5.0 has no ``Action.fcurves``: F-curves live in
``action.layers[].strips[].channelbags[].fcurves``, one channelbag per slot, and an ID
animated by an action also names the slot it uses (``animation_data.action_slot``).
These helpers hide that:

* :func:`ensure_action` gives an ID (an Object, or a ``Key`` datablock for shape keys) an
  action with one slot for it, and empties that slot's channelbag, so a re-bake replaces the
  previous curves instead of piling new ones on top.
* :func:`write_fcurve` writes a whole curve in three ``foreach_set`` calls (never a
  per-key Python loop).
* :func:`read_fcurves` reads every curve of an ID back as numpy arrays.
"""
from __future__ import annotations

import re

import bpy
import numpy as np
from bpy_extras import anim_utils

from .._core import capture_file

# ``ID.id_type`` spelling of the slot type for the IDs we animate.
_ID_TYPE = {bpy.types.Object: "OBJECT", bpy.types.Key: "KEY", bpy.types.Scene: "SCENE",
            bpy.types.Material: "MATERIAL", bpy.types.Mesh: "MESH"}


def _id_type(id_data) -> str:
    for cls, name in _ID_TYPE.items():
        if isinstance(id_data, cls):
            return name
    return getattr(id_data, "id_type", "UNSPECIFIED")


def _interp_value(name: str) -> int:
    return bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items[name].value


def ensure_action(id_data, name: str):
    """Give ``id_data`` an action called ``name`` with an empty channelbag for it.

    The action is reused when it already exists (looked up by name, or the one the ID is
    already animated by when that has the same name); every F-curve and group in the ID's
    slot is removed, so calling this before writing replaces a previous bake cleanly.
    Curves of *other* slots in the same action (other IDs sharing it) are left alone.

    Args:
        id_data: an Object, a Key datablock (``mesh.shape_keys``) or another animatable ID.
        name: the action's name.
    Returns:
        (action, channelbag): write curves into the channelbag with :func:`write_fcurve`.
    """
    id_type = _id_type(id_data)
    anim = id_data.animation_data or id_data.animation_data_create()
    action = bpy.data.actions.get(name)
    if action is None:
        action = bpy.data.actions.new(name)
    slot = None
    if anim.action is action and anim.action_slot is not None:
        slot = anim.action_slot
    if slot is None:
        # A slot named after this ID from an earlier bake, else a new one.
        for s in action.slots:
            if s.target_id_type in (id_type, "UNSPECIFIED") and s.name_display == id_data.name:
                slot = s
                break
    if slot is None:
        slot = action.slots.new(id_type=id_type, name=id_data.name)
    if anim.action is not action:
        anim.action = action
    if anim.action_slot != slot:
        anim.action_slot = slot
    channelbag = anim_utils.action_ensure_channelbag_for_slot(action, slot)
    channelbag.fcurves.clear()
    for g in list(channelbag.groups):
        channelbag.groups.remove(g)
    return action, channelbag


def write_fcurve(channelbag, data_path: str, index: int, frames, values, group: str | None = None,
                 interpolation: str = "LINEAR"):
    """Write one F-curve with one key per (frame, value), replacing any curve already there.

    Args:
        channelbag: from :func:`ensure_action` (or an ``(action, channelbag)`` tuple).
        data_path: RNA path relative to the animated ID, e.g. ``'key_blocks["jawOpen"].value'``
            or ``'pose.bones["jaw"].rotation_quaternion'``.
        index: array index (0 for scalar properties).
        frames: (N,) frame numbers, increasing.
        values: (N,) values.
        group: optional channel group name (bone curves use the bone's name).
        interpolation: 'LINEAR' (default: one key per captured frame, so the curve between
            frames is the straight line between samples), 'CONSTANT' or 'BEZIER'.
    Returns:
        the F-curve.
    """
    if isinstance(channelbag, tuple):
        channelbag = channelbag[1]
    frames = np.asarray(frames, dtype=np.float32).reshape(-1)
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if frames.shape != values.shape:
        raise ValueError(f"frames {frames.shape} and values {values.shape} differ in length")
    fc = channelbag.fcurves.find(data_path, index=index)
    if fc is not None:
        channelbag.fcurves.remove(fc)
    if group:
        grp = channelbag.groups.get(group) or channelbag.groups.new(group)
        fc = channelbag.fcurves.new(data_path, index=index, group_name=grp.name)
    else:
        fc = channelbag.fcurves.new(data_path, index=index)
    n = frames.shape[0]
    if n:
        kp = fc.keyframe_points
        kp.add(n)
        co = np.empty(2 * n, dtype=np.float32)
        co[0::2] = frames
        co[1::2] = values
        kp.foreach_set("co", co)
        kp.foreach_set("interpolation", np.full(n, _interp_value(interpolation), dtype=np.int32))
        if interpolation == "BEZIER":
            kp.foreach_set("handle_left", co)
            kp.foreach_set("handle_right", co)
    fc.update()
    return fc


def channelbags_of(id_data):
    """The channelbags of the slot ``id_data`` is animated through (empty when not animated)."""
    anim = getattr(id_data, "animation_data", None)
    if anim is None or anim.action is None:
        return []
    slot = anim.action_slot
    if slot is None:
        slot = anim_utils.action_get_first_suitable_slot(anim.action, _id_type(id_data))
        if slot is None:
            return []
    bags = []
    for layer in anim.action.layers:
        for strip in layer.strips:
            bag = strip.channelbag(slot)
            if bag is not None:
                bags.append(bag)
    return bags


def read_fcurves(id_data) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """Every keyed curve of ``id_data``'s assigned action slot.

    Returns:
        {(data_path, index): (frames (N,), values (N,))} as float64 arrays.
    """
    out: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    for bag in channelbags_of(id_data):
        for fc in bag.fcurves:
            n = len(fc.keyframe_points)
            co = np.empty(2 * n, dtype=np.float32)
            fc.keyframe_points.foreach_get("co", co)
            co = co.astype(np.float64).reshape(n, 2)
            out[(fc.data_path, fc.array_index)] = (co[:, 0], co[:, 1])
    return out


def remove_action(id_data) -> None:
    """Unassign ``id_data``'s action and delete it when nothing else uses it."""
    anim = getattr(id_data, "animation_data", None)
    if anim is None or anim.action is None:
        return
    action = anim.action
    anim.action = None
    if action.users == 0:
        bpy.data.actions.remove(action)


def quoted(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"')


def action_stem(capture) -> str:
    """A name for actions baked from ``capture``: the source video's file stem."""
    src = capture.meta.get("source")
    path = src.get("path") if isinstance(src, dict) else src
    if not path:
        path = capture.meta.get("capture_path") or capture.meta.get("name") or "capture"
    stem = str(path).replace("\\", "/").rsplit("/", 1)[-1]
    for suf in (capture_file.SUFFIX, ".npz"):
        if stem.endswith(suf):
            stem = stem[: -len(suf)]
    if "." in stem:
        stem = stem.rsplit(".", 1)[0] or stem
    return stem or "capture"


#: custom property of a baked action: the capture's frame rate (frames are capture frames)
FPS_PROP = "emoca_fps"


_BONE_RE = re.compile(r'^pose\.bones\["(.*)"\]\.(rotation_quaternion|rotation_euler|location|scale)$')


def _unescape(s: str) -> str:
    return s.replace('\\"', '"').replace("\\\\", "\\")


__all__ = ["ensure_action", "write_fcurve", "read_fcurves", "channelbags_of", "remove_action",
           "quoted", "action_stem", "FPS_PROP"]
