"""The command line with several clips (takes): ``capture``, ``run`` and ``retarget`` given
several videos (or a folder of them) or several captures, and the options shared with the
one-clip forms (``--scene-fps``, ``--per-take``, ``--take``, ``--stdin-control``).

::

    python -m emoca_blender capture a.mp4 b.mp4 c.mp4 -o caps/      # caps/a.capture.npz ...
    python -m emoca_blender capture session/ -o caps/                # every video in session/
    python -m emoca_blender run a.mp4 b.mp4 c.mp4 -o out/ --name day1   # out/day1.blend, .fbx
    python -m emoca_blender retarget caps/a.capture.npz caps/b.capture.npz -o character.blend
    python -m emoca_blender export character.blend -o character.glb [--take a] [--per-take]

One process captures the takes in order (:mod:`.takes`); ``run`` and ``retarget`` put each
take on the character as its own action named after the take, on the NLA one after another
(``operators/scene/takes.py``), and the FBX / glTF hold one named animation per take.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def scene_fps(text: str):
    """``--scene-fps``: "clip" (the scene takes the clip's rate) or a rate: a number
    (``24``, ``29.97``) or a fraction (``30000/1001``)."""
    t = str(text).strip().lower()
    if t == "clip":
        return None
    try:
        if "/" in t:
            a, b = t.split("/", 1)
            v = float(a) / float(b)
        else:
            v = float(t)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a frame rate: give 'clip', a "
                                         f"number (24, 29.97) or a fraction (30000/1001)") \
            from None
    if not (0.5 <= v <= 1000):
        raise argparse.ArgumentTypeError(f"{text} is out of range; allowed: 0.5 to 1000 fps")
    return v


def add_scene_fps(p) -> None:
    p.add_argument("--scene-fps", type=scene_fps, default=None, metavar="RATE",
                   help="the scene's frame rate: 'clip' (default: the clip's, one key per "
                        "captured frame) or a rate (24, 30, 30000/1001) the scene keeps, "
                        "every captured frame keyed at its real time (between whole frames "
                        "where the rates differ)")


def add_stdin_control(p) -> None:
    p.add_argument("--stdin-control", action="store_true",
                   help="the several-video form (also for one video: -o is a folder), "
                        "reading 'cancel N' (take N, from 0) and 'cancel all' lines on "
                        "stdin while capturing (Blender's worker does)")


def several(inputs) -> bool:
    """Several videos: more than one input, or a folder."""
    return len(inputs) > 1 or any(Path(i).is_dir() for i in inputs)


def _out_dir(path, command: str) -> Path:
    from ..capture_file import SUFFIX
    from ..errors import BadInput

    out = Path(path)
    if out.name.lower().endswith(SUFFIX):
        raise BadInput(f"output {out}: {command} with several videos writes one "
                       f"NAME{SUFFIX} per video into a folder; give -o FOLDER")
    from .common import _ensure_folder

    return _ensure_folder(out)


def _capture_all(args, progress, out_dir: Path):
    """Capture every video of ``args.video`` into ``out_dir`` in this process; returns the
    take results (every one, whatever its state)."""
    from ..capture import takes
    from . import common

    videos = takes.expand_videos(args.video)
    outputs = takes.take_outputs(videos, out_dir)
    control = takes.stdin_control() if getattr(args, "stdin_control", False) else \
        takes.TakeControl()
    return takes.capture_takes(videos, outputs, common._capture_settings(args), progress,
                               cache_dir=common._cache_dir(args), cancel=common._cancel_requested,
                               control=control, bad_input=common._bad_input_types())


def _report_failures(results) -> int | None:
    """Print one ``error:`` line per failed take; the exit code when the job must not end
    in success (2: a take failed; 130: every take was cancelled), else None."""
    import sys

    from . import common

    failed = [r for r in results if r.state == "failed"]
    for r in failed:
        print(f"error: take {r.index + 1} ({r.video.name}): {r.message}", file=sys.stderr)
    if failed:
        return common.EXIT_BAD_INPUT
    if results and all(r.state == "cancelled" for r in results):
        print("error: cancelled; every take was cancelled, nothing was written",
              file=sys.stderr)
        return common.EXIT_CANCELLED
    return None


def cmd_capture_takes(args, progress) -> int:
    """``capture`` with several videos or a folder: one capture per video in ``-o FOLDER``."""
    from . import common

    out_dir = _out_dir(args.output, "capture")
    results = _capture_all(args, progress, out_dir)
    done = [r for r in results if r.state == "done"]
    progress.done(takes=[r.info() for r in results], outputs=[str(r.output) for r in done])
    if progress.mode != "json":
        for r in results:
            if r.state == "done":
                how = "from cache" if r.cached else "captured"
                print(f"wrote {r.output} ({r.frames} frames at {r.fps:.4g} fps, face in "
                      f"{r.valid}, {how})")
            elif r.state == "cancelled":
                print(f"take {r.index + 1} ({r.video.name}): cancelled")
    code = _report_failures(results)
    return common.EXIT_OK if code is None else code


def cmd_run_takes(args, progress) -> int:
    """``run`` with several videos or a folder: capture each, then one scene with every
    take on the actor rig and the character, NAME.blend and NAME.fbx (one stack per take)."""
    from . import common
    from ..errors import BadInput

    out_dir = _out_dir(args.out_dir, "run")
    common._check_character(args.character, "run")
    folder = [Path(v) for v in args.video if Path(v).is_dir()]
    name = args.name or (folder[0].name if len(args.video) == 1 and folder else "takes")
    t0 = time.perf_counter()
    results = _capture_all(args, progress, out_dir)
    done = [r for r in results if r.state == "done"]
    if not done:
        code = _report_failures(results)
        if code == common.EXIT_CANCELLED:
            return code
        raise BadInput("no take was captured: " + "; ".join(
            f"{r.video.name}: {r.message or r.state}" for r in results))
    if progress.mode == "json":
        progress.stage("scene", 3)
    scene = common._blender_side("scene.cli_takes")
    report = scene.run_takes_job([r.capture for r in done], out_dir, name,
                                 [r.name for r in done], [str(r.output) for r in done],
                                 character=args.character, frame_start=args.frame_start,
                                 flame_dir=getattr(args, "flame_dir", "") or None,
                                 scene_fps=args.scene_fps, per_take=args.per_take,
                                 **common._key_options(args))
    report["captures"] = [str(r.output) for r in done]
    report["capture_takes"] = [r.info() for r in results]
    report["seconds"] = round(time.perf_counter() - t0, 2)
    for m in report.get("messages", ()) or ():
        progress.message(f"reference: {m}")
    progress.done(**report)
    if progress.mode != "json":
        for p in report["captures"]:
            print(f"wrote {p}")
        print(f"wrote {report['blend']}")
        for p in report.get("fbx_files") or [report.get("fbx")]:
            print(f"wrote {p}")
        for t in report["takes"]:
            print(f"take {t['name']}: frames {t['frames'][0]}-{t['frames'][1]} "
                  f"({t['capture_frames']} captured at {t['fps']:.4g} fps), {t['keys']} keys")
        print(f"{len(report['takes'])} takes at {report['scene_fps']:.4g} fps, "
              f"{report['keys']} keys (dense {report['keys_dense']}), {report['seconds']} s")
    code = _report_failures(results)
    return common.EXIT_OK if code is None else code


def cmd_retarget_takes(args, progress) -> int:
    """``retarget`` with several captures: each a take on the character, one .blend."""
    from . import common

    out = Path(args.output)
    common._check_writable(out, ".blend", "retarget")
    caps = [common._load_capture(c, "retarget") for c in args.capture]
    common._check_character(args.character, "retarget")
    names = [common._stem(c) for c in args.capture]
    scene = common._blender_side("scene.cli_scene")
    takes_scene = common._blender_side("scene.cli_takes")
    scene.new_scene()
    if args.scene_fps is not None:
        takes_scene.set_scene_fps(args.scene_fps)
    res = takes_scene.retarget_takes(caps, character=args.character,
                                     frame_start=args.frame_start, names=names,
                                     capture_paths=[str(Path(c).resolve())
                                                    for c in args.capture],
                                     timing="clip" if args.scene_fps is None else "scene",
                                     **common._key_options(args))
    scene.save_blend(out)
    lines = [f"{s['take']} frames {s['take_frames'][0]}-{s['take_frames'][1]}"
             for s in res["takes"]]
    print(f"wrote {out} ({len(lines)} takes: {', '.join(lines)})")
    return common.EXIT_OK


__all__ = ["scene_fps", "add_scene_fps", "add_stdin_control", "several",
           "cmd_capture_takes", "cmd_run_takes", "cmd_retarget_takes"]
