"""Ray Serve for real on 127.0.0.1, queried over HTTP; batch prediction with Ray Data."""

import base64
import json
import os
import socket
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from boostray import load_ensemble
from boostray.core.data.datasets import load_dataset
from boostray.distributed.runtime import DIRECT_INGRESS_PORTS
from cluster import free_port
from helpers import png_bytes, train_digits_run

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    # four members of unequal weight (what --cascade needs)
    return train_digits_run(tmp_path_factory.mktemp("serve-run"), "served", "--members", "4", "--combine", "lambda")


@pytest.fixture(scope="module")
def server(ray_cluster, run_dir):
    from ray import serve

    from boostray.apps.serving import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    common = {"run_dir": run_dir, "replicas": 2, "cpus_per_replica": 0.25, "max_instances": 64, "max_body_bytes": 200_000}
    serve.run(build_app(common), name="full", route_prefix="/")
    serve.run(build_app({**common, "replicas": 1, "cascade": True}), name="cascade", route_prefix="/cascade")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def request(url: str, body: object = None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def test_images():
    split = load_dataset("digits").test
    return split.images[:40], split.labels[:40]


def predict_url(base: str, name: str = "served") -> str:
    return f"{base}/v1/models/{name}:predict"


def test_predictions_equal_load_ensemble(server, run_dir, test_images):
    images, _ = test_images
    status, body = request(predict_url(server), {"instances": images.tolist(), "top_k": 3})
    assert status == 200
    ens = load_ensemble(run_dir)
    expected = ens.predict_proba(images)
    got = [p["label"] for p in body["predictions"]]
    assert got == expected.argmax(1).tolist()
    np.testing.assert_allclose([p["probabilities"] for p in body["predictions"]], expected, atol=1e-5)
    first = body["predictions"][0]
    assert first["class_name"] == ens.classes[first["label"]] and len(first["top_k"]) == 3
    assert first["top_k"][0]["label"] == first["label"]


def test_b64_images_and_2d_grey_instances(server, run_dir, test_images):
    images, _ = test_images
    b64 = [{"b64": base64.b64encode(png_bytes(im[0])).decode()} for im in images[:10]]
    status, body = request(predict_url(server), {"instances": b64})
    assert status == 200
    assert [p["label"] for p in body["predictions"]] == load_ensemble(run_dir).predict(images[:10]).tolist()
    status, body2 = request(predict_url(server), {"instances": images[:10, 0].tolist()})  # H x W for grey
    assert status == 200 and body2["predictions"] == body["predictions"]


def test_metadata_health_and_docs(server):
    status, meta = request(f"{server}/v1/models/served")
    assert status == 200 and meta["input_shape"] == [1, 8, 8] and len(meta["members"]) == 4
    assert meta["method"] == "cbnn-tail" and all(m["weight"] > 0 for m in meta["members"])
    assert request(f"{server}/healthz") == (200, {"status": "ok", "model": "served", "members": 4})
    with urllib.request.urlopen(f"{server}/openapi.json", timeout=30) as resp:
        assert "/v1/models/{name}:predict" in json.loads(resp.read())["paths"]


def test_bad_requests_get_4xx_and_the_server_keeps_answering(server, test_images):
    images, _ = test_images
    url = predict_url(server)
    good = images[:1].tolist()
    nan = np.zeros((1, 8, 8)).tolist()
    nan[0][0][0] = float("nan")
    cases = [
        (request(url, raw=b"{not json"), 400, "not valid JSON"),
        (request(url, {"inputs": good}), 400, "missing 'instances'"),
        (request(url, {"instances": [np.zeros((3, 8, 8)).tolist()]}), 400, "shape"),
        (request(url, {"instances": [[["a"] * 8] * 8]}), 400, "numeric"),
        (request(url, raw=json.dumps({"instances": [nan]}).encode()), 400, "NaN"),
        (request(url, {"instances": [{"b64": base64.b64encode(b"not an image").decode()}]}), 400, "decodable"),
        (request(url, {"instances": good * 65}), 413, "limit of 64"),
        (request(url, raw=b" " * 200_001), 413, "exceeds the limit"),
        (request(url, {"instances": good, "top_k": 99}), 400, "top_k"),
        (request(predict_url(server, "other"), {"instances": good}), 404, "no model named"),
    ]
    for (status, body), want_status, want_text in cases:
        assert status == want_status and want_text in body["error"], (status, body)
    assert request(url, {"instances": good})[0] == 200


def test_a_60_mb_body_gets_413_that_a_plain_urllib_client_sees(server, test_images):
    """urllib sends a body whole before it reads the answer: the server drops the refused body rather
    than closing the connection under it (which the client sees as a reset, with no status)."""
    for url in (predict_url(server), f"{server}/v2/models/served/infer"):
        status, body = request(url, raw=b" " * (60 << 20))
        assert status == 413 and "exceeds the limit of 200000" in body["error"], (url, status, body)
    images, _ = test_images
    assert request(predict_url(server), {"instances": images[:1].tolist()})[0] == 200


def test_open_inference_protocol_v2_with_the_triton_client(server, run_dir, test_images):
    """KServe v2 on the same application, driven by a client the project did not write."""
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(server.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("served")
    assert client.get_server_metadata()["name"] == "boostray"
    meta = client.get_model_metadata("served")
    assert meta["inputs"][0]["shape"] == [-1, 1, 8, 8] and [o["name"] for o in meta["outputs"]] == ["probabilities", "label"]
    images = test_images[0][:8]
    expected = load_ensemble(run_dir).predict_proba(images)

    def infer(tensor, datatype, binary=True, model="served"):
        inp = triton.InferInput("images", list(tensor.shape), datatype)
        inp.set_data_from_numpy(tensor, binary_data=binary)
        outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label")]
        return client.infer(model, [inp], outputs=outputs)

    for tensor, datatype, binary in ((images, "UINT8", True), (images, "UINT8", False),
                                     (images[:, 0].astype(np.float32), "FP32", True)):
        result = infer(tensor, datatype, binary)
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)
        np.testing.assert_array_equal(result.as_numpy("label"), expected.argmax(1))
    encoded = np.array([png_bytes(im[0]) for im in images], dtype=np.object_)
    np.testing.assert_array_equal(infer(encoded, "BYTES").as_numpy("label"), expected.argmax(1))
    for call, status in ((lambda: infer(images, "UINT8", model="other"), "404"),
                         (lambda: infer(images[:, :, :4], "UINT8"), "400"),
                         (lambda: infer(images.astype(np.int32), "INT32"), "400"),
                         (lambda: infer(np.repeat(images, 9, axis=0), "UINT8"), "413"),
                         (lambda: infer(np.array([b"not an image"], dtype=np.object_), "BYTES"), "400")):
        with pytest.raises(InferenceServerException) as exc:
            call()
        assert exc.value.status() == status, exc.value
    np.testing.assert_array_equal(infer(images, "UINT8").as_numpy("label"), expected.argmax(1))  # still answering


def test_cascade_equals_full_ensemble(server, run_dir):
    images = load_dataset("digits").test.images
    status, full = request(predict_url(server), {"instances": images[:64].tolist()})
    status_c, cascade = request(predict_url(server + "/cascade"), {"instances": images[:64].tolist()})
    assert status == status_c == 200
    assert [p["label"] for p in cascade["predictions"]] == [p["label"] for p in full["predictions"]]
    used = [p["members_used"] for p in cascade["predictions"]]
    assert all(1 <= u <= 4 for u in used) and min(used) < 4


def test_concurrent_clients_are_all_answered(server, test_images):
    images, _ = test_images
    results = []

    def client(i):
        results.append(request(predict_url(server), {"instances": images[i:i + 2].tolist()}))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 16 and all(status == 200 for status, _ in results)


def test_a_lone_request_goes_at_once_and_a_busy_replica_waits_to_fill_a_batch(server, run_dir, test_images):
    """--batch-wait-ms applies only while other requests are in the replica: with a 1.5 s wait, a lone
    request is not held back, and among 8 concurrent ones some batch waits (Server-Timing's queue part)."""
    from ray import serve

    from boostray.apps.serving import build_app

    serve.run(build_app({"run_dir": run_dir, "replicas": 1, "cpus_per_replica": 0.25, "batch_wait_ms": 1500}),
              name="wait", route_prefix="/wait")
    images, _ = test_images
    url = predict_url(f"{server}/wait")

    def queued_ms(i: int) -> float:
        req = urllib.request.Request(url, data=json.dumps({"instances": images[i:i + 1].tolist()}).encode())
        with urllib.request.urlopen(req, timeout=60) as resp:
            timing = dict(part.strip().split(";dur=") for part in resp.headers["Server-Timing"].split(","))
        return float(timing["queue"])

    def burst() -> list[float]:
        start, queued = threading.Barrier(8), []

        def client(i: int) -> None:
            start.wait()
            queued.append(queued_ms(i))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(queued) == 8
        return queued

    try:
        assert queued_ms(0) < 750  # alone: no wait
        # On a loaded machine the proxy can hand a burst to the replica one request at a time, and then
        # none of them finds another in flight: up to three bursts, of which one must make a batch wait.
        bursts = []
        while len(bursts) < 3 and not (bursts and max(bursts[-1]) >= 750):
            bursts.append(burst())
        assert max(bursts[-1]) >= 750, bursts
    finally:
        serve.delete("wait")


def test_killed_replica_is_replaced_and_requests_keep_being_answered(server, ray_cluster, test_images):
    from ray import serve
    from ray.util.state import list_actors

    def replicas():
        return [a for a in list_actors(address=ray_cluster, filters=[("state", "=", "ALIVE")]) if "EnsembleServer" in a["class_name"]
                and "full" in a.get("name", "")]

    before = replicas()
    assert len(before) == 2
    os.kill(before[0]["pid"], 9)
    images, _ = test_images
    for i in range(10):
        assert request(predict_url(server), {"instances": images[i:i + 1].tolist()})[0] == 200
    event = threading.Event()
    for _ in range(600):  # wait for the state "2 running replicas, one of them new"
        status = serve.status().applications["full"].deployments["EnsembleServer"]
        alive = replicas()
        if status.replica_states.get("RUNNING", 0) == 2 and len(alive) == 2 and before[0]["pid"] not in {a["pid"] for a in alive}:
            break
        event.wait(0.1)
    else:
        pytest.fail("Serve did not replace the killed replica")
    assert request(predict_url(server), {"instances": images[:1].tolist()})[0] == 200


@pytest.mark.parametrize("ingress", ["proxy", "direct"])
def test_serve_command_answers_then_shuts_down_on_ctrl_c(run_dir, tmp_path, ingress):
    """Both ingress modes answer on the proxy's port; direct ingress also on the replica's own port, with
    the same predictions. Ctrl-C closes every port."""
    import re
    import signal
    import subprocess
    import sys

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(  # started as a background job of a shell starts it: with SIGINT ignored
        [os.path.join(os.path.dirname(sys.executable), "boostray"), "serve", run_dir, "--port", str(port),
         "--cpus-per-replica", "0.25", "--model-name", "digits", "--ingress", ingress],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    lines, ports = [], [port]
    instances = {"instances": load_dataset("digits").test.images[:5].tolist()}
    try:
        ready = "direct ingress:" if ingress == "direct" else "serving 'digits'"
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(ready):
                break
        assert any(f"http://127.0.0.1:{port}/v1/models/digits:predict" in line for line in lines), "".join(lines[-30:])
        if ingress == "direct":
            ports += [int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)", lines[-1])]
            # the one replica takes the first free port from --port + 1: usually port + 1, but another
            # process's connection may hold that one
            assert len(ports) == 2 and port < ports[1] <= port + DIRECT_INGRESS_PORTS, lines[-1]
        answers = []
        for p in ports:
            assert request(f"http://127.0.0.1:{p}/healthz")[0] == 200
            status, body = request(predict_url(f"http://127.0.0.1:{p}", "digits"), instances)
            assert status == 200 and len(body["predictions"]) == 5
            answers.append(body["predictions"])
            assert request(predict_url(f"http://127.0.0.1:{p}", "digits"), raw=b" " * (60 << 20))[0] == 413
        assert all(a == answers[0] for a in answers)
    except BaseException:  # a failed check must not leave a server (and its Ray) running for the rest of the suite
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, rest[-2000:]
    assert "shutting down" in rest
    for p in ports:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", p), timeout=2)
