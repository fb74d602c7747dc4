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
