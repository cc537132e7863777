"""Image files, found and decoded the one way both ``train --dataset DIR`` and ``predict`` read them.

Finding: only regular files are read (a FIFO named ``x.png`` would block forever, a device never end);
hidden files and folders (``.ipynb_checkpoints``, ``.DS_Store``) are skipped; a symlinked folder is followed
once, by its real path, so a link loop cannot multiply a folder into thousands of copies.

Decoding: an image is refused before its pixels are decoded when its header claims more than
:data:`MAX_IMAGE_PIXELS`; every failure, whatever Pillow raises, is one DataError naming the file. Colour
modes are converted to 8-bit grey or RGB with their range scaled, not clipped: 16-bit grey (``I;16``,
and ``I``, read as 16-bit) by 255/65535, float (``F``) from [0, 1]; palette images through RGBA; alpha
is dropped (as torchvision's ``convert("RGB")`` does).
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from .base import DataError

__all__ = ["MAX_IMAGE_PIXELS", "GREY_MODES", "is_regular_file", "class_folders", "list_image_files",
           "image_mode", "decode_image", "read_square"]

#: The most pixels an image may have (8192 x 8192): a larger one is refused before it is decoded.
MAX_IMAGE_PIXELS = 8192 * 8192
#: Pillow's modes that hold one channel of intensity (with or without alpha).
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


def is_regular_file(path: str | Path) -> bool:
    """True for a regular file (or a link to one): not a folder, FIFO, device or socket, nor a broken link."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _hidden(name: str) -> bool:
    return name.startswith(".")


def class_folders(folder: str | Path) -> list[str]:
    """The names of ``folder``'s visible sub-folders, sorted (torchvision's ``find_classes``, hidden ones
    skipped: ``.ipynb_checkpoints`` is not a class)."""
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if not _hidden(e.name) and e.is_dir())
    except OSError as e:
        raise DataError(f"{folder}: cannot list it ({e.strerror or e}); give a folder of class sub-folders") from None


def list_image_files(folder: str | Path, extensions: Iterable[str], seen: set[str] | None = None) -> list[Path]:
    """The regular, visible files under ``folder`` whose names end in one of ``extensions`` (any case),
    in torchvision's ``make_dataset`` order (folders sorted by path, files by name).

    ``seen`` holds the real paths of folders not to enter again (share it across calls, and put other
    classes' folders in it, so that a folder is walked once, from its own place): a symlinked folder is
    followed only the first time its real path is met. ``folder`` itself is always walked.
    """
    ext = tuple(e.lower() for e in extensions)
    seen = set() if seen is None else seen
    found: list[tuple[str, list[str]]] = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen and root != str(folder):  # a link to a folder walked elsewhere: a loop, or images twice
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not _hidden(d)]
        found.append((root, sorted(f for f in files if not _hidden(f) and f.lower().endswith(ext))))
    return [Path(root, f) for root, names in sorted(found) for f in names if is_regular_file(os.path.join(root, f))]


def _open(path: Path) -> Image.Image:
    """``path`` opened (header read, pixels not yet decoded), within the pixel limit."""
    if not is_regular_file(path):
        raise DataError(f"{path} is not a regular file (a FIFO, device or folder); give an image file")
    too_many = f"more than the {MAX_IMAGE_PIXELS:,} pixels an image may have; shrink it first"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit, below, decides
        try:
            img = Image.open(path)
        except Image.DecompressionBombError:  # Pillow's own limit, twice ours: refused before decoding too
            raise DataError(f"{path} claims {too_many}") from None
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        img.close()
        raise DataError(f"{path} is {width}x{height}: {too_many}")
    return img


def image_mode(path: str | Path) -> str:
    """The colour mode of an image file, read from its header (a one-line DataError if it is no image)."""
    path = Path(path)
    try:
        img = _open(path)
        with img:
            return img.mode
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow's plugins raise many types on a damaged file
        raise DataError(f"{path} is not an image Pillow can read ({type(e).__name__}); delete or replace it") from None


def decode_image(path: str | Path, grey: bool) -> Image.Image:
    """The image in ``path`` decoded as an 8-bit ``"L"`` (``grey``) or ``"RGB"`` Pillow image, its range
    scaled (16-bit and float modes) and its alpha dropped; any failure is one DataError naming the file."""
    path = Path(path)
    try:
        img = _open(path)
        with img:
            img.load()
            return _to_8bit(img, grey)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - see image_mode; MemoryError included: the file is the problem
        why = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise DataError(f"{path} is not an image Pillow can read ({why}); delete or replace it") from None


def read_square(path: str | Path, grey: bool, size: int) -> np.ndarray:
    """An image file as a data set of the user's images stores it: decoded (:func:`decode_image`) and resized
    to ``size`` x ``size`` with Pillow's (antialiased) bilinear filter; uint8, (H, W) or (H, W, 3). Training
    on a folder and ``predict`` on a file both read images here, so a file's pixels are the same in both."""
    img = decode_image(path, grey)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _to_8bit(img: Image.Image, grey: bool) -> Image.Image:
    mode = "L" if grey else "RGB"
    if img.mode in _SIXTEEN_BIT or img.mode == "F":
        values = np.asarray(img).astype(np.float32)
        values = values.clip(0, 65535) / 257 if img.mode in _SIXTEEN_BIT else values.clip(0, 1) * 255
        return Image.fromarray(np.round(values).astype(np.uint8)).convert(mode)
    if img.mode in ("P", "PA"):  # a palette's transparency is only kept (then dropped) through RGBA
        img = img.convert("RGBA")
    return img.convert(mode)
