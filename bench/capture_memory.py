"""Peak memory of a long capture (issue 3): a generated 10-minute 1080p clip with a real
face is captured in a child process, whose peak RSS (``ru_maxrss`` of the child) must stay
<= 1.5 GB: decoding streams, nothing holds the video.

The clip loops the frames of a real 1080p clip (MEAD from ../shared/media, else the demo
clip scaled to 1080p), forwards then backwards so motion stays continuous, written once with
OpenCV (mp4v) into the cache folder and reused.

    python bench/capture_memory.py [--minutes 10]
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MINUTES = float(os.environ.get("EMOCA_BENCH_MINUTES", "10"))
LIMIT_GB = 1.5
OUT_DIR = common.ROOT / ".cache" / "bench"


def source_clip() -> Path:
    mead = sorted((common.SHARED_MEDIA / "mead").glob("*neutral*.mp4"))
    return mead[0] if mead else common.DEMO_CLIPS / "WolfgangLanger_Pexels.mp4"


def make_clip(minutes: float = MINUTES) -> Path:
    import cv2

    src = source_clip()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"long_{minutes:g}min_1080p_{src.stem}.mp4"
    if out.is_file() and out.stat().st_size > 0:
        return out
    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        if f.shape[:2] != (1080, 1920):
            f = cv2.resize(f, (1920, 1080))
        frames.append(f)
    cap.release()
    loop = frames + frames[::-1][1:-1]
    total = int(round(minutes * 60 * fps))
    tmp = out.with_suffix(".part.mp4")
    vw = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (1920, 1080))
    for i in range(total):
        vw.write(loop[i % len(loop)])
    vw.release()
    os.replace(tmp, out)
    return out


CHILD = r"""
import json, resource, sys, time, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from emoca_blender.capture.pipeline import CaptureSettings, run_capture
t0 = time.perf_counter()
with tempfile.TemporaryDirectory() as d:
    r = run_capture(sys.argv[1], Path(d) / "long.capture.npz", CaptureSettings(), cache_dir=None)
    n, valid = r.capture.n_frames, int(r.capture["valid"].sum())
print(json.dumps({"frames": n, "valid": valid, "seconds": time.perf_counter() - t0,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "timings": r.timings}))
"""


def run() -> list[dict]:
    t0 = time.perf_counter()
    clip = make_clip()
    t_make = time.perf_counter() - t0
    p = subprocess.run([sys.executable, "-c", CHILD, str(clip), str(common.ROOT)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip()[-300:])
    res = json.loads(p.stdout.strip().splitlines()[-1])
    peak_gb = res["maxrss_kb"] / 2**20
    child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    case = f"{clip.name} ({res['frames']} fr, {MINUTES:g} min 1080p)"
    r = common.row
    return [
        r("capture_memory", case, "peak RSS of the capture process", max(peak_gb, child_peak),
          "GB", f"<= {LIMIT_GB}", bool(max(peak_gb, child_peak) <= LIMIT_GB)),
        r("capture_memory", case, "capture time", res["seconds"], "s"),
        r("capture_memory", case, "capture throughput", res["frames"] / res["seconds"], "frames/s"),
        r("capture_memory", case, "frames with a face", res["valid"] / max(res["frames"], 1), "fraction"),
        r("capture_memory", case, "clip generation (0 when cached)", t_make, "s"),
    ]


if __name__ == "__main__":
    from run import main

    sys.exit(main(["capture_memory"]))
