"""The ensemble artifact: ``ensemble/manifest.json`` plus one state dict per member, and its loader.

Inputs to ``predict_proba`` are raw values shaped as in the data set: pixel values (0..255) shaped
(N, C, H, W) for images, floats of the input shape for features. The manifest's normalisation is applied
here, so the artifact is self-describing for serving.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from boostray.core.artifact import storage
from boostray.core.method.boosting import apply_temperature, vote
from boostray.errors import ArtifactError
from boostray.core.data.datasets import normalization_tensors
from boostray.core.models import OBJECT_PREFIX, build_model, create_model, import_path_of

# 2: "temperature" and the method's axes; version 1 manifests load with temperature 1. 3: the model entry is
# a name or import path with the user's keyword arguments, the classes and the input shape; "input_kind"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MANIFEST = "manifest.json"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_ensemble(
    directory: str,
    *,
    member_states: Sequence[dict[str, torch.Tensor]],
    member_info: Sequence[dict],
    manifest: dict,
) -> dict:
    """Write members and manifest into ``directory`` (which the caller renames into place when done)."""
    os.makedirs(directory, exist_ok=True)
    entries = []
    for i, (sd, info) in enumerate(zip(member_states, member_info)):
        fname = f"member_{i:03d}.pt"
        path = os.path.join(directory, fname)
        torch.save(sd, path)
        entries.append({"file": fname, **info, "sha256": sha256_file(path)})
    full = {"format_version": FORMAT_VERSION, **manifest, "members": entries}
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(full, f, indent=2)
    return full


class Ensemble:
    """Checkpoint members with their weights; ``predict_proba`` is the weighted vote of the manifest,
    calibrated by its temperature."""

    def __init__(self, manifest: dict, members: list[nn.Module]) -> None:
        self.manifest = manifest
        self.members = members
        self.weights = np.array([m["weight"] for m in manifest["members"]], dtype=np.float64)
        self.vote_mode = manifest["vote"]
        self.temperature = float(manifest.get("temperature", 1.0))
        self.classes: list[str] = manifest["classes"]
        self.input_shape = tuple(manifest["input_shape"])
        self.input_kind: str = manifest.get("input_kind", "image")
        self.scale = float(manifest["normalization"].get("scale", 255.0))
        self.device = torch.device("cpu")
        #: the mean and std, shaped to broadcast over a batch (serving and export apply them too)
        self.mean, self.std = normalization_tensors(manifest["normalization"]["mean"], manifest["normalization"]["std"],
                                                      self.input_shape)

    def to(self, device: str | torch.device) -> "Ensemble":
        self.device = torch.device(device)
        for m in self.members:
            m.to(self.device)
        return self

    def _as_tensor(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(x)
        shape = self.input_shape
        if t.ndim == len(shape):  # one input, or a batch of grey images shaped (N, H, W)
            grey_batch = len(shape) == 3 and shape[0] == 1 and tuple(t.shape[1:]) == shape[1:] and tuple(t.shape) != shape
            t = t.unsqueeze(1) if grey_batch else t.unsqueeze(0)
        if tuple(t.shape[1:]) != self.input_shape:
            what = "images" if self.input_kind == "image" else "inputs"
            raise ValueError(f"expected {what} shaped (N, {', '.join(map(str, self.input_shape))}), got {tuple(t.shape)}")
        return t

    @torch.no_grad()
    def member_proba(self, x: np.ndarray | torch.Tensor, batch_size: int = 1024) -> np.ndarray:
        """Each member's softmax outputs: (M, N, K)."""
        t = self._as_tensor(x)
        mean, std = self.mean.to(self.device), self.std.to(self.device)
        out = np.empty((len(self.members), t.shape[0], len(self.classes)), dtype=np.float32)
        for start in range(0, t.shape[0], batch_size):
            xb = (t[start:start + batch_size].to(self.device).float() / self.scale - mean) / std
            for i, m in enumerate(self.members):
                out[i, start:start + xb.shape[0]] = torch.softmax(m(xb), dim=1).cpu().numpy()
        return out

    def combine(self, member_proba: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Members' (M, N, K) probabilities -> the ensemble's (N, K): weighted vote, then temperature."""
        w = self.weights if weights is None else weights
        return apply_temperature(vote(member_proba, w, self.vote_mode), self.temperature)

    def predict_proba(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.combine(self.member_proba(x))

    def predict(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.predict_proba(x).argmax(axis=1)

    def staged_predict_proba(self, x: np.ndarray | torch.Tensor) -> Iterator[np.ndarray]:
        """Ensemble probabilities of the first 1, 2, ..., M members."""
        p = self.member_proba(x)
        for k in range(1, len(self.members) + 1):
            yield self.combine(p[:k], self.weights[:k])

    def __len__(self) -> int:
        return len(self.members)


def _ensemble_dir(path: str) -> str:
    path = storage.local_copy(path)  # a run at a storage URI is read from a local copy
    if os.path.isfile(os.path.join(path, MANIFEST)):
        return path
    if os.path.isfile(os.path.join(path, "ensemble", MANIFEST)):
        return os.path.join(path, "ensemble")
    raise ArtifactError(f"no ensemble manifest in {path} (expected {os.path.join(path, 'ensemble', MANIFEST)})")


def read_manifest(path: str) -> tuple[str, dict]:
    directory = _ensemble_dir(path)
    try:
        with open(os.path.join(directory, MANIFEST)) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"unreadable manifest in {directory}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") not in READABLE_VERSIONS:
        raise ArtifactError(f"{directory}/{MANIFEST}: unsupported format_version {manifest.get('format_version') if isinstance(manifest, dict) else None}")
    for key in ("model", "members", "classes", "vote", "input_shape", "normalization"):
        if key not in manifest:
            raise ArtifactError(f"{directory}/{MANIFEST} lacks {key!r}")
    if not manifest["members"]:
        raise ArtifactError(f"{directory}/{MANIFEST} lists no members")
    return directory, manifest


def member_factory(manifest: dict, model=None):
    """A callable that builds one (untrained) member as the manifest says: ``model`` (a class or factory,
    for a run whose model was handed in as a Python object), else the name or import path it records."""
    spec = manifest["model"]
    if "num_classes" not in spec:  # before version 3: a built-in name, kwargs num_classes/in_channels/image_size
        return lambda: create_model(spec["name"], **spec["kwargs"])
    if model is None and spec["name"].startswith(OBJECT_PREFIX):
        raise ArtifactError(f"this run's model ({spec['name'][len(OBJECT_PREFIX):]}) was handed in from Python as an "
                            f"object: load it with load_ensemble(path, model=<that class or factory>)")
    if isinstance(model, str):
        name, model = model, None
    else:
        name = (import_path_of(model) if model is not None else None) or spec["name"]
    return lambda: build_model(name, num_classes=spec["num_classes"], input_shape=spec["input_shape"],
                               kwargs=spec["kwargs"], factory=model)


def load_ensemble(path: str, device: str | torch.device = "cpu", model=None) -> Ensemble:
    """Load a run directory (or its ``ensemble/`` folder); every member's sha256 is checked. ``model``: the
    class or factory of a run whose model was handed in from Python as an object (the run directory holds
    no code); a run whose model has a name or an import path needs none."""
    directory, manifest = read_manifest(path)
    build = member_factory(manifest, model)
    members = []
    for entry in manifest["members"]:
        fpath = os.path.join(directory, entry["file"])
        if not os.path.isfile(fpath):
            raise ArtifactError(f"member file {fpath} is missing")
        digest = sha256_file(fpath)
        if digest != entry["sha256"]:
            raise ArtifactError(f"sha256 mismatch for {fpath}: the file was changed after training")
        model_spec = manifest["model"]
        net = build()
        try:
            net.load_state_dict(torch.load(fpath, map_location="cpu", weights_only=True))
        except Exception as exc:  # a state dict that does not fit the manifest's model
            raise ArtifactError(f"member {fpath} does not fit model {model_spec['name']}: {exc}") from None
        members.append(net.eval())
    return Ensemble(manifest, members).to(device)
