"""boostray: an ensemble of a network's own checkpoints, boosted AdaBoost-style, for the training cost
of one network (CBNN, Wang et al., NeurIPS 2021), on Ray Train, Tune and Serve."""

from boostray.core.ensemble import Ensemble, load_ensemble
from boostray.core.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["Ensemble", "load_ensemble", "create_model", "list_models", "__version__"]
