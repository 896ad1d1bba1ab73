"""Live Link Face CSV: the recording format of Epic's Live Link Face iPhone app, read by
Unreal, Faceit and most face-animation tools.

One header line, then one line per frame::

    Timecode,BlendShapeCount,EyeBlinkLeft,...,TongueOut,HeadYaw,HeadPitch,HeadRoll,
    LeftEyeYaw,LeftEyePitch,LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll
    00:00:01:12.000,61,0.0312,...

* ``Timecode``: ``HH:MM:SS:FF.fff`` (frame ``FF`` within the second at the recording's
  rate, plus a sub-frame fraction); plain seconds are accepted on import.
* ``BlendShapeCount``: 61 (52 ARKit weights + 9 angles).
* The 52 ARKit weights in [0, 1], PascalCase, in Live Link's order (:data:`LIVELINK_NAMES`;
  it differs from :data:`arkit.ARKIT_NAMES` in jawLeft/jawRight and mouthLeft/mouthRight).
* Head and eye yaw / pitch / roll in radians: about the head's up (+Y), left (+X) and
  forward (+Z) axes (model axes: +X the subject's left, +Y up, +Z out of the face), i.e.
  ``R = Ry(yaw) @ Rx(pitch) @ Rz(roll)``. The head is relative to the capture's median pose,
  eyes relative to the head.

Import reads columns by name (any order, extra columns ignored); a missing column, a wrong
field count or a value that is not a number raises :class:`LiveLinkError` naming the line.
"""
from __future__ import annotations

import csv
import io
import os
import re

import numpy as np

from .arkit import ARKIT_NAMES, INDEX, pascal
from .errors import BadInput

#: the 52 blend shapes in Live Link Face's column order (camelCase ARKit names): Apple's
#: order, the same as :data:`arkit.ARKIT_NAMES` (JawForward, JawRight, JawLeft, JawOpen,
#: MouthClose, MouthFunnel, MouthPucker, MouthRight, MouthLeft, ...).
LIVELINK_NAMES: tuple[str, ...] = ARKIT_NAMES
ANGLE_COLUMNS = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch",
                 "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll")
SHAPE_COLUMNS = tuple(pascal(n) for n in LIVELINK_NAMES)
COLUMNS = ("Timecode", "BlendShapeCount") + SHAPE_COLUMNS + ANGLE_COLUMNS
BLENDSHAPE_COUNT = 61
_LL_TO_ARKIT = np.array([INDEX[n] for n in LIVELINK_NAMES])


class LiveLinkError(BadInput):
    """A Live Link Face CSV cannot be read (the message names the file and line)."""


# ----------------------------------------------------------------------------- angles

def _rot(axis: int, a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    R = np.zeros(a.shape + (3, 3))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    R[..., axis, axis] = 1.0
    R[..., i, i] = c
    R[..., j, j] = c
    R[..., i, j] = -s
    R[..., j, i] = s
    return R


def _rotvec_to_matrix(r: np.ndarray) -> np.ndarray:
    r = np.asarray(r, np.float64)
    th = np.linalg.norm(r, axis=-1)[..., None, None]
    k = r / np.maximum(np.linalg.norm(r, axis=-1, keepdims=True), 1e-300)
    Kx = np.zeros(r.shape[:-1] + (3, 3))
    Kx[..., 0, 1], Kx[..., 0, 2] = -k[..., 2], k[..., 1]
    Kx[..., 1, 0], Kx[..., 1, 2] = k[..., 2], -k[..., 0]
    Kx[..., 2, 0], Kx[..., 2, 1] = -k[..., 1], k[..., 0]
    eye = np.broadcast_to(np.eye(3), Kx.shape)
    return eye + np.sin(th) * Kx + (1 - np.cos(th)) * (Kx @ Kx)


def _matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R.reshape(-1, 3, 3)).as_rotvec().reshape(R.shape[:-2] + (3,))


def rotvec_to_ypr(r: np.ndarray) -> np.ndarray:
    """(N, 3) axis-angle (model axes) -> (N, 3) yaw, pitch, roll with
    ``R = Ry(yaw) Rx(pitch) Rz(roll)``."""
    R = _rotvec_to_matrix(r)
    pitch = np.arcsin(np.clip(-R[..., 1, 2], -1.0, 1.0))
    yaw = np.arctan2(R[..., 0, 2], R[..., 2, 2])
    roll = np.arctan2(R[..., 1, 0], R[..., 1, 1])
    return np.stack([yaw, pitch, roll], -1)


def ypr_to_rotvec(ypr: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotvec_to_ypr`."""
    ypr = np.asarray(ypr, np.float64)
    R = _rot(1, ypr[..., 0]) @ _rot(0, ypr[..., 1]) @ _rot(2, ypr[..., 2])
    return _matrix_to_rotvec(R)


# ----------------------------------------------------------------------------- timecode

def format_timecode(seconds: float, fps: float) -> str:
    """Seconds -> ``HH:MM:SS:FF.fff`` at ``fps``."""
    total = float(seconds)
    whole = int(np.floor(total + 1e-9))
    frac_frames = (total - whole) * fps
    ff = int(np.floor(frac_frames + 1e-6))
    sub = max(0.0, frac_frames - ff)
    h, rem = divmod(whole, 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{s:02d}:{ff:02d}.{int(round(sub * 1000)) % 1000:03d}"


_TC = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2})[:;.](\d+)(?:\.(\d+))?\s*$")


def parse_timecode(text: str) -> tuple[float, int, float]:
    """``HH:MM:SS:FF.fff`` -> (whole seconds, frame FF, sub-frame fraction); a plain number is
    taken as seconds (frame 0). Raises ValueError."""
    m = _TC.match(text)
    if m:
        h, mi, s, ff, sub = m.groups()
        return (int(h) * 3600 + int(mi) * 60 + int(s), int(ff),
                float("0." + sub) if sub else 0.0)
    return float(text), 0, 0.0


# ----------------------------------------------------------------------------- export

def write_csv(path, arkit: np.ndarray, fps: float, head_rotation: np.ndarray | None = None,
              eyes: np.ndarray | None = None, start_seconds: float = 0.0,
              names=ARKIT_NAMES) -> str:
    """Write a Live Link Face CSV.

    Args:
        path: output .csv (written atomically).
        arkit: (N, 52) weights, columns in ``names`` order (default ARKit order).
        fps: frame rate of the rows.
        head_rotation: (N, 3) head axis-angle (model axes), e.g. relative to the median pose;
            zeros when None.
        eyes: (N, 2, 3) left and right eye axis-angle relative to the head; zeros when None.
        start_seconds: time of the first row.
    Returns:
        the path.
    """
    a = np.asarray(arkit, np.float64)
    N = a.shape[0]
    names = list(names)
    if a.ndim != 2 or a.shape[1] != len(names) or sorted(names) != sorted(ARKIT_NAMES):
        raise ValueError(f"arkit must be (N, 52) with the 52 ARKit names, got {a.shape}")
    if not fps or fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    col = {n: i for i, n in enumerate(names)}
    shapes = a[:, [col[n] for n in LIVELINK_NAMES]]
    head = rotvec_to_ypr(np.zeros((N, 3)) if head_rotation is None else head_rotation)
    e = np.zeros((N, 2, 3)) if eyes is None else np.asarray(eyes, np.float64)
    angles = np.concatenate([head, rotvec_to_ypr(e[:, 0]), rotvec_to_ypr(e[:, 1])], 1)
    buf = io.StringIO()
    buf.write(",".join(COLUMNS) + "\n")
    vals = np.concatenate([shapes, angles], 1)
    for i in range(N):
        tc = format_timecode(start_seconds + i / fps, fps)
        buf.write(f"{tc},{BLENDSHAPE_COUNT}," + ",".join(f"{v:.7g}" for v in vals[i]) + "\n")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise BadInput(f"folder does not exist: {folder}")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)
    return path


def export_capture(capture, path, head_relative: bool = True) -> str:
    """Write a Capture's ARKit, head and eye curves as a Live Link Face CSV (head relative to
    the capture's median pose when ``head_relative``)."""
    head = np.asarray(capture["head_rotation"], np.float64)
    if head_relative:
        head = _relative_to_median(head, capture.get("valid"))
    ts = np.asarray(capture["timestamps"], np.float64)
    return write_csv(path, capture["arkit"], capture.fps, head, capture["eyes"],
                     start_seconds=float(ts[0]) if len(ts) else 0.0,
                     names=capture.names.get("arkit", ARKIT_NAMES))


def _relative_to_median(rotvecs: np.ndarray, valid=None) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    R = Rotation.from_rotvec(rotvecs)
    q = R.as_quat()
    if valid is not None and np.any(valid):
        qv = q[np.asarray(valid, bool)]
    else:
        qv = q
    qv = np.where((qv @ qv[0])[:, None] < 0, -qv, qv)
    m = np.median(qv, axis=0)
    Rm = Rotation.from_quat(m / np.linalg.norm(m))
    return (Rm.inv() * R).as_rotvec()


# ----------------------------------------------------------------------------- import

def read_csv(path) -> dict:
    """Read a Live Link Face CSV.

    Returns:
        {"arkit": (N, 52) in ARKit order, "head_rotation": (N, 3) axis-angle,
         "eyes": (N, 2, 3) axis-angle, "ypr": (N, 9) the raw angle columns,
         "seconds": (N,) time of each row from the first, "fps": estimated frame rate,
         "timecodes": [str]}
    Raises:
        LiveLinkError: naming the file, the line and the column.
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise LiveLinkError(f"Live Link CSV not found: {path}")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise LiveLinkError(f"cannot read {name}: {e}") from None
    if not rows:
        raise LiveLinkError(f"{name} is empty (expected a header line and one line per frame)")
    header = [h.strip() for h in rows[0]]
    idx = {h: i for i, h in enumerate(header)}
    # accept camelCase shape names too (some exporters write them)
    for n in LIVELINK_NAMES:
        if pascal(n) not in idx and n in idx:
            idx[pascal(n)] = idx[n]
    missing = [c for c in ("Timecode",) + SHAPE_COLUMNS if c not in idx]
    if missing:
        more = f" (and {len(missing) - 8} more)" if len(missing) > 8 else ""
        raise LiveLinkError(f"{name} line 1: the header lacks the column(s) "
                            f"{', '.join(missing[:8])}{more}; a Live Link Face CSV has "
                            f"Timecode, BlendShapeCount, the 52 ARKit shapes and 9 angles")
    has_angles = all(c in idx for c in ANGLE_COLUMNS)
    data_cols = list(SHAPE_COLUMNS) + (list(ANGLE_COLUMNS) if has_angles else [])
    ci = [idx[c] for c in data_cols]
    body = [(ln, r) for ln, r in enumerate(rows[1:], start=2) if any(x.strip() for x in r)]
    if not body:
        raise LiveLinkError(f"{name} has a header but no frames")
    vals = np.empty((len(body), len(data_cols)))
    secs = np.empty(len(body))
    frames = np.empty(len(body), np.int64)
    subs = np.empty(len(body))
    tcs = []
    for j, (ln, r) in enumerate(body):
        if len(r) < len(header):
            raise LiveLinkError(f"{name} line {ln}: {len(r)} fields, the header has "
                                f"{len(header)}")
        tc = r[idx["Timecode"]].strip()
        try:
            secs[j], frames[j], subs[j] = parse_timecode(tc)
        except ValueError:
            raise LiveLinkError(f"{name} line {ln}: Timecode {tc!r} is not HH:MM:SS:FF.fff "
                                f"or seconds") from None
        tcs.append(tc)
        for k, c in enumerate(ci):
            s = r[c].strip()
            try:
                v = float(s)
            except ValueError:
                v = np.nan
            if not np.isfinite(v):
                raise LiveLinkError(f"{name} line {ln}: column {data_cols[k]}: {s!r} is not "
                                    f"a number")
            vals[j, k] = v
    # frame rate: the largest frame number within a second + 1 (timecodes), else from times
    if frames.max() > 0:
        fps = float(_common_rate(int(frames.max()) + 1))
        t = secs + (frames + subs) / fps
    else:
        t = secs
        d = np.diff(t)
        fps = float(1.0 / np.median(d)) if len(d) and np.median(d) > 0 else 30.0
    ll = vals[:, :52]
    arkit = np.empty_like(ll)
    arkit[:, _LL_TO_ARKIT] = ll
    ypr = vals[:, 52:61] if has_angles else np.zeros((len(body), 9))
    return {"arkit": arkit, "ypr": ypr, "head_rotation": ypr_to_rotvec(ypr[:, 0:3]),
            "eyes": np.stack([ypr_to_rotvec(ypr[:, 3:6]), ypr_to_rotvec(ypr[:, 6:9])], 1),
            "seconds": t - t[0], "fps": fps, "timecodes": tcs, "has_angles": has_angles}


def _common_rate(n: int) -> int:
    """The usual frame rate at or above n frames per second (24, 25, 30, 50, 60...)."""
    for r in (24, 25, 30, 48, 50, 60, 72, 90, 100, 120):
        if n <= r:
            return r
    return n


def to_capture(data: dict, source: str = "livelink.csv"):
    """A Capture (for the rig and retarget) from :func:`read_csv`'s result: ARKit curves,
    head and eye rotations; no landmarks (zeros), jaw from jawOpen (0.5 rad at 1)."""
    from .capture_file import make_capture

    a = np.asarray(data["arkit"], np.float32)
    N = len(a)
    jaw = np.zeros((N, 3), np.float32)
    jaw[:, 0] = 0.5 * a[:, INDEX["jawOpen"]]
    arrays = {"valid": np.ones(N, bool), "interpolated": np.zeros(N, bool),
              "timestamps": np.asarray(data["seconds"], np.float64),
              "bbox": np.zeros((N, 4), np.float32), "landmarks2d": np.zeros((N, 1, 2), np.float32),
              "landmarks3d": np.zeros((N, 1, 3), np.float32),
              "head_rotation": np.asarray(data["head_rotation"], np.float32),
              "head_translation": np.zeros((N, 3), np.float32), "jaw": jaw,
              "eyes": np.asarray(data["eyes"], np.float32),
              "blinks": a[:, [INDEX["eyeBlinkLeft"], INDEX["eyeBlinkRight"]]],
              "expression": a, "arkit": a, "shape": np.zeros(0, np.float32)}
    meta = {"fps": float(data["fps"]), "width": 0, "height": 0,
            "source": {"path": source}, "backend": "livelink_csv"}
    return make_capture(arrays, meta, {"expression": ARKIT_NAMES})


__all__ = ["LIVELINK_NAMES", "COLUMNS", "SHAPE_COLUMNS", "ANGLE_COLUMNS", "LiveLinkError",
           "write_csv", "read_csv", "export_capture", "to_capture", "rotvec_to_ypr",
           "ypr_to_rotvec", "format_timecode", "parse_timecode"]
