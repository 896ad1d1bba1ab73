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

Import reads columns by name (any order, any case, extra columns ignored) and reads what the
app really writes (checked on real takes): rows with only a timecode and a
``BlendShapeCount`` of 0 where tracking was lost (they become gaps, see :func:`read_csv`),
weights slightly above 1 (clamped, counted), ``BlendShapeCount`` or ``BlendshapeCount``, with
or without the 9 angle columns, 60 fps timecodes on 30 fps takes (every other frame number),
dropped frames. A missing column, a wrong field count or a value that is not a number
raises :class:`LiveLinkError` naming the line.
"""
from __future__ import annotations

import csv
import io
import os
import re

import numpy as np

from ..arkit import ARKIT_NAMES, INDEX, pascal
from ..errors import BadInput
from ..rotations import matrix_to_rotvec, rotvec_to_matrix

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


def rotvec_to_ypr(r: np.ndarray) -> np.ndarray:
    """(N, 3) axis-angle (model axes) -> (N, 3) yaw, pitch, roll with
    ``R = Ry(yaw) Rx(pitch) Rz(roll)``."""
    R = rotvec_to_matrix(r)
    pitch = np.arcsin(np.clip(-R[..., 1, 2], -1.0, 1.0))
    yaw = np.arctan2(R[..., 0, 2], R[..., 2, 2])
    roll = np.arctan2(R[..., 1, 0], R[..., 1, 1])
    return np.stack([yaw, pitch, roll], -1)


def ypr_to_rotvec(ypr: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotvec_to_ypr`."""
    ypr = np.asarray(ypr, np.float64)
    R = _rot(1, ypr[..., 0]) @ _rot(0, ypr[..., 1]) @ _rot(2, ypr[..., 2])
    return matrix_to_rotvec(R)


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
              names=ARKIT_NAMES, valid: np.ndarray | None = None) -> str:
    """Write a Live Link Face CSV.

    Args:
        path: output .csv (written atomically).
        arkit: (N, 52) weights, columns in ``names`` order (default ARKit order).
        fps: frame rate of the rows.
        head_rotation: (N, 3) head axis-angle (model axes), e.g. relative to the median pose;
            zeros when None.
        eyes: (N, 2, 3) left and right eye axis-angle relative to the head; zeros when None.
        start_seconds: time of the first row.
        valid: (N,) bool; frames that are not valid are written as the app writes frames
            where it lost tracking (``TIMECODE,0``). All valid when None.
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
    ok = np.ones(N, bool) if valid is None else np.asarray(valid, bool)
    for i in range(N):
        tc = format_timecode(start_seconds + i / fps, fps)
        if not ok[i]:
            buf.write(f"{tc},0\n")
            continue
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
    the capture's median pose when ``head_relative``); frames without a face (not ``valid``)
    are written as the app's tracking-lost rows."""
    head = np.asarray(capture["head_rotation"], np.float64)
    if head_relative:
        head = _relative_to_median(head, capture.get("valid"))
    ts = np.asarray(capture["timestamps"], np.float64)
    return write_csv(path, capture["arkit"], capture.fps, head, capture["eyes"],
                     start_seconds=float(ts[0]) if len(ts) else 0.0,
                     names=capture.names.get("arkit", ARKIT_NAMES), valid=capture.get("valid"))


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

def read_csv(path, max_gap: int = 5) -> dict:
    """Read a Live Link Face CSV as the app writes it.

    Rows are placed on a uniform frame grid at the take's row rate (from the timecodes: the
    app writes 60 fps timecodes and, for 30 fps takes, every other frame number). Rows where
    the app lost tracking (only a timecode and a ``BlendShapeCount`` of 0) and frames with no
    row at all (dropped frames) are gaps, handled like a video capture's gaps
    (:func:`filters.fill_gaps`): runs of at most ``max_gap`` frames are interpolated and
    flagged ``interpolated``, longer runs hold the last measured pose and are not ``valid``.
    Shape weights are clamped to [0, 1] (the app writes up to ~1.08); how many were clamped
    is reported.

    Returns:
        {"arkit": (N, 52) in ARKit order, "head_rotation": (N, 3) axis-angle,
         "eyes": (N, 2, 3) axis-angle, "ypr": (N, 9) the angle columns, "seconds": (N,) frame
         times from the first row, "fps": the row rate, "timecode_rate": the timecodes' rate,
         "start_seconds": the first row's timecode in seconds, "timecodes": [str] per frame
         ("" for dropped frames), "found": (N,) a measured row, "valid", "interpolated": (N,)
         after the gap policy, "lost_rows": [CSV line numbers where tracking was lost],
         "dropped": frames with no row, "clamped": values clamped into [0, 1],
         "clamp_max": the largest shape weight in the file, "has_angles": bool}
    Raises:
        LiveLinkError: naming the file, the line and the column.
    """
    from ..capture import filters

    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise LiveLinkError(f"Live Link CSV not found: {path}")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise LiveLinkError(f"cannot read {name}: {e}") from None
    if not rows:
        raise LiveLinkError(f"{name} is empty (expected a header line and one line per frame)")
    header = [h.strip() for h in rows[0]]
    # column names in any case: PascalCase (the app), camelCase (some exporters),
    # BlendShapeCount or BlendshapeCount (app versions differ)
    idx = {}
    for i, h in enumerate(header):
        idx.setdefault(h.lower(), i)
    missing = [c for c in ("Timecode",) + SHAPE_COLUMNS if c.lower() not in idx]
    if missing:
        more = f" (and {len(missing) - 8} more)" if len(missing) > 8 else ""
        raise LiveLinkError(f"{name} line 1: the header lacks the column(s) "
                            f"{', '.join(missing[:8])}{more}; a Live Link Face CSV has "
                            f"Timecode, BlendShapeCount, the 52 ARKit shapes and 9 angles")
    has_angles = all(c.lower() in idx for c in ANGLE_COLUMNS)
    data_cols = list(SHAPE_COLUMNS) + (list(ANGLE_COLUMNS) if has_angles else [])
    ci = [idx[c.lower()] for c in data_cols]
    count_col = idx.get("blendshapecount")
    body = [(ln, r) for ln, r in enumerate(rows[1:], start=2) if any(x.strip() for x in r)]
    if not body:
        raise LiveLinkError(f"{name} has a header but no frames")
    n_rows = len(body)
    vals = np.zeros((n_rows, len(data_cols)))
    lost = np.zeros(n_rows, bool)
    secs = np.empty(n_rows)
    frames = np.empty(n_rows, np.int64)
    subs = np.empty(n_rows)
    tcs = []
    for j, (ln, r) in enumerate(body):
        tc = r[idx["timecode"]].strip() if len(r) > idx["timecode"] else ""
        try:
            secs[j], frames[j], subs[j] = parse_timecode(tc)
        except ValueError:
            raise LiveLinkError(f"{name} line {ln}: Timecode {tc!r} is not HH:MM:SS:FF.fff "
                                f"or seconds") from None
        tcs.append(tc)
        if _tracking_lost(r, count_col, ci):
            lost[j] = True
            continue
        if len(r) < len(header):
            raise LiveLinkError(f"{name} line {ln}: {len(r)} fields, the header has "
                                f"{len(header)}")
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
    if lost.all():
        raise LiveLinkError(f"{name}: tracking was lost on every one of its {n_rows} rows "
                            f"(BlendShapeCount 0), there is nothing to import")
    t, tc_rate, fps = _row_times(secs, frames, subs)
    if np.any(np.diff(t) < 0):
        ln = body[int(np.flatnonzero(np.diff(t) < 0)[0]) + 1][0]
        raise LiveLinkError(f"{name} line {ln}: the timecode goes back in time")
    k = np.rint((t - t[0]) * fps).astype(np.int64)
    N = int(k[-1]) + 1
    if N > 10 * n_rows + 100:
        raise LiveLinkError(f"{name}: its {n_rows} rows span {N} frames at {fps:g} fps; the "
                            f"timecodes jump (a recording that was paused?)")
    first = np.ones(n_rows, bool)
    first[1:] = k[1:] != k[:-1]                  # a repeated frame number: keep the first row
    grid = np.zeros((N, len(data_cols)))
    found = np.zeros(N, bool)
    keep = first & ~lost
    grid[k[keep]] = vals[keep]
    found[k[keep]] = True
    timecodes = [""] * N
    for j in np.flatnonzero(first):
        timecodes[k[j]] = tcs[j]
    shapes = grid[:, :52]
    measured = shapes[found]
    clamp_max = float(measured.max())
    clamped = int(np.count_nonzero((measured > 1.0) | (measured < 0.0)))
    grid[:, :52] = np.clip(shapes, 0.0, 1.0)
    filled, valid, interp = filters.fill_gaps(grid, found, max(int(max_gap), 0))
    ll = filled[:, :52]
    arkit = np.empty_like(ll)
    arkit[:, _LL_TO_ARKIT] = ll
    ypr = filled[:, 52:61] if has_angles else np.zeros((N, 9))
    return {"arkit": arkit, "ypr": ypr, "head_rotation": ypr_to_rotvec(ypr[:, 0:3]),
            "eyes": np.stack([ypr_to_rotvec(ypr[:, 3:6]), ypr_to_rotvec(ypr[:, 6:9])], 1),
            "seconds": np.arange(N) / fps, "fps": fps, "timecode_rate": tc_rate,
            "start_seconds": float(t[0]), "timecodes": timecodes, "found": found,
            "valid": valid, "interpolated": interp,
            "lost_rows": [body[j][0] for j in np.flatnonzero(lost)],
            "dropped": int(N - np.count_nonzero(np.bincount(k, minlength=N))),
            "clamped": clamped, "clamp_max": clamp_max, "has_angles": has_angles,
            "max_gap": int(max_gap)}


def _tracking_lost(row: list[str], count_col: int | None, data_idx: list[int]) -> bool:
    """A row the app writes when it lost the face: ``TIMECODE,0`` (a BlendShapeCount of 0,
    no values), or a row whose value fields are all empty."""
    if count_col is not None and count_col < len(row):
        try:
            if float(row[count_col]) == 0:
                return True
        except ValueError:
            pass
    return all(c >= len(row) or not row[c].strip() for c in data_idx)


def _row_times(secs, frames, subs) -> tuple[np.ndarray, float, float]:
    """Seconds of each row (from midnight), the timecodes' frame rate and the rows' rate.

    The timecode rate is the usual rate at or above the largest frame number + 1 seen before
    a second wraps (at least 30 when no second wraps, as in takes under a second); the row
    rate is the timecode rate over the usual frame step (60 fps timecodes stepping by 2 are
    a 30 fps take). Plain-seconds timecodes give the rate of the median row spacing."""
    secs = secs + 86400 * np.cumsum(np.diff(secs, prepend=secs[0]) < -43200)  # midnight
    if frames.max() > 0 or np.any(subs > 0):
        wrapped = np.flatnonzero(np.diff(secs) > 0)
        top = int(frames[wrapped].max()) + 1 if len(wrapped) else max(int(frames.max()) + 1, 30)
        tc_rate = float(_common_rate(max(top, int(frames.max()) + 1)))
        t = secs + (frames + subs) / tc_rate
        d = np.diff(t)
        step = float(np.median(d)) * tc_rate if len(d) else 1.0
        fps = tc_rate / max(round(step), 1) if abs(step - round(step)) < 0.1 else 1.0 / np.median(d)
        return t, tc_rate, float(fps)
    t = secs.astype(np.float64)
    d = np.diff(t)
    fps = float(1.0 / np.median(d)) if len(d) and np.median(d) > 0 else 30.0
    for r in (23.976, 24, 25, 29.97, 30, 48, 50, 59.94, 60, 72, 90, 100, 120):
        if abs(fps - r) < 0.005 * r:
            fps = float(r)
            break
    return t, fps, fps


def _common_rate(n: int) -> int:
    """The usual frame rate at or above n frames per second (24, 25, 30, 50, 60...)."""
    for r in (24, 25, 30, 48, 50, 60, 72, 90, 100, 120):
        if n <= r:
            return r
    return n


def to_capture(data: dict, source: str = "livelink.csv"):
    """A Capture (for the rig and retarget) from :func:`read_csv`'s result: ARKit curves,
    head and eye rotations; no landmarks (zeros), jaw from jawOpen (0.5 rad at 1). Frames
    where the app lost tracking keep read_csv's gap handling (``valid``, ``interpolated``);
    the metadata's ``livelink`` entry records the lost rows, dropped frames and clamped
    weights."""
    from ..capture_file import make_capture

    a = np.asarray(data["arkit"], np.float32)
    N = len(a)
    jaw = np.zeros((N, 3), np.float32)
    jaw[:, 0] = 0.5 * a[:, INDEX["jawOpen"]]
    arrays = {"valid": np.asarray(data.get("valid", np.ones(N, bool)), bool),
              "interpolated": np.asarray(data.get("interpolated", np.zeros(N, bool)), bool),
              "timestamps": np.asarray(data["seconds"], np.float64),
              "bbox": np.zeros((N, 4), np.float32), "landmarks2d": np.zeros((N, 1, 2), np.float32),
              "landmarks3d": np.zeros((N, 1, 3), np.float32),
              "head_rotation": np.asarray(data["head_rotation"], np.float32),
              "head_translation": np.zeros((N, 3), np.float32), "jaw": jaw,
              "eyes": np.asarray(data["eyes"], np.float32),
              "blinks": a[:, [INDEX["eyeBlinkLeft"], INDEX["eyeBlinkRight"]]],
              "expression": a, "arkit": a, "shape": np.zeros(0, np.float32)}
    info = {k: data[k] for k in ("lost_rows", "dropped", "clamped", "clamp_max",
                                 "timecode_rate", "start_seconds", "has_angles") if k in data}
    if "timecodes" in data and data["timecodes"]:
        info["timecode_start"] = data["timecodes"][0]
    meta = {"fps": float(data["fps"]), "width": 0, "height": 0,
            "source": {"path": source}, "backend": {"name": "livelink_csv"},
            "settings": {"max_gap": int(data.get("max_gap", 5))}, "livelink": info}
    return make_capture(arrays, meta, {"expression": ARKIT_NAMES})


def import_summary(data: dict) -> str:
    """One line about what :func:`read_csv` found: frames, rate, gaps, clamped weights."""
    valid, interp = np.asarray(data["valid"]), np.asarray(data["interpolated"])
    found = np.asarray(data["found"])
    runs = np.flatnonzero(np.diff(np.concatenate([[0], (~found).astype(np.int8), [0]])))
    gaps = len(runs) // 2
    parts = [f"{len(found)} frames at {data['fps']:g} fps ({len(found) / data['fps']:.2f} s)"]
    if gaps:
        lost = [f"tracking lost on {len(data['lost_rows'])} rows"] if data["lost_rows"] else []
        lost += [f"{data['dropped']} frames without a row"] if data["dropped"] else []
        parts.append(f"{' and '.join(lost)}, in {gaps} gaps: {int(interp.sum())} frames "
                     f"interpolated, {int((~valid).sum())} held (gaps over "
                     f"{data.get('max_gap', 5)} frames)")
    if data["clamped"]:
        parts.append(f"{data['clamped']} weights clamped to [0, 1] (largest "
                     f"{data['clamp_max']:.3f})")
    if not data["has_angles"]:
        parts.append("no head/eye angle columns")
    return "; ".join(parts)


__all__ = ["LIVELINK_NAMES", "COLUMNS", "SHAPE_COLUMNS", "ANGLE_COLUMNS", "LiveLinkError",
           "write_csv", "read_csv", "export_capture", "to_capture", "import_summary",
           "rotvec_to_ypr", "ypr_to_rotvec", "format_timecode", "parse_timecode"]
