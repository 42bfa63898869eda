"""Decode and validate Open Inference Protocol v2 request bodies into image tensors.

Every check raises :class:`~serving.errors.BadRequest` with a message that names the field and
says what was expected, so that a client can fix its request without reading our code.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robustloop.jsonbody import BodyError, TooManyValues, parse_json_body
from serving._binary import HEADER, binary_input
from serving.errors import BadRequest, PayloadTooLarge

DATATYPES = ("FP32", "UINT8")

BYTES_PER_VALUE = 24
"""Room for one FP32 value written as JSON with its separator (``-1.1754943508222875e-38, ``
is 24 bytes); binary tensor data needs 4."""
PLAIN_ID_CHARS = 32
"""Characters of an unsigned sample id (a UUID's hex); signed ids are longer
(:data:`serving.signed_ids.MAX_ID_CHARS`)."""
FEEDBACK_ENTRY_BYTES = 16
"""Room for what a feedback entry holds besides its id: quotes, a label and separators."""
ENVELOPE_VALUES = 1024
"""Values besides the data a legal request may hold (name, shape, datatype, id, parameters)."""
ENVELOPE_BYTES = 64 * 1024


@dataclass(frozen=True)
class BodyBounds:
    """The most a legal request of one kind holds: bytes, and JSON values (checked before the
    body is parsed, so the work per request is bounded by what is legal, not by its size)."""

    max_bytes: int
    max_values: int


def infer_bounds(configured: int, max_batch: int, image_shape: tuple[int, ...]) -> BodyBounds:
    """Bounds of an infer request: ``max_batch`` images of ``image_shape`` as JSON, at most
    ``configured`` bytes (``serving.max_body_bytes``)."""
    values = max_batch * math.prod(image_shape) + ENVELOPE_VALUES
    return BodyBounds(min(configured, values * BYTES_PER_VALUE + ENVELOPE_BYTES), values)


def feedback_bounds(
    configured: int, max_entries: int, id_chars: int = PLAIN_ID_CHARS
) -> BodyBounds:
    """Bounds of a feedback request of at most ``max_entries`` ids of up to ``id_chars``
    characters and their labels."""
    return BodyBounds(
        min(configured, max_entries * (id_chars + FEEDBACK_ENTRY_BYTES) + ENVELOPE_BYTES),
        2 * max_entries + ENVELOPE_VALUES,
    )


def parse_json(body: bytes, max_values: int | None = None) -> Any:
    """Parse a request body as strict JSON (:mod:`robustloop.jsonbody`); more than
    ``max_values`` values is a :class:`PayloadTooLarge`, anything else a :class:`BadRequest`."""
    try:
        return parse_json_body(body, max_values=max_values)
    except TooManyValues as exc:
        raise PayloadTooLarge(f"{exc}; send smaller batches") from None
    except BodyError as exc:
        raise BadRequest(str(exc)) from None


def decode_infer_request(
    payload: Any, max_batch: int, image_shape: tuple[int, int, int], binary: bytes = b""
) -> tuple[torch.Tensor, str | None]:
    """Images of an OIP v2 infer request, as float32 [N, C, H, W] in [0, 1], and its id.

    Accepts one input tensor of datatype FP32 (values in [0, 1]) or UINT8 (integers in
    [0, 255]) and shape [N, C, H, W] or [N, C*H*W] for the served model's ``image_shape``
    (C, H, W), with ``data`` flat (row-major) or nested to match the shape, or with its values
    in ``binary`` (the binary tensor data extension, :mod:`serving._binary`), and
    1 <= N <= ``max_batch``.

    Raises:
        BadRequest: anything else, with a message saying what was wrong.
    """
    if not isinstance(payload, dict):
        raise BadRequest(f"request must be a JSON object, got {_json_type(payload)}")
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f"'id' must be a string, got {_json_type(request_id)}")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise BadRequest("'inputs' must be a list holding exactly one tensor")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise BadRequest(f"inputs[0] must be an object, got {_json_type(tensor)}")
    for key in ("shape", "datatype"):
        if key not in tensor:
            raise BadRequest(
                f"inputs[0] has no '{key}'; an input needs name, shape, datatype and data"
            )
    if "data" in tensor and binary:
        raise BadRequest("inputs[0] has data, yet binary data follows the JSON header")
    if "data" not in tensor and not binary:
        raise BadRequest(
            "inputs[0] has no 'data' (nor parameters.binary_data_size with binary data after "
            f"the JSON header, {HEADER})"
        )
    datatype = tensor["datatype"]
    if datatype not in DATATYPES:
        raise BadRequest(
            f"inputs[0].datatype must be one of {', '.join(DATATYPES)}, got {datatype!r}"
        )
    shape = _check_shape(tensor["shape"], max_batch, image_shape)
    expected = math.prod(shape)
    if binary:
        array = binary_input(tensor, binary, datatype, expected)
    else:
        array = _to_array(tensor["data"], datatype)
    if array.size != expected:
        raise BadRequest(
            f"inputs[0].data holds {array.size} values but shape {shape} needs {expected}"
        )
    if datatype == "FP32":
        if not np.isfinite(array).all():
            raise BadRequest(
                "inputs[0].data contains NaN or infinity; FP32 pixels must be in [0, 1]"
            )
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise BadRequest(
                f"FP32 pixel values must be in [0, 1], got values in [{low:g}, {high:g}]; "
                "scale 0-255 images by 1/255 or send them as UINT8"
            )
        images = torch.from_numpy(array.astype(np.float32, copy=False))
    else:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise BadRequest(
                f"UINT8 pixel values must be in [0, 255], got values in [{low}, {high}]"
            )
        images = torch.from_numpy(array.astype(np.float32)) / 255.0
    return images.reshape(shape[0], *image_shape), request_id


def _check_shape(shape: Any, max_batch: int, image_shape: tuple[int, int, int]) -> list[int]:
    pixels = math.prod(image_shape)
    valid = (
        isinstance(shape, list)
        and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        and (
            (len(shape) == 4 and tuple(shape[1:]) == tuple(image_shape))
            or (len(shape) == 2 and shape[1] == pixels)
        )
    )
    if not valid:
        c, h, w = image_shape
        raise BadRequest(
            f"inputs[0].shape must be [N, {c}, {h}, {w}] or [N, {pixels}] for this model, "
            f"got {_shape_text(shape)}"
        )
    n = shape[0]
    if n < 1:
        raise BadRequest(f"batch size N must be at least 1, got {n}")
    if n > max_batch:
        raise BadRequest(f"batch size {n} is over this server's limit of {max_batch}; split it")
    return list(shape)


def _shape_text(shape: Any) -> str:
    try:
        return json.dumps(shape)[:200]
    except (TypeError, ValueError):  # not JSON-able (cannot happen for parsed JSON)
        return repr(shape)[:200]


def _to_array(data: Any, datatype: str) -> np.ndarray:
    if not isinstance(data, list):
        raise BadRequest(f"inputs[0].data must be a list of numbers, got {_json_type(data)}")
    try:
        array = np.asarray(data)
    except (ValueError, OverflowError, RecursionError):
        raise BadRequest(
            "inputs[0].data is ragged or not numeric; send a flat list of numbers"
        ) from None
    if array.dtype.kind not in "iuf" or array.size == 0:
        raise BadRequest("inputs[0].data must be a non-empty list of numbers only")
    if datatype == "UINT8" and array.dtype.kind == "f":
        raise BadRequest("UINT8 data must be integers in [0, 255]; send floats as FP32")
    return array.reshape(-1)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return "a number"


def decode_feedback(
    payload: Any, max_entries: int, num_classes: int | None = None
) -> tuple[list[str], list[int]]:
    """The ``ids`` and integer ``labels`` of a feedback request, checked for shape and type.

    Raises:
        BadRequest: not an object, lists missing or of different lengths, a non-string id, a
            label that is not an integer in [0, num_classes - 1] (any class index while no
            model is served), or more entries than the server keeps.
    """
    bound = num_classes if num_classes is not None else sys.maxsize
    if not isinstance(payload, dict):
        raise BadRequest(f"feedback must be a JSON object, got {_json_type(payload)}")
    ids, labels = payload.get("ids"), payload.get("labels")
    if not isinstance(ids, list) or not isinstance(labels, list):
        raise BadRequest("feedback needs 'ids' and 'labels', two lists of the same length")
    if len(ids) != len(labels):
        raise BadRequest(f"'ids' has {len(ids)} entries but 'labels' has {len(labels)}")
    if len(ids) > max_entries:
        raise BadRequest(f"at most {max_entries} feedback entries per request, got {len(ids)}")
    for i in ids:
        if not isinstance(i, str):
            raise BadRequest(f"every id must be a string from an infer response, got {i!r}")
    for label in labels:
        if not (isinstance(label, int) and not isinstance(label, bool) and 0 <= label < bound):
            top = f"[0, {bound - 1}]" if num_classes is not None else "0 or above"
            raise BadRequest(f"every label must be an integer class in {top}, got {label!r}")
    return ids, labels


__all__ = [
    "PLAIN_ID_CHARS",
    "BodyBounds",
    "decode_feedback",
    "decode_infer_request",
    "feedback_bounds",
    "infer_bounds",
    "parse_json",
]
