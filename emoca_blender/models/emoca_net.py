"""The EMOCA / DECA networks in plain torch, layer for layer as the official code builds them
(DECA ``decalib/models/{encoders,decoders}.py``, EMOCA ``gdl/models/{DecaEncoder,DecaDecoder,
DECA}.py``), so that the official ``state_dict`` loads key for key.

==============  =========================================================================
module          layers (state_dict names)
==============  =========================================================================
E_flame         ``encoder`` ResNet-50 trunk (:mod:`.resnet`) -> 2048, then ``layers``:
                ``0`` Linear(2048,1024), ``1`` ReLU, ``2`` Linear(1024,236)
                236 = shape 100 | tex 50 | exp 50 | pose 6 (global 3, jaw 3) | cam 3
                (scale, tx, ty) | light 27 (9 SH x RGB)
E_expression    EMOCA only, same layout -> 50 expression coefficients (``deca_clone``, the
                released EMOCA); 53/56 when EMOCA was trained to also predict the jaw and/or
                global pose. The older ``deca_parallel`` form (a second head on E_flame's
                trunk: ``resnet.*`` + ``layers.*``) is read too.
E_detail        same layout -> 128 detail code
D_detail        ``l1.0`` Linear(181, 128*8*8), view (128,8,8), then ``conv_blocks``:
                0 BN(128) 1 up 2 Conv(128,128) 3 BN(128,eps=0.8) 4 LReLU(0.2)
                5 up 6 Conv(128,64) 7 BN 8 LReLU   9 up 10 Conv(64,64) 11 BN 12 LReLU
                13 up 14 Conv(64,32) 15 BN 16 LReLU  17 up 18 Conv(32,16) 19 BN 20 LReLU
                21 Conv(16,1) 22 Tanh; x 0.01 -> (B,1,256,256) UV displacement, metres
                (ups: bilinear x2; convolutions 3x3 padding 1; the BatchNorm2d(C, 0.8) of the
                original passes 0.8 as *eps*, kept as is). Input [jaw 3, exp 50, detail 128].
==============  =========================================================================

Inputs: RGB in [0,1], (B,3,224,224), no mean/std. The networks run in eval mode.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import resnet

N_SHAPE, N_TEX, N_EXP, N_POSE, N_CAM, N_LIGHT = 100, 50, 50, 6, 3, 27
N_FLAME = N_SHAPE + N_TEX + N_EXP + N_POSE + N_CAM + N_LIGHT          # 236
N_DETAIL = 128
N_COND = 3 + N_EXP                                                    # jaw + expression
UV_SIZE = 256
MAX_Z = 0.01
SPLITS = (("shape", N_SHAPE), ("tex", N_TEX), ("exp", N_EXP), ("pose", N_POSE),
          ("cam", N_CAM), ("light", N_LIGHT))
# conv_blocks layout of the detail generator: index -> (kind, in, out)
GEN_CONVS = {2: (128, 128), 6: (128, 64), 10: (64, 64), 14: (64, 32), 18: (32, 16), 21: (16, 1)}
GEN_BNS = {0: (128, 1e-5), 3: (128, 0.8), 7: (64, 0.8), 11: (64, 0.8), 15: (32, 0.8),
           19: (16, 0.8)}


class ResnetEncoder(nn.Module):
    """ResNet-50 trunk + 2-layer regressor: ``forward(images) -> (B,outsize)``."""

    def __init__(self, outsize: int):
        super().__init__()
        self.encoder = resnet.ResNet50()
        self.layers = nn.Sequential(nn.Linear(resnet.FEATURES, 1024), nn.ReLU(),
                                    nn.Linear(1024, outsize))
        self.outsize = outsize

    def forward(self, images: torch.Tensor, features: bool = False):
        f = self.encoder(images)
        out = self.layers(f)
        return (out, f) if features else out


class SecondHead(nn.Module):
    """EMOCA's ``deca_parallel`` expression encoder: a second regressor on E_flame's features
    (state_dict: ``layers.*``; the shared trunk is E_flame's)."""

    def __init__(self, outsize: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(resnet.FEATURES, 1024), nn.ReLU(),
                                    nn.Linear(1024, outsize))
        self.outsize = outsize

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class DetailGenerator(nn.Module):
    """DECA's detail decoder: ``forward(z (B,latent)) -> (B,1,256,256)`` in [-out_scale,
    out_scale] metres."""

    def __init__(self, latent_dim: int = N_COND + N_DETAIL, out_scale: float = MAX_Z):
        super().__init__()
        self.out_scale = out_scale
        self.init_size = 8
        self.l1 = nn.Sequential(nn.Linear(latent_dim, 128 * self.init_size ** 2))
        mods: list[nn.Module] = []
        for i in range(23):
            if i in GEN_CONVS:
                a, b = GEN_CONVS[i]
                mods.append(nn.Conv2d(a, b, 3, stride=1, padding=1))
            elif i in GEN_BNS:
                c, eps = GEN_BNS[i]
                mods.append(nn.BatchNorm2d(c, eps))
            elif i in (1, 5, 9, 13, 17):
                mods.append(nn.Upsample(scale_factor=2, mode="bilinear"))
            elif i == 22:
                mods.append(nn.Tanh())
            else:
                mods.append(nn.LeakyReLU(0.2, inplace=True))
        self.conv_blocks = nn.Sequential(*mods)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.l1(z).view(z.shape[0], 128, self.init_size, self.init_size)
        return self.conv_blocks(x) * self.out_scale


@dataclass
class NetConfig:
    """What a checkpoint holds: which encoders, and the expression head's layout."""

    kind: str = "emoca"               # "emoca" (E_expression present) or "deca"
    expression: str = "clone"         # "clone" (own trunk), "parallel" (head on E_flame), ""
    exp_out: int = N_EXP              # 50, or 53 / 56 with jaw and/or global pose
    exp_pose: str = ""                # "", "jaw", "global", "both": what follows the 50
    n_detail: int = N_DETAIL
    detail: bool = True               # E_detail + D_detail present


class EmocaNet(nn.Module):
    """E_flame, E_expression, E_detail, D_detail with the official names.

    ``forward(images (B,3,224,224) in [0,1]) -> dict`` of shape (B,100), tex (B,50),
    exp (B,50), pose (B,6) [global 3, jaw 3], cam (B,3), light (B,9,3), detail (B,128),
    and with ``uv=True`` uv_z (B,1,256,256) metres (D_detail on [jaw, exp, detail]).
    """

    def __init__(self, config: NetConfig | None = None):
        super().__init__()
        self.config = c = config or NetConfig()
        self.E_flame = ResnetEncoder(N_FLAME)
        if c.kind == "emoca" and c.expression == "clone":
            self.E_expression = ResnetEncoder(c.exp_out)
        elif c.kind == "emoca" and c.expression == "parallel":
            self.E_expression = SecondHead(c.exp_out)
        if c.detail:
            self.E_detail = ResnetEncoder(c.n_detail)
            self.D_detail = DetailGenerator(N_COND + c.n_detail)

    # -- codes ---------------------------------------------------------------------------
    @staticmethod
    def split(code: torch.Tensor) -> dict[str, torch.Tensor]:
        out, a = {}, 0
        for name, n in SPLITS:
            out[name] = code[:, a:a + n]
            a += n
        out["light"] = out["light"].reshape(code.shape[0], 9, 3)
        return out

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        code, feats = self.E_flame(images, features=True)
        out = self.split(code)
        if c.kind == "emoca":
            e = (self.E_expression(feats) if c.expression == "parallel"
                 else self.E_expression(images))
            out["exp_deca"] = out["exp"]
            out["exp"] = e[:, :N_EXP]
            extra = e[:, N_EXP:]
            pose = out["pose"]
            if c.exp_pose == "both":
                pose = extra[:, :6]
            elif c.exp_pose == "global":
                pose = torch.cat([extra[:, :3], pose[:, 3:]], 1)
            elif c.exp_pose == "jaw":
                pose = torch.cat([pose[:, :3], extra[:, :3]], 1)
            out["pose"] = pose
        if c.detail:
            out["detail"] = self.E_detail(images)[:, :N_DETAIL]
        return out

    def decode_detail(self, jaw: torch.Tensor, exp: torch.Tensor, detail: torch.Tensor
                      ) -> torch.Tensor:
        """(B,3), (B,50), (B,128) -> uv_z (B,1,256,256) metres."""
        return self.D_detail(torch.cat([jaw, exp, detail], 1))

    def forward(self, images: torch.Tensor, uv: bool = True) -> dict[str, torch.Tensor]:
        out = self.encode(images)
        if uv and self.config.detail:
            out["uv_z"] = self.decode_detail(out["pose"][:, 3:], out["exp"], out["detail"])
        return out


# ---------------------------------------------------------------------------------------------
# state_dict layouts (checkpoint loading, synthetic checkpoints)
# ---------------------------------------------------------------------------------------------
def encoder_shapes(outsize: int, trunk: bool = True) -> dict[str, tuple[int, ...]]:
    out = {f"encoder.{k}": v for k, v in resnet.state_dict_shapes().items()} if trunk else {}
    out.update({"layers.0.weight": (1024, 2048), "layers.0.bias": (1024,),
                "layers.2.weight": (outsize, 1024), "layers.2.bias": (outsize,)})
    return out


def generator_shapes(latent: int = N_COND + N_DETAIL) -> dict[str, tuple[int, ...]]:
    out = {"l1.0.weight": (128 * 64, latent), "l1.0.bias": (128 * 64,)}
    for i, (a, b) in GEN_CONVS.items():
        out[f"conv_blocks.{i}.weight"] = (b, a, 3, 3)
        out[f"conv_blocks.{i}.bias"] = (b,)
    for i, (c, _) in GEN_BNS.items():
        for k in ("weight", "bias", "running_mean", "running_var"):
            out[f"conv_blocks.{i}.{k}"] = (c,)
        out[f"conv_blocks.{i}.num_batches_tracked"] = ()
    return out


def module_shapes(config: NetConfig | None = None) -> dict[str, dict[str, tuple[int, ...]]]:
    """module name -> {key (within the module): shape} of every weight :class:`EmocaNet`
    needs for ``config``."""
    c = config or NetConfig()
    out = {"E_flame": encoder_shapes(N_FLAME)}
    if c.kind == "emoca" and c.expression == "clone":
        out["E_expression"] = encoder_shapes(c.exp_out)
    elif c.kind == "emoca" and c.expression == "parallel":
        out["E_expression"] = encoder_shapes(c.exp_out, trunk=False)
    if c.detail:
        out["E_detail"] = encoder_shapes(c.n_detail)
        out["D_detail"] = generator_shapes(N_COND + c.n_detail)
    return out
