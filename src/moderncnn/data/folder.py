"""A folder of the user's own images, one sub-folder per class, decoded once into one uint8 tensor.

Classes and files are found as torchvision's ImageFolder finds them (its extensions, its order), by
:mod:`moderncnn.data.images`, which also skips hidden files and folders, reads regular files only and walks
a symlinked folder once. If the folder has ``train/`` and ``test/`` (or ``val/``) sub-folders they are the
splits (an image reachable from both is an error: test images must not leak into training); otherwise a
fixed-seed 90/10 split of the files is used. Every image is decoded once, as ``predict`` decodes it
(:func:`~moderncnn.data.images.read_square`: a pixel limit, 16-bit and palette images scaled), converted to
RGB (or L when every image in the folder is grayscale) and resized to a square ``image_size`` so the split
stacks into one tensor. A file with an image extension that cannot be read is a DataError naming it (a
damaged file is something to fix, not to train around); files with other extensions are ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .base import DataError, ImageDataset
from .images import GREY_MODES, class_folders, image_mode, list_image_files, read_square

__all__ = ["load_image_folder", "DEFAULT_IMAGE_SIZE", "SPLIT_SEED", "TEST_FRACTION"]

DEFAULT_IMAGE_SIZE = 64
SPLIT_SEED = 0
TEST_FRACTION = 0.1


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
        train_files, test_files = _files(train_dir, class_to_idx), _files(test_dir, class_to_idx)
        _check_disjoint(train_files, test_files, test_dir)
        all_files = train_files + test_files
        files = train_files if split == "train" else test_files
        source = str(train_dir if split == "train" else test_dir)
    else:
        base = train_dir if train_dir.is_dir() else root
        classes, class_to_idx = _training_classes(base)
        all_files = _files(base, class_to_idx)
        files = _split(all_files, split)
        source = f"{base} ({split} part of a {1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} split, seed {SPLIT_SEED})"
    if not files:
        raise DataError(f"{root}: no {split} images; add images or use train/ and test/ sub-folders")
    grey = all(image_mode(p) in GREY_MODES for p, _ in all_files)
    images = torch.from_numpy(np.stack([read_square(p, grey, size) for p, _ in files]))
    images = images.unsqueeze(1) if grey else images.permute(0, 3, 1, 2)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return ImageDataset(images.contiguous(), labels, classes, f"folder:{root}", split, source, root=str(root))


def _classes(folder: Path) -> tuple[list[str], dict[str, int]]:
    classes = class_folders(folder)
    if not classes:
        raise DataError(f"{folder}: no class sub-folders; put each class's images in its own sub-folder")
    return classes, {c: i for i, c in enumerate(classes)}


def _training_classes(folder: Path) -> tuple[list[str], dict[str, int]]:
    classes, class_to_idx = _classes(folder)
    if len(classes) < 2:
        # one class trains to 100% accuracy and means nothing: most likely the wrong folder level
        raise DataError(f"{folder}: only one class sub-folder ({classes[0]!r}); a classifier needs at least two: "
                        f"give the folder that holds one sub-folder per class")
    return classes, class_to_idx


def _files(folder: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS  # torchvision costs ~2 s to import: when needed

    # every class folder is walked from its own place, once: a link to it from another class is not followed
    seen = {os.path.realpath(folder / name) for name in class_to_idx}
    files: dict[str, tuple[str, int]] = {}
    for name, label in sorted(class_to_idx.items()):
        for path in list_image_files(folder / name, IMG_EXTENSIONS, seen) if (folder / name).is_dir() else ():
            files.setdefault(os.path.realpath(path), (str(path), label))  # a file linked twice counts once
    return list(files.values())


def _check_disjoint(train: list[tuple[str, int]], test: list[tuple[str, int]], test_dir: Path) -> None:
    shared = {os.path.realpath(p) for p, _ in train} & {os.path.realpath(p) for p, _ in test}
    if shared:
        raise DataError(f"{test_dir}: {len(shared)} test images are also reachable from the training folder "
                        f"(first {sorted(shared)[0]}), through a link or a copy of the path; remove the link so "
                        f"that test images stay out of training")


def _split(files: list[tuple[str, int]], split: str) -> list[tuple[str, int]]:
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    n_test = max(1, round(len(files) * TEST_FRACTION)) if len(files) > 1 else 0
    chosen = sorted(order[:n_test] if split == "test" else order[n_test:])
    return [files[i] for i in chosen]


