"""Emotion metrics and the emotion recognition loss, as in EMOCA's supplementary material
(which takes them from Toisoul et al. 2021, "Estimation of continuous valence and arousal
levels from faces in naturalistic conditions").

For ground truth y and prediction p over n samples (population statistics, 1/n):

====== =======================================================================
RMSE   sqrt( 1/n sum_i (y_i - p_i)^2 )
SAGR   1/n sum_i [ sign(y_i) == sign(p_i) ]       (sign agreement; sign(0) = 0)
PCC    E[(y - mu_y)(p - mu_p)] / (sigma_y sigma_p)
CCC    2 E[(y - mu_y)(p - mu_p)] / (sigma_y^2 + sigma_p^2 + (mu_y - mu_p)^2)
====== =======================================================================

Edge cases (documented choices, since the formulas divide by zero there): PCC is 0 when
either sequence is constant (no linear relation can be measured); CCC's numerator is the
covariance (= 2 PCC sigma_y sigma_p, without dividing by the sigmas), so it is 0 when one
sequence is constant and differs from the other, and 1 when both are the same constant
(perfect concordance). A single sample is a constant sequence. Empty input raises.

Recognition loss (per batch)::

    L = CE(logits, class) + sum_{d in valence, arousal} a * MSE_d + b * (1 - PCC_d) + c * (1 - CCC_d)

with (a, b, c) drawn uniformly in [0, 1] each batch and normalised to sum to 1 (the
"shake-shake" regularisation); pass ``weights`` to fix them (e.g. for evaluation).
"""
from __future__ import annotations

import numpy as np

_EPS = 1e-12


def _pair(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, np.float64).ravel()
    p = np.asarray(p, np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"ground truth and prediction differ in length ({y.size} vs {p.size})")
    if y.size == 0:
        raise ValueError("metrics need at least one sample")
    return y, p


def rmse(y, p) -> float:
    y, p = _pair(y, p)
    return float(np.sqrt(np.mean((y - p) ** 2)))


def sagr(y, p) -> float:
    y, p = _pair(y, p)
    return float(np.mean(np.sign(y) == np.sign(p)))


def pcc(y, p) -> float:
    y, p = _pair(y, p)
    dy, dp = y - y.mean(), p - p.mean()
    sy, sp = np.sqrt(np.mean(dy ** 2)), np.sqrt(np.mean(dp ** 2))
    if sy <= _EPS * max(1.0, abs(y.mean())) or sp <= _EPS * max(1.0, abs(p.mean())):
        return 0.0
    return float(np.clip(np.mean(dy * dp) / (sy * sp), -1.0, 1.0))


def ccc(y, p) -> float:
    y, p = _pair(y, p)
    my, mp = y.mean(), p.mean()
    cov = np.mean((y - my) * (p - mp))
    den = np.mean((y - my) ** 2) + np.mean((p - mp) ** 2) + (my - mp) ** 2
    if den <= _EPS:
        return 1.0          # both the same constant
    return float(2.0 * cov / den)


def all_metrics(y, p) -> dict[str, float]:
    return {"rmse": rmse(y, p), "sagr": sagr(y, p), "pcc": pcc(y, p), "ccc": ccc(y, p)}


# -- torch (differentiable) -----------------------------------------------------------------

def pcc_torch(y, p, eps: float = 1e-8):
    """PCC of 1-D tensors (differentiable; 0 where a sequence is constant)."""
    import torch

    dy, dp = y - y.mean(), p - p.mean()
    sy = torch.sqrt(torch.mean(dy ** 2))
    sp = torch.sqrt(torch.mean(dp ** 2))
    return torch.mean(dy * dp) / (sy * sp + eps)


def ccc_torch(y, p, eps: float = 1e-8):
    """CCC of 1-D tensors (differentiable)."""
    import torch

    my, mp = y.mean(), p.mean()
    cov = torch.mean((y - my) * (p - mp))
    den = torch.mean((y - my) ** 2) + torch.mean((p - mp) ** 2) + (my - mp) ** 2
    return 2.0 * cov / (den + eps)


def shake_weights(generator=None):
    """(a, b, c) uniform in [0, 1], normalised to sum 1 (a fresh draw per batch)."""
    import torch

    w = torch.rand(3, generator=generator)
    return w / w.sum().clamp_min(1e-8)


def recognition_loss(logits, classes, va_pred, va_true, weights=None, generator=None,
                     class_weight=None) -> tuple:
    """EMOCA's emotion recognition loss.

    Args:
        logits: (B,C) class scores; ``classes`` (B,) int labels. Either may be None to skip
            the cross-entropy (a valence/arousal-only model).
        va_pred, va_true: (B,2) valence and arousal (None to skip the regression terms).
        weights: fixed (a, b, c) for the MSE, 1-PCC and 1-CCC terms; default: shake-shake
            (drawn per call, normalised).
    Returns:
        (loss tensor, dict of float terms).
    """
    import torch
    import torch.nn.functional as F

    terms: dict[str, float] = {}
    loss = None
    if logits is not None and classes is not None:
        ce = F.cross_entropy(logits, classes, weight=class_weight)
        terms["ce"] = float(ce.detach())
        loss = ce
    if va_pred is not None and va_true is not None:
        w = shake_weights(generator) if weights is None else torch.as_tensor(
            weights, dtype=va_pred.dtype)
        reg = 0.0
        for d, name in enumerate(("valence", "arousal")):
            y, p = va_true[:, d], va_pred[:, d]
            mse = torch.mean((y - p) ** 2)
            r = 1.0 - pcc_torch(y, p)
            c = 1.0 - ccc_torch(y, p)
            reg = reg + w[0] * mse + w[1] * r + w[2] * c
            terms[f"{name}_mse"] = float(mse.detach())
            terms[f"{name}_pcc"] = float(1.0 - r.detach())
            terms[f"{name}_ccc"] = float(1.0 - c.detach())
        loss = reg if loss is None else loss + reg
    if loss is None:
        raise ValueError("recognition_loss needs class logits and labels, or valence/arousal")
    terms["total"] = float(loss.detach())
    return loss, terms
