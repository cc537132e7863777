"""The IDX format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/), gzip-compressed or not.

Header: two zero bytes, a type byte (0x08 = unsigned byte, the only one these data sets use), the number of
dimensions, then each dimension as a big-endian uint32; the data follows, row-major. Every way a file can
be wrong (not gzip when it says so, truncated, wrong magic, trailing bytes) is a DataError naming the file.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import torch

from .base import DataError

__all__ = ["read_idx", "parse_idx", "write_idx"]

_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


def parse_idx(data: bytes, name: str, ndim: int | None = None) -> torch.Tensor:
    """The uint8 tensor an IDX file's bytes hold; ``name`` is used in errors, ``ndim`` checked if given."""
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{name}: corrupt or truncated gzip data ({e}); delete it and download it again") from None
    fix = "it is not an IDX file of unsigned bytes (MNIST/Fashion-MNIST format); replace it with the original file"
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{name}: bad magic number {data[:4].hex() or 'empty file'}: {fix}")
    if data[2] != _UBYTE:
        raise DataError(f"{name}: data type byte 0x{data[2]:02x}, expected 0x08: {fix}")
    n = data[3]
    if ndim is not None and n != ndim:
        raise DataError(f"{name}: magic number says {n} dimensions, expected {ndim} "
                        f"(images and labels swapped?); replace it with the original file")
    offset = 4 + 4 * n
    if len(data) < offset:
        raise DataError(f"{name}: truncated header; delete it and download it again")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(n)]
    expected = offset + torch.Size(dims).numel()
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(f"{name}: {what} ({len(data):,} bytes, header {dims} needs {expected:,}); "
                        f"delete it and download it again")
    return torch.frombuffer(bytearray(data[offset:]), dtype=torch.uint8).reshape(dims)


def read_idx(path: str | Path, ndim: int | None = None) -> torch.Tensor:
    """Read an IDX file (gzip-compressed or not, told apart by content, not by name) as a uint8 tensor."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the path and its permissions") from None
    return parse_idx(data, str(path), ndim)


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
