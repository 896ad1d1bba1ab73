"""Key reduction (issue 15 item 2): fewer keys, same motion.

The demo capture (``make demo``'s out/WolfgangLanger_Pexels.capture.npz; captured from
.cache/demo/clips/WolfgangLanger_Pexels.mp4 with the CLI when missing) baked onto the sample
character dense (one key per frame) and reduced (tolerance 0.01 weight, 0.2 degrees):

* keys reduced >= 5x;
* the reduced F-curves, evaluated by Blender (``fcurve.evaluate``) at every frame, within
  0.01 of the dense bake on every shape key and within 0.2 degrees on every bone;
* both exported as FBX (``fbx_io.export_fbx``, generic preset) and imported back: the
  reduced file has the reduced key count, and its curves (LINEAR, as the importer keys
  them) are within the tolerances of the dense file's at every frame.

    python bench/key_reduction.py
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CLIP = "WolfgangLanger_Pexels"
TOL, ANGLE = 0.01, 0.2


def _capture_path() -> Path:
    p = common.ROOT / "out" / f"{CLIP}.capture.npz"
    if not p.is_file():
        clip = common.DEMO_CLIPS / f"{CLIP}.mp4"
        p.parent.mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-m", "emoca_blender", "capture", str(clip), "-o", str(p)],
                       cwd=common.ROOT, check=True)
    return p


def _played(objs, frames):
    """Blender's evaluation of every curve at every frame: ({key: (N,)}, {bone: (N, 4)},
    keys, keys of the shape-key curves)."""
    from operators.scene import blender_anim
    from operators.scene.blender_anim import _BONE_RE
    from operators.scene.fbx_io import _KEY_RE

    weights, quats, n_keys, n_sk = {}, {}, 0, 0
    for o in objs:
        ids = [o] + ([o.data.shape_keys] if o.type == "MESH" and o.data.shape_keys else [])
        for idb in ids:
            for bag in blender_anim.channelbags_of(idb):
                for fc in bag.fcurves:
                    n_keys += len(fc.keyframe_points)
                    v = np.array([fc.evaluate(f) for f in frames])
                    if (m := _KEY_RE.match(fc.data_path)):
                        weights[(o.name, m.group(1))] = v
                        n_sk += len(fc.keyframe_points)
                    elif (m := _BONE_RE.match(fc.data_path)) and m.group(2) == "rotation_quaternion":
                        quats.setdefault(m.group(1), [None] * 4)[fc.array_index] = v
    return weights, {b: np.stack(q, -1) for b, q in quats.items()}, n_keys, n_sk


def _reimported(got, frames, baked):
    """The re-imported FBX's curves at every frame (the importer keys LINEAR) and the key
    count of those that were baked (``baked``: :func:`_played`'s; the exporter also writes
    the bones that were not animated, with 2 keys in a reduced file)."""
    weights, quats, n_keys = {}, {}, 0
    for obj, entry in got.items():
        for k, (fr, val) in entry["shape_keys"].items():
            n_keys += len(fr) if (obj, k) in baked[0] else 0
            weights[(obj, k)] = np.interp(frames, fr, val)
        for b, props in entry["bones"].items():
            if "rotation_quaternion" in props:
                fr, q = props["rotation_quaternion"]
                n_keys += 4 * len(fr) if b in baked[1] else 0
                quats[b] = np.stack([np.interp(frames, fr, q[:, i]) for i in range(4)], -1)
    return weights, quats, n_keys


def _errors(a, b):
    from emoca_blender.retarget.keyreduce import quat_angle_deg

    w = max(float(np.abs(a[0][k] - b[0][k]).max()) for k in b[0])
    ang = max(float(quat_angle_deg(a[1][k], b[1][k]).max()) for k in b[1]) if b[1] else 0.0
    return w, ang


def run() -> list[dict]:
    import bpy

    from emoca_blender import capture_file
    from operators.scene import cli_scene, fbx_io

    cap = capture_file.load_capture(_capture_path())
    n = cap.n_frames
    frames = np.arange(1, n + 1, dtype=np.float64)
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, kw in (("dense", {"tolerance": None}),
                         ("reduced", {"tolerance": TOL, "angle_tolerance_deg": ANGLE})):
            cli_scene.new_scene()
            s = cli_scene.retarget(cap, "sample", frame_start=1, **kw)
            objs = [bpy.data.objects[o] for o in s["objects"]]
            played = _played(objs, frames)
            assert played[2] == s["keys"], (played[2], s["keys"])
            path = fbx_io.export_fbx(Path(tmp) / f"{mode}.fbx", objs, frame_start=1, frame_end=n)
            back = _reimported(fbx_io.read_fbx_animation(path), frames, played)
            res[mode] = (s, played, back)
    (sd, pd, bd), (sr, pr, br) = res["dense"], res["reduced"]
    ratio = sd["keys"] / sr["keys"]
    w_err, a_err = _errors(pr, pd)
    fw_err, fa_err = _errors(br, bd)
    case = (f"{CLIP} ({n} frames, {len(pd[0])} shape keys, {len(pd[1])} bones) on the sample "
            f"character, tolerance {TOL} / {ANGLE} deg")
    R = common.row
    return [
        R("key_reduction", case, "keys dense", float(sd["keys"]), "keys"),
        R("key_reduction", case, "keys reduced", float(sr["keys"]), "keys"),
        R("key_reduction", case, "reduction", ratio, "x", ">= 5x", ratio >= 5),
        R("key_reduction", case, "reduction, shape-key curves alone", pd[3] / pr[3], "x"),
        R("key_reduction", case, "max weight error, every frame and shape key", w_err, "weight",
          f"<= {TOL}", w_err <= TOL),
        R("key_reduction", case, "max bone angle error, every frame and bone", a_err, "deg",
          f"<= {ANGLE}", a_err <= ANGLE),
        R("key_reduction", case, "FBX re-imported keys of the baked curves (dense file)",
          float(bd[2]), "keys", f"= keys dense ({sd['keys']})", bd[2] == sd["keys"]),
        R("key_reduction", case, "FBX re-imported keys of the baked curves (reduced file)",
          float(br[2]), "keys", f"= keys reduced ({sr['keys']})", br[2] == sr["keys"]),
        R("key_reduction", case, "FBX re-import reduction vs dense file", bd[2] / br[2], "x",
          ">= 5x", bd[2] / br[2] >= 5),
        R("key_reduction", case, "FBX max weight error vs dense file", fw_err, "weight",
          f"<= {TOL}", fw_err <= TOL),
        R("key_reduction", case, "FBX max bone angle error vs dense file", fa_err, "deg",
          f"<= {ANGLE}", fa_err <= ANGLE),
    ]


if __name__ == "__main__":
    from run import main

    sys.exit(main(["key_reduction"]))
