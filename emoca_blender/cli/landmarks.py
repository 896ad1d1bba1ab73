"""``python -m emoca_blender landmarks IMAGE [--json]``: MediaPipe's 478 face landmarks of one
still image (a head-on render of a character, made by ``operators/scene/correspondence.py``).

Blender's own Python cannot import mediapipe, so the add-on runs this in the worker Python
and reads the JSON it prints::

    {"image": "face.png", "width": 512, "height": 512, "found": true,
     "landmarks": [[x_px, y_px, z], ...478 rows], "score": 1.0}

Pixel coordinates have their origin at the image's top-left corner. When no face is found
``found`` is false and ``landmarks`` is empty (exit code 0: "no face" is an answer, not an
error, so the caller can fall back to name mapping or picked points). A missing or
unreadable image is bad input (exit code 2).
"""
from __future__ import annotations

import json
import os

import numpy as np



def add_parser(sub) -> None:
    """Register the ``landmarks`` command on the CLI's subparsers."""
    p = sub.add_parser("landmarks", help="MediaPipe face landmarks of one image",
                       description="Detect the 478 MediaPipe face landmarks in IMAGE (used by "
                                   "the add-on to find a character's face in a render).")
    p.add_argument("image")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--min-detection", type=float, default=0.3,
                   help="detection confidence threshold (default 0.3)")
    p.set_defaults(func=cmd_landmarks)


def cmd_landmarks(args, progress) -> int:  # noqa: ARG001 - progress: CLI signature
    from ..backends.mediapipe_backend import detect_landmarks, read_image

    img = read_image(args.image)
    pts = detect_landmarks(img, min_detection=args.min_detection)
    out = {"image": os.path.basename(args.image), "width": int(img.shape[1]),
           "height": int(img.shape[0]), "found": pts is not None,
           "landmarks": [] if pts is None else np.round(pts, 4).tolist()}
    if args.json:
        print(json.dumps(out))
    elif pts is None:
        print(f"{args.image}: no face found")
    else:
        print(f"{args.image}: face found, {len(pts)} landmarks, "
              f"box x {pts[:, 0].min():.0f}-{pts[:, 0].max():.0f}, "
              f"y {pts[:, 1].min():.0f}-{pts[:, 1].max():.0f}")
    return 0
