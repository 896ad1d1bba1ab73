"""Live Link Face CSV: export/import round trip, a hand-written file, and bad files."""
from __future__ import annotations

import numpy as np
import pytest

from emoca_blender.retarget import livelink
from emoca_blender.arkit import ARKIT_NAMES, INDEX
from emoca_blender.capture_file import load_capture, make_capture

from conftest import SHARED, run_cli


def _capture(n=90, fps=30.0, seed=3):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fps
    ark = np.clip(0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 1.5, 52) * t[:, None]
                                     + rng.uniform(0, 6, 52)), 0, 1)
    head = np.stack([0.2 * np.sin(t), 0.4 * np.sin(0.7 * t + 1), 0.1 * np.cos(t)], -1)
    eyes = np.stack([np.stack([0.2 * np.sin(2 * t), 0.3 * np.cos(t), np.zeros(n)], -1)] * 2, 1)
    eyes[:, 1, 0] += 0.05
    arrays = dict(valid=np.ones(n, bool), interpolated=np.zeros(n, bool), timestamps=t + 12.0,
                  bbox=np.zeros((n, 4)), landmarks2d=np.zeros((n, 1, 2)),
                  landmarks3d=np.zeros((n, 1, 3)), head_rotation=head,
                  head_translation=np.zeros((n, 3)), jaw=np.zeros((n, 3)), eyes=eyes,
                  blinks=np.zeros((n, 2)), expression=ark, arkit=ark, shape=np.zeros(0))
    return make_capture(arrays, {"fps": fps, "width": 1, "height": 1,
                                 "source": {"path": "take.mp4"}}, {"expression": ARKIT_NAMES})


def test_ypr_round_trip():
    rng = np.random.default_rng(0)
    r = rng.normal(0, 0.4, (200, 3))
    back = livelink.ypr_to_rotvec(livelink.rotvec_to_ypr(r))
    assert np.abs(back - r).max() < 1e-9
    # pure rotations about the named axes
    ypr = livelink.rotvec_to_ypr(np.array([[0, 0.3, 0], [0.2, 0, 0], [0, 0, -0.1]]))
    assert np.allclose(ypr, [[0.3, 0, 0], [0, 0.2, 0], [0, 0, -0.1]], atol=1e-12)


@pytest.mark.parametrize("fps", [30.0, 60.0, 24.0])
def test_export_import_round_trip(tmp_path, fps):
    cap = _capture(fps=fps)
    p = livelink.export_capture(cap, tmp_path / "take.csv", head_relative=False)
    lines = open(p).read().splitlines()
    header = lines[0].split(",")
    assert len(header) == 63 and header[:3] == ["Timecode", "BlendShapeCount", "EyeBlinkLeft"]
    assert header[16:20] == ["JawForward", "JawRight", "JawLeft", "JawOpen"]
    assert header[-9:] == list(livelink.ANGLE_COLUMNS)
    assert lines[1].split(",")[0] == "00:00:12:00.000" and lines[1].split(",")[1] == "61"
    assert len(lines) == 1 + cap.n_frames
    d = livelink.read_csv(p)
    assert d["fps"] == fps and d["has_angles"]
    assert np.abs(d["arkit"] - cap["arkit"]).max() < 1e-4
    assert np.abs(d["head_rotation"] - cap["head_rotation"]).max() < 1e-4
    assert np.abs(d["eyes"] - cap["eyes"]).max() < 1e-4
    assert np.abs(d["seconds"] - np.arange(cap.n_frames) / fps).max() < 1e-3
    # as a capture, ready for the rig / retarget
    c2 = livelink.to_capture(d, "take.csv")
    assert c2.n_frames == cap.n_frames and abs(c2.fps - fps) < 1e-9
    assert np.abs(c2.column("arkit", "jawOpen") - cap.column("arkit", "jawOpen")).max() < 1e-4


def test_export_head_relative_to_median(tmp_path):
    cap = _capture()
    cap.arrays["head_rotation"][:] += np.array([0.3, 0, 0], np.float32)
    d = livelink.read_csv(livelink.export_capture(cap, tmp_path / "a.csv"))
    assert abs(np.median(d["ypr"][:, 1])) < 0.05         # pitch offset of the camera removed


def hand_written_csv(path, rows=3):
    """A CSV written the way the app writes it (61 official columns, PascalCase)."""
    shapes = ["EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft",
              "EyeLookUpLeft", "EyeSquintLeft", "EyeWideLeft", "EyeBlinkRight",
              "EyeLookDownRight", "EyeLookInRight", "EyeLookOutRight", "EyeLookUpRight",
              "EyeSquintRight", "EyeWideRight", "JawForward", "JawRight", "JawLeft", "JawOpen",
              "MouthClose", "MouthFunnel", "MouthPucker", "MouthRight", "MouthLeft",
              "MouthSmileLeft", "MouthSmileRight", "MouthFrownLeft", "MouthFrownRight",
              "MouthDimpleLeft", "MouthDimpleRight", "MouthStretchLeft", "MouthStretchRight",
              "MouthRollLower", "MouthRollUpper", "MouthShrugLower", "MouthShrugUpper",
              "MouthPressLeft", "MouthPressRight", "MouthLowerDownLeft", "MouthLowerDownRight",
              "MouthUpperUpLeft", "MouthUpperUpRight", "BrowDownLeft", "BrowDownRight",
              "BrowInnerUp", "BrowOuterUpLeft", "BrowOuterUpRight", "CheekPuff",
              "CheekSquintLeft", "CheekSquintRight", "NoseSneerLeft", "NoseSneerRight",
              "TongueOut", "HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch",
              "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll"]
    assert len(shapes) == 61
    lines = ["Timecode,BlendShapeCount," + ",".join(shapes)]
    for i in range(rows):
        vals = ["0"] * 61
        vals[shapes.index("JawOpen")] = f"{0.1 * (i + 1):.1f}"
        vals[shapes.index("JawLeft")] = "0.25"
        vals[shapes.index("HeadYaw")] = "0.1"
        sec, ff = (39, 58 + i) if i < 2 else (40, i - 2)      # 60 fps: frame 59, then wraps
        lines.append(f"17:59:{sec}:{ff:02d}.{300 + i:03d},61," + ",".join(vals))
    path.write_text("\r\n".join(lines) + "\r\n")
    return path


def test_hand_written_csv_imports(tmp_path):
    d = livelink.read_csv(hand_written_csv(tmp_path / "iphone.csv"))
    assert d["arkit"].shape == (3, 52)
    assert np.allclose(d["arkit"][:, INDEX["jawOpen"]], [0.1, 0.2, 0.3])
    assert np.allclose(d["arkit"][:, INDEX["jawLeft"]], 0.25)
    assert np.allclose(d["arkit"][:, INDEX["jawRight"]], 0.0)
    assert d["fps"] == 60.0
    assert np.allclose(d["seconds"], [0, 1 / 60, 2 / 60], atol=1e-9)   # on the take's frame grid
    assert d["start_seconds"] == pytest.approx(17 * 3600 + 59 * 60 + 39 + 58.300 / 60, abs=1e-9)
    assert d["timecodes"] == ["17:59:39:58.300", "17:59:39:59.301", "17:59:40:00.302"]
    assert np.allclose(d["head_rotation"][:, 1], 0.1) and np.allclose(d["ypr"][:, 0], 0.1)


def test_bad_csvs_name_the_line(tmp_path):
    good = hand_written_csv(tmp_path / "g.csv").read_text().splitlines()
    p = tmp_path / "bad.csv"
    p.write_text("\n".join([good[0].replace(",JawOpen", "")] + good[1:]))
    with pytest.raises(livelink.LiveLinkError, match=r"bad.csv line 1: .*JawOpen"):
        livelink.read_csv(p)
    rows = [r.split(",") for r in good]
    rows[2][rows[0].index("MouthSmileLeft")] = "abc"
    p.write_text("\n".join(",".join(r) for r in rows))
    with pytest.raises(livelink.LiveLinkError, match=r"line 3: column MouthSmileLeft: 'abc'"):
        livelink.read_csv(p)
    rows[2][rows[0].index("MouthSmileLeft")] = "nan"
    p.write_text("\n".join(",".join(r) for r in rows))
    with pytest.raises(livelink.LiveLinkError, match=r"line 3: .*'nan' is not a number"):
        livelink.read_csv(p)
    p.write_text("\n".join(good[:2] + [good[2][:40]]))
    with pytest.raises(livelink.LiveLinkError, match=r"line 3: \d+ fields"):
        livelink.read_csv(p)
    p.write_text(good[0] + "\n")
    with pytest.raises(livelink.LiveLinkError, match="no frames"):
        livelink.read_csv(p)
    with pytest.raises(livelink.LiveLinkError, match="not found"):
        livelink.read_csv(tmp_path / "nope.csv")


def test_exported_header_is_live_link_faces_own(tmp_path):
    """Column for column the header the Live Link Face app writes (some readers go by
    position): note JawRight before JawLeft and MouthRight before MouthLeft."""
    from emoca_blender.retarget import livelink

    official = (
        "Timecode,BlendShapeCount,EyeBlinkLeft,EyeLookDownLeft,EyeLookInLeft,EyeLookOutLeft,"
        "EyeLookUpLeft,EyeSquintLeft,EyeWideLeft,EyeBlinkRight,EyeLookDownRight,EyeLookInRight,"
        "EyeLookOutRight,EyeLookUpRight,EyeSquintRight,EyeWideRight,JawForward,JawRight,JawLeft,"
        "JawOpen,MouthClose,MouthFunnel,MouthPucker,MouthRight,MouthLeft,MouthSmileLeft,"
        "MouthSmileRight,MouthFrownLeft,MouthFrownRight,MouthDimpleLeft,MouthDimpleRight,"
        "MouthStretchLeft,MouthStretchRight,MouthRollLower,MouthRollUpper,MouthShrugLower,"
        "MouthShrugUpper,MouthPressLeft,MouthPressRight,MouthLowerDownLeft,MouthLowerDownRight,"
        "MouthUpperUpLeft,MouthUpperUpRight,BrowDownLeft,BrowDownRight,BrowInnerUp,"
        "BrowOuterUpLeft,BrowOuterUpRight,CheekPuff,CheekSquintLeft,CheekSquintRight,"
        "NoseSneerLeft,NoseSneerRight,TongueOut,HeadYaw,HeadPitch,HeadRoll,LeftEyeYaw,"
        "LeftEyePitch,LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll").split(",")
    assert list(livelink.COLUMNS) == official


# ----------------------------------------------------------------------------- what the app writes

SHARED_TAKES = sorted((SHARED / "livelink").glob("*.csv")) if (SHARED / "livelink").is_dir() else []


def app_csv(path, n=40, step=2, lost=(), drop=(), over=None, count_name="BlendShapeCount",
            angles=True, start=(12, 21, 59, 6)):
    """A take written the way Apple's Live Link Face app writes it: 60 fps timecodes
    (``step`` 2 = a 30 fps take), ``TIMECODE,0`` rows where tracking was lost (``lost``:
    row indices), rows missing altogether (``drop``), ``over``: {(row, column): value}.
    Returns (path, values (n, 52 or 61) as written, the rows' grid frames)."""
    header = list(livelink.COLUMNS)
    header[1] = count_name
    if not angles:
        header = header[:54]
    ncol = len(header) - 2
    rng = np.random.default_rng(n + step)
    vals = rng.uniform(0, 0.9, (n, ncol))
    if angles:
        vals[:, 52:] = rng.uniform(-0.3, 0.3, (n, 9))
    for (i, c), v in (over or {}).items():
        vals[i, c] = v
    h, m, s0, f0 = start
    lines = [",".join(header)]
    for i in range(n):
        if i in drop:
            continue
        fr = f0 + i * step
        sec = s0 + fr // 60
        tc = f"{h:02d}:{m:02d}:{sec:02d}:{fr % 60:02d}.{595 - i // 3:03d}"
        if i in lost:
            lines.append(f"{tc},0")
        else:
            lines.append(f"{tc},{ncol}," + ",".join(f"{v:.10f}" for v in vals[i]))
    path.write_text("\r\n".join(lines) + "\r\n")
    return path, vals


def _ll_to_arkit(vals):
    """Live Link column order -> ARKit order, by name (independent of livelink's table)."""
    from emoca_blender.arkit import pascal
    out = np.empty((len(vals), 52))
    for j, col in enumerate(livelink.COLUMNS[2:54]):
        out[:, [pascal(n) for n in ARKIT_NAMES].index(col)] = vals[:, j]
    return out


def test_tracking_lost_rows_become_gaps(tmp_path):
    """The app writes ``TIMECODE,0`` where it lost the face: a short run is interpolated
    (flagged), a long one holds the last pose and is not valid."""
    short, long_ = [10, 11, 12], list(range(20, 28))
    p, vals = app_csv(tmp_path / "lost.csv", lost=short + long_)
    d = livelink.read_csv(p, max_gap=5)
    assert len(d["arkit"]) == 40 and d["fps"] == 30.0
    assert d["lost_rows"] == [i + 2 for i in short + long_]        # CSV lines (header = 1)
    assert not d["found"][short + long_].any() and d["found"].sum() == 40 - 11
    assert d["valid"][short].all() and d["interpolated"][short].all()
    assert not d["valid"][long_].any() and not d["interpolated"][long_].any()
    assert d["valid"].sum() == 40 - 8 and d["interpolated"].sum() == 3
    ark = _ll_to_arkit(vals[:, :52])
    for k, i in enumerate(short):                                  # linear between 9 and 13
        w = (k + 1) / 4
        assert np.abs(d["arkit"][i] - ((1 - w) * ark[9] + w * ark[13])).max() < 1e-9
    assert np.abs(d["arkit"][long_] - ark[19]).max() < 1e-9          # held
    keep = [i for i in range(40) if i not in short + long_]
    assert np.abs(d["arkit"][keep] - ark[keep]).max() < 1e-9
    assert np.abs(d["ypr"][keep] - vals[keep, 52:]).max() < 1e-9
    cap = livelink.to_capture(d, "lost.csv")
    assert np.array_equal(cap["valid"], d["valid"])
    assert np.array_equal(cap["interpolated"], d["interpolated"])
    assert cap.meta["livelink"]["lost_rows"] == d["lost_rows"]
    # --max-gap 10 interpolates the long gap too
    d10 = livelink.read_csv(p, max_gap=10)
    assert d10["valid"].all() and d10["interpolated"].sum() == 11


def test_tracking_lost_at_the_start_holds_the_first_pose(tmp_path):
    p, vals = app_csv(tmp_path / "start.csv", n=12, lost=[0, 1])
    d = livelink.read_csv(p)
    assert d["seconds"][0] == 0 and len(d["arkit"]) == 12
    assert np.abs(d["arkit"][:2] - _ll_to_arkit(vals[2:3, :52])).max() < 1e-9
    assert not d["valid"][:2].any()                  # no measurement before: not interpolated


def test_weights_above_one_are_clamped_and_counted(tmp_path):
    jaw = livelink.COLUMNS.index("JawOpen") - 2
    p, vals = app_csv(tmp_path / "over.csv", over={(3, jaw): 1.0591764450, (4, jaw): 1.0002,
                                                  (5, 0): -0.0001})
    d = livelink.read_csv(p)
    assert d["clamped"] == 3 and d["clamp_max"] == pytest.approx(1.059176445)
    assert d["arkit"].max() <= 1.0 and d["arkit"].min() >= 0.0
    assert d["arkit"][3, INDEX["jawOpen"]] == 1.0 and d["arkit"][5, INDEX["eyeBlinkLeft"]] == 0
    assert d["arkit"][6, INDEX["jawOpen"]] == pytest.approx(vals[6, jaw], abs=1e-10)
    assert "3 weights clamped" in livelink.import_summary(d)
    livelink.to_capture(d).validate()                     # a valid capture (weights in [0, 1])


@pytest.mark.parametrize("count_name", ["BlendShapeCount", "BlendshapeCount"])
@pytest.mark.parametrize("angles", [True, False])
def test_count_column_spelling_and_angle_columns(tmp_path, count_name, angles):
    p, vals = app_csv(tmp_path / "c.csv", n=8, count_name=count_name, angles=angles, lost=[4])
    d = livelink.read_csv(p)
    assert d["has_angles"] is angles and d["lost_rows"] == [6]
    keep = [0, 1, 2, 3, 5, 6, 7]
    assert np.abs(d["arkit"][keep] - _ll_to_arkit(vals[keep, :52])).max() < 1e-9
    if angles:
        assert np.abs(d["ypr"][keep] - vals[keep, 52:]).max() < 1e-9
    else:
        assert not d["ypr"].any() and not d["eyes"].any()


@pytest.mark.parametrize("step,fps", [(2, 30.0), (1, 60.0)])
def test_30_and_60_fps_takes_on_60_fps_timecodes(tmp_path, step, fps):
    """The app's timecodes count 60 frames a second; a 30 fps take steps by 2."""
    p, vals = app_csv(tmp_path / "r.csv", n=150, step=step)
    d = livelink.read_csv(p)
    assert d["timecode_rate"] == 60.0 and d["fps"] == fps
    assert len(d["arkit"]) == 150 and not d["dropped"]
    assert np.allclose(d["seconds"], np.arange(150) / fps)
    assert np.abs(d["arkit"] - _ll_to_arkit(vals[:, :52])).max() < 1e-9


def test_dropped_frames_are_gaps(tmp_path):
    """A frame the app skipped (a 4-frame timecode step in a 30 fps take) is a one-frame
    gap at its place, not a shift of everything after it."""
    p, vals = app_csv(tmp_path / "drop.csv", n=30, drop=[17])
    d = livelink.read_csv(p)
    assert len(d["arkit"]) == 30 and d["dropped"] == 1 and d["timecodes"][17] == ""
    assert d["interpolated"][17] and d["interpolated"].sum() == 1
    ark = _ll_to_arkit(vals[:, :52])
    assert np.abs(d["arkit"][18:] - ark[18:]).max() < 1e-9
    assert np.abs(d["arkit"][17] - (ark[16] + ark[18]) / 2).max() < 1e-9


def test_export_writes_invalid_frames_as_lost_rows_and_reimports_them(tmp_path):
    cap = _capture(n=60, fps=30.0)
    cap.arrays["valid"][20:30] = False                # a long gap, held as the capture does
    cap.arrays["arkit"][20:30] = cap.arrays["arkit"][19]
    cap.arrays["head_rotation"][20:30] = cap.arrays["head_rotation"][19]
    cap.arrays["eyes"][20:30] = cap.arrays["eyes"][19]
    p = livelink.export_capture(cap, tmp_path / "gap.csv", head_relative=False)
    lines = open(p).read().splitlines()
    assert all(ln.endswith(",0") and ln.count(",") == 1 for ln in lines[21:31])
    d = livelink.read_csv(p)
    c2 = livelink.to_capture(d)
    assert np.array_equal(c2["valid"], cap["valid"]) and not c2["interpolated"].any()
    assert np.abs(c2["arkit"] - cap["arkit"]).max() < 1e-6
    assert np.abs(c2["head_rotation"] - cap["head_rotation"]).max() < 1e-5
    assert np.abs(c2["eyes"] - cap["eyes"]).max() < 1e-5


def test_import_csv_cli(tmp_path):
    p, vals = app_csv(tmp_path / "take.csv", lost=[5, 6], over={(8, 0): 1.03})
    r = run_cli("import-csv", p, "-o", tmp_path / "take.capture.npz", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "tracking lost on 2 rows" in r.stdout and "1 weights clamped" in r.stdout
    cap = load_capture(tmp_path / "take.capture.npz")
    assert cap.n_frames == 40 and cap.fps == 30.0 and cap["interpolated"].sum() == 2
    assert cap.meta["backend"]["name"] == "livelink_csv"
    bad = tmp_path / "bad.csv"
    bad.write_text("Timecode,BlendShapeCount,EyeBlinkLeft\n00:00:00:00.000,1,0.5\n")
    r = run_cli("import-csv", bad, "-o", tmp_path / "bad.capture.npz", timeout=120)
    assert r.returncode == 2 and "bad.csv line 1" in r.stderr
    assert not (tmp_path / "bad.capture.npz").exists()


def _app_rows(path):
    """(grid frame of each row, row is tracking-lost, values) read with plain string
    handling: 60 fps timecodes, the take's step from the first two rows."""
    rows = [ln.split(",") for ln in path.read_text(encoding="utf-8-sig").splitlines()[1:]
            if ln.strip()]

    def t(tc):
        h, m, s, f = tc.split(":")
        return (int(h) * 3600 + int(m) * 60 + int(s)) * 60 + float(f)   # in 60ths
    times = np.array([t(r[0]) for r in rows])
    step = round(np.median(np.diff(times)))
    frames = np.rint((times - times[0]) / step).astype(int)
    lost = np.array([len(r) == 2 and r[1] == "0" for r in rows])
    vals = np.array([[float(x) for x in r[2:54]] if len(r) > 2 else [0.0] * 52 for r in rows])
    return frames, lost, vals, 60.0 / step


@pytest.mark.skipif(not SHARED_TAKES, reason=f"no real Live Link takes: {SHARED / 'livelink'} "
                    f"is absent (recordings are not copied into the repository)")
@pytest.mark.parametrize("take", SHARED_TAKES, ids=[p.name for p in SHARED_TAKES])
def test_import_csv_reads_every_real_take(tmp_path, take):
    """Takes recorded with Apple's app (../shared/livelink): the CLI imports each; the gaps
    are exactly where the app wrote tracking-lost rows (or skipped a frame); measured frames
    keep the app's weights, clamped to [0, 1]."""
    out = tmp_path / (take.stem + ".capture.npz")
    r = run_cli("import-csv", take, "-o", out, timeout=300)
    assert r.returncode == 0, r.stderr
    cap = load_capture(out)
    frames, lost, vals, fps = _app_rows(take)
    N = frames[-1] + 1
    assert cap.n_frames == N and cap.fps == fps
    measured = np.zeros(N, bool)
    measured[frames[~lost]] = True
    gap = ~measured
    assert np.array_equal(~cap["valid"] | cap["interpolated"], gap)   # gaps: flagged, nowhere else
    ark = _ll_to_arkit(np.clip(vals[~lost], 0, 1))
    assert np.abs(cap["arkit"][frames[~lost]] - ark).max() < 1e-6
    assert cap.meta["livelink"]["clamped"] == int(((vals[~lost] > 1) | (vals[~lost] < 0)).sum())
    assert cap.meta["livelink"]["lost_rows"] == [int(i) + 2 for i in np.flatnonzero(lost)]
    if lost.any():
        assert f"tracking lost on {int(lost.sum())} rows" in r.stdout
