"""Takes: several captures retargeted onto one character, each its own Action named after
the take, stacked on the NLA one after another.

A take is one capture baked onto the character's targets (the meshes' shape keys and the
armature) into **one** Action named after the take, with one slot per target (Blender 5.0's
layered actions: the mesh's ``Key`` and the armature object share it). The action is not
left assigned: each target gets an NLA track named after the take holding one strip of it
(``extrapolation`` NOTHING), and the takes sit on the timeline one after another in capture
order, :data:`GAP` frames apart (``take 1`` at frames 1-120, ``take 2`` from 131...). Each
shape-key datablock also gets a bottom track, :data:`REST_TRACK`, whose strip holds every
shape key at 0 (HOLD): outside the takes NLA evaluation would otherwise give every shape
key its RNA default, 1.0. Outside the takes the bones are at rest (their default).

Why this layout (bpy 5.0.1, measured; ``tests/operators/test_takes.py``):

* FBX: ``bake_anim_use_nla_strips=True`` writes one animation stack per NLA strip of an
  **object**, named after the strip and starting at 0 s, muting the object's other strips
  while it samples; the shape keys' own NLA is not muted but evaluated as it is, so take
  ``i``'s stack carries take ``i``'s shape keys only when no other take overlaps it in time
  (overlapping takes give every stack the top take's shape keys). A mesh without an
  armature has no object strip: the export adds a temporary one (:func:`carriers`).
  ``bake_anim_use_all_actions=True`` does not work for shape keys: it tries every action on
  each object only, so every stack gets whatever the shape keys evaluate to.
* glTF: ``export_animation_mode='ACTIONS'`` writes one animation per action (the shape-key
  and armature slots of a take's action merged into one), named after the action, over the
  action's range (slid to 0 s), and skips muted strips, which is how one take is exported
  alone (:func:`only_takes`). The scene's frame range must cover the takes.

Times: every take's keys are at its frames' real times in the scene's rate (the bake's
``timing="scene"``; ``rig_build.capture_key_frames``); the takes' actions record that rate
(``fbx_io.FPS_PROP``), which the exports use.
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass

import bpy

from . import blender_anim

#: custom properties of a take's action: its name, and the capture it was baked from
TAKE_PROP = "emoca_take"
CAPTURE_PROP = "emoca_capture"
#: the bottom NLA track of every shape-key datablock with takes: all shape keys at 0
REST_TRACK = "EMOCA Rest"
REST_PROP = "emoca_rest"
#: scene frames between one take's last frame and the next take's first
GAP = 10


class TakeError(ValueError):
    """A take cannot be made, found or exported (the message says why)."""


@dataclass
class Take:
    """One take on the character: its action and where its strips are."""

    name: str
    action: object
    frame_start: float
    frame_end: float
    capture: str = ""

    @property
    def frames(self) -> tuple[int, int]:
        """(first, last) whole scene frames the take covers."""
        return int(math.floor(self.frame_start + 1e-6)), int(math.ceil(self.frame_end - 1e-6))


# --------------------------------------------------------------------------------------
# Names and targets


_BAD = re.compile(r'[|"\\\x00-\x1f]+')


def take_name(stem: str, taken=()) -> str:
    """A take's name from a clip's stem: ``|``, quotes and control characters replaced
    (the FBX importer splits ``<object>|<take>``), made unique among ``taken`` with
    ``_2``, ``_3``..."""
    base = _BAD.sub("_", str(stem)).strip() or "take"
    base = base[:60]
    taken = set(taken)
    name, i = base, 2
    while name in taken:
        name = f"{base}_{i}"
        i += 1
    return name


def take_ids(objects) -> list:
    """The animated datablocks of a character: each mesh's shape keys (``Key``) and its
    armature object, in that order, once each."""
    out = []
    for o in objects:
        if o is None:
            continue
        if o.type == "MESH" and o.data.shape_keys is not None and \
                len(o.data.shape_keys.key_blocks) > 1:
            idb = o.data.shape_keys
        elif o.type == "ARMATURE":
            idb = o
        else:
            continue
        if all(idb is not x for x in out):
            out.append(idb)
    return out


def _slot_for(action, idb):
    """The slot of ``action`` that animates ``idb`` (by type and name), or None."""
    id_type = "KEY" if isinstance(idb, bpy.types.Key) else "OBJECT"
    for s in action.slots:
        if s.target_id_type == id_type and s.name_display == idb.name:
            return s
    return None


def _strips(idb):
    ad = getattr(idb, "animation_data", None)
    if ad is None:
        return
    for track in ad.nla_tracks:
        for strip in track.strips:
            yield track, strip


def is_take(action) -> bool:
    return action is not None and TAKE_PROP in action


# --------------------------------------------------------------------------------------
# Finding the takes


def find_takes(objects) -> list[Take]:
    """The takes stacked on the character ``objects`` (meshes and/or armature), in timeline
    order: every NLA strip of a take's action on their shape keys or armature."""
    found: dict[str, Take] = {}
    for idb in take_ids(objects):
        for _track, strip in _strips(idb):
            act = strip.action
            if not is_take(act):
                continue
            t = found.get(act.name)
            if t is None:
                found[act.name] = Take(str(act.get(TAKE_PROP) or act.name), act,
                                       strip.frame_start, strip.frame_end,
                                       str(act.get(CAPTURE_PROP, "") or ""))
            else:
                t.frame_start = min(t.frame_start, strip.frame_start)
                t.frame_end = max(t.frame_end, strip.frame_end)
    return sorted(found.values(), key=lambda t: (t.frame_start, t.name))


def select_takes(objects, names=None) -> list[Take]:
    """The takes called ``names`` (all when None), in timeline order; raises
    :class:`TakeError` for a name that is not a take of the character or none at all."""
    takes = find_takes(objects)
    if not takes:
        raise TakeError("the character has no takes (capture or retarget several clips as "
                        "takes first)")
    if names is None:
        return takes
    by = {t.name: t for t in takes}
    missing = [n for n in names if n not in by]
    if missing:
        raise TakeError(f"no take named {', '.join(missing)}; the takes are "
                        f"{', '.join(by)}")
    return [by[n] for n in names]


def export_span(objects, names, scene=None) -> tuple[list[Take], float, int, int]:
    """What an export of takes covers: (the takes ``names`` (all when None), their common
    frame rate, the first and the last scene frame); TakeError as :func:`select_takes` and
    :func:`take_rate` raise it."""
    tk = select_takes(objects, names)
    rate = take_rate(tk, scene)
    return tk, rate, min(t.frames[0] for t in tk), max(t.frames[1] for t in tk)


def next_start(objects, first: int = 1, gap: int = GAP) -> int:
    """Where a new take starts: ``first`` when there is none, else :data:`GAP` frames
    after the last take's last frame."""
    takes = find_takes(objects)
    if not takes:
        return int(first)
    return max(t.frames[1] for t in takes) + int(gap) + 1


def take_rate(takes, scene=None) -> float:
    """The frame rate the takes' keys are in (``fbx_io.FPS_PROP`` of their actions): one
    rate for all of them, else :class:`TakeError` (re-bake the odd ones in one rate)."""
    from .blender_anim import FPS_PROP

    rates = {}
    for t in takes:
        if FPS_PROP in t.action:
            rates.setdefault(round(float(t.action[FPS_PROP]), 6), []).append(t.name)
    if len(rates) > 1:
        desc = "; ".join(f"{', '.join(v)} at {k:g} fps" for k, v in rates.items())
        raise TakeError(f"the takes were baked at different frame rates ({desc}): re-bake "
                        f"them in one scene rate")
    if rates:
        return next(iter(rates))
    scene = scene or bpy.context.scene
    return scene.render.fps / scene.render.fps_base


# --------------------------------------------------------------------------------------
# Stacking


def ensure_rest_track(key) -> None:
    """The shape-key datablock's bottom :data:`REST_TRACK`: one HOLD strip of an action that
    keys every shape key at 0, so frames outside the takes show the neutral face. Made
    before the first take's track (NLA tracks stack in creation order); kept, with its keys
    updated to the current shape keys, when it is there."""
    ad = key.animation_data or key.animation_data_create()
    track = ad.nla_tracks.get(REST_TRACK)
    name = f"{REST_TRACK}|{key.user.name if key.user else key.name}"
    act = None
    if track is not None and len(track.strips):
        act = track.strips[0].action
    if act is None:
        act = bpy.data.actions.get(name) or bpy.data.actions.new(name)
    act[REST_PROP] = True
    slot = _slot_for(act, key) or act.slots.new(id_type="KEY", name=key.name)
    from bpy_extras import anim_utils
    bag = anim_utils.action_ensure_channelbag_for_slot(act, slot)
    for kb in key.key_blocks[1:]:
        blender_anim.write_fcurve(bag, f'key_blocks["{_esc(kb.name)}"].value', 0, [0.0, 1.0],
                                  [0.0, 0.0], interpolation="CONSTANT")
    if track is None:
        if len(ad.nla_tracks):
            # a track made after the takes' would cover them: leave the gaps at the defaults
            return
        track = ad.nla_tracks.new()
        track.name = REST_TRACK
    if not len(track.strips):
        strip = track.strips.new(REST_TRACK, 0, act)
        strip.action_slot = slot
    strip = track.strips[0]
    strip.extrapolation = "HOLD"
    strip.blend_type = "REPLACE"


def _esc(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"')


def remove_tracks(idb, action) -> None:
    """Remove every NLA track of ``idb`` that holds a strip of ``action``."""
    ad = getattr(idb, "animation_data", None)
    if ad is None:
        return
    for track in list(ad.nla_tracks):
        if any(s.action == action for s in track.strips):
            ad.nla_tracks.remove(track)


def stack_take(objects, action, name: str, frame_start: float, capture: str = "") -> Take:
    """Put a baked take on the NLA of the character ``objects``: on each of its datablocks
    that ``action`` has a slot for, a track named ``name`` with one strip of ``action`` at
    ``frame_start`` (the action's first key; extrapolation NOTHING), replacing the tracks of
    an earlier bake of the same action; the action is unassigned (the NLA plays it), marked
    as a take (:data:`TAKE_PROP`, :data:`CAPTURE_PROP`) and kept with a fake user."""
    action[TAKE_PROP] = name
    if capture:
        action[CAPTURE_PROP] = str(capture)
    action.use_fake_user = True
    start = end = None
    for idb in take_ids(objects):
        slot = _slot_for(action, idb)
        ad = idb.animation_data or idb.animation_data_create()
        if slot is None:
            continue
        if isinstance(idb, bpy.types.Key):
            ensure_rest_track(idb)
        remove_tracks(idb, action)
        if ad.action == action:
            ad.action = None
        track = ad.nla_tracks.new()
        track.name = name
        strip = track.strips.new(name, int(round(frame_start)), action)
        strip.action_slot = slot
        strip.extrapolation = "NOTHING"
        strip.blend_type = "REPLACE"
        start = strip.frame_start if start is None else min(start, strip.frame_start)
        end = strip.frame_end if end is None else max(end, strip.frame_end)
    if start is None:
        raise TakeError(f"take {name}: the action animates none of "
                        f"{', '.join(o.name for o in objects if o is not None)}")
    return Take(name, action, start, end, str(capture or ""))


def relayout(objects, first: int | None = None, gap: int = GAP) -> list[Take]:
    """Put the takes one after another again in their order (after a re-bake changed a
    take's length): each starts :data:`GAP` frames after the previous one's last frame."""
    takes = find_takes(objects)
    if not takes:
        return takes
    at = takes[0].frames[0] if first is None else int(first)
    for t in takes:
        shift = at - t.frames[0]
        if shift:
            for idb in take_ids(objects):
                for _track, strip in _strips(idb):
                    if strip.action == t.action:
                        strip.frame_start_ui = strip.frame_start + shift
            t.frame_start += shift
            t.frame_end += shift
        at = t.frames[1] + int(gap) + 1
    return find_takes(objects)


def remove_take(objects, name: str) -> None:
    """Take ``name`` off the character: its tracks go, and its action when nothing else
    uses it."""
    for t in find_takes(objects):
        if t.name != name:
            continue
        for idb in take_ids(objects):
            remove_tracks(idb, t.action)
        t.action.use_fake_user = False
        if t.action.users == 0:
            bpy.data.actions.remove(t.action)


def show_take(scene, take: Take, all_takes=None) -> None:
    """Switch the timeline to ``take``: the scene's frame range is the take's (the whole
    reel with ``all_takes``), the current frame its first."""
    if all_takes:
        first = min(t.frames[0] for t in all_takes)
        last = max(t.frames[1] for t in all_takes)
    else:
        first, last = take.frames
    scene.frame_start, scene.frame_end = first, max(first, last)
    scene.frame_set(take.frames[0])


# --------------------------------------------------------------------------------------
# Export helpers


@contextlib.contextmanager
def only_takes(objects, names, mute_rest: bool = False):
    """For the duration, the strips of the other takes (and with ``mute_rest`` the rest
    tracks' strips) are muted on the character's datablocks; put back afterwards."""
    keep = set(names)
    changed = []
    try:
        for idb in take_ids(objects):
            for track, strip in _strips(idb):
                act = strip.action
                other = is_take(act) and str(act.get(TAKE_PROP)) not in keep
                rest = mute_rest and (track.name == REST_TRACK or (act is not None and
                                                                   REST_PROP in act))
                if (other or rest) and not strip.mute:
                    strip.mute = True
                    changed.append(strip)
        yield
    finally:
        for strip in changed:
            strip.mute = False


@contextlib.contextmanager
def carriers(objects, takes):
    """For the duration of an FBX export, every take has exactly one strip on the exported
    objects: FBX's NLA export writes one stack per object strip, each with every exported
    object's animation over the strip's frames. So where several objects carry the take
    (the actor rig and the character exported together) all but the first armature's are
    muted, and a take that animates only shape keys (a character without an armature)
    gets a temporary strip on the first mesh object, through a temporary slot of its
    action that animates nothing, over the take's frames. Put back afterwards."""
    objs = [o for o in objects if o is not None]
    undo = []
    try:
        for t in takes:
            held = [(o, strip) for o in objs for _tr, strip in _strips(o)
                    if strip.action == t.action and not strip.mute]
            if held:
                held.sort(key=lambda p: p[0].type != "ARMATURE")
                for _o, strip in held[1:]:
                    strip.mute = True
                    undo.append(lambda strip=strip: setattr(strip, "mute", False))
                continue
            host = next((o for o in objs if o.type == "ARMATURE"), None) or \
                next((o for o in objs if o.type == "MESH"), None)
            if host is None:
                continue
            ref = next((strip for idb in take_ids(objs) for _tr, strip in _strips(idb)
                        if strip.action == t.action), None)
            if ref is None:
                continue
            slot = t.action.slots.new(id_type="OBJECT", name=host.name)
            ad = host.animation_data or host.animation_data_create()
            track = ad.nla_tracks.new()
            track.name = t.name
            strip = track.strips.new(t.name, int(round(ref.frame_start)), t.action)
            strip.action_slot = slot
            # the slot animates nothing: give the strip the take's range explicitly
            strip.action_frame_end = max(ref.action_frame_end, strip.action_frame_start)
            strip.action_frame_start = ref.action_frame_start
            strip.action_frame_end = ref.action_frame_end
            strip.scale, strip.repeat = 1.0, 1.0
            strip.frame_end_ui = ref.frame_end
            strip.extrapolation = "NOTHING"

            def back(ad=ad, track=track, act=t.action, slot=slot):
                ad.nla_tracks.remove(track)
                act.slots.remove(slot)
            undo.append(back)
        yield
    finally:
        for f in reversed(undo):
            f()


def take_key_frames(take, armature) -> dict[str, list[float]]:
    """{bone name: rotation key frames relative to the take's first frame} of the take's
    armature slot (what FBX's key reduction keeps per bone)."""
    slot = _slot_for(take.action, armature) if armature is not None else None
    out: dict[str, list[float]] = {}
    if slot is None:
        return out
    import numpy as np
    from .blender_anim import _BONE_RE, _unescape
    first = None
    for _track, strip in _strips(armature):
        if strip.action == take.action:
            first = strip.action_frame_start
            break
    for layer in take.action.layers:
        for st in layer.strips:
            bag = st.channelbag(slot)
            if bag is None:
                continue
            for fc in bag.fcurves:
                m = _BONE_RE.match(fc.data_path)
                if not m or "rotation" not in m.group(2):
                    continue
                n = len(fc.keyframe_points)
                co = np.empty(2 * n, np.float32)
                fc.keyframe_points.foreach_get("co", co)
                f0 = first if first is not None else float(co[0])
                out.setdefault(_unescape(m.group(1)), []).extend((co[0::2] - f0).tolist())
    return out


__all__ = ["Take", "TakeError", "TAKE_PROP", "CAPTURE_PROP", "REST_TRACK", "GAP", "take_name",
           "take_ids", "find_takes", "select_takes", "next_start", "take_rate",
           "ensure_rest_track", "stack_take", "relayout", "remove_take", "show_take",
           "only_takes", "carriers", "take_key_frames", "remove_tracks", "is_take"]
