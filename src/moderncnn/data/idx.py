"""The IDX format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/), gzip-compressed or not.

Header: two zero bytes, a type byte (0x08 = unsigned byte, the only one these data sets use), the number of
dimensions, then each dimension as a big-endian uint32; the data follows, row-major. Every way a file can
be wrong (not gzip when it says so, truncated, wrong magic, trailing bytes) is a DataError naming the file.
"""

from __future__ import annotations

import gzip
import io
import math
import zlib
from pathlib import Path
from typing import BinaryIO

import torch

from .base import DataError

__all__ = ["read_idx", "parse_idx", "write_idx"]

_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


#: The most bytes a header may declare (2 GiB: MNIST's largest file holds 47 MB): a lying header is refused
#: before anything is read, and a stream is never decompressed beyond what its header declares.
MAX_IDX_BYTES = 2**31
_CHUNK = 1 << 20


def parse_idx(data: bytes, name: str, ndim: int | None = None) -> torch.Tensor:
    """The uint8 tensor an IDX file's bytes hold; ``name`` is used in errors, ``ndim`` checked if given."""
    return _read_stream(io.BytesIO(data), name, ndim)


def read_idx(path: str | Path, ndim: int | None = None) -> torch.Tensor:
    """Read an IDX file (gzip-compressed or not, told apart by content, not by name) as a uint8 tensor.

    The file is streamed: its size is checked against its header as it is decompressed, so a gzip bomb
    stops at the size the header declares, and the pixels are held once (in the tensor returned).
    """
    path = Path(path)
    try:
        if not path.is_file():  # a FIFO or a device would block or never end
            raise DataError(f"{path}: not a regular file; give the IDX file itself")
        with open(path, "rb") as f:
            return _read_stream(f, str(path), ndim)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e}); check the path and its permissions") from None


def _read_stream(raw: BinaryIO, name: str, ndim: int | None) -> torch.Tensor:
    compressed = raw.read(2) == _GZIP_MAGIC
    raw.seek(0)
    stream: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
    try:
        dims, expected = _read_header(stream, name, ndim)
        data = _read_exactly(stream, expected, name, dims)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{name}: corrupt or truncated gzip data ({e}); delete it and download it again") from None
    if not data:
        return torch.empty(dims, dtype=torch.uint8)
    return torch.frombuffer(data, dtype=torch.uint8).reshape(dims)


def _read_header(stream: BinaryIO, name: str, ndim: int | None) -> tuple[list[int], int]:
    fix = "it is not an IDX file of unsigned bytes (MNIST/Fashion-MNIST format); replace it with the original file"
    magic = stream.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
        raise DataError(f"{name}: bad magic number {magic.hex() or 'empty file'}: {fix}")
    if magic[2] != _UBYTE:
        raise DataError(f"{name}: data type byte 0x{magic[2]:02x}, expected 0x08: {fix}")
    n = magic[3]
    if ndim is not None and n != ndim:
        raise DataError(f"{name}: magic number says {n} dimensions, expected {ndim} "
                        f"(images and labels swapped?); replace it with the original file")
    raw_dims = stream.read(4 * n)
    if len(raw_dims) < 4 * n:
        raise DataError(f"{name}: truncated header; delete it and download it again")
    dims = [int.from_bytes(raw_dims[4 * i:4 * i + 4], "big") for i in range(n)]
    expected = math.prod(dims)
    if expected > MAX_IDX_BYTES:
        raise DataError(f"{name}: header {dims} declares {expected:,} bytes, more than the {MAX_IDX_BYTES:,} an IDX "
                        f"file of images may hold; replace it with the original file")
    return dims, expected


def _read_exactly(stream: BinaryIO, expected: int, name: str, dims: list[int]) -> bytearray:
    """The ``expected`` bytes after the header, grown chunk by chunk (a header that lies costs only what the
    stream really holds); one byte more than declared is an error."""
    data = bytearray()
    while len(data) < expected:
        chunk = stream.read(min(_CHUNK, expected - len(data)))
        if not chunk:
            break
        data += chunk
    got = len(data)
    if got != expected or stream.read(1):
        what = "truncated" if got < expected else "longer than its header says"
        size = f"{got:,} bytes of data" if got < expected else f"more than {expected:,} bytes of data"
        raise DataError(f"{name}: {what} ({size}, header {dims} needs {expected:,}); "
                        f"delete it and download it again")
    return data


def write_idx(path: str | Path, array: torch.Tensor) -> None:
    """Write a uint8 tensor as IDX, gzip-compressed (reproducibly: no name, mtime 0) when ``path`` ends in .gz."""
    array = torch.as_tensor(array)
    if array.dtype != torch.uint8:
        raise ValueError(f"write_idx writes uint8 tensors only, got {array.dtype}")
    header = bytes([0, 0, _UBYTE, array.dim()]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.contiguous().numpy().tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
            f.write(data)
        data = buf.getvalue()
    path.write_bytes(data)
