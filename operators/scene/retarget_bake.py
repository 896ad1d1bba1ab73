"""Retarget a Capture onto any character: ARKit curves onto its shape keys by name, head,
jaw and eye rotations onto its bones, baked as plain keyframes (one Action per target).

Name matching (:func:`arkit_name_mapping`) splits a shape-key name into words (separators
``_ . - : space`` and camelCase/PascalCase boundaries), lower-cases them, turns side words
(``L``/``R``/``Left``/``Right``, as a suffix or a prefix) into a trailing ``left``/``right``,
and matches an ARKit channel when the key's words *end with* the channel's words, so any
vendor prefix (``CC_Base_``, ``A01_``, ``blendShape1.``, ``mesh.``, ``ARKit_``...) is ignored.
An unsided ARKit channel with no unsided key (``browInnerUp``) goes to both sided keys
(``browInnerUp_L`` and ``browInnerUp_R``, as in ICT FaceKit).

Bones: the character is taken to face -Y with +Z up in world space at its rest pose (Blender's
Front view), whatever its armature object's own rotation (FBX imports often carry a 90
degree X rotation and 0.01 scale). A rotation of the capture, in the head model's axes, is
turned into each bone's local frame (``rig_build.model_rotvec_to_bone_quat`` with the bone's
world rest orientation). The head is keyed relative to the capture's median head pose
(``R_rel = R_median^T R_t``, a rotation in the actor's neutral-head frame), so the character
faces forward when the actor faces their usual direction, wherever the camera was. The jaw
and eyes are keyed as captured (zero = closed / looking ahead), relative to the head.
Pose bones are switched to ``rotation_mode = 'QUATERNION'``.

Eyes are driven once: on ARKit avatars whose eyeLook* keys rotate the eyeball meshes (found by
a rigid fit of each key, ``gaze.key_rotation``) and whose eye bones carry those eyeballs too,
keying both would add the rotations; :func:`choose_eye_drive` picks one (or the user does),
and both eyes get one consistent gaze (``gaze.consistent_gaze``).
"""
from __future__ import annotations

import importlib

import bpy
import numpy as np

from . import blender_anim, rig_build
from .._core import arkit, core, rotations

retarget = importlib.import_module(core.__name__ + ".retarget.mapping")
gaze = importlib.import_module(core.__name__ + ".retarget.gaze")
keyreduce = importlib.import_module(core.__name__ + ".retarget.keyreduce")

TOLERANCE_PROP = "emoca_key_tolerance"   # on baked actions: 0 dense, else the weight tolerance

_words = retarget.words


def arkit_name_mapping(key_names: list[str], tables=retarget.TABLES) -> dict[str, list[str]]:
    """Map each ARKit channel to the shape keys of a character that carry it (names in any
    case, with prefixes, ``_L``/``_R`` splits, and the CC4 / VRM / MetaHuman alias tables).
    See ``emoca_blender.retarget.mapping.name_mapping``."""
    return retarget.name_mapping(key_names, tables)


def unmapped_keys(key_names: list[str], mapping: dict[str, list[str]]) -> list[str]:
    """Shape keys that no channel of ``mapping`` drives (``Basis`` excluded)."""
    return retarget.unmapped_keys(key_names, mapping)


class RetargetError(ValueError):
    """The targets cannot receive the capture (the message says what to do)."""


def find_targets(objects) -> tuple[list, object | None]:
    """Split a selection into retarget targets.

    Args:
        objects: any objects (e.g. ``context.selected_objects``); an armature brings its
            child meshes along.
    Returns:
        (meshes with shape keys, armature or None): the armature is a selected one, else the
        parent / Armature-modifier armature of a selected mesh.
    """
    objects = [o for o in objects if o is not None]
    arm = next((o for o in objects if o.type == "ARMATURE"), None)
    candidates = []
    for o in objects:
        if o.type == "MESH":
            candidates.append(o)
        elif o.type == "ARMATURE":
            candidates += [c for c in o.children_recursive if c.type == "MESH"]
    meshes, seen = [], set()
    for o in candidates:
        key = o.data.shape_keys
        if key is not None and len(key.key_blocks) > 1 and o.name not in seen:
            seen.add(o.name)
            meshes.append(o)
    if arm is None:
        for o in meshes:
            if o.parent is not None and o.parent.type == "ARMATURE":
                arm = o.parent
                break
            mod = next((m for m in o.modifiers if m.type == "ARMATURE" and m.object), None)
            if mod is not None:
                arm = mod.object
                break
    return meshes, arm


_NOISE = {"cc", "base", "def", "org", "mch", "bip", "bone", "jnt", "joint", "bn", "b", "j",
          "mixamorig", "rig", "c", "ctrl", "deform", "sk", "fk"}
_FORBID = {"lid", "lids", "brow", "lash", "lashes", "target", "end", "tip", "ik", "socket",
           "twist", "nub", "upper", "top", "pole", "look", "aim"}


def _bone_words(name: str) -> list[str]:
    return [w for w in _words(name) if w not in _NOISE and not w.isdigit()]


def guess_bones(armature) -> dict[str, str]:
    """Guess the head, neck, jaw and eye bones of an armature from their names.

    Knows our own rig (root, neck, jaw, left_eye, right_eye: the neck bone sits at the base
    of the skull and carries the head, so the head rotation goes there and the neck below
    stays put),
    Mixamo (``mixamorig:Head``, ``mixamorig:LeftEye``), Character Creator
    (``CC_Base_Head``, ``CC_Base_JawRoot``, ``CC_Base_L_Eye``), Rigify/ Blender style
    (``head``, ``jaw``, ``eye.L``), ``eye_L``, ``LeftEye``, ``Eye_Left``...
    Returns:
        {role: bone_name} for the roles found among head, neck, jaw, left_eye, right_eye.
    """
    bones = [b.name for b in armature.data.bones]
    names = set(bones)
    if {"root", "neck", "jaw", "left_eye", "right_eye"} <= names:
        return {"head": "neck", "jaw": "jaw", "left_eye": "left_eye", "right_eye": "right_eye"}
    want = {
        "head": [["head"]],
        "neck": [["neck"]],
        "jaw": [["jaw"], ["jaw", "root"], ["jaw", "master"], ["lower", "jaw"], ["jaw", "main"],
                ["mandible"], ["chin"]],
        "left_eye": [["eye", "left"], ["eyeball", "left"], ["eye", "ball", "left"]],
        "right_eye": [["eye", "right"], ["eyeball", "right"], ["eye", "ball", "right"]],
    }
    out: dict[str, str] = {}
    words = {b: _bone_words(b) for b in bones}
    for role, patterns in want.items():
        best = None
        for rank, pat in enumerate(patterns):
            for b in bones:          # armature order: parents before children
                w = words[b]
                if sorted(w) == sorted(pat):
                    score = (0, rank)
                elif set(pat) <= set(w) and not (set(w) & _FORBID) and len(w) <= len(pat) + 1:
                    score = (1, rank)
                else:
                    continue
                if best is None or score < best[0]:
                    best = (score, b)
        if best is not None:
            out[role] = best[1]
    if "neck" in out and "head" in out:
        # several neck bones (neck_01, neck_02): take the head's nearest neck ancestor
        p = armature.data.bones[out["head"]].parent
        while p is not None:
            if "neck" in _bone_words(p.name):
                out["neck"] = p.name
                break
            p = p.parent
    return out


def median_rotation(rotvecs: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """A robust central rotation of (N, 3) axis-angles: the normalised component-wise median
    of sign-aligned quaternions (over valid frames). Returns a (4,) quaternion."""
    q = rotations.rotvec_to_quat(rotvecs)
    if valid is not None and np.any(valid):
        q = q[np.asarray(valid, bool)]
    ref = q[0]
    q = np.where((q @ ref)[:, None] < 0, -q, q)
    m = np.median(q, axis=0)
    n = np.linalg.norm(m)
    return m / n if n > 1e-9 else np.array([1.0, 0.0, 0.0, 0.0])


def relative_head_rotation(capture) -> np.ndarray:
    """(N, 3) head rotation relative to the median pose, in the neutral head's frame
    (model axes): ``R_rel = R_median^T R_t``."""
    q = rotations.rotvec_to_quat(capture["head_rotation"])
    qm = median_rotation(capture["head_rotation"], capture.get("valid"))
    qm_inv = qm * np.array([1.0, -1.0, -1.0, -1.0])
    return rotations.quat_to_rotvec(rotations.quat_mul(qm_inv[None], q))


def _stem(capture) -> str:
    return blender_anim.action_stem(capture)


def _key_names(obj) -> list[str]:
    return [kb.name for kb in obj.data.shape_keys.key_blocks[1:]]


EYE_DRIVES = ("auto", "bones", "shape_keys")


def eyelook_key_rotations(obj, mapping: dict[str, list[str]]) -> dict[str, dict]:
    """The eyeLook* shape keys of a mesh (as ``mapping`` assigns them) that rotate a part of
    it rigidly (an eyeball), rather than deform lids: {key: {"channel", "angle_deg",
    "vertices"}} (``gaze.key_rotation`` on the key's offsets from its relative key)."""
    eye_keys = {k: ch for ch, ks in mapping.items() if ch in gaze.EYE_LOOK for k in ks}
    if not eye_keys or obj.data.shape_keys is None:
        return {}
    me = obj.data
    n = len(me.vertices)
    edges = np.empty(len(me.edges) * 2, np.int64)
    me.edges.foreach_get("vertices", edges)
    blocks = me.shape_keys.key_blocks
    out = {}
    for k, ch in eye_keys.items():
        kb = blocks.get(k)
        if kb is None:
            continue
        co = np.empty(n * 3, np.float64)
        ref = np.empty(n * 3, np.float64)
        kb.data.foreach_get("co", co)
        kb.relative_key.data.foreach_get("co", ref)
        r = gaze.key_rotation(ref.reshape(n, 3), co.reshape(n, 3), edges.reshape(-1, 2))
        if r is not None:
            out[k] = {"channel": ch, "angle_deg": r["angle_deg"], "vertices": r["vertices"]}
    return out


def _bone_moves(armature, mesh, bone: str) -> bool:
    """Whether ``bone`` carries (parenting or skinning) any of ``mesh``."""
    if mesh.parent == armature and mesh.parent_type == "BONE" and mesh.parent_bone == bone:
        return True
    skinned = any(m.type == "ARMATURE" and m.object == armature for m in mesh.modifiers)
    return skinned and bone in mesh.vertex_groups


def choose_eye_drive(requested: str, armature, bones: dict, meshes, rotating: dict
                     ) -> tuple[str, str]:
    """Drive each eye one way only. ``requested`` "bones" or "shape_keys" is taken as asked;
    "auto" takes the eye bones when the character has them and they carry the eyeballs
    whose eyeLook keys rotate them (or no eyeLook key rotates an eyeball), else the shape
    keys. Returns (drive, reason shown in the Bones panel)."""
    if requested not in EYE_DRIVES:
        raise RetargetError(f"eye drive {requested!r}: expected one of {', '.join(EYE_DRIVES)}")
    eye_bones = [bones.get(r) for r in ("left_eye", "right_eye") if bones.get(r)]
    has_bones = armature is not None and bool(eye_bones)
    turned = sorted(rotating)
    if requested == "bones":
        return "bones", ("eye bones (as asked)" + (f"; eyeLook keys of {', '.join(turned)} "
                                                  f"not keyed" if turned else ""))
    if requested == "shape_keys":
        return "shape_keys", "eyeLook shape keys (as asked); eye bones not keyed"
    if turned and has_bones:
        by_mesh = {o.name: o for o in meshes}
        carried = [n for n in turned if any(_bone_moves(armature, by_mesh[n], b)
                                            for b in eye_bones)]
        if carried:
            return "bones", (f"eye bones: they carry {', '.join(carried)}, whose eyeLook keys "
                             f"also rotate it (those keys are not keyed)")
        return "shape_keys", (f"eyeLook keys: they rotate {', '.join(turned)}, which the eye "
                              f"bones do not carry (eye bones not keyed)")
    if turned:
        return "shape_keys", f"eyeLook keys: they rotate {', '.join(turned)}"
    if has_bones:
        return "bones", "eye bones (no eyeLook key rotates an eyeball)"
    return "shape_keys", "eyeLook keys (no eye bones)"


def bake_capture(capture, targets, armature=None, mapping=None, bones=None, frame_start: int = 1,
                 action_name: str | None = None, set_scene: bool = True, *, calibration=None,
                 neutral_frame: int | None = None, bone_settings=None, frame_range=None,
                 curves=None, tables=retarget.TABLES, eye_drive: str = "auto",
                 consistent_eyes: bool = True,
                 tolerance: float | None = keyreduce.WEIGHT_TOLERANCE,
                 angle_tolerance_deg: float | None = keyreduce.ANGLE_TOLERANCE_DEG,
                 timing: str = "clip", one_action: bool = False) -> dict:
    """Bake a capture onto characters as plain LINEAR keyframes: only the keys each curve
    needs to stay within a tolerance of the dense bake (one key per captured frame) at every
    frame, or the dense bake itself with ``tolerance=None``.

    Args:
        capture: a ``capture_file.Capture``.
        targets: mesh objects with shape keys (an armature among them is used as
            ``armature``); several meshes (face, teeth, eyes...) are all driven.
        armature: the armature whose bones get the head/jaw/eye rotations (optional).
        mapping: {channel: [shape key names]}; guessed per mesh with
            :func:`arkit_name_mapping` when None. Keys a mesh lacks are skipped.
        bones: {role: bone_name} for roles head, jaw, left_eye, right_eye (``root`` is taken
            as head); guessed with :func:`guess_bones` when None. Pass ``{}`` for no bones.
        frame_start: scene frame of the first baked capture frame (the frame offset).
        action_name: base name of the actions (default: the capture's source file stem);
            each target's action is ``<base>|<object name>``, or with ``one_action`` one
            action named ``<base>`` holds every target's curves (one slot per target: the
            meshes' shape keys and the armature), as a take (``takes``) does.
        set_scene: set the scene's frame range (and, with ``timing="clip"``, its frame rate)
            to the baked range.
        timing: ``"clip"``: the keys are placed at the clip's frame rate (whole frames for a
            constant-rate clip) and ``set_scene`` retimes the scene to it; ``"scene"``: the
            scene keeps its rate and each captured frame lands at its real time in it,
            ``frame_start + t * scene rate`` (fractional frames where the rates differ; see
            ``rig_build.capture_key_frames``). Either way the actions record the rate their
            frames are in (``blender_anim.FPS_PROP``), which the exports use.
        calibration: {channel: ``retarget.ChannelCalibration``} (gain, offset, clamp,
            smoothing); channels not listed are clamped to [0, 1]. Applied, with the neutral
            frame zeroing, when either is given.
        neutral_frame: capture frame index where the actor rests: its expression is zeroed.
        bone_settings: {role: ``retarget.BoneSettings``}: per-bone axis mapping, gain,
            offset and limits; a non-empty ``bone`` there overrides ``bones[role]``.
        frame_range: (first, last) capture frame indices to bake, inclusive (default all).
        curves: {channel: (N,) values} to bake instead of the capture's ARKit curves (the
            geometric solve gives one curve per shape key); with ``mapping`` None each
            channel drives the key of the same name.
        tables: alias tables for the name guess (see ``retarget.name_mapping``).
        eye_drive: how the eyes turn: ``"bones"`` (eye bones; eyeLook keys that rotate an
            eyeball are not keyed), ``"shape_keys"`` (eyeLook keys; eye bones not keyed;
            keys that rotate an eyeball get the weights that reproduce the gaze) or
            ``"auto"``: chosen by what the character has (:func:`choose_eye_drive`).
        consistent_eyes: give both eyes one gaze (``gaze.consistent_gaze``) before keying.
        tolerance: shape-key weight tolerance (``keyreduce.reduce_keys`` per curve); None:
            dense, one key per frame on every curve (bones too).
        angle_tolerance_deg: bone rotation tolerance in degrees of rotation angle (the 4
            quaternion curves of a bone reduced jointly); None: dense bones.
    Returns:
        {"frames": (first, last) scene frames (the last key's frame rounded up), "fps": the
         clip's rate, "rate": the rate the keys are placed in, "timing",
         "keys": total keys written,
         "keys_dense": keys of the dense bake, "tolerance", "angle_tolerance_deg",
         "actions": {object name: action name},
         "shape_keys": {mesh name: {"mapped": {channel: [keys]}, "unmapped_channels": [...],
                                    "unmapped_keys": [...]}},
         "bones": {role: bone}, "missing_bones": [roles not found], "warnings": [...],
         "eyes": {"drive": "bones" | "shape_keys", "requested", "reason",
                  "rotating_keys": {mesh: [eyeLook keys that rotate an eyeball]},
                  "max_disagreement_deg", "crossed_frames"}}
    Raises:
        RetargetError: nothing to drive (no shape keys and no armature, or an armature with
            none of the head/jaw/eye bones and no mapped shape keys), a bad frame range.
    """
    N_all = capture.n_frames
    lo_f, hi_f = (0, N_all - 1) if frame_range is None else (int(frame_range[0]), int(frame_range[1]))
    if not (0 <= lo_f <= hi_f < N_all):
        raise RetargetError(f"frame range {lo_f}-{hi_f} is outside the capture's {N_all} frames "
                            f"(0-{N_all - 1})")
    sel = slice(lo_f, hi_f + 1)
    N = hi_f - lo_f + 1
    rate = rig_build.timing_rate(capture, timing)
    frames = rig_build.capture_key_frames(capture, frame_start, rate, sel)
    base = action_name or _stem(capture)
    meshes = []
    for o in targets:
        if o is None:
            continue
        if o.type == "ARMATURE":
            armature = armature or o
        elif (o.type == "MESH" and o.data.shape_keys is not None
              and len(o.data.shape_keys.key_blocks) > 1 and o not in meshes):
            meshes.append(o)
    if not meshes and armature is None:
        names = ", ".join(o.name for o in targets if o is not None) or "nothing"
        raise RetargetError(f"Nothing to retarget onto: {names} has no shape keys and no "
                            f"armature. Select the character's face mesh (with shape keys) "
                            f"and/or its armature")
    if curves is not None:
        ch_names = list(curves)
        values = np.stack([np.asarray(curves[c], np.float64) for c in ch_names], -1)
        if values.shape[0] != N_all:
            raise RetargetError(f"curves have {values.shape[0]} frames, the capture {N_all}")
    else:
        ch_names = list(capture.names.get("arkit", arkit.ARKIT_NAMES))
        values = np.asarray(capture["arkit"], np.float64)
    if calibration or neutral_frame is not None:
        values = retarget.calibrate(values, ch_names, calibration, neutral_frame)
    values = values[sel]
    col = {n: i for i, n in enumerate(ch_names)}
    if tolerance is None:
        angle_tolerance_deg = None
    summary = {"frames": (int(np.floor(frames[0] + 1e-6)), int(np.ceil(frames[-1] - 1e-6))),
               "fps": capture.fps, "rate": rate, "timing": timing, "keys": 0,
               "keys_dense": 0, "tolerance": tolerance, "angle_tolerance_deg": angle_tolerance_deg,
               "actions": {}, "shape_keys": {}, "bones": {}, "missing_bones": [], "warnings": []}

    mappings = {}
    for obj in meshes:
        key_names = _key_names(obj)
        present = set(key_names)
        if mapping is not None:
            m = mapping
        elif curves is not None:
            m = {c: [c] for c in ch_names}
        else:
            m = arkit_name_mapping(key_names, tables)
        m = {ch: [k for k in ks if k in present] for ch, ks in m.items() if ch in col}
        m = {ch: ks for ch, ks in m.items() if ks}
        retarget.check_mapping(m)
        mappings[obj.name] = m

    settings = dict(bone_settings or {})
    if armature is not None:
        if bones is None:
            bones = guess_bones(armature)
        bones = dict(bones)
        if "root" in bones and "head" not in bones:
            bones["head"] = bones.pop("root")
        for role, st in settings.items():
            if getattr(st, "bone", ""):
                bones[role] = st.bone
        unknown = [f"{r}={b}" for r, b in bones.items()
                   if r in retarget.ROLES and b and b not in armature.pose.bones]
        if unknown:
            raise RetargetError(f"armature {armature.name} has no bone(s) {', '.join(unknown)}")
    eyes = np.asarray(capture["eyes"], np.float64)
    eye_info = {}
    if consistent_eyes:
        eyes, eye_info = gaze.consistent_gaze(eyes, capture["head_rotation"], capture.fps)
    rotating = {o.name: eyelook_key_rotations(o, mappings[o.name]) for o in meshes}
    rotating = {k: v for k, v in rotating.items() if v}
    drive, reason = choose_eye_drive(eye_drive, armature, bones or {}, meshes, rotating)
    summary["eyes"] = {"drive": drive, "requested": eye_drive, "reason": reason,
                       "rotating_keys": {k: sorted(v) for k, v in rotating.items()}, **eye_info}

    for obj in meshes:
        key = obj.data.shape_keys
        m = mappings[obj.name]
        turns = rotating.get(obj.name, {})
        override = {}
        if turns and drive == "bones":          # the eye bones turn this eyeball: not its keys
            m = {ch: [k for k in ks if k not in turns] for ch, ks in m.items()}
            m = {ch: ks for ch, ks in m.items() if ks}
        elif turns:                              # these keys turn the eyeball: key the gaze
            angles = {}
            for k, rot in turns.items():
                angles.setdefault(rot["channel"], []).append(np.radians(rot["angle_deg"]))
            w = gaze.eyelook_weights(eyes[sel], {c: float(np.mean(a)) for c, a in angles.items()})
            override = {k: w[rot["channel"]] for k, rot in turns.items() if rot["channel"] in w}
        name = base if one_action else f"{base}|{obj.name}"
        action, bag = blender_anim.ensure_action(key, name)
        kept: dict[int, np.ndarray] = {}
        if tolerance is not None and m:     # every mapped channel at once
            cols = sorted({col[ch] for ch in m})
            idx = keyreduce.reduce_many(values[:, cols].T.astype(np.float32), tolerance)
            kept = dict(zip(cols, idx))
        for ch, ks in m.items():
            v = values[:, col[ch]]
            for k in ks:
                vk = np.asarray(override.get(k, v), np.float64)
                keep = slice(None)
                if tolerance is not None:
                    if k in override or col[ch] not in kept:
                        idx = keyreduce.reduce_keys(vk.astype(np.float32), tolerance)
                        if k in override:
                            keep = idx
                        else:
                            kept[col[ch]] = keep = idx
                    else:
                        keep = kept[col[ch]]
                blender_anim.write_fcurve(bag, f'key_blocks["{blender_anim.quoted(k)}"].value', 0,
                                          frames[keep], vk[keep])
                summary["keys"] += len(frames[keep])
                summary["keys_dense"] += N
        summary["actions"][obj.name] = action.name
        summary["shape_keys"][obj.name] = {
            "mapped": m,
            "unmapped_channels": [ch for ch in ch_names if ch not in m],
            "unmapped_keys": unmapped_keys(_key_names(obj), m),
        }

    if armature is not None:
        sources = {"head": relative_head_rotation(capture),
                   "jaw": np.asarray(capture["jaw"], np.float64),
                   "left_eye": eyes[:, 0], "right_eye": eyes[:, 1]}
        if drive == "shape_keys":
            sources = {r: v for r, v in sources.items() if r not in ("left_eye", "right_eye")}
        rot = {}
        for role, r in sources.items():
            b = bones.get(role)
            if b:
                r = r[sel]
                st = settings.get(role)
                rot[b] = st.apply(r) if st is not None else r
                summary["bones"][role] = b
            else:
                summary["missing_bones"].append(role)
        if not rot:
            listed = ", ".join(b.name for b in list(armature.data.bones)[:12])
            msg = (f"No head, jaw or eye bone found in armature {armature.name} (bones: "
                   f"{listed or 'none'}): pick them in the Retarget panel's Bones section")
            if not summary["shape_keys"]:
                raise RetargetError(msg)
            summary["warnings"].append(msg)
        else:
            name = base if one_action else f"{base}|{armature.name}"
            action, bag = blender_anim.ensure_action(armature, name)
            summary["keys"] += rig_build.write_bone_rotations(
                bag, armature, rot, frames, world=True, angle_tolerance_deg=angle_tolerance_deg)
            summary["keys_dense"] += 4 * N * len(rot)
            summary["actions"][armature.name] = action.name

    for name in summary["actions"].values():   # the rate the keys' frames are in
        bpy.data.actions[name][blender_anim.FPS_PROP] = float(rate)
        bpy.data.actions[name][TOLERANCE_PROP] = float(tolerance or 0.0)
    if set_scene:
        rig_build.apply_timing(bpy.context.scene, capture, timing, frames)
    return summary


__all__ = ["arkit_name_mapping", "unmapped_keys", "find_targets", "guess_bones",
           "bake_capture", "RetargetError", "relative_head_rotation", "median_rotation",
           "choose_eye_drive", "eyelook_key_rotations", "EYE_DRIVES", "TOLERANCE_PROP"]
