"""Emotion retrieval: nearest neighbours in emotion-feature space over captured frames.

An :class:`EmotionIndex` holds the per-frame emotion features (L2 space, the emotion
network's penultimate activation) of the valid frames of one or many captures. A query
(a feature vector, or a frame of a capture) returns the closest frames, at most
``per_clip`` of them from any one clip (default 1, as in EMOCA's retrieval), and -- when
several may come from one clip -- at least ``min_gap`` frames apart. A pose-library helper:
"show me the frames that feel like this one".
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInput


@dataclass
class Match:
    clip: str           # capture name (or path)
    frame: int          # frame within the capture (0-based, capture order)
    distance: float
    label: str = ""     # most probable emotion class at that frame, if known


class EmotionIndex:
    def __init__(self):
        self.features = np.zeros((0, 0), np.float32)
        self.clip = np.zeros(0, np.int64)
        self.frame = np.zeros(0, np.int64)
        self.labels: list[str] = []
        self.clips: list[str] = []
        self._label_of: list[np.ndarray] = []

    def __len__(self) -> int:
        return int(self.frame.shape[0])

    def add(self, name: str, features: np.ndarray, valid: np.ndarray | None = None,
            probs: np.ndarray | None = None, class_names=()) -> None:
        f = np.asarray(features, np.float32)
        if f.ndim != 2 or f.shape[0] == 0:
            raise BadInput(f"{name}: emotion features must be (N,F) with N > 0, got {f.shape}")
        if len(self) and f.shape[1] != self.features.shape[1]:
            raise BadInput(f"{name}: emotion features have {f.shape[1]} values, the index "
                           f"holds {self.features.shape[1]} (different emotion networks?)")
        keep = np.ones(f.shape[0], bool) if valid is None else np.asarray(valid, bool)
        idx = np.flatnonzero(keep)
        k = len(self.clips)
        self.clips.append(name)
        lab = (np.asarray(class_names)[np.asarray(probs).argmax(1)] if probs is not None
               and len(class_names) else np.full(f.shape[0], "", object))
        self._label_of.append(lab)
        self.features = f[idx] if not len(self) else np.concatenate([self.features, f[idx]])
        self.clip = np.concatenate([self.clip, np.full(idx.size, k)])
        self.frame = np.concatenate([self.frame, idx])

    def add_capture(self, cap, name: str | None = None) -> None:
        if "emotion_features" not in cap:
            raise BadInput(f"{name or 'capture'} has no emotion features; capture it again "
                           "without --no-emotion")
        self.add(name or str(cap.meta.get("source", {}).get("name", f"clip{len(self.clips)}")),
                 cap["emotion_features"], cap["valid"] & ~cap["interpolated"],
                 cap.get("emotion_probs"), cap.names.get("emotion_probs", ()))

    @classmethod
    def from_captures(cls, captures) -> "EmotionIndex":
        """Index captures given as paths or (name, Capture) pairs."""
        from ..capture_file import load_capture

        ix = cls()
        for c in captures:
            if isinstance(c, (str, os.PathLike)):
                p = Path(c)
                ix.add_capture(load_capture(p), p.name.replace(".capture.npz", ""))
            else:
                name, cap = c
                ix.add_capture(cap, name)
        return ix

    def query(self, feature: np.ndarray, k: int = 5, per_clip: int = 1, min_gap: int = 0,
              exclude: tuple[str, int, int] | None = None) -> list[Match]:
        """The k nearest frames (L2) to ``feature`` (F,), at most ``per_clip`` per clip and,
        within a clip, at least ``min_gap`` frames apart. ``exclude`` = (clip, frame,
        radius) leaves out the query's own neighbourhood."""
        if not len(self):
            raise BadInput("the emotion index is empty (no valid frames with emotion features)")
        q = np.asarray(feature, np.float32).ravel()
        if q.shape[0] != self.features.shape[1]:
            raise BadInput(f"query feature has {q.shape[0]} values, the index "
                           f"{self.features.shape[1]}")
        d = np.sqrt(np.maximum(((self.features - q) ** 2).sum(1), 0.0))
        order = np.argsort(d, kind="stable")
        taken: dict[int, list[int]] = {}
        out: list[Match] = []
        ex_clip = self.clips.index(exclude[0]) if exclude and exclude[0] in self.clips else None
        for j in order:
            c, f = int(self.clip[j]), int(self.frame[j])
            if ex_clip is not None and c == ex_clip and abs(f - exclude[1]) <= exclude[2]:
                continue
            got = taken.setdefault(c, [])
            if len(got) >= per_clip or any(abs(f - g) < max(min_gap, 1) for g in got):
                continue
            got.append(f)
            out.append(Match(self.clips[c], f, float(d[j]), str(self._label_of[c][f])))
            if len(out) >= k:
                break
        return out

    def query_frame(self, clip: str, frame: int, k: int = 5, per_clip: int = 1,
                    min_gap: int = 0, radius: int = 0) -> list[Match]:
        """Neighbours of a frame that is in the index (its own neighbourhood of ``radius``
        frames excluded)."""
        if clip not in self.clips:
            raise BadInput(f"clip {clip!r} is not in the index ({', '.join(self.clips)})")
        c = self.clips.index(clip)
        hit = np.flatnonzero((self.clip == c) & (self.frame == frame))
        if hit.size == 0:
            raise BadInput(f"frame {frame} of {clip} has no measured emotion (no face there?)")
        return self.query(self.features[hit[0]], k, per_clip, min_gap, (clip, frame, radius))
