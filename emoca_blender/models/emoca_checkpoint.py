"""Loading the official EMOCA and DECA weights, safely, without Lightning, omegaconf or gdl.

Files read:

- **EMOCA v2 / v1** (``EMOCA_v2_lr_mse_20/detail/checkpoints/deca-epoch=...ckpt``,
  ``EMOCA/detail/checkpoints/...``): a PyTorch Lightning checkpoint, a ``torch.save``\\ d dict
  with ``state_dict`` (keys prefixed ``deca.``: ``deca.E_flame.*``, ``deca.E_expression.*``,
  ``deca.E_detail.*``, ``deca.D_detail.*``; the buffers ``deca.uv_face_eye_mask`` (where the
  detail displacement applies) and ``deca.fixed_uv_dis`` (DECA's fixed displacement), which
  are read too; and buffers we do not need: ``deca.flame.*``, ``deca.flametex.*``,
  ``deca.render.*``, loss networks...), ``hyper_parameters`` (omegaconf ``DictConfig`` objects), optimizer
  states, callbacks.
- **DECA** ``deca_model.tar``: a ``torch.save``\\ d dict ``{'E_flame': state_dict,
  'E_detail': state_dict, 'D_detail': state_dict, ...}`` (keys without prefix); DECA keeps
  ``fixed_displacement_256.npy`` and ``uv_face_eye_mask.png`` in its data folder, looked for
  beside the file.

Reading is safe: first ``torch.load(weights_only=True)``; when the file references classes
that loader refuses (Lightning's hyper-parameters: ``omegaconf.*``, ``pytorch_lightning.*``),
a restricted unpickler that accepts exactly what ``weights_only`` accepts (tensors, storages,
containers) and turns every other class into an inert stand-in holding its state, so nothing
from the file is ever executed or imported. Only the state dict is used.

Every weight of :class:`emoca_net.EmocaNet` must be found with its shape; otherwise
:class:`CheckpointError` lists the missing, unexpected and mis-shaped keys.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import emoca_net as N
from ..errors import BadInput

MODULES = ("E_flame", "E_expression", "E_detail", "D_detail")
FIXED_DISPLACEMENT = "fixed_displacement_256.npy"
FACE_EYE_MASK = "uv_face_eye_mask.png"


class CheckpointError(BadInput):
    """The file is not a usable EMOCA/DECA checkpoint; the message says why."""


# ---------------------------------------------------------------------------------------------
# Restricted unpickling
# ---------------------------------------------------------------------------------------------
class StandIn:
    """What a class the loader does not trust becomes: it keeps its arguments and state and
    does nothing else (``omegaconf.DictConfig``, ``pytorch_lightning`` callbacks...)."""

    _module = "?"
    _name = "?"
    args: tuple = ()
    kwargs: dict = {}
    state: Any = None

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, k, v):                 # dict subclasses get SETITEMS
        items = self.__dict__.setdefault("items", {})
        items[k] = v

    def append(self, v):                         # list subclasses get APPENDS
        self.args = self.args + (v,)

    def extend(self, vs):
        self.args = self.args + tuple(vs)

    def __repr__(self):
        return f"<stand-in for {self._module}.{self._name}>"


def _standin(module: str, name: str) -> type:
    return type(name, (StandIn,), {"_module": module, "_name": name})


def _reconstructor(cls, base, state):            # copyreg._reconstructor, made inert
    obj = cls.__new__(cls) if isinstance(cls, type) and issubclass(cls, StandIn) else _standin(
        "copyreg", "object")()
    if isinstance(obj, StandIn):
        obj.args, obj.kwargs, obj.state = (), {}, state
    return obj


_BUILTINS = {"set", "frozenset", "list", "dict", "tuple", "int", "float", "str", "bytes",
             "bytearray", "bool", "complex", "slice", "range"}


def _allowed() -> dict[str, Any]:
    import torch._weights_only_unpickler as W

    return dict(W._get_allowed_globals())


class _RestrictedUnpickler(pickle.Unpickler):
    allowed: dict[str, Any] = {}

    def find_class(self, module, name):
        key = f"{module}.{name}"
        if key in self.allowed:
            return self.allowed[key]
        if module == "builtins" and name in _BUILTINS:
            import builtins

            return getattr(builtins, name)
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        if module == "copyreg" and name == "_reconstructor":
            return _reconstructor
        if module.startswith("torch") and ("Storage" in name or name in ("Size", "device")):
            import torch

            obj = getattr(torch, name, None)
            if obj is not None:
                return obj
        return _standin(module, name)


class _RestrictedPickleModule:
    """A ``pickle_module`` for ``torch.load`` using :class:`_RestrictedUnpickler`."""

    Unpickler = _RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(f, **kw):
        return _RestrictedUnpickler(f, **kw).load()


def read_file(path: str | os.PathLike) -> tuple[Any, str]:
    """``torch.load`` the file on the CPU without executing anything from it.
    Returns (object, how) with how ``weights_only`` or ``restricted``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"EMOCA/DECA checkpoint {path} does not exist")
    if path.stat().st_size < 64:
        raise CheckpointError(f"{path.name} is empty or truncated ({path.stat().st_size} bytes): "
                              "download the checkpoint again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), "weights_only"
    except pickle.UnpicklingError as e:
        first_error: Exception = e       # refused globals (Lightning/omegaconf): below
    except Exception as e:  # noqa: BLE001 - a damaged archive shows up as many error types
        raise CheckpointError(_damaged(path, e)) from None
    try:
        _RestrictedUnpickler.allowed = _allowed()
        return torch.load(path, map_location="cpu", weights_only=False,
                          pickle_module=_RestrictedPickleModule), "restricted"
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(_damaged(path, e if str(e) else first_error)) from None


def _damaged(path: Path, e: Exception) -> str:
    msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    trunc = ""
    try:
        if zipfile.is_zipfile(path) is False and path.stat().st_size > 0:
            with open(path, "rb") as fh:
                if fh.read(2) == b"PK":
                    trunc = " (a zip archive without its central directory: truncated)"
    except OSError:
        pass
    return (f"{path.name} is not a readable PyTorch checkpoint{trunc}: {msg}. The file is "
            "damaged or incomplete (an interrupted download?): download it again")


# ---------------------------------------------------------------------------------------------
# State dicts
# ---------------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A loaded checkpoint: the network (eval mode, CPU, float32) and what it was."""

    net: Any                                    # emoca_net.EmocaNet
    config: N.NetConfig
    path: Path
    format: str                                 # "lightning" (EMOCA) or "deca-tar"
    fixed_displacement: np.ndarray | None = None   # (256,256) metres, when known
    face_eye_mask: np.ndarray | None = None        # (256,256) in [0,1], when known
    info: dict = field(default_factory=dict)


def _node_value(v: Any) -> Any:
    """The plain value of a hyper-parameter: omegaconf stores each value of a ``DictConfig``
    in a node (``AnyNode``, ``BooleanNode``...) whose pickled state holds it as ``_val``;
    stand-ins built from arguments hold it as their first argument."""
    if not isinstance(v, StandIn):
        return v
    state = v.state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        state = {**(state[0] or {}), **state[1]}            # (__dict__, __slots__) state
    if isinstance(state, dict) and "_val" in state:
        return state["_val"]
    return v.args[0] if v.args else v


def _hparams_flags(obj: Any) -> dict[str, Any]:
    """exp_deca_jaw_pose / exp_deca_global_pose / expression_backbone from Lightning's
    hyper_parameters, wherever they sit in the (stand-in) omegaconf tree; {} when absent."""
    want = ("exp_deca_jaw_pose", "exp_deca_global_pose", "expression_backbone", "deca_class")
    found: dict[str, Any] = {}
    seen: set[int] = set()

    def walk(o, depth=0):
        if depth > 12 or id(o) in seen:
            return
        seen.add(id(o))
        if isinstance(o, StandIn):
            for part in (o.state, o.args, o.kwargs, o.__dict__.get("items")):
                walk(part, depth + 1)
            return
        if isinstance(o, dict):
            for k, v in o.items():
                if isinstance(k, str) and k in want and k not in found:
                    vv = _node_value(v)
                    if isinstance(vv, (bool, str, int)):
                        found[k] = vv
                walk(v, depth + 1)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v, depth + 1)

    walk(obj)
    return found


def extract_state_dict(obj: Any, path: Path) -> tuple[dict[str, Any], str, dict]:
    """The networks' weights as ``{"E_flame.encoder.conv1.weight": tensor, ...}`` (prefix
    ``deca.`` removed), the file format and hyper-parameter flags."""
    import torch

    if not isinstance(obj, dict):
        raise CheckpointError(f"{path.name} holds a {type(obj).__name__}, not a checkpoint "
                              "dict: not an EMOCA or DECA checkpoint")
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        sd = obj["state_dict"]
        flags = _hparams_flags(obj.get("hyper_parameters"))
        out = {}
        for k, v in sd.items():
            if isinstance(k, str) and k.startswith("deca."):
                out[k[5:]] = v
        if not out:   # a bare network state_dict saved under state_dict
            out = {k: v for k, v in sd.items() if isinstance(k, str)}
        return out, "lightning", flags
    if "E_flame" in obj and isinstance(obj["E_flame"], dict):
        out = {}
        for m in MODULES:
            if isinstance(obj.get(m), dict):
                out.update({f"{m}.{k}": v for k, v in obj[m].items()})
        return out, "deca-tar", {}
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and torch.is_tensor(v)}
    if tensors:
        return {(k[5:] if k.startswith("deca.") else k): v for k, v in tensors.items()}, \
            "state_dict", {}
    raise CheckpointError(f"{path.name} has neither 'state_dict' (EMOCA, Lightning) nor "
                          f"'E_flame' (DECA's deca_model.tar); it holds "
                          f"{', '.join(map(str, list(obj)[:8]))}: not an EMOCA or DECA "
                          "checkpoint")


def infer_config(sd: dict[str, Any], flags: dict) -> N.NetConfig:
    c = N.NetConfig()
    if "E_expression.encoder.conv1.weight" in sd:
        c.kind, c.expression = "emoca", "clone"
    elif "E_expression.layers.2.weight" in sd:
        c.kind, c.expression = "emoca", "parallel"
    else:
        c.kind, c.expression = "deca", ""
    if c.kind == "emoca":
        w = sd["E_expression.layers.2.weight"] if "E_expression.layers.2.weight" in sd else None
        c.exp_out = int(w.shape[0]) if w is not None and getattr(w, "ndim", 0) == 2 else N.N_EXP
        if c.exp_out == N.N_EXP + 6:
            c.exp_pose = "both"
        elif c.exp_out == N.N_EXP + 3:
            jaw, glob = flags.get("exp_deca_jaw_pose"), flags.get("exp_deca_global_pose")
            c.exp_pose = "global" if (glob and not jaw) else "jaw"
    w = sd.get("E_detail.layers.2.weight")
    c.detail = any(k.startswith("E_detail.") or k.startswith("D_detail.") for k in sd)
    if w is not None and getattr(w, "ndim", 0) == 2:
        c.n_detail = int(w.shape[0])
    return c


def _short(keys: list[str], n: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_keys(sd: dict[str, Any], config: N.NetConfig, path: Path) -> dict[str, Any]:
    """The weights the network needs, in its own key names; CheckpointError listing the
    missing, unexpected (inside the four networks) and mis-shaped keys otherwise."""
    need = N.module_shapes(config)
    expected: dict[str, tuple] = {f"{m}.{k}": s for m, d in need.items() for k, s in d.items()}
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    present_modules = sorted({k.split(".")[0] for k in sd})
    if not any(k.startswith("E_flame.") for k in sd):
        full = [f"{m}.{k}" for m, d in N.module_shapes(N.NetConfig()).items() for k in d
                if not k.endswith("num_batches_tracked")]
        raise CheckpointError(
            f"{path.name} holds no E_flame weights (its networks: "
            f"{', '.join(present_modules[:10]) or 'none'}): not an EMOCA or DECA checkpoint. "
            f"{len(full)} missing keys: {_short(full)}; {len(sd)} unexpected keys: "
            f"{_short(list(sd))}")
    missing = [k for k in expected if k not in sd and k not in optional]
    shaped = [f"{k} {tuple(sd[k].shape)} != {expected[k]}" for k in expected
              if k in sd and tuple(getattr(sd[k], "shape", ())) != tuple(expected[k])]
    ignore = ("E_expression.resnet.",) if config.expression == "parallel" else ()
    unexpected = [k for k in sd if k.split(".")[0] in MODULES and k not in expected
                  and not k.startswith(ignore)]
    if missing or shaped or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_short(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_short(unexpected)}")
        if shaped:
            parts.append(f"{len(shaped)} keys with the wrong shape: {_short(shaped, 4)}")
        raise CheckpointError(f"{path.name} is not the EMOCA/DECA network this add-on runs "
                              f"(expected {config.kind.upper()} with ResNet-50 encoders): "
                              + "; ".join(parts))
    return {k: sd[k] for k in expected if k in sd}


def _fixed_from(sd: dict[str, Any], path: Path, extra_dirs) -> np.ndarray | None:
    for d in [path.parent, path.parent.parent, *[Path(x) for x in extra_dirs if x]]:
        p = Path(d) / FIXED_DISPLACEMENT
        if p.is_file():
            a = np.load(p, allow_pickle=False).astype(np.float32)
            if a.shape == (N.UV_SIZE, N.UV_SIZE):
                return a
    t = sd.get("fixed_uv_dis")
    if t is not None and tuple(t.shape) == (N.UV_SIZE, N.UV_SIZE):
        a = t.detach().cpu().numpy().astype(np.float32)
        if np.any(a != 0):
            return a
    return None


def _resize_nearest(a: np.ndarray, size: int) -> np.ndarray:
    """torch.nn.functional.interpolate's default ('nearest') on a 2-D array."""
    h, w = a.shape
    rows = np.minimum((np.arange(size) * h / size).astype(np.int64), h - 1)
    cols = np.minimum((np.arange(size) * w / size).astype(np.int64), w - 1)
    return a[rows][:, cols]


def _mask_from(sd: dict[str, Any], path: Path, extra_dirs) -> tuple[np.ndarray | None, str]:
    """DECA's ``uv_face_eye_mask`` (the face and eye region of the UV map, where the detail
    displacement applies: DECA multiplies ``uv_z`` by it): the checkpoint's own buffer (EMOCA
    registers it), else ``uv_face_eye_mask.png`` beside the file, one folder up or in
    ``extra_dirs`` (DECA's data folder). Channel 0 / 255, resized to 256 as DECA does."""
    t = sd.get("uv_face_eye_mask")
    if t is not None and getattr(t, "ndim", 0) >= 2:
        a = t.detach().cpu().float().numpy().reshape(t.shape[-2:])
        return _resize_nearest(a, N.UV_SIZE).astype(np.float32), "checkpoint"
    for d in [path.parent, path.parent.parent, *[Path(x) for x in extra_dirs if x]]:
        p = Path(d) / FACE_EYE_MASK
        if p.is_file():
            import cv2

            img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            if img is None:
                continue
            a = (img if img.ndim == 2 else img[..., 2 if img.shape[2] >= 3 else 0]).astype(np.float32)  # RGB's R
            a /= 65535.0 if img.dtype == np.uint16 else 255.0
            return _resize_nearest(a, N.UV_SIZE), str(p.name)
    return None, ""


def load(path: str | os.PathLike, extra_dirs: tuple = ()) -> Checkpoint:
    """Load an EMOCA (v1/v2 Lightning .ckpt) or DECA (deca_model.tar) checkpoint into an
    :class:`emoca_net.EmocaNet` (CPU, float32, eval). ``fixed_displacement_256.npy`` is looked
    for beside the file, one folder up and in ``extra_dirs``, then in the checkpoint's own
    ``fixed_uv_dis`` buffer."""
    path = Path(path)
    obj, how = read_file(path)
    sd, fmt, flags = extract_state_dict(obj, path)
    config = infer_config(sd, flags)
    weights = check_keys(sd, config, path)
    net = N.EmocaNet(config)
    own = {}
    for k, v in weights.items():
        own[k] = v
    res = net.load_state_dict(own, strict=False)
    left = [k for k in res.missing_keys if not k.endswith("num_batches_tracked")]
    if left or res.unexpected_keys:   # check_keys agrees with the module: never expected
        raise CheckpointError(f"{path.name}: internal key mismatch: missing {_short(left)}, "
                              f"unexpected {_short(list(res.unexpected_keys))}")
    net.eval()
    fixed = _fixed_from(sd, path, extra_dirs)
    mask, mask_source = _mask_from(sd, path, extra_dirs)
    info = {"format": fmt, "read": how, "kind": config.kind, "expression": config.expression,
            "exp_out": config.exp_out, "exp_pose": config.exp_pose, "detail": config.detail,
            "weights": len(weights), "fixed_displacement": fixed is not None,
            "face_eye_mask": mask_source or None}
    info.update({k: v for k, v in flags.items() if isinstance(v, (bool, int, str))})
    return Checkpoint(net=net, config=config, path=path, format=fmt, fixed_displacement=fixed,
                      face_eye_mask=mask, info=info)


__all__ = ["Checkpoint", "CheckpointError", "load", "read_file", "extract_state_dict",
           "infer_config", "check_keys", "StandIn"]
