"""What one run trains, as the Ray-free core sees it: the data, the model and its optimisation, the
boosting step and the method, every preset-dependent choice already resolved.

``config.TrainConfig.spec()`` builds it from the command's options; where a run goes and what runs it
(workers, cluster address, output, tracking) stay in the config. The core never imports the config.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from boostray.core.method.methods import Method


@dataclass(frozen=True)
class RunSpec:
    # data
    dataset: str
    data_dir: str | None
    download: bool
    imbalance_ratio: float | None
    val_fraction: float
    train_subset: int | None
    stream: bool
    stream_window: int
    # model and optimisation
    model: str
    model_kwargs: dict
    epochs: int
    members: int
    lr: float
    weight_decay: float
    batch_size: int
    augment: bool
    class_weight: str
    sampler: str
    start_weights: str
    seed: int
    amp: str | None
    channels_last: bool
    compile: bool
    cuda_autotune: bool
    # boosting and combination
    eta: float
    min_error: float
    error_source: str
    lambda_source: str
    max_weight_ratio: float | None
    ess_min: float | None
    mix_uniform: float
    vote: str
    calibrate: bool
    #: the method's schedule, rounds and members (Method.name: the preset it came from)
    method: Method

    @property
    def lambdas_from_validation(self) -> bool:
        """Whether lambda_m comes from each member's validation error (fitted on validation data)."""
        return not self.method.reweights or self.lambda_source == "val"


#: the options a RunSpec takes from the config, by name
SPEC_FIELDS = tuple(f.name for f in fields(RunSpec) if f.name != "method")
