#!/usr/bin/env python3
"""Render a Workbench preview of the demo result: the actor rig (built from a capture)
beside the sample character it was retargeted onto, at one frame, as ``docs/preview.png``.

    python tools/render_panel_preview.py                        # demo clip, smile frame
    python tools/render_panel_preview.py --capture out/clip.capture.npz --frame 120
    python tools/render_panel_preview.py --video my.mp4 -o /tmp/preview.png

Uses the bpy module and the CLI's scene functions (``operators/scene/cli_scene.py``:
``build_actor`` + ``retarget``), the same code as ``python -m emoca_blender run``. Without
``--capture`` the video (default: the demo clip ``.cache/demo/clips/single_face.mp4``) is
captured first with ``python -m emoca_blender capture`` into a temporary folder. Without
``--frame`` the frame where the capture smiles most is shown. Workbench engine, studio
lighting, one solid colour per object, orthographic front camera framed on both heads.
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEMO = ROOT / ".cache" / "demo" / "clips" / "single_face.mp4"
DEFAULT_OUT = ROOT / "docs" / "preview.png"

# Solid colours (linear RGB): warm skin-like actor, cool character, light background.
ACTOR_COLOR = (0.80, 0.55, 0.45, 1.0)
CHARACTER_COLOR = (0.42, 0.62, 0.85, 1.0)
EYE_COLOR = (0.08, 0.08, 0.10, 1.0)
TEETH_COLOR = (0.92, 0.92, 0.88, 1.0)
TONGUE_COLOR = (0.75, 0.30, 0.35, 1.0)
BACKGROUND = (0.78, 0.80, 0.83)
LABEL_COLOR = (0.15, 0.16, 0.18, 1.0)


def capture_video(video: Path, out_dir: Path) -> Path:
    out = out_dir / (video.stem + ".capture.npz")
    r = subprocess.run([sys.executable, "-m", "emoca_blender", "capture", str(video), "-o",
                        str(out), "--progress", "none"], cwd=ROOT, capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise SystemExit(f"capture failed: {r.stderr.strip()[-500:]}")
    return out


def _colour_for(obj, base):
    n = obj.name.lower()
    if "eye" in n:
        return EYE_COLOR
    if "teeth" in n or "tooth" in n:
        return TEETH_COLOR
    if "tongue" in n:
        return TONGUE_COLOR
    return base


def _world_bounds(objs):
    import bpy
    from mathutils import Vector
    dg = bpy.context.evaluated_depsgraph_get()
    lo = Vector((math.inf,) * 3)
    hi = Vector((-math.inf,) * 3)
    for o in objs:
        ev = o.evaluated_get(dg)
        mesh = ev.to_mesh()
        for v in mesh.vertices:
            w = ev.matrix_world @ v.co
            lo = Vector(map(min, lo, w))
            hi = Vector(map(max, hi, w))
        ev.to_mesh_clear()
    return lo, hi


def _label(text, location, size):
    import bpy
    curve = bpy.data.curves.new(f"label_{text}", 'FONT')
    curve.body = text
    curve.align_x = 'CENTER'
    curve.size = size
    obj = bpy.data.objects.new(f"label_{text}", curve)
    bpy.context.scene.collection.objects.link(obj)
    obj.location = location
    obj.rotation_euler = (math.pi / 2, 0, 0)   # stand up, facing -Y (the camera)
    obj.color = LABEL_COLOR
    return obj


def render(capture_path: Path, out: Path, frame: int | None, width: int, height: int) -> dict:
    import bpy
    from operators.scene import cli_scene
    from operators._core import capture_file

    cap = capture_file.load_capture(capture_path)
    if frame is None:
        smile = cap.column("arkit", "mouthSmileLeft") + cap.column("arkit", "mouthSmileRight")
        frame = 1 + int(smile.argmax())
    cli_scene.new_scene()
    actor_mesh, actor_arm = cli_scene.build_actor(cap, offset=-cli_scene.SPACING)
    summary = cli_scene.retarget(cap, "sample", offset=+cli_scene.SPACING)
    scene = bpy.context.scene
    scene.frame_set(frame)

    char_objs = [bpy.data.objects[n] for n in summary["objects"]]
    actor_objs = [o for o in bpy.data.objects if o not in char_objs]
    meshes = []
    for group, base in ((actor_objs, ACTOR_COLOR), (char_objs, CHARACTER_COLOR)):
        for o in group:
            if o.type == 'MESH':
                o.color = _colour_for(o, base)
                meshes.append(o)

    lo, hi = _world_bounds(meshes)
    centre = (lo + hi) / 2
    span_x, span_z = hi.x - lo.x, hi.z - lo.z
    label_size = 0.08 * span_z
    _label("Actor (capture)", (centre.x - cli_scene.SPACING, lo.y, lo.z - 1.4 * label_size),
           label_size)
    _label(f"Character (retargeted), frame {frame}", (centre.x + cli_scene.SPACING, lo.y,
                                       lo.z - 1.4 * label_size), label_size)

    cam_data = bpy.data.cameras.new("PreviewCamera")
    cam_data.type = 'ORTHO'
    aspect = width / height
    content_w = span_x * 1.12
    content_h = (span_z + 2.2 * label_size) * 1.12
    cam_data.ortho_scale = max(content_w, content_h * aspect)
    cam = bpy.data.objects.new("PreviewCamera", cam_data)
    scene.collection.objects.link(cam)
    # In front of the faces (-Y), slightly above, looking at the middle of both heads.
    cz = centre.z - 1.1 * label_size
    cam.location = (centre.x, lo.y - 3.0 * max(span_x, span_z), cz + 0.12 * span_z)
    direction = (centre.x - cam.location.x, centre.y - cam.location.y, cz - cam.location.z)
    from mathutils import Vector
    cam.rotation_euler = Vector(direction).to_track_quat('-Z', 'Y').to_euler()
    cam_data.clip_end = 100.0
    scene.camera = cam

    scene.render.engine = 'BLENDER_WORKBENCH'
    shading = scene.display.shading
    shading.light = 'STUDIO'
    shading.color_type = 'OBJECT'
    shading.show_cavity = True
    shading.cavity_type = 'BOTH'
    shading.show_shadows = False
    shading.show_specular_highlight = True
    shading.background_type = 'VIEWPORT'
    shading.background_color = BACKGROUND
    scene.display.render_aa = '16'
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = False
    scene.render.dither_intensity = 0.0     # flat background: a small PNG
    if scene.world is None:
        scene.world = bpy.data.worlds.new("PreviewWorld")
    scene.world.color = BACKGROUND          # what Workbench renders behind the objects
    scene.view_settings.view_transform = 'Standard'
    scene.render.image_settings.file_format = 'PNG'
    scene.render.image_settings.color_mode = 'RGB'
    scene.render.image_settings.compression = 100
    out.parent.mkdir(parents=True, exist_ok=True)
    scene.render.filepath = str(out)
    t0 = time.perf_counter()
    bpy.ops.render.render(write_still=True)
    return {"output": str(out), "frame": frame, "frames": cap.n_frames,
            "render_s": round(time.perf_counter() - t0, 2), "bytes": out.stat().st_size,
            "mapped": cli_scene.mapped_channels(summary)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capture", type=Path, help="a .capture.npz (default: capture --video)")
    ap.add_argument("--video", type=Path, default=DEMO, help=f"default {DEMO.relative_to(ROOT)}")
    ap.add_argument("--frame", type=int, default=None, help="scene frame (default: the "
                    "biggest smile)")
    ap.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--size", default="960x480", help="WIDTHxHEIGHT (default 960x480)")
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        cap = args.capture
        if cap is None:
            if not args.video.is_file():
                raise SystemExit(f"{args.video} not found (make test fetches the demo clips)")
            cap = capture_video(args.video, Path(tmp))
        info = render(cap, args.output.resolve(), args.frame, width, height)
    print(f"wrote {info['output']} ({info['bytes'] // 1024} KB, frame {info['frame']} of "
          f"{info['frames']}, {info['mapped']} ARKit channels retargeted, render "
          f"{info['render_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
