"""The models: the built-in networks (builtin.py) and the call that builds any model, built-in, named by
import path or handed in as an object (registry.py)."""

from boostray.core.models import builtin  # noqa: F401  (registers the built-in names)
from boostray.core.models.registry import (  # noqa: F401  (this package's interface)
    INPUT_ARGUMENTS, OBJECT_PREFIX, build_model, call_factory, create_model, import_path_of, is_import_path,
    list_models, model_inputs, register_model, resolve_factory,
)
