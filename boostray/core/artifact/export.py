"""One portable file that computes the whole ensemble: raw uint8 pixels in, calibrated probabilities out.

The graph normalises the pixels, runs every member, combines them with the manifest's weights and vote
(soft: weighted probabilities; hard: weighted one-hot votes), applies the temperature and returns
(N, K) probabilities for any batch size N. ``onnx`` is for ONNX Runtime, Triton and devices (each
member's sha256 travels in the model's metadata); ``torch-export`` is a torch.export program (.pt2) that
``torch.export.load(path).module()`` runs without boostray.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from torch import nn

from boostray.core.artifact.ensemble import Ensemble

FORMATS = ("onnx", "torch-export")
OPSET = 17


class EnsembleGraph(nn.Module):
    """The ensemble's forward as one module (what Ensemble.predict_proba computes, batch by batch)."""

    def __init__(self, ensemble: Ensemble) -> None:
        super().__init__()
        self.members = nn.ModuleList(m.cpu().eval() for m in ensemble.members)
        weights = ensemble.weights / ensemble.weights.sum()
        self.weights = [float(w) for w in weights]  # constants in the graph
        self.hard = ensemble.vote_mode == "hard"
        self.num_classes = len(ensemble.classes)
        self.temperature = float(ensemble.temperature)
        self.scale = float(ensemble.scale)
        self.register_buffer("mean", ensemble.mean.clone())
        self.register_buffer("std", ensemble.std.clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() / self.scale - self.mean) / self.std
        combined = None
        for weight, member in zip(self.weights, self.members):
            logits = member(x)
            if self.hard:
                p = nn.functional.one_hot(logits.argmax(dim=1), self.num_classes).float()
            else:
                p = torch.softmax(logits, dim=1)
            combined = weight * p if combined is None else combined + weight * p
        if self.temperature == 1.0:
            return combined
        return torch.softmax(torch.log(combined.clamp_min(1e-12)) / self.temperature, dim=1)


def input_dtype(ensemble: Ensemble) -> torch.dtype:
    """The graph's input: uint8 pixels for images, float32 for features."""
    return torch.uint8 if ensemble.input_kind == "image" else torch.float32


def example_inputs(ensemble: Ensemble, n: int, seed: int = 0) -> np.ndarray:
    """``n`` random inputs of the ensemble's kind: pixel values for images, standard normal features."""
    rng = np.random.default_rng(seed)
    if ensemble.input_kind == "image":
        return rng.integers(0, 256, (n, *ensemble.input_shape), dtype=np.uint8)
    return rng.standard_normal((n, *ensemble.input_shape)).astype(np.float32)


def export_ensemble(ensemble: Ensemble, path: str, fmt: str = "onnx") -> str:
    """Write the ensemble as one file (atomically: a crash leaves no half-written model); returns ``path``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    graph = EnsembleGraph(ensemble).eval()
    example = torch.zeros((2, *ensemble.input_shape), dtype=input_dtype(ensemble))
    tmp = f"{path}.partial-{os.getpid()}"
    try:
        with torch.no_grad():
            if fmt == "torch-export":
                program = torch.export.export(graph, (example,), dynamic_shapes={"images": {0: torch.export.Dim("batch")}})
                torch.export.save(program, tmp)
            else:
                _export_onnx(graph, example, ensemble, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _export_onnx(graph: EnsembleGraph, example: torch.Tensor, ensemble: Ensemble, path: str) -> None:
    import onnx

    torch.onnx.export(
        graph, (example,), path, input_names=["images"], output_names=["probabilities"], opset_version=OPSET,
        dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}}, dynamo=False,
    )
    model = onnx.load(path)
    manifest = ensemble.manifest
    meta = {
        "boostray.format_version": str(manifest["format_version"]),
        "boostray.name": str(manifest.get("name")),
        "boostray.method": str(manifest.get("method")),
        "boostray.classes": json.dumps(manifest["classes"]),
        "boostray.temperature": repr(float(ensemble.temperature)),
        "boostray.weights": json.dumps([float(w) for w in ensemble.weights]),
        "boostray.member_sha256": json.dumps([m["sha256"] for m in manifest["members"]]),
    }
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, path)


def compare_with_runtime(path: str, ensemble: Ensemble, images: np.ndarray) -> float:
    """Largest absolute difference between ONNX Runtime's probabilities and load_ensemble's on ``images``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": np.ascontiguousarray(images, dtype=np.uint8 if ensemble.input_kind == "image" else np.float32)})[0]
    return float(np.abs(got - ensemble.predict_proba(images)).max())
