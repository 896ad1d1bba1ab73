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


# --------------------------------------------------------------------------------------
# The driven head's visible lip opening (section 1's head side)

@pytest.fixture(scope="module")
def ict():
    from emoca_blender.models import head_model

    m = head_model.ict_head()
    L0, B = F.landmark_basis(m)
    return m, L0, B, F.MouthAperture(m, L0, B)


def _weights(m, **kw) -> np.ndarray:
    a = np.zeros(len(m.expression_names))
    for k, v in kw.items():
        a[list(m.expression_names).index(k)] = v
    return a


APERTURE_CASES = [dict(), dict(mouthRollLower=0.7), dict(jawOpen=0.2), dict(jawOpen=0.5),
                  dict(jawOpen=1.0), dict(jawOpen=0.5, mouthClose=0.5), dict(mouthFunnel=1.0)]


def test_mouth_aperture_reads_what_a_face_shows(ict):
    m, L0, B, ap = ict
    W = np.stack([_weights(m, **c) for c in APERTURE_CASES])
    eye = np.linalg.norm(L0[33] - L0[263])
    mm = ap(W) * eye * 1000
    rest, roll, j2, j5, j10, sealed, funnel = mm
    assert rest < 1.5 and sealed < 1.0              # ICT's neutral: lips touch
    assert roll < 1.0                               # rolled in, still closed...
    lmk = F.lip_gap(F.driven_landmarks(L0, B, W)) * eye * 1000
    assert lmk[1] - lmk[0] > 8.0                    # ...where the embedded 13/14 read it open
    assert 4.0 < j2 < j5 < j10 and j10 >= 28.0      # the jaw opens it, monotonically
    assert funnel > 5.0


def test_mouth_aperture_matches_a_render(ict, tmp_path):
    """A Workbench render from the front (face part white, everything else black, no
    lighting): the dark rows in the aperture's columns between the lips are its gap."""
    bpy = pytest.importorskip("bpy")
    m, L0, B, ap = ict
    W = np.stack([_weights(m, **c) for c in APERTURE_CASES])
    eye = np.linalg.norm(L0[33] - L0[263])
    want = ap(W) * eye
    bpy.ops.wm.read_factory_settings(use_empty=True)
    sc = bpy.context.scene
    sc.render.engine = "BLENDER_WORKBENCH"
    px, size = 512, 0.1                               # 0.195 mm a pixel (jawOpen 1 fits)
    sc.render.resolution_x = sc.render.resolution_y = px
    sc.display.shading.light = "FLAT"
    sc.display.shading.color_type = "OBJECT"
    sc.view_settings.view_transform = "Standard"
    sc.world = bpy.data.worlds.new("w")
    sc.world.color = (0, 0, 0)
    centre = (L0[0] + L0[17]) / 2
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    cam.data.type, cam.data.ortho_scale = "ORTHO", size
    cam.location = (0.0, float(centre[1]), 0.5)
    sc.collection.objects.link(cam)
    sc.camera = cam
    face = list(m.part_names).index("face")
    fmask = (np.asarray(m.vertex_part)[m.faces] == face).all(1)
    objs = []
    for white, mask in ((True, fmask), (False, ~fmask)):
        me = bpy.data.meshes.new("p")
        me.from_pydata(np.zeros((m.n_vertices, 3)).tolist(), [], m.faces[mask].tolist())
        ob = bpy.data.objects.new("p", me)
        ob.color = (1, 1, 1, 1) if white else (0, 0, 0, 1)
        sc.collection.objects.link(ob)
        objs.append(ob)
    got = []
    for w in W:
        v = m.v_template + np.einsum("k,kvc->vc", w, m.expression_basis.astype(np.float64))
        for ob in objs:
            ob.data.vertices.foreach_set("co", v.astype(np.float32).ravel())
            ob.data.update()
        sc.render.filepath = str(tmp_path / "a.png")
        bpy.ops.render.render(write_still=True)
        img = bpy.data.images.load(sc.render.filepath)
        a = np.asarray(img.pixels[:], np.float32).reshape(px, px, 4)[::-1, :, 0]   # top row 0
        bpy.data.images.remove(img)
        L = F.driven_landmarks(L0, B, w[None])[0]
        row = lambda y: int(round((centre[1] - y) / size * px + px / 2))   # noqa: E731
        top, bottom = row(L[0, 1]), row(L[17, 1])
        cols = [int(round(x / size * px + px / 2)) for x in F.MouthAperture.COLUMNS_M]
        dark = [(a[top:bottom + 1, c] < 0.5).sum() for c in cols]
        got.append(np.mean(dark) * size / px)
    got = np.array(got)
    assert np.abs(got - want).max() < 0.6e-3, np.c_[got, want] * 1000     # under 0.6 mm
