"""Before/after images of expressive frames: the video crop, the bundled ICT head driven by
the OLD capture's ARKit curves, and by the NEW capture's (head-on, Workbench, the painted
head of the landmark renders), side by side, one row per frame.

    python tools/render_fidelity_frames.py [--out docs/fidelity.jpg]

Reads the captures that ``bench/fidelity.py`` left in .cache/fidelity/ (run it first) and the
clips they came from; picks per clip the widest-open mouth frame and, where the lids touch in
the video, a shut-eye frame (else the label's peak: brows for angry/surprised, smile for happy,
upper lip for disgusted).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tools"))

import common  # noqa: E402
import fidelity as F  # noqa: E402

SIZE = 256


def pick_frames(cap, name: str) -> list[tuple[int, str]]:
    from emoca_blender.arkit import INDEX

    valid = np.flatnonzero(np.asarray(cap["valid"], bool))
    l3 = np.asarray(cap["landmarks3d"], np.float64)
    ark = np.asarray(cap["arkit"], np.float64)
    out = [(int(valid[np.argmax(F.lip_gap(l3[valid]))]), "widest mouth")]
    g = np.minimum(F.eye_gap(l3[valid], "left"), F.eye_gap(l3[valid], "right"))
    if g.min() < F.BLINK_CLOSED_FRAC * np.percentile(g, 90):
        out.append((int(valid[np.argmin(g)]), "eyes shut"))
    else:
        label = F.label_of(name) or ""
        ch = {"angry": ("browDownLeft", "browDownRight"), "surprised": ("browInnerUp",),
              "happy": ("mouthSmileLeft", "mouthSmileRight"),
              "disgusted": ("mouthUpperUpLeft", "mouthUpperUpRight")}.get(label)
        if ch:
            e = ark[valid][:, [INDEX[c] for c in ch]].mean(1)
            out.append((int(valid[np.argmax(e)]), f"{label} peak"))
    return out


def video_crop(clip: Path, frame: int, l2: np.ndarray) -> np.ndarray:
    import cv2

    vc = cv2.VideoCapture(str(clip))
    vc.set(cv2.CAP_PROP_POS_FRAMES, frame)
    ok, img = vc.read()
    vc.release()
    if not ok:
        return np.zeros((SIZE, SIZE, 3), np.uint8)
    lo, hi = l2[:468].min(0), l2[:468].max(0)
    c, s = 0.5 * (lo + hi), 1.25 * float(max(hi - lo))
    x0, y0 = int(c[0] - s / 2), int(c[1] - s / 2)
    pad = int(s)
    img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT)
    crop = img[y0 + pad:y0 + pad + int(s), x0 + pad:x0 + pad + int(s)]
    return cv2.resize(crop, (SIZE, SIZE))


def head_render(model, colors, weights: np.ndarray, tmp: Path, tag: str) -> np.ndarray:
    import cv2

    from build_ict_head import to_blender
    from operators.scene.correspondence import render_front

    v = model.expression_vertices(np.asarray(weights, np.float32)).astype(np.float64)
    face = v[model.vertex_part == 0]
    cx = 0.5 * (face[:, 0].min() + face[:, 0].max())
    cy = 0.5 * (face[:, 1].min() + face[:, 1].max())
    s = 0.72 * max(np.ptp(face[:, 0]), np.ptp(face[:, 1]))
    cy -= 0.08 * s
    path = str(tmp / f"{tag}.png")
    render_front(to_blender(v), model.faces, path, cx, cy, s, SIZE, colors=colors)
    return cv2.imread(path)


def main(argv=None) -> int:
    import cv2

    from build_ict_head import paint_colors
    from emoca_blender.capture_file import load_capture
    from emoca_blender.models.head_model import ICT_HEAD, bundled, load_head_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "fidelity.jpg")
    ap.add_argument("--clips", default="mead,Wolfgang")
    a = ap.parse_args(argv)
    model = load_head_model(bundled(ICT_HEAD))
    colors = paint_colors(model, model.extra["landmarks68"])
    old_dir = next((d for d in (F.CACHE).iterdir() if d.is_dir() and d.name != "work"), None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fidelity_img_") as tmp:
        tmp = Path(tmp)
        for clip in common.clips():
            if not any(k in str(clip) for k in a.clips.split(",")):
                continue
            new_p = next((F.CACHE / "work").glob(f"{clip.stem}*.capture.npz"), None)
            old_p = next(old_dir.glob(f"{clip.stem}*.capture.npz"), None) if old_dir else None
            if new_p is None or old_p is None:
                print(f"skip {clip.name}: run bench/fidelity.py first", file=sys.stderr)
                continue
            new, old = load_capture(new_p), load_capture(old_p)
            for f, what in pick_frames(new, clip.stem):
                tiles = [video_crop(clip, int(new.meta.get("frame_start", 0)) + f,
                                    np.asarray(new["landmarks2d"][f], np.float64)),
                         head_render(model, colors, old["arkit"][f], tmp, f"o{len(rows)}"),
                         head_render(model, colors, new["arkit"][f], tmp, f"n{len(rows)}")]
                row = np.concatenate(tiles, 1)
                cv2.putText(row, f"{clip.stem[:24]} f{f}: {what}", (6, 18),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
                rows.append(row)
    if not rows:
        print("error: no captures to show", file=sys.stderr)
        return 2
    head = np.zeros((24, rows[0].shape[1], 3), np.uint8)
    for i, t in enumerate(("video", "old curves on the ICT head", "new curves on the ICT head")):
        cv2.putText(head, t, (6 + i * SIZE, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 255, 255), 1, cv2.LINE_AA)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(a.out), np.concatenate([head] + rows, 0), [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"wrote {a.out} ({len(rows)} frames)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
