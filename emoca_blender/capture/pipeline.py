"""The capture job: video -> backend -> gaps -> filter -> Capture file, with a cache.

Everything the backends share lives here, once: input checks with clear errors, the
content-keyed cache, streaming decode, gap filling, temporal filtering, metadata, atomic
writing and cancellation.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import __version__, capture_file
from . import filters, video
from ..arkit import ARKIT_NAMES
from ..backends import BACKENDS, get_backend
from ..errors import BadInput

DEFAULT_CACHE = Path(os.environ.get("EMOCA_BLENDER_CACHE",
                                    Path.home() / ".cache" / "emoca_blender"))

# Curves the temporal filter smooths (landmarks are kept raw: they are measurements).
FILTERED = ("arkit", "expression", "head_rotation", "head_translation", "jaw", "eyes",
            "detail")


@dataclass
class CaptureSettings:
    backend: str = "mediapipe"
    filter_strength: float = 0.5      # 0 = off
    max_gap: int = 5                  # frames; longer gaps stay invalid and hold the pose
    face_index: int = 0               # 0 = the largest face at the start
    start: int = 0                    # first frame (inclusive)
    end: int | None = None            # last frame (exclusive), None = to the end
    device: str = "auto"              # for GPU backends
    flame_dir: str = ""               # the user's FLAME folder (flame-fit backend)
    emoca_checkpoint: str = ""        # EMOCA v2/v1 .ckpt or DECA deca_model.tar (emoca backend)
    neutral_frame: int = -1           # video frame showing the actor's neutral; -1 = estimate
    neutral_from: str = ""            # a calibration take of the same actor (.capture.npz)
    emotion: bool = True              # per-frame emotion curves (fer's FER-2013 network)
    emotion_rate: float = 10.0        # emotion samples per second, between interpolated; 0 = all

    def key_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("device")               # the device does not change the result's meaning
        if self.neutral_from:         # the take's content, wherever it lies
            d["neutral_from"] = capture_file.file_hash(self.neutral_from)
        for k in ("emoca_checkpoint", "flame_dir"):
            if d[k]:                  # a model replaced at the same path is another capture
                d[k] = {"path": d[k], "files": _file_signature(d[k])}
        return d


def _file_signature(path: str) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of a file, or of each file in a folder (not recursive): what a
    user-pointed model is, cheaply (hashing a 500 MB checkpoint on every run would not be)."""
    p = Path(path)
    if p.is_file():
        files = [p]
    else:
        files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else []
    out = []
    for f in files:
        st = f.stat()
        out.append((f.name, st.st_size, st.st_mtime_ns))
    return out


@dataclass
class CaptureResult:
    path: Path
    cached: bool
    capture: capture_file.Capture
    timings: dict[str, float] = field(default_factory=dict)


def check_output(path: Path) -> None:
    """Fail early, before any work, when the output cannot be written."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        raise BadInput(f"output folder {folder} does not exist")
    if not folder.is_dir():
        raise BadInput(f"output folder {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInput(f"output folder {folder} is not writable")
    try:  # access() says yes to root and on some read-only mounts: really try
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise BadInput(f"output folder {folder} is not writable ({e.strerror})") from None
    if path.exists() and path.is_dir():
        raise BadInput(f"output {path} is a folder; give a file name ending in .capture.npz")


def output_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.name.endswith(capture_file.SUFFIX):
        if p.suffix == ".npz":
            p = p.with_name(p.name[: -len(".npz")] + capture_file.SUFFIX)
        else:
            p = p.with_name(p.name + capture_file.SUFFIX)
    return p


def cache_file(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"{key}{capture_file.SUFFIX}"


#: the capture cache's size, GB (environment EMOCA_BLENDER_CACHE_GB): beyond it the least
#: recently used entries are removed. Without a limit the cache only grew: every clip and
#: setting adds an entry (a 10-minute 1080p capture is about 100 MB), and every update of
#: the add-on leaves the older entries unreachable (the key includes the code's version).
CACHE_LIMIT_GB = 4.0


def cache_limit_bytes() -> int:
    try:
        gb = float(os.environ.get("EMOCA_BLENDER_CACHE_GB", CACHE_LIMIT_GB))
    except ValueError:
        gb = CACHE_LIMIT_GB
    return int(max(gb, 0.0) * (1 << 30))


def prune_cache(cache_dir: Path, limit: int, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used entries (by modification time, which a cache hit
    renews) until the entries of ``cache_dir`` take at most ``limit`` bytes; ``keep`` (the
    entry just written) stays whatever its size. An entry is a capture and its sidecar; the
    sidecar goes first, so a reader meanwhile finds an incomplete entry (recomputed), never a
    wrong one. Other files (a writer's temporary files) are left alone. Returns the captures
    removed."""
    entries = []
    for npz in Path(cache_dir).glob(f"*{capture_file.SUFFIX}"):
        side = capture_file.sidecar_path(npz)
        try:
            st = npz.stat()
            size = st.st_size + (side.stat().st_size if side.exists() else 0)
        except OSError:
            continue
        entries.append((st.st_mtime_ns, str(npz), npz, side, size))
    total = sum(e[4] for e in entries)
    removed = []
    keep = Path(keep).resolve() if keep is not None else None
    for _, _, npz, side, size in sorted(entries):
        if total <= limit:
            break
        if keep is not None and npz.resolve() == keep:
            continue
        try:
            side.unlink(missing_ok=True)
            npz.unlink(missing_ok=True)
        except OSError:
            continue
        total -= size
        removed.append(npz)
    return removed


_MODEL_HASHES: dict[tuple, str] = {}
_CODE_VERSIONS: dict[tuple, str] = {}


def code_version(pkg: Path | None = None, models: Path | None = None) -> str:
    """A hash of what a capture is computed with besides the video and the settings: the
    core package's sources and the bundled models. It is part of the cache key, so a capture
    cached by another version of the add-on (before an update that changed the solve, say) is
    recomputed instead of being served as this version's. Remembered per process while the
    files' sizes and times hold. ``pkg`` and ``models`` (the package and bundled-model folders)
    default to this installation's."""
    import hashlib

    from ..models.head_model import BUNDLED_DIR

    pkg = Path(__file__).resolve().parents[1] if pkg is None else Path(pkg)
    models = Path(BUNDLED_DIR) if models is None else Path(models)
    files = sorted(pkg.rglob("*.py"))
    if models.is_dir():
        files += sorted(p for p in models.iterdir() if p.is_file())
    stats = []
    for f in files:
        st = f.stat()
        stats.append((str(f), st.st_size, st.st_mtime_ns))
    h = _CODE_VERSIONS.get(tuple(stats))
    if h is None:
        d = hashlib.blake2b(digest_size=12)
        for f in files:
            d.update(os.path.relpath(f, pkg.parent).replace(os.sep, "/").encode() + b"\0")
            d.update(f.read_bytes())
        h = _CODE_VERSIONS[tuple(stats)] = d.hexdigest()
    return h


def _model_hash(path: str) -> str:
    """file_hash of a model file, remembered per process while its size and mtime hold."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    h = _MODEL_HASHES.get(key)
    if h is None:
        h = _MODEL_HASHES[key] = capture_file.file_hash(path)
    return h


def _emotion_hook(settings: CaptureSettings, fps: float, progress):
    """The per-frame emotion hook for a capture, or None (off, or fer missing: a warning)."""
    if not settings.emotion:
        return None
    from ..emotion import network as emotion

    try:
        return emotion.EmotionHook(stride=emotion.stride_for(fps, settings.emotion_rate))
    except emotion.EmotionUnavailable as e:
        if progress is not None:
            progress.message(f"warning: no emotion curves: {e}")
        return None


def _then(frames, at_end):
    """``frames``, calling ``at_end()`` once they run out (before the backend's solve)."""
    yield from frames
    if at_end is not None:
        at_end()


def _after_capture(settings: CaptureSettings, cap, out: Path, progress, cancel) -> None:
    """A backend's ``after_capture(capture, path, settings, progress, cancel)`` classmethod,
    when it has one, runs once the capture is saved (emoca: the displacement maps beside it)."""
    module, cls, _ = BACKENDS[settings.backend]
    import importlib

    klass = getattr(importlib.import_module(f"..backends.{module}", __package__), cls)
    after = getattr(klass, "after_capture", None)
    if after is not None:
        after(cap, out, settings, progress, cancel)


def run_capture(video_path: str | os.PathLike, output: str | os.PathLike,
                settings: CaptureSettings | None = None, progress=None,
                cache_dir: Path | None = DEFAULT_CACHE,
                cancel: Callable[[], bool] | None = None) -> CaptureResult:
    """Capture one face track from a video into ``output`` (a ``.capture.npz``).

    Raises BadInput for input problems (missing/undecodable video, no face, bad output
    folder), Cancelled when ``cancel()`` turns true. Nothing is written unless the
    capture completes.
    """
    from .solve import single_threaded_blas

    with single_threaded_blas():   # small numpy work beside MediaPipe's threads
        return _run_capture(video_path, output, settings, progress, cache_dir, cancel)


def _face_index_problem(face_index: int, tinfo: dict, n: int, start: int, name: str) -> str:
    """Why ``--face-index`` found nothing: how many faces the detector saw, where."""
    seen = int(tinfo.get("faces_seen", 0))
    with_faces = tinfo.get("frames_with_faces")
    where = ""
    if seen and tinfo.get("most_faces_frame") is not None:
        where = f", first at frame {int(tinfo['most_faces_frame'])}"
    counts = f"; a face in {with_faces} of the {n} frames" if with_faces is not None else ""
    why = (f"at most {seen} face{'s' if seen != 1 else ''} in one frame{where}{counts}" if seen
           else f"no face in any of the {n} frames")
    return (f"face index {face_index} asks for face number {face_index + 1} by size, but the "
            f"detector saw {why} of {name} (frames {start}..{start + n - 1}); use "
            f"--face-index {max(seen - 1, 0)} or less")


def _source_meta(path: Path, vhash: str) -> dict:
    """The capture's ``source`` entry: the video this run was given, and its content hash."""
    return {"path": str(path.resolve()), "hash": vhash, "size": path.stat().st_size,
            "name": path.name}


def _run_capture(video_path, output, settings, progress, cache_dir, cancel) -> CaptureResult:
    settings = settings or CaptureSettings()
    t_all = time.perf_counter()
    out = output_path(output)
    check_output(out)
    if settings.backend not in BACKENDS:
        raise BadInput(f"unknown backend {settings.backend!r}; available: {', '.join(BACKENDS)}")
    if settings.neutral_from and not Path(settings.neutral_from).is_file():
        raise BadInput(f"calibration take {settings.neutral_from} does not exist (--neutral-from "
                       f"wants a .capture.npz of the same actor at rest)")
    info = video.probe(video_path)
    if progress is not None and not info.fps_known:
        progress.message(f"warning: {info.path.name} has no frame rate; assuming {info.fps:g} fps")
    t0 = time.perf_counter()
    vhash = capture_file.file_hash(info.path)
    t_hash = time.perf_counter() - t0
    key = capture_file.settings_key(vhash, settings.backend,
                                    {**settings.key_dict(), "code": code_version()})
    if cache_dir is not None:
        cached = cache_file(Path(cache_dir), key)
        if capture_file.is_complete(cached):
            try:
                cap = capture_file.load_capture(cached)
                if settings.emotion and "emotion_probs" not in cap:
                    raise capture_file.CaptureError("cached without emotion")  # recompute
                try:
                    os.utime(cached)          # used now: the last entry the limit removes
                except OSError:
                    pass
                # the same video (by content) may have been captured at another path: the
                # output names the video this run was given (the reference video, the
                # emotion tools and later runs open it), so it is written anew then
                source = _source_meta(info.path, vhash)
                if cap.meta.get("source") == source:
                    capture_file.copy_capture(cached, out)
                else:
                    cap.meta["source"] = source
                    capture_file.save_capture(cap, out)
                _after_capture(settings, cap, out, progress, cancel)
                return CaptureResult(out, True, cap, {"total": time.perf_counter() - t_all})
            except capture_file.CaptureError:
                pass  # a damaged cache entry is simply recomputed

    start = max(0, int(settings.start))
    end = settings.end if settings.end is None else int(settings.end)
    if end is not None and end <= start:
        raise BadInput(f"frame range is empty (start {start}, end {end})")
    n_hint = max(1, (end if end is not None else info.frame_count) - start)

    flame_kw = ({"flame_dir": settings.flame_dir or None, "device": settings.device}
                if settings.backend in ("flame-fit", "emoca") else {})
    if settings.backend == "emoca":
        flame_kw["checkpoint"] = settings.emoca_checkpoint or None
    if settings.neutral_from:
        if settings.backend != "mediapipe":
            raise BadInput(f"--neutral-from is for the mediapipe backend, not {settings.backend}")
        flame_kw["neutral_from"] = settings.neutral_from
    backend = get_backend(settings.backend, face_index=settings.face_index,
                          neutral_frame=int(settings.neutral_frame), **flame_kw)
    t_probe = 0.0   # faces are counted inside the stream (num_faces=0), no separate pass
    if progress is not None:
        if getattr(backend, "device_line", None):   # the network backends: where they run
            progress.message(backend.device_line)
        progress.stage("track", n_hint)
    t0 = time.perf_counter()
    pts: list[float] = []
    frames = video.iter_frames(info.path, start, end, times=pts)
    hook = _emotion_hook(settings, info.fps, progress)
    extra = {"frame_hook": hook} if hook is not None else {}
    try:
        tracked = backend.track(_then(frames, getattr(hook, "flush", None)), n_hint, info.fps,
                                info.width, info.height,
                                num_faces=0, progress=progress, cancel=cancel, **extra)
    except BaseException:
        if hook is not None:
            hook.close()
        raise
    finally:
        frames.close()
    t_track = time.perf_counter() - t0
    N = tracked.found.shape[0]
    if N == 0:
        raise BadInput(f"{info.path.name} holds no frames in the range {start}..{end}")
    num_faces = int(tracked.info.get("faces_seen", 1))
    if settings.face_index > 0 and (num_faces <= settings.face_index
                                    or not tracked.found.any()):
        raise BadInput(_face_index_problem(settings.face_index, tracked.info, N, start,
                                           info.path.name))
    if not tracked.found.any():
        raise BadInput(f"no face found in any of the {N} frames searched in {info.path.name}")
    timestamps, vfr = video.frame_times(pts, N, start, info.fps)
    if progress is not None:
        if vfr is not None:
            progress.message(f"warning: {info.path.name} has a variable frame rate "
                             f"({vfr[0]:.3g} to {vfr[1]:.3g} fps); timestamps are its "
                             f"presentation times, keyframes are one per frame at "
                             f"{info.fps:.4g} fps")
        claimed = info.frame_count - start
        if end is None and claimed - N > max(2, 0.02 * claimed):
            progress.message(f"warning: {info.path.name} holds {N} decodable frames from frame "
                             f"{start}, its header claims {claimed}: the file may be truncated")

    t0 = time.perf_counter()
    arrays: dict[str, np.ndarray] = {}
    valid = interp = None
    for name, a in tracked.arrays.items():
        filled, valid, interp = filters.fill_gaps(a, tracked.found, settings.max_gap)
        arrays[name] = filled
    assert valid is not None and interp is not None
    arrays["arkit_raw"] = np.clip(arrays["arkit"], 0, 1)
    for name in FILTERED:
        if name in arrays:
            # per channel group: the fast channels (jaw, mouth opening, lips, lids) keep peaks
            names = (tracked.names.get(name, ARKIT_NAMES) if name in ("arkit", "expression")
                     else None)
            tol = filters.JAW_PEAK_TOLERANCE if name == "jaw" else None
            arrays[name] = filters.smooth_by_group(arrays[name], info.fps,
                                                   settings.filter_strength, valid, names, tol)
    arrays["arkit"] = np.clip(arrays["arkit"], 0.0, 1.0)
    arrays["blinks"] = np.clip(arrays["blinks"], 0.0, 1.0)
    arrays["valid"] = valid
    arrays["interpolated"] = interp
    arrays["timestamps"] = timestamps
    arrays["shape"] = tracked.shape if tracked.shape is not None else np.zeros(0, np.float32)
    arrays.update(tracked.constants)
    emotion_info = None
    if hook is not None:
        emo = hook.result(N, settings.max_gap)
        arrays["emotion_probs"] = emo["emotion_probs"]
        arrays["emotion_features"] = emo["emotion_features"]
        emotion_info = {k: emo[k] for k in ("frames_analysed", "stride", "frames_without_face")}
        emotion_info["classes"] = list(emo["names"]["emotion_probs"])
    t_filter = time.perf_counter() - t0

    meta = {
        "fps": info.fps,
        "width": info.width,
        "height": info.height,
        "frame_start": start,
        "variable_frame_rate": vfr is not None,
        "source": _source_meta(info.path, vhash),
        "backend": {"name": settings.backend, "licence": BACKENDS[settings.backend][2],
                    "model_files": {k: {"path": v, "hash": _model_hash(v)}
                                    for k, v in backend.model_files().items()},
                    **tracked.info},
        "head_model": tracked.head_model,
        "emotion": emotion_info,
        "settings": asdict(settings),
        "cache_key": key,
        "emoca_blender_version": __version__,
    }
    names = dict(tracked.names)
    if hook is not None:
        names.update(emo["names"])
    cap = capture_file.make_capture(arrays, meta, names)
    t0 = time.perf_counter()
    timings = {"hash": t_hash, "probe": t_probe, "track": t_track, "filter": t_filter}
    cap.meta["timings"] = {k: round(v, 4) for k, v in timings.items()}
    capture_file.save_capture(cap, out)
    timings["write"] = time.perf_counter() - t0
    if cache_dir is not None:
        try:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            entry = cache_file(Path(cache_dir), key)
            capture_file.copy_capture(out, entry)
            prune_cache(Path(cache_dir), cache_limit_bytes(), keep=entry)
        except OSError as e:
            if progress is not None:
                progress.message(f"warning: could not write the cache in {cache_dir} ({e})")
    t0 = time.perf_counter()
    _after_capture(settings, cap, out, progress, cancel)
    timings["after_capture"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all
    return CaptureResult(out, False, cap, timings)
