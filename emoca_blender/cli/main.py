"""Command line: ``python -m emoca_blender {capture,rig,retarget,export,run,detail,info}``.

``capture``, ``detail`` and ``info`` need no Blender; ``rig``, ``retarget``, ``export`` and
``run`` use the ``bpy`` module (installed in the project's .venv by ``make``).

Exit codes: 0 success, 2 bad input (one line on stderr saying what and how to fix it),
1 internal error, 130 cancelled.
"""
from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import time
import traceback
from pathlib import Path

from .. import __version__
from . import takes as takes_cli
from .common import (EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_INTERNAL, EXIT_OK, _CANCEL,
                     _bad_input_types, _blender_side, _cache_dir, _cancel_requested,
                     _capture_settings, _check_character, _check_output_name, _check_writable,
                     _ensure_folder, _key_options, _load_capture, _stem)


# -- commands ---------------------------------------------------------------------------


def cmd_capture(args, progress) -> int:
    from ..capture_file import SUFFIX
    from ..capture.pipeline import run_capture

    if takes_cli.several(args.video) or args.stdin_control:   # takes: one job, in order
        return takes_cli.cmd_capture_takes(args, progress)
    args.video = args.video[0]
    _check_output_name(Path(args.output), SUFFIX, "capture")
    res = run_capture(args.video, args.output, _capture_settings(args), progress,
                      cache_dir=_cache_dir(args), cancel=_cancel_requested)
    cap = res.capture
    valid = int(cap["valid"].sum())
    progress.done(output=str(res.path), frames=cap.n_frames, valid=valid, cached=res.cached)
    if progress.mode != "json":
        how = "from cache" if res.cached else f"in {res.timings.get('total', 0):.1f} s"
        print(f"wrote {res.path} ({cap.n_frames} frames, face in {valid}, {how})")
    return EXIT_OK


def cmd_info(args, progress) -> int:
    from .. import capture_file

    cap = _load_capture(args.capture, "info")
    if args.json:
        print(json.dumps(cap.meta, indent=2, default=str))
    else:
        print(capture_file.describe(cap))
    return EXIT_OK


def cmd_rig(args, progress) -> int:
    out = Path(args.output)
    _check_writable(out, ".blend", "rig")
    cap = _load_capture(args.capture, "rig")
    scene = _blender_side("scene.cli_scene")
    scene.new_scene()
    if args.scene_fps is not None:       # keep this rate: keys at the clip's real times
        _blender_side("scene.cli_takes").set_scene_fps(args.scene_fps)
    mesh, arm = scene.build_actor(cap, model_path=args.model, flame_dir=args.flame_dir or None,
                                  capture_path=Path(args.capture),
                                  timing="clip" if args.scene_fps is None else "scene")
    for m in scene.add_reference(cap, [mesh, arm])["messages"]:   # the video beside the rig
        progress.message(f"reference: {m}")
    scene.save_blend(out)
    print(f"wrote {out}")
    return EXIT_OK


def cmd_retarget(args, progress) -> int:
    if len(args.capture) > 1:            # several captures: each a take on the character
        return takes_cli.cmd_retarget_takes(args, progress)
    args.capture = args.capture[0]
    out = Path(args.output)
    _check_writable(out, ".blend", "retarget")
    cap = _load_capture(args.capture, "retarget")
    _check_character(args.character, "retarget")
    scene = _blender_side("scene.cli_scene")
    scene.new_scene()
    if args.scene_fps is not None:
        _blender_side("scene.cli_takes").set_scene_fps(args.scene_fps)
    summary = scene.retarget(cap, character=args.character, frame_start=args.frame_start,
                             timing="clip" if args.scene_fps is None else "scene",
                             **_key_options(args))
    scene.save_blend(out)
    print(f"wrote {out} ({scene.summary_line(summary)})")
    return EXIT_OK


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0 (use --dense for every frame)")
    return v


def _add_key_options(p) -> None:
    p.add_argument("--key-tolerance", type=_positive, default=0.01,
                   help="keep only the keys each shape-key curve needs to stay within this "
                        "weight of the dense bake at every frame (default 0.01)")
    p.add_argument("--angle-tolerance", type=_positive, default=0.2,
                   help="the same for bone rotations, in degrees (default 0.2)")
    p.add_argument("--dense", action="store_true",
                   help="one key per frame on every curve (no key reduction)")


#: what ``export`` writes, chosen by the output's name
EXPORT_SUFFIXES = (".fbx", ".glb", ".gltf")


def cmd_export(args, progress) -> int:
    from .. import input_files

    from ..errors import BadInput

    out = Path(args.output)
    suffix = next((s for s in EXPORT_SUFFIXES if out.name.lower().endswith(s)
                   and out.name.lower() != s), None)
    if suffix is None:      # the format is the name's: never guessed, never renamed
        raise BadInput(f"output {out}: export writes .fbx or glTF (.glb, .gltf), chosen by "
                       f"the name; give a name ending in {', '.join(EXPORT_SUFFIXES)}")
    if suffix != ".fbx" and args.preset is not None:
        raise BadInput(f"--preset is for FBX; glTF ({out.name}) has one convention for every "
                       f"engine (metres, +Y up): leave --preset out")
    _check_writable(out, suffix, "export")
    input_files.require(args.blend, ("blend",), "export")
    scene = _blender_side("scene.cli_scene")
    path = scene.export_blend(Path(args.blend), out, objects=args.objects,
                              preset=args.preset or "generic", face_only=args.face_only,
                              takes=args.take or None, per_take=args.per_take)
    for p in (path if isinstance(path, list) else [path]):
        print(f"wrote {p}")
    return EXIT_OK


def cmd_detail(args, progress) -> int:
    from ..models import detail_mesh

    cap = _load_capture(args.capture, "detail")
    frame = None if args.frame is None else int(args.frame)
    mesh, vf = detail_mesh.capture_detail_mesh(cap, Path(args.capture), args.flame_dir,
                                               video_frame=frame, head_pose=args.head_pose,
                                               scale=args.scale)
    out = Path(args.output) if args.output else \
        Path(args.capture).with_name(f"{_stem(args.capture)}.detail_{vf:06d}.obj")
    _check_writable(out, ".obj", "detail")
    detail_mesh.write_obj(out, mesh, comment=f"{Path(args.capture).name}, video frame {vf}")
    d = mesh.displacement
    print(f"wrote {out} (frame {vf}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, "
          f"displacement {d.min() * 1000:+.2f}..{d.max() * 1000:+.2f} mm)")
    return EXIT_OK


def cmd_run(args, progress) -> int:
    from ..capture.pipeline import output_path, run_capture

    if takes_cli.several(args.video) or args.stdin_control:   # several videos: takes
        return takes_cli.cmd_run_takes(args, progress)
    args.video = args.video[0]
    if args.per_take:
        from ..errors import BadInput
        raise BadInput("--per-take is for several videos (takes); one video has one take")
    scene = _blender_side("scene.cli_scene")
    out_dir = _ensure_folder(Path(args.out_dir))
    name = args.name or Path(args.video).stem
    _check_character(args.character, "run")
    cap_path = output_path(out_dir / name)
    t0 = time.perf_counter()
    res = run_capture(args.video, cap_path, _capture_settings(args), progress,
                      cache_dir=_cache_dir(args), cancel=_cancel_requested)
    if progress.mode == "json":
        progress.stage("scene", 3)
    report = scene.run_job(res.capture, out_dir, name, character=args.character,
                           frame_start=args.frame_start,
                           flame_dir=getattr(args, "flame_dir", "") or None,
                           capture_path=res.path, scene_fps=args.scene_fps,
                           **_key_options(args))
    report["capture"] = str(res.path)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    for m in report.get("messages", ()):      # the reference video and its sound strip
        progress.message(f"reference: {m}")
    progress.done(**report)
    if progress.mode != "json":
        for k in ("capture", "blend", "fbx"):
            if k in report:
                print(f"wrote {report[k]}")
        print(f"{report.get('frames')} frames, face in {report.get('valid')}, "
              f"{report.get('mapped')} shape-key channels mapped, "
              f"{report.get('keys')} keys (dense {report.get('keys_dense')}), "
              f"{report['seconds']} s")
    return EXIT_OK


# -- parser -----------------------------------------------------------------------------

def _add_capture_options(p):
    from ..backends import BACKENDS

    p.add_argument("--backend", default="mediapipe", choices=sorted(BACKENDS),
                   help="capture backend (default: mediapipe, bundled)")
    p.add_argument("--filter", type=ranged(float, 0, 1), default=0.5, metavar="S",
                   help="temporal filter strength in [0,1], 0 = off (default 0.5)")
    p.add_argument("--max-gap", type=ranged(int, 0), default=5, metavar="N",
                   help="interpolate gaps of at most N frames without a face (default 5)")
    p.add_argument("--face-index", type=ranged(int, 0), default=0, metavar="I",
                   help="which face to track when several are present: 0 = largest (default)")
    p.add_argument("--neutral-frame", type=ranged(int, -1, note="-1 = estimate"), default=-1,
                   metavar="F",
                   help="a video frame where the actor's face is at rest: calibrates every "
                        "channel to it (default: estimated from the calmest frames)")
    p.add_argument("--neutral-from", default="", metavar="TAKE.capture.npz",
                   help="calibrate to the neutral of another capture of the same actor (a "
                        "calibration take at rest): keeps expressions this clip holds "
                        "throughout")
    p.add_argument("--start", type=ranged(int, 0), default=0, help="first frame (default 0)")
    p.add_argument("--end", type=ranged(int, 1), default=None, help="stop before this frame")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                   help="device for GPU backends (default auto: CUDA, else Apple's MPS, else "
                        "the CPU; `device` shows what this Python sees)")
    p.add_argument("--flame-dir", default="", metavar="DIR",
                   help="your FLAME folder (generic_model.pkl + mediapipe_landmark_embedding.npz)"
                        " for --backend flame-fit")
    p.add_argument("--emoca-checkpoint", default="", metavar="FILE",
                   help="EMOCA v2/v1 .ckpt or DECA deca_model.tar for --backend emoca "
                        "(with --flame-dir)")
    p.add_argument("--no-emotion", action="store_true",
                   help="no per-frame emotion curves (the FER-2013 network; on by default)")
    p.add_argument("--no-cache", action="store_true", help="ignore and do not fill the cache")
    p.add_argument("--cache-dir", default=None, help="cache folder (default ~/.cache/emoca_blender)")


def ranged(kind, lo=None, hi=None, note: str = ""):
    """An argparse ``type``: ``kind`` (int or float, finite) within [lo, hi]; the error names
    the allowed range."""
    span = (f"[{lo}, {hi}]" if hi is not None else f">= {lo}") if lo is not None else f"<= {hi}"
    word = "a whole number" if kind is int else "a number"

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {word}; allowed: {span}") from None
        if v != v or v in (float("inf"), float("-inf")) or (lo is not None and v < lo) or (
                hi is not None and v > hi):
            extra = f" ({note})" if note else ""
            raise argparse.ArgumentTypeError(f"{text} is out of range; allowed: {span}{extra}")
        return v

    parse.__name__ = kind.__name__
    return parse


class _Parser(argparse.ArgumentParser):
    """argparse with the contract's one ``error:`` line (usage above it), exit 2."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="python -m emoca_blender",
        description="Video of an actor -> facial capture -> rig, retarget and export (Blender).")
    ap.add_argument("--version", action="version", version=f"emoca_blender {__version__}")
    ap.add_argument("--progress", default="auto", choices=("auto", "bar", "json", "none"),
                    help="progress output: a bar on a terminal, json lines for Blender's worker")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # --progress is accepted after the command too (the Blender worker puts it there).
    common = _Parser(add_help=False)
    common.add_argument("--progress", default=argparse.SUPPRESS,
                        choices=("auto", "bar", "json", "none"), help=argparse.SUPPRESS)
    _add_parser = sub.add_parser

    def add_parser(*a, **kw):
        kw.setdefault("parents", [common])
        return _add_parser(*a, **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    p = sub.add_parser("capture", help="capture a video into a .capture.npz (several: takes)",
                       description="Track the face in VIDEO and write one Capture file. "
                                   "Several videos (or a folder of them) are captured one "
                                   "after another in this process, one NAME.capture.npz "
                                   "each in the -o folder (takes).")
    p.add_argument("video", nargs="+", help="a video, several videos, or a folder of videos")
    p.add_argument("-o", "--output", required=True,
                   help="output NAME.capture.npz (several videos: an output folder)")
    _add_capture_options(p)
    takes_cli.add_stdin_control(p)
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("rig", help="build the animated head rig of a capture (.blend)",
                       description="Build the head model rig with expression shape keys and "
                                   "bones, animated by the capture, and save it as a .blend.")
    p.add_argument("capture")
    takes_cli.add_scene_fps(p)
    p.add_argument("-o", "--output", required=True, help="output .blend")
    p.add_argument("--model", default=None, help="head model .npz (default: the bundled open model)")
    p.add_argument("--flame-dir", default="", metavar="DIR",
                   help="your FLAME folder, for a capture made with --backend flame-fit/emoca: "
                        "builds the FLAME rig (identity, expression and pose-corrective keys)")
    p.set_defaults(func=cmd_rig)

    p = sub.add_parser("retarget", help="bake a capture onto a character (.blend; several: "
                                        "takes)",
                       description="Bake the capture's ARKit, jaw, head and eye curves onto a "
                                   "character as plain keyframes and save a .blend. Several "
                                   "captures become takes: an action each, named after the "
                                   "capture, on the NLA one after another.")
    p.add_argument("capture", nargs="+", help="a .capture.npz, or several (takes)")
    takes_cli.add_scene_fps(p)
    p.add_argument("-o", "--output", required=True, help="output .blend")
    p.add_argument("--character", default="sample",
                   help="'sample' (bundled character) or a .blend/.fbx holding the character")
    p.add_argument("--frame-start", type=int, default=1)
    _add_key_options(p)
    p.set_defaults(func=cmd_retarget)

    p = sub.add_parser("export",
                       help="export the animated objects of a .blend to FBX or glTF",
                       description="Export a .blend's animated meshes and armatures to FBX "
                                   "(-o NAME.fbx) or glTF (-o NAME.glb, or NAME.gltf with the "
                                   "buffer embedded) and verify the file by importing it back.")
    p.add_argument("blend")
    p.add_argument("-o", "--output", required=True,
                   help="output .fbx, .glb or .gltf (the format is chosen by the name)")
    p.add_argument("--objects", nargs="*", default=None, help="object names (default: all animated)")
    p.add_argument("--preset", default=None, choices=("generic", "unity", "unreal", "plain"),
                   help="FBX preset: take named after the clip, neutral rest pose, character "
                        "at its origin, transforms applied (default generic; plain: the "
                        "exporter's own output). FBX only")
    p.add_argument("--face-only", action="store_true",
                   help="export only the meshes with shape keys (and their armature)")
    p.add_argument("--take", action="append", default=None, metavar="NAME",
                   help="a .blend with takes: export this take (repeat for several; "
                        "default: every take, one named animation each)")
    p.add_argument("--per-take", action="store_true",
                   help="a .blend with takes: one file per take, NAME_<take>.fbx/.glb "
                        "beside -o, instead of one file holding them all")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("run", help="the whole job: capture, rig, retarget, export",
                       description="Capture VIDEO, build the actor rig, retarget onto the "
                                   "character, and write NAME.capture.npz, NAME.blend and "
                                   "NAME.fbx into the output folder. Several videos (or a "
                                   "folder) are takes: one job captures them in order "
                                   "(VIDEO_STEM.capture.npz each), the actor rig and the "
                                   "character get every take (an action each, named after "
                                   "the clip), and NAME.fbx holds one animation per take.")
    p.add_argument("video", nargs="+", help="a video, several videos, or a folder of videos")
    p.add_argument("-o", "--out-dir", default="out", help="output folder (default out/)")
    p.add_argument("--name", default=None,
                   help="base name of the outputs (default: the video's stem; several "
                        "videos: the folder's name, else 'takes')")
    p.add_argument("--per-take", action="store_true",
                   help="several videos: one NAME_<take>.fbx per take instead of NAME.fbx "
                        "holding them all")
    takes_cli.add_scene_fps(p)
    takes_cli.add_stdin_control(p)
    p.add_argument("--character", default="sample",
                   help="'sample' (bundled character) or a .blend/.fbx holding the character")
    p.add_argument("--frame-start", type=int, default=1)
    _add_capture_options(p)
    _add_key_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("detail", help="dense detail mesh of one frame (.obj, emoca backend)",
                       description="Build the dense detail mesh of one frame of a capture made "
                                   "with --backend emoca: the FLAME surface upsampled to one "
                                   "vertex per texel of the 256x256 UV map, displaced by that "
                                   "frame's displacement map, written as an OBJ with UVs.")
    p.add_argument("capture")
    p.add_argument("--flame-dir", required=True, metavar="DIR",
                   help="your FLAME folder (the model and head_template.obj)")
    p.add_argument("--frame", type=ranged(int, 0), default=None,
                   help="video frame number (default: the middle frame with a face)")
    p.add_argument("-o", "--output", default=None,
                   help="output .obj (default NAME.detail_FRAME.obj beside the capture)")
    p.add_argument("--head-pose", action="store_true",
                   help="apply the frame's head rotation (default: FLAME's canonical pose, "
                        "with the frame's expression, jaw and eyes)")
    p.add_argument("--scale", type=ranged(float, -100, 100), default=1.0,
                   help="displacement scale (default 1 = as captured)")
    p.set_defaults(func=cmd_detail)

    p = sub.add_parser("info", help="describe a capture file")
    p.add_argument("capture")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")
    p.set_defaults(func=cmd_info)

    importlib.import_module(__package__ + ".landmarks").add_parser(sub)
    importlib.import_module(__package__ + ".emotion").add_parsers(sub)
    importlib.import_module(__package__ + ".livelink").add_parser(sub)
    importlib.import_module("..device_info", __package__).add_parser(sub)
    return ap


def _on_signal(signum, frame):  # noqa: ARG001
    """SIGINT and SIGTERM: cancel now, wherever the work is (capture_file holds them back
    while a capture's renames must happen together). An interrupt that Blender turns into
    an operator's RuntimeError is still a cancel: main() looks at the flag."""
    _CANCEL["flag"] = True
    raise KeyboardInterrupt


def _quiet_when_cancelled(hook):
    """sys.excepthook that stays silent about the interrupt of a cancel (Blender prints the
    exception of an operator it interrupts through it)."""
    def excepthook(kind, value, tb):
        if not (_CANCEL["flag"] and issubclass(kind, KeyboardInterrupt)):
            hook(kind, value, tb)
    return excepthook


def _cancelled_line(cache_dir) -> str:
    """What a cancelled run leaves: nothing new, or the outputs it had already published."""
    from ..capture_file import PUBLISHED

    cache = Path(cache_dir).resolve() if cache_dir else None
    done = [str(p) for p in dict.fromkeys(PUBLISHED)
            if cache is None or cache not in Path(p).resolve().parents]
    if not done:
        return "cancelled; nothing was written"
    return f"cancelled; already written before the cancel: {', '.join(done)}"


def main(argv=None) -> int:
    from ..capture.progress import Progress

    args = build_parser().parse_args(argv)
    progress = Progress(args.progress)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    sys.excepthook = _quiet_when_cancelled(sys.excepthook)
    bad = _bad_input_types()
    from ..capture_file import write_problem
    from ..errors import Cancelled

    try:
        try:
            return args.func(args, progress)
        except bad as e:
            msg = str(e)
            progress.error(msg)
            print(f"error: {msg}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except BaseException as e:  # noqa: BLE001
            if _CANCEL["flag"] or isinstance(e, (Cancelled, KeyboardInterrupt)):
                line = _cancelled_line(_cache_dir(args) if hasattr(args, "no_cache") else None)
                progress.error("cancelled")
                print(f"error: {line}", file=sys.stderr)
                return EXIT_CANCELLED
            problem = write_problem(e, getattr(e, "filename", None) or "./?") \
                if isinstance(e, OSError) else None
            if problem is None:
                raise
            progress.error(str(problem))
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_BAD_INPUT
    except Exception as e:  # noqa: BLE001
        msg = f"internal error: {type(e).__name__}: {e}"
        progress.error(msg)
        traceback.print_exc(file=sys.stderr)
        print(f"error: {msg}", file=sys.stderr)
        return EXIT_INTERNAL
