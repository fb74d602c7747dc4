"""Models: a registry of built-in networks (timm-style ``create_model``), and any user's network named by an
import path (``package.module:factory``) or handed in as a Python object.

Every model is built eagerly from its arguments alone, so a member saved as a state dict loads into the
same call (``build_model`` with the manifest's model entry) in any process, with no lazily created
layers. A factory is called with those of ``num_classes``, ``in_channels``, ``image_size`` and
``input_shape`` that it names (and ``num_classes`` too when it takes ``**kwargs``, as torchvision's and
timm's factories do), plus the user's keyword arguments: ``torchvision.models:resnet18`` works as it is.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Sequence

import torch
from torch import nn

from boostray.errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

#: the prefix of a model handed in from Python as an object (no import path): its runs load with
#: ``load_ensemble(path, model=...)``
OBJECT_PREFIX = "object:"
INPUT_ARGUMENTS = ("num_classes", "in_channels", "image_size", "input_shape")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Add ``fn`` to the built-in names (in this process only: a user's model is named by import path)."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def is_import_path(name: str) -> bool:
    return ":" in name and not name.startswith(OBJECT_PREFIX)


def import_path_of(obj: Any) -> str | None:
    """``module:qualname`` for a class or function that another process can import, else None (defined in
    ``__main__``, inside a function, or a lambda)."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return None
    try:
        found = _attribute(importlib.import_module(module), qualname)
    except (ImportError, AttributeError):
        return None
    return f"{module}:{qualname}" if found is obj else None


def _attribute(module: Any, qualname: str) -> Any:
    value = module
    for part in qualname.split("."):
        value = getattr(value, part)
    return value


def resolve_factory(name: str) -> Callable[..., nn.Module]:
    """The callable behind a model name: a built-in name, or ``package.module:factory`` imported here.
    Raises ConfigError with one line naming what could not be found."""
    if name.startswith(OBJECT_PREFIX):
        raise ConfigError(f"model {name[len(OBJECT_PREFIX):]!r} was handed in from Python as an object, not an import "
                          f"path: pass it again (boostray.load_ensemble(path, model=...))")
    if not is_import_path(name):
        if name not in _REGISTRY:
            raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}, "
                              f"or name your own as package.module:factory")
        return _REGISTRY[name]
    module_name, _, qualname = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's module: name it in one line
        raise ConfigError(f"--model {name}: cannot import {module_name} ({type(exc).__name__}: {exc})") from None
    try:
        factory = _attribute(module, qualname)
    except AttributeError:
        raise ConfigError(f"--model {name}: module {module_name} has no attribute {qualname!r}") from None
    if not callable(factory):
        raise ConfigError(f"--model {name}: {qualname} is not callable")
    return factory


def model_inputs(num_classes: int, input_shape: Sequence[int]) -> dict[str, Any]:
    """What a factory may be told about the data: images (C, H, W) have channels and a size; other inputs
    only a shape."""
    shape = tuple(int(s) for s in input_shape)
    inputs: dict[str, Any] = {"num_classes": int(num_classes), "input_shape": shape}
    if len(shape) == 3:
        inputs.update(in_channels=shape[0], image_size=shape[-1])
    return inputs


def call_factory(factory: Callable[..., nn.Module], inputs: dict[str, Any], kwargs: dict[str, Any], what: str) -> nn.Module:
    """``factory`` called with the ``inputs`` it names (plus ``num_classes`` when it takes ``**kwargs``) and
    the user's ``kwargs``, which win. A factory that raises, or returns no nn.Module, is a ConfigError."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    named = {k: v for k, v in inputs.items() if k in params}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        named.setdefault("num_classes", inputs["num_classes"])
    try:
        net = factory(**{**named, **kwargs})
    except Exception as exc:  # noqa: BLE001 - the user's code: one line naming it
        raise ConfigError(f"model {what} failed to build with {sorted({**named, **kwargs})}: "
                          f"{type(exc).__name__}: {exc}") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"model {what} returned {type(net).__name__}, not a torch.nn.Module")
    return net


def build_model(name: str, *, num_classes: int, input_shape: Sequence[int], kwargs: dict[str, Any] | None = None,
                factory: Callable[..., nn.Module] | None = None) -> nn.Module:
    """The network a run trains and its members load into: ``factory`` when given (a Python object),
    else the built-in or imported factory that ``name`` names."""
    factory = factory or resolve_factory(name)
    return call_factory(factory, model_inputs(num_classes, input_shape), dict(kwargs or {}), name)


def create_model(name: str, *, num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    """A model by name for images (C, size, size), timm-style."""
    return build_model(name, num_classes=num_classes, input_shape=(in_channels, image_size, image_size), kwargs=kwargs)


@register_model
def small_cnn(*, num_classes: int, in_channels: int, image_size: int, width: int = 32, dropout: float = 0.1) -> nn.Module:
    """Four 3x3 conv layers and a linear head, for tiny images: digits (8x8) keeps full resolution for
    two layers; 16 px and larger inputs are pooled after the first layer, so a 28x28 image costs ~5M
    multiply-adds."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    layers: list[nn.Module] = block(in_channels, width)
    if image_size >= 16:
        layers.append(nn.MaxPool2d(2))
    layers += [*block(width, width), nn.MaxPool2d(2), *block(width, 2 * width), *block(2 * width, 2 * width)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * width, num_classes)]
    return nn.Sequential(*layers)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs (He et al. 2016, section 4.2): depth = 6n + 2, widths 16/32/64."""

    def __init__(self, depth: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(_BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def _cifar_resnet(depth: int) -> Callable[..., nn.Module]:
    def build(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return CifarResNet(depth, num_classes, in_channels)

    build.__name__ = f"resnet{depth}"
    build.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016)."
    return build


for _depth in (20, 32, 56, 110):
    register_model(_cifar_resnet(_depth))


@register_model
def resnet18(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """torchvision ResNet-18; for inputs <= 64 px the stem is a 3x3 stride-1 conv without max-pool."""
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None, num_classes=num_classes)
    if image_size <= 64:
        model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return model


@register_model
def efficientnet_b0(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """torchvision EfficientNet-B0; for inputs <= 64 px the stem keeps full resolution (stride 1)."""
    from torchvision.models import efficientnet_b0 as tv_efficientnet_b0

    model = tv_efficientnet_b0(weights=None, num_classes=num_classes)
    stem = model.features[0][0]
    stride = 1 if image_size <= 64 else 2
    if in_channels != 3 or stride != 2:
        model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, stride, 1, bias=False)
    return model


@register_model
def mlp(*, num_classes: int, input_shape: Sequence[int], hidden: int = 256, depth: int = 2,
        dropout: float = 0.1) -> nn.Module:
    """A multilayer perceptron over the flattened input: for tabular rows, embeddings and spectra."""
    width = int(torch.tensor(input_shape).prod())
    layers: list[nn.Module] = [nn.Flatten()]
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
