"""The landmark-space solve, calibration and gaze (no video needed)."""
import sys
from pathlib import Path

import numpy as np
import pytest

from emoca_blender.capture import calibration, landmark_solve as ls, solve
from emoca_blender.arkit import INDEX

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


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
    # a warm start (the robust refit's: the previous reweighting's solution), good or poor,
    # reaches the same optimum, per row G too
    for start in (w + 0.05 * rng.normal(size=w.shape), np.ones_like(w), np.zeros_like(w)):
        np.testing.assert_allclose(ls.box_qp(G, b @ A, lo, hi, start=start), w, atol=1e-9)
        np.testing.assert_allclose(ls.box_qp(np.broadcast_to(G, (40, 12, 12)).copy(), b @ A,
                                             lo, hi, start=start), w, atol=1e-9)


def test_pinned_components_known_from_elsewhere():
    """Pinned components leave the fit's columns; given as known weights (the gaze, from
    the irises), they are part of the target and of the result, and the free ones are
    recovered as well as when everything is solved."""
    import solve_accuracy as sa

    img, W, R = sa.make_sequence(seed=3, frames=120)
    basis = ls.ict_head_basis()
    gaze = [i for i, n in enumerate(basis.names) if n.startswith("eyeLook")]
    pinned = np.zeros(len(basis.names), bool)
    pinned[gaze] = True
    fixed = np.zeros((len(img), len(basis.names)))
    fixed[:, gaze] = W[:, gaze]
    res = ls.solve_chunked(img, basis=basis, pinned=pinned, fixed=fixed)
    free = ~pinned
    np.testing.assert_allclose(res.weights[:, gaze], W[:, gaze])
    err_known = np.abs(res.weights[:, free] - W[:, free])[sa.REST:].mean()
    err_all = np.abs(ls.solve_chunked(img, basis=basis).weights[:, free]
                     - W[:, free])[sa.REST:].mean()
    assert err_known <= 0.05 and err_known <= err_all + 1e-3, (err_known, err_all)
    # known weights enter the fit's target: a wrong known jawOpen is not absorbed by the
    # free components (their bounds), the residual shows it
    jaw = basis.names.index("jawOpen")
    pj = pinned.copy()
    pj[jaw] = True
    wrong = fixed.copy()
    wrong[:, jaw] = np.clip(W[:, jaw] + 0.6, 0, 1)
    bad = ls.solve_chunked(img, basis=basis, pinned=pj, fixed=wrong)
    np.testing.assert_allclose(bad.weights[:, jaw], wrong[:, jaw])
    assert np.median(bad.residual_mm) > np.median(res.residual_mm) + 0.5


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
    s[:, [INDEX["mouthSmileLeft"], INDEX["mouthSmileRight"]]] = 0.7  # a held smile
    s[50:60, INDEX["jawOpen"]] = 0.8
    cal = calibration.calibrate(s)
    assert cal.offset[INDEX["eyeSquintLeft"]] == pytest.approx(0.4, abs=0.03)
    cap = calibration.MAX_OFFSET[INDEX["mouthSmileLeft"]]
    assert cal.offset[INDEX["mouthSmileLeft"]] == pytest.approx(cap)
    assert cal.offset[INDEX["mouthSmileRight"]] == pytest.approx(cap)
    a = cal.apply(s)
    assert a[:, INDEX["eyeSquintLeft"]].max() < 0.05
    assert a[:, INDEX["mouthSmileLeft"]].min() > 0.5                  # not calibrated away
    assert a[:, INDEX["mouthSmileRight"]].min() > 0.5
    assert a[55, INDEX["jawOpen"]] == pytest.approx(0.8)
    user = calibration.calibrate(s, neutral_frame=10)
    assert user.offset[INDEX["mouthSmileLeft"]] == pytest.approx(0.7)
    assert "user" in user.source


def test_one_sided_resting_difference_is_removed_and_shared_part_capped():
    """What both sides hold at rest is capped (a held raise survives); what one side reads
    over the other is the actor's asymmetry (or the scores' bias for a turned face) and is
    removed, so a symmetric raise comes out symmetric and a turned head's one-sided frown
    is gone. A user-marked neutral frame is taken at its word, as before."""
    rng = np.random.default_rng(1)
    s = np.zeros((120, 52))
    s[:, INDEX["browInnerUp"]] = 0.6 + 0.05 * rng.random(120)         # a raise held all clip
    s[:, INDEX["browOuterUpLeft"]] = 0.55 + 0.05 * rng.random(120)    # read higher on one side
    s[:, INDEX["browOuterUpRight"]] = 0.33 + 0.05 * rng.random(120)
    s[:, INDEX["browDownRight"]] = 0.5                                # a one-sided bias ...
    s[60:70, INDEX["browDownRight"]] = 0.9                            # ... and a frown on it
    s[:, INDEX["eyeLookInLeft"]] = 0.3                                # gaze: never offset
    cal = calibration.calibrate(s)
    cap = calibration.MAX_OFFSET[INDEX["browInnerUp"]]
    off = cal.offset
    assert off[INDEX["browOuterUpRight"]] == pytest.approx(cap)
    excess = np.median(s[cal.neutral_frames, INDEX["browOuterUpLeft"]]
                       - s[cal.neutral_frames, INDEX["browOuterUpRight"]])
    assert off[INDEX["browOuterUpLeft"]] == pytest.approx(cap + excess, abs=0.03)
    assert off[INDEX["browDownRight"]] == pytest.approx(0.5)
    assert off[INDEX["browDownLeft"]] == 0.0
    assert off[INDEX["eyeLookInLeft"]] == 0.0
    a = cal.apply(s)
    outer = a[:, [INDEX["browOuterUpLeft"], INDEX["browOuterUpRight"]]].mean(0)
    assert outer.min() > 0.2 and abs(outer[0] - outer[1]) < 0.06          # kept, symmetric
    assert a[:, INDEX["browInnerUp"]].min() > 0.5                         # held raise kept
    assert a[:60, INDEX["browDownRight"]].max() < 0.01                     # the bias is gone
    # the frown is not: what it adds over the bias, at the pair's shared gain
    assert a[65, INDEX["browDownRight"]] == pytest.approx(0.9 - 0.5)
    for n in ("browOuterUp", "browDown"):
        assert cal.gain[INDEX[n + "Left"]] == cal.gain[INDEX[n + "Right"]]
    user = calibration.calibrate(s, neutral_frame=10)
    assert user.offset[INDEX["browDownRight"]] == pytest.approx(0.5)
    assert user.offset[INDEX["browOuterUpRight"]] == pytest.approx(
        np.median(s[9:12, INDEX["browOuterUpRight"]]))


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


def _frontal(weights, iris_shift=None, basis=None, rotation=None, noise_mm=0.0, seed=0):
    """Synthetic MediaPipe image landmarks of the capture's head (the ICT head's landmark
    basis) driven by ARKit ``weights`` (N,52): 1300 px per metre, optional iris shift (m),
    head rotation (3,3) and landmark noise (mm, per coordinate)."""
    b = basis or ls.ict_head_basis()
    V = b.template + np.einsum("nk,kpc->npc", weights, b.basis)
    if iris_shift is not None:
        V[:, 468:478] += iris_shift
    if noise_mm:
        V = V + np.random.default_rng(seed).normal(scale=noise_mm / 1000.0, size=V.shape)
    if rotation is not None:
        V = V @ np.asarray(rotation).T
    cam = 1300.0 * V + np.array([640.0, -360.0, 0.0])
    return cam * np.array([1.0, -1.0, -1.0])


def test_from_mediapipe_gaze_cheekpuff_and_neutral():
    N = 40
    W = np.zeros((N, 52))
    W[20:, INDEX["cheekPuff"]] = 0.8
    shift = np.zeros((N, 1, 3))
    shift[30:, 0, 0] = 0.004                      # both irises 4 mm towards the subject's left
    look = np.arcsin(4.0 / 12.0) / solve.EYE_YAW_RADIANS
    W[30:, [INDEX["eyeLookOutLeft"], INDEX["eyeLookInRight"]]] = look   # the lids follow
    lmk = _frontal(W, shift)
    scores = np.zeros((N, 52))
    scores[:, INDEX["eyeSquintLeft"]] = 0.3      # per-actor bias, removed by calibration
    mats = np.tile(np.eye(4), (N, 1, 1))
    out, info = solve.from_mediapipe(lmk, scores, mats)
    a = out["arkit"]
    assert a[:, INDEX["eyeSquintLeft"]].max() < 0.02
    assert a[25:, INDEX["cheekPuff"]].mean() > 0.7 and a[:15, INDEX["cheekPuff"]].max() < 0.05
    assert (a[:, INDEX["tongueOut"]] == 0).all()
    yaw = out["eyes"][:, :, 1]
    assert np.abs(yaw[:25]).max() < 0.03
    # 4 mm on a 12 mm eyeball: asin(1/3) = 0.34 rad, positive yaw = towards the subject's left
    np.testing.assert_allclose(yaw[32:], np.arcsin(4.0 / 12.0), atol=0.02)
    # the eyeLook curves say the same: both eyes look towards the subject's left
    np.testing.assert_allclose(a[32:, INDEX["eyeLookOutLeft"]],
                               np.arcsin(4.0 / 12.0) / solve.EYE_YAW_RADIANS, atol=0.04)
    np.testing.assert_allclose(a[32:, INDEX["eyeLookInRight"]],
                               np.arcsin(4.0 / 12.0) / solve.EYE_YAW_RADIANS, atol=0.04)
    assert info["calibration"]["source"].startswith("auto")
    assert info["cross_check"]["procrustes_vs_matrix_deg_median"] < 1.0


def test_solved_channels_recover_known_weights_under_noise():
    """Random jaw, mouth-opening and lid weights on the ICT head, with 0.3 mm landmark noise
    (about a pixel on a 1080p face) and a 20-degree head turn: the solved channels come back
    within 0.05 on average; the scores (all zero) are not what the solve reports."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(3)
    N = 200
    W = np.zeros((N, 52))
    solved = [n for g in ("jaw and mouth opening", "lids") for n in solve.CHANNEL_GROUPS[g]
              if n not in ("jawLeft", "jawRight", "jawForward", "eyeWideLeft", "eyeWideRight")]
    for n in solved:
        W[20:, INDEX[n]] = rng.uniform(0, 0.8, N - 20) * (rng.random(N - 20) < 0.6)
    W[:, INDEX["mouthClose"]] = np.minimum(W[:, INDEX["mouthClose"]], W[:, INDEX["jawOpen"]])
    R = Rotation.from_euler("y", np.radians(20.0)).as_matrix()
    lmk = _frontal(W, rotation=R, noise_mm=0.3)
    mats = np.tile(np.eye(4), (N, 1, 1))
    mats[:, :3, :3] = R
    out, info = solve.from_mediapipe(lmk, np.zeros((N, 52)), mats)
    a = out["arkit"]
    err = {n: float(np.abs(a[20:, INDEX[n]] - W[20:, INDEX[n]]).mean()) for n in solved}
    assert max(err.values()) <= 0.05, err
    assert np.mean(list(err.values())) <= 0.03, err
    assert set(solved) <= set(info["solved_channels"])
    # ARKit: mouthClose closes the lips over an open jaw, never beyond it
    assert (a[:, INDEX["mouthClose"]] <= a[:, INDEX["jawOpen"]] + 1e-7).all()


def test_mouth_close_never_exceeds_the_jaw():
    """Lips pressed together with the jaw closed (ICT's mouthPress) must not come out as
    mouthClose alone, which on a rig pushes the lips through each other."""
    N = 20
    W = np.zeros((N, 52))
    W[5:, [INDEX["mouthPressLeft"], INDEX["mouthPressRight"]]] = 0.6
    W[5:, INDEX["mouthRollLower"]] = 0.3
    out, _ = solve.from_mediapipe(_frontal(W, noise_mm=0.3), np.zeros((N, 52)),
                                  np.tile(np.eye(4), (N, 1, 1)))
    a = out["arkit"]
    assert (a[:, INDEX["mouthClose"]] <= a[:, INDEX["jawOpen"]] + 1e-7).all()


def test_shut_eye_is_a_blink_and_looking_down_is_not():
    """Lids that touch read eyeBlink 1 even when the actor's eyes are narrower than the
    model's (the lid motion is scaled to the actor's opening), and even where the blendshape
    scores say half; lids lowered by a downward look (irises down) are gaze, not a blink."""
    b = ls.ict_head_basis()
    # an actor whose lid gaps are 70% of the model's: every eye-contour point pulled
    # towards its eye's centre line by 30% of its distance, at rest and in motion
    from emoca_blender.models import mediapipe_topology as mt
    t = np.array(b.template, copy=True)
    B = np.array(b.basis, copy=True)
    for ring in (mt.LEFT_EYE, mt.RIGHT_EYE):
        ring = list(ring)
        mid = t[ring, 1].mean()
        t[ring, 1] = mid + 0.7 * (t[ring, 1] - mid)
        B[:, ring, 1] *= 0.7
    actor = ls.LandmarkBasis(t, B, b.names)
    N = 60
    W = np.zeros((N, 52))
    W[20:30, [INDEX["eyeBlinkLeft"], INDEX["eyeBlinkRight"]]] = 1.0           # shut
    W[40:, [INDEX["eyeLookDownLeft"], INDEX["eyeLookDownRight"]]] = 0.7     # looking down
    shift = np.zeros((N, 1, 3))
    shift[40:, 0, 1] = -0.012 * np.sin(0.7 * solve.EYE_PITCH_RADIANS)       # irises down
    scores = np.zeros((N, 52))
    scores[20:30, [INDEX["eyeBlinkLeft"], INDEX["eyeBlinkRight"]]] = 0.5
    out, info = solve.from_mediapipe(_frontal(W, shift, basis=actor), scores,
                                     np.tile(np.eye(4), (N, 1, 1)))
    blink = out["arkit"][:, [INDEX["eyeBlinkLeft"], INDEX["eyeBlinkRight"]]]
    assert blink[20:30].min() >= 0.95
    assert blink[:20].max() <= 0.05 and blink[40:].max() <= 0.15
    np.testing.assert_allclose(info["lid_scale"], 0.7, atol=0.03)
    np.testing.assert_allclose(out["eyes"][45:, :, 0], 0.7 * solve.EYE_PITCH_RADIANS, atol=0.03)


def test_gaze_carried_through_a_blink_keeps_the_lids_out_of_each_other():
    """While the lids are shut the irises are hidden and MediaPipe's blendshape gaze reads
    the shut lids as a look down (0.6-0.9 on real blinks): the capture carries the iris gaze
    of the open frames around through the blink instead, so eyeLookDown's lid shape is not
    added to eyeBlink's (with lookDown 0.9 the upper lid sat 3.4 mm through the lower)."""
    N = 50
    W = np.zeros((N, 52))
    W[20:30, [INDEX["eyeBlinkLeft"], INDEX["eyeBlinkRight"]]] = 1.0
    scores = np.zeros((N, 52))
    scores[20:30, [INDEX["eyeLookDownLeft"], INDEX["eyeLookDownRight"]]] = 0.85
    scores[20:30, [INDEX["eyeBlinkLeft"], INDEX["eyeBlinkRight"]]] = 0.9
    out, _ = solve.from_mediapipe(_frontal(W), scores, np.tile(np.eye(4), (N, 1, 1)))
    a = out["arkit"]
    look_down = a[:, [INDEX["eyeLookDownLeft"], INDEX["eyeLookDownRight"]]]
    assert look_down.max() <= 0.05, look_down.max()
    assert np.abs(out["eyes"][20:30]).max() <= 0.02
    assert a[20:30, [INDEX["eyeBlinkLeft"], INDEX["eyeBlinkRight"]]].min() >= 0.95
    # the driven ICT head's upper lids stay on or above the lower ones
    b = ls.ict_head_basis()
    L = b.template + np.einsum("nk,kpc->npc", a[20:30], b.basis)
    gaps = np.stack([L[:, 159, 1] - L[:, 145, 1], L[:, 386, 1] - L[:, 374, 1]]) * 1000.0
    assert gaps.min() >= 0.0, gaps.min()


def test_gaze_through_closures_interpolates_the_trusted_frames():
    eyes = np.zeros((6, 2, 3))
    eyes[:, 0, 1] = [0.1, 0.1, 9.0, 9.0, 0.4, 0.4]      # hidden in frames 2-3: junk
    trust = np.ones((6, 2))
    trust[2:4, 0] = 0.0
    trust[:, 1] = 0.0                                   # the other eye never seen
    g = solve.gaze_through_closures(eyes, trust, np.arange(6))
    np.testing.assert_allclose(g[:, 0, 1], [0.1, 0.1, 0.2, 0.3, 0.4, 0.4])
    assert (g[:, 1] == 0).all()


def test_gaze_to_arkit_inverts_eyes_from_arkit():
    rng = np.random.default_rng(0)
    eyes = np.zeros((50, 2, 3))
    eyes[:, :, 0] = rng.uniform(-0.35, 0.35, (50, 2))    # pitch within EYE_PITCH_RADIANS
    eyes[:, :, 1] = rng.uniform(-0.5, 0.5, (50, 2))      # yaw within EYE_YAW_RADIANS
    a = solve.gaze_to_arkit(eyes)
    np.testing.assert_allclose(solve.eyes_from_arkit(a), eyes, atol=1e-12)
    assert a[:, solve.GAZE].min() >= 0 and a[:, solve.GAZE].max() <= 1
    # left eye looking out = towards the subject's left = positive yaw
    e = np.zeros((1, 2, 3))
    e[0, 0, 1] = 0.2
    assert solve.gaze_to_arkit(e)[0, INDEX["eyeLookOutLeft"]] == pytest.approx(0.2 / solve.EYE_YAW_RADIANS)


def test_jaw_consistent_with_jawopen():
    a = np.zeros((1, 52))
    a[0, INDEX["jawOpen"]] = 0.5
    assert solve.jaw_from_arkit(a)[0, 0] == pytest.approx(0.5 * solve.JAW_OPEN_RADIANS)




def test_neutral_take_keeps_expressions_held_all_clip_long():
    """A clip that holds raised brows and half-shut lids from start to end: calibrated to
    itself, the automatic neutral takes the held brows as rest (less the cap) and the held
    lids as open; calibrated to a neutral take of the same actor, both are kept."""
    N = 30
    rest = np.zeros((N, 52))
    rest_scores = np.zeros((N, 52))
    rest_scores[:, INDEX["browOuterUpLeft"]] = 0.05         # the actor's resting bias
    take, _ = solve.from_mediapipe(_frontal(rest), rest_scores, np.tile(np.eye(4), (N, 1, 1)))
    held = np.zeros((N, 52))
    held[:, [INDEX["eyeBlinkLeft"], INDEX["eyeBlinkRight"]]] = 0.5
    scores = np.zeros((N, 52))
    scores[:, INDEX["browInnerUp"]] = 0.7
    scores[:, INDEX["browOuterUpLeft"]] = 0.65
    auto, _ = solve.from_mediapipe(_frontal(held), scores, np.tile(np.eye(4), (N, 1, 1)))
    kept, info = solve.from_mediapipe(
        _frontal(held), scores, np.tile(np.eye(4), (N, 1, 1)),
        neutral_take=(take["neutral_offset"], take["neutral_landmarks"], "rest.capture.npz"))
    a, k = auto["arkit"], kept["arkit"]
    cap = calibration.MAX_OFFSET[INDEX["browInnerUp"]]
    np.testing.assert_allclose(a[:, INDEX["browInnerUp"]], (0.7 - cap) / (1 - cap), atol=1e-6)
    assert a[:, INDEX["eyeBlinkLeft"]].max() < 0.05              # held lids taken as open
    np.testing.assert_allclose(k[:, INDEX["browInnerUp"]], 0.7, atol=1e-6)
    np.testing.assert_allclose(k[:, INDEX["browOuterUpLeft"]], (0.65 - 0.05) / 0.95, atol=1e-6)
    np.testing.assert_allclose(k[:, INDEX["eyeBlinkLeft"]], 0.5, atol=0.05)
    assert info["calibration"]["source"] == "take rest.capture.npz"


def test_robust_refit_ignores_invented_far_side_landmarks():
    """A face turned 45 degrees: MediaPipe invents the hidden side, so there the landmarks
    misfit by 10-20 mm (measured on LRS3 0Fi83's profile frames). Here the outermost 12% of
    the points on the far side (cheek and jaw line) move together by 12 mm each frame, in a
    random direction, plus 2 mm of noise each: the robust refit recovers the jaw and mouth
    opening, plain least squares does not (the misfit bends the visible mouth). (With a
    quarter of the points moved the refit no longer recovers them: it is a refit from the
    plain fit's residuals, not a search.)"""
    from scipy.spatial.transform import Rotation

    b = ls.ict_head_basis()
    rng = np.random.default_rng(5)
    N = 60
    W = np.zeros((N, 52))
    names = ("jawOpen", "mouthLowerDownLeft", "mouthLowerDownRight")
    for n in names:
        W[:, INDEX[n]] = rng.uniform(0, 0.7, N)
    R = Rotation.from_euler("y", np.radians(45.0)).as_matrix()
    far = np.flatnonzero((b.template[:, 0] < np.quantile(b.template[:468, 0], 0.12))
                         & (np.arange(478) < 468))
    V = b.template + np.einsum("nk,kpc->npc", W, b.basis)
    junk = rng.normal(size=(N, 1, 3))
    junk = 0.012 * junk / np.linalg.norm(junk, axis=-1, keepdims=True)
    V[:, far] += junk + rng.normal(scale=0.002, size=(N, far.size, 3))
    cam = (1300.0 * V @ R.T + np.array([640.0, -360.0, 0.0])) * np.array([1.0, -1.0, -1.0])
    kw = dict(basis=b, pinned=solve.SOLVE_PINNED, rounds=1, point_mask=solve.SOLVE_POINTS)
    cols = [INDEX[n] for n in names]
    err = {}
    for robust in (True, False):
        res = ls.solve_sequence(ls.camera_points(cam), robust=robust, **kw)
        err[robust] = float(np.abs(res.weights[:, cols] - W[:, cols]).mean())
    assert err[True] <= 0.05, err
    assert err[False] >= 2 * err[True], err


def test_rest_blinks_open_reads_open_shut_reads_shut():
    rng = np.random.default_rng(0)
    n = 300
    b = np.full((n, 2), 0.15) + 0.02 * rng.normal(size=(n, 2))    # neutral caught wide eyes
    b[[40, 41, 42, 200, 201], :] = 1.0                              # blinks
    got, rest = solve.rest_blinks(np.clip(b, 0, 1))
    assert np.all(np.abs(rest - 0.135) < 0.02), rest
    assert got[[40, 41, 42, 200, 201]].min() >= 0.99                # shut still reads shut
    assert np.median(got, axis=0).max() < 0.03                      # open reads open
    # a clip already at rest is left as it is; lids held low all clip long stay low
    calm = np.zeros((n, 2))
    calm[[10, 11], :] = 1.0
    assert np.array_equal(solve.rest_blinks(calm)[0], calm)
    held, rest = solve.rest_blinks(np.full((n, 2), 0.6))
    assert np.all(rest == solve.BLINK_REST_MAX) and held.min() > 0.4
    assert solve.rest_blinks(np.zeros((0, 2)))[0].shape == (0, 2)
