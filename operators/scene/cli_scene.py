"""Scene jobs for the command line (``rig``, ``retarget``, ``export``, ``run``) and the demo.

Blender side (needs bpy), no operators: each function builds or changes the current
scene with the library modules (rig_build, retarget_bake, fbx_io). The CLI opens an
empty scene first, so nothing here touches a user's file.
"""
from __future__ import annotations

from pathlib import Path

import bpy

from . import fbx_io, gltf_io, reference_video, retarget_bake, rig_build, takes
from .._core import head_model
from .._core import core as _core_pkg

ACTOR_NAME = "EMOCA_actor"
CHARACTER_NAME = "Character"
SPACING = 0.2  # metres between actor and character in the demo scene


def _bad_input(msg: str) -> Exception:
    import importlib

    errors = importlib.import_module(_core_pkg.__name__ + ".errors")
    return errors.BadInput(msg)


def new_scene() -> None:
    """An empty scene (factory settings, no objects)."""
    bpy.ops.wm.read_factory_settings(use_empty=True)


def _model_for(capture, model_path=None):
    """(head model, identity or None) of the capture's rig: the ICT head with the actor's
    identity for captures in ARKit channels, or the model file given."""
    name = capture.meta.get("head_model") or "ict_head"
    identity = None
    if model_path:
        model = head_model.load_head_model(model_path)
    elif name in head_model.ARKIT_HEADS:
        model, identity = rig_build.arkit_head(capture)
    elif name.startswith("FLAME-"):
        raise _bad_input(f"this capture was made with the FLAME model {name!r} (backend "
                         "flame-fit or emoca): give your FLAME folder with --flame-dir (or set "
                         "EMOCA_BLENDER_FLAME_DIR)")
    else:
        raise _bad_input(f"this capture was made with head model {name!r}; give its model "
                         f"file with --model")
    cap_names = tuple(capture.names.get("expression", ()))
    if cap_names != tuple(model.expression_names):
        raise _bad_input(
            f"the capture's expression ({len(cap_names)} components of {name!r}) does not "
            f"match the rig model {model.name!r} ({model.n_expressions} components); build "
            f"the rig with the model the capture was made with")
    return model, identity


def _place(objs, x: float) -> None:
    """Move the top of each hierarchy sideways (armature carries its meshes)."""
    for o in objs:
        if o is not None and o.parent is None:
            o.location.x += x


def _flame_model_for(capture, flame_dir):
    """The FLAME HeadModel of a flame-fit/emoca capture: the user's FLAME model with the
    capture's identity baked in (UVs when head_template.obj is there); refuses a capture
    made with another model (flame.FlameError -> BadInput naming both)."""
    import importlib
    import os

    flame = importlib.import_module(_core_pkg.__name__ + ".models.flame")
    flame_dir = flame_dir or os.environ.get("EMOCA_BLENDER_FLAME_DIR")
    try:
        assets = flame.load_assets(flame_dir)
        return flame.head_model_for_capture(assets.model, capture, uv_coords=assets.uv_coords,
                                            uv_faces=assets.uv_faces)
    except flame.FlameError as e:
        raise _bad_input(str(e)) from None


def build_actor(capture, model_path=None, frame_start: int = 1, offset: float = 0.0,
                flame_dir=None, capture_path=None, timing: str = "clip",
                take: str | None = None):
    """The head rig of the capture's head model, animated by the capture: for a FLAME
    capture (``head_model`` FLAME-...) with ``flame_dir``, the FLAME rig
    (:func:`rig_build.build_flame_rig`: identity baked, expression and pose-corrective keys,
    joint offsets), whose material plays the capture's displacement maps when the emoca
    backend wrote them beside ``capture_path``. The capture's emotion curves, when it has
    them, are keyed as custom properties of the rig (``emotion_happy``...). ``timing``: the
    bake's (``rig_build.TIMINGS``). With ``take`` the animation is the actor's first take
    (``operators.scene.takes``; more with ``cli_takes.animate_actor_take``)."""
    import os

    name = str(capture.meta.get("head_model") or "")
    # a take: the character's action of that take gets the actor's slots too (one action
    # per take, so an export of both writes one animation per take)
    one = {"action_name": take, "one_action": True} if take else {}
    if name.startswith("FLAME-") and not model_path and (
            flame_dir or os.environ.get("EMOCA_BLENDER_FLAME_DIR")):
        model = _flame_model_for(capture, flame_dir)
        mesh, arm, _ = rig_build.build_flame_rig(model, capture, ACTOR_NAME,
                                                 frame_start=frame_start, timing=timing, **one)
        if capture_path is not None:
            from . import displacement_material

            seq = displacement_material._core_module("models.displacement").sequence_dir(capture_path)
            if seq.is_dir():
                displacement_material.apply_to_rig(mesh, capture_path, frame_start=frame_start)
    else:
        model, identity = _model_for(capture, model_path)
        mesh, arm = rig_build.build_head_object(model, ACTOR_NAME, shape=identity)
        rig_build.animate_head_rig(mesh, arm, capture, frame_start=frame_start,
                                   channels="expression", timing=timing, **one)
    _key_emotion(arm if arm is not None else mesh, capture, frame_start, timing)
    if take:
        from . import takes

        takes.stack_take([mesh, arm], bpy.data.actions[take], take, frame_start,
                         capture=str(capture_path or ""))
    _place([mesh, arm], offset)
    return mesh, arm


def _key_emotion(obj, capture, frame_start, timing: str = "clip") -> None:
    """The capture's emotion curves, when it has them, keyed on the rig at its key frames."""
    if "emotion_probs" in capture:
        from . import emotion_curves

        frames = rig_build.capture_key_frames(capture, frame_start,
                                              rig_build.timing_rate(capture, timing))
        emotion_curves.key_emotion_curves(obj, capture, frame_start, frames=frames)


def load_character(character: str = "sample", offset: float = 0.0) -> list:
    """The character to retarget onto: 'sample' (bundled), a .blend (all its objects are
    appended) or an .fbx (imported). Returns the new objects."""
    before = set(bpy.data.objects)
    if character in ("sample", "", None):
        model, identity = rig_build.arkit_head()
        mesh, arm = rig_build.build_head_object(model, CHARACTER_NAME, shape=identity)
        new = [o for o in (mesh, arm) if o is not None]
    else:
        p = Path(character)
        if not p.is_file():
            raise _bad_input(f"character file {p} does not exist")
        if p.suffix.lower() == ".blend":
            with bpy.data.libraries.load(str(p), link=False) as (src, dst):
                dst.objects = list(src.objects)
            coll = bpy.context.scene.collection
            for o in dst.objects:
                if o is not None:
                    coll.objects.link(o)
        elif p.suffix.lower() == ".fbx":
            bpy.ops.import_scene.fbx(filepath=str(p))
        else:
            raise _bad_input(f"character {p.name}: give 'sample', a .blend or an .fbx file")
        new = [o for o in bpy.data.objects if o not in before]
    _place(new, offset)
    return new


def retarget(capture, character: str = "sample", frame_start: int = 1, offset: float = 0.0,
             timing: str = "clip", **keys) -> dict:
    """Bake onto the character; ``keys``: bake_capture's ``tolerance`` and
    ``angle_tolerance_deg`` (reduced at 0.01 / 0.2 degrees by default; None: dense)."""
    objs = load_character(character, offset)
    meshes, arm = retarget_bake.find_targets(objs)
    if not meshes and arm is None:
        raise _bad_input("the character has no mesh with shape keys and no armature: "
                         "nothing to retarget onto")
    summary = retarget_bake.bake_capture(capture, meshes, armature=arm, frame_start=frame_start,
                                         timing=timing, **keys)
    summary["objects"] = [o.name for o in objs]
    return summary


def summary_line(summary: dict) -> str:
    return (f"{mapped_channels(summary)} ARKit channels onto shape keys, bones "
            f"{', '.join(f'{k}={v}' for k, v in summary.get('bones', {}).items()) or 'none'}, "
            f"{summary.get('keys', 0)} keys (dense {summary.get('keys_dense', 0)})")


def save_blend(path) -> Path:
    """The scene as a .blend; external files (the reference movie and its sound) keep the
    absolute paths they were given, so the .blend can be moved (see reference_video)."""
    return fbx_io.save_blend(path, relative_remap=False)


def _animated(objs) -> list:
    from . import takes

    out = []
    for o in objs:
        keys = getattr(getattr(o, "data", None), "shape_keys", None)
        if (o.animation_data and o.animation_data.action) or (
                keys is not None and keys.animation_data and keys.animation_data.action) or \
                takes.find_takes([o]):
            out.append(o)
    return out


def export_blend(blend: Path, out: Path, objects=None, preset: str = "generic",
                 face_only: bool = False, takes=None, per_take: bool = False):
    """Export a .blend's animated objects (or ``objects``) over its frame range: glTF when
    ``out`` ends in .glb/.gltf (``preset`` is FBX's and not used), FBX otherwise. A .blend
    whose objects carry takes (``operators.scene.takes``) exports them all as named animations
    (or ``takes``, a list of names; ``per_take``: one file each, and the paths are
    returned)."""
    from . import takes as takes_mod

    if not Path(blend).is_file():
        raise _bad_input(f".blend file {blend} does not exist")
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    scene = bpy.context.scene
    if objects:
        missing = [n for n in objects if n not in bpy.data.objects]
        if missing:
            raise _bad_input(f"no object named {', '.join(missing)} in {Path(blend).name}")
        objs = [bpy.data.objects[n] for n in objects]
    else:
        objs = _animated(scene.objects)
    if not objs:
        raise _bad_input(f"{Path(blend).name} has no animated object to export")
    has_takes = bool(takes_mod.find_takes(objs))
    if (takes or per_take) and not has_takes:
        raise _bad_input(f"{Path(blend).name} has no takes (--take and --per-take are for a "
                         f".blend made from several clips)")
    paths = export_objects(objs, Path(out), preset, face_only,
                           (takes or "all") if has_takes else None, per_take)
    return paths if per_take else paths[0]


def add_reference(capture, actor_objects, frame_start: int = 1, framed=()) -> dict:
    """The capture's video beside the actor rig and its audio as a sound strip
    (:mod:`reference_video`), and the scene camera framing the actor, ``framed`` (the
    character) and the video. Never fails the job: a missing video or one without audio
    is a message. Returns ``{"reference", "sound", "messages"}``."""
    scene = bpy.context.scene
    scene.view_settings.view_transform = "Standard"    # the video's own colours
    try:
        ref = reference_video.from_capture(capture, frame_start=frame_start)
        info = reference_video.add(scene, ref, actor_objects)
    except FileNotFoundError as e:
        reference_video.frame_all(scene, [*actor_objects, *framed])
        return {"reference": None, "sound": None, "messages": [f"{e}: no reference video"]}
    plane = bpy.data.objects[info["plane"]]
    reference_video.frame_all(scene, [*actor_objects, *framed, plane])
    return {"reference": info["plane"], "sound": info["sound"], "messages": info["messages"]}


def run_job(capture, out_dir: Path, name: str, character: str = "sample",
            frame_start: int = 1, flame_dir=None, capture_path=None, scene_fps=None,
            **keys) -> dict:
    """The demo scene: actor rig in the middle, retargeted character on the right, the
    actor's video on the left (with its sound strip, :func:`add_reference`); writes
    NAME.blend (all) and NAME.fbx (the character with its animation)."""
    out_dir = Path(out_dir)
    new_scene()
    timing = "clip"            # the scene takes the clip's rate, else keeps scene_fps
    if scene_fps is not None:
        rig_build.set_scene_rate(bpy.context.scene, float(scene_fps))
        timing = "scene"
    actor_mesh, actor_arm = build_actor(capture, frame_start=frame_start, offset=-SPACING,
                                        flame_dir=flame_dir, capture_path=capture_path,
                                        timing=timing)
    summary = retarget(capture, character, frame_start=frame_start, offset=+SPACING,
                       timing=timing, **keys)
    scene = bpy.context.scene
    char_objs = [bpy.data.objects[n] for n in summary["objects"]]
    fbx = fbx_io.export_fbx(out_dir / f"{name}.fbx", char_objs,
                            frame_start=scene.frame_start, frame_end=scene.frame_end)
    ref = add_reference(capture, [actor_mesh, actor_arm], frame_start, framed=char_objs)
    blend = save_blend(out_dir / f"{name}.blend")
    return {
        "blend": str(blend), "fbx": str(fbx), "frames": capture.n_frames,
        "valid": int(capture["valid"].sum()), "mapped": mapped_channels(summary),
        "bones": summary.get("bones", {}), "actor": actor_mesh.name,
        "keys": summary.get("keys", 0), "keys_dense": summary.get("keys_dense", 0),
        **ref,
    }


def mapped_channels(summary: dict) -> int:
    """How many ARKit channels reached at least one shape key."""
    chans = set()
    for info in summary.get("shape_keys", {}).values():
        chans.update(k for k, v in info.get("mapped", {}).items() if v)
    return len(chans)


def per_take_path(out: Path, take: str) -> Path:
    """One take's file beside ``out``: ``<stem>_<take><suffix>``."""
    out = Path(out)
    suffix = next((s for s in (".fbx", ".glb", ".gltf") if out.name.lower().endswith(s)),
                  out.suffix)
    stem = out.name[: -len(suffix)] if suffix else out.name
    safe = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in take)
    return out.with_name(f"{stem}_{safe}{suffix}")


def export_objects(objs, out: Path, preset: str = "generic", face_only: bool = False,
                   which=None, per_take: bool = False) -> list[Path]:
    """Export ``objs`` of the current scene: glTF when ``out`` ends in .glb/.gltf (``preset``
    is FBX's and not used), FBX otherwise. ``which``: None for the assigned animation over
    the scene's range, "all" or a list of take names for those takes as named animations
    in one file, or with ``per_take`` one file each (:func:`per_take_path`). Returns the
    paths written."""
    scene = bpy.context.scene
    gltf = Path(out).suffix.lower() in gltf_io.SUFFIXES
    kw = dict(frame_start=scene.frame_start, frame_end=scene.frame_end, face_only=face_only)
    if not gltf:
        kw["preset"] = preset
    write = gltf_io.export_gltf if gltf else fbx_io.export_fbx
    if which is None:
        return [write(out, objs, **kw)]
    try:
        chosen = takes.select_takes(objs, None if which == "all" else list(which))
    except takes.TakeError as e:
        raise _bad_input(str(e)) from None
    if not per_take:
        return [write(out, objs, takes=[t.name for t in chosen], **kw)]
    return [write(per_take_path(out, t.name), objs, takes=[t.name], **kw) for t in chosen]
