"""Model builders: ResNet-18/34/50 and ViT-Tiny/Small with ReLU / GELU / LWTA activations.

``build_model(name, num_classes, act="lwta", lwta=LWTAOptions(U=2, ...), arch=ArchOptions(width=0.5, ...))``
builds the model registered as ``name`` (:mod:`lwtakit.models.registry`: ``@register_model``, timm-style);
``convert_activations`` swaps the activations of any module; ``default_layers`` names the
activation modules of the last stage plus the classifier (what dissection looks at by default).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from torch import nn

from lwtakit.errors import UserError
from lwtakit.lwta import LWTA, LWTAOptions
from lwtakit.models.convert import convert_activations
from lwtakit.models.options import ArchOptions
from lwtakit.models.registry import ModelRequest, model_entry, model_names, register_model
from lwtakit.models.resnet import ResNet
from lwtakit.models.vit import VisionTransformer

ACTS = ("relu", "gelu", "lwta")

__all__ = ["ArchOptions", "ModelRequest", "activation_layers", "build_model", "convert_activations",
           "default_layers", "make_act_layer", "model_names", "register_model", "ResNet", "VisionTransformer"]


def make_act_layer(act: str, lwta: LWTAOptions | None = None) -> Callable[[int], nn.Module]:
    """Factory ``width -> module`` for ``act`` in relu | gelu | lwta (LWTA layers built from ``lwta``, default
    :class:`LWTAOptions`; U must divide each width; with U = 1 the layer is the dense activation)."""
    if act == "relu":
        return lambda width: nn.ReLU()
    if act == "gelu":
        return lambda width: nn.GELU()
    if act == "lwta":
        options = lwta if lwta is not None else LWTAOptions()

        def lwta_layer(width: int) -> nn.Module:
            if width % options.U:
                raise UserError(f"LWTA U={options.U} does not divide layer width {width}; "
                                "choose U dividing every width")
            return options.build()
        return lwta_layer
    raise UserError(f"unknown activation {act!r}; use one of {', '.join(ACTS)}")


def build_model(name: str, num_classes: int, act: str = "lwta", lwta: LWTAOptions | None = None, *,
                arch: ArchOptions | None = None, **overrides) -> nn.Module:
    """Build the model registered as ``name``. ResNets: every activation site (stem, act1/act2[/act3]) uses ``act``;
    ViTs: the MLP activation only (``act="lwta"`` competes over the hidden 4*dim units per token).
    ``lwta``: the options of every LWTA layer (default :class:`LWTAOptions`); ``lwta.dense=None`` falls back
    to the architecture's activation for U=1 (the registration's ``dense``: ReLU in ResNets, GELU in ViTs).
    ``arch``: width, stem, input size and channels, depth, normalisation (default :class:`ArchOptions`);
    ``overrides`` are its fields (``width=0.25``)."""
    entry = model_entry(name)
    if int(num_classes) < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes!r}")
    arch = replace(arch or ArchOptions(), **overrides)
    lwta = lwta if lwta is not None else LWTAOptions()
    if lwta.dense is None:
        lwta = replace(lwta, dense=entry.dense)
    request = ModelRequest(num_classes=int(num_classes), act_layer=make_act_layer(act, lwta), arch=arch,
                           channel_multiple=lwta.U if act == "lwta" else 1)
    return entry.build(request)


_ACT_TYPES = (LWTA, nn.ReLU, nn.GELU)


def activation_layers(model: nn.Module) -> list[str]:
    """Names of the activation modules (LWTA, ReLU, GELU) in forward order."""
    return [n for n, m in model.named_modules() if isinstance(m, _ACT_TYPES)]


def default_layers(model: nn.Module) -> list[str]:
    """Activation modules of the last stage (ResNet ``layer4``, ViT last block, else the last
    activation) followed by the classifier (``fc`` / ``head`` / last ``nn.Linear``)."""
    names = activation_layers(model)
    if not names:
        raise UserError(f"{type(model).__name__} has no ReLU/GELU/LWTA activation modules to dissect")
    mods = dict(model.named_modules())
    if "layer4" in mods:
        last = [n for n in names if n.startswith("layer4.")]
    elif "blocks" in mods and len(mods["blocks"]):
        prefix = f"blocks.{len(mods['blocks']) - 1}."
        last = [n for n in names if n.startswith(prefix)]
    else:
        last = []
    if not last:
        last = [names[-1]]
    head = next((n for n in ("fc", "head", "classifier") if isinstance(mods.get(n), nn.Linear)), None)
    if head is None:
        linears = [n for n, m in mods.items() if isinstance(m, nn.Linear)]
        head = linears[-1] if linears else None
    return last + ([head] if head else [])
