"""Open Inference Protocol (v2) parsing and responses without a server: JSON and binary tensors."""

import base64
import json
import struct

import numpy as np
import pytest

from boostray.core.artifact.inference import RequestError
from boostray.core.artifact.oip import infer_response, model_metadata, parse_infer_request
from helpers import png_bytes

SHAPE = (1, 8, 8)


def request(inputs, outputs=None, **extra) -> bytes:
    return json.dumps({"inputs": inputs, **({"outputs": outputs} if outputs else {}), **extra}).encode()


def test_json_uint8_and_fp32_pixels_in_either_image_shape():
    images = np.arange(2 * 64, dtype=np.uint8).reshape(2, 1, 8, 8)
    for datatype, dims in (("UINT8", [2, 1, 8, 8]), ("FP32", [2, 8, 8])):
        body = request([{"name": "images", "datatype": datatype, "shape": dims, "data": images.ravel().tolist()}], id="r1")
        parsed = parse_infer_request(body, None, SHAPE, 16)
        np.testing.assert_array_equal(parsed.pixels, images.astype(np.float32))
        assert parsed.outputs == ["probabilities", "label"] and parsed.request_id == "r1"


def test_binary_tensor_extension_for_pixels_and_encoded_images():
    images = np.random.default_rng(0).integers(0, 256, (3, 1, 8, 8), dtype=np.uint8)
    raw = images.tobytes()
    head = request([{"name": "images", "datatype": "UINT8", "shape": [3, 1, 8, 8], "parameters": {"binary_data_size": len(raw)}}],
                   outputs=[{"name": "label"}])
    parsed = parse_infer_request(head + raw, str(len(head)), SHAPE, 16)
    np.testing.assert_array_equal(parsed.pixels, images.astype(np.float32))
    assert parsed.outputs == ["label"]
    pngs = [png_bytes(im[0]) for im in images]
    blob = b"".join(struct.pack("<I", len(p)) + p for p in pngs)
    head = request([{"name": "images", "datatype": "BYTES", "shape": [3], "parameters": {"binary_data_size": len(blob)}}])
    np.testing.assert_array_equal(parse_infer_request(head + blob, str(len(head)), SHAPE, 16).pixels, images.astype(np.float32))
    as_json = request([{"name": "images", "datatype": "BYTES", "shape": [3], "data": [base64.b64encode(p).decode() for p in pngs]}])
    np.testing.assert_array_equal(parse_infer_request(as_json, None, SHAPE, 16).pixels, images.astype(np.float32))


@pytest.mark.parametrize("body,header,status,message", [
    (b"{not json", None, 400, "not valid JSON"),
    (request([]), None, 400, "exactly one tensor"),
    (request([{"datatype": "UINT8", "shape": [1, 1, 8, 7], "data": [0] * 56}]), None, 400, "does not fit the model's images"),
    (request([{"datatype": "INT32", "shape": [1, 1, 8, 8], "data": [0] * 64}]), None, 400, "UINT8, FP32 or BYTES"),
    (request([{"datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0] * 63}]), None, 400, "holds 63 values"),
    (request([{"datatype": "FP32", "shape": [1, 1, 8, 8], "data": ["a"] * 64}]), None, 400, "must be numbers"),
    (request([{"datatype": "UINT8", "shape": [99, 1, 8, 8], "data": [0] * 64 * 99}]), None, 413, "exceed the limit"),
    (request([{"datatype": "UINT8", "shape": [1, 1, 8, 8], "data": [0] * 64}], outputs=[{"name": "logits"}]), None, 400, "'outputs'"),
    (request([{"datatype": "BYTES", "shape": [1], "data": ["%%%"]}]), None, 400, "base64"),
    (request([{"datatype": "BYTES", "shape": [1], "data": [base64.b64encode(b"not an image").decode()]}]), None, 400, "decodable"),
    (request([{"datatype": "UINT8", "shape": [1, 1, 8, 8], "parameters": {"binary_data_size": 64}}]) + b"\0" * 10, "100000", 400, "does not fit a body"),
    (request([{"datatype": "UINT8", "shape": [1, 1, 8, 8], "parameters": {"binary_data_size": 5}}]) + b"\0" * 5, None, 400, "not valid JSON"),
    (request([{"datatype": "UINT8", "shape": [1, -1, 8, 8], "data": []}]), None, 400, "non-negative integers"),
])
def test_bad_requests_are_4xx_with_a_message(body, header, status, message):
    with pytest.raises(RequestError) as exc:
        parse_infer_request(body, header, SHAPE, 16)
    assert exc.value.status == status and message in exc.value.message


def test_response_and_metadata_shapes():
    proba = np.array([[0.2, 0.8], [0.9, 0.1]])
    parsed = parse_infer_request(request([{"datatype": "UINT8", "shape": [2, 1, 8, 8], "data": [0] * 128}], id="x"),
                                 None, SHAPE, 16)
    out = infer_response("m", parsed, proba)
    assert out["id"] == "x" and [o["name"] for o in out["outputs"]] == ["probabilities", "label"]
    assert out["outputs"][0]["shape"] == [2, 2] and out["outputs"][1]["data"] == [1, 0]
    meta = model_metadata("m", SHAPE, 10)
    assert meta["inputs"][0]["shape"] == [-1, 1, 8, 8] and meta["outputs"][0]["shape"] == [-1, 10]


def test_a_features_model_refuses_encoded_images_whatever_its_shape():
    """Float inputs shaped like images (C, H, W) are still features: a PNG would arrive as 0..255 pixels."""
    import base64

    from boostray.core.artifact.inference import parse_instances

    png = base64.b64encode(b"\x89PNG not really").decode()
    with pytest.raises(RequestError, match="not encoded images"):
        parse_instances({"instances": [{"b64": png}]}, (1, 8, 8), 4, images=False)
    with pytest.raises(RequestError, match="features"):
        parse_infer_request(request([{"datatype": "BYTES", "shape": [1], "data": [png]}]), None, (1, 8, 8), 4, images=False)
