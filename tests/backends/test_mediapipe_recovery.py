"""The MediaPipe backend's backward recovery: frames the forward FaceLandmarker pass missed
are tracked backwards with MediaPipe's FaceMesh from the frame where the face is found
again, in a worker thread beside the forward pass, within a memory budget.

The misses are made by hiding the landmarker's result on chosen frames of the real demo
clip (the recovery itself runs for real), so the recovered landmarks can be compared with
what the landmarker found on those frames."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mediapipe")

MISSED = list(range(0, 5)) + list(range(30, 35))       # the clip's start, and mid-clip


def _track(clip, monkeypatch, miss=(), **kw):
    from emoca_blender.backends import mediapipe_backend as mb
    from emoca_blender.capture import video

    real = mb._video_detector

    def hiding(lm):
        detect, n = real(lm), [0]

        def d(image, ts):
            out = detect(image, ts)
            n[0] += 1
            return ([], [], out[2], []) if (n[0] - 1) in miss else out
        return d

    monkeypatch.setattr(mb, "_video_detector", hiding)
    info = video.probe(clip)
    frames = video.iter_frames(info.path)
    try:
        return mb.MediaPipeBackend(**kw).track(frames, info.frame_count, info.fps, info.width,
                                               info.height, num_faces=1)
    finally:
        frames.close()


def test_missed_frames_are_recovered_backwards(demo_clip, monkeypatch):
    ref = _track(demo_clip, monkeypatch)
    assert ref.found.all() and ref.info["frames_recovered_backwards"] == 0
    got = _track(demo_clip, monkeypatch, miss=MISSED)
    # both gaps are filled; the second recovery starts while the first may still run
    assert got.found.all(), np.flatnonzero(~got.found)
    assert got.info["frames_recovered_backwards"] == len(MISSED)
    assert got.info["frames_from_landmarks_only"] == len(MISSED)
    a, b = ref.arrays["landmarks2d"][MISSED], got.arrays["landmarks2d"][MISSED]
    err = np.linalg.norm(a - b, axis=-1)
    size = np.linalg.norm(a.max(1) - a.min(1), axis=-1).mean()
    assert np.median(err) < 0.03 * size, (np.median(err), size)    # the same face, same place
    others = np.setdiff1d(np.arange(got.found.size), MISSED)
    np.testing.assert_allclose(got.arrays["landmarks2d"][others][:, :, :2],
                               ref.arrays["landmarks2d"][others][:, :, :2], atol=1e-3)


def test_recovery_keeps_to_its_memory_budget(demo_clip, monkeypatch):
    """A budget of three frames: only the three frames nearest each return are held and
    recovered (the forward pass waits for a job when the budget is full); nothing fails."""
    from emoca_blender.capture import video

    info = video.probe(demo_clip)
    frame_bytes = info.width * info.height * 3
    got = _track(demo_clip, monkeypatch, miss=MISSED, recover_bytes=3 * frame_bytes)
    assert got.info["frames_recovered_backwards"] == 6
    assert np.array_equal(np.flatnonzero(~got.found), [0, 1, 30, 31])
