"""Vision Transformer (Dosovitskiy et al., ICLR 2021) with a swappable MLP activation.

As in DISCOVER's DeiT variants (Panousis et al. 2023) only the MLP activation is replaced: LWTA
competes over the hidden ``4 * dim`` units of each token (module ``blocks.<i>.mlp.act``). CLS token,
learned position embeddings, pre-norm blocks, classifier ``head`` on the final CLS token.
Images come in [0, 1] and are normalised inside (buffers ``mean``/``std``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lwtakit.errors import UserError
from lwtakit.models.options import ArchOptions
from lwtakit.models.registry import ModelRequest, register_model
from lwtakit.models.resnet import Normalize

ActLayer = Callable[[int], nn.Module]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act_layer: ActLayer):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act_layer(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise UserError(f"ViT dim {dim} is not divisible by the number of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, act_layer: ActLayer):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT with CLS token; ``blocks`` (nn.Sequential), final ``norm`` and classifier ``head``. ``arch`` gives the
    image and patch size, depth, input channels and normalisation; ``dim``/``heads`` the width (ViT-Tiny's)."""

    def __init__(self, num_classes: int, act_layer: ActLayer, arch: ArchOptions | None = None, dim: int = 192,
                 heads: int = 3, mlp_ratio: float = 4.0):
        super().__init__()
        arch = arch if arch is not None else ArchOptions()
        img_size, patch_size, in_chans = arch.img_size, arch.patch_size, arch.in_chans
        depth = int(arch.depth) if arch.depth is not None else 12
        if img_size % patch_size:
            raise UserError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        mean, std = arch.normalization()
        self.img_size = img_size
        self.normalize = Normalize(mean, std)
        self.patch_embed = nn.Conv2d(in_chans, dim, patch_size, patch_size)
        n = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, act_layer) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise UserError(
                f"ViT built for {self.img_size}x{self.img_size} images got {tuple(x.shape[-2:])}; "
                "set img_size to the data's size"
            )
        x = self.patch_embed(self.normalize(x)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit_tiny(**kw) -> VisionTransformer:
    kw.setdefault("dim", 192)
    kw.setdefault("heads", 3)
    return VisionTransformer(**kw)


def vit_small(**kw) -> VisionTransformer:
    kw.setdefault("dim", 384)
    kw.setdefault("heads", 6)
    return VisionTransformer(**kw)


# No channel_multiple: the widths are the architecture's, and the LWTA factory refuses a U that does not divide one.
@register_model("vit_tiny", dense="gelu")
def _vit_tiny(request: ModelRequest) -> VisionTransformer:
    return vit_tiny(num_classes=request.num_classes, act_layer=request.act_layer, arch=request.arch)


@register_model("vit_small", dense="gelu")
def _vit_small(request: ModelRequest) -> VisionTransformer:
    return vit_small(num_classes=request.num_classes, act_layer=request.act_layer, arch=request.arch)
