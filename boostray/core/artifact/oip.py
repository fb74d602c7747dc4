"""The Open Inference Protocol (KServe v2, as Triton and MLServer speak it) without Ray: metadata,
inference requests with typed tensors (JSON or the binary tensor extension) and responses.

One input tensor of images: UINT8 or FP32 raw pixels shaped [N, C, H, W] ([N, H, W] for one channel),
or BYTES holding encoded PNG/JPEG images, shape [N] (base64 strings in JSON, Triton's length-prefixed
serialization in binary). Outputs: ``probabilities`` (FP32 [N, K]) and ``label`` (INT64 [N]).
Malformed requests raise ``RequestError`` with a 4xx status, never anything else.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass

import numpy as np

from boostray.core.artifact.inference import RequestError, decode_image_bytes

OUTPUTS = ("probabilities", "label")
PIXEL_TYPES = {"UINT8": np.uint8, "FP32": np.float32}


@dataclass
class InferRequest:
    pixels: np.ndarray  # float32 raw pixels (N, C, H, W)
    outputs: list[str]  # requested output names, in order
    request_id: str | None = None


def server_metadata(version: str) -> dict:
    return {"name": "boostray", "version": version, "extensions": ["binary_tensor_data"]}


def model_metadata(name: str, shape: tuple[int, ...], num_classes: int, datatype: str = "UINT8") -> dict:
    return {
        "name": name, "versions": ["1"], "platform": "boostray_ensemble",
        "inputs": [{"name": "images", "datatype": datatype, "shape": [-1, *shape]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, num_classes]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]}],
    }


def _json_header(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise RequestError(400, f"Inference-Header-Content-Length {header_length!r} does not fit a body of {len(body)} bytes")
        head, binary = body[: int(header_length)], body[int(header_length):]
    else:
        head, binary = body, b""
    try:
        payload = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestError(400, "the inference header is not valid JSON") from None
    if not isinstance(payload, dict):
        raise RequestError(400, "the inference request must be a JSON object")
    return payload, binary


def _split_bytes(raw: bytes, count: int) -> list[bytes]:
    """Triton's BYTES serialization: each element a 4-byte little-endian length, then its bytes."""
    out, offset = [], 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise RequestError(400, f"BYTES element {i}: the binary data ends before its length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise RequestError(400, f"BYTES element {i}: the binary data ends inside it")
        out.append(raw[offset:offset + size])
        offset += size
    if offset != len(raw):
        raise RequestError(400, "BYTES input: more binary data than its shape holds")
    return out


def parse_infer_request(body: bytes, header_length: str | None, shape: tuple[int, ...],
                        max_instances: int, images: bool = True) -> InferRequest:
    """A v2 inference request -> float32 raw pixels (N, C, H, W) and the outputs asked for."""
    payload, binary = _json_header(body, header_length)
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError(400, "'inputs' must hold exactly one tensor (the images)")
    tensor = inputs[0]
    datatype, dims = tensor.get("datatype"), tensor.get("shape")
    if not isinstance(dims, list) or not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise RequestError(400, "input 'shape' must be a list of non-negative integers")
    n = dims[0]
    if n == 0:
        raise RequestError(400, "the input holds no images")
    if n > max_instances:
        raise RequestError(413, f"{n} images exceed the limit of {max_instances} per request")
    params = tensor.get("parameters") or {}
    binary_size = params.get("binary_data_size") if isinstance(params, dict) else None
    if binary_size is not None and (not isinstance(binary_size, int) or binary_size != len(binary)):
        raise RequestError(400, f"binary_data_size {binary_size!r} does not match the {len(binary)} bytes sent")
    if binary_size is None and binary:
        raise RequestError(400, "binary data was sent but the input names no binary_data_size")
    shape = tuple(shape)
    size = int(np.prod(shape))
    if datatype in PIXEL_TYPES:
        grey = ((shape[1:],) if len(shape) == 3 and shape[0] == 1 else ())
        if tuple(dims[1:]) not in (shape,) + grey:
            raise RequestError(400, f"input shape {dims} does not fit the model's {'images' if len(shape) == 3 else 'inputs'} "
                                    f"[N, {', '.join(map(str, shape))}]")
        dtype = np.dtype(PIXEL_TYPES[datatype]).newbyteorder("<")
        if binary_size is not None:
            if len(binary) != n * size * dtype.itemsize:
                raise RequestError(400, f"{len(binary)} bytes of {datatype} do not fill shape {dims}")
            flat = np.frombuffer(binary, dtype=dtype)
        else:
            try:
                flat = np.asarray(tensor.get("data"), dtype=np.float64).ravel()
            except (TypeError, ValueError):
                raise RequestError(400, "input 'data' must be numbers") from None
            if flat.size != n * size:
                raise RequestError(400, f"input 'data' holds {flat.size} values, shape {dims} needs {n * size}")
        pixels = flat.astype(np.float32).reshape(n, *shape)
        if not np.isfinite(pixels).all():
            raise RequestError(400, "input 'data' holds NaN or infinite values")
    elif datatype == "BYTES":
        if not images or len(shape) != 3:
            raise RequestError(400, f"this model takes FP32 features shaped [N, {', '.join(map(str, shape))}], not encoded images")
        if len(dims) != 1:
            raise RequestError(400, f"a BYTES input holds one encoded image per element: shape [N], got {dims}")
        if binary_size is not None:
            encoded = _split_bytes(binary, n)
        else:
            data = tensor.get("data")
            if not isinstance(data, list) or len(data) != n or not all(isinstance(d, str) for d in data):
                raise RequestError(400, f"BYTES 'data' must be {n} base64 strings")
            try:
                encoded = [base64.b64decode(d, validate=True) for d in data]
            except (binascii.Error, ValueError):
                raise RequestError(400, "BYTES 'data' must be base64-encoded images") from None
        pixels = np.stack([decode_image_bytes(raw, shape, f"image {i}") for i, raw in enumerate(encoded)])
    else:
        raise RequestError(400, f"input datatype must be UINT8, FP32 or BYTES, got {datatype!r}")
    wanted = payload.get("outputs")
    if wanted is None:
        names = list(OUTPUTS)
    elif isinstance(wanted, list) and wanted and all(isinstance(o, dict) and o.get("name") in OUTPUTS for o in wanted):
        names = [o["name"] for o in wanted]
    else:
        raise RequestError(400, f"'outputs' must name some of {list(OUTPUTS)}")
    request_id = payload.get("id")
    return InferRequest(pixels, names, request_id if isinstance(request_id, str) else None)


def infer_response(model_name: str, request: InferRequest, proba: np.ndarray) -> dict:
    """The v2 response, in JSON: tensors flattened in row-major order with their shapes."""
    tensors = {
        "probabilities": {"name": "probabilities", "datatype": "FP32", "shape": list(proba.shape),
                          "data": proba.astype(np.float32).ravel().tolist()},
        "label": {"name": "label", "datatype": "INT64", "shape": [proba.shape[0]],
                  "data": proba.argmax(axis=1).astype(np.int64).tolist()},
    }
    out = {"model_name": model_name, "model_version": "1", "outputs": [tensors[name] for name in request.outputs]}
    if request.request_id is not None:
        out["id"] = request.request_id
    return out
