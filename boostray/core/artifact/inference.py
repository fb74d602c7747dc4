"""Serving-side inference without Ray: request validation, the all-members forward, the cascade.

``MemberStack`` evaluates the M members of a batch together, either stacked (torch.func:
stack_module_state + functional_call + vmap, one batched kernel per layer) or as a loop; which is
faster depends on device and batch size, so it is measured (bench/bench_serving.py) and chosen per device.
``cascade_predict`` evaluates members in order of weight and stops once the remaining weight cannot
change any answer: its labels equal the full ensemble's. On a CPU the loop runs inference copies of the
members (batch norm folded into the convolutions, channels-last): 1.5x faster for small_cnn at
batches of 1 and 32 (bench/bench_serving.py), the same probabilities within 1e-5.
"""

from __future__ import annotations

import base64
import binascii
import copy
import io
from dataclasses import dataclass

import numpy as np
import torch

from boostray.core.method.boosting import apply_temperature
from boostray.core.artifact.ensemble import Ensemble
from boostray.core.data.images import fit_image


class RequestError(Exception):
    """A bad request: HTTP status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ------------------------------------------------------------------------------------------- inputs


def _decode_b64_image(data: str, shape: tuple[int, int, int], index: int) -> np.ndarray:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(400, f"instance {index}: b64 is not base64 ({exc.__class__.__name__})") from None
    return decode_image_bytes(raw, shape, f"instance {index}")


def decode_image_bytes(raw: bytes, shape: tuple[int, int, int], where: str) -> np.ndarray:
    """An encoded PNG/JPEG -> float32 raw pixels (C, H, W), converted and fitted to the model's input (the
    shorter side resized, the centre cropped: images.fit_image)."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(raw))
        img.load()
    except (ValueError, UnidentifiedImageError, OSError) as exc:
        raise RequestError(400, f"{where}: not a decodable PNG/JPEG image ({exc.__class__.__name__})") from None
    c, h, w = shape
    img = fit_image(img.convert("L" if c == 1 else "RGB"), h, w)  # as --image-size fits training images
    arr = np.asarray(img, dtype=np.float32)
    return arr[None] if c == 1 else arr.transpose(2, 0, 1)


def parse_instances(payload: object, shape: tuple[int, ...], max_instances: int, images: bool = True) -> np.ndarray:
    """``{"instances": [...]}`` -> float32 raw pixels (N, C, H, W). Instances are nested numeric arrays
    shaped C x H x W (or H x W for one channel) or ``{"b64": "<PNG/JPEG>"}``."""
    if not isinstance(payload, dict):
        raise RequestError(400, "the body must be a JSON object with an 'instances' list")
    instances = payload.get("instances")
    if not isinstance(instances, list):
        raise RequestError(400, "missing 'instances' (a list of images)")
    if not instances:
        raise RequestError(400, "'instances' is empty")
    if len(instances) > max_instances:
        raise RequestError(413, f"{len(instances)} instances exceed the limit of {max_instances} per request")
    out = np.empty((len(instances), *shape), dtype=np.float32)
    for i, inst in enumerate(instances):
        if isinstance(inst, dict):
            if not images:  # features, whatever their shape: an encoded image would arrive as 0..255 pixels
                raise RequestError(400, f"instance {i}: this model takes numbers shaped {shape}, not encoded images")
            if set(inst) != {"b64"} or not isinstance(inst["b64"], str):
                raise RequestError(400, f"instance {i}: an object instance must be {{\"b64\": \"<image>\"}}")
            out[i] = _decode_b64_image(inst["b64"], shape, i)
            continue
        try:
            arr = np.asarray(inst, dtype=np.float32)
        except (ValueError, TypeError):
            raise RequestError(400, f"instance {i}: not a numeric array") from None
        if arr.dtype == object or arr.shape not in (shape, shape[1:] if len(shape) == 3 and shape[0] == 1 else shape):
            raise RequestError(400, f"instance {i}: shape {arr.shape}, expected {shape}")
        if not np.isfinite(arr).all():
            raise RequestError(400, f"instance {i}: NaN or infinite values")
        out[i] = arr.reshape(shape)
    return out


def parse_top_k(payload: dict, num_classes: int) -> int | None:
    top_k = payload.get("top_k")
    if top_k is None:
        return None
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= num_classes:
        raise RequestError(400, f"'top_k' must be an integer in 1..{num_classes}")
    return top_k


# -------------------------------------------------------------------------------------- the forward


def inference_copy(net: torch.nn.Module) -> torch.nn.Module:
    """An eval-only CPU copy of ``net``: batch norm folded into the preceding convolutions (torch.fx),
    channels-last memory. A net that torch.fx cannot trace keeps its layers, channels-last only."""
    from torch.fx.experimental.optimization import fuse

    net = copy.deepcopy(net).eval()
    try:
        net = fuse(net)
    except Exception:  # noqa: BLE001 - symbolic tracing fails on data-dependent control flow: keep it unfused
        pass
    return net.to(memory_format=torch.channels_last)


class MemberStack:
    """All members' softmax outputs for a batch, stacked (vmap) or in a loop (on a CPU, over
    ``inference_copy`` of each member)."""

    def __init__(self, ensemble: Ensemble, mode: str = "auto") -> None:
        self.ensemble = ensemble
        self.device = ensemble.device
        self.mean, self.std = ensemble.mean.to(self.device), ensemble.std.to(self.device)
        self.mode = mode if mode != "auto" else ("stacked" if self.device.type == "cuda" else "loop")
        if self.mode not in ("stacked", "loop"):
            raise ValueError(f"unknown forward mode {mode!r}")
        members = ensemble.members
        self.params, self.buffers = torch.func.stack_module_state(members)
        self.base = copy.deepcopy(members[0]).to("meta")

        def one(params, buffers, x):
            return torch.func.functional_call(self.base, (params, buffers), (x,))

        self._vmapped = torch.vmap(one, in_dims=(0, 0, None))
        self.channels_last = self.mode == "loop" and self.device.type == "cpu" and len(ensemble.input_shape) == 3
        self.nets = [inference_copy(m) for m in members] if self.channels_last else list(members)

    def normalize(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(pixels, dtype=torch.float32, device=self.device)
        x = (x / self.ensemble.scale - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.inference_mode()
    def member_proba(self, pixels: np.ndarray | torch.Tensor, members: list[int] | None = None) -> np.ndarray:
        """(M, N, K) softmax outputs; ``members`` selects a subset (loop mode only)."""
        x = self.normalize(pixels)
        if self.mode == "stacked" and members is None:
            return torch.softmax(self._vmapped(self.params, self.buffers, x), dim=-1).cpu().numpy()
        chosen = range(len(self.nets)) if members is None else members
        return np.stack([torch.softmax(self.nets[i](x), dim=-1).cpu().numpy() for i in chosen])

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        return self.ensemble.combine(self.member_proba(pixels))


@dataclass
class CascadeResult:
    proba: np.ndarray  # (N, K): the vote of the members used for each sample
    members_used: np.ndarray  # (N,)


@torch.inference_mode()
def cascade_predict(stack: MemberStack, pixels: np.ndarray) -> CascadeResult:
    """Members by decreasing weight; a sample stops once its top vote leads the runner-up by more than
    all the weight still unspent (no remaining member can change its argmax). Soft and hard votes both
    put at most lambda_m on any class per member, so the bound holds for either."""
    ens = stack.ensemble
    if ens.vote_mode not in ("soft", "hard"):
        raise ValueError("cascade needs a soft or hard vote")
    order = np.argsort(-ens.weights, kind="stable")
    weights = ens.weights[order]
    x = stack.normalize(pixels)
    n, k = x.shape[0], len(ens.classes)
    scores = np.zeros((n, k))
    used = np.zeros(n, dtype=np.int64)
    active = np.arange(n)
    remaining = float(weights.sum())
    for step, m in enumerate(order):
        if active.size == 0:
            break
        p = torch.softmax(stack.nets[m](x[torch.as_tensor(active, device=x.device)]), dim=-1).cpu().numpy().astype(np.float64)
        if ens.vote_mode == "hard":
            p = np.eye(k)[p.argmax(1)]
        scores[active] += weights[step] * p
        used[active] += 1
        remaining -= weights[step]
        top2 = np.sort(scores[active], axis=1)[:, -2:]
        decided = top2[:, 1] - top2[:, 0] > remaining + 1e-9
        active = active[~decided]
    total = scores.sum(axis=1, keepdims=True)
    proba = apply_temperature(scores / np.where(total > 0, total, 1.0), ens.temperature)  # argmax unchanged
    return CascadeResult(proba=proba, members_used=used)


def predict_in_chunks(stack: MemberStack, pixels: np.ndarray, limit: int, *,
                      cascade: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(probabilities, members used or None) of ``pixels``, at most ``limit`` instances per forward: a
    batch of many requests never puts more than ``limit`` x M member outputs in memory at once."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    probas, used = [], []
    for start in range(0, len(pixels), limit):
        chunk = pixels[start:start + limit]
        if cascade:
            result = cascade_predict(stack, chunk)
            probas.append(result.proba)
            used.append(result.members_used)
        else:
            probas.append(stack.predict_proba(chunk))
    return np.concatenate(probas), (np.concatenate(used) if cascade else None)


def format_predictions(proba: np.ndarray, classes: list[str], top_k: int | None, members_used: np.ndarray | None = None) -> list[dict]:
    out = []
    for i, p in enumerate(proba):
        label = int(p.argmax())
        item: dict = {"label": label, "class_name": classes[label], "probabilities": [round(float(v), 7) for v in p]}
        if top_k is not None:
            top = np.argsort(-p, kind="stable")[:top_k]
            item["top_k"] = [{"label": int(c), "class_name": classes[c], "probability": float(p[c])} for c in top]
        if members_used is not None:
            item["members_used"] = int(members_used[i])
        out.append(item)
    return out
