"""The Capture: one face track in one video, the seam between capture and Blender.

A capture is stored as ``<name>.capture.npz`` (every per-frame array, plus the column
names of every multi-column array and the metadata as JSON) and a small human-readable
``<name>.capture.json`` sidecar that records the hash of the npz, so a file is taken as
complete only when both exist and agree. Writing never leaves the previous capture of the
same name unreadable (see :func:`save_capture`): both files are completed under temporary
names and published by renames that keep, at every instant, either the old pair or the new
pair complete; two writers of one name take turns (a lock beside it), the last one wins
as a whole pair.

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
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .arkit import ARKIT_NAMES
from .errors import BadInput

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
    # the emotion refinement's Strength on the frames whose expression it changed, 0 elsewhere
    "emotion_refined": (("N",), "f", False),
    "emotion_features": (("N", "F"), "f", False),
    # the actor's neutral the capture was calibrated to (a calibration take for others:
    # ``capture --neutral-from``): pose-free landmarks and the blendshape scores' offsets
    "neutral_landmarks": (("L", 3), "f", False),
    "neutral_offset": ((52,), "f", False),
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
    with open(path, "rb") as f:
        return _hash_fileobj(f, chunk)


def _hash_fileobj(f, chunk: int = 1 << 22) -> str:
    h = hashlib.blake2b(digest_size=16)
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
    PUBLISHED.append(Path(path))


#: every path this process published (the CLI says what a cancelled run had already written)
PUBLISHED: list[Path] = []

_HELD: dict[tuple[int, str], int] = {}   # (thread, lock file) -> depth: the lock is re-entrant


@contextlib.contextmanager
def output_lock(path: str | os.PathLike):
    """Hold the lock of one output name, across processes and threads: ``flock`` on
    ``.<name>.lock`` beside it (created when missing, removed when released; a lock file
    that was removed while this one waited is not taken). Re-entrant in one thread; a
    process that dies lets go of it."""
    import fcntl

    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    key = (threading.get_ident(), os.path.abspath(lock))
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            try:
                now = os.stat(lock)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
            break
        os.close(fd)      # the holder before us removed this lock file: take the new one
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def remove_leftovers(path: str | os.PathLike, suffix: str = ".part") -> list[Path]:
    """Delete the temporary files (``.<name>.XXXXXXXX<suffix>``, and Blender's ``...1``
    backups of them) that writers of ``path`` killed before they could clean up left
    beside it. Call it holding :func:`output_lock` of ``path``: every live writer of the
    name holds that lock while its temporary file exists, so these are all dead ones'."""
    path = Path(path)
    pat = re.compile(re.escape(f".{path.name}.") + r"[A-Za-z0-9_]{8}" + re.escape(suffix) + "1?$")
    gone = []
    with contextlib.suppress(OSError):
        for q in path.parent.iterdir():
            if pat.match(q.name):
                with contextlib.suppress(OSError):
                    q.unlink()
                    gone.append(q)
    return gone


#: errno -> what it means for an output folder
_WRITE_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                 errno.EFBIG: "file size limit reached", errno.EACCES: "permission denied",
                 errno.EPERM: "permission denied", errno.EROFS: "read-only file system"}
_WRITE_PHRASES = {"No space left on device": errno.ENOSPC, "Errno 28": errno.ENOSPC,
                  "Disk quota exceeded": errno.EDQUOT, "File too large": errno.EFBIG,
                  "Permission denied": errno.EACCES, "Read-only file system": errno.EROFS}


def write_problem(exc: BaseException, path: str | os.PathLike,
                  need_bytes: int = 0) -> BadInput | None:
    """The BadInput (exit 2) to raise instead of ``exc`` when writing ``path`` failed for a
    reason of its folder (full disk, quota, file size limit, permissions), naming the folder
    and the space; None for other errors. Reads OSError's errno and Blender's RuntimeError
    text (its writers report the C library's message)."""
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    if code not in _WRITE_ERRORS and isinstance(exc, (OSError, RuntimeError)):
        code = next((c for k, c in _WRITE_PHRASES.items() if k in str(exc)), None)
    path = Path(path)
    folder = path.parent.resolve()
    if code not in _WRITE_ERRORS and isinstance(exc, RuntimeError):
        # Blender's writers report some full-disk failures without the reason ("No such
        # file or directory" when its temporary file could not be completed)
        with contextlib.suppress(OSError):
            if shutil.disk_usage(folder).free < max(need_bytes, 4 << 20):
                code = errno.ENOSPC
    if code not in _WRITE_ERRORS:
        return None
    msg = f"cannot write {path.name} in {folder}: {_WRITE_ERRORS[code]}"
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        try:
            free = shutil.disk_usage(folder).free
            need = f"about {_mb(need_bytes)} needed" if need_bytes else "free some space"
            msg += f" ({_mb(free)} free, {need})"
        except OSError:
            pass
    return BadInput(msg)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@contextlib.contextmanager
def signals_held():
    """Hold SIGINT and SIGTERM back (re-raised when the block ends) while a group of renames
    must happen together. Python runs signal handlers in the main thread whichever thread
    the signal reached, so the handlers are swapped for a recorder there; a no-op in other
    threads, where no handler interrupts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = {s: signal.signal(s, lambda n, _f: caught.append(n))
           for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            if handler is not None:
                signal.signal(s, handler)
        for n in caught:
            signal.raise_signal(n)


def _temp_beside(path: Path, suffix: str = ".part") -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return tmp


def _unlink_all(*names) -> None:
    for name in names:
        if name:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


@contextlib.contextmanager
def written_beside(path: str | os.PathLike, suffix: str = ".part", placeholder: bool = True,
                   need_bytes: int = 0):
    """The one atomic-write step for every writer that wants a file name: holding the
    output's lock (:func:`output_lock`; leftovers of killed writers are removed first),
    yields a temporary name in ``path``'s folder (a file created there, or only the name
    when ``placeholder`` is False, for writers that back up an existing file); when the
    block ends without error the file is published over ``path`` (:func:`publish`),
    otherwise it is removed, with any ``<name>1`` backup the writer left (Blender's), and
    ``path`` is untouched. A full disk or a permission problem becomes BadInput naming the
    folder (:func:`write_problem`)."""
    path = Path(path)
    try:
        with output_lock(path):
            remove_leftovers(path, suffix)
            tmp = _temp_beside(path, suffix)
            if not placeholder:
                os.unlink(tmp)
            try:
                yield tmp
                publish(tmp, path)
            except BaseException:
                _unlink_all(tmp, tmp + "1")
                raise
    except (OSError, RuntimeError) as e:
        problem = write_problem(e, path, need_bytes)
        if problem is None:
            raise
        raise problem from None


def _write_synced(name: str, data_writer) -> None:
    with open(name, "wb") as f:
        data_writer(f)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data_writer, need_bytes: int = 0) -> None:
    """Write a file atomically: ``data_writer(fileobj)`` writes into a temporary file in the
    same folder, which is fsynced and renamed over ``path``. On any error the temporary file
    is removed and ``path`` is untouched."""
    with written_beside(path, need_bytes=need_bytes) as tmp:
        _write_synced(tmp, data_writer)


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
    sidecar (:func:`write_pair`: the previous capture of that name stays readable until the
    new one is). Returns the npz path. ``compress`` deflates the members that gain from it
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
    need = sum(np.asarray(v).nbytes for v in payload.values())
    write_pair(path, lambda f: _write_npz(f, payload, compress), meta, need_bytes=need)
    cap.meta = meta
    return path


def pending_sidecar_path(path: str | os.PathLike) -> Path:
    """Where :func:`write_pair` puts the new sidecar while it renames the new npz in place
    (``.<name>.capture.json.pending``); it vouches for the npz only during that instant,
    or after a writer was killed in it."""
    side = sidecar_path(path)
    return side.with_name(f".{side.name}.pending")


def _sidecar_bytes(meta: dict, npz_name: str, npz_hash: str) -> bytes:
    side_meta = dict(meta)
    side_meta["npz_file"] = npz_name
    side_meta["npz_hash"] = npz_hash
    return json.dumps(side_meta, indent=2, default=_json_default).encode()


def _read_json(p: Path) -> dict | None:
    try:
        d = json.loads(p.read_bytes())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _roll_forward(path: Path) -> None:
    """Finish or undo the publish of a writer killed between its renames (call it holding
    the lock): a pending sidecar that vouches for the npz in place becomes the sidecar;
    one that does not (the npz rename never happened) is dropped."""
    pending = pending_sidecar_path(path)
    if not pending.exists():
        return
    d = _read_json(pending)
    if d is not None and path.is_file() and d.get("npz_hash") == file_hash(path):
        os.replace(pending, sidecar_path(path))
    else:
        _unlink_all(pending)


def write_pair(path: str | os.PathLike, npz_writer, meta: dict, need_bytes: int = 0) -> None:
    """Write a capture's npz (``npz_writer(fileobj)``) and its sidecar (``meta`` plus the
    npz's name and hash) so that the capture of that name is complete at every instant:
    the old pair until the new one is. Holding the name's lock (:func:`output_lock`; a
    second writer waits and then replaces this one's pair whole), after cleaning up what
    killed writers left (:func:`remove_leftovers`, :func:`_roll_forward`):

    1. the npz and the sidecar are written to temporary files and fsynced;
    2. the sidecar is renamed to the pending name (:func:`pending_sidecar_path`);
    3. the npz is renamed over ``path``: it is complete by the pending sidecar;
    4. the pending sidecar is renamed over the sidecar: the new pair is in place.

    SIGINT and SIGTERM wait until the renames are done; a kill between them leaves a
    capture that reads (:func:`verified_npz`) and that the next writer completes. Any error
    before step 3 leaves the old pair as it was and no temporary file; a full disk or a
    permission problem is BadInput naming the folder."""
    path = Path(path)
    side, pending = sidecar_path(path), pending_sidecar_path(path)
    tmp_npz = tmp_side = None
    try:
        with output_lock(path):
            _roll_forward(path)
            remove_leftovers(path)
            remove_leftovers(side)
            try:
                tmp_npz = _temp_beside(path)
                _write_synced(tmp_npz, npz_writer)
                data = _sidecar_bytes(meta, path.name, file_hash(tmp_npz))
                tmp_side = _temp_beside(side)
                _write_synced(tmp_side, lambda f: f.write(data))
                with signals_held():
                    publish(tmp_side, pending)
                    publish(tmp_npz, path)
                    publish(pending, side)
                _fsync_dir(path.parent)
            except BaseException:
                _unlink_all(tmp_npz, tmp_side)
                raise
    except OSError as e:
        problem = write_problem(e, path, need_bytes)
        if problem is None:
            raise
        raise problem from None


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def verified_npz(path: str | os.PathLike):
    """Open a capture's npz and check it against its sidecar: returns ``(file, meta)``, the
    open npz (read from this one file, whatever renames happen meanwhile) and the sidecar
    that vouches for it (the pending one while a writer is between its renames, or after it
    was killed there). Raises CaptureError naming what is wrong."""
    path = Path(path)
    side, pending = sidecar_path(path), pending_sidecar_path(path)
    for attempt in range(4):   # a writer renaming between our reads: look again
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise CaptureError(f"capture file {path} does not exist") from None
        except OSError as e:
            raise CaptureError(f"capture file {path} cannot be read ({e.strerror})") from None
        digest = _hash_fileobj(f)
        metas = [m for m in (_read_json(side), _read_json(pending)) if m is not None]
        for m in metas:
            if m.get("npz_hash") == digest:
                _check_schema(path, m.get("schema_version"), "its sidecar")
                f.seek(0)
                return f, m
        f.close()
        if attempt < 3:
            time.sleep(0.05)
    if not side.is_file():
        raise CaptureError(f"capture {path.name} has no sidecar {side.name}: "
                           "it was not completely written; capture the video again")
    if _read_json(side) is None:
        raise CaptureError(f"sidecar {side.name} is not valid JSON; capture the video again")
    raise CaptureError(f"capture {path.name} does not match its sidecar (changed or "
                       "partly written); capture the video again")


def _check_schema(path: Path, version, where: str) -> None:
    if version == SCHEMA_VERSION:
        return
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise CaptureError(f"{path.name} is a capture of schema version {version} ({where}), "
                           f"written by a newer emoca_blender; this one reads version "
                           f"{SCHEMA_VERSION}: update the add-on")
    raise CaptureError(f"{path.name} has schema version {version} ({where}); this add-on "
                       f"reads version {SCHEMA_VERSION}: capture the video again")


def copy_capture(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a complete capture (the npz that its sidecar vouches for) to ``dst`` by
    :func:`write_pair`."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        return
    f, meta = verified_npz(src)
    with f:
        meta = {k: v for k, v in meta.items() if k not in ("npz_file", "npz_hash")}
        write_pair(dst, lambda out: shutil.copyfileobj(f, out), meta,
                   need_bytes=os.fstat(f.fileno()).st_size)


def is_complete(path: str | os.PathLike) -> bool:
    """True when the npz exists and its sidecar vouches for it (hash and schema)."""
    try:
        f, _ = verified_npz(path)
    except CaptureError:
        return False
    f.close()
    return True


def load_capture(path: str | os.PathLike, check_sidecar: bool = True) -> Capture:
    """Load and validate a capture. Raises CaptureError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CaptureError(f"capture file {path} does not exist")
    if check_sidecar:
        f, _ = verified_npz(path)
    else:
        f = open(path, "rb")
    try:
        with f, np.load(f, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CaptureError(f"{path.name} is not a readable capture file ({e})") from None
    if "meta_json" not in data:
        raise CaptureError(f"{path.name} has no metadata: not a capture file")
    meta = json.loads(str(data.pop("meta_json")))
    _check_schema(path, meta.get("schema_version"), "its own metadata")
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
           "sidecar_path", "atomic_write_bytes", "describe", "copy_capture", "write_pair",
           "verified_npz", "output_lock", "written_beside", "write_problem"]
