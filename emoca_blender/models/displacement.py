"""Per-frame UV displacement maps beside a Capture: a 16-bit PNG image sequence.

For ``NAME.capture.npz`` the maps go in ``NAME.displacement/``:

    disp_000000.png, disp_000001.png, ...   one per captured frame, numbered by video frame
    displacement.json                        how to read them (written last)

Each map is EMOCA/DECA's ``uv_z`` (D_detail on the frame's [jaw, expression, detail], the
Capture's filtered values), times DECA's face/eye UV mask when the checkpoint or the user's
DECA data has it (``uv_z * uv_face_eye_mask``: the network is only trained inside it), plus, when the user's DECA/EMOCA assets have it, the fixed
displacement ``fixed_displacement_256.npy`` (DECA's ``displacement_map = uv_z + fixed``), in
metres along the coarse surface normal, in FLAME's UV space (``head_template.obj``'s UVs;
image row 0 is v = 1, as Blender and OBJ read images). Encoding: a 16-bit grey value ``q``
means ``d = (q / 65535 - 0.5) * 2 * RANGE_M`` metres, so Blender's Displacement node with
Midlevel 0.5 and Scale ``2 * RANGE_M`` reads it as is. Values beyond +-RANGE_M are clipped
(counted in the manifest).

Frames without a face hold the last valid frame's values (as every Capture field does), so
the sequence has no holes and an image-sequence node never shows a missing frame.

The folder is written atomically: into a temporary sibling folder, then renamed into place;
``displacement.json`` records the Capture's hash, so a sequence belongs to one capture.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from .. import capture_file

RANGE_M = 0.02                 # +-2 cm: D_detail's tanh x 0.01 plus DECA's fixed displacement
PATTERN = "disp_{:06d}.png"
MANIFEST = "displacement.json"
SUFFIX = ".displacement"
VERSION = 1


def sequence_dir(capture_path: str | os.PathLike) -> Path:
    p = Path(capture_path)
    name = p.name
    stem = name[: -len(capture_file.SUFFIX)] if name.endswith(capture_file.SUFFIX) else p.stem
    return p.with_name(stem + SUFFIX)


def encode(d: np.ndarray) -> tuple[np.ndarray, int]:
    """Metres -> uint16 codes, and how many values were clipped."""
    x = np.asarray(d, np.float64) / (2 * RANGE_M) + 0.5
    clipped = int(np.count_nonzero((x < 0) | (x > 1)))
    return np.round(np.clip(x, 0.0, 1.0) * 65535).astype(np.uint16), clipped


def decode(q: np.ndarray) -> np.ndarray:
    return (np.asarray(q, np.float64) / 65535.0 - 0.5) * (2 * RANGE_M)


def read_manifest(folder: str | os.PathLike) -> dict:
    p = Path(folder) / MANIFEST
    if not p.is_file():
        raise FileNotFoundError(f"{Path(folder).name} has no {MANIFEST}: the displacement "
                                "sequence is incomplete; capture again with the emoca backend")
    return json.loads(p.read_text())


def frame_files(folder: str | os.PathLike, manifest: dict | None = None) -> list[Path]:
    folder = Path(folder)
    m = manifest or read_manifest(folder)
    return [folder / m["pattern"].format(m["first"] + i) for i in range(m["frames"])]


def read_map(path: str | os.PathLike) -> np.ndarray:
    """(256,256) metres from one PNG of a sequence."""
    import cv2

    q = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if q is None or q.dtype != np.uint16:
        raise ValueError(f"{path} is not a 16-bit displacement map")
    return decode(q)


def is_complete(capture_path: str | os.PathLike) -> bool:
    """The sequence beside ``capture_path`` exists, is complete and belongs to it."""
    folder = sequence_dir(capture_path)
    try:
        m = read_manifest(folder)
    except (FileNotFoundError, ValueError):
        return False
    try:
        if m.get("capture_hash") != capture_file.file_hash(capture_path):
            return False
    except OSError:
        return False
    return all(p.is_file() for p in frame_files(folder, m))


def write_sequence(capture: capture_file.Capture, capture_path: str | os.PathLike,
                   decoder: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
                   fixed: np.ndarray | None = None, mask: np.ndarray | None = None,
                   batch: int = 32, progress=None,
                   cancel: Callable[[], bool] | None = None, info: dict | None = None) -> Path:
    """Write the displacement sequence of ``capture`` (saved at ``capture_path``).

    Args:
        decoder: ``(jaw (B,3), expression (B,50), detail (B,128)) -> (B,256,256)`` metres
            (the D_detail network).
        fixed: optional (256,256) fixed displacement added to every map.
        mask: optional (256,256) face/eye region weights multiplying the network's output
            before the fixed displacement is added (DECA's ``uv_z * uv_face_eye_mask``).
    Returns the folder.
    """
    import cv2

    from ..errors import BadInput, Cancelled

    if "detail" not in capture:
        raise BadInput("this capture has no detail codes: displacement maps need a capture "
                       "made with the emoca backend and a checkpoint with the detail networks")
    capture_path = Path(capture_path)
    folder = sequence_dir(capture_path)
    N = capture.n_frames
    first = int(capture.meta.get("frame_start", 0))
    jaw = np.asarray(capture["jaw"], np.float32)
    exp = np.asarray(capture["expression"], np.float32)
    det = np.asarray(capture["detail"], np.float32)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".part", dir=folder.parent))
    clipped = 0
    lo, hi = np.inf, -np.inf
    try:
        if progress is not None:
            progress.stage("displacement", N)
        for a in range(0, N, batch):
            if cancel is not None and cancel():
                raise Cancelled("capture cancelled")
            b = min(N, a + batch)
            maps = np.asarray(decoder(jaw[a:b], exp[a:b], det[a:b]), np.float64)
            if mask is not None:
                maps = maps * np.asarray(mask, np.float64)[None]
            if fixed is not None:
                maps = maps + np.asarray(fixed, np.float64)[None]
            lo, hi = min(lo, float(maps.min())), max(hi, float(maps.max()))
            for i in range(b - a):
                q, c = encode(maps[i])
                clipped += c
                name = tmp / PATTERN.format(first + a + i)
                if not cv2.imwrite(str(name), q, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
                    raise OSError(f"could not write {name}")
            if progress is not None:
                progress.update(b, N)
        manifest = {
            "version": VERSION, "frames": N, "first": first, "pattern": PATTERN,
            "blender_pattern": "disp_######.png", "fps": capture.fps,
            "valid_frames": int(np.count_nonzero(capture["valid"])),
            "encoding": {"bits": 16, "midlevel": 0.5, "scale_m": 2 * RANGE_M,
                         "formula": "d_m = (q / 65535 - 0.5) * scale_m"},
            "range_m": RANGE_M, "clipped_values": clipped,
            "min_m": lo if N else 0.0, "max_m": hi if N else 0.0,
            "fixed_displacement": fixed is not None,
            "face_eye_mask": mask is not None,
            "uv_space": "FLAME head_template.obj UVs, image row 0 = v 1",
            "size": [256, 256],
            "capture": capture_path.name, "capture_hash": capture_file.file_hash(capture_path),
            **(info or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        os.chmod(tmp, 0o755)
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
