"""What a file is, told by its content (magic bytes and structure), never by its name or by
how Blender reacts to it: every command that reads a file checks it here first, so a wrong
or damaged file is one line naming the file, what it is and what the command expected
(exit 2), not a Blender traceback.

Kinds: ``capture`` (an EMOCA ``.capture.npz``: a zip holding ``meta_json.npy``), ``blend``
(walked block by block to its ``ENDB``, so a truncated one is caught; compressed ones are
taken on their magic), ``fbx`` (binary FBX, top-level records walked to the end), and the
kinds a user hands over by mistake (ASCII FBX, Live Link Face CSV, npz, zip, video, image,
text, empty).
"""
from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

from .errors import BadInput

#: how each kind is named in messages
DESCRIPTION = {
    "capture": "an EMOCA capture (.capture.npz)",
    "blend": "a Blender file (.blend)",
    "fbx": "a binary FBX file",
    "fbx-ascii": "an ASCII FBX file (Blender imports binary FBX only)",
    "livelink-csv": "a Live Link Face CSV",
    "csv": "a CSV table",
    "npz": "a NumPy .npz archive without capture metadata",
    "zip": "a zip archive",
    "video": "a video",
    "image": "an image",
    "text": "a text file",
    "empty": "an empty file (0 bytes)",
    "unknown": "binary data of no kind this add-on reads",
}

_FBX_MAGIC = b"Kaydara FBX Binary  \x00"


def identify(path: str | os.PathLike) -> tuple[str, str]:
    """``(kind, detail)`` of the file at ``path``: a kind of :data:`DESCRIPTION`, and what
    is wrong with it when it is damaged (``""`` when it looks whole)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(64)
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return "empty", ""
        if head.startswith(b"BLENDER"):
            return "blend", _blend_damage(f, head, size)
        if head[:4] in (b"\x28\xb5\x2f\xfd", b"\x1f\x8b\x08\x00"):   # zstd / gzip .blend
            return ("blend", "") if path.suffix.lower() == ".blend" else ("unknown", "")
        if head.startswith(_FBX_MAGIC):
            return "fbx", _fbx_damage(f, head, size)
        if head.startswith(b"PK"):
            return _zip_kind(path)
        if head[4:8] == b"ftyp" or head.startswith((b"\x1a\x45\xdf\xa3", b"RIFF")):
            return "video", ""
        if head.startswith((b"\x89PNG", b"\xff\xd8\xff")):
            return "image", ""
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            return "unknown", ""
    if text.lstrip().startswith("; FBX"):
        return "fbx-ascii", ""
    first = text.splitlines()[0] if text else ""
    if first.startswith("Timecode,BlendShapeCount"):
        return "livelink-csv", ""
    if first.count(",") >= 2:
        return "csv", ""
    return "text", ""


def _blend_damage(f, head: bytes, size: int) -> str:
    """Walk a .blend's blocks to ENDB: "" when whole, else what is wrong. Handles the
    12-byte header (Blender <= 4.x: 'BLENDER' + pointer size '_'/'-' + endian 'v'/'V' +
    version) and the large header of Blender 5 ('BLENDER17-01v0500': 64-bit blocks)."""
    if head[7:8] in (b"_", b"-") and head[8:9] in (b"v", b"V") and head[9:12].isdigit():
        ptr = 8 if head[7:8] == b"-" else 4
        end = "<" if head[8:9] == b"v" else ">"
        fmt = end + "4si" + ("Q" if ptr == 8 else "I") + "ii"    # code, len, old, sdna, nr
        pos, len_at = 12, 1
    elif head[7:9].isdigit() and head[9:10] == b"-" and head[12:13] in (b"v", b"V"):
        end = "<" if head[12:13] == b"v" else ">"
        fmt = end + "4siQqq"                                        # code, sdna, old, len, nr
        pos, len_at = int(head[7:9]), 3
    else:
        return "its header is not one Blender writes"
    hsize = struct.calcsize(fmt)
    while True:
        if pos + hsize > size:
            return f"it ends at byte {size} inside its data (truncated)"
        f.seek(pos)
        fields = struct.unpack(fmt, f.read(hsize))
        if fields[0] == b"ENDB":
            return ""
        length = fields[len_at]
        if length < 0:
            return f"a block at byte {pos} is damaged"
        pos += hsize + length


def _fbx_damage(f, head: bytes, size: int) -> str:
    """Walk a binary FBX's top-level records to the null record that ends them."""
    version = struct.unpack("<I", head[23:27])[0]
    fmt = "<QQQB" if version >= 7500 else "<IIIB"
    rsize = struct.calcsize(fmt)
    pos = 27
    while True:
        if pos + rsize > size:
            return f"it ends at byte {size} inside its records (truncated)"
        f.seek(pos)
        end_offset = struct.unpack(fmt, f.read(rsize))[0]
        if end_offset == 0:
            return ""
        if end_offset <= pos or end_offset > size:
            return f"it ends at byte {size} inside its records (truncated)"
        pos = end_offset


def _zip_kind(path: Path) -> tuple[str, str]:
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return "zip", "it is not a whole zip archive (truncated or damaged)"
    if "meta_json.npy" in names:
        return "capture", ""
    if names and all(n.endswith(".npy") for n in names):
        return "npz", ""
    return "zip", ""


def require(path: str | os.PathLike, kinds: tuple[str, ...], command: str) -> str:
    """Check that ``path`` is a whole file of one of ``kinds``; returns its kind. Raises
    BadInput naming the file, what it is and what ``command`` expected."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path} does not exist")
    if path.is_dir():
        raise BadInput(f"{path} is a folder; {command} expects {_expected(kinds)}")
    try:
        kind, damage = identify(path)
    except OSError as e:
        raise BadInput(f"{path} cannot be read ({e.strerror})") from None
    if kind in kinds and not damage:
        return kind
    what = DESCRIPTION[kind]
    if kind in kinds:
        raise BadInput(f"{path} is {what} but damaged: {damage}")
    if damage:
        what += f", damaged: {damage}"
    raise BadInput(f"{path} is {what}; {command} expects {_expected(kinds)}")


def _expected(kinds) -> str:
    return " or ".join(DESCRIPTION[k] for k in kinds)


__all__ = ["identify", "require", "DESCRIPTION"]
