"""A folder of the user's own images, one sub-folder per class, decoded once into one uint8 tensor.

torchvision's ImageFolder helpers find the classes and files. If the folder has ``train/`` and ``test/`` (or
``val/``) sub-folders they are the splits; otherwise a fixed-seed 90/10 split of the files is used. Every
image is decoded once with PIL, converted to RGB (or L when every image in the folder is grayscale) and
resized to a square ``image_size`` so the split stacks into one tensor. A file with an image extension that
PIL cannot read is a DataError naming it (a damaged file is something to fix, not to train around); files
with other extensions (notes, .DS_Store) are ignored, as ImageFolder does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .base import DataError, ImageDataset

__all__ = ["load_image_folder", "DEFAULT_IMAGE_SIZE", "SPLIT_SEED", "TEST_FRACTION"]

DEFAULT_IMAGE_SIZE = 64
SPLIT_SEED = 0
TEST_FRACTION = 0.1
_GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "F"}


def load_image_folder(path: str | Path, split: str = "train", *, image_size: int | None = None) -> ImageDataset:
    """One split of a class-per-sub-folder image folder as uint8 (N, C, image_size, image_size)."""
    root = Path(path).expanduser().resolve()
    size = DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)
    if size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    train_dir = root / "train"
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if train_dir.is_dir() and test_dir is not None:
        classes, class_to_idx = _training_classes(train_dir)
        extra = set(_classes(test_dir)[0]) - set(classes)
        if extra:
            raise DataError(f"{test_dir}: classes {sorted(extra)} have no training folder in {train_dir}; "
                            f"add them there or remove them")
        all_files = _files(train_dir, class_to_idx) + _files(test_dir, class_to_idx)
        files = _files(train_dir if split == "train" else test_dir, class_to_idx)
        source = str(train_dir if split == "train" else test_dir)
    else:
        base = train_dir if train_dir.is_dir() else root
        classes, class_to_idx = _training_classes(base)
        all_files = _files(base, class_to_idx)
        files = _split(all_files, split)
        source = f"{base} ({split} part of a {1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} split, seed {SPLIT_SEED})"
    if not files:
        raise DataError(f"{root}: no {split} images; add images or use train/ and test/ sub-folders")
    mode = "L" if all(_mode(p) in _GRAYSCALE_MODES for p, _ in all_files) else "RGB"
    images = torch.from_numpy(np.stack([_decode(p, mode, size) for p, _ in files]))
    images = images.unsqueeze(1) if mode == "L" else images.permute(0, 3, 1, 2)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return ImageDataset(images.contiguous(), labels, classes, f"folder:{root}", split, source, root=str(root))


def _classes(folder: Path) -> tuple[list[str], dict[str, int]]:
    try:
        from torchvision.datasets.folder import find_classes  # torchvision costs ~2 s to import: when needed

        return find_classes(folder)
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"{folder}: no class sub-folders ({e}); "
                        f"put each class's images in its own sub-folder") from None


def _training_classes(folder: Path) -> tuple[list[str], dict[str, int]]:
    classes, class_to_idx = _classes(folder)
    if len(classes) < 2:
        # one class trains to 100% accuracy and means nothing: most likely the wrong folder level
        raise DataError(f"{folder}: only one class sub-folder ({classes[0]!r}); a classifier needs at least two: "
                        f"give the folder that holds one sub-folder per class")
    return classes, class_to_idx


def _files(folder: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    return make_dataset(folder, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)


def _split(files: list[tuple[str, int]], split: str) -> list[tuple[str, int]]:
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    n_test = max(1, round(len(files) * TEST_FRACTION)) if len(files) > 1 else 0
    chosen = sorted(order[:n_test] if split == "test" else order[n_test:])
    return [files[i] for i in chosen]


def _mode(path: str) -> str:
    try:
        with Image.open(path) as img:
            return img.mode
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: not an image PIL can read ({type(e).__name__}); delete or replace it") from None


def _decode(path: str, mode: str, size: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: damaged image ({e}); delete or replace it") from None
