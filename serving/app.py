"""The model server: a Flask app speaking the Open Inference Protocol v2 REST API.

Endpoints (as KServe and Triton speak them, plus feedback and metrics):

- ``GET /v2/health/live``, ``GET /v2/health/ready`` (ready once a model version has loaded),
  ``GET /v2`` (server metadata), ``GET /v2/models/{name}`` (model metadata; ``versions[0]`` is the
  version served now), ``GET /v2/models/{name}/ready``;
- ``POST /v2/models/{name}/infer``: one FP32 or UINT8 tensor of shape [N, C, H, W] or
  [N, C*H*W], the served version's input shape (its manifest's spec, also in the model
  metadata); the response holds ``probabilities`` [N, K], ``predicted_class`` [N],
  ``predicted_label`` [N] (class names) and ``sample_ids`` [N] (one id per image, to send ground
  truth for later; signed, :mod:`serving.signed_ids`, when ``serving.feedback_signing_key_file``
  is set);
- ``POST /v2/models/{name}/feedback`` with ``{"ids": [...], "labels": [...]}`` (its own bearer
  token when ``serving.feedback_token_file`` is set; rate-limited per client): signed ids are
  judged by any replica holding the key, other ids only by the process that issued them;
- ``GET /metrics``: Prometheus text format (see :mod:`serving.metrics`).

Errors are raised as :mod:`serving.errors` exceptions and turned into ``{"error": message}``
bodies with their status in one place, :func:`_register_error_handlers`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from robustloop import __version__
from robustloop.config import ConfigError, RobustloopConfig
from robustloop.jsonbody import content_type_problem
from robustloop.tokens import TokenFileError, read_token_file, token_matches
from serving._binary import BINARY_CONTENT_TYPE, HEADER, encode, split_body, wanted_binary
from serving._decode import (
    PLAIN_ID_CHARS,
    BodyBounds,
    decode_feedback,
    decode_infer_request,
    feedback_bounds,
    infer_bounds,
    parse_json,
)
from serving.capture import Capture
from serving.errors import (
    BadRequest,
    Conflict,
    ModelNotFound,
    NotReady,
    PayloadTooLarge,
    ServingError,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
)
from serving.feedback import FeedbackMap, Pending, RateLimiter, SeenNonces
from serving.metrics import ServingMetrics
from serving.reload import ModelWatcher, ServedModel, Store
from serving.signals import max_probability, normalised_entropy, squeeze_score
from serving.signed_ids import MAX_ID_CHARS, MIN_KEY_CHARS, SampleIdSigner, SignedPrediction
from training import model_device, resolve_device

log = logging.getLogger(__name__)

OUTPUTS = ["probabilities", "predicted_class", "predicted_label", "sample_ids"]
"""The infer response's outputs, in order; a request may name a subset (``outputs``)."""

EXTENSION_KEY = "robustloop_serving"

bp = Blueprint("oip_v2", __name__)


@dataclass
class ServingState:
    """Everything one app instance holds: config, model watcher, feedback state, metrics."""

    config: RobustloopConfig
    watcher: ModelWatcher
    feedback: FeedbackMap
    feedback_limiter: RateLimiter
    metrics: ServingMetrics
    registry: CollectorRegistry
    instrument: bool
    rng: random.Random = field(default_factory=random.Random)
    feedback_token: str | None = None
    """The bearer token feedback must carry; None: feedback is open."""
    signer: SampleIdSigner | None = None
    """Signs and verifies sample ids (``serving.feedback_signing_key_file``); None: the
    predictions wait in :attr:`feedback`."""
    seen: SeenNonces | None = None
    """The signed ids this process has judged (with :attr:`signer`)."""
    capture: Capture | None = None
    """Capture of labelled traffic (serving.capture); None unless capture.enabled."""

    @property
    def model_name(self) -> str:
        return self.config.model.name

    def close(self) -> None:
        """Stop the hot-reload thread (the app keeps answering with the model it has)."""
        self.watcher.stop()
        if self.capture is not None:
            self.capture.close()


def get_state(app: Flask) -> ServingState:
    """The :class:`ServingState` of an app made by :func:`create_app`."""
    state: ServingState = app.extensions[EXTENSION_KEY]
    return state


def _state() -> ServingState:
    return get_state(current_app)


def create_app(
    config: RobustloopConfig,
    *,
    store: Store | None = None,
    registry: CollectorRegistry | None = None,
    instrument: bool = True,
    watch: bool = True,
) -> Flask:
    """Build the model server for ``config``.

    Loads the store's production version now if there is one (the app is ready at once), and
    starts a thread that hot-reloads new production versions; stop it with
    ``get_state(app).close()``.

    Args:
        config: the robustloop config (sections ``model``, ``store`` and ``serving``).
        store: the model store; default ``training.ModelStore(config.store.path)``.
        registry: where metrics are registered; default a fresh ``CollectorRegistry``.
        instrument: False serves without signals and metrics (for the overhead benchmark).
        watch: False loads once and starts no reload thread.

    Raises:
        training.DeviceError: ``config.device`` names a device this machine lacks.
        robustloop.config.ConfigError: ``serving.feedback_token_file`` or
            ``serving.feedback_signing_key_file`` cannot be read, the key is too short,
            or ``capture.path`` cannot be written or is another server's.
    """
    device = resolve_device(config.device)
    serving = config.serving
    feedback_token = _read_secret(serving.feedback_token_file, "serving.feedback_token_file")
    key = _read_secret(
        serving.feedback_signing_key_file, "serving.feedback_signing_key_file", MIN_KEY_CHARS
    )
    signer = None
    if key is not None:
        signer = SampleIdSigner(key.encode(), config.model.name, serving.feedback_ttl_seconds)
    if store is None:
        from training import ModelStore

        store = ModelStore(config.store.path)
    registry = CollectorRegistry() if registry is None else registry
    metrics = ServingMetrics(registry)
    name = config.model.name
    metrics.reload_failures.labels(name)

    def on_swap(served: ServedModel) -> None:
        metrics.set_served(name, served.version, served.sha256)

    def on_failure(version: str) -> None:
        metrics.reload_failures.labels(name).inc()

    watcher = ModelWatcher(
        store,
        config.serving.reload_interval_seconds,
        on_swap=on_swap,
        on_failure=on_failure,
        device=device,
    )
    watcher.check()
    state = ServingState(
        config=config,
        watcher=watcher,
        feedback=FeedbackMap(
            config.serving.feedback_ttl_seconds, config.serving.feedback_max_entries
        ),
        feedback_limiter=RateLimiter(
            config.serving.feedback_rate_per_client or math.inf,
            config.serving.feedback_burst_per_client,
        ),
        metrics=metrics,
        registry=registry,
        instrument=instrument,
        feedback_token=feedback_token,
        signer=signer,
        seen=SeenNonces(serving.feedback_max_entries) if signer is not None else None,
        capture=Capture.from_config(config, registry),
    )
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.serving.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION_KEY] = state
    app.register_blueprint(bp)
    _register_error_handlers(app)
    if watch:
        watcher.start()
    return app


def _read_secret(path: Path | None, what: str, min_length: int = 1) -> str | None:
    """The secret in ``path`` (None when the setting is null), read once at start."""
    if path is None:
        return None
    try:
        return read_token_file(path, what, min_length=min_length)
    except TokenFileError as exc:
        raise ConfigError(str(exc)) from None


def _register_error_handlers(app: Flask) -> None:
    def serving_error(exc: ServingError) -> tuple[Response, int]:
        response = jsonify(error=exc.message)
        if isinstance(exc, TooManyRequests):
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return response, exc.status

    def http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        if isinstance(exc, RequestEntityTooLarge):
            limit = app.config["MAX_CONTENT_LENGTH"]
            return jsonify(error=f"request body is over the limit of {limit} bytes"), 413
        return jsonify(error=f"{exc.name}: {exc.description}"), status

    def unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return jsonify(error=f"internal error ({type(exc).__name__}); see the server log"), 500

    app.register_error_handler(ServingError, serving_error)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected)


def _check_name(name: str) -> ServingState:
    state = _state()
    if name != state.model_name:
        raise ModelNotFound(f"no model named {name!r}; this server serves {state.model_name!r}")
    return state


def _check_content_type(*, binary_ok: bool) -> None:
    """JSON, or octet-stream for a body with binary tensors; 415 otherwise."""
    also = (BINARY_CONTENT_TYPE,) if binary_ok else ()
    problem = content_type_problem(request.headers.get("Content-Type"), also=also)
    if problem is not None:
        raise UnsupportedMediaType(problem)


def _read_body(bounds: BodyBounds) -> bytes:
    """The request body, refusing more than ``bounds.max_bytes`` with a 413.

    A declared Content-Length over the limit is refused before reading; a chunked body is read
    up to one byte past the limit (werkzeug would silently truncate it, turning a too-large
    body into a confusing JSON error).
    """
    limit = bounds.max_bytes
    too_large = PayloadTooLarge(
        f"request body is over the limit of {limit} bytes; send smaller batches"
    )
    if request.content_length is not None:
        if request.content_length > limit:
            raise too_large
        try:
            return request.get_data(cache=False)
        except RequestEntityTooLarge:
            raise too_large from None
    stream = request.environ["wsgi.input"]
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = stream.read(min(1 << 16, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise too_large
    return b"".join(chunks)


@bp.get("/v2/health/live")
def live() -> Response:
    return jsonify(live=True)


@bp.get("/v2/health/ready")
def ready() -> tuple[Response, int]:
    is_ready = _state().watcher.current is not None
    return jsonify(ready=is_ready), 200 if is_ready else 503


@bp.get("/v2")
def server_metadata() -> Response:
    return jsonify(name="robustloop", version=__version__, extensions=["feedback"])


@bp.get("/v2/models/<name>")
def model_metadata(name: str) -> Response:
    state = _check_name(name)
    served = state.watcher.current
    if served is None:
        raise NotReady(f"model {name!r} has no version loaded yet; promote one in the store")
    return jsonify(
        name=name,
        versions=[served.version],
        platform="pytorch",
        inputs=[{"name": "images", "datatype": "FP32", "shape": [-1, *served.spec.input_shape]}],
        outputs=[
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, served.spec.num_classes]},
            {"name": "predicted_class", "datatype": "INT64", "shape": [-1]},
            {"name": "predicted_label", "datatype": "BYTES", "shape": [-1]},
            {"name": "sample_ids", "datatype": "BYTES", "shape": [-1]},
        ],
        parameters={
            "sha256": served.sha256,
            "architecture": served.architecture,
            "class_names": list(served.spec.class_names),
        },
    )


@bp.get("/v2/models/<name>/ready")
def model_ready(name: str) -> tuple[Response, int]:
    is_ready = _check_name(name).watcher.current is not None
    return jsonify(name=name, ready=is_ready), 200 if is_ready else 503


@bp.post("/v2/models/<name>/infer")
def infer(name: str) -> Response:
    started = time.perf_counter()
    state = _check_name(name)
    served = state.watcher.current  # read once: this request uses one version throughout
    version = served.version if served is not None else "none"
    code = 500
    try:
        if served is None:
            raise NotReady(f"model {name!r} has no version loaded yet; promote one in the store")
        binary_header = request.headers.get(HEADER)
        _check_content_type(binary_ok=binary_header is not None)
        max_batch = state.config.serving.max_batch
        bounds = infer_bounds(
            state.config.serving.max_body_bytes, max_batch, served.spec.input_shape
        )
        body = split_body(_read_body(bounds), binary_header)
        payload = parse_json(body.json, bounds.max_values)
        images, request_id = decode_infer_request(
            payload, max_batch, served.spec.input_shape, body.binary
        )
        chosen, binary = wanted_binary(payload, OUTPUTS)
        answer = _classify(state, served, images, request_id)
        code = 200
    except ServingError as exc:
        code = exc.status
        raise
    finally:
        if state.instrument:
            state.metrics.count_request(name, version, code)
    if state.instrument:
        state.metrics.bound(name, version).duration.observe(time.perf_counter() - started)
    return _respond(answer, chosen, binary)


def _respond(answer: dict[str, Any], chosen: list[str], binary: set[str]) -> Response:
    """The infer response with the ``chosen`` outputs; those in ``binary`` travel as raw bytes
    after the JSON header (the binary tensor data extension)."""
    by_name = {output["name"]: output for output in answer["outputs"]}
    outputs, chunks = [], []
    for name in chosen:
        output = by_name[name]
        if name in binary:
            raw = encode(output["data"], output["datatype"])
            output = {k: v for k, v in output.items() if k != "data"}
            output["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        outputs.append(output)
    answer = {**answer, "outputs": outputs}
    if not chunks:
        return jsonify(answer)
    header = json.dumps(answer).encode()
    response = Response(header + b"".join(chunks), content_type=BINARY_CONTENT_TYPE)
    response.headers[HEADER] = str(len(header))
    return response


def _classify(
    state: ServingState, served: ServedModel, images: torch.Tensor, request_id: str | None
) -> dict[str, Any]:
    images = images.to(model_device(served.model))
    with torch.inference_mode():
        probs = torch.softmax(served.model(images), dim=1)
    predicted = probs.argmax(dim=1).tolist()
    n = len(predicted)
    if state.signer is not None:
        ids = state.signer.issue(served.version, predicted)
    else:
        ids = [uuid.uuid4().hex for _ in range(n)]
        state.feedback.add(ids, predicted, served.version, _client())
    if state.instrument:
        _observe_signals(state, served, images, probs)
    if state.capture is not None:
        state.capture.hold(ids, images)
    return {
        "model_name": state.model_name,
        "model_version": served.version,
        "id": request_id if request_id is not None else uuid.uuid4().hex,
        "outputs": [
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [n, probs.shape[1]],
                "data": probs.reshape(-1).tolist(),
            },
            {"name": "predicted_class", "datatype": "INT64", "shape": [n], "data": predicted},
            {
                "name": "predicted_label",
                "datatype": "BYTES",
                "shape": [n],
                "data": [served.spec.class_names[i] for i in predicted],
            },
            {"name": "sample_ids", "datatype": "BYTES", "shape": [n], "data": ids},
        ],
    }


def _observe_signals(
    state: ServingState, served: ServedModel, images: torch.Tensor, probs: torch.Tensor
) -> None:
    series = state.metrics.bound(state.model_name, served.version)
    series.samples.inc(images.shape[0])
    with torch.inference_mode():
        entropy = normalised_entropy(probs).tolist()
        top = max_probability(probs).tolist()
    for value in entropy:
        series.entropy.observe(value)
    for value in top:
        series.max_probability.observe(value)
    if state.rng.random() < state.config.serving.squeeze_fraction:
        squeezers = state.config.serving.squeezers
        bits = state.config.serving.squeeze_bits
        scores = squeeze_score(served.model, images, squeezers=squeezers, probs=probs, bits=bits)
        for value in scores.tolist():
            series.squeeze.observe(value)


@bp.post("/v2/models/<name>/feedback")
def feedback(name: str) -> Response:
    state = _check_name(name)
    if state.feedback_token is not None and not token_matches(
        request.headers.get("Authorization"), state.feedback_token
    ):
        raise Unauthorized(
            "feedback needs `Authorization: Bearer <token>` with the token of "
            "serving.feedback_token_file (a credential separate from inference)"
        )
    _check_content_type(binary_ok=False)
    limiter = state.feedback_limiter
    max_entries = min(state.config.serving.feedback_max_entries, limiter.burst)
    id_chars = MAX_ID_CHARS if state.signer is not None else PLAIN_ID_CHARS
    bounds = feedback_bounds(state.config.serving.max_body_bytes, max_entries, id_chars)
    payload = parse_json(_read_body(bounds), bounds.max_values)
    served = state.watcher.current  # its classes bound the labels
    num_classes = served.spec.num_classes if served is not None else None
    ids, labels = decode_feedback(payload, max_entries, num_classes)
    wait = limiter.take(_client(), len(ids))
    if wait > 0:
        raise TooManyRequests(
            f"this client's feedback is over {limiter.rate:g} labels a second; retry after "
            f"{wait:.1f} s (serving.feedback_rate_per_client)",
            retry_after=wait,
        )
    judged: list[Pending | None] | list[SignedPrediction]
    if state.signer is not None:
        judged = _judge_signed(state, state.signer, ids)
    else:
        judged = [state.feedback.take(sample_id) for sample_id in ids]
    counts = {"correct": 0, "wrong": 0, "unknown": 0}
    for prediction, label in zip(judged, labels, strict=True):
        if prediction is None:
            counts["unknown"] += 1
            continue
        outcome = "correct" if prediction.predicted == label else "wrong"
        counts[outcome] += 1
        state.metrics.feedback.labels(name, prediction.version, outcome).inc()
    if state.capture is not None:
        state.capture.labelled(ids, labels)
    return jsonify(counts)


def _judge_signed(
    state: ServingState, signer: SampleIdSigner, ids: list[str]
) -> list[SignedPrediction]:
    """The predictions that signed ``ids`` carry, all verified and none judged before by this
    process; else an error, and nothing judged (one bad id refuses the whole request)."""
    predictions = [signer.verify(sample_id, f"ids[{i}]") for i, sample_id in enumerate(ids)]
    if state.seen is None:
        raise RuntimeError("a signing server remembers the ids it judged")
    repeated = state.seen.claim(
        [p.nonce for p in predictions], [p.expires_at for p in predictions], _client()
    )
    if repeated is not None:
        raise Conflict(
            f"ids[{repeated}] was already judged by this server: each prediction counts once"
        )
    return predictions


def _client() -> str:
    """Who sent the request, for per-client bounds: its peer address."""
    return request.remote_addr or ""


@bp.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(_state().registry), content_type=CONTENT_TYPE_LATEST)


__all__ = ["BadRequest", "ServingState", "create_app", "get_state"]
