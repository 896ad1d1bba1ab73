"""Live Link Face CSV: export/import round trip, a hand-written file, and bad files."""
from __future__ import annotations

import numpy as np
import pytest

from emoca_blender import livelink
from emoca_blender.arkit import ARKIT_NAMES, INDEX
from emoca_blender.capture_file import make_capture


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
    assert np.allclose(d["seconds"], [0, 1.001 / 60, 2.002 / 60], atol=1e-9)   # FF.fff: sub-frame
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
    from emoca_blender import livelink

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
