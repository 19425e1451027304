"""The model registry (the way timm registers models): a builder and its registration, ``build_model`` by name.

Adding a model family is one file and one registration per model::

    @register_model("tiny_cnn", dense="relu")
    def tiny_cnn(request: ModelRequest) -> nn.Module:
        return TinyCNN(request.num_classes, request.act_layer, request.arch)

after which :func:`lwtakit.models.build_model`, ``train.py model.name=tiny_cnn`` (the config's choices are the
registered names) and the checkpoint loader build it (tests/test_registries.py registers one outside the package).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from lwtakit.errors import UserError
from lwtakit.models.options import ArchOptions


@dataclass(frozen=True)
class ModelRequest:
    """What a registered builder is given: the classes, the activation factory ``width -> module`` every
    activation site uses, the architecture options, and the multiple every LWTA-bearing width must be (U, or 1)."""

    num_classes: int
    act_layer: Callable[[int], nn.Module]
    arch: ArchOptions
    channel_multiple: int = 1


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder and ``dense``, the activation an LWTA layer with U = 1 falls back to (the
    architecture's own: ReLU in ResNets, GELU in ViTs)."""

    name: str
    build: Callable[[ModelRequest], nn.Module]
    dense: str = "relu"


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, dense: str = "relu") -> Callable:
    """Decorator: make the builder ``fn(request: ModelRequest) -> nn.Module`` available as ``name``."""
    if dense not in ("relu", "gelu"):
        raise ValueError(f"model {name!r}: dense must be 'relu' or 'gelu', got {dense!r}")

    def register(fn: Callable[[ModelRequest], nn.Module]) -> Callable[[ModelRequest], nn.Module]:
        old = _REGISTRY.get(name)
        if old is not None and old.build is not fn:
            raise ValueError(f"a model named {name!r} is already registered ({old.build.__qualname__})")
        _REGISTRY[name] = ModelEntry(name, fn, dense)
        return fn

    return register


def model_names() -> list[str]:
    """Registered model names (the built-in ones first)."""
    _load_builtins()
    return list(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The registration of model ``name``; an unknown name is one line listing the registered ones."""
    _load_builtins()
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; available: {', '.join(_REGISTRY)} (a model of your own: "
                        "@register_model in a module imported before the run)")
    return _REGISTRY[name]


def _load_builtins() -> None:
    # Importing the modules registers the built-in models.
    from lwtakit.models import resnet, vit  # noqa: F401
