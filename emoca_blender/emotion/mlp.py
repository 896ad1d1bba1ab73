"""Emotion recognition from 3DMM parameters (EMOCA supplementary: the emotion MLP).

A 4-layer MLP (3 hidden layers of 2048 with batch norm and LeakyReLU, then a linear
output) maps identity + expression (+ jaw) parameters to valence, arousal and the
expression class. Trained with the recognition loss of :mod:`emotion_metrics`
(cross-entropy + shake-shake weighted MSE / PCC / CCC), Adam (lr 1e-4, betas 0.9/0.999),
batch 64, class-balanced sampling, a train/validation split and early stopping on the
validation loss (the best epoch's weights are kept).

Training data is a *labelled table of captures*: a CSV with a header and the columns
``capture`` (path to a .capture.npz, relative to the CSV), ``valence``, ``arousal``,
``label`` (class name) and optionally ``start``/``end`` (frame range). Every valid frame
of a listed range becomes one sample with the row's labels.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import BadInput

HIDDEN = 2048


class torch_threads:
    """Run a block with this many torch threads, then restore (torch spins its worker threads
    hard: on a small shared machine 1 thread is often several times faster than 2)."""

    def __init__(self, n: int | None):
        self.n = n

    def __enter__(self):
        import torch

        self.old = torch.get_num_threads()
        if self.n:
            torch.set_num_threads(int(self.n))
        return self

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.old)
        return False


def build_mlp(in_dim: int, n_classes: int, hidden: int = HIDDEN, slope: float = 0.2):
    """The 4-layer MLP: (Linear, BatchNorm1d, LeakyReLU) x 3, Linear -> 2 + n_classes
    outputs (valence, arousal, class logits)."""
    from torch import nn

    layers = []
    d = in_dim
    for _ in range(3):
        layers += [nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(slope)]
        d = hidden
    layers.append(nn.Linear(d, 2 + n_classes))
    return nn.Sequential(*layers)


@dataclass
class EmotionMLP:
    """A trained model with its input normalisation and names."""

    model: object                              # torch nn.Sequential
    mean: np.ndarray
    std: np.ndarray
    class_names: tuple[str, ...]
    input_names: tuple[str, ...] = ()
    history: list[dict] = field(default_factory=list)

    def predict(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """X (N,D) -> valence (N,), arousal (N,), probs (N,C), label (N,) int."""
        import torch

        X = np.asarray(X, np.float32)
        if X.ndim != 2 or X.shape[1] != self.mean.shape[0]:
            raise BadInput(f"emotion MLP expects (N,{self.mean.shape[0]}) inputs, got {X.shape}")
        self.model.eval()
        with torch.no_grad():
            out = self.model(torch.from_numpy((X - self.mean) / self.std)).numpy()
        probs = _softmax(out[:, 2:])
        return {"valence": out[:, 0], "arousal": out[:, 1], "probs": probs,
                "label": probs.argmax(1)}

    def save(self, path: str | Path) -> Path:
        import torch

        p = Path(path)
        # tensors, strings and numbers only: the file loads with torch's weights_only
        # loader, which never runs code from the file (a shared .pt is safe to open)
        history = [{str(k): (int(v) if k == "epoch" else float(v)) for k, v in rec.items()}
                   for rec in self.history]
        payload = {"state_dict": self.model.state_dict(),
                   "mean": torch.as_tensor(np.asarray(self.mean, np.float32)),
                   "std": torch.as_tensor(np.asarray(self.std, np.float32)),
                   "class_names": [str(c) for c in self.class_names],
                   "input_names": [str(c) for c in self.input_names],
                   "hidden": int(self.model[0].out_features), "history": history}
        # atomically: an interrupted save leaves the previous model file as it was
        from ..capture_file import atomic_write_bytes

        atomic_write_bytes(p, lambda f: torch.save(payload, f))
        return p

    @classmethod
    def load(cls, path: str | Path) -> "EmotionMLP":
        import torch

        p = Path(path)
        if not p.is_file():
            raise BadInput(f"emotion MLP file {p} not found")
        what = f"{p.name} is not an emotion MLP written by emotion-train"
        try:
            d = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - pickle/zip errors of any kind
            raise BadInput(f"{what} ({_first_line(e)})") from None
        need = ("state_dict", "mean", "std", "class_names", "input_names", "hidden")
        if not isinstance(d, dict) or not all(k in d for k in need):
            keys = sorted(map(str, d)) if isinstance(d, dict) else type(d).__name__
            raise BadInput(f"{what} (it needs the keys {list(need)}; it holds {keys})")
        try:
            m = build_mlp(len(d["mean"]), len(d["class_names"]), int(d["hidden"]))
            m.load_state_dict(d["state_dict"])
        except (RuntimeError, TypeError, ValueError) as e:
            raise BadInput(f"{what} (its weights do not fit its sizes: {_first_line(e)})") \
                from None
        mean, std = np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32)
        return cls(m.eval(), mean, std, tuple(d["class_names"]), tuple(d["input_names"]),
                   d.get("history", []))


def _first_line(e: BaseException) -> str:
    """An exception as one short line (torch's messages run over several)."""
    text = " ".join(str(e).split())
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def split(n: int, groups: np.ndarray | None, val_fraction: float, seed: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation indices; by group (e.g. clip) when there are >= 5 groups, so that
    frames of one clip never sit on both sides."""
    rng = np.random.default_rng(seed)
    if groups is not None and len(np.unique(groups)) >= 5:
        ug = rng.permutation(np.unique(groups))
        nval = max(1, int(round(len(ug) * val_fraction)))
        val = np.isin(groups, ug[:nval])
        return np.flatnonzero(~val), np.flatnonzero(val)
    perm = rng.permutation(n)
    nval = max(1, int(round(n * val_fraction)))
    return perm[nval:], perm[:nval]


def train(X: np.ndarray, valence: np.ndarray, arousal: np.ndarray, labels: np.ndarray,
          class_names: tuple[str, ...], groups: np.ndarray | None = None,
          input_names: tuple[str, ...] = (), hidden: int = HIDDEN, val_fraction: float = 0.2,
          max_epochs: int = 200, patience: int = 10, batch_size: int = 64, lr: float = 1e-4,
          seed: int = 0, max_seconds: float | None = None,
          progress: Callable[[dict], None] | None = None, threads: int | None = 1
          ) -> EmotionMLP:
    """Train the emotion MLP. X (N,D) inputs, valence/arousal (N,), labels (N,) int in
    [0, len(class_names)). Returns the model of the best validation epoch."""
    with torch_threads(threads):
        return _train(X, valence, arousal, labels, class_names, groups, input_names, hidden,
                      val_fraction, max_epochs, patience, batch_size, lr, seed, max_seconds,
                      progress)


def _train(X, valence, arousal, labels, class_names, groups, input_names, hidden,
           val_fraction, max_epochs, patience, batch_size, lr, seed, max_seconds, progress):
    import torch

    from .metrics import ccc, recognition_loss

    X = np.asarray(X, np.float32)
    va = np.stack([np.asarray(valence, np.float32), np.asarray(arousal, np.float32)], 1)
    y = np.asarray(labels, np.int64)
    N = X.shape[0]
    if X.ndim != 2 or N < 4:
        raise BadInput(f"emotion MLP training needs at least 4 samples (N,D); got {X.shape}")
    if va.shape[0] != N or y.shape[0] != N:
        raise BadInput("inputs, valence, arousal and labels must have the same length")
    if not np.all(np.isfinite(X)) or not np.all(np.isfinite(va)):
        raise BadInput("training data holds NaN/inf values")
    C = len(class_names)
    if y.min() < 0 or y.max() >= C:
        raise BadInput(f"labels must be in [0, {C}) for classes {list(class_names)}")
    tr, val = split(N, groups, val_fraction, seed)
    mean = X[tr].mean(0)
    std = X[tr].std(0) + 1e-6
    Xn = torch.from_numpy((X - mean) / std)
    VA = torch.from_numpy(va)
    Y = torch.from_numpy(y)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_mlp(X.shape[1], C, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    # class-balanced sampling: each training sample drawn with probability 1 / its class count
    counts = np.bincount(y[tr], minlength=C).astype(np.float64)
    w = 1.0 / np.maximum(counts[y[tr]], 1.0)
    sampler_w = torch.from_numpy(w / w.sum())
    n_batches = max(1, len(tr) // batch_size)
    best, best_state, bad = math.inf, None, 0
    history: list[dict] = []
    import time

    t0 = time.perf_counter()
    tr_t = torch.from_numpy(tr)
    for epoch in range(max_epochs):
        model.train()
        draws = torch.multinomial(sampler_w, n_batches * batch_size, replacement=True,
                                  generator=gen)
        tot = 0.0
        for b in range(n_batches):
            idx = tr_t[draws[b * batch_size:(b + 1) * batch_size]]
            out = model(Xn[idx])
            loss, _ = recognition_loss(out[:, 2:], Y[idx], out[:, :2], VA[idx], generator=gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach())
        model.eval()
        with torch.no_grad():
            out = model(Xn[val])
            vloss, terms = recognition_loss(out[:, 2:], Y[val], out[:, :2], VA[val],
                                            weights=(1 / 3, 1 / 3, 1 / 3))
        o = out.numpy()
        rec = {"epoch": epoch, "train_loss": tot / n_batches, "val_loss": float(vloss),
               "val_ccc_valence": ccc(va[val, 0], o[:, 0]),
               "val_ccc_arousal": ccc(va[val, 1], o[:, 1]),
               "val_accuracy": float(np.mean(o[:, 2:].argmax(1) == y[val]))}
        history.append(rec)
        if progress is not None:
            progress(rec)
        if rec["val_loss"] < best - 1e-6:
            best, bad = rec["val_loss"], 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return EmotionMLP(model.eval(), mean, std, tuple(class_names), tuple(input_names), history)


# -- training tables of captures ------------------------------------------------------------

def capture_inputs(cap, use_jaw: bool = True) -> tuple[np.ndarray, tuple[str, ...]]:
    """Per-frame MLP inputs of a capture: identity (repeated), expression, jaw."""
    N = cap.n_frames
    shape = np.asarray(cap["shape"], np.float32).ravel()
    parts = [np.repeat(shape[None], N, 0), np.asarray(cap["expression"], np.float32)]
    names = [f"shape{i}" for i in range(shape.size)]
    names += list(cap.names.get("expression", [f"exp{i}" for i in range(parts[1].shape[1])]))
    if use_jaw:
        parts.append(np.asarray(cap["jaw"], np.float32).reshape(N, -1))
        names += ["jaw_rx", "jaw_ry", "jaw_rz"]
    return np.concatenate(parts, 1), tuple(names)


def load_table(csv_path: str | Path, use_jaw: bool = True) -> dict:
    """Read a labelled table of captures (see the module docstring) into training arrays."""
    from ..capture_file import CaptureError, load_capture

    p = Path(csv_path)
    if not p.is_file():
        raise BadInput(f"training table {p} not found")
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"capture", "valence", "arousal", "label"}
    if not rows or not need <= set(rows[0]):
        raise BadInput(f"{p} needs a header with the columns {sorted(need)} "
                       "(optional: start, end) and at least one row")
    classes = tuple(sorted({r["label"].strip() for r in rows}))
    X, V, A, Y, G = [], [], [], [], []
    names: tuple[str, ...] = ()
    for k, r in enumerate(rows, start=2):
        cp = Path(r["capture"].strip())
        cp = cp if cp.is_absolute() else p.parent / cp
        try:
            cap = load_capture(cp)
            v, a = float(r["valence"]), float(r["arousal"])
        except CaptureError as e:
            raise BadInput(f"{p} line {k}: {e}") from None
        except ValueError:
            raise BadInput(f"{p} line {k}: valence and arousal must be numbers") from None
        x, nm = capture_inputs(cap, use_jaw)
        if names and nm != names:
            raise BadInput(f"{p} line {k}: {cp.name} has different parameters than the first "
                           "capture (mixing backends or head models?)")
        names = nm
        s = int(r.get("start") or 0)
        e = int(r.get("end") or cap.n_frames)
        keep = np.zeros(cap.n_frames, bool)
        keep[s:e] = True
        keep &= cap["valid"]
        X.append(x[keep])
        V.append(np.full(keep.sum(), v, np.float32))
        A.append(np.full(keep.sum(), a, np.float32))
        Y.append(np.full(keep.sum(), classes.index(r["label"].strip()), np.int64))
        G.append(np.full(keep.sum(), k))
    return {"X": np.concatenate(X), "valence": np.concatenate(V),
            "arousal": np.concatenate(A), "labels": np.concatenate(Y),
            "groups": np.concatenate(G), "class_names": classes, "input_names": names}
