"""The binary tensor data extension of the Open Inference Protocol v2 (KServe, Triton).

A request or response body is a JSON header followed by the raw bytes of its tensors, in the
order the header lists them; the HTTP header ``Inference-Header-Content-Length`` gives the JSON
header's length. A tensor sent this way has ``parameters.binary_data_size`` (its byte count)
instead of ``data``. Numbers are little-endian; an element of a BYTES tensor is a 4-byte
little-endian length followed by that many bytes. Triton's and KServe's clients send inputs this
way by default (``tritonclient``'s ``set_data_from_numpy(..., binary_data=True)``) and ask for
binary outputs with ``parameters.binary_data_output`` on the request or ``binary_data`` on a
requested output.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.errors import BadRequest

HEADER = "Inference-Header-Content-Length"
"""The HTTP header giving the length of the JSON part of a body."""
BINARY_CONTENT_TYPE = "application/octet-stream"

NUMPY_TYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "UINT8": np.dtype("u1"),
    "INT64": np.dtype("<i8"),
}
"""Datatypes by their OIP name, as little-endian numpy dtypes."""


@dataclass(frozen=True)
class Body:
    """An infer request body, split: the JSON header's bytes and the binary data after it."""

    json: bytes
    binary: bytes


def split_body(body: bytes, header_length: str | None) -> Body:
    """Split ``body`` at ``Inference-Header-Content-Length`` (the whole body is JSON without it).

    Raises:
        BadRequest: the header is not a length within the body.
    """
    if header_length is None:
        return Body(body, b"")
    text = header_length.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise BadRequest(f"{HEADER} must be a byte count, got {header_length[:40]!r}")
    length = int(text)
    if not 0 < length <= len(body):
        raise BadRequest(f"{HEADER} is {length}, but the body holds {len(body)} bytes")
    return Body(body[:length], body[length:])


def binary_input(tensor: dict[str, Any], binary: bytes, datatype: str, count: int) -> np.ndarray:
    """The values of an input sent as binary data: all of ``binary``, checked against the
    tensor's ``binary_data_size`` and the ``count`` of values its shape needs.

    Raises:
        BadRequest: a size that is not an integer, or that disagrees with the body or the shape.
    """
    parameters = tensor.get("parameters")
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequest("inputs[0].parameters.binary_data_size must be a byte count")
    if size != len(binary):
        raise BadRequest(
            f"inputs[0].parameters.binary_data_size is {size}, but {len(binary)} bytes follow "
            f"the JSON header ({HEADER})"
        )
    dtype = NUMPY_TYPES[datatype]
    if size != count * dtype.itemsize:
        raise BadRequest(
            f"inputs[0] holds {size} bytes of binary data, but its shape needs {count} {datatype} "
            f"values ({count * dtype.itemsize} bytes)"
        )
    return np.frombuffer(binary, dtype=dtype).copy()  # writable, for torch


def encode(values: Any, datatype: str) -> bytes:
    """The binary form of an output tensor's values (a flat list or array)."""
    if datatype == "BYTES":
        out = bytearray()
        for item in values:
            raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
            out += struct.pack("<I", len(raw)) + raw
        return bytes(out)
    return np.asarray(values, dtype=NUMPY_TYPES[datatype]).tobytes()


def wanted_binary(payload: dict[str, Any], names: list[str]) -> tuple[list[str], set[str]]:
    """Which outputs to return (the request's ``outputs``, else all ``names``) and which of them
    in binary form.

    Raises:
        BadRequest: ``outputs`` is malformed or names an output the model does not have.
    """
    parameters = payload.get("parameters")
    all_binary = isinstance(parameters, dict) and parameters.get("binary_data_output") is True
    requested = payload.get("outputs")
    if requested is None:
        return names, set(names) if all_binary else set()
    if not isinstance(requested, list) or not requested:
        raise BadRequest("'outputs' must be a non-empty list of {\"name\": ...} objects")
    chosen: list[str] = []
    binary: set[str] = set()
    for index, item in enumerate(requested):
        name = item.get("name") if isinstance(item, dict) else None
        if name not in names:
            raise BadRequest(
                f"outputs[{index}] names {name!r}; this model's outputs are {', '.join(names)}"
            )
        chosen.append(name)
        own = item.get("parameters")
        flag = own.get("binary_data") if isinstance(own, dict) else None
        if flag is True or (flag is None and all_binary):
            binary.add(name)
    return chosen, binary


__all__ = [
    "BINARY_CONTENT_TYPE",
    "HEADER",
    "Body",
    "binary_input",
    "encode",
    "split_body",
    "wanted_binary",
]
