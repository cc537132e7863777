"""Pickled data files read as data: an unpickler that can build numpy arrays and plain containers, nothing else.

CIFAR-10's python batches are pickles, and ``pickle.load`` runs whatever callable a file names: a folder that
``--data-dir``, ``$MODERNCNN_DATA`` or the cache points at must not be able to run code. The format needs
only dicts, lists, strings, numbers and numpy arrays; :class:`DataUnpickler` resolves only the few globals
numpy's own pickles use (each wrapped so that it cannot allocate more than the file holds) and refuses every
other one, so a hostile file is a one-line :class:`~moderncnn.data.base.DataError`, not code run.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .base import DataError

__all__ = ["DataUnpickler", "load_data_pickle", "MAX_PICKLE_BYTES"]


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy pickles an array as an empty one whose state (shape, bytes) is set next: a larger "empty" array
    # would be an allocation the file does not pay for
    if subtype is not np.ndarray or not isinstance(shape, tuple) or int(np.prod(shape)) > 1:
        raise pickle.UnpicklingError("not a plain numpy array")
    return np.ndarray.__new__(np.ndarray, shape, _dtype(dtype))


def _dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    dtype = np.dtype(spec, align, copy)
    if dtype.hasobject:  # an object array would unpickle Python objects again
        raise pickle.UnpicklingError("object arrays are not data")
    return dtype


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    # numpy >= 2 with pickle protocol 5; the shape must match the bytes the file holds
    return np.frombuffer(bytes(buf), dtype=_dtype(dtype)).reshape(shape, order=order).copy()


def _encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 writes bytes into a protocol-2 pickle as _codecs.encode(str, "latin1"); other codecs
    # (zlib, bz2) would decompress, a bomb in a small file
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"codec {encoding!r} is not data")
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
}


class DataUnpickler(pickle.Unpickler):
    """An unpickler that admits numpy arrays (of numbers), dicts, lists, tuples, strings and numbers only."""

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refused {module}.{name}: a data file names no code")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent id: a data file refers to nothing outside it")


#: The largest pickled data file read (a CIFAR-10 batch holds 31 MB).
MAX_PICKLE_BYTES = 2**30


def load_data_pickle(path: str | Path, fix: str) -> Any:
    """The object pickled in ``path``, read with :class:`DataUnpickler`; any failure (a refused global, a
    damaged or truncated file, one over :data:`MAX_PICKLE_BYTES`) is one DataError naming the file, ending
    with ``fix``."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > MAX_PICKLE_BYTES:
            raise DataError(f"{path}: not a regular file of at most {MAX_PICKLE_BYTES:,} bytes; {fix}")
        # from memory: a length field that lies (8 exabytes of bytes follow) cannot make a reader allocate it
        return DataUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except DataError:
        raise
    except pickle.UnpicklingError as e:
        raise DataError(f"{path}: not a data pickle ({e}); {fix}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e}); {fix}") from None
    except Exception as e:  # noqa: BLE001 - EOFError, ValueError, MemoryError...: all mean a damaged file
        raise DataError(f"{path}: not a readable pickle ({type(e).__name__}); {fix}") from None
