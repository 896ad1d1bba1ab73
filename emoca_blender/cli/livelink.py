"""``python -m emoca_blender import-csv TAKE.csv -o TAKE.capture.npz``: a Live Link Face CSV
(Epic's iPhone app) as a Capture file, which ``rig``, ``retarget`` and the add-on read like
a video capture. Registered on the CLI by :func:`add_parser`.

Rows where the app lost tracking become gaps (``--max-gap``, as for video captures), weights
the app writes above 1 are clamped; the command prints what it found. No Blender needed.
"""
from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub) -> None:
    """Register the ``import-csv`` command on the CLI's subparsers."""
    p = sub.add_parser("import-csv", help="import a Live Link Face CSV as a .capture.npz",
                       description="Read a Live Link Face CSV (as the iPhone app writes it: "
                                   "tracking-lost rows, weights above 1, 30 or 60 fps, with "
                                   "or without the 9 angle columns) and write a Capture file.")
    p.add_argument("csv")
    p.add_argument("-o", "--output", default=None,
                   help="output NAME.capture.npz (default: beside the CSV)")
    p.add_argument("--max-gap", type=int, default=5,
                   help="frames; gaps where tracking was lost that are at most this long are "
                        "interpolated, longer ones hold the last pose and stay invalid "
                        "(default 5)")
    p.add_argument("--json", action="store_true", help="print the import report as JSON")
    p.set_defaults(func=cmd_import_csv)


def cmd_import_csv(args, progress) -> int:  # noqa: ARG001 - progress: CLI signature
    from .. import capture_file
    from ..retarget import livelink
    from ..errors import BadInput
    from ..capture.pipeline import check_output, output_path

    src = Path(args.csv)
    if args.max_gap < 0:
        raise BadInput(f"--max-gap must be >= 0, got {args.max_gap}")
    out = output_path(args.output if args.output else src.with_suffix(""))
    check_output(out)
    data = livelink.read_csv(src, max_gap=args.max_gap)
    cap = livelink.to_capture(data, str(src.resolve()))
    capture_file.save_capture(cap, out)
    if args.json:
        info = dict(cap.meta["livelink"])
        info.update(output=str(out), frames=cap.n_frames, fps=cap.fps,
                    valid=int(cap["valid"].sum()), interpolated=int(cap["interpolated"].sum()))
        print(json.dumps(info))
    else:
        print(f"wrote {out}: {livelink.import_summary(data)}")
    return 0
