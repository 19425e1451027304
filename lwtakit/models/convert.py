"""Swap the ReLU / GELU activations of any ``nn.Module`` (e.g. torchvision models) for LWTA.

DISCOVER (Panousis et al. 2023) replaces every ReLU of a ResNet by an LWTA block. torchvision's
BasicBlock calls one ``self.relu`` module twice (after bn1 and after the residual add), so replacing
the module object would make two call sites share one LWTA (and one forward hook). We trace the model
with ``torch.fx`` and give every call site its own module: the first keeps the original name, later
ones are named ``<name>_1``, ``<name>_2`` ... beside it. Models that cannot be traced fall back to
in-place replacement with a warning naming the modules registered under several names.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import replace

import torch
from torch import nn

from lwtakit.errors import UserError
from lwtakit.lwta import LWTAOptions

_ACTS = (nn.ReLU, nn.GELU)


def _new_act(old: nn.Module, lwta: LWTAOptions) -> nn.Module:
    """The LWTA layer replacing ``old``; with ``dense=None`` its U=1 activation is the one it replaces."""
    if lwta.dense is None:
        lwta = replace(lwta, dense="gelu" if isinstance(old, nn.GELU) else "relu")
    return lwta.build()


def _example_input(model: nn.Module) -> torch.Tensor | None:
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        return None
    p = next(model.parameters())
    return torch.rand(1, first.in_channels, 64, 64, device=p.device, dtype=p.dtype)


def _widths(gm: torch.fx.GraphModule, example: torch.Tensor | None) -> dict[str, int]:
    """Competing width (dim 1 for 4-D, else last dim) at each node, from one shape-propagation pass."""
    if example is None:
        return {}
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        was = gm.training
        gm.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
        gm.train(was)
    except Exception:  # shapes are a convenience for early errors; LWTA checks again at run time
        return {}
    out = {}
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            shape = tuple(meta.shape)
            out[node.name] = shape[1] if len(shape) == 4 else shape[-1]
    return out


def convert_activations(
    model: nn.Module,
    lwta: LWTAOptions,
    *,
    skip_indivisible: bool = False,
    example_input: torch.Tensor | None = None,
) -> nn.Module:
    """Return a copy of ``model`` whose ``nn.ReLU`` / ``nn.GELU`` call sites are each an own ``LWTA``.

    ``lwta``: the options of every new layer (U, temperature, inference, kl, ...; ``dense=None``: with U=1
    each site keeps its own ReLU / GELU). A call site whose width U does not divide raises ``UserError`` naming
    it, unless ``skip_indivisible`` keeps its original activation. Widths are found by one shape-propagation
    pass on ``example_input`` (default: a 64x64 random image with the first conv's channel count). The result
    of a traced model is a ``torch.fx.GraphModule`` with the original module hierarchy (``layer1.0.conv1`` ...).
    """
    try:
        gm = torch.fx.symbolic_trace(copy.deepcopy(model))
    except Exception as exc:  # dynamic control flow etc.
        return _convert_in_place(copy.deepcopy(model), lwta, skip_indivisible, reason=str(exc))
    widths = _widths(gm, example_input if example_input is not None else _example_input(gm))
    U = lwta.U
    uses: dict[str, int] = {}
    # collect the call sites first: replacing a module must not hide its later call sites
    sites = [(n, gm.get_submodule(n.target)) for n in gm.graph.nodes if n.op == "call_module"]
    for node, old in sites:
        if not isinstance(old, _ACTS):
            continue
        width = widths.get(node.name)
        if U > 1 and width is not None and width % U:
            if skip_indivisible:
                continue
            raise UserError(
                f"LWTA U={U} does not divide the width {width} of activation {node.target!r}; "
                "choose another U or pass skip_indivisible=True to keep that layer dense"
            )
        k = uses.get(node.target, 0)
        uses[node.target] = k + 1
        name = node.target if k == 0 else f"{node.target}_{k}"
        if k > 0:
            while _has(gm, name):
                name += "_"
        gm.add_submodule(name, _new_act(old, lwta))
        node.target = name
    gm.graph.lint()
    gm.recompile()
    return gm


def _has(gm: nn.Module, name: str) -> bool:
    try:
        gm.get_submodule(name)
        return True
    except AttributeError:
        return False


def _convert_in_place(model: nn.Module, lwta: LWTAOptions, skip_indivisible: bool, reason: str) -> nn.Module:
    names: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, _ACTS) and name:
            names.setdefault(id(m), []).append(name)
    shared = [n for ns in names.values() if len(ns) > 1 for n in ns]
    warnings.warn(
        f"could not trace the model with torch.fx ({reason.splitlines()[0] if reason else 'unknown'}); "
        "activations are replaced in place, so a module called at several sites stays one module"
        + (f"; shared: {', '.join(shared)}" if shared else ""),
        stacklevel=3,
    )
    if skip_indivisible:
        warnings.warn("skip_indivisible has no effect without tracing: widths are checked at run time", stacklevel=3)
    replaced: dict[int, nn.Module] = {}
    for name, m in list(model.named_modules(remove_duplicate=False)):
        if isinstance(m, _ACTS) and name:
            new = replaced.setdefault(id(m), _new_act(m, lwta))
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model
