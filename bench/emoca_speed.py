"""EMOCA backend throughput: end to end (decode + MediaPipe landmarks + EMOCA crop + the three
ResNet-50 encoders + gap fill/filter + Capture write + displacement maps written as 16-bit
PNGs) in frames/s, the network alone per batch size, on this machine's device, and the time
to build one frame's dense detail mesh.

Weights: a synthetic checkpoint with the official layout (tests/emoca_synthetic.py): the
compute is the real network's. FLAME: the synthetic FLAME on FLAME's topology with the shared
MediaPipe embedding (needs ../shared/flame_aux). Clips: the first LRS3 (224x224) and MEAD
(1920x1080) clips of ../shared/media, the first MAX_FRAMES frames each (the 2-core CI machine
is shared). Every machine measures the CPU; on a CUDA machine also the GPU (fp16 autocast,
channels-last): the network alone at batch sizes 32..256, and end to end on GPU_FRAMES frames
of a 1080p MEAD clip looped (capture_memory's long clip), with the batch size the backend chooses for the GPU's
memory (device_info.batch_for_memory), after a short warm-up capture. Without a GPU it says
"no GPU here" and why (the `device` command's reason). Goal (issues 5, 20): >= 150 frames/s
end to end at 1080p on an H100, decoding (its own thread), MediaPipe tracking and batched
crops included; EMOCA's own pipeline does about 7 frames/s.

    python bench/emoca_speed.py
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.ROOT / "tests"))
MAX_FRAMES = 48          # per clip on the CPU (the 2-core CI machine is shared)
GPU_FRAMES = 1200        # on a GPU: of a 1080p MEAD clip looped (capture_memory.make_clip)


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
    from emoca_blender.models import detail_mesh

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


def _end_to_end(clip, device, frames, ckpt, flame_dir, where, detail=True) -> list[dict]:
    from emoca_blender.capture.pipeline import CaptureSettings, run_capture

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        s = CaptureSettings(backend="emoca", end=frames, emotion=False, device=device,
                            flame_dir=str(flame_dir), emoca_checkpoint=str(ckpt))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if device != "cpu":                   # cuDNN autotuning, allocator: not counted
                run_capture(clip, Path(tmp) / "w.capture.npz", dataclasses.replace(s, end=16),
                            cache_dir=None)
            t0 = time.perf_counter()
            res = run_capture(clip, Path(tmp) / "b.capture.npz", s, cache_dir=None)
            dt = time.perf_counter() - t0
        extra = _detail_rows(res, flame_dir, clip.name) if detail else []
    n = res.capture.n_frames
    e = res.capture.meta["backend"]["emoca"]
    import cv2

    c = cv2.VideoCapture(str(clip))
    size = f"{int(c.get(3))}x{int(c.get(4))}"
    c.release()
    gpu = device.startswith("cuda")
    case = f"{clip.name} ({size}, {n} fr), {where}, {e['precision']}, batch {e['batch_size']}"
    rows.append(common.row("emoca_speed", case, "end to end", n / dt, "frames/s",
                           ">= 150 on H100 at 1080p" if gpu and size == "1920x1080" else "",
                           (n / dt >= 150) if gpu and size == "1920x1080" else None))
    rows.append(common.row("emoca_speed", case, "of which network (its own thread)",
                           e["network_s"], "s"))
    rows.append(common.row("emoca_speed", case, "of which crops (batched)", e["crop_s"], "s"))
    rows.append(common.row("emoca_speed", case, "decode + track + network, overlapped",
                           e["track_and_network_s"], "s"))
    rows.append(common.row("emoca_speed", case, "displacement maps + write",
                           res.timings.get("after_capture", float("nan")), "s"))
    return rows + extra


def run() -> list[dict]:
    import torch

    import emoca_synthetic as es
    from emoca_blender import device_info
    from emoca_blender.backends import emoca_backend as EB

    rows = []
    if not es.flame_aux_available():
        return [common.row("emoca_speed", "-", "skipped", float("nan"), "",
                           "needs ../shared/flame_aux")]
    ckpt, flame_dir = es.cached("emoca"), es.cached("flame")
    info = device_info.probe(torch)
    print("\n".join(["# worker device:"] + info["lines"]), file=sys.stderr)
    ck = EB.load_checkpoint_cached(ckpt)
    clips = common.clips()
    picks = {k: next((c for c in clips if c.parent.name == k), None) for k in ("lrs3", "mead")}
    devices = ["cpu"] + ([info["device"]] if info["device"] != "cpu" else [])
    for device in devices:
        gpu = device.startswith("cuda")
        where = (f"{info['gpu']['name']}" if gpu else "Apple GPU (MPS)" if device == "mps"
                 else f"CPU, {torch.get_num_threads()} torch threads")
        prec = EB.resolve_precision(device)
        batches = (32, 64, 128, 256) if gpu else (1, 8)
        for b in batches:
            fps = _network_fps(ck.net, device, prec, b)
            rows.append(common.row("emoca_speed", f"network only, {where}, {prec}, batch {b}",
                                   "3 encoders", fps, "frames/s"))
        if gpu:          # a 1080p clip long enough for a steady rate (MEAD clips are 3-5 s)
            import capture_memory

            long = capture_memory.make_clip(1.0)
            rows += _end_to_end(long, device, GPU_FRAMES, ckpt, flame_dir, where, detail=False)
        else:
            for clip in [c for c in picks.values() if c is not None]:
                rows += _end_to_end(clip, device, MAX_FRAMES, ckpt, flame_dir, where)
    if not any(d.startswith("cuda") for d in devices):
        why = info.get("cuda_problem") or "no CUDA GPU"
        print(f"# no GPU here ({why}): the GPU figure is not measured", file=sys.stderr)
        rows.append(common.row("emoca_speed", "GPU (CUDA, fp16, 1080p)", "end to end",
                               float("nan"), "frames/s", f"no GPU here ({why})", None))
    return rows


if __name__ == "__main__":
    from run import main

    sys.exit(main(["emoca_speed"]))
