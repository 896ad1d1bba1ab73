"""Shared bench helpers: the machine description and result rows."""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
SHARED_MEDIA = ROOT.parent / "shared" / "media"
DEMO_CLIPS = ROOT / ".cache" / "demo" / "clips"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, Python {platform.python_version()}, {platform.system()}"


def row(bench: str, case: str, metric: str, value: float, unit: str, target: str = "",
        ok: bool | None = None) -> dict:
    return {"bench": bench, "case": case, "metric": metric, "value": value, "unit": unit,
            "target": target, "ok": ok}


def clips() -> list[Path]:
    out = sorted(SHARED_MEDIA.glob("*/*.mp4")) if SHARED_MEDIA.is_dir() else []
    out += sorted(DEMO_CLIPS.glob("*.mp4"))
    return out
