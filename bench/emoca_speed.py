"""EMOCA backend throughput: end to end (decode + MediaPipe landmarks + EMOCA crop + the three
ResNet-50 encoders + gap fill/filter + Capture write + displacement maps written as 16-bit
PNGs) in frames/s, the network alone per batch size, on this machine's device, and the time
to build one frame's dense detail mesh.

Weights: a synthetic checkpoint with the official layout (tests/emoca_synthetic.py): the
compute is the real network's. FLAME: the synthetic FLAME on FLAME's topology with the shared
MediaPipe embedding (needs ../shared/flame_aux). Clips: the first LRS3 (224x224) and MEAD
(1920x1080) clips of ../shared/media, the first MAX_FRAMES frames each (the 2-core CI machine
is shared). On a CUDA machine it runs on the GPU (fp16 autocast, channels-last) with batch
sizes 32..256 and keeps the fastest. Goal (issue 5): >= 150 frames/s end to end at 1080p on an
H100; EMOCA's own pipeline does about 7 frames/s.

    python bench/emoca_speed.py
"""
from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.ROOT / "tests"))
MAX_FRAMES = 48


def _network_fps(net, device, precision, batch, reps=2):
    import numpy as np

    from emoca_blender.backends.emoca_backend import Runner

    r = Runner(net, device, precision)
    x = np.random.default_rng(0).uniform(0, 1, (batch, 3, 224, 224)).astype(np.float32)
    r.encode(x)                                                # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        r.encode(x)
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return reps * batch / (time.perf_counter() - t0)


def _detail_rows(res, flame_dir, name) -> list[dict]:
    """Time of the dense detail mesh of one frame (``detail`` command: FLAME for the frame,
    UV-space upsampling, displacement, OBJ write), from the capture just made."""
    from emoca_blender import detail_mesh

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        mesh, vf = detail_mesh.capture_detail_mesh(res.capture, res.path, flame_dir)
        t1 = time.perf_counter()
        detail_mesh.write_obj(Path(tmp) / "d.obj", mesh)
        t2 = time.perf_counter()
    case = f"{name}: dense detail mesh, frame {vf} ({len(mesh.vertices):,} vertices)"
    return [common.row("emoca_speed", case, "build (FLAME + upsampling + displacement)",
                       t1 - t0, "s"),
            common.row("emoca_speed", case, "OBJ write", t2 - t1, "s")]


def run() -> list[dict]:
    import torch

    import emoca_synthetic as es
    from emoca_blender.backends import emoca_backend as EB
    from emoca_blender.pipeline import CaptureSettings, run_capture

    rows = []
    if not es.flame_aux_available():
        return [common.row("emoca_speed", "-", "skipped", float("nan"), "",
                           "needs ../shared/flame_aux")]
    ckpt, flame_dir = es.cached("emoca"), es.cached("flame")
    device, _ = EB.resolve_device("auto")
    prec = EB.resolve_precision(device)
    where = (f"{torch.cuda.get_device_name(0)}" if device == "cuda"
             else f"CPU, {torch.get_num_threads()} torch threads")
    ck = EB.load_checkpoint_cached(ckpt)
    batches = (32, 64, 128, 256) if device == "cuda" else (1, 8)
    best_b, best = batches[0], 0.0
    for b in batches:
        fps = _network_fps(ck.net, device, prec, b)
        rows.append(common.row("emoca_speed", f"network only, {where}, {prec}, batch {b}",
                               "3 encoders", fps, "frames/s"))
        if fps > best:
            best_b, best = b, fps
    clips = common.clips()
    picks = [next((c for c in clips if c.parent.name == k), None) for k in ("lrs3", "mead")]
    for clip in [c for c in picks if c is not None]:
        with tempfile.TemporaryDirectory() as tmp:
            s = CaptureSettings(backend="emoca", end=MAX_FRAMES, emotion=False,
                                flame_dir=str(flame_dir), emoca_checkpoint=str(ckpt))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                t0 = time.perf_counter()
                res = run_capture(clip, Path(tmp) / "b.capture.npz", s, cache_dir=None)
                dt = time.perf_counter() - t0
            detail = _detail_rows(res, flame_dir, clip.name)
        n = res.capture.n_frames
        e = res.capture.meta["backend"]["emoca"]
        import cv2

        c = cv2.VideoCapture(str(clip))
        size = f"{int(c.get(3))}x{int(c.get(4))}"
        c.release()
        case = f"{clip.name} ({size}, {n} fr), {where}, batch {e['batch_size']}"
        rows.append(common.row("emoca_speed", case, "end to end", n / dt, "frames/s",
                               ">= 150 on H100 at 1080p" if device == "cuda" else "",
                               (n / dt >= 150) if device == "cuda" else None))
        rows.append(common.row("emoca_speed", case, "of which network", e["network_s"], "s"))
        rows.append(common.row("emoca_speed", case, "displacement maps + write",
                               res.timings.get("after_capture", float("nan")), "s"))
        rows += detail
    if device != "cuda":
        rows.append(common.row("emoca_speed", "GPU (CUDA, fp16, 1080p)", "end to end",
                               float("nan"), "frames/s", "not measured: no GPU lent", None))
    return rows


if __name__ == "__main__":
    from run import main

    sys.exit(main(["emoca_speed"]))
