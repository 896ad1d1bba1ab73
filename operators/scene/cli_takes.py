"""Scene jobs for several clips (takes) on one character: the command line's ``retarget``,
``run`` and ``export`` with several captures or videos, and the Retarget panel's takes.

Blender side (needs bpy), no operators; the single-clip jobs are in :mod:`.cli_scene`, the
NLA layout of the takes in :mod:`.takes`.
"""
from __future__ import annotations

import os
from pathlib import Path

import bpy

from . import cli_scene, retarget_bake, rig_build, takes


def set_scene_fps(rate) -> None:
    """The scene's frame rate ``rate`` (``--scene-fps``): keys are then placed at the clip's
    real times in it (timing "scene")."""
    rig_build.set_scene_rate(bpy.context.scene, float(rate))


def bake_takes(captures, objects, names=None, capture_paths=None, frame_start: int = 1,
               timing: str = "clip", bake=None, **keys) -> list[dict]:
    """Bake each capture onto the character ``objects`` as a take (:mod:`.takes`): one
    action named after the take (``names[i]``, else the clip's stem, made unique), its
    strips on the NLA after the takes already there. ``timing`` "clip" first sets the
    scene's rate to the first capture's; every take is keyed at its frames' real times in
    the scene's rate. ``bake(capture, start, name)`` replaces the plain
    ``retarget_bake.bake_capture`` (the Retarget panel bakes with its mapping and bones).
    The scene's range becomes the whole reel. Returns the bake summaries, each with
    ``take`` (its name) and ``take_frames`` (first, last)."""
    scene = bpy.context.scene
    if timing == "clip" and captures:
        rig_build.set_scene_rate(scene, captures[0].fps)
    meshes, arm = retarget_bake.find_targets(objects)
    if not meshes and arm is None:
        raise cli_scene._bad_input("the character has no mesh with shape keys and no "
                                   "armature: nothing to retarget onto")
    targets = [o for o in objects if o is not None]
    taken = {t.name for t in takes.find_takes(targets)} | set(bpy.data.actions.keys())
    out = []
    for i, cap in enumerate(captures):
        stem = (names[i] if names else None) or retarget_bake._stem(cap)
        name = takes.take_name(stem, taken)
        taken.add(name)
        start = takes.next_start(targets, frame_start)
        if bake is not None:
            summary = bake(cap, start, name)
        else:
            summary = retarget_bake.bake_capture(cap, meshes, armature=arm, frame_start=start,
                                                 action_name=name, one_action=True,
                                                 set_scene=False, timing="scene", **keys)
        path = capture_paths[i] if capture_paths else ""
        t = takes.stack_take(targets, bpy.data.actions[name], name, start,
                             capture=str(path or ""))
        summary["take"], summary["take_frames"] = name, t.frames
        out.append(summary)
    reel = takes.find_takes(targets)
    if reel:
        takes.show_take(scene, reel[0], reel)
    return out


def retarget_takes(captures, character: str = "sample", frame_start: int = 1,
                   offset: float = 0.0, names=None, capture_paths=None,
                   timing: str = "clip", **keys) -> dict:
    """Load the character and bake every capture onto it as a take (:func:`bake_takes`).
    Returns {"objects": [character object names], "takes": [bake summaries]}."""
    objs = cli_scene.load_character(character, offset)
    summaries = bake_takes(captures, objs, names, capture_paths, frame_start, timing, **keys)
    return {"objects": [o.name for o in objs], "takes": summaries}


def animate_actor_take(mesh, arm, capture, take: str, frame_start, model=None,
                       capture_path=None) -> None:
    """A take on the actor rig: the capture keyed at the scene's rate from ``frame_start``
    into the take's action (named ``take``: the character's, which gets the actor's shape
    keys and armature slots, so an export of both writes one animation per take; FLAME rigs
    their joint offsets too; the emotion curves), stacked on the rig's NLA as the
    character's takes are."""
    name = take
    rig_build.animate_head_rig(mesh, arm, capture, frame_start=frame_start, timing="scene",
                               action_name=name, one_action=True)
    rate = rig_build.scene_rate(bpy.context.scene)
    frames = rig_build.capture_key_frames(capture, frame_start, rate)
    if model is not None and arm is not None and \
            model.extra.get("joint_expression") is not None:
        rig_build.key_joint_offsets(arm, model, capture, frame_start, frames=frames)
    if "emotion_probs" in capture:
        from . import emotion_curves

        emotion_curves.key_emotion_curves(arm if arm is not None else mesh, capture,
                                       frame_start, frames=frames)
    takes.stack_take([mesh, arm], bpy.data.actions[name], take, frame_start,
                     capture=str(capture_path or ""))


def run_takes_job(captures, out_dir: Path, name: str, names, capture_paths,
                  character: str = "sample", frame_start: int = 1, flame_dir=None,
                  scene_fps=None, per_take: bool = False, **keys) -> dict:
    """``run`` with several clips: the actor rig (the first capture's identity) and the
    character side by side, every capture a take on both (an action per take named after
    it, NLA strips one after another, keyed at the clips' real times in the scene's rate:
    ``scene_fps``, else the first clip's), the first take's video beside the actor; writes
    NAME.blend and NAME.fbx with one animation stack per take (``per_take``: one
    NAME_<take>.fbx each)."""
    out_dir = Path(out_dir)
    cli_scene.new_scene()
    scene = bpy.context.scene
    set_scene_fps(scene_fps if scene_fps is not None else captures[0].fps)
    char_objs = cli_scene.load_character(character, 0.0)
    summaries = bake_takes(captures, char_objs, names, capture_paths, frame_start,
                           timing="scene", **keys)
    starts = {t.name: t.frames[0] for t in takes.find_takes(char_objs)}
    model = None
    if str(captures[0].meta.get("head_model") or "").startswith("FLAME-") and (
            flame_dir or os.environ.get("EMOCA_BLENDER_FLAME_DIR")):
        model = cli_scene._flame_model_for(captures[0], flame_dir)
    first = summaries[0]["take"]
    actor_mesh, actor_arm = cli_scene.build_actor(
        captures[0], frame_start=starts[first], flame_dir=flame_dir,
        capture_path=capture_paths[0], timing="scene", take=first)
    for cap, s, path in zip(captures[1:], summaries[1:], capture_paths[1:]):
        animate_actor_take(actor_mesh, actor_arm, cap, s["take"], starts[s["take"]],
                           model=model, capture_path=path)
    cli_scene._place([actor_mesh, actor_arm], -cli_scene.SPACING)
    cli_scene._place(char_objs, +cli_scene.SPACING)
    reel = takes.find_takes(char_objs)
    takes.show_take(scene, reel[0], reel)
    files = cli_scene.export_objects(char_objs, out_dir / f"{name}.fbx", which="all", per_take=per_take)
    ref = {}
    if hasattr(cli_scene, "add_reference"):    # the first take's video beside the actor
        ref = cli_scene.add_reference(captures[0], [actor_mesh, actor_arm], starts[first],
                                      framed=char_objs)
        takes.show_take(scene, reel[0], reel)
    blend = cli_scene.save_blend(out_dir / f"{name}.blend")
    report = {
        "blend": str(blend), "actor": actor_mesh.name,
        "takes": [{"name": s["take"], "frames": list(s["take_frames"]),
                   "capture_frames": int(c.n_frames), "fps": float(c.fps),
                   "keys": s.get("keys", 0), "keys_dense": s.get("keys_dense", 0),
                   "mapped": cli_scene.mapped_channels(s)} for s, c in zip(summaries, captures)],
        "scene_fps": rig_build.scene_rate(scene),
        "keys": sum(s.get("keys", 0) for s in summaries),
        "keys_dense": sum(s.get("keys_dense", 0) for s in summaries),
        **{k: v for k, v in ref.items() if k in ("reference", "sound", "messages")},
    }
    if per_take:
        report["fbx_files"] = [str(p) for p in files]
    else:
        report["fbx"] = str(files[0])
    return report


__all__ = ["set_scene_fps", "bake_takes", "retarget_takes", "animate_actor_take",
           "run_takes_job"]
