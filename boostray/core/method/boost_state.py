"""Everything a run has decided so far, saved with every checkpoint and returned at the end.

Plain Python lists, NumPy arrays and CPU state dicts, converted to tensors for ``torch.save`` so a
checkpoint loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import torch


@dataclass
class MemberRecord:
    round: int  # 1-based round whose end produced this checkpoint
    epoch: int  # epochs trained when it was taken
    lambda_: float  # lambda_m (uniform methods: 1.0)
    error: float  # e_m behind lambda_m, clamped: weighted training error, or validation error (lambda_source=val); NaN for uniform methods
    raw_error: float  # weighted training error, unclamped
    train_accuracy: float
    val_accuracy: float
    test_accuracy: float
    eta: float = float("nan")  # shrinkage of the update after this member (below --eta when --ess-min bounds it)

    def to_json(self) -> dict:
        """As metrics.json and checkpoints write it: lambda_m under the key "lambda"."""
        out = asdict(self)
        out["lambda"] = out.pop("lambda_")
        return out

    @classmethod
    def from_json(cls, data: dict) -> "MemberRecord":
        """Also reads checkpoints written before the rename, which called lambda_m "alpha"."""
        data = dict(data)
        lam = data.pop("lambda", data.pop("alpha", data.pop("lambda_", None)))
        return cls(lambda_=lam, **data)


MEMBER_PAYLOAD = ("member_states", "val_proba", "test_proba")  # per member, the bulk of a run's state


@dataclass
class BoostState:
    rounds_done: int = 0
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))  # current sample weights (sum 1)
    weights_history: list[np.ndarray] = field(default_factory=list)  # weights used in each round
    ess: list[float] = field(default_factory=list)  # effective sample size after each round's update
    members: list[MemberRecord] = field(default_factory=list)
    member_states: list[dict[str, torch.Tensor]] = field(default_factory=list)
    val_proba: list[np.ndarray] = field(default_factory=list)  # per member, (n_val, K) float32
    test_proba: list[np.ndarray] = field(default_factory=list)
    last_val_proba: np.ndarray | None = None  # the current network's, whether or not it is a member
    last_test_proba: np.ndarray | None = None
    epoch_log: list[dict] = field(default_factory=list)
    rank_digests: list[list[list[float]]] = field(default_factory=list)  # per round: each rank's weights digest
    error_pass_bytes: list[int] = field(default_factory=list)  # per re-weighting round: what this rank all-reduced for c_i
    train_seconds: float = 0.0
    resumed_at_rounds: list[int] = field(default_factory=list)  # rounds_done at each restore from a checkpoint
    loop_wall: list[float] = field(default_factory=list)  # wall clock (time.time) when this process's training loop began and ended
    placements: list[list[str]] = field(default_factory=list)  # per worker group that trained: each rank's Ray node id
    peak_chunks_held: int = 0  # --stream: most training chunks (row groups) rank 0 held at once
    probe_val_accuracy: float = float("nan")  # the last network's validation accuracy at 3/4 of its schedule

    @classmethod
    def initial(cls, n: int) -> "BoostState":
        return cls(weights=np.full(n, 1.0 / n))

    def history(self) -> list[dict]:
        """(e_m, lambda_m) per member: what the weight store publishes beside the weights."""
        return [{"round": m.round, "error": m.error, "raw_error": m.raw_error, "lambda": m.lambda_, "eta": m.eta}
                for m in self.members]

    def to_portable(self, per_sample: bool = True) -> dict:
        """Tensor-free form (NumPy only): what a Ray Train function may return to the driver.
        ``per_sample=False`` leaves out the sample weights (current and per round): 8 + 4 M bytes a sample
        that rank 0 writes to a file instead, so that the driver never holds them."""
        state = self if per_sample else replace(self, weights=np.zeros(0), weights_history=[])
        out = state.to_saveable()
        for key, value in out.items():
            if isinstance(value, torch.Tensor):
                out[key] = value.numpy()
            elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
                out[key] = [t.numpy() for t in value]
        out["member_states"] = [{k: v.numpy() for k, v in sd.items()} for sd in self.member_states]
        return out

    def to_saveable(self, members: bool = True) -> dict:
        """Tensors and plain Python, for torch.save. ``members=False`` leaves out the members' state dicts
        and probabilities, which a checkpoint writes once each, beside it (member_payload)."""
        out = {}
        with warnings.catch_warnings():  # the weights may be the object store's read-only view: nothing writes these
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
            for f in fields(self):
                if not members and f.name in MEMBER_PAYLOAD:
                    continue
                v = getattr(self, f.name)
                if f.name == "members":
                    v = [m.to_json() for m in v]
                elif isinstance(v, np.ndarray):
                    v = torch.from_numpy(np.ascontiguousarray(v))
                elif isinstance(v, list) and v and isinstance(v[0], np.ndarray):
                    v = [torch.from_numpy(np.ascontiguousarray(a)) for a in v]
                out[f.name] = v
        return out

    @classmethod
    def from_saveable(cls, data: dict) -> "BoostState":
        kwargs = {}
        for f in fields(cls):
            if f.name not in data:  # a checkpoint written before the field existed: keep its default
                continue
            v = data[f.name]
            if f.name == "members":
                v = [MemberRecord.from_json(m) for m in v]
            elif isinstance(v, torch.Tensor):
                v = v.numpy()
            elif f.name == "member_states":
                v = [{k: t.clone() if isinstance(t, torch.Tensor) else torch.from_numpy(np.array(t))  # writable copies
                      for k, t in sd.items()} for sd in v]
            elif isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
                v = [t.numpy() for t in v]
            kwargs[f.name] = v
        return cls(**kwargs)

    def member_payload(self, i: int) -> dict:
        """Member i's state dict and probabilities, saved once per member beside the checkpoints."""
        return {"state_dict": self.member_states[i], "val_proba": torch.from_numpy(self.val_proba[i]),
                "test_proba": torch.from_numpy(self.test_proba[i])}

    def add_member_payload(self, payload: dict) -> None:
        self.member_states.append(payload["state_dict"])
        self.val_proba.append(payload["val_proba"].numpy())
        self.test_proba.append(payload["test_proba"].numpy())
