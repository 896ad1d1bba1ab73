"""The Capture: one face track in one video, the seam between capture and Blender.

A capture is stored as ``<name>.capture.npz`` (every per-frame array, plus the column
names of every multi-column array and the metadata as JSON) and a small human-readable
``<name>.capture.json`` sidecar. Both are written atomically (temporary file + rename);
the sidecar is written last and records the hash of the npz, so a file is taken as
complete only when both exist and agree.

Array layout (N = frames, L = landmarks, K = expression components):

============== ============ ======================================================
field          shape        meaning
============== ============ ======================================================
valid          (N,)  bool   a face was tracked (or the gap was filled) this frame
interpolated   (N,)  bool   values were filled across a short gap, not measured
timestamps     (N,)  f8     seconds from the start of the video
bbox           (N,4) f4     face box in pixels: x0, y0, x1, y1
landmarks2d    (N,L,2) f4   image landmarks in pixels (MediaPipe: L = 478)
landmarks3d    (N,L,3) f4   landmarks in the head's frame, metres, expression only
                            (head pose removed; +X subject's left, +Y up, +Z out of face)
head_rotation  (N,3) f4     axis-angle R of the head: camera_point = R @ head_point + t,
                            camera axes x right, y up, z towards the viewer (OpenGL), so
                            zero = facing the camera; head axes as for landmarks3d
head_translation (N,3) f4   t above, metres
jaw            (N,3) f4     axis-angle of the jaw about its joint, head frame
                            (+rx opens the mouth, as in FLAME)
eyes           (N,2,3) f4   axis-angle gaze of the subject's left and right eye, head frame
blinks         (N,2) f4     eye closure of the left and right eye in [0, 1]
expression     (N,K) f4     the head model's own expression coefficients
arkit          (N,52) f4    ARKit weights in [0, 1] (filtered)
shape          (S,) f4      identity coefficients, one per capture
============== ============ ======================================================

Optional: ``arkit_raw`` (unfiltered ARKit), ``detail`` (N,D), ``camera`` (N,3) weak-perspective
[scale, tx, ty] of the network's crop (emoca), ``light`` (N,9,3) spherical-harmonics lighting
(9 bands x RGB, emoca), ``emotion_probs`` (N,E),
``valence`` (N,), ``arousal`` (N,), ``emotion_features`` (N,F).
Invalid frames hold the last valid value (or the first valid one before it), never NaN.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .arkit import ARKIT_NAMES

SCHEMA_VERSION = 1
SUFFIX = ".capture.npz"
SIDECAR_SUFFIX = ".capture.json"


class CaptureError(ValueError):
    """A capture file is missing, incomplete or malformed. The message names the problem."""


# name: (shape template, dtype kind, required). Symbols are sizes resolved per file.
FIELDS: dict[str, tuple[tuple, str, bool]] = {
    "valid": (("N",), "b", True),
    "interpolated": (("N",), "b", True),
    "timestamps": (("N",), "f", True),
    "bbox": (("N", 4), "f", True),
    "landmarks2d": (("N", "L", 2), "f", True),
    "landmarks3d": (("N", "L", 3), "f", True),
    "head_rotation": (("N", 3), "f", True),
    "head_translation": (("N", 3), "f", True),
    "jaw": (("N", 3), "f", True),
    "eyes": (("N", 2, 3), "f", True),
    "blinks": (("N", 2), "f", True),
    "expression": (("N", "K"), "f", True),
    "arkit": (("N", 52), "f", True),
    "shape": (("S",), "f", True),
    "arkit_raw": (("N", 52), "f", False),
    "detail": (("N", "D"), "f", False),
    "camera": (("N", 3), "f", False),
    "light": (("N", 9, 3), "f", False),
    "emotion_probs": (("N", "E"), "f", False),
    "valence": (("N",), "f", False),
    "arousal": (("N",), "f", False),
    "emotion_features": (("N", "F"), "f", False),
}

# Column names stored beside each multi-column array, as "<field>_names".
FIXED_COLUMNS: dict[str, tuple[str, ...]] = {
    "bbox": ("x0", "y0", "x1", "y1"),
    "head_rotation": ("rx", "ry", "rz"),
    "head_translation": ("tx", "ty", "tz"),
    "jaw": ("rx", "ry", "rz"),
    "eyes": ("left", "right"),
    "blinks": ("left", "right"),
    "arkit": ARKIT_NAMES,
    "arkit_raw": ARKIT_NAMES,
    "camera": ("s", "tx", "ty"),
    "light": tuple(f"sh{k}" for k in range(9)),
}
NAMED_BY_WRITER = ("expression", "emotion_probs")  # the writer must supply these names


@dataclass
class Capture:
    """Per-frame arrays plus metadata. ``arrays`` maps field names to numpy arrays;
    ``names`` maps multi-column fields to their column names."""

    arrays: dict[str, np.ndarray]
    names: dict[str, tuple[str, ...]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.arrays["valid"].shape[0])

    @property
    def fps(self) -> float:
        return float(self.meta["fps"])

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def get(self, key: str, default=None):
        return self.arrays.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.arrays

    def column(self, field_name: str, column: str) -> np.ndarray:
        """One named column, e.g. ``capture.column("arkit", "jawOpen")`` -> (N,)."""
        cols = self.names[field_name]
        try:
            j = cols.index(column)
        except ValueError:
            raise KeyError(f"{field_name} has no column {column!r}") from None
        return self.arrays[field_name][:, j]

    def validate(self) -> None:
        validate(self)


def _symbol_sizes(arrays: dict[str, np.ndarray]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    problems = []
    for name, (tmpl, _, _) in FIELDS.items():
        a = arrays.get(name)
        if a is None:
            continue
        if a.ndim != len(tmpl):
            problems.append(f"{name} has {a.ndim} dimensions, expected {len(tmpl)} {tmpl}")
            continue
        for sym, n in zip(tmpl, a.shape):
            if isinstance(sym, str):
                if sym in sizes and sizes[sym] != n:
                    problems.append(f"{name} has {sym}={n}, other fields have {sym}={sizes[sym]}")
                sizes.setdefault(sym, n)
    if problems:
        raise CaptureError("; ".join(problems))
    return sizes


def validate(cap: Capture) -> None:
    """Check every field's presence, shape, dtype and finiteness; raise CaptureError naming
    every problem found."""
    problems = []
    for name, (_, _, required) in FIELDS.items():
        if required and name not in cap.arrays:
            problems.append(f"missing field {name!r}")
    unknown = sorted(set(cap.arrays) - set(FIELDS))
    if unknown:
        problems.append(f"unknown fields {unknown}")
    if problems:
        raise CaptureError("; ".join(problems))
    sizes = _symbol_sizes(cap.arrays)
    for name, (tmpl, kind, _) in FIELDS.items():
        a = cap.arrays.get(name)
        if a is None:
            continue
        for sym, n in zip(tmpl, a.shape):
            if isinstance(sym, int) and sym != n:
                problems.append(f"{name} has shape {a.shape}, expected {tmpl}")
                break
        if kind == "b" and a.dtype != np.bool_:
            problems.append(f"{name} has dtype {a.dtype}, expected bool")
        if kind == "f":
            if a.dtype.kind != "f":
                problems.append(f"{name} has dtype {a.dtype}, expected floating point")
            elif not np.all(np.isfinite(a)):
                bad = int(np.count_nonzero(~np.isfinite(a)))
                problems.append(f"{name} holds {bad} NaN/inf values")
    if "arkit" in cap.arrays and cap.arrays["arkit"].size:
        lo, hi = float(cap.arrays["arkit"].min()), float(cap.arrays["arkit"].max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            problems.append(f"arkit weights outside [0, 1] (min {lo:.3f}, max {hi:.3f})")
    for name in list(FIXED_COLUMNS) + list(NAMED_BY_WRITER):
        if name not in cap.arrays:
            continue
        cols = cap.names.get(name)
        ncols = cap.arrays[name].shape[1]
        if cols is None:
            problems.append(f"{name} has no column names")
        elif len(cols) != ncols:
            problems.append(f"{name} has {ncols} columns but {len(cols)} names")
    for key in ("fps", "width", "height"):
        if key not in cap.meta:
            problems.append(f"metadata lacks {key!r}")
    if "fps" in cap.meta and not (float(cap.meta["fps"]) > 0):
        problems.append(f"fps is {cap.meta['fps']}, expected > 0")
    if sizes.get("N", 0) == 0:
        problems.append("the capture has no frames")
    if problems:
        raise CaptureError("; ".join(problems))


def make_capture(arrays: dict[str, np.ndarray], meta: dict[str, Any],
                 names: dict[str, tuple[str, ...]] | None = None) -> Capture:
    """Build a Capture, casting to the stored dtypes and filling fixed column names."""
    out: dict[str, np.ndarray] = {}
    for name, a in arrays.items():
        if name not in FIELDS:
            raise CaptureError(f"unknown field {name!r}")
        kind = FIELDS[name][1]
        a = np.asarray(a)
        if kind == "b":
            out[name] = a.astype(np.bool_)
        elif name == "timestamps":
            out[name] = a.astype(np.float64)
        else:
            out[name] = np.ascontiguousarray(a, dtype=np.float32)
    all_names = {k: tuple(v) for k, v in FIXED_COLUMNS.items() if k in out}
    for k, v in (names or {}).items():
        all_names[k] = tuple(str(x) for x in v)
    meta = dict(meta)
    meta.setdefault("schema_version", SCHEMA_VERSION)
    cap = Capture(out, all_names, meta)
    validate(cap)
    return cap


def sidecar_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    name = p.name
    if name.endswith(SUFFIX):
        return p.with_name(name[: -len(SUFFIX)] + SIDECAR_SUFFIX)
    return p.with_name(p.stem + SIDECAR_SUFFIX)


def file_hash(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """blake2b-128 of a file's content, hex."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give a finished temporary file the usual mode (mkstemp makes 0600) and rename it
    over ``path`` (atomic on one file system)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


@contextlib.contextmanager
def written_beside(path: str | os.PathLike, suffix: str = ".part", placeholder: bool = True):
    """The one atomic-write step for every writer that wants a file name: yields a temporary
    name in ``path``'s folder (a file created there, or only the name when ``placeholder``
    is False, for writers that back up an existing file); when the block ends without error
    the file is published over ``path`` (:func:`publish`), otherwise it is removed, with any
    ``<name>1`` backup the writer left (Blender's), and ``path`` is untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    if not placeholder:
        os.unlink(tmp)
    try:
        yield tmp
        publish(tmp, path)
    except BaseException:
        for leftover in (tmp, tmp + "1"):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data_writer) -> None:
    """Write a file atomically: ``data_writer(fileobj)`` writes into a temporary file in the
    same folder, which is fsynced and renamed over ``path``. On any error the temporary file
    is removed and ``path`` is untouched."""
    with written_beside(path) as tmp:
        with open(tmp, "wb") as f:
            data_writer(f)
            f.flush()
            os.fsync(f.fileno())


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


#: float arrays at least this big are stored, not deflated: per-frame floats (landmarks,
#: features) shrink by under 10% at any zlib level while deflating them is most of the
#: write time (0.17 s of a 472-frame capture); names, metadata and small arrays still are.
STORE_FLOATS_FROM = 64 << 10


def _write_npz(f, payload: dict[str, np.ndarray], compress: bool) -> None:
    """np.savez / np.savez_compressed, with each member's compression chosen by what it
    gains (see STORE_FLOATS_FROM). The result is an ordinary .npz that np.load reads."""
    from numpy.lib import format as npformat

    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, val in payload.items():
            a = np.asanyarray(val)
            deflate = compress and not (a.dtype.kind == "f" and a.nbytes >= STORE_FLOATS_FROM)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
            info.external_attr = 0o600 << 16
            with zf.open(info, "w", force_zip64=True) as fh:
                npformat.write_array(fh, a, allow_pickle=False)


def save_capture(cap: Capture, path: str | os.PathLike, compress: bool = True) -> Path:
    """Validate and write ``cap`` to ``path`` (which should end in ``.capture.npz``) and its
    sidecar. Returns the npz path. ``compress`` deflates the members that gain from it
    (names, metadata, small arrays); large float arrays are always stored."""
    validate(cap)
    path = Path(path)
    if not path.parent.exists():
        raise CaptureError(f"output folder {path.parent} does not exist")
    meta = dict(cap.meta)
    meta["schema_version"] = SCHEMA_VERSION
    meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    meta["frame_count"] = cap.n_frames
    meta["valid_frames"] = int(cap.arrays["valid"].sum())
    meta["fields"] = sorted(cap.arrays)
    payload = dict(cap.arrays)
    for k, v in cap.names.items():
        payload[f"{k}_names"] = np.array(v, dtype=np.str_)
    payload["meta_json"] = np.array(json.dumps(meta, default=_json_default))
    # Sidecar goes first *away*: a stale sidecar must not vouch for a new npz.
    side = sidecar_path(path)
    if side.exists():
        side.unlink()
    atomic_write_bytes(path, lambda f: _write_npz(f, payload, compress))
    side_meta = dict(meta)
    side_meta["npz_file"] = path.name
    side_meta["npz_hash"] = file_hash(path)
    atomic_write_bytes(side, lambda f: f.write(
        json.dumps(side_meta, indent=2, default=_json_default).encode()))
    cap.meta = meta
    return path


def is_complete(path: str | os.PathLike) -> bool:
    """True when the npz and its sidecar exist and the sidecar's hash matches the npz."""
    path = Path(path)
    side = sidecar_path(path)
    if not (path.is_file() and side.is_file()):
        return False
    try:
        meta = json.loads(side.read_text())
        return meta.get("npz_hash") == file_hash(path)
    except (OSError, ValueError):
        return False


def load_capture(path: str | os.PathLike, check_sidecar: bool = True) -> Capture:
    """Load and validate a capture. Raises CaptureError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CaptureError(f"capture file {path} does not exist")
    if check_sidecar:
        side = sidecar_path(path)
        if not side.is_file():
            raise CaptureError(f"capture {path.name} has no sidecar {side.name}: "
                               "it was not completely written; capture the video again")
        try:
            side_meta = json.loads(side.read_text())
        except ValueError as e:
            raise CaptureError(f"sidecar {side.name} is not valid JSON ({e})") from None
        if side_meta.get("npz_hash") != file_hash(path):
            raise CaptureError(f"capture {path.name} does not match its sidecar (changed or "
                               "partly written); capture the video again")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CaptureError(f"{path.name} is not a readable capture file ({e})") from None
    if "meta_json" not in data:
        raise CaptureError(f"{path.name} has no metadata: not a capture file")
    meta = json.loads(str(data.pop("meta_json")))
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CaptureError(f"{path.name} has schema version {version}; this add-on reads "
                           f"version {SCHEMA_VERSION}: capture the video again")
    names = {k[: -len("_names")]: tuple(str(x) for x in v)
             for k, v in data.items() if k.endswith("_names")}
    arrays = {k: v for k, v in data.items() if not k.endswith("_names")}
    cap = Capture(arrays, names, meta)
    validate(cap)
    return cap


def settings_key(video_hash: str, backend: str, settings: dict[str, Any]) -> str:
    """The cache key of a capture: video content + backend + settings."""
    blob = json.dumps({"video": video_hash, "backend": backend, "settings": settings},
                      sort_keys=True, default=_json_default)
    return hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()


def describe(cap: Capture) -> str:
    """A short human summary (for ``info``)."""
    m = cap.meta
    lines = [
        f"source     : {m.get('source', {}).get('path', '?')}",
        f"backend    : {m.get('backend', {}).get('name', '?')}",
        f"frames     : {cap.n_frames} at {cap.fps:g} fps "
        f"({cap.n_frames / cap.fps:.2f} s), {int(cap['valid'].sum())} with a face, "
        f"{int(cap['interpolated'].sum())} interpolated",
        f"resolution : {m.get('width')}x{m.get('height')}",
        f"expression : {cap['expression'].shape[1]} components "
        f"({m.get('head_model', '?')})",
        f"fields     : {', '.join(sorted(cap.arrays))}",
    ]
    return "\n".join(lines)


__all__ = ["Capture", "CaptureError", "FIELDS", "SCHEMA_VERSION", "make_capture",
           "save_capture", "load_capture", "is_complete", "file_hash", "settings_key",
           "sidecar_path", "atomic_write_bytes", "describe"]
