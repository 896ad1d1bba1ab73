"""Checkpoint loading: EMOCA's Lightning .ckpt (omegaconf/Lightning objects in its
hyper-parameters, read without those packages and without running anything from the file),
DECA's deca_model.tar, the older EMOCA expression head, and the bad files: another model, a
truncated download, a missing file."""
from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import emoca_synthetic as es  # noqa: E402

from emoca_blender.models import emoca_checkpoint as C  # noqa: E402
from emoca_blender.models import emoca_net as N  # noqa: E402
from emoca_blender.errors import BadInput  # noqa: E402


def test_emoca_lightning_checkpoint_loads_every_weight():
    path = es.cached("emoca")
    with pytest.raises(Exception):   # the official loader refuses it: omegaconf objects inside
        torch.load(path, weights_only=True)
    ck = C.load(path)
    assert "omegaconf" not in sys.modules and "pytorch_lightning" not in sys.modules
    assert ck.format == "lightning" and ck.info["read"] == "restricted"
    assert ck.config.kind == "emoca" and ck.config.expression == "clone" and ck.config.detail
    assert ck.info["expression_backbone"] == "deca_clone"       # read from hyper_parameters
    w = es.module_weights()
    sd = ck.net.state_dict()
    for m, d in w.items():
        for k, v in d.items():
            assert torch.equal(sd[f"{m}.{k}"], v), f"{m}.{k}"
    assert ck.fixed_displacement is not None and ck.fixed_displacement.shape == (256, 256)
    # DECA's face/eye UV mask, from the checkpoint's own buffer
    assert ck.info["face_eye_mask"] == "checkpoint"
    assert ck.face_eye_mask.shape == (256, 256)
    assert set(np.unique(ck.face_eye_mask)) == {0.0, 1.0}
    assert ck.face_eye_mask[120, 128] == 1 and ck.face_eye_mask[5, 5] == 0


def test_deca_tar_loads(tmp_path):
    ck = C.load(es.cached("deca"))
    assert ck.format == "deca-tar" and ck.config.kind == "deca"
    assert not hasattr(ck.net, "E_expression")
    assert ck.fixed_displacement is None
    np.save(tmp_path / "fixed_displacement_256.npy", np.full((256, 256), 1e-3, np.float32))
    ck2 = C.load(es.cached("deca"), extra_dirs=(tmp_path,))
    assert np.allclose(ck2.fixed_displacement, 1e-3)
    # DECA keeps its face/eye mask as a PNG in its data folder (R channel / 255, 512 px there):
    # read beside the file or in extra_dirs, resized to the 256 px map as DECA does (nearest)
    assert ck.face_eye_mask is None
    import cv2

    png = np.zeros((512, 512, 3), np.uint8)
    png[100:300, 50:450, 2] = 255                        # R (OpenCV writes BGR)
    png[:, :, 0] = 255                                   # B: must be ignored
    cv2.imwrite(str(tmp_path / "uv_face_eye_mask.png"), png)
    ck3 = C.load(es.cached("deca"), extra_dirs=(tmp_path,))
    m = ck3.face_eye_mask
    assert m.shape == (256, 256) and ck3.info["face_eye_mask"] == "uv_face_eye_mask.png"
    assert m[50:150, 25:225].min() == 1 and m[:50].max() == 0 and m[150:].max() == 0
    with torch.inference_mode():
        out = ck.net(torch.rand(1, 3, 224, 224))
    assert out["exp"].shape == (1, 50) and out["uv_z"].shape == (1, 1, 256, 256)


def _small_ckpt(path, sd, hp=None):
    obj = {"epoch": 1, "state_dict": collections.OrderedDict(sd)}
    if hp is not None:
        obj["hyper_parameters"] = hp
    torch.save(obj, path)
    return path


def test_flags_read_from_real_omegaconf_hyper_parameters(tmp_path):
    """Real EMOCA checkpoints hold their training flags in omegaconf containers, each value
    in a node (``AnyNode``) whose pickled state stores it as ``_val``: a 53-wide expression
    head trained with ``exp_deca_global_pose`` (not the jaw) must be read as such."""
    omegaconf = pytest.importorskip("omegaconf", reason="omegaconf (test-only pin) is not "
                                    "installed")
    cfg = omegaconf.OmegaConf.create({
        "model": {"deca_class": "ExpDECA", "expression_backbone": "deca_parallel",
                  "exp_deca_jaw_pose": False, "exp_deca_global_pose": True, "n_exp": 50},
        "learning": {"batch_size_train": 4}})
    assert type(cfg.model._get_node("exp_deca_global_pose")).__name__ == "AnyNode"
    w = es.module_weights()
    sd = {f"deca.{m}.{k}": v for m, d in w.items() if m != "E_expression" for k, v in d.items()}
    sd.update({f"deca.E_expression.{k}": v for k, v in
               es._init(N.encoder_shapes(53), torch.Generator().manual_seed(5)).items()})
    path = _small_ckpt(tmp_path / "global.ckpt", sd, {"cfg": cfg})
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)              # omegaconf objects inside
    ck = C.load(path)
    assert ck.info["read"] == "restricted"
    assert ck.config.exp_out == 53 and ck.config.exp_pose == "global"
    assert ck.info["expression_backbone"] == "deca_parallel"
    assert ck.info["exp_deca_global_pose"] is True and ck.info["exp_deca_jaw_pose"] is False
    assert ck.info["deca_class"] == "ExpDECA"


def test_older_expression_layouts(tmp_path):
    """EMOCA's deca_parallel head (v1-era) and a 53-wide head with the jaw pose."""
    w = es.module_weights()
    g = torch.Generator().manual_seed(3)
    sd = {f"deca.{m}.{k}": v for m, d in w.items() if m != "E_expression" for k, v in d.items()}
    head = {"layers.0.weight": torch.randn(1024, 2048, generator=g) * 0.02,
            "layers.0.bias": torch.zeros(1024), "layers.2.weight": torch.randn(50, 1024) * 0.02,
            "layers.2.bias": torch.zeros(50)}
    par = dict(sd)
    par.update({f"deca.E_expression.{k}": v for k, v in head.items()})
    par.update({f"deca.E_expression.resnet.{k}": v for k, v in w["E_flame"].items()})
    ck = C.load(_small_ckpt(tmp_path / "parallel.ckpt", par))
    assert ck.config.expression == "parallel"
    with torch.inference_mode():
        x = torch.rand(1, 3, 224, 224)
        out = ck.net.encode(x)
        feats = ck.net.E_flame.encoder(x)
        assert torch.allclose(out["exp"], ck.net.E_expression.layers(feats), atol=1e-5)
    jaw = dict(sd)
    cw = {f"deca.E_expression.{k}": v for k, v in
          es._init(N.encoder_shapes(53), torch.Generator().manual_seed(5)).items()}
    jaw.update(cw)
    ck = C.load(_small_ckpt(tmp_path / "jaw.ckpt", jaw, {"exp_deca_jaw_pose": True}))
    assert ck.config.exp_out == 53 and ck.config.exp_pose == "jaw"
    with torch.inference_mode():
        x = torch.rand(1, 3, 224, 224)
        out = ck.net.encode(x)
        e = ck.net.E_expression(x)
        assert torch.allclose(out["pose"][:, 3:], e[:, 50:53]) and torch.allclose(out["exp"], e[:, :50])


def test_wrong_model_lists_missing_and_unexpected(tmp_path):
    with pytest.raises(C.CheckpointError) as e:
        C.load(es.write_wrong_model(tmp_path / "resnet_classifier.ckpt"))
    msg = str(e.value)
    assert "not an EMOCA or DECA checkpoint" in msg
    assert "missing keys: D_detail.conv_blocks.0.bias" in msg
    assert "4 unexpected keys: model.conv1.weight, model.fc.bias, model.fc.weight" in msg
    # the right networks, but another size (a ResNet-50 regressing 200 values, an extra key)
    w = es.module_weights()
    sd = {f"deca.{m}.{k}": v for m, d in w.items() for k, v in d.items()}
    del sd["deca.E_detail.layers.2.weight"], sd["deca.D_detail.l1.0.bias"]
    sd["deca.E_flame.layers.4.weight"] = torch.zeros(3, 3)
    sd["deca.E_flame.layers.2.bias"] = torch.zeros(200)
    with pytest.raises(C.CheckpointError) as e:
        C.load(_small_ckpt(tmp_path / "other.ckpt", sd))
    msg = str(e.value)
    assert "2 missing keys: D_detail.l1.0.bias, E_detail.layers.2.weight" in msg
    assert "1 unexpected keys: E_flame.layers.4.weight" in msg
    assert "E_flame.layers.2.bias (200,) != (236,)" in msg
    assert isinstance(e.value, BadInput)


def test_truncated_and_missing_files(tmp_path):
    bad = es.truncate(es.cached("emoca"), tmp_path / "emoca_v2.ckpt", 0.4)
    with pytest.raises(C.CheckpointError, match=r"emoca_v2.ckpt is not a readable PyTorch "
                                                r"checkpoint.*download it again"):
        C.load(bad)
    tiny = tmp_path / "empty.ckpt"
    tiny.write_bytes(b"PK\x03\x04")
    with pytest.raises(C.CheckpointError, match="empty or truncated"):
        C.load(tiny)
    with pytest.raises(C.CheckpointError, match="does not exist"):
        C.load(tmp_path / "nope.ckpt")
    text = tmp_path / "notes.ckpt"
    text.write_text("this is not a checkpoint at all, just some text " * 4)
    with pytest.raises(C.CheckpointError, match="not a readable PyTorch checkpoint"):
        C.load(text)


def test_restricted_unpickler_never_imports_or_runs(tmp_path):
    """A file whose pickle calls os.system gets a stand-in, not a call."""
    import pickle

    class Evil:
        def __reduce__(self):
            import os

            return os.system, ("touch " + str(tmp_path / "pwned"),)

    sd = {f"deca.{m}.{k}": v for m, d in es.module_weights().items() for k, v in d.items()}
    torch.save({"state_dict": sd, "hyper_parameters": {"x": Evil()}}, tmp_path / "evil.ckpt")
    ck = C.load(tmp_path / "evil.ckpt")
    assert ck.info["read"] == "restricted"
    assert not (tmp_path / "pwned").exists()
    assert pickle  # (imported for the Evil class's protocol only)
