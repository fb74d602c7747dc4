"""Ray Serve deployment of a run's ensemble over HTTP, KServe v1 and Open Inference Protocol (v2) routes
on one application, with cross-client batching.

``build_app({"run_dir": ...})`` is the application builder for ``serve run`` / ``serve deploy``
(see pipelines/serve_config.yaml); ``boostray serve RUN_DIR`` builds the same application.

Endpoints: POST /v1/models/<name>:predict, GET /v1/models/<name>, GET /healthz; v2: GET /v2,
/v2/health/live|ready, /v2/models/<name>[/ready], POST /v2/models/<name>/infer (core/artifact/oip.py); OpenAPI
at /docs.
"""

# No "from __future__ import annotations": FastAPI must see real types through Serve's ingress wrapper.
import asyncio
import json
import os
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from boostray import __version__
from boostray.config import ServeOptions
from boostray.core.artifact import oip, storage
from boostray.core.artifact.ensemble import load_ensemble, read_manifest
from boostray.core.artifact.inference import (
    MemberStack,
    RequestError,
    format_predictions,
    parse_instances,
    parse_top_k,
    predict_in_chunks,
)

app = FastAPI(
    title="boostray ensemble server",
    description="Predictions of a checkpoint-boosted ensemble (KServe v1 / TF-Serving request shape).",
)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


DRAIN_BYTES = 1 << 30  # a refused body is read and dropped up to this much, then the connection is closed


async def _drain(request: Request, declared: int | None = None) -> None:
    """Read and drop the rest of a refused body, up to DRAIN_BYTES (none of it when it says it is larger)."""
    if declared is not None and declared > DRAIN_BYTES:
        return
    dropped = 0
    async for chunk in request.stream():
        dropped += len(chunk)
        if dropped > DRAIN_BYTES:
            return


def _timed(response: JSONResponse, started: float, parsed: float, answered: float, forward_ms: float) -> JSONResponse:
    """Where the replica's time went, as a Server-Timing header (bench/bench_serving.py reads it): reading
    and parsing, waiting for the batch, the forward, encoding the answer."""
    ms = lambda a, b: (b - a) * 1000
    response.headers["Server-Timing"] = (
        f"parse;dur={ms(started, parsed):.3f}, queue;dur={max(ms(parsed, answered) - forward_ms, 0.0):.3f}, "
        f"forward;dur={forward_ms:.3f}, encode;dur={ms(answered, time.perf_counter()):.3f}")
    return response


@serve.deployment
@serve.ingress(app)
class EnsembleServer:
    def __init__(self, options: dict[str, Any]) -> None:
        import torch

        self.options = ServeOptions(**options)
        if self.options.gpus_per_replica > 0 and not torch.cuda.is_available():
            raise RuntimeError("this replica was given a GPU share, but torch finds no CUDA device")
        device = "cuda" if self.options.gpus_per_replica > 0 else "cpu"
        self.ensemble = load_ensemble(self.options.run_dir, device=device)
        self.stack = MemberStack(self.ensemble, self.options.forward)
        manifest = self.ensemble.manifest
        self.name = self.options.model_name or manifest.get("name") or os.path.basename(os.path.normpath(self.options.run_dir))
        self.shape = tuple(manifest["input_shape"])
        self.classes = manifest["classes"]
        self.predict_batch.set_max_batch_size(self.options.max_batch_size)
        self.in_flight = 0  # requests in this replica between parsing and their answer

    async def batched(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, float]:
        """``predict_batch`` with a wait that depends on load: a lone request goes at once; while other
        requests are in the replica (those of the forward now running among them) a batch waits up to
        --batch-wait-ms for more. Serve reads the wait when a batch's first request arrives."""
        self.in_flight += 1
        try:
            busy = self.in_flight > 1
            self.predict_batch.set_batch_wait_timeout_s(self.options.batch_wait_ms / 1000.0 if busy else 0.0)
            return await self.predict_batch(x)
        finally:
            self.in_flight -= 1

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def predict_batch(self, batches: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray | None, float]]:
        """One forward for the instances of several concurrent requests, in a thread: the event loop keeps
        reading and parsing the requests that arrive meanwhile (they form the next batch)."""
        sizes = [b.shape[0] for b in batches]
        x = np.concatenate(batches)
        started = time.perf_counter()
        proba, used = await asyncio.get_running_loop().run_in_executor(None, self._forward, x)
        forward_ms = (time.perf_counter() - started) * 1000
        out, start = [], 0
        for s in sizes:
            out.append((proba[start:start + s], None if used is None else used[start:start + s], forward_ms))
            start += s
        return out

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """A batch counts requests; its forward counts instances, at most --max-instances at a time."""
        return predict_in_chunks(self.stack, x, self.options.max_instances, cascade=self.options.cascade)

    def _check_name(self, name: str) -> JSONResponse | None:
        if name != self.name:
            return _error(404, f"no model named {name!r}; this server serves {self.name!r}")
        return None

    async def _body(self, request: Request) -> bytes:
        """The request body, refused with 413 past the limit without ever holding more than the limit:
        a body that says it is too large is read and dropped chunk by chunk first, so that a client
        which sends it whole before reading the answer (urllib does) gets the 413, not a reset."""
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _drain(request, int(declared))
            raise RequestError(413, f"body of {declared} bytes exceeds the limit of {limit}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                await _drain(request)
                raise RequestError(413, f"body of more than {limit} bytes exceeds the limit of {limit}")
        return bytes(body)

    @app.post("/v1/models/{name}:predict")
    async def predict(self, name: str, request: Request) -> JSONResponse:
        started = time.perf_counter()
        if (missing := self._check_name(name)) is not None:
            return missing
        try:
            body = await self._body(request)
            try:
                payload = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RequestError(400, "the body is not valid JSON") from None
            x = parse_instances(payload, self.shape, self.options.max_instances, self.ensemble.input_kind == "image")
            top_k = parse_top_k(payload, len(self.classes))
        except RequestError as exc:
            return _error(exc.status, exc.message)
        parsed = time.perf_counter()
        proba, used, forward_ms = await self.batched(x)
        answered = time.perf_counter()
        response = JSONResponse({"predictions": format_predictions(proba, self.classes, top_k, used)})
        return _timed(response, started, parsed, answered, forward_ms)

    # -- Open Inference Protocol (KServe v2) ---------------------------------------------------------
    @app.get("/v2")
    async def v2_server(self) -> dict:
        return oip.server_metadata(__version__)

    @app.get("/v2/health/live")
    async def v2_live(self) -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def v2_ready(self) -> dict:
        return {"ready": True}

    def _check_version(self, name: str, version: str | None) -> JSONResponse | None:
        if (missing := self._check_name(name)) is not None:
            return missing
        if version not in (None, "", "1"):
            return _error(404, f"model {name!r} has version 1 only, not {version!r}")
        return None

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def v2_model(self, name: str, version: str | None = None) -> JSONResponse:
        if (missing := self._check_version(name, version)) is not None:
            return missing
        datatype = "UINT8" if self.ensemble.input_kind == "image" else "FP32"
        return JSONResponse(oip.model_metadata(self.name, self.shape, len(self.classes), datatype))

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def v2_model_ready(self, name: str, version: str | None = None) -> JSONResponse:
        if (missing := self._check_version(name, version)) is not None:
            return missing
        return JSONResponse({"name": self.name, "ready": True})

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def v2_infer(self, name: str, request: Request, version: str | None = None) -> JSONResponse:
        if (missing := self._check_version(name, version)) is not None:
            return missing
        try:
            body = await self._body(request)
            parsed = oip.parse_infer_request(body, request.headers.get("inference-header-content-length"),
                                             self.shape, self.options.max_instances, self.ensemble.input_kind == "image")
        except RequestError as exc:
            return _error(exc.status, exc.message)
        proba, _, _ = await self.batched(parsed.pixels)
        return JSONResponse(oip.infer_response(self.name, parsed, proba))

    @app.get("/v1/models/{name}")
    async def metadata(self, name: str) -> JSONResponse:
        if (missing := self._check_name(name)) is not None:
            return missing
        m = self.ensemble.manifest
        return JSONResponse({
            "name": self.name,
            "method": m["method"],
            "model": m["model"],
            "classes": self.classes,
            "input_shape": list(self.shape),
            "vote": m["vote"],
            "members": [{"file": e["file"], "weight": e["weight"], "epoch": e.get("epoch")} for e in m["members"]],
            "cascade": self.options.cascade,
            "forward": self.stack.mode,
            "device": str(self.ensemble.device),
        })

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "model": self.name, "members": len(self.ensemble)}


def build_app(options: ServeOptions) -> serve.Application:
    """Application builder: ``serve run boostray.apps.serving:build_app run_dir=PATH`` or a Serve config; Serve
    checks the arguments against ServeOptions. A plain dict (from Python) is checked the same way."""
    if not isinstance(options, ServeOptions):
        options = ServeOptions(**options)
    if not storage.is_uri(options.run_dir):  # a storage URI stays one: every replica reads its own local copy
        options = options.model_copy(update={"run_dir": os.path.abspath(os.path.expanduser(options.run_dir))})
    read_manifest(options.run_dir)  # fail here, in the driver, for a path that holds no ensemble
    actor = {"num_cpus": options.cpus_per_replica}
    if options.gpus_per_replica:
        actor["num_gpus"] = options.gpus_per_replica
    deployment_options: dict[str, Any] = {
        "ray_actor_options": actor,
        # @serve.batch never batches more than max_ongoing_requests: keep room for a full batch.
        "max_ongoing_requests": max(2 * options.max_batch_size, 8),
    }
    if (bounds := options.autoscale_range()) is not None:
        deployment_options["autoscaling_config"] = {
            "min_replicas": bounds[0], "max_replicas": bounds[1], "target_ongoing_requests": options.max_batch_size,
        }
    else:
        deployment_options["num_replicas"] = options.replicas
    return EnsembleServer.options(**deployment_options).bind(options.model_dump())
