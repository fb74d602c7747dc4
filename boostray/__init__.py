"""boostray: an ensemble of a network's own checkpoints, boosted AdaBoost-style, for the training cost
of one network (CBNN, Wang et al., NeurIPS 2021), on Ray Train, Tune and Serve.

The names below are imported on first use: a Ray actor that only needs ``boostray.distributed.weight_store``
(the weight registry) then starts without importing PyTorch."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

#: Ray decides once, when it is imported, whether a Ray it starts may bind the machine's network address
#: (and turns even an explicit 127.0.0.1 into that address). boostray starts its local Ray on loopback
#: only, so the variable is set before any ``import ray`` of the process; ``runtime.ray_session`` takes
#: it out of the environment again once Ray has read it, so that no child process (a ``ray start
#: --address``, which aborts under it) inherits it. Joining a cluster is unaffected.
LOOPBACK_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
loopback_set_here = "ray" not in sys.modules and LOOPBACK_VARIABLE not in os.environ
if loopback_set_here:
    os.environ[LOOPBACK_VARIABLE] = "0"

__version__ = "0.2.0"
__all__ = ["BoostTrainer", "BoostConfig", "BoostResult", "Ensemble", "load_ensemble", "create_model", "list_models",
           "__version__"]

_LAZY = {"BoostTrainer": "boostray.api", "BoostResult": "boostray.api", "BoostConfig": "boostray.config",
         "Ensemble": "boostray.core.artifact.ensemble", "load_ensemble": "boostray.core.artifact.ensemble",
         "create_model": "boostray.core.models", "list_models": "boostray.core.models"}

if TYPE_CHECKING:  # (boostray.api and boostray.config import Ray's edge and pydantic: left to first use)
    from boostray.core.artifact.ensemble import Ensemble, load_ensemble
    from boostray.core.models import create_model, list_models


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'boostray' has no attribute {name!r}")
