"""The landmark-space solve, calibration and gaze (no video needed)."""
import sys
from pathlib import Path

import numpy as np
import pytest

from emoca_blender import calibration, landmark_solve as ls, solve
from emoca_blender.arkit import INDEX

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def test_box_qp_matches_scipy():
    from scipy.optimize import lsq_linear

    rng = np.random.default_rng(0)
    A = rng.normal(size=(60, 12))
    A[:, 1] = -A[:, 0] + 1e-3 * rng.normal(size=60)       # a nearly collinear pair
    b = rng.normal(size=(40, 60))
    lam = 1e-3
    G = A.T @ A + lam * np.eye(12)
    lo, hi = np.zeros(12), np.ones(12)
    w = ls.box_qp(G, b @ A, lo, hi)
    Aa = np.vstack([A, np.sqrt(lam) * np.eye(12)])
    for i in range(b.shape[0]):
        ref = lsq_linear(Aa, np.concatenate([b[i], np.zeros(12)]), bounds=(0, 1),
                         tol=1e-12).x
        np.testing.assert_allclose(w[i], ref, atol=2e-5)
    assert w.min() >= 0 and w.max() <= 1


def test_box_qp_pins_and_bounds():
    G = np.eye(3)
    w = ls.box_qp(G, np.array([[2.0, -1.0, 0.5]]), np.zeros(3), np.array([1.0, 1.0, 0.0]))
    np.testing.assert_allclose(w, [[1.0, 0.0, 0.0]])


def test_solve_accuracy_bench_small():
    import solve_accuracy as sa

    img, W, R = sa.make_sequence(seed=1, frames=400)
    res = sa.solve(img)
    assert np.abs(res.weights - W)[sa.REST:].mean() <= 0.05
    assert ls.rotation_angle_deg(res.rotation, R)[sa.REST:].mean() <= 1.0
    assert (res.weights[:, INDEX["tongueOut"]] == 0).all()


def test_calibration_offsets_capped_and_user_frame():
    rng = np.random.default_rng(0)
    s = np.zeros((100, 52))
    s[:, INDEX["eyeSquintLeft"]] = 0.4 + 0.02 * rng.random(100)      # a squinty actor
    s[:, INDEX["mouthSmileLeft"]] = 0.7                               # a held smile
    s[50:60, INDEX["jawOpen"]] = 0.8
    cal = calibration.calibrate(s)
    assert cal.offset[INDEX["eyeSquintLeft"]] == pytest.approx(0.4, abs=0.03)
    assert cal.offset[INDEX["mouthSmileLeft"]] == pytest.approx(calibration.MAX_OFFSET[INDEX["mouthSmileLeft"]])
    a = cal.apply(s)
    assert a[:, INDEX["eyeSquintLeft"]].max() < 0.05
    assert a[:, INDEX["mouthSmileLeft"]].min() > 0.5                  # not calibrated away
    assert a[55, INDEX["jawOpen"]] == pytest.approx(0.8)
    user = calibration.calibrate(s, neutral_frame=10)
    assert user.offset[INDEX["mouthSmileLeft"]] == pytest.approx(0.7)
    assert "user" in user.source


def test_automatic_neutral_prefers_frames_facing_the_camera():
    """The calmest frames of a clip that opens turned away are turned frames; with the head
    angles known, the neutral is taken among the frontal ones (when there are enough)."""
    s = np.full((60, 52), 0.05)
    s[:, INDEX["browDownLeft"]] = np.r_[np.zeros(10), np.full(50, 0.3)]   # calmest: 0..9
    s[30:40, INDEX["browDownLeft"]] = 0.1                                  # calmest frontal
    frontal = np.r_[np.zeros(15, bool), np.ones(45, bool)]                 # 0..14 turned
    assert calibration.rest_frames(s).max() < 10
    picked = calibration.rest_frames(s, frontal=frontal)
    assert frontal[picked].all() and set(picked) <= set(range(30, 40))
    # too few frontal frames: the calmest of all, as before
    few = np.zeros(60, bool)
    few[40] = True
    assert np.array_equal(calibration.rest_frames(s, frontal=few), calibration.rest_frames(s))
    cal = calibration.calibrate(s, frontal=frontal)
    assert cal.offset[INDEX["browDownLeft"]] == pytest.approx(0.1)


def _frontal(weights, iris_shift=None):
    b = ls.open_head_basis()
    V = b.template + np.einsum("nk,kpc->npc", weights, b.basis)
    if iris_shift is not None:
        V[:, 468:478] += iris_shift
    cam = 1300.0 * V + np.array([640.0, -360.0, 0.0])
    return cam * np.array([1.0, -1.0, -1.0])


def test_from_mediapipe_gaze_cheekpuff_and_neutral():
    N = 40
    W = np.zeros((N, 52))
    W[20:, INDEX["cheekPuff"]] = 0.8
    shift = np.zeros((N, 1, 3))
    shift[30:, 0, 0] = 0.004                      # both irises 4 mm towards the subject's left
    lmk = _frontal(W, shift)
    scores = np.zeros((N, 52))
    scores[:, INDEX["eyeSquintLeft"]] = 0.3      # per-actor bias, removed by calibration
    mats = np.tile(np.eye(4), (N, 1, 1))
    out, info = solve.from_mediapipe(lmk, scores, mats)
    a = out["arkit"]
    assert a[:, INDEX["eyeSquintLeft"]].max() < 1e-6
    assert a[25:, INDEX["cheekPuff"]].mean() > 0.6 and a[:15, INDEX["cheekPuff"]].max() < 0.1
    assert (a[:, INDEX["tongueOut"]] == 0).all()
    yaw = out["eyes"][:, :, 1]
    assert np.abs(yaw[:25]).max() < 0.03
    assert (yaw[32:] > 0.2).all()                # positive yaw = towards the subject's left
    assert info["calibration"]["source"].startswith("auto")
    assert info["cross_check"]["procrustes_vs_matrix_deg_median"] < 1.0


def test_jaw_consistent_with_jawopen():
    a = np.zeros((1, 52))
    a[0, INDEX["jawOpen"]] = 0.5
    assert solve.jaw_from_arkit(a)[0, 0] == pytest.approx(0.5 * solve.JAW_OPEN_RADIANS)


def _lip_parting(name):
    """Inner-lip parting (m) of one open-model shape at weight 1 (solve.LIP_PAIRS)."""
    b = ls.open_head_basis().basis[INDEX[name]]
    u, lo = solve.LIP_PAIRS[:, 0], solve.LIP_PAIRS[:, 1]
    return float((b[u, 1] - b[lo, 1]).mean())


def test_jaw_fusion_recovers_underreported_jaw_and_seals_lips():
    """A blendshape jawOpen that under-reports the jaw (as MediaPipe's does on some actors:
    ~0.02 while the chin drops and the teeth show) is corrected from the landmarks; where the
    jaw opens with the lips sealed, mouthClose carries the seal (ARKit semantics)."""
    J, C = INDEX["jawOpen"], INDEX["mouthClose"]
    N = 60
    W = np.zeros((N, 52))
    W[20:40, J] = 0.4                                   # jaw open, lips parted with it
    W[40:, J] = 0.3                                     # jaw open, lips sealed
    W[40:, C] = 0.3 * _lip_parting("jawOpen") / -_lip_parting("mouthClose")
    assert 0.3 < W[45, C] < 1.0
    scores = np.zeros((N, 52))
    scores[:, J] = 0.05 * W[:, J]                       # the score sees a twentieth of it
    mats = np.tile(np.eye(4), (N, 1, 1))
    out, info = solve.from_mediapipe(_frontal(W), scores, mats)
    a = out["arkit"]
    assert np.abs(a[:20, J]).max() < 0.02 and a[:20, C].max() < 0.02   # closed stays closed
    np.testing.assert_allclose(a[20:40, J], 0.4, atol=0.03)
    np.testing.assert_allclose(out["jaw"][20:40, 0], 0.4 * solve.JAW_OPEN_RADIANS, atol=0.01)
    assert a[20:40, C].max() < 0.03                     # lips part: no seal
    np.testing.assert_allclose(a[40:, J], 0.3, atol=0.03)
    np.testing.assert_allclose(a[40:, C], a[40:, J], atol=0.03)   # sealed: mouthClose = jawOpen
    assert info["jaw_fusion"]["landmark_trust_mean"] > 0.95


def test_jaw_fusion_lowered_jaw_keeps_the_lips_parted():
    """A score that over-reports the jaw (the lower lip's drop read as jaw) is lowered towards
    the landmarks' jaw; the parting it explained moves to mouthLowerDown, so the rig's inner
    lips still part as much as the landmarks show."""
    J = INDEX["jawOpen"]
    LD = [INDEX["mouthLowerDownLeft"], INDEX["mouthLowerDownRight"]]
    N = 40
    W = np.zeros((N, 52))
    W[20:, J] = 0.2
    W[20:, LD] = 0.25
    lower_lip = sum(_lip_parting(n) for n in ("mouthLowerDownLeft", "mouthLowerDownRight"))
    score = 0.2 + 0.25 * lower_lip / _lip_parting("jawOpen")     # the whole parting as jaw
    scores = np.zeros((N, 52))
    scores[20:, J] = score
    out, _ = solve.from_mediapipe(_frontal(W), scores, np.tile(np.eye(4), (N, 1, 1)))
    a = out["arkit"]
    jaw = score + solve.JAW_TRUST_LOWER * (0.2 - score)
    assert jaw < score - 0.02
    np.testing.assert_allclose(a[22:, J], jaw, atol=0.01)
    np.testing.assert_allclose(a[22:, LD], (score - jaw) * _lip_parting("jawOpen") / lower_lip,
                               atol=0.03)
    parting = a[22:, J] * _lip_parting("jawOpen") + a[22:, LD].sum(1) * lower_lip / 2
    np.testing.assert_allclose(parting, 0.2 * _lip_parting("jawOpen") + 0.25 * lower_lip,
                               atol=2e-4)                          # metres


def test_jaw_trust_fades_with_residual_and_head_turn():
    from scipy.spatial.transform import Rotation

    yaw = np.radians([0.0, 15.0, 27.5, 45.0, 0.0, 0.0])
    R = Rotation.from_euler("y", yaw).as_matrix()
    res = np.array([1.0, 1.0, 1.0, 1.0, 3.75, 6.0])
    k = solve.jaw_trust(res, R)
    np.testing.assert_allclose(k, [1.0, 1.0, 0.5, 0.0, 0.5, 0.0], atol=1e-6)


def test_jaw_fusion_leaves_turned_heads_to_the_score():
    """At 45 degrees of yaw the landmark jaw is not trusted: jawOpen stays the score's."""
    from scipy.spatial.transform import Rotation

    J = INDEX["jawOpen"]
    N = 30
    W = np.zeros((N, 52))
    W[15:, J] = 0.4
    R = Rotation.from_euler("y", np.radians(45.0)).as_matrix()
    b = ls.open_head_basis()
    V = (b.template + np.einsum("nk,kpc->npc", W, b.basis)) @ R.T
    lmk = (1300.0 * V + np.array([640.0, -360.0, 0.0])) * np.array([1.0, -1.0, -1.0])
    mats = np.tile(np.eye(4), (N, 1, 1))
    mats[:, :3, :3] = R
    scores = np.zeros((N, 52))
    scores[:, J] = 0.05 * W[:, J]
    out, info = solve.from_mediapipe(lmk, scores, mats)
    np.testing.assert_allclose(out["arkit"][:, J], scores[:, J], atol=1e-6)
    assert info["jaw_fusion"]["landmark_trust_mean"] == 0.0
