"""The capture's emotion curves keyed on a Blender object: custom properties ``emotion_*``
(probabilities, valence, arousal, the refinement's strength), one action per object.

Blender side (needs bpy), no operators: Key Emotion Curves (``ops_emotion``), Build Rig
(``ops_rig``), the refinement job (``ops_emotion_jobs``) and the command line's scenes
(``cli_scene``) call it.
"""
from __future__ import annotations


PREFIX = "emotion_"
ACTION_SUFFIX = "|emotion"
REFINED_DESCRIPTION = ("Refine Expression (Emotion): its Strength on the frames whose "
                       "expression it changed, 0 on the frames it left alone")


def emotion_curves(cap) -> dict[str, "np.ndarray"]:
    """{property name: (N,) values} for a capture: one per class, plus valence/arousal."""
    import numpy as np

    out = {}
    if "emotion_probs" in cap:
        for j, c in enumerate(cap.names.get("emotion_probs", ())):
            out[PREFIX + str(c)] = np.asarray(cap["emotion_probs"][:, j], np.float64)
    for k in ("valence", "arousal", "refined"):
        if PREFIX + k in cap or k in cap:
            out[PREFIX + k] = np.asarray(cap[k if k in cap else PREFIX + k], np.float64)
    return out


def key_emotion_curves(obj, cap, frame_start: int = 1, frames=None, only=None) -> list[str]:
    """Key the capture's emotion curves as custom properties of ``obj`` (one key per
    captured frame, at ``frames``: default ``frame_start + i``; the rig's key frames for
    another timing, ``rig_build.capture_key_frames``). Curves already on the object (bones,
    transforms) are kept: the emotion curves go into the action the object already uses,
    else into a new one. ``only``: key just these property names. Returns the property
    names keyed."""
    import numpy as np

    from . import blender_anim

    curves = {k: v for k, v in emotion_curves(cap).items() if only is None or k in only}
    if not curves:
        return []
    bags = blender_anim.channelbags_of(obj)
    bag = bags[0] if bags else \
        blender_anim.ensure_action(obj, f"{obj.name}{ACTION_SUFFIX}")[1]
    if frames is None:
        frames = frame_start + np.arange(cap.n_frames, dtype=np.float64)
    for name, vals in curves.items():
        ranged = not name.endswith(("valence", "arousal"))
        obj[name] = float(vals[0])
        ui = obj.id_properties_ui(name)
        what = (REFINED_DESCRIPTION if name == PREFIX + "refined" else
                f"Emotion curve from the capture: {name[len(PREFIX):]}"
                + (" probability" if ranged else ""))
        ui.update(min=0.0 if ranged else -1.0, max=1.0, soft_min=0.0 if ranged else -1.0,
                  soft_max=1.0, description=what)
        blender_anim.write_fcurve(bag, f'["{name}"]', 0, frames, vals, group="Emotion")
    # new ID properties reach the evaluated copy (which animation writes) only when the
    # object is tagged; without it the keyed values never show
    obj.update_tag()
    return list(curves)


__all__ = ["PREFIX", "ACTION_SUFFIX", "REFINED_DESCRIPTION", "emotion_curves", "key_emotion_curves"]
