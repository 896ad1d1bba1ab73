"""Bench: build the animated FLAME rig (5023 vertices, 100 expression shape keys, 36
pose-corrective keys, 5 bones) of a 1,000-frame capture in Blender (bpy module).

Timed: HeadModel of the capture's identity + mesh, shape keys, armature, skinning and every
keyframe (expression, pose correctives, bone rotations and joint-following locations).
Not timed: generating the synthetic FLAME model and the capture. Target: <= 5 s.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.ROOT / "tests"))
sys.path.insert(0, str(common.ROOT / "tests" / "operators"))

N_FRAMES = 1000
TARGET_S = 5.0


def run() -> list[dict]:
    import bpy
    import numpy as np

    import flame_synthetic as fs
    from emoca_blender.models import flame
    from operators.scene import rig_build
    from test_blender_flame_rig import flame_capture

    t = fs.aux("head_template.obj")
    d = fs.make_flame_dict(n_shape=100, n_expr=100, template=t, seed=0,
                           n_lat=62, n_lon=81)   # without FLAME's template: 5,024 vertices
    tmp = Path(common.ROOT / ".cache" / "bench")
    tmp.mkdir(parents=True, exist_ok=True)
    m = flame.load_flame(fs.write_flame_pickle(tmp / "synthetic_flame.pkl", d))
    cap = flame_capture(m, n=N_FRAMES, n_expr=100, n_shape=100)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    t0 = time.perf_counter()
    hm = flame.head_model_for_capture(m, cap)
    mesh, arm, summary = rig_build.build_flame_rig(hm, cap, "FLAME")
    dt = time.perf_counter() - t0
    case = f"{m.n_vertices} verts, 100 expr keys, {N_FRAMES} frames"
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return [common.row("rig_build", case, "build + keyframes", round(dt, 3), "s",
                       f"<= {TARGET_S:g}", dt <= TARGET_S),
            common.row("rig_build", case, "keys written", float(summary["keys"]), "keys")]


if __name__ == "__main__":
    for r in run():
        print(r)
