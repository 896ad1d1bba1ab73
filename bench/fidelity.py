"""Fidelity: how well a capture's ARKit curves carry the actor's face (issue 13).

Every clip (../shared/media/*/*.mp4 and the demo clips, see ``common.clips``) is captured
twice with the default settings (``capture CLIP --no-emotion --no-cache``): OLD, from a
temporary ``git worktree`` of ``--baseline`` (default eede3cd, the last commit before this
work), and NEW, from the working tree. Both use the same .venv Python; captures are cached
under .cache/fidelity/<ref or "work">/ keyed by the ref's commit (the working tree: HEAD +
``git diff HEAD`` + the untracked package files), so a re-run without a code change only
measures. The metrics read the capture files with the same code for both columns, and drive
the bundled ICT head's 478 MediaPipe landmarks (their barycentric embedding, applied to the
expression basis: no whole meshes) with the ARKit curves:

1. mouth: Pearson r of the video's inner-lip gap (landmarks 13-14 over the outer eye corners
   33-263) with the driven head's over the valid frames; target >= 0.9.
   The video's gaps are measured on MediaPipe's 3D landmarks (``landmarks3d``: the image
   landmarks with their depth, moved rigidly into the head frame, which leaves the ratios as
   they are) so a turned head does not foreshorten them.
   The driven head's gap is its *visible* opening (:class:`MouthAperture`): seen from the
   front, the height of the gap between the lips at the midline, over its outer eye
   corners' distance -- what MediaPipe's 13/14 mark on a face. The embedded landmarks 13/14
   of the head (the r before 2026-12-07, still printed as "r lmk") are a poor proxy for it:
   ICT's landmark 14 sits on the inner lower lip, so a lip rolled in (mouthRollLower 0.7)
   moves it 10 mm into the mouth while the lips stay closed in a render
   (docs/mouth_aperture.jpg).
   jawOpen at the widest-open video frame is reported.
2. blinks, per eye (right: 159-145 over 33-133; left, the subject's left = eyeBlinkLeft:
   386-374 over 263-362): open gap = 90th percentile; on frames under 15 % of it the mean
   eyeBlink must be >= 0.9 (clips without such frames show "-" and do not count), on frames
   at 80 % or more of it <= 0.15.
3. labels (MEAD, from the file name), on the middle third of the valid frames: angry
   browDown >= 0.3; happy p90 mouthSmile >= 0.6; surprised browInnerUp >= 0.3 and
   |browOuterUpLeft - Right| <= 0.15; disgusted max p90 of (mouthUpperUp, noseSneer,
   browDown) >= 0.4 with p90 mouthSmile <= 0.2; neutral no non-speech channel mean > 0.2.
4. landmark reproduction: on the 10 % most expressive valid frames (largest summed non-gaze
   ARKit), mean over the 468 mesh landmarks of |(landmarks3d - actor neutral) - driven
   displacement| in mm; the actor's neutral = mean landmarks3d over the calibration's neutral
   frames (else the 10 % calmest frames). Reported; target new <= old.

5. emotion on a render (MEAD clips): the emotion network (FER-2013 port, ``emotion``) on the
   video crop and on a render of the driven ICT head (the NEW capture's fitted identity,
   textured from its neutral frame, with teeth, mouth socket and eyes:
   ``emotion_refine.emotion_fidelity``) of each column's ARKit curves, on EMOTION_FRAMES
   evenly spaced frames of the middle third: the share of frames whose render class equals
   the video's, the majority classes and the mean feature distance. Reported (the issue
   sets no target); ``--no-emotion`` skips it.

Targets are judged on the NEW column (the OLD one is informational; with ``--only old`` on
OLD); exit 1 when one is missed. The figures go to .cache/fidelity/latest.json.

    python bench/fidelity.py [--clips SUBSTR] [--only new|old] [--baseline REF]
                             [--recapture] [--markdown]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = common.ROOT
CACHE = ROOT / ".cache" / "fidelity"
PYTHON = ROOT / ".venv" / "bin" / "python"
BASELINE = "eede3cd"

MOUTH_R_MIN = 0.9
BLINK_CLOSED_FRAC, BLINK_OPEN_FRAC = 0.15, 0.8   # of the open gap
BLINK_CLOSED_MIN, BLINK_OPEN_MAX = 0.9, 0.15
EXPRESSIVE_FRACTION = 0.1
EMOTION_FRAMES = 12
LABELS = ("angry", "happy", "surprised", "disgusted", "neutral")

# MediaPipe landmark indices
LIP_UP, LIP_LO, EYE_OUT_R, EYE_OUT_L = 13, 14, 33, 263
EYES = {"left": (386, 374, 263, 362), "right": (159, 145, 33, 133)}   # subject's side


# ----------------------------------------------------------------------------- metrics
def middle_third(valid: np.ndarray) -> np.ndarray:
    """Rows of the middle third of the valid frames (valid frames n//3 .. 2n//3)."""
    idx = np.flatnonzero(np.asarray(valid, bool))
    n = idx.size
    return idx[n // 3: max(2 * n // 3, n // 3 + 1)] if n else idx


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two 1-D signals; NaN when either is constant."""
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 1e-12 else float("nan")


def _dist(p: np.ndarray, i: int, j: int) -> np.ndarray:
    p = np.asarray(p, np.float64)
    return np.linalg.norm(p[..., i, :] - p[..., j, :], axis=-1)


def lip_gap(points: np.ndarray) -> np.ndarray:
    """(N,478,2|3) landmarks -> (N,) inner-lip gap 13-14 over the outer eye corners 33-263."""
    return _dist(points, LIP_UP, LIP_LO) / _dist(points, EYE_OUT_R, EYE_OUT_L)


def eye_gap(points: np.ndarray, side: str) -> np.ndarray:
    """(N,478,2|3) landmarks -> (N,) vertical lid gap over the eye's width, subject's side."""
    up, lo, a, b = EYES[side]
    return _dist(points, up, lo) / _dist(points, a, b)


def landmark_basis(m) -> tuple[np.ndarray, np.ndarray]:
    """(template landmarks (478,3), expression basis in landmark space (K,478,3)) of a head
    model with a barycentric landmark embedding."""
    tri, bary = m.landmark_tri, m.landmark_bary.astype(np.float64)
    B = (m.expression_basis[:, tri].astype(np.float64) * bary[None, :, :, None]).sum(2)
    L0 = (m.v_template[tri].astype(np.float64) * bary[:, :, None]).sum(1)
    return L0, B


def driven_landmarks(L0: np.ndarray, B: np.ndarray, arkit: np.ndarray) -> np.ndarray:
    """(N,K) weights -> (N,478,3) landmarks of the driven head."""
    return L0 + np.einsum("nk,klc->nlc", np.asarray(arkit, np.float64), B)


class MouthAperture:
    """The driven head's visible lip opening, per frame: looking at the face from the front
    (orthographic, along -z), the height of the gap the face surface leaves between the
    lips at the midline (mean of the columns 0.7 and 1.9 mm either side of it), over the
    distance of the outer eye corners 33-263 of the driven landmarks.

    Only the face part's front-facing triangles around the mouth take part (teeth, gums,
    tongue and mouth socket are what one sees *through* the opening); the gap is searched
    between the driven landmarks 0 and 17 (the lips' outer top and bottom)."""

    COLUMNS_M = (-1.9e-3, -0.7e-3, 0.7e-3, 1.9e-3)

    def __init__(self, m, L0: np.ndarray, B: np.ndarray):
        face = list(m.part_names).index("face")
        T = np.asarray(m.v_template, np.float64)
        top, bottom = L0[0], L0[17]
        tri = np.asarray(m.faces)
        v = T[tri]
        keep = ((np.asarray(m.vertex_part)[tri] == face).all(1)
                & (np.abs(v[..., 0]) < 8e-3).all(1)
                & (v[..., 1] > bottom[1] - 12e-3).all(1) & (v[..., 1] < top[1] + 12e-3).all(1)
                & (v[..., 2] > bottom[2] - 25e-3).all(1))
        verts, inv = np.unique(tri[keep], return_inverse=True)
        self.tri = inv.reshape(-1, 3)
        self.T = T[verts]
        self.B = np.asarray(m.expression_basis[:, verts], np.float64)
        self.L0 = L0[[0, 17, EYE_OUT_R, EYE_OUT_L]]
        self.LB = B[:, [0, 17, EYE_OUT_R, EYE_OUT_L]]

    def __call__(self, arkit: np.ndarray) -> np.ndarray:
        a = np.asarray(arkit, np.float64)
        P = self.T + np.einsum("nk,kvc->nvc", a, self.B)
        L = self.L0 + np.einsum("nk,klc->nlc", a, self.LB)
        top, bottom = L[:, 0, 1:2], L[:, 1, 1:2]
        X, Y = P[:, self.tri, 0], P[:, self.tri, 1]                  # (N,F,3)
        front = ((X[..., 1] - X[..., 0]) * (Y[..., 2] - Y[..., 0])
                 - (X[..., 2] - X[..., 0]) * (Y[..., 1] - Y[..., 0])) > 0
        Xn, Yn = np.roll(X, -1, axis=-1), np.roll(Y, -1, axis=-1)
        dx, dy = Xn - X, Yn - Y                                       # the triangles' edges
        gaps = []
        for x0 in self.COLUMNS_M:
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (x0 - X) / dx
            ok = (dx != 0) & (t >= 0) & (t <= 1)                    # edges crossing x0
            y = Y + np.where(ok, t, 0.0) * dy
            lo = np.where(ok, y, np.inf).min(-1)
            hi = np.where(ok, y, -np.inf).max(-1)
            seen = front & (ok.sum(-1) >= 2)
            lo = np.clip(np.where(seen, lo, bottom), bottom, top)
            hi = np.clip(np.where(seen, hi, bottom), bottom, top)
            order = np.argsort(lo, axis=1)                            # union of the spans
            lo, hi = np.take_along_axis(lo, order, 1), np.take_along_axis(hi, order, 1)
            before = np.concatenate([bottom, np.maximum.accumulate(hi, axis=1)[:, :-1]], 1)
            covered = np.maximum(0.0, hi - np.maximum(lo, before)).sum(1)
            gaps.append((top - bottom)[:, 0] - covered)
        return np.mean(gaps, 0) / np.linalg.norm(L[:, 2] - L[:, 3], axis=-1)


def mouth_metric(lmk2d: np.ndarray, jaw_open: np.ndarray, head_gap: np.ndarray,
                 rows: np.ndarray, head_gap_landmarks: np.ndarray | None = None) -> dict:
    """r of the video's lip gap with the driven head's, and jawOpen at the widest frame
    (``head_gap_landmarks``: the embedded landmarks' gap, reported as ``r_landmarks``)."""
    g = lip_gap(lmk2d[rows])
    r = pearson(g, head_gap[rows])
    widest = int(rows[int(np.argmax(g))])
    out = {"r": r, "jawOpen_widest": float(jaw_open[widest]), "widest_frame": widest,
           "ok": bool(np.isfinite(r) and r >= MOUTH_R_MIN)}
    if head_gap_landmarks is not None:
        out["r_landmarks"] = pearson(g, head_gap_landmarks[rows])
    return out


def blink_metric(gap: np.ndarray, blink: np.ndarray, rows: np.ndarray) -> dict:
    """One eye: gap (N,) lid gap ratio, blink (N,) that eye's eyeBlink."""
    g, b = np.asarray(gap, np.float64)[rows], np.asarray(blink, np.float64)[rows]
    open_gap = float(np.percentile(g, 90)) if g.size else float("nan")
    closed = g < BLINK_CLOSED_FRAC * open_gap
    opened = g >= BLINK_OPEN_FRAC * open_gap
    out = {"open_gap": open_gap, "closed_frames": int(closed.sum()),
           "closed_blink": float(b[closed].mean()) if closed.any() else None,
           "open_blink": float(b[opened].mean()) if opened.any() else None}
    cb, ob = out["closed_blink"], out["open_blink"]
    out["closed_ok"] = None if cb is None else cb >= BLINK_CLOSED_MIN
    out["open_ok"] = None if ob is None else ob <= BLINK_OPEN_MAX
    return out


def label_of(name: str) -> str | None:
    """The MEAD emotion label in a file name (M030_level_3_angry_016.mp4 -> angry)."""
    m = re.search(r"_level_\d+_([a-z]+)_", name)
    return m.group(1) if m and m.group(1) in LABELS else None


def _ch(arkit: np.ndarray, *names: str) -> np.ndarray:
    from emoca_blender.arkit import INDEX
    return np.asarray(arkit, np.float64)[:, [INDEX[n] for n in names]].mean(1)


def label_metric(label: str, arkit: np.ndarray, rows: np.ndarray) -> dict:
    """The label check on the middle-third rows: {"value", "detail", "target", "ok"}."""
    from emoca_blender.arkit import ARKIT_NAMES

    a = np.asarray(arkit, np.float64)[rows]
    p90 = lambda x: float(np.percentile(x, 90))  # noqa: E731
    LR = lambda s: _ch(a, s + "Left", s + "Right")  # noqa: E731
    if label == "angry":
        v = float(LR("browDown").mean())
        return {"value": v, "detail": f"browDown {v:.2f}", "target": ">= 0.3", "ok": v >= 0.3}
    if label == "happy":
        v = p90(LR("mouthSmile"))
        return {"value": v, "detail": f"p90 smile {v:.2f}", "target": ">= 0.6", "ok": v >= 0.6}
    if label == "surprised":
        v = float(_ch(a, "browInnerUp").mean())
        d = abs(float(_ch(a, "browOuterUpLeft").mean() - _ch(a, "browOuterUpRight").mean()))
        return {"value": v, "asym": d, "detail": f"innerUp {v:.2f} |outerL-R| {d:.2f}",
                "target": ">= 0.3, asym <= 0.15", "ok": v >= 0.3 and d <= 0.15}
    if label == "disgusted":
        parts = {s: p90(LR(s)) for s in ("mouthUpperUp", "noseSneer", "browDown")}
        v, smile = max(parts.values()), p90(LR("mouthSmile"))
        top = max(parts, key=parts.get)
        return {"value": v, "smile": smile, "detail": f"{top} {v:.2f} smile {smile:.2f}",
                "target": ">= 0.4, smile <= 0.2", "ok": v >= 0.4 and smile <= 0.2}
    if label == "neutral":
        mean = a.mean(0)
        over = [(n, float(mean[i])) for i, n in enumerate(ARKIT_NAMES)
                if not n.startswith(("jaw", "mouth")) and mean[i] > 0.2]
        v = max((x for _, x in over), default=float(max(
            (mean[i] for i, n in enumerate(ARKIT_NAMES) if not n.startswith(("jaw", "mouth"))))))
        det = ", ".join(f"{n} {x:.2f}" for n, x in over) or f"max {v:.2f}"
        return {"value": v, "over": over, "detail": det, "target": "none > 0.2 (non-speech)",
                "ok": not over}
    raise ValueError(f"no check for label {label!r}")


def energy(arkit: np.ndarray) -> np.ndarray:
    """(N,) summed non-gaze ARKit weights."""
    from emoca_blender.arkit import ARKIT_NAMES
    keep = [i for i, n in enumerate(ARKIT_NAMES) if not n.startswith("eyeLook")]
    return np.asarray(arkit, np.float64)[:, keep].sum(1)


def calmest(arkit: np.ndarray, valid: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Rows of the ``fraction`` valid frames with the least non-gaze energy (at least 3)."""
    idx = np.flatnonzero(np.asarray(valid, bool))
    k = int(min(idx.size, max(3, round(fraction * idx.size))))
    return idx[np.argsort(energy(arkit[idx]), kind="stable")[:k]]


def reproduction_mm(lmk3d: np.ndarray, arkit: np.ndarray, neutral_rows: np.ndarray,
                    valid: np.ndarray, B: np.ndarray,
                    fraction: float = EXPRESSIVE_FRACTION, L0: np.ndarray | None = None
                    ) -> dict:
    """Mean |(landmarks3d - neutral) - driven displacement| over the 468 mesh landmarks on
    the ``fraction`` most expressive valid frames, in mm. With the head's landmarks ``L0``,
    the observed motion is first brought to the head's size (by the outer eye corners'
    distance): captures normalise the face to their own head model's size."""
    idx = np.flatnonzero(np.asarray(valid, bool))
    k = int(min(idx.size, max(1, round(fraction * idx.size))))
    rows = idx[np.argsort(-energy(arkit[idx]), kind="stable")[:k]]
    L = np.asarray(lmk3d, np.float64)
    neutral = L[neutral_rows].mean(0)
    obs = L[rows, :468] - neutral[:468]
    if L0 is not None:
        obs = obs * (_dist(L0, EYE_OUT_R, EYE_OUT_L) / _dist(neutral, EYE_OUT_R, EYE_OUT_L))
    drv = np.einsum("nk,klc->nlc", np.asarray(arkit, np.float64)[rows], B[:, :468])
    err = np.linalg.norm(obs - drv, axis=-1).mean() * 1000.0
    return {"mm": float(err), "frames": int(k),
            "observed_mm": float(np.linalg.norm(obs, axis=-1).mean() * 1000.0)}


def neutral_rows(cap) -> tuple[np.ndarray, str]:
    """Video rows of the capture's calibration neutral frames, else the calmest 10 %."""
    valid = np.asarray(cap["valid"], bool)
    be = cap.meta.get("backend") or {}
    cal = be.get("calibration") or {}
    nf = cal.get("neutral_frames")
    # the calibration's rows index the frames with a face and blendshape scores; when no
    # frame was found without scores, those are the valid, not interpolated frames
    if nf and be.get("frames_from_landmarks_only", 1) == 0:
        found = np.flatnonzero(valid & ~np.asarray(cap["interpolated"], bool))
        nf = np.asarray(nf, int)
        if nf.max() < found.size:
            return found[nf], "calibration"
    return calmest(cap["arkit"], valid), "calmest 10%"


def clip_metrics(cap, name: str, head) -> dict:
    """Every metric of one capture (head = (L0, B) of the ICT head's landmarks, and its
    MouthAperture)."""
    from emoca_blender.arkit import INDEX

    L0, B, aperture = head
    valid = np.asarray(cap["valid"], bool)
    rows = np.flatnonzero(valid)
    ark = np.asarray(cap["arkit"], np.float64)
    l2d = np.asarray(cap["landmarks3d"], np.float64)   # the video's, pose-free (see 1.)
    out: dict = {"frames": int(valid.size), "valid": int(rows.size)}
    out["mouth"] = mouth_metric(l2d, ark[:, INDEX["jawOpen"]], aperture(ark), rows,
                                lip_gap(driven_landmarks(L0, B, ark)))
    out["blink"] = {side: blink_metric(eye_gap(l2d, side), ark[:, INDEX[f"eyeBlink{side.title()}"]],
                                       rows) for side in EYES}
    label = label_of(name)
    if label:
        out["label"] = {"label": label, **label_metric(label, ark, middle_third(valid))}
    nr, src = neutral_rows(cap)
    out["reproduction"] = {**reproduction_mm(cap["landmarks3d"], ark, nr, valid, B, L0=L0),
                           "neutral": src}
    return out


def emotion_metric(clip: Path, caps: dict) -> dict:
    """Section 5 for one clip: {column: {"agree", "class", "feat_dist"}, "video": class}.
    Every column's ARKit curves are rendered on the judged (last) column's head, so the
    columns differ only in their curves."""
    from emoca_blender.capture import video
    from emoca_blender.emotion import network as emotion
    from emoca_blender.emotion.refine import capture_head, emotion_fidelity

    cols = list(caps)
    ref = caps[cols[-1]]
    n = ref.n_frames
    curves = {c: np.asarray(caps[c]["arkit"], np.float32) for c in cols
              if caps[c].n_frames == n}
    rows = middle_third(ref["valid"])
    pick = rows[np.unique(np.linspace(0, len(rows) - 1, EMOTION_FRAMES).round().astype(int))]
    fid = emotion_fidelity(ref, video.iter_frames(clip, 0, n), curves, pick,
                           head=capture_head(ref))
    cin = fid["input_class"]
    def name(cls):
        return emotion.CLASS_NAMES[int(np.bincount(cls, minlength=7).argmax())]

    out: dict = {"video": name(cin) if cin.size else "-", "frames": int(cin.size)}
    for c in curves:
        k = fid[c]["class"]
        out[c] = {"agree": float((k == cin).mean()) if cin.size else float("nan"),
                  "class": name(k) if k.size else "-",
                  "feat_dist": float(np.mean(fid[c]["feat_dist"])) if k.size else float("nan")}
    return out


def embedding_problems(m) -> list[int]:
    """Landmarks whose embedding triangle lies off the face and eyeballs (a broken embedding)."""
    if m.vertex_part is None or not m.part_names:
        return []
    ok = [i for i, p in enumerate(m.part_names) if p == "face" or p.startswith("eyeball")]
    part = np.asarray(m.vertex_part)[m.landmark_tri]
    return [int(i) for i in np.flatnonzero(~np.isin(part, ok).all(1))]


# ----------------------------------------------------------------------------- captures
def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


def work_key() -> str:
    """HEAD + the working tree's changes to the package and its data: ``git diff HEAD`` (by
    content, binary files too) and the untracked files git does not ignore."""
    h = hashlib.sha1(_git("rev-parse", "HEAD").encode())
    paths = ("emoca_blender", "bundled_models")
    changed = _git("diff", "HEAD", "--name-only", "--", *paths).split()
    changed += _git("ls-files", "--others", "--exclude-standard", "--", *paths).split()
    for f in sorted(set(changed)):
        h.update(f.encode() + b"\0")
        if (ROOT / f).is_file():
            h.update(hashlib.sha1((ROOT / f).read_bytes()).digest())
    return "work-" + h.hexdigest()[:16]


def _capture(clip: Path, out: Path, code: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(code)}
    cmd = [str(PYTHON), "-m", "emoca_blender", "capture", str(clip), "-o", str(out),
           "--no-emotion", "--no-cache"]
    r = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"capture of {clip.name} failed ({code}): {r.stderr.strip()[-600:]}")


class Side:
    """One column: the working tree ("new") or a git ref ("old"), with its capture cache."""

    def __init__(self, column: str, ref: str | None):
        self.column, self.ref = column, ref
        if ref is None:
            self.key, self.dir = work_key(), CACHE / "work"   # refreshed before each capture
        else:
            self.key = _git("rev-parse", "--verify", f"{ref}^{{commit}}").strip()
            self.dir = CACHE / re.sub(r"[^\w.-]", "_", ref)
        self._tree: Path | None = None

    def code(self) -> Path:
        if self.ref is None:
            return ROOT
        if self._tree is None:
            tmp = Path(tempfile.mkdtemp(prefix="fidelity-", dir=CACHE))
            _git("worktree", "add", "--detach", str(tmp / "tree"), self.key)
            self._tree = tmp / "tree"
        return self._tree

    def close(self) -> None:
        if self._tree is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(self._tree)], cwd=ROOT,
                           capture_output=True)
            shutil.rmtree(self._tree.parent, ignore_errors=True)
            self._tree = None

    def capture(self, clip: Path, recapture: bool = False):
        from emoca_blender.capture_file import CaptureError, load_capture

        out = self.dir / f"{clip.stem}.capture.npz"
        keyfile = self.dir / f"{clip.stem}.key"
        if self.ref is None:
            self.key = work_key()     # others may be editing the tree while this runs
        key = f"{self.key} {clip.stat().st_size}"
        if not recapture and keyfile.is_file() and keyfile.read_text() == key:
            try:
                return load_capture(out), True
            except CaptureError:
                pass
        self.dir.mkdir(parents=True, exist_ok=True)
        keyfile.unlink(missing_ok=True)
        _capture(clip, out, self.code())
        keyfile.write_text(key)
        return load_capture(out), False


# ----------------------------------------------------------------------------- report
def _f(v, fmt="{:.2f}") -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else fmt.format(v)


def _ok(v) -> str:
    return "-" if v is None else ("yes" if v else "NO")


def tables(res: dict, cols: list[str]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) per metric; pass = the judged column's (the last)."""
    out = []
    hdr = lambda *t: ["clip", *[f"{c} {x}" for x in t for c in cols]]  # noqa: E731
    rows = []
    for clip, r in res.items():
        m = [r[c]["mouth"] for c in cols]
        rows.append([clip, *[_f(x["r"]) for x in m], *[_f(x.get("r_landmarks")) for x in m],
                     *[_f(x["jawOpen_widest"]) for x in m], f">= {MOUTH_R_MIN}",
                     _ok(m[-1]["ok"])])
    out.append(("1. mouth: r(video lip gap, driven head's visible lip gap); r with the head's "
                "embedded landmarks 13/14 instead (r lmk, not judged); jawOpen at the widest "
                "frame", hdr("r", "r lmk", "jawOpen@widest") + ["target", "pass"], rows))
    rows = []
    for clip, r in res.items():
        for side in EYES:
            b = [r[c]["blink"][side] for c in cols]
            judged = [b[-1]["closed_ok"], b[-1]["open_ok"]]
            judged = [j for j in judged if j is not None]
            rows.append([f"{clip} {side}", *[str(x["closed_frames"]) for x in b],
                         *[_f(x["closed_blink"]) for x in b], *[_f(x["open_blink"]) for x in b],
                         f"closed >= {BLINK_CLOSED_MIN}, open <= {BLINK_OPEN_MAX}",
                         _ok(all(judged) if judged else None)])
    out.append(("2. blinks: eyeBlink on closed (< 15 % of open gap) and open (>= 80 %) frames",
                hdr("closed fr", "closed", "open") + ["target", "pass"], rows))
    rows = []
    for clip, r in res.items():
        if "label" not in r[cols[-1]]:
            continue
        lab = [r[c]["label"] for c in cols]
        rows.append([clip, lab[-1]["label"], *[x["detail"] for x in lab], lab[-1]["target"],
                     _ok(lab[-1]["ok"])])
    if rows:
        out.append(("3. labels (MEAD, middle third)",
                    ["clip", "label", *cols, "target", "pass"], rows))
    rows = []
    for clip, r in res.items():
        rep = [r[c]["reproduction"] for c in cols]
        rows.append([clip, *[_f(x["mm"]) for x in rep], *[_f(x["observed_mm"]) for x in rep],
                     rep[-1]["neutral"], "new <= old" if len(cols) == 2 else "-",
                     _ok(rep[1]["mm"] <= rep[0]["mm"] + 1e-9) if len(cols) == 2 else "-"])
    out.append(("4. landmark reproduction on the 10 % most expressive frames, mm "
                "(observed = |landmarks3d - neutral|)",
                hdr("err mm", "observed mm") + ["neutral", "target", "pass"], rows))
    rows = []
    for clip, r in res.items():
        e = r.get("emotion")
        if not e:
            continue
        got = [e.get(c) or {} for c in cols]
        rows.append([clip, f"{e['video']} ({e['frames']} fr)",
                     *[f"{x.get('class', '-')} {_f(100 * x.get('agree', float('nan')), '{:.0f}')}%"
                       for x in got],
                     *[_f(x.get("feat_dist"), "{:.3f}") for x in got]])
    if rows:
        out.append(("5. emotion class on a render of the driven head vs the video crop "
                    "(MEAD, middle third): render class and agreement; feature distance",
                    ["clip", "video class", *[f"{c} render" for c in cols],
                     *[f"{c} feat dist" for c in cols]], rows))
    return out


def render(tabs, markdown: bool) -> str:
    lines = []
    for title, header, rows in tabs:
        if markdown:
            lines += [f"**{title}**", "", "| " + " | ".join(header) + " |",
                      "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(x if x != "NO" else "**no**" for x in row) + " |"
                      for row in rows]
        else:
            w = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
            lines += [title, "  ".join(h.ljust(n) for h, n in zip(header, w))]
            lines += ["  ".join(str(x).ljust(n) for x, n in zip(row, w)) for row in rows]
        lines.append("")
    return "\n".join(lines)


def judge(r: dict) -> list[str]:
    """The targets one column's metrics miss on one clip."""
    miss = []
    if not r["mouth"]["ok"]:
        miss.append("mouth")
    for side, b in r["blink"].items():
        if b["closed_ok"] is False:
            miss.append(f"blink closed {side}")
        if b["open_ok"] is False:
            miss.append(f"blink open {side}")
    if "label" in r and not r["label"]["ok"]:
        miss.append(f"label {r['label']['label']}")
    return miss


def rows_for_run(res: dict, cols: list[str]) -> list[dict]:
    """``common.row`` rows (for bench/run.py): the judged column's figures."""
    c, out = cols[-1], []
    for clip, r in res.items():
        x = r[c]
        out.append(common.row("fidelity", clip, "mouth r", x["mouth"]["r"], "", f">= {MOUTH_R_MIN}",
                              x["mouth"]["ok"]))
        for side, b in x["blink"].items():
            if b["closed_blink"] is not None:
                out.append(common.row("fidelity", clip, f"eyeBlink closed {side}",
                                      b["closed_blink"], "", f">= {BLINK_CLOSED_MIN}",
                                      b["closed_ok"]))
            if b["open_blink"] is not None:
                out.append(common.row("fidelity", clip, f"eyeBlink open {side}", b["open_blink"],
                                      "", f"<= {BLINK_OPEN_MAX}", b["open_ok"]))
        if "label" in x:
            out.append(common.row("fidelity", clip, f"label {x['label']['label']}",
                                  x["label"]["value"], "", x["label"]["target"], x["label"]["ok"]))
        out.append(common.row("fidelity", clip, "landmark reproduction", x["reproduction"]["mm"],
                              "mm"))
    return out


def measure(clips: list[Path], sides: list[Side], recapture: bool = False, log=print,
            emotion: bool = True) -> dict:
    from emoca_blender.capture_file import load_capture  # noqa: F401  (fail early)
    from emoca_blender.models.head_model import ICT_HEAD, bundled, load_head_model

    m = load_head_model(bundled(ICT_HEAD))
    L0, B = landmark_basis(m)
    head = (L0, B, MouthAperture(m, L0, B))
    res: dict = {}
    try:
        for clip in clips:
            res[clip.name] = {}
            caps = {}
            for s in sides:
                cap, cached = s.capture(clip, recapture)
                log(f"# {s.column} {clip.name}: {cap.n_frames} frames"
                    f"{' (cached)' if cached else ''}")
                res[clip.name][s.column] = clip_metrics(cap, clip.name, head)
                caps[s.column] = cap
            if emotion and label_of(clip.name) and "neutral_landmarks" in caps[sides[-1].column]:
                log(f"# emotion on renders: {clip.name}")
                res[clip.name]["emotion"] = emotion_metric(clip, caps)
    finally:
        for s in sides:
            s.close()
    return {"results": res, "embedding_off_face": embedding_problems(m)}


def run(argv: list[str] | None = None) -> list[dict]:
    """bench/run.py entry: rows of the NEW column (captures cached as above)."""
    args = parse(argv or [])
    cols, sides = _sides(args)
    out = measure(_clips(args), sides, args.recapture, log=lambda s: print(s, file=sys.stderr))
    return rows_for_run(out["results"], cols)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", default=BASELINE, help=f"git ref of OLD (default {BASELINE})")
    p.add_argument("--clips", default="", help="only clips whose name contains this")
    p.add_argument("--only", choices=("new", "old"), help="one column only")
    p.add_argument("--recapture", action="store_true", help="ignore the capture cache")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    p.add_argument("--no-emotion", action="store_true",
                   help="skip section 5 (the emotion network on renders)")
    return p.parse_args(argv)


def _sides(args) -> tuple[list[str], list[Side]]:
    cols = [c for c in ("old", "new") if args.only in (None, c)]
    return cols, [Side(c, args.baseline if c == "old" else None) for c in cols]


def _clips(args) -> list[Path]:
    return [c for c in common.clips() if args.clips in c.name]


def main(argv=None) -> int:
    args = parse(argv)
    clips = _clips(args)
    if not clips:
        print(f"no clip matches {args.clips!r} (demo clips: python tools/fetch_demo_clips.py)",
              file=sys.stderr)
        return 1
    cols, sides = _sides(args)
    out = measure(clips, sides, args.recapture, log=lambda s: print(s, file=sys.stderr),
                  emotion=not args.no_emotion)
    res = out["results"]
    print(f"Machine: {common.machine()}")
    print(f"fidelity: old = {args.baseline} ({sides[0].key[:10]}), new = working tree"
          if len(cols) == 2 else f"fidelity: {cols[0]} only")
    if out["embedding_off_face"]:
        print(f"WARNING: the ICT head's landmarks {out['embedding_off_face']} are embedded off "
              f"the face (their head-side figures measure the embedding, not the animation)")
    print()
    print(render(tables(res, cols), args.markdown))
    missed = {c: {clip: judge(r[c]) for clip, r in res.items()} for c in cols}
    summary = []
    for c in cols:
        n = sum(bool(v) for v in missed[c].values())
        rs = [r[c]["mouth"]["r"] for r in res.values()]
        mm = [r[c]["reproduction"]["mm"] for r in res.values()]
        summary.append(f"{c}: {len(res) - n}/{len(res)} clips meet every target, "
                       f"mean mouth r {np.nanmean(rs):.2f}, mean reproduction {np.mean(mm):.2f} mm")
    judged = cols[-1]
    fails = {k: v for k, v in missed[judged].items() if v}
    print("summary: " + "; ".join(summary))
    if fails:
        print(f"missed ({judged}): " + "; ".join(f"{k}: {', '.join(v)}" for k, v in fails.items()))
    CACHE.mkdir(parents=True, exist_ok=True)
    doc = {"baseline": args.baseline, "keys": {s.column: s.key for s in sides},
           "machine": common.machine(), "judged": judged, "missed": missed, **out}
    tmp = CACHE / "latest.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, default=float))
    tmp.replace(CACHE / "latest.json")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
