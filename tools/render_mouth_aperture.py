"""Render docs/mouth_aperture.jpg: why bench/fidelity.py measures the driven head's lip gap
as its visible opening and not by its embedded landmarks 13/14.

Three states of the bundled ICT head, seen from the front (Workbench): at rest, with the
lower lip rolled in (mouthRollLower 0.7) and with the jaw a little open (jawOpen 0.2). Under
each: the embedded landmarks' 13-14 distance and the visible opening
(``fidelity.MouthAperture``), in mm.

    python tools/render_mouth_aperture.py [--out docs/mouth_aperture.jpg]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CASES = (("at rest", {}), ("mouthRollLower 0.7", {"mouthRollLower": 0.7}),
         ("jawOpen 0.2", {"jawOpen": 0.2}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "mouth_aperture.jpg"))
    args = p.parse_args(argv)
    import bpy
    import cv2

    import fidelity as F
    from emoca_blender.models import head_model

    m = head_model.ict_head()
    L0, B = F.landmark_basis(m)
    ap = F.MouthAperture(m, L0, B)
    names = list(m.expression_names)
    eye = float(np.linalg.norm(L0[33] - L0[263]))
    bpy.ops.wm.read_factory_settings(use_empty=True)
    sc = bpy.context.scene
    sc.render.engine = "BLENDER_WORKBENCH"
    sc.render.resolution_x = sc.render.resolution_y = 360
    sc.display.shading.light = "STUDIO"
    sc.view_settings.view_transform = "Standard"
    centre = (L0[0] + L0[17]) / 2
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    cam.data.type, cam.data.ortho_scale = "ORTHO", 0.07
    cam.location = (0.0, float(centre[1]), 0.5)
    sc.collection.objects.link(cam)
    sc.camera = cam
    me = bpy.data.meshes.new("ict")
    me.from_pydata(m.v_template.tolist(), [], m.faces.tolist())
    ob = bpy.data.objects.new("ict", me)
    sc.collection.objects.link(ob)
    panels = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, kw in CASES:
            w = np.zeros(len(names))
            for k, v in kw.items():
                w[names.index(k)] = v
            v = m.v_template + np.einsum("k,kvc->vc", w, m.expression_basis.astype(np.float64))
            me.vertices.foreach_set("co", v.astype(np.float32).ravel())
            me.update()
            sc.render.filepath = str(Path(tmp) / "p.png")
            bpy.ops.render.render(write_still=True)
            img = cv2.imread(sc.render.filepath)
            lmk = float(F.lip_gap(F.driven_landmarks(L0, B, w[None]))[0]) * eye * 1000
            vis = float(ap(w[None])[0]) * eye * 1000
            img = cv2.copyMakeBorder(img, 0, 70, 0, 0, cv2.BORDER_CONSTANT, value=(255, 255, 255))
            for i, t in enumerate((label, f"landmarks 13-14: {lmk:.1f} mm",
                                   f"visible opening: {vis:.1f} mm")):
                cv2.putText(img, t, (10, 380 + 22 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.55,
                            (0, 0, 0), 1, cv2.LINE_AA)
            panels.append(img)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(args.out, np.hstack(panels), [cv2.IMWRITE_JPEG_QUALITY, 88])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
