"""Synthetic EMOCA / DECA checkpoints for tests and benches, in the official file layouts, with
random weights (the licensed files are never needed to test the loader and the backend).

- :func:`write_emoca_ckpt`: a PyTorch Lightning checkpoint as EMOCA's training writes it:
  ``epoch``, ``global_step``, ``pytorch-lightning_version``, ``state_dict`` (an OrderedDict
  with every ``deca.E_flame.*``, ``deca.E_expression.*``, ``deca.E_detail.*``,
  ``deca.D_detail.*`` key at its official shape, plus buffers: ``deca.uv_face_eye_mask``
  (1,1,256,256; here an ellipse) and ``deca.fixed_uv_dis``, which the add-on reads, and
  ``deca.flame.*``... which it ignores), ``callbacks``,
  ``optimizer_states``, ``lr_schedulers`` and ``hyper_parameters`` holding objects of
  ``omegaconf.dictconfig.DictConfig`` and a ``pytorch_lightning`` callback class, as the real
  one does (neither package is installed: throwaway modules stand in while pickling, so the
  file references those classes by name exactly like the official one).
- :func:`write_deca_tar`: DECA's ``deca_model.tar`` (``{'E_flame', 'E_detail', 'D_detail',
  'opt'}`` of un-prefixed state dicts).

Weights: He-initialised convolutions, batch norms with random running statistics and small
residual-branch gains (so a 16-block random ResNet stays O(1)), regressors scaled so that
the codes are O(0.1) and the camera scale is about 9 as in DECA (a head ~0.2 m across fills
the crop). Deterministic for a seed.
"""
from __future__ import annotations

import collections
import contextlib
import sys
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from emoca_blender.models import emoca_net as N  # noqa: E402


@contextlib.contextmanager
def fake_modules():
    """``omegaconf``/``omegaconf.dictconfig`` and ``pytorch_lightning.callbacks`` with the
    classes the official hyper-parameters reference, for the duration (then removed)."""
    names = ("omegaconf", "omegaconf.dictconfig", "omegaconf.base", "pytorch_lightning",
             "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint")
    saved = {k: sys.modules.get(k) for k in names}
    mods = {k: types.ModuleType(k) for k in names}

    class DictConfig(dict):
        pass

    class Metadata:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class ModelCheckpoint:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    for cls, mod in ((DictConfig, "omegaconf.dictconfig"), (Metadata, "omegaconf.base"),
                     (ModelCheckpoint, "pytorch_lightning.callbacks.model_checkpoint")):
        cls.__module__ = mod
        cls.__qualname__ = cls.__name__
        setattr(mods[mod], cls.__name__, cls)
    sys.modules.update(mods)
    try:
        yield DictConfig, Metadata, ModelCheckpoint
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _init(shapes: dict[str, tuple], g: torch.Generator, last_bias=None) -> dict[str, torch.Tensor]:
    out = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(1000, dtype=torch.long)
        elif k.endswith("running_mean"):
            out[k] = torch.randn(s, generator=g) * 0.05
        elif k.endswith("running_var"):
            out[k] = 0.5 + torch.rand(s, generator=g)
        elif len(s) == 4:                                       # convolution
            fan_in = s[1] * s[2] * s[3]
            out[k] = torch.randn(s, generator=g) * np.sqrt(2.0 / fan_in)
        elif len(s) == 2:                                       # linear
            out[k] = torch.randn(s, generator=g) / np.sqrt(s[1])
        elif k.endswith(".weight"):                             # batch-norm gain
            gain = 0.2 if (".bn3." in k or k.endswith("downsample.1.weight")) else 1.0
            out[k] = gain * (1.0 + 0.1 * torch.randn(s, generator=g))
        else:                                                   # biases
            out[k] = 0.01 * torch.randn(s, generator=g)
    return out


def module_weights(config: N.NetConfig | None = None, seed: int = 0) -> dict[str, dict]:
    """module -> {key: tensor} with the official names and shapes."""
    g = torch.Generator().manual_seed(seed)
    shapes = N.module_shapes(config)
    out = {}
    for m, d in shapes.items():
        w = _init(d, g)
        if "layers.2.weight" in w:
            w["layers.2.weight"] *= 0.1                        # codes O(0.1)
        if m == "E_flame":
            cam = N.N_SHAPE + N.N_TEX + N.N_EXP + N.N_POSE
            w["layers.2.bias"][cam] = 9.0                     # DECA-like camera scale
        out[m] = w
    return out


def write_emoca_ckpt(path, seed: int = 0, config: N.NetConfig | None = None,
                     extras: bool = True) -> Path:
    """An EMOCA Lightning checkpoint (see the module docstring)."""
    path = Path(path)
    w = module_weights(config, seed)
    sd = collections.OrderedDict()
    for m, d in w.items():
        for k, v in d.items():
            sd[f"deca.{m}.{k}"] = v
    if extras:   # buffers of the official file (mask and fixed displacement are read)
        g = torch.Generator().manual_seed(seed + 1)
        yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
        ellipse = ((xx - 128) / 90) ** 2 + ((yy - 120) / 70) ** 2 <= 1   # a face-like region
        sd["deca.uv_face_eye_mask"] = ellipse.float()[None, None]
        sd["deca.fixed_uv_dis"] = torch.randn(256, 256, generator=g) * 1e-4
        sd["deca.flame.faces_tensor"] = torch.zeros(8, 3, dtype=torch.long)
        sd["deca.flame.v_template"] = torch.zeros(16, 3)
        sd["deca.flametex.texture_mean"] = torch.zeros(1, 1, 12)
    with fake_modules() as (DictConfig, Metadata, ModelCheckpoint):
        mp = DictConfig(deca_class="ExpDECA", expression_backbone="deca_clone",
                        exp_deca_jaw_pose=False, exp_deca_global_pose=False, n_shape=100,
                        n_exp=50, n_detail=128, mode="detail")
        mp.__dict__["_metadata"] = Metadata(ref_type=dict, object_type=dict)
        obj = {
            "epoch": 3, "global_step": 12345, "pytorch-lightning_version": "1.4.9",
            "state_dict": sd,
            "callbacks": {ModelCheckpoint: ModelCheckpoint(monitor="val_loss", best_model_score=None)},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}],
            "lr_schedulers": [],
            "hyper_parameters": {"model_params": mp, "stage_name": "detail",
                                 "learning_params": DictConfig(batch_size_train=4)},
        }
        torch.save(obj, path)
    return path


def write_deca_tar(path, seed: int = 0) -> Path:
    """DECA's deca_model.tar layout (no E_expression)."""
    path = Path(path)
    w = module_weights(N.NetConfig(kind="deca", expression=""), seed)
    torch.save({"E_flame": w["E_flame"], "E_detail": w["E_detail"], "D_detail": w["D_detail"],
                "opt": {"state": {}, "param_groups": []}, "epoch": 0}, path)
    return path


def write_wrong_model(path, seed: int = 0) -> Path:
    """A Lightning checkpoint of another model (a ResNet-18-style classifier named
    ``model.*``): loadable, but not EMOCA."""
    g = torch.Generator().manual_seed(seed)
    sd = collections.OrderedDict({
        "model.conv1.weight": torch.randn(64, 3, 7, 7, generator=g),
        "model.layer1.0.conv1.weight": torch.randn(64, 64, 3, 3, generator=g),
        "model.fc.weight": torch.randn(7, 512, generator=g),
        "model.fc.bias": torch.zeros(7)})
    torch.save({"epoch": 1, "state_dict": sd}, path)
    return Path(path)


def truncate(src, dst, fraction: float = 0.5) -> Path:
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


# ---------------------------------------------------------------- shared test files
_FILES: dict[str, Path] = {}
_TMP: list = []


def _tmpdir() -> Path:
    import atexit
    import shutil
    import tempfile

    if not _TMP:
        d = Path(tempfile.mkdtemp(prefix="emoca_synthetic_"))
        atexit.register(shutil.rmtree, d, True)
        _TMP.append(d)
    return _TMP[0]


def cached(kind: str = "emoca") -> Path:
    """One file per process (writing a 280 MB random checkpoint takes seconds): ``emoca``
    (Lightning .ckpt), ``deca`` (deca_model.tar) or ``flame`` (a FLAME folder: synthetic
    FLAME pickle on FLAME's topology + the shared auxiliary files, linked; None-like skip is
    the caller's job when ../shared is absent)."""
    if kind in _FILES:
        return _FILES[kind]
    d = _tmpdir()
    if kind == "emoca":
        p = write_emoca_ckpt(d / "emoca_v2.ckpt")
    elif kind == "deca":
        p = write_deca_tar(d / "deca_model.tar")
    elif kind == "flame":
        import os

        import flame_synthetic as fs

        p = d / "flame"
        p.mkdir()
        fs.write_flame_pickle(p / "generic_model.pkl", fs.make_flame_dict(
            n_shape=100, n_expr=50, template=fs.aux("head_template.obj"), seed=1))
        for n in ("mediapipe_landmark_embedding.npz", "head_template.obj"):
            os.symlink(fs.SHARED_AUX / n, p / n)
    else:
        raise ValueError(kind)
    _FILES[kind] = p
    return p


def flame_aux_available() -> bool:
    import flame_synthetic as fs

    return all(fs.aux(n) is not None for n in ("mediapipe_landmark_embedding.npz",
                                                "head_template.obj"))
