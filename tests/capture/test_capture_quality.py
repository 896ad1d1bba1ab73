"""Capture quality on real faces (issue 3): MEAD emotion sanity checks, jitter and lag of
the temporal filter, and bad input (portrait phone video with rotation metadata, 4K,
grayscale, a face that leaves and comes back, two faces). MEAD clips are research-licensed
and only read from ../shared/media; those tests skip when it is absent."""
import struct

import numpy as np
import pytest

from conftest import MEDIA
from emoca_blender.capture.pipeline import CaptureSettings, run_capture

MEAD = MEDIA / "mead"


def _capture(path, tmp, **kw):
    return run_capture(path, tmp / (path.stem + ".capture.npz"), CaptureSettings(**kw),
                       cache_dir=None).capture


@pytest.fixture(scope="module")
def mead(tmp_path_factory):
    clips = {}
    for emo in ("neutral", "happy", "surprised", "angry"):
        found = sorted(MEAD.glob(f"*_{emo}_*.mp4")) if MEAD.is_dir() else []
        if not found:
            pytest.skip(f"MEAD clips absent from {MEAD}")
        clips[emo] = _capture(found[0], tmp_path_factory.mktemp("mead"))
    return clips


def _mid(cap, name, field="arkit"):
    x = cap.column(field, name)
    n = len(x)
    return float(x[n // 3: 2 * n // 3].mean())


@pytest.mark.parametrize("emo,channels,factor", [
    ("happy", ("mouthSmileLeft", "mouthSmileRight"), 3.0),
    ("surprised", ("browInnerUp",), 3.0),
    pytest.param("surprised", ("jawOpen",), 3.0, marks=pytest.mark.xfail(
        reason="the face does not do it: in the middle third of W023 the mouth opens by the "
               "lips parting (lip gap 9.4 mm: upper lip 13 up 3.5 mm, lower lip 14 down 5.7 mm; "
               "neutral W015's speech 7.9 mm) while the chin barely drops (chin region 0.3 mm "
               "below the actor's closed-mouth frames, 0.2% of face height; W015 1.0 mm). Fitting "
               "the open head model's jawOpen to the chin region gives 0.06 (W015 0.20); 3x "
               "neutral (jawOpen >= 0.44) would need a ~7.8 mm mean chin drop. Our jawOpen (the "
               "landmark solve on the ICT head's sculpted jaw) follows the chin; "
               "see test_surprised_mouth_opening_is_lips_not_jaw", strict=True)),
    ("angry", ("browDownLeft", "browDownRight"), 2.0),
])
def test_mead_emotions(mead, emo, channels, factor):
    for ch in channels:
        e, n = _mid(mead[emo], ch), _mid(mead["neutral"], ch)
        assert e >= factor * n and e > 0.02, f"{emo} {ch}: {e:.3f} vs neutral {n:.3f}"


# chin and lower jawline: move with the jaw, hardly with the lip channels of the open model
_CHIN = [152, 148, 176, 149, 150, 377, 400, 378, 379, 175, 199]


def _jaw_geometry(cap):
    """Middle-third chin drop and lip gap (mm, pose-free landmarks) against the actor's own
    closed-mouth frames (the tenth of the clip with the smallest upper-to-lower lip gap)."""
    L = cap["landmarks3d"].astype(np.float64) * 1000.0
    gap = L[:, 13, 1] - L[:, 14, 1]
    closed = L[np.argsort(gap)[:max(3, len(L) // 10)]].mean(0)
    chin = (closed[_CHIN, 1] - L[:, _CHIN, 1]).mean(1)
    n = len(L)
    mid = slice(n // 3, 2 * n // 3)
    return float(chin[mid].mean()), float(gap[mid].mean()), float(closed[10, 1] - closed[152, 1])


def test_surprised_mouth_opening_is_lips_not_jaw(mead):
    """The evidence behind the surprised-jawOpen xfail above: W023's open mouth is the lips
    parting with the jaw nearly closed, so a 3x-neutral jawOpen would be invented."""
    s_chin, s_gap, face = _jaw_geometry(mead["surprised"])
    n_chin, n_gap, _ = _jaw_geometry(mead["neutral"])
    assert s_gap > 5.0 and s_gap >= 0.8 * n_gap, (s_gap, n_gap)   # the mouth is open
    assert s_chin < 0.01 * face and s_chin < n_chin, (s_chin, n_chin, face)   # the jaw is not


def _jitter(x):
    return np.abs(np.diff(x, 2, axis=0)).mean()


def test_filter_cuts_jitter_on_neutral(mead):
    """Per channel group: the slow channels (brows, smile, nose, cheeks) lose at least two
    thirds of their frame-to-frame jitter; the fast ones (jaw, mouth opening, lips, lids)
    lose some, bounded by the peak tolerance so that speech and blinks keep their shape."""
    from emoca_blender.capture import filters
    from emoca_blender.arkit import ARKIT_NAMES

    cap = mead["neutral"]
    raw, filt = cap["arkit_raw"], cap["arkit"]
    fast = filters.fast_columns(ARKIT_NAMES)
    slow = np.setdiff1d(np.arange(len(ARKIT_NAMES)), fast)
    assert _jitter(filt[:, slow]) * 3 <= _jitter(raw[:, slow])
    assert _jitter(filt[:, fast]) * 1.25 <= _jitter(raw[:, fast])
    assert np.abs(filt[:, fast] - raw[:, fast]).max() <= filters.PEAK_TOLERANCE + 1e-6


def _lag(ref, got, max_lag=6):
    """How many frames ``got`` trails ``ref`` (negative: leads), to a fraction of a frame:
    the peak of their normalised cross-correlation (either sign), refined by a parabola."""
    ref = (ref - ref.mean()) / (ref.std() + 1e-12)
    got = (got - got.mean()) / (got.std() + 1e-12)
    n = len(ref)
    ks = np.arange(-max_lag, max_lag + 1)
    cc = np.array([np.mean(got[max_lag:n - max_lag] * ref[max_lag - k:n - max_lag - k])
                   for k in ks])
    cc = cc * np.sign(cc[max_lag])
    i = int(np.argmax(cc))
    if 0 < i < len(ks) - 1:
        a, b, c = cc[i - 1], cc[i], cc[i + 1]
        if a - 2 * b + c < 0:
            return float(ks[i] + 0.5 * (a - c) / (a - 2 * b + c))
    return float(ks[i])


def _yaw_from_landmarks(cap):
    """An independent head yaw (arbitrary scale): per frame, the affine map of the actor's
    neutral face mesh (pose-free, 468 points) onto the frame's image landmarks; the image x
    that depth contributes, relative to the map's scale, grows with the turn."""
    X = cap["neutral_landmarks"][:468].astype(np.float64)
    X = np.c_[X - X.mean(0), np.ones(len(X))]
    out = []
    for lm in cap["landmarks2d"][:, :468].astype(np.float64):
        A = np.linalg.lstsq(X, lm, rcond=None)[0][:3].T            # (2,3)
        out.append(A[0, 2] / np.linalg.norm(A, axis=1).mean())
    return np.array(out)


def _lid_gap(cap):
    """Upper-to-lower lid distance of both eyes in the image, over the face's height."""
    L = cap["landmarks2d"].astype(np.float64)
    face = np.linalg.norm(L[:, 10] - L[:, 152], axis=1)
    return (np.linalg.norm(L[:, 159] - L[:, 145], axis=1)
            + np.linalg.norm(L[:, 386] - L[:, 374], axis=1)) / face


# the tolerance: the lag must round to zero frames (a one-frame delay reads about 1)
HALF_FRAME = 0.5


def test_filter_lag_on_motion(mead):
    """On a real clip (MEAD neutral: speech, small head turns, blinks) the filtered curves
    are in time with what they measure, to half a frame: jawOpen with its own raw curve
    (the filter adds no lag), the head's yaw with a yaw read from the image landmarks by an
    independent affine fit, the blinks with the lids' image gap. (Pitch and the jaw have no
    landmark proxy clean enough here to resolve a frame; the synthetic motion in
    tests/capture/test_capture_timing.py times them, and the yaw and blinks again.)"""
    cap = mead["neutral"]
    assert abs(_lag(cap.column("arkit_raw", "jawOpen"), cap.column("arkit", "jawOpen"))) \
        < HALF_FRAME
    yaw = cap["head_rotation"][:, 1].astype(np.float64)
    assert abs(_lag(_yaw_from_landmarks(cap), yaw)) < HALF_FRAME
    blink = cap["blinks"].astype(np.float64).mean(1)
    assert blink.max() > 0.5                                    # the clip has blinks
    assert abs(_lag(_lid_gap(cap), blink)) < HALF_FRAME


# -- bad input ---------------------------------------------------------------------------

def _frames(path, n, size=None):
    import cv2

    cap = cv2.VideoCapture(str(path))
    out = []
    while len(out) < n:
        ok, f = cap.read()
        if not ok:
            break
        out.append(cv2.resize(f, size) if size else f)
    cap.release()
    return out


def _write(path, frames, fps=30, color=True):
    import cv2

    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h), color)
    for f in frames:
        vw.write(f)
    vw.release()
    return path


def _set_rotation(path, matrix):
    """Write a display matrix into the mp4's track header (what phones do)."""
    data = bytearray(path.read_bytes())
    i = data.find(b"tkhd")
    assert i > 0
    off = i + 8 + (36 if data[i + 4] == 0 else 48)
    data[off:off + 36] = struct.pack(">9i", *matrix)
    path.write_bytes(bytes(data))


def test_portrait_phone_video_comes_out_upright(tmp_path, demo_clip):
    import cv2

    upright = [f[:, 185:455] for f in _frames(demo_clip, 24)]          # 270x360 portrait
    stored = [cv2.rotate(f, cv2.ROTATE_90_COUNTERCLOCKWISE) for f in upright]
    p = _write(tmp_path / "phone.mp4", stored)
    _set_rotation(p, (0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30))       # rotate 90 on display
    cap = _capture(p, tmp_path)
    assert (cap.meta["width"], cap.meta["height"]) == (270, 360)
    assert cap["valid"].mean() > 0.9
    lm = cap["landmarks2d"]
    assert (lm[:, 152, 1] > lm[:, 10, 1] + 100).all()                  # chin below forehead


def test_4k_clip(tmp_path, demo_clip):
    p = _write(tmp_path / "uhd.mp4", _frames(demo_clip, 12, (3840, 2160)))
    cap = _capture(p, tmp_path)
    assert cap.meta["width"] == 3840 and cap["valid"].all()
    assert cap["landmarks2d"][..., 0].max() > 640                      # full-resolution pixels


def test_grayscale_clip(tmp_path, demo_clip):
    import cv2

    gray = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in _frames(demo_clip, 40)]
    p = _write(tmp_path / "gray.mp4", gray, color=False)
    cap = _capture(p, tmp_path)
    assert cap["valid"].mean() > 0.9
    smile = cap.column("arkit", "mouthSmileLeft")
    assert smile[30:40].mean() > smile[:8].mean() + 0.1                 # expression survives


def test_face_leaves_and_comes_back(tmp_path, demo_clip):
    frames = _frames(demo_clip, 72)
    for f in frames[25:45]:
        f[:] = 90                                                       # nobody there
    cap = _capture(_write(tmp_path / "away.mp4", frames), tmp_path, max_gap=5)
    v = cap["valid"]
    assert v[:24].all() and v[47:].mean() > 0.9 and not v[27:43].any()
    assert np.isfinite(cap["arkit"]).all()
    a, b = cap["landmarks2d"][20], cap["landmarks2d"][50]
    assert np.abs(a - b).mean() < 40                                    # the same face again


def test_two_faces_keeps_the_chosen_one(tmp_path, demo_clip, long_demo_clip):
    import cv2

    big = _frames(demo_clip, 45)                                        # 640x360, the larger face
    small = _frames(long_demo_clip, 45, (426, 240))
    frames = []
    for a, b in zip(big, small):
        canvas = np.zeros((360, 1066, 3), np.uint8)
        canvas[:, :640] = a
        canvas[60:300, 640:] = b
        frames.append(canvas)
    p = _write(tmp_path / "two.mp4", frames)
    cap = _capture(p, tmp_path)
    cx = cap["bbox"][:, [0, 2]].mean(1)
    assert cap["valid"].mean() > 0.9 and (cx[cap["valid"]] < 640).all()
    cap2 = _capture(p, tmp_path, face_index=1)                         # the other one, kept
    cx2 = cap2["bbox"][:, [0, 2]].mean(1)
    assert cap2["valid"].mean() > 0.8 and (cx2[cap2["valid"]] > 640).all()
    assert cap.meta["backend"]["faces_seen"] >= 2


def test_face_entering_later_is_not_taken_after_a_loss(tmp_path, demo_clip, long_demo_clip):
    """Only our actor at first (the probe counts one face), a second person enters at frame
    8, our actor drops out of view for 10 frames: the capture must not jump to the other
    person then, and picks our actor up again when they are back."""
    big = _frames(demo_clip, 60)
    small = _frames(long_demo_clip, 60, (426, 240))
    frames = []
    for t, (a, b) in enumerate(zip(big, small)):
        canvas = np.zeros((360, 1066, 3), np.uint8)
        canvas[:, :640] = 90 if 35 <= t < 45 else a
        if t >= 8:
            canvas[60:300, 640:] = b
        frames.append(canvas)
    p = _write(tmp_path / "enters.mp4", frames)
    cap = _capture(p, tmp_path, max_gap=0)
    v = cap["valid"]
    cx = cap["bbox"][:, [0, 2]].mean(1)
    assert (cx[v] < 640).all(), np.flatnonzero(v & (cx >= 640))       # never the other person
    assert not v[36:44].any()                                          # ours is away
    assert v[:35].mean() > 0.9 and v[46:].mean() > 0.9                # and back again
    info = cap.meta["backend"]
    assert info["faces_seen"] >= 2 and info["frames_other_face_rejected"] >= 5


def test_neutral_from_a_take(mead, tmp_path):
    """--neutral-from: a capture calibrated to a take of itself reproduces the take's curves
    (the take's neutral is the clip's own); the take's neutral is stored in every capture; a
    missing take is bad input."""
    from emoca_blender.errors import BadInput

    clip = sorted(MEAD.glob("*_surprised_*.mp4"))[0]
    take = tmp_path / "take.capture.npz"
    a = run_capture(clip, take, CaptureSettings(emotion=False), cache_dir=None).capture
    assert a["neutral_landmarks"].shape == (478, 3) and a["neutral_offset"].shape == (52,)
    b = run_capture(clip, tmp_path / "b.capture.npz",
                    CaptureSettings(emotion=False, neutral_from=str(take)), cache_dir=None).capture
    np.testing.assert_allclose(b["arkit"], a["arkit"], atol=1e-4)
    assert b.meta["backend"]["calibration"]["source"] == "take take.capture.npz"
    with pytest.raises(BadInput, match="does not exist"):
        run_capture(clip, tmp_path / "c.capture.npz",
                    CaptureSettings(neutral_from=str(tmp_path / "none.capture.npz")),
                    cache_dir=None)


def test_symmetric_raise_reads_symmetric(mead):
    """W023 raises both brows all clip long. MediaPipe reads the left outer brow 0.55 and the
    right 0.33 even on the calmest frames; the calibration removes that one-sided resting
    excess, so the raise stays (capped offset) and comes out symmetric (it was 0.29 apart)."""
    cap = mead["surprised"]
    left, right = _mid(cap, "browOuterUpLeft"), _mid(cap, "browOuterUpRight")
    assert abs(left - right) <= 0.15, (left, right)
    assert min(left, right) >= 0.15 and _mid(cap, "browInnerUp") >= 0.3


def test_turned_head_does_not_frown_with_one_brow(tmp_path):
    """QoT0's head is turned 35-50 degrees; MediaPipe reads browDownRight 0.52 at rest and 0.64
    through the clip against 0.02-0.03 on the left: a bias of the turned view, not a frown.
    It was kept whole (0.61 all clip long); the one-sided resting excess is removed."""
    clip = MEDIA / "lrs3" / "QoT0S2vu9m4_00002.mp4"
    if not clip.is_file():
        pytest.skip(f"{clip} absent")
    cap = _capture(clip, tmp_path, emotion=False)
    left, right = _mid(cap, "browDownLeft"), _mid(cap, "browDownRight")
    assert right < 0.3 and abs(left - right) < 0.2, (left, right)
