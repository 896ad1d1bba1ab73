"""The EMOCA networks: official layout (names, shapes, layer order), outputs, and float16 /
bfloat16 autocast against float32 on the same inputs."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import emoca_synthetic as es  # noqa: E402

from emoca_blender.models import emoca_net as N  # noqa: E402
from emoca_blender.models import resnet  # noqa: E402

# torchvision's resnet50().state_dict() has 320 entries and 25,557,032 parameters; without
# its fc (2 entries, 2048*1000 + 1000 parameters) that is DECA's trunk.
TV_KEYS, TV_PARAMS = 320 - 2, 25_557_032 - (2048 * 1000 + 1000)


def test_resnet_trunk_matches_torchvision_layout():
    net = resnet.ResNet50()
    sd = net.state_dict()
    assert len(sd) == TV_KEYS
    assert sum(p.numel() for p in net.parameters()) == TV_PARAMS
    assert {k: tuple(v.shape) for k, v in sd.items()} == resnet.state_dict_shapes()
    assert "layer4.0.downsample.0.weight" in sd and "layer4.2.bn3.running_var" in sd
    # v1.5: the stride sits on the 3x3 convolution
    assert net.layer2[0].conv2.stride == (2, 2) and net.layer2[0].conv1.stride == (1, 1)
    with torch.inference_mode():
        assert net.eval()(torch.rand(1, 3, 224, 224)).shape == (1, 2048)


@pytest.mark.parametrize("cfg", [N.NetConfig(), N.NetConfig(kind="deca", expression=""),
                                 N.NetConfig(expression="parallel"),
                                 N.NetConfig(exp_out=53, exp_pose="jaw")])
def test_state_dict_is_the_official_one(cfg):
    net = N.EmocaNet(cfg)
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    want = {f"{m}.{k}": s for m, d in N.module_shapes(cfg).items() for k, s in d.items()}
    assert got == want
    assert got["E_flame.layers.2.weight"] == (236, 1024)
    if cfg.detail:
        assert got["D_detail.l1.0.weight"] == (8192, 181)
        assert got["E_detail.layers.2.weight"] == (128, 1024)
    assert ("E_expression.layers.2.weight" in got) == (cfg.kind == "emoca")


def test_detail_generator_layers():
    g = N.DetailGenerator()
    kinds = [type(m).__name__ for m in g.conv_blocks]
    assert kinds == ["BatchNorm2d", "Upsample", "Conv2d", "BatchNorm2d", "LeakyReLU"] + \
        ["Upsample", "Conv2d", "BatchNorm2d", "LeakyReLU"] * 4 + ["Conv2d", "Tanh"]
    assert g.conv_blocks[0].eps == 1e-5 and all(g.conv_blocks[i].eps == 0.8
                                                 for i in (3, 7, 11, 15, 19))
    with torch.inference_mode():
        z = torch.randn(3, 181) * 10
        uv = g.eval()(z)
    assert uv.shape == (3, 1, 256, 256) and float(uv.abs().max()) <= 0.01 + 1e-7


@pytest.fixture(scope="module")
def loaded():
    from emoca_blender.models import emoca_checkpoint

    return emoca_checkpoint.load(es.cached("emoca"))


def _faces(n=2, seed=0):
    """Face-like inputs: smooth random images in [0,1] (a real crop is not needed to compare
    precisions; the statistics are what matters)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 14, 14, generator=g)
    return torch.nn.functional.interpolate(low, size=224, mode="bilinear").clamp(0, 1)


# Stated tolerance for half precision, relative to each code's RMS over the batch: float16
# autocast within 1 % (measured ~0.2 %), bfloat16 within 3 % (measured ~1 %) of float32.
HALF_TOL = {"float16": 1e-2, "bfloat16": 3e-2}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_autocast_matches_fp32(loaded, dtype):
    from emoca_blender.backends.emoca_backend import Runner

    torch.set_num_threads(1)
    x = _faces().numpy()
    # skip only when this torch build lacks the kernels (probed on a bare convolution, not
    # on our code: an error raised by our Runner is a failure)
    try:
        with torch.autocast("cpu", dtype=getattr(torch, dtype)):
            torch.nn.functional.conv2d(torch.rand(1, 3, 8, 8), torch.rand(4, 3, 3, 3))
    except RuntimeError as e:
        pytest.skip(f"CPU autocast {dtype} unsupported by this torch: {e}")
    ref = Runner(loaded.net, "cpu", "fp32").encode(x)
    half = Runner(loaded.net, "cpu", {"bfloat16": "bf16", "float16": "fp16"}[dtype],
                  channels_last=True).encode(x)
    for k in ("shape", "exp", "pose", "cam", "light", "detail"):
        a, b = ref[k], half[k]
        scale = float(np.sqrt(np.mean(a ** 2))) + 1e-6
        err = float(np.abs(a - b).max()) / scale
        assert err < HALF_TOL[dtype], (k, err)
    # and the camera scale (about 9) to 1 %
    assert np.allclose(ref["cam"][:, 0], half["cam"][:, 0], rtol=1e-2)


def test_detail_decoder_input_order_is_the_official_one():
    """DECA's official D_detail reads [jaw pose 3, expression 50, detail code 128]
    (decalib/deca.py: ``torch.cat([pose[:, 3:], exp, detail], 1)``). A generator whose
    first layer gives each input position its own, distinguishable effect (random columns,
    then tested to tell jaw, expression and detail apart) pins that order: decode_detail
    must equal the generator applied to that concatenation, written out here."""
    torch.manual_seed(0)
    g = N.DetailGenerator().eval()
    with torch.no_grad():
        w = torch.randn_like(g.l1[0].weight) * 0.2
        w[:, :3] *= 8.0                 # 3 jaw inputs among 181: made as strong as the rest
        g.l1[0].weight.copy_(w)
    stub = type("Net", (), {"D_detail": g})()
    jaw = torch.randn(2, 3)
    exp = torch.randn(2, 50)
    detail = torch.randn(2, 128)
    with torch.inference_mode():
        got = N.EmocaNet.decode_detail(stub, jaw, exp, detail)
        want = g(torch.cat([jaw, exp, detail], 1))           # official: jaw, exp, detail
        swapped = g(torch.cat([exp, jaw, detail], 1))        # expression first: wrong
        no_jaw = g(torch.cat([torch.zeros_like(jaw), exp, detail], 1))
        base = g(torch.zeros(2, 181))
    scale = float((want - base).abs().max())       # what the inputs change in the map
    assert scale > 1e-5
    # each input matters (the jaw alone over 5 % of what all inputs change) ...
    assert float((want - no_jaw).abs().max()) > 0.05 * scale
    assert float((want - swapped).abs().max()) > 0.05 * scale
    # ... and decode_detail feeds them in the official order (float32 rounding apart)
    assert float((got - want).abs().max()) <= 1e-6 * scale
