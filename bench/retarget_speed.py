"""Retarget speed (issue 7 targets):

* bake: 52 shape-key channels + 3 bones (head, jaw, eyes) over 10,000 frames written as
  plain keyframes with foreach_set: <= 1 s;
* geometric solve: the per-frame bounded least squares (52 keys, 478 landmarks) from the
  actor's landmarks to the character's key weights, vectorised over 5,000 frames:
  <= 1 ms per frame.

    python bench/retarget_speed.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def _capture(n: int):
    import numpy as np

    from emoca_blender.arkit import ARKIT_NAMES
    from emoca_blender.capture_file import make_capture

    t = np.arange(n) / 30.0
    ph = np.arange(52)[None] * 0.37
    arkit = 0.5 + 0.5 * np.sin(2 * np.pi * 0.3 * t[:, None] + ph)
    rot = 0.2 * np.sin(2 * np.pi * 0.1 * t)[:, None] * np.array([1.0, 0.5, 0.2])
    arrays = {
        "valid": np.ones(n, bool), "interpolated": np.zeros(n, bool), "timestamps": t,
        "bbox": np.zeros((n, 4)), "landmarks2d": np.zeros((n, 1, 2)), "landmarks3d": np.zeros((n, 1, 3)),
        "head_rotation": rot, "head_translation": np.zeros((n, 3)), "jaw": rot * [1, 0, 0],
        "eyes": np.stack([rot, rot], 1) * 0.5, "blinks": arkit[:, :2], "expression": arkit,
        "arkit": arkit, "shape": np.zeros(0),
    }
    return make_capture(arrays, {"fps": 30.0, "width": 640, "height": 480,
                                 "source": {"path": "bench.mp4"}}, {"expression": ARKIT_NAMES})


def geometric_rows(n: int = 5000) -> list[dict]:
    """Time ``geometric_retarget.solve_capture`` (actor neutral, solver set-up and the solve)
    on the open head model's own shapes seen at the 478 landmarks, for ``n`` frames of sparse
    random expressions; best of 3."""
    import numpy as np

    from emoca_blender.retarget import geometric as geo
    from emoca_blender.models.head_model import OPEN_HEAD, bundled, load_head_model

    m = load_head_model(bundled(OPEN_HEAD))
    K, L = m.n_expressions, m.n_vertices
    idx = np.arange(L)
    basis = geo.LandmarkBasis.from_mesh(m.expression_names, m.v_template, m.expression_basis,
                                        np.stack([idx] * 3, 1), np.tile([1.0, 0, 0], (L, 1)))
    rng = np.random.default_rng(0)
    W = np.clip(rng.normal(0, 0.35, (n, K)), 0, 1) * (rng.random((n, K)) < 0.3)
    lm = m.v_template[None].astype(np.float64) + np.einsum(
        "nk,kvc->nvc", W, m.expression_basis.astype(np.float64))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        X = geo.solve_capture(basis, lm, W, neutral_frame=None)
        times.append(time.perf_counter() - t0)
    per = min(times) / n * 1e3
    mae = float(np.abs(X - W).mean())
    case = f"open head: {K} keys, {L} landmarks x {n:,} frames"
    return [common.row("retarget_speed", case, "geometric solve (best of 3)", per, "ms/frame",
                       "<= 1 ms", per <= 1.0),
            common.row("retarget_speed", case, "geometric solve MAE vs truth", mae, "weight")]


def run() -> list[dict]:
    import bpy

    from operators.scene import retarget_bake, rig_build

    bpy.ops.wm.read_factory_settings(use_empty=True)
    model, identity = rig_build.arkit_head()          # the sample character
    mesh, arm = rig_build.build_head_object(model, "Character", shape=identity)
    cap = _capture(10_000)
    retarget_bake.bake_capture(cap, [mesh], armature=arm)      # warm-up (creates actions)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        s = retarget_bake.bake_capture(cap, [mesh], armature=arm)
        times.append(time.perf_counter() - t0)
    best = min(times)
    case = f"sample character (ICT head): 52 keys + {len(s['bones'])} bones x 10k frames"
    return [common.row("retarget_speed", case, "bake time (best of 3)", best, "s", "<= 1 s",
                       best <= 1.0),
            common.row("retarget_speed", case, "keys written", float(s["keys"]), "keys")] \
        + geometric_rows()


if __name__ == "__main__":
    from run import main

    sys.exit(main(["retarget_speed"]))
