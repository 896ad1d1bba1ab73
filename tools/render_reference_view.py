#!/usr/bin/env python3
"""Render the scene `run` writes, through its camera, as the README's screenshot
``docs/reference_video.jpg``: the actor's video (the reference plane, frame-locked to the
timeline), the actor rig and the retargeted character, Workbench (what the viewport shows in
Solid mode with Texture colour).

    python tools/render_reference_view.py                      # make demo's clip, its biggest smile
    python tools/render_reference_view.py --blend out/clip.blend --frame 120
    python tools/render_reference_view.py --video my.mp4 -o /tmp/view.jpg

Without ``--blend`` the video (default: make demo's clip ``WolfgangLanger_Pexels.mp4``) is run
with ``python -m emoca_blender run`` into a temporary folder (the capture cache makes it
quick the second time). The camera is the one `run` aims with Frame All.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEMO = ROOT / ".cache" / "demo" / "clips" / "WolfgangLanger_Pexels.mp4"
DEFAULT_OUT = ROOT / "docs" / "reference_video.jpg"


def run_video(video: Path, folder: Path) -> Path:
    r = subprocess.run([sys.executable, "-m", "emoca_blender", "--progress", "none", "run",
                        str(video), "-o", str(folder), "--name", "reference"], cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"run failed on {video} (exit {r.returncode})")
    return folder / "reference.blend"


def smile_frame(scene) -> int:
    """The scene frame where the actor rig smiles most (its mouthSmileLeft curve)."""
    best, frame = -1.0, scene.frame_start
    for obj in scene.objects:
        keys = getattr(getattr(obj, "data", None), "shape_keys", None)
        if obj.type != 'MESH' or keys is None or "mouthSmileLeft" not in keys.key_blocks:
            continue
        if not obj.name.startswith("EMOCA_actor"):
            continue
        for f in range(scene.frame_start, scene.frame_end + 1, 2):
            scene.frame_set(f)
            v = keys.key_blocks["mouthSmileLeft"].value
            if v > best:
                best, frame = v, f
    return frame


def render(blend: Path, out: Path, frame: int | None, width: int, height: int,
           quality: int) -> dict:
    import bpy
    import cv2

    bpy.ops.wm.open_mainfile(filepath=str(blend))
    scene = bpy.context.scene
    if frame is None:
        frame = smile_frame(scene)
    scene.frame_set(frame)
    scene.render.engine = 'BLENDER_WORKBENCH'
    sh = scene.display.shading
    sh.light = 'STUDIO'
    sh.color_type = 'TEXTURE'
    sh.show_specular_highlight = False
    sh.background_type = 'VIEWPORT'
    sh.background_color = (0.78, 0.80, 0.83)
    if scene.world is None:
        scene.world = bpy.data.worlds.new("ReferenceWorld")
    scene.world.color = (0.78, 0.80, 0.83)
    scene.display.render_aa = '8'
    scene.view_settings.view_transform = 'Standard'
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = width, height, 100
    r.film_transparent = False
    r.image_settings.file_format = 'PNG'
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "view.png"
        r.filepath = str(png)
        bpy.ops.render.render(write_still=True)
        img = cv2.imread(str(png))
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), img, [cv2.IMWRITE_JPEG_QUALITY, quality,
                                cv2.IMWRITE_JPEG_OPTIMIZE, 1])
    return {"output": str(out), "frame": frame, "bytes": out.stat().st_size}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blend", type=Path, help="a .blend written by run (default: run --video)")
    ap.add_argument("--video", type=Path, default=DEMO, help=f"default {DEMO.relative_to(ROOT)}")
    ap.add_argument("--frame", type=int, default=None, help="scene frame (default: the "
                    "actor's biggest smile)")
    ap.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--size", default="1200x440", help="WIDTHxHEIGHT (default 1200x440)")
    ap.add_argument("--quality", type=int, default=82, help="JPEG quality (default 82)")
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        blend = args.blend
        if blend is None:
            if not args.video.is_file():
                raise SystemExit(f"{args.video} not found (make test fetches the demo clips)")
            blend = run_video(args.video, Path(tmp))
        info = render(blend, args.output.resolve(), args.frame, width, height, args.quality)
    print(f"wrote {info['output']} ({info['bytes'] // 1024} KB, frame {info['frame']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
