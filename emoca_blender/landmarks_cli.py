"""``python -m emoca_blender landmarks IMAGE [--json]``: MediaPipe's 478 face landmarks of one
still image (a head-on render of a character, made by ``operators/correspondence.py``).

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

from .errors import BadInput


def detect_landmarks(image, min_detection: float = 0.3) -> np.ndarray | None:
    """MediaPipe FaceLandmarker (IMAGE mode) on one RGB image.

    Args:
        image: (H, W, 3) uint8 RGB array, or a path to an image file.
        min_detection: detection / presence confidence threshold (renders of stylised or
            untextured heads score lower than photographs).
    Returns:
        (478, 3) float64 landmarks: x, y in pixels (origin top-left), z in MediaPipe's
        pixel-scaled depth units; None when no face is found.
    Raises:
        BadInput: the image file is missing or cannot be decoded.
    """
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    rgb = np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[..., :3])
    h, w = rgb.shape[:2]
    from .backends.mediapipe_backend import _mp, quiet_native_stderr
    from .mediapipe_topology import task_path

    mp, BaseOptions, vision = _mp()
    opts = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(task_path())),
        running_mode=vision.RunningMode.IMAGE, num_faces=1,
        min_face_detection_confidence=min_detection,
        min_face_presence_confidence=min_detection)
    with quiet_native_stderr():
        lm = vision.FaceLandmarker.create_from_options(opts)
    try:
        res = lm.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
    finally:
        lm.close()
    if not res.face_landmarks:
        return None
    pts = np.array([[p.x * w, p.y * h, p.z * w] for p in res.face_landmarks[0]], np.float64)
    return pts


def read_image(path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB. Raises BadInput naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadInput(f"image not found: {path}")
    import cv2

    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise BadInput(f"cannot decode image {path} (expected PNG or JPEG)")
    return bgr[..., ::-1].copy()


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
