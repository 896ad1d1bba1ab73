"""Emotion: the per-frame cost of the emotion curves inside a capture, and the
emotion-consistent refinement (EMOCA supplementary Eq. 1) on the MEAD clips.

Per MEAD clip in ../shared/media/mead: capture (default settings), then refine the
expression on keyframes of the middle third and report the emotion-feature distance
between input and rendering (target: falls >= 30%) and the 2-D landmark error (target:
rises <= 10%), per clip, for the default settings (the warp renderer, Eq. 1 plus the
landmark consistency term) and for Eq. 1 as written (no landmark term); the refinement
time per keyframe is measured with one torch thread. The emotion hook's own cost per
analysed frame and per captured frame is measured on the same captures (crop + network,
on the hook's background thread).

    python bench/emotion_refine.py
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

KEYFRAMES = 3
# the default settings (Eq. 1 plus the landmark consistency term), and Eq. 1 exactly as
# written (no landmark term) for comparison
VARIANTS = (("", {}), (" (Eq. 1 as written)", {"landmark_weight": 0.0}))


def hook_cost(clip: Path, cap) -> tuple[float, float]:
    """ms per analysed crop and per captured frame of the emotion hook (synchronous, so the
    cost is not hidden by the background thread)."""
    import numpy as np

    from emoca_blender import emotion, video

    hook = emotion.EmotionHook(background=False,
                               stride=emotion.stride_for(cap.fps, 10.0))
    frames = list(video.iter_frames(clip, 0, cap.n_frames))
    lmk = cap["landmarks2d"]
    t0 = time.perf_counter()
    for i, rgb in frames:
        hook(i, rgb, lmk[i] if cap["valid"][i] else None)
    r = hook.result(cap.n_frames)
    dt = time.perf_counter() - t0
    return dt * 1e3 / max(r["frames_analysed"], 1), dt * 1e3 / max(len(frames), 1)


def run() -> list[dict]:
    import numpy as np

    from emoca_blender import video
    from emoca_blender.emotion_refine import RefineSettings, refine_capture
    from emoca_blender.pipeline import CaptureSettings, run_capture

    clips = sorted((common.SHARED_MEDIA / "mead").glob("*_level_*.mp4"))
    if not clips:
        return [common.row("emotion_refine", "-", "skipped: ../shared/media/mead absent",
                           float("nan"), "")]
    rows = []
    for clip in clips:
        with tempfile.TemporaryDirectory() as tmp:
            cap = run_capture(clip, Path(tmp) / "c.capture.npz", CaptureSettings(),
                              cache_dir=None).capture
        per_crop, per_frame = hook_cost(clip, cap)
        rows.append(common.row("emotion_refine", clip.name, "emotion hook per analysed crop",
                               per_crop, "ms"))
        rows.append(common.row("emotion_refine", clip.name, "emotion hook per captured frame",
                               per_frame, "ms"))
        N = cap.n_frames
        keys = np.linspace(N // 3, 2 * N // 3, KEYFRAMES).astype(int)
        for tag, kw in VARIANTS:
            t0 = time.perf_counter()
            res = refine_capture(cap, video.iter_frames(clip, 0, N), RefineSettings(**kw),
                                 frame_subset=keys)
            dt = (time.perf_counter() - t0) / max(len(res.frames), 1)
            s = res.summary()
            rows.append(common.row("emotion_refine", clip.name,
                                   "feature distance capture -> refined" + tag,
                                   f"{s['feat_dist_before']:.3f} -> {s['feat_dist_after']:.3f}",
                                   ""))
            rows.append(common.row("emotion_refine", clip.name, "feature distance drop" + tag,
                                   100 * s["feat_drop"], "%", ">= 30", s["feat_drop"] >= 0.30))
            rows.append(common.row("emotion_refine", clip.name,
                                   "landmark error capture -> refined" + tag,
                                   f"{s['lmk_err_before']:.2f} -> {s['lmk_err_after']:.2f}",
                                   "px"))
            rows.append(common.row("emotion_refine", clip.name, "landmark error rise" + tag,
                                   100 * s["lmk_rise"], "%", "<= 10", s["lmk_rise"] <= 0.10))
            rows.append(common.row("emotion_refine", clip.name,
                                   "refinement time per keyframe" + tag, dt, "s"))
    return rows


if __name__ == "__main__":
    from run import main

    sys.exit(main(["emotion_refine"]))
