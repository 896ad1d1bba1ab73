"""What the CLI's command modules share: exit codes, cancellation, the checks and loaders of
their arguments, and the door to the Blender side's scene jobs (:func:`_blender_side`).
:mod:`.main` and :mod:`.takes` import it; it imports neither.
"""
from __future__ import annotations

import importlib
import sys

from pathlib import Path


EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130


def _blender_side(name: str):
    """Import a Blender-side module (``operators.<name>``), both when this package is the
    top-level ``emoca_blender`` (CLI, tests) and when it sits inside the installed extension."""
    parent = __package__.rpartition(".")[0].rpartition(".")[0]
    if parent:
        return importlib.import_module(f"{parent}.operators.{name}")
    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(f"operators.{name}")


def _bad_input_types():
    from ..capture_file import CaptureError
    from ..errors import BadInput
    from ..models.head_model import HeadModelError

    return (BadInput, CaptureError, HeadModelError)


def _capture_settings(args):
    from ..capture.pipeline import CaptureSettings

    return CaptureSettings(backend=args.backend, filter_strength=args.filter,
                           max_gap=args.max_gap, face_index=args.face_index,
                           start=args.start, end=args.end, device=args.device,
                           neutral_frame=args.neutral_frame,
                           neutral_from=str(getattr(args, "neutral_from", "") or ""),
                           flame_dir=getattr(args, "flame_dir", ""),
                           emoca_checkpoint=getattr(args, "emoca_checkpoint", ""),
                           emotion=not getattr(args, "no_emotion", False))


def _cache_dir(args):
    from ..capture.pipeline import DEFAULT_CACHE

    if args.no_cache:
        return None
    return Path(args.cache_dir) if args.cache_dir else DEFAULT_CACHE


def _load_capture(path, command: str):
    """The capture at ``path``, after checking by its content that it is one."""
    from .. import capture_file, input_files

    input_files.require(path, ("capture",), command)
    return capture_file.load_capture(path)


def _check_output_name(path: Path, suffix: str, command: str) -> None:
    """Refuse an output name that does not end in what ``command`` writes (never rename it
    behind the user's back, where it could replace another file)."""
    from ..errors import BadInput

    if not path.name.lower().endswith(suffix) or path.name.lower() == suffix:
        raise BadInput(f"output {path}: {command} writes a {suffix} file; give a name ending "
                       f"in {suffix}")


def _check_writable(path: Path, suffix: str, command: str):
    from ..capture.pipeline import check_output

    _check_output_name(path, suffix, command)
    check_output(path)


def _check_character(character, command: str) -> None:
    """A --character file must be a whole .blend or binary .fbx, named for what it is."""
    from .. import input_files
    from ..errors import BadInput

    if character in ("sample", "", None):
        return
    kind = input_files.require(character, ("blend", "fbx"), f"{command} --character")
    if Path(character).suffix.lower() != f".{kind}":
        raise BadInput(f"{character} is {input_files.DESCRIPTION[kind]} but is not named "
                       f".{kind}; rename it")


def _key_options(args) -> dict:
    """bake_capture's tolerances from --key-tolerance / --angle-tolerance / --dense."""
    if getattr(args, "dense", False):
        return {"tolerance": None, "angle_tolerance_deg": None}
    return {"tolerance": args.key_tolerance, "angle_tolerance_deg": args.angle_tolerance}


def _stem(path) -> str:
    from ..capture_file import SUFFIX

    name = Path(path).name
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else Path(path).stem


def _ensure_folder(out: Path) -> Path:
    """``out`` as an existing folder (created with its parents); BadInput when it is a file
    or cannot be created."""
    from ..errors import BadInput

    if out.exists() and not out.is_dir():
        raise BadInput(f"output {out} exists and is not a folder")
    if not out.exists():
        try:
            out.mkdir(parents=True)
        except OSError as e:
            raise BadInput(f"cannot create output folder {out} ({e.strerror})") from None
    return out


_CANCEL = {"flag": False}


def _cancel_requested() -> bool:
    return _CANCEL["flag"]
