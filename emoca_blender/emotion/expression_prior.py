"""A prior over real facial expressions: a Gaussian over 52-channel ARKit vectors.

Fitted to the frames of real takes (video captures of the default backend, Live Link Face
CSVs), each take weighted equally (a long take must not outweigh a short one), with the
covariance shrunk towards ``SHRINK * I`` so that a channel no take moves (e.g. cheekPuff,
tongueOut) stays expensive to move, not singular. It answers two questions:

* how plausible is an ARKit vector: its Mahalanobis distance to the mean, and that
  distance's percentile among the training frames (a weighted empirical CDF, stored as
  201 quantiles);
* how plausible is a *change* of some channels: the Mahalanobis length of the change
  under those channels' marginal covariance (:meth:`ExpressionPrior.change_precision`),
  which the emotion refinement adds to its objective.

The bundled prior ``bundled_models/arkit_prior.npz`` is derived data (means, covariance,
quantiles; a few KB) built by ``tools/build_arkit_prior.py`` from permissively licensed
takes only: the Live Link Face takes in ../shared/livelink (MIT) and the demo clips. The
research-licensed clips of ../shared/media serve the emotion bench's own priors, never the
bundled file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: covariance shrinkage: SHRINK * I is added (a standard deviation of ~0.03 for a channel
#: no take moves)
SHRINK = 1e-3
ARKIT_PRIOR = "arkit_prior.npz"
_Q = np.linspace(0.0, 100.0, 201)


@dataclass
class ExpressionPrior:
    names: tuple[str, ...]
    mean: np.ndarray            # (K,)
    cov: np.ndarray             # (K,K), shrinkage included
    quantiles: np.ndarray       # (201,) Mahalanobis distance at percentiles 0, 0.5, ..., 100
    sources: tuple[str, ...] = ()
    frames: int = 0

    @property
    def precision(self) -> np.ndarray:
        return np.linalg.inv(self.cov)

    def mahalanobis(self, E: np.ndarray) -> np.ndarray:
        """(N,) or scalar: sqrt((e - mean)^T cov^-1 (e - mean)) of (N,K) or (K,) vectors."""
        d = np.asarray(E, np.float64) - self.mean
        m = np.einsum("...i,ij,...j->...", d, self.precision, d)
        return np.sqrt(np.maximum(m, 0.0))

    def percentile(self, dist) -> np.ndarray:
        """Percentile of Mahalanobis distance(s) among the training frames (0..100;
        100 beyond the farthest)."""
        return np.interp(dist, self.quantiles, _Q)

    def radius(self, percentile: float) -> float:
        """The Mahalanobis distance at a percentile of the training frames."""
        return float(np.interp(percentile, _Q, self.quantiles))

    def change_precision(self, free: np.ndarray) -> np.ndarray:
        """(F,F) inverse of the marginal covariance of the ``free`` channels: a change
        ``d`` of those channels has Mahalanobis length sqrt(d^T P d)."""
        free = np.asarray(free, bool)
        return np.linalg.inv(self.cov[np.ix_(free, free)])


def _weighted_quantiles(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    o = np.argsort(x)
    x, w = x[o], w[o]
    c = (np.cumsum(w) - 0.5 * w) / w.sum() * 100.0
    return np.interp(_Q, c, x)


def fit_prior(takes, names, shrink: float = SHRINK) -> ExpressionPrior:
    """Fit the prior to takes, each weighted equally.

    Args:
        takes: iterable of (name, (N,K) ARKit vectors of the take's measured frames).
        names: the K channel names.
    """
    arrs, wts, srcs = [], [], []
    for name, E in takes:
        E = np.asarray(E, np.float64)
        if E.ndim != 2 or len(E) == 0:
            continue
        arrs.append(E)
        wts.append(np.full(len(E), 1.0 / len(E)))
        srcs.append(str(name))
    if not arrs:
        raise ValueError("no frames to fit the expression prior to")
    X, w = np.concatenate(arrs), np.concatenate(wts)
    w = w / w.sum()
    mean = w @ X
    D = X - mean
    cov = (D * w[:, None]).T @ D + shrink * np.eye(X.shape[1])
    p = ExpressionPrior(tuple(names), mean, cov, np.zeros(len(_Q)), tuple(srcs), len(X))
    p.quantiles = _weighted_quantiles(p.mahalanobis(X), w)
    return p


def save_prior(p: ExpressionPrior, path) -> Path:
    from ..capture_file import atomic_write_bytes

    info = {"sources": list(p.sources), "frames": int(p.frames), "shrink": SHRINK}
    payload = {"names": np.array(list(p.names)), "mean": p.mean.astype(np.float32),
               "cov": p.cov.astype(np.float32), "quantiles": p.quantiles.astype(np.float32),
               "info_json": np.array(json.dumps(info))}
    path = Path(path)
    atomic_write_bytes(path, lambda f: np.savez_compressed(f, **payload))
    return path


def load_prior(path: str | os.PathLike | None = None) -> ExpressionPrior:
    """Load a prior (default: the bundled ``arkit_prior.npz``)."""
    from ..models.head_model import bundled

    path = Path(path) if path is not None else bundled(ARKIT_PRIOR)
    with np.load(path, allow_pickle=False) as z:
        info = json.loads(str(z["info_json"]))
        return ExpressionPrior(tuple(str(n) for n in z["names"]),
                               z["mean"].astype(np.float64), z["cov"].astype(np.float64),
                               z["quantiles"].astype(np.float64),
                               tuple(info.get("sources", ())), int(info.get("frames", 0)))
