#!/usr/bin/env python3
"""Build the Blender extension zip: ``dist/emoca_blender-<version>.zip``.

    python tools/build_extension.py              # validate the manifest, build the zip
    python tools/build_extension.py --check      # validate only
    python tools/build_extension.py --list       # print the files that would be packed
    python tools/build_extension.py --official   # also validate the zip with Blender's own
                                                 # extension tool (if one can be found)

No Blender needed: the manifest is checked here (the rules of Blender's extension tool:
required keys, types, no empty values, a tagline of at most 64 characters not ending in
punctuation, permission reasons likewise, known tags, SPDX licences, "YEAR Name"
copyrights, semantic versions) and the files are chosen by ``[build]
paths_exclude_pattern`` with Blender's gitignore-like rules (a leading "/" anchors a pattern
at the root, a trailing "/" matches directories only, "*" never crosses "/", "**" spans
folders, "!" re-includes). The archive holds the files at its root, as
``blender --command extension build`` writes them.

``--official`` runs ``blender_ext.py validate`` on the zip, from a ``blender`` binary on
PATH (``blender --command extension validate``) or from the ``bpy`` module's copy of the
extensions add-on; it is skipped with a note when neither exists.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import unicodedata
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = "blender_manifest.toml"

TAGLINE_MAX = 64
REQUIRED = {  # key: type
    "schema_version": str, "id": str, "version": str, "name": str, "tagline": str,
    "maintainer": str, "type": str, "license": list, "blender_version_min": str,
}
OPTIONAL = {
    "blender_version_max": str, "website": str, "copyright": list, "permissions": dict,
    "tags": list, "platforms": list, "wheels": list, "build": dict,
}
PERMISSIONS = {"files", "network", "clipboard", "camera", "microphone"}
PLATFORMS = {"windows-x64", "windows-arm64", "macos-x64", "macos-arm64", "linux-x64"}
# Blender's list of add-on tags (scripts/modules/_bpy_internal/extensions/tags.py).
ADDON_TAGS = {
    "3D View", "Add Curve", "Add Mesh", "Animation", "Bake", "Camera", "Compositing",
    "Development", "Game Engine", "Geometry Nodes", "Grease Pencil", "Import-Export",
    "Lighting", "Material", "Mesh", "Modeling", "Node", "Object", "Paint", "Physics",
    "Pipeline", "Render", "Rigging", "Scene", "Sculpt", "Sequencer", "System", "Text Editor",
    "Tracking", "User Interface", "UV",
}
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
                    r"(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
BLENDER_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


class BuildError(Exception):
    pass


# --------------------------------------------------------------------------------------
# Manifest


def load_manifest(root: Path = ROOT) -> dict:
    path = Path(root) / MANIFEST
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise BuildError(f"{path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise BuildError(f"{path} is not valid TOML: {e}") from None


def _has_control_chars(s: str) -> bool:
    return any(unicodedata.category(c)[0] == "C" for c in s)


def terse_text_problem(value: str) -> str | None:
    """Blender's rule for taglines and permission reasons."""
    if not value.strip():
        return "is empty"
    if len(value) > TAGLINE_MAX:
        return f"is {len(value)} characters long, at most {TAGLINE_MAX} allowed"
    if value != value.strip():
        return "has leading or trailing white space"
    if _has_control_chars(value):
        return "contains control characters"
    if not (value[-1].isalnum() or value[-1] in ")]}"):
        return "ends with punctuation (it must end with a letter, a digit or a bracket)"
    return None


def _empty_values(obj, where: str) -> list[str]:
    out = []
    if isinstance(obj, str):
        if not obj.strip():
            out.append(f"{where} is empty")
    elif isinstance(obj, list):
        if not obj:
            out.append(f"{where} is an empty list")
        for i, v in enumerate(obj):
            out += _empty_values(v, f"{where}[{i}]")
    elif isinstance(obj, dict):
        if not obj:
            out.append(f"{where} is an empty table")
        for k, v in obj.items():
            out += _empty_values(v, f"{where}.{k}" if where else str(k))
    return out


def validate_manifest(m: dict, root: Path | None = ROOT) -> list[str]:
    """Every problem found (empty list: valid)."""
    errors: list[str] = []
    for key, ty in REQUIRED.items():
        if key not in m:
            errors.append(f"missing required key {key!r}")
        elif not isinstance(m[key], ty):
            errors.append(f"{key!r} must be a {ty.__name__}, not {type(m[key]).__name__}")
    for key, ty in OPTIONAL.items():
        if key in m and not isinstance(m[key], ty):
            errors.append(f"{key!r} must be a {ty.__name__}, not {type(m[key]).__name__}")
    unknown = sorted(set(m) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        errors.append(f"unknown keys {unknown}")
    errors += _empty_values(m, "")
    if errors:
        return errors

    if m["schema_version"] != "1.0.0":
        errors.append(f"schema_version is {m['schema_version']!r}, expected '1.0.0'")
    pid = m["id"]
    if not pid.isidentifier() or "__" in pid or pid.startswith("_") or pid.endswith("_"):
        errors.append(f"id {pid!r} must be a Python identifier without leading, trailing or "
                      "double underscores")
    if not SEMVER.match(m["version"]):
        errors.append(f"version {m['version']!r} is not a semantic version (e.g. 1.0.0)")
    for key in ("name", "maintainer"):
        if _has_control_chars(m[key]) or m[key] != m[key].strip():
            errors.append(f"{key} has control characters or surrounding white space")
    if (p := terse_text_problem(m["tagline"])) is not None:
        errors.append(f"tagline {p}")
    if m["type"] not in ("add-on", "theme"):
        errors.append(f"type {m['type']!r} must be 'add-on' or 'theme'")
    for key in ("blender_version_min", "blender_version_max"):
        if key in m and not BLENDER_VERSION.match(m[key]):
            errors.append(f"{key} {m[key]!r} must be three numbers, e.g. 4.2.0")
    for lic in m["license"]:
        if not isinstance(lic, str) or not lic.startswith("SPDX:"):
            errors.append(f"licence {lic!r} must be an SPDX identifier written 'SPDX:<id>'")
    for c in m.get("copyright", []):
        year, _, name = str(c).partition(" ")
        ok_year = bool(re.fullmatch(r"\d{4}(-\d{4})?", year))
        if not ok_year or not name.strip():
            errors.append(f"copyright {c!r} must read 'YEAR Name' or 'YEAR-YEAR Name'")
    for tag in m.get("tags", []):
        if m["type"] == "add-on" and tag not in ADDON_TAGS:
            errors.append(f"tag {tag!r} is not one of Blender's add-on tags")
    for plat in m.get("platforms", []):
        if plat not in PLATFORMS:
            errors.append(f"platform {plat!r} is not one of {sorted(PLATFORMS)}")
    perms = m.get("permissions", {})
    for k, v in perms.items():
        if k not in PERMISSIONS:
            errors.append(f"permission {k!r} is not one of {sorted(PERMISSIONS)}")
        elif not isinstance(v, str):
            errors.append(f"permission {k!r} needs a reason (a string)")
        elif (p := terse_text_problem(v)) is not None:
            errors.append(f"permission {k!r} reason {p}")
    build = m.get("build", {})
    unknown = sorted(set(build) - {"paths", "paths_exclude_pattern"})
    if unknown:
        errors.append(f"[build] has unknown keys {unknown}")
    if "paths" in build and "paths_exclude_pattern" in build:
        errors.append("[build] declares both 'paths' and 'paths_exclude_pattern'")
    for key in ("paths", "paths_exclude_pattern"):
        for p in build.get(key, []):
            if not isinstance(p, str) or not p or "\\" in p or "\n" in p:
                errors.append(f"[build] {key} item {p!r} must be a non-empty string with '/'")
    if root is not None:
        errors += _version_consistency(m, Path(root))
    return errors


def _version_consistency(m: dict, root: Path) -> list[str]:
    """The manifest's version must equal the core's __version__ and bl_info's version."""
    errors = []
    version = m.get("version", "")
    core = root / "emoca_blender" / "__init__.py"
    if core.is_file():
        found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", core.read_text(), re.M)
        if found and found.group(1) != version:
            errors.append(f"manifest version {version} differs from emoca_blender.__version__ "
                          f"{found.group(1)}")
    init = root / "__init__.py"
    if init.is_file():
        try:
            tree = ast.parse(init.read_text())
        except SyntaxError as e:
            return errors + [f"__init__.py does not parse: {e}"]
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                    getattr(t, "id", None) == "bl_info" for t in node.targets):
                try:
                    info = ast.literal_eval(node.value)
                except ValueError:
                    continue
                v = ".".join(str(x) for x in info.get("version", ()))
                if v and v != version.split("-")[0].split("+")[0]:
                    errors.append(f"manifest version {version} differs from bl_info version {v}")
    return errors


# --------------------------------------------------------------------------------------
# File selection


def _glob_segment(seg: str) -> str:
    """One path component's glob as a regex where nothing crosses '/'."""
    out, i, n = [], 0, len(seg)
    while i < n:
        c = seg[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = seg.find("]", i + 2 if seg[i + 1:i + 2] in ("!", "^") else i + 1)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = seg[i + 1:j]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    if pattern.startswith("\\!"):
        pattern = pattern[1:]
    while "//" in pattern:
        pattern = pattern.replace("//", "/")
    anchored = pattern.startswith("/")
    dir_only = pattern.endswith("/")
    segs = [s for s in pattern.strip("/").split("/") if s]
    while segs and segs[0] == "**":
        segs.pop(0)
        anchored = False
    while segs and segs[-1] == "**":
        segs.pop()
        dir_only = True
    body = ""
    for seg in segs:
        body += "(?:[^/]+/)*" if seg == "**" else _glob_segment(seg) + "/"
    body = body[:-1] if body.endswith("/") else body
    prefix = r"\A" if anchored else r"\A(?:[^/]+/)*"
    suffix = "/" if dir_only else r"/?\Z"
    return re.compile(prefix + body + suffix)


class PathPatterns:
    """``[build] paths_exclude_pattern`` as Blender applies it. Paths are relative with '/'
    separators; directories end in '/'. A path is excluded when a pattern matches it and no
    '!' pattern does."""

    def __init__(self, patterns: list[str]):
        self.include: list[re.Pattern[str]] = []
        self.exclude: list[re.Pattern[str]] = []
        for p in patterns:
            negate = p.startswith("!")
            p = p.lstrip("!") if negate else p
            if p:
                (self.include if negate else self.exclude).append(_pattern_regex(p))

    def excluded(self, path: str) -> bool:
        if not any(r.search(path) for r in self.exclude):
            return False
        return not any(r.search(path) for r in self.include)


DEFAULT_EXCLUDE = ["__pycache__/", ".*", "/*.zip", "*.blend[1-9]"]  # Blender's default


def collect_files(root: Path = ROOT, manifest: dict | None = None) -> list[str]:
    """Relative paths (with '/') of the files the zip holds, sorted; the manifest first."""
    root = Path(root)
    manifest = manifest if manifest is not None else load_manifest(root)
    build = manifest.get("build", {})
    out: set[str] = set()
    if "paths" in build:
        for p in build["paths"]:
            full = root / p
            if full.is_dir():
                for dirpath, _, files in os.walk(full):
                    for f in files:
                        rel = Path(dirpath, f).relative_to(root).as_posix()
                        out.add(rel)
            elif full.is_file():
                out.add(Path(p).as_posix())
            else:
                raise BuildError(f"[build] paths lists {p}, which does not exist")
    else:
        patterns = PathPatterns(build.get("paths_exclude_pattern", DEFAULT_EXCLUDE))

        def walk(folder: Path, rel: str) -> None:
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if entry.is_symlink():
                    continue
                r = rel + entry.name
                if entry.is_dir():
                    if not patterns.excluded(r + "/"):
                        walk(Path(entry.path), r + "/")
                elif entry.is_file() and not patterns.excluded(r):
                    out.add(r)

        walk(root, "")
    out.discard(MANIFEST)
    files = [MANIFEST] + sorted(out)
    if manifest.get("type") == "add-on" and "__init__.py" not in files:
        raise BuildError("not a Python package: __init__.py is missing from the build")
    return files


# --------------------------------------------------------------------------------------
# Build


def zip_name(manifest: dict) -> str:
    return f"{manifest['id']}-{manifest['version']}.zip"


def build(root: Path = ROOT, output_dir: Path | None = None, *, verbose: bool = False) -> Path:
    """Validate the manifest and write the zip atomically; returns its path."""
    root = Path(root)
    manifest = load_manifest(root)
    errors = validate_manifest(manifest, root)
    if errors:
        raise BuildError("invalid manifest:\n  " + "\n  ".join(errors))
    files = collect_files(root, manifest)
    output_dir = Path(output_dir) if output_dir is not None else root / "dist"
    output_dir.mkdir(parents=True, exist_ok=True)
    out = output_dir / zip_name(manifest)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=output_dir)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
            for rel in files:
                z.write(root / rel, rel)
                if verbose:
                    print(f"  {rel}")
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return out


# --------------------------------------------------------------------------------------
# Blender's own tool (optional)


def find_blender_ext() -> Path | None:
    """Blender's ``blender_ext.py`` (the extension build/validate tool) from the installed
    ``bpy`` module, without importing bpy; None when there is none."""
    try:
        spec = importlib.util.find_spec("bpy")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return None
    base = Path(spec.origin).parent
    for p in sorted(base.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py")):
        return p
    return None


#: the first Blender with the ``extension`` command line (older ones, e.g. 3.4, lack it)
MIN_BLENDER = (4, 2)


def blender_version(blender: str) -> tuple[int, int] | None:
    """``(major, minor)`` from ``blender --version`` (no window, no display needed); None
    when it does not run or says no version."""
    try:
        r = subprocess.run([blender, "--factory-startup", "--version"], capture_output=True,
                           text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"Blender (\d+)\.(\d+)", r.stdout)
    return (int(m[1]), int(m[2])) if m else None


def extension_tool(blender: str | None = None) -> list[str] | None:
    """The command line of Blender's extension tool (``... validate ZIP``): the ``bpy``
    module's own ``blender_ext.py`` first, else a ``blender`` binary (``blender``, or the one
    on PATH) of version 4.2 or later; an older binary (no ``extension`` command) is never
    used. None when there is no usable tool."""
    if blender is None:
        tool = find_blender_ext()
        if tool is not None:
            return [sys.executable, str(tool)]
        blender = shutil.which("blender")
    if blender and (blender_version(blender) or (0, 0)) >= MIN_BLENDER:
        return [blender, "--factory-startup", "--command", "extension"]
    return None


def official_validate(zip_path: Path, blender: str | None = None) -> tuple[bool, str] | None:
    """Validate a built zip with Blender's own tool (:func:`extension_tool`): ``(ok,
    output)``, or None when no tool is available."""
    tool = extension_tool(blender)
    if tool is None:
        return None
    r = subprocess.run(tool + ["validate", str(zip_path)], capture_output=True, text=True,
                       timeout=300)
    return r.returncode == 0, (r.stdout + r.stderr).strip()


def official_build(root: Path, output: Path, blender: str | None = None) -> Path | None:
    """Build with Blender's own tool (:func:`extension_tool`) into ``output`` (to compare
    with ours); None when no tool is available. Raises BuildError when the tool fails."""
    tool = extension_tool(blender)
    if tool is None:
        return None
    r = subprocess.run(tool + ["build", "--source-dir", str(root), "--output-filepath",
                               str(output)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0 or not output.is_file():
        raise BuildError(f"Blender's extension build failed:\n{r.stdout}{r.stderr}")
    return output


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="extension source folder")
    ap.add_argument("--output-dir", type=Path, default=None, help="default: <root>/dist")
    ap.add_argument("--check", action="store_true", help="validate the manifest only")
    ap.add_argument("--list", action="store_true", help="list the files the zip would hold")
    ap.add_argument("--official", action="store_true",
                    help="also validate the zip with Blender's extension tool if available")
    ap.add_argument("--blender", default=None, help="blender binary for --official")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    try:
        manifest = load_manifest(args.root)
        errors = validate_manifest(manifest, args.root)
        if errors:
            print("error: invalid manifest:\n  " + "\n  ".join(errors), file=sys.stderr)
            return 2
        if args.check:
            print(f"{MANIFEST}: valid ({manifest['id']} {manifest['version']})")
            return 0
        if args.list:
            print("\n".join(collect_files(args.root, manifest)))
            return 0
        out = build(args.root, args.output_dir, verbose=args.verbose)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with zipfile.ZipFile(out) as z:
        n, size = len(z.namelist()), out.stat().st_size
    print(f"built {out} ({n} files, {size / 1024:.0f} KiB)")
    if args.official:
        res = official_validate(out, args.blender)
        if res is None:
            print("note: no bpy module or Blender 4.2+ binary found; skipped the official check")
        else:
            ok, text = res
            print(("official validation passed" if ok else "official validation FAILED") +
                  (f":\n{text}" if text else ""))
            if not ok:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
