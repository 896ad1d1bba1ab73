#!/usr/bin/env python3
"""Render docs/expressive_frames.jpg: expressive frames of real clips as an artist sees them
after `run`: the video's face crop, the actor rig (the ICT head with the clip's identity)
and the sample character it was retargeted onto, each head seen from the front in the .blend
`run` wrote (Workbench, its materials), one row per frame.

    python tools/render_expressive_frames.py [-o docs/expressive_frames.jpg]

Each clip (the MEAD clips of ../shared/media, skipped when absent, and make demo's
WolfgangLanger clip) goes through ``python -m emoca_blender run`` into a temporary folder; the
frames are picked from the capture: the widest-open mouth (MediaPipe's inner-lip gap), shut
eyes where the lids touch, and for MEAD the label's peak (brows for angry and surprised,
smile for happy, upper lip for disgusted).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tools", ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import render_reference_view as rv  # noqa: E402

MEAD = ROOT.parent / "shared" / "media" / "mead"
PEAK = {"angry": ("browDownLeft", "browDownRight"), "surprised": ("browInnerUp",),
        "happy": ("mouthSmileLeft", "mouthSmileRight"),
        "disgusted": ("mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft")}


def pick_frames(cap_path: Path, label: str | None) -> list[tuple[int, str]]:
    import fidelity as F
    from emoca_blender.arkit import INDEX
    from emoca_blender.capture_file import load_capture

    cap = load_capture(cap_path)
    valid = np.asarray(cap["valid"], bool) & ~np.asarray(cap["interpolated"], bool)
    L = np.asarray(cap["landmarks3d"], np.float64)
    rows = np.flatnonzero(valid)
    out = [(int(rows[np.argmax(F.lip_gap(L[rows]))]), "widest mouth")]
    gap = F.eye_gap(L[rows], "left") + F.eye_gap(L[rows], "right")
    if gap.min() < F.BLINK_CLOSED_FRAC * np.percentile(gap, 90):
        out.append((int(rows[np.argmin(gap)]), "eyes shut"))
    elif label in PEAK:
        a = np.asarray(cap["arkit"], np.float64)[rows][:, [INDEX[n] for n in PEAK[label]]]
        out.append((int(rows[np.argmax(a.mean(1))]), f"{label} peak"))
    return out


def face_crop(video: Path, frame: int, cap_path: Path, size: int):
    """The video frame's face (render_fidelity_frames' crop around the landmarks)."""
    import cv2

    import render_fidelity_frames as rf
    from emoca_blender.capture_file import load_capture

    l2 = np.asarray(load_capture(cap_path)["landmarks2d"][frame], np.float64)
    return cv2.resize(rf.video_crop(video, frame, l2), (size, size),
                      interpolation=cv2.INTER_AREA)


def render_heads(blend: Path, frames: list[int], size: int) -> list[list]:
    """Each frame's actor rig and character from the front (orthographic, the face)."""
    import math

    import bpy
    import cv2
    import mathutils

    bpy.ops.wm.open_mainfile(filepath=str(blend))
    sc = bpy.context.scene
    sc.render.engine = 'BLENDER_WORKBENCH'
    sh = sc.display.shading
    sh.light, sh.color_type = 'STUDIO', 'MATERIAL'
    sh.background_type = 'VIEWPORT'
    sh.background_color = (0.78, 0.80, 0.83)
    sc.display.render_aa = '8'
    sc.view_settings.view_transform = 'Standard'
    sc.render.resolution_x = sc.render.resolution_y = size
    for ob in sc.objects:
        if ob.type == 'MESH' and ob.name.startswith("EMOCA_reference"):
            ob.hide_render = True
    cam = bpy.data.objects.new("front", bpy.data.cameras.new("front"))
    sc.collection.objects.link(cam)
    sc.camera = cam
    cam.data.type, cam.data.ortho_scale = 'ORTHO', 0.21
    cam.rotation_euler = (math.radians(90), 0.0, 0.0)          # looking along +Y
    heads = [ob for ob in sc.objects if ob.type == 'MESH'
             and not ob.name.startswith("EMOCA_reference")]
    heads.sort(key=lambda ob: not ob.name.startswith("EMOCA_actor"))   # actor first
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in frames:
            sc.frame_set(f)
            row = []
            for ob in heads:
                bb = [ob.matrix_world @ mathutils.Vector(c) for c in ob.bound_box]
                cx = (min(v.x for v in bb) + max(v.x for v in bb)) / 2
                cz = (min(v.z for v in bb) + max(v.z for v in bb)) / 2
                cam.location = (cx, min(v.y for v in bb) - 1.0, cz + 0.03)
                sc.render.filepath = str(Path(tmp) / f"{ob.name}_{f}.png")
                bpy.ops.render.render(write_still=True)
                row.append(cv2.imread(sc.render.filepath))
            out.append(row)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "expressive_frames.jpg")
    ap.add_argument("--size", type=int, default=260, help="side of each image (default 260)")
    args = ap.parse_args(argv)
    import cv2

    clips = sorted(MEAD.glob("*.mp4")) if MEAD.is_dir() else []
    clips.append(rv.DEMO)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for clip in clips:
            if not clip.is_file():
                print(f"skipped {clip.name}: not found")
                continue
            folder = Path(tmp) / clip.stem
            folder.mkdir()
            blend = rv.run_video(clip, folder)
            cap_path = folder / "reference.capture.npz"
            label = next((x for x in PEAK if f"_{x}_" in clip.name), None)
            picks = pick_frames(cap_path, label)
            # captured frame i is scene frame i + 1 (run keeps the clip's rate, from frame 1)
            heads = render_heads(blend, [f + 1 for f, _ in picks], args.size)
            for (frame, why), row in zip(picks, heads):
                img = np.hstack([face_crop(clip, frame, cap_path, args.size), *row])
                bar = np.full((28, img.shape[1], 3), 255, np.uint8)
                cv2.putText(bar, f"{clip.stem[:30]} f{frame}: {why}", (8, 20),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.55, (20, 20, 20), 1, cv2.LINE_AA)
                rows.append(np.vstack([bar, img]))
                print(f"{clip.name} frame {frame} ({why})")
    if not rows:
        raise SystemExit("no clips found")
    head = np.full((30, rows[0].shape[1], 3), 255, np.uint8)
    for i, t in enumerate(("video", "actor rig", "sample character")):
        cv2.putText(head, t, (8 + i * args.size, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (20, 20, 20), 1, cv2.LINE_AA)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.output), np.vstack([head, *rows]),
                [cv2.IMWRITE_JPEG_QUALITY, 82, cv2.IMWRITE_JPEG_OPTIMIZE, 1])
    print(f"wrote {args.output} ({len(rows)} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
