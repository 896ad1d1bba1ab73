"""The fidelity bench's formulas (bench/fidelity.py) on hand-made arrays with known answers."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import fidelity as F  # noqa: E402

from emoca_blender.arkit import ARKIT_NAMES, INDEX  # noqa: E402


def _face(n: int, lip: np.ndarray, lid_left: np.ndarray | None = None) -> np.ndarray:
    """(n,478,2) landmarks: eye corners 100 px apart, the given inner-lip gaps (px) and the
    subject's left lid gap (px, eye 30 px wide); the right eye stays open (10 px)."""
    p = np.zeros((n, 478, 2))
    p[:, 33], p[:, 263] = (-50, 0), (50, 0)
    p[:, 133], p[:, 362] = (-20, 0), (20, 0)
    p[:, 13, 1], p[:, 14, 1] = 60, 60 + lip
    p[:, 159, 1], p[:, 145, 1] = -5, 5
    p[:, 386, 1] = -5
    p[:, 374, 1] = -5 + (10 if lid_left is None else lid_left)
    return p


def test_lip_gap_and_eye_gap_ratios():
    p = _face(2, np.array([0.0, 25.0]), np.array([10.0, 3.0]))
    assert np.allclose(F.lip_gap(p), [0.0, 0.25])
    assert np.allclose(F.eye_gap(p, "left"), [10 / 30, 3 / 30])
    assert np.allclose(F.eye_gap(p, "right"), [10 / 30, 10 / 30])


def test_mouth_r_is_one_for_a_linear_curve_and_picks_the_widest_frame():
    rng = np.random.default_rng(0)
    gap = rng.uniform(0, 30, 40)
    p = _face(40, gap)
    head_gap = 0.02 + 0.7 * F.lip_gap(p)            # a known linear function of the video's
    jaw = np.linspace(0, 1, 40)
    out = F.mouth_metric(p, jaw, head_gap, np.arange(40))
    assert out["r"] == pytest.approx(1.0)
    assert out["ok"]
    assert out["widest_frame"] == int(np.argmax(gap))
    assert out["jawOpen_widest"] == pytest.approx(jaw[np.argmax(gap)])
    out = F.mouth_metric(p, jaw, -head_gap, np.arange(40))
    assert out["r"] == pytest.approx(-1.0) and not out["ok"]
    # a constant head (nothing animated) has no correlation: NaN, a miss
    out = F.mouth_metric(p, jaw, np.zeros(40), np.arange(40))
    assert np.isnan(out["r"]) and not out["ok"]


def test_blink_targets():
    lid = np.full(50, 10.0)
    lid[20:25] = 0.5                                  # 5 closed frames (< 15 % of open)
    lid[30] = 5.0                                     # half closed: neither closed nor open
    p = _face(50, np.zeros(50), lid)
    gap = F.eye_gap(p, "left")
    rows = np.arange(50)
    blink = np.zeros(50)
    out = F.blink_metric(gap, blink, rows)            # the curve never closes: a miss
    assert out["closed_frames"] == 5 and out["closed_ok"] is False and out["open_ok"] is True
    blink[20:25] = 0.95
    out = F.blink_metric(gap, blink, rows)
    assert out["closed_blink"] == pytest.approx(0.95) and out["closed_ok"] and out["open_ok"]
    blink[:] = 0.3                                    # always half shut: open frames fail
    out = F.blink_metric(gap, blink, rows)
    assert out["open_blink"] == pytest.approx(0.3) and out["open_ok"] is False
    # no closed frame: the closed target does not count
    out = F.blink_metric(F.eye_gap(_face(10, np.zeros(10)), "left"), np.zeros(10), np.arange(10))
    assert out["closed_frames"] == 0 and out["closed_ok"] is None and out["open_ok"]


def _arkit(n: int = 30, **w) -> np.ndarray:
    a = np.zeros((n, 52))
    for k, v in w.items():
        a[:, INDEX[k]] = v
    return a


def test_label_checks():
    rows = np.arange(30)
    assert F.label_of("M030_level_3_angry_016.mp4") == "angry"
    assert F.label_of("W015_level_1_neutral_030.mp4") == "neutral"
    assert F.label_of("0Fi83BHQsMA_00002.mp4") is None
    assert F.label_metric("angry", _arkit(browDownLeft=0.4, browDownRight=0.3), rows)["ok"]
    assert not F.label_metric("angry", _arkit(browDownLeft=0.4, browDownRight=0.1), rows)["ok"]
    smile = _arkit(mouthSmileLeft=0.0, mouthSmileRight=0.0)
    smile[27:, INDEX["mouthSmileLeft"]] = smile[27:, INDEX["mouthSmileRight"]] = 1.0
    out = F.label_metric("happy", smile, rows)       # p90 of 27 zeros and 3 ones = 0.1
    assert out["value"] == pytest.approx(0.1) and not out["ok"]
    assert F.label_metric("happy", _arkit(mouthSmileLeft=0.7, mouthSmileRight=0.6), rows)["ok"]
    good = _arkit(browInnerUp=0.5, browOuterUpLeft=0.5, browOuterUpRight=0.4)
    assert F.label_metric("surprised", good, rows)["ok"]
    lopsided = _arkit(browInnerUp=0.5, browOuterUpLeft=0.6, browOuterUpRight=0.2)
    out = F.label_metric("surprised", lopsided, rows)
    assert out["asym"] == pytest.approx(0.4) and not out["ok"]
    assert F.label_metric("disgusted", _arkit(noseSneerLeft=0.5, noseSneerRight=0.4), rows)["ok"]
    smiling = _arkit(noseSneerLeft=0.5, noseSneerRight=0.4, mouthSmileLeft=0.3,
                     mouthSmileRight=0.3)
    assert not F.label_metric("disgusted", smiling, rows)["ok"]
    assert not F.label_metric("disgusted", _arkit(mouthUpperUpLeft=0.3), rows)["ok"]
    talking = _arkit(jawOpen=0.6, mouthFunnel=0.5, eyeSquintLeft=0.1)
    assert F.label_metric("neutral", talking, rows)["ok"]
    out = F.label_metric("neutral", _arkit(jawOpen=0.6, eyeSquintLeft=0.3), rows)
    assert not out["ok"] and [n for n, _ in out["over"]] == ["eyeSquintLeft"]


def test_middle_third_and_calmest_frames():
    valid = np.ones(30, bool)
    valid[:3] = False                                  # 27 valid frames: rows 12..20
    assert F.middle_third(valid).tolist() == list(range(12, 21))
    a = _arkit(30, jawOpen=0.5)
    a[[5, 7, 9], INDEX["jawOpen"]] = 0.0
    a[:, INDEX["eyeLookUpLeft"]] = np.linspace(0, 1, 30)   # gaze does not count as energy
    assert sorted(F.calmest(a, valid).tolist()) == [5, 7, 9]


def test_reproduction_is_zero_when_the_head_moves_like_the_landmarks():
    rng = np.random.default_rng(1)
    B = rng.normal(0, 1e-3, (52, 478, 3))
    neutral = rng.normal(0, 0.05, (478, 3))
    w = np.zeros((20, 52))
    w[10:, INDEX["jawOpen"]] = np.linspace(0.1, 1, 10)
    L = neutral + np.einsum("nk,klc->nlc", w, B)
    valid = np.ones(20, bool)
    out = F.reproduction_mm(L, w, np.arange(5), valid, B)
    assert out["mm"] == pytest.approx(0.0, abs=1e-9) and out["frames"] == 2
    # a head that stays still: the error is the landmarks' own motion on those frames
    still = F.reproduction_mm(L, w, np.arange(5), valid, np.zeros_like(B))
    assert still["mm"] == pytest.approx(still["observed_mm"]) and still["mm"] > 0.1
    assert ARKIT_NAMES[INDEX["jawOpen"]] == "jawOpen"
