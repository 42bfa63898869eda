"""Reading IDX files (the format of MNIST and Fashion-MNIST), gzipped or plain.

IDX: a big-endian header ``0x00 0x00 <type> <ndim>`` followed by ``ndim`` 32-bit sizes and the
data. Fashion-MNIST uses type 0x08 (unsigned byte): magic 2049 for labels (1 dimension) and 2051
for images (3 dimensions). Every check here raises :class:`~training.data.DatasetError` rather
than returning a partial array: a silently truncated training set is worse than no training set.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

_UBYTE = 0x08


class IdxFormatError(ValueError):
    """The bytes are not a well-formed unsigned-byte IDX array of the expected shape."""


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic (whatever its name)."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise IdxFormatError(f"corrupt gzip stream ({exc})") from None
    return raw


def parse_idx(data: bytes, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte IDX array with ``ndim`` dimensions.

    Raises:
        IdxFormatError: wrong magic, type or rank, or the data is shorter or longer than the
            header promises.
    """
    if len(data) < 4:
        raise IdxFormatError(f"file has {len(data)} bytes, too short for an IDX header")
    zero, dtype, rank = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != _UBYTE or rank != ndim:
        magic = struct.unpack(">I", data[:4])[0]
        expected = (_UBYTE << 8) | ndim
        raise IdxFormatError(f"bad magic number {magic} (expected {expected}: ubyte, {ndim}-d)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError("truncated header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected_len = int(np.prod(shape, dtype=np.int64))
    body = len(data) - header
    if body != expected_len:
        raise IdxFormatError(
            f"header promises shape {tuple(shape)} ({expected_len} bytes) but the file holds "
            f"{body} bytes: truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()
