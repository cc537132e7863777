"""Fashion-MNIST, MNIST, CIFAR-10 and folders of images, loaded whole as uint8 tensors.

A named set is searched for in ``root`` (the CLI's --data-dir), then ``$MODERNCNN_DATA``, then the user
cache directory (:func:`default_data_dir`); each directory is read as it is (no checksum: a user's copy may
be reordered), directly or in the layouts ``DIR/<name>/`` and torchvision's ``DIR/<Class>/raw/``. Missing
sets are downloaded into the cache with torchvision's own URLs, mirrors and canonical md5 sums. When
Fashion-MNIST can be neither found nor downloaded, the small real sample shipped in the package is used,
with a one-line notice on stderr.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from .base import DataError, ImageDataset
from .folder import load_image_folder
from .idx import parse_idx, read_idx
from .safepickle import load_data_pickle

__all__ = ["DATASETS", "ENV_VAR", "default_data_dir", "load_dataset", "load_splits", "load_sample"]

DATASETS: tuple[str, ...] = ("fashion-mnist", "mnist", "cifar10")
ENV_VAR = "MODERNCNN_DATA"
#: Seconds a socket may wait on a download: an offline machine falls through quickly.
DOWNLOAD_TIMEOUT = 10.0

_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
            "cifar_10": "cifar10"}
# torchvision's dataset class for each (its folder name, file names, mirrors and md5s), imported only to
# download or for CIFAR's layout: importing torchvision takes ~2 s (`moderncnn eval` of a LeNet run on
# local files: 6.1-7.2 s with it, 4.5-5.0 s without)
_TORCHVISION_CLASS = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST", "cifar10": "CIFAR10"}
# the class names torchvision gives (tests/test_data.py checks they still are)
IDX_CLASSES = {
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
    "mnist": ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven",
              "8 - eight", "9 - nine"],
}
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_SPLITS = ("train", "test")
_SAMPLE = "sample"
_HOW_TO_GET = ("pass --data-dir DIR or set MODERNCNN_DATA=DIR (a folder with the data set's files), "
               "or connect to the internet once")
_using_sample: set[str] = set()  # fell back once: the other split comes from the sample too, without a retry


class _DownloadFailed(Exception):
    pass


def _torchvision_dataset(name: str) -> Any:
    import torchvision.datasets

    return getattr(torchvision.datasets, _TORCHVISION_CLASS[name])


def default_data_dir() -> Path:
    """The user cache directory downloads go to: ``$XDG_CACHE_HOME/moderncnn`` (else ``~/.cache/moderncnn``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "moderncnn"


def load_dataset(name: str, split: str = "train", *, root: str | Path | None = None, download: bool = True,
                 image_size: int | None = None, allow_sample: bool = True) -> ImageDataset:
    """One split of a data set, whole, as uint8 tensors.

    name: one of :data:`DATASETS`, or a folder of images with one sub-folder per class (see
    :func:`moderncnn.data.folder.load_image_folder`; ``image_size`` applies only there, default 64).
    A named set given a ``root`` is looked for there only and, if missing and ``download``, downloaded into
    it (torchvision's ``root``); anything else is an error that names the files looked for: a folder the user
    chose never silently becomes other data. Without ``root`` it is searched in ``$MODERNCNN_DATA``, then
    :func:`default_data_dir`; if missing and ``download``, downloaded into the cache with canonical
    checksums; Fashion-MNIST only: if that fails too and ``allow_sample``, the embedded sample is returned
    (``is_sample=True``) after a notice on stderr.
    Note MNIST and Fashion-MNIST use the same file names: keep them in separate folders.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        if Path(name).expanduser().is_dir():
            return load_image_folder(name, split, image_size=image_size)
        if "/" in name or "\\" in name or name.startswith((".", "~")):  # meant as a folder
            raise DataError(f"no such folder of images: {name}; give an existing folder (one sub-folder per "
                            f"class) or one of {', '.join(DATASETS)}")
        raise DataError(f"unknown data set {name!r}: use one of {', '.join(DATASETS)} "
                        f"or the path of a folder of images (one sub-folder per class)")
    bases = _search_dirs(root)
    download_to, advice = default_data_dir(), _HOW_TO_GET
    if root is not None:
        download_to, advice = bases[0], (f"put the files in {root} or give the --data-dir that holds them (without "
                                         f"--data-dir: $MODERNCNN_DATA, the cache, then the download)")
    if key == "cifar10":
        return _load_cifar10(split, bases, download, download_to, advice)
    return _load_idx_set(key, split, bases, download, allow_sample and root is None, download_to, advice)


def load_splits(name: str, *, root: str | Path | None = None, download: bool = True, image_size: int | None = None,
                allow_sample: bool = True) -> tuple[ImageDataset, ImageDataset]:
    """The train and test splits of a data set, as :func:`load_dataset` finds them, from ONE source: the
    folder the training split is in, the download, or the embedded sample. A folder with one split and not
    the other is a one-line error, never a test set from somewhere else."""
    train = load_dataset(name, "train", root=root, download=download, image_size=image_size,
                         allow_sample=allow_sample)
    if train.is_sample:
        return train, load_sample("test")
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:  # a folder of images: its splits are one folder's by construction
        return train, load_dataset(name, "test", image_size=image_size)
    folder = Path(train.root)
    if key == "cifar10":
        missing = [f for f in _cifar_files("test") if not (folder / f).is_file()]
        if missing:
            raise DataError(f"{folder} holds CIFAR-10's training batches but not {', '.join(missing)}; extract the "
                            f"whole cifar-10-python.tar.gz there")
        return train, _read_cifar(folder, "test", str(folder))
    pair = _find_idx_pair(folder, "test")
    if pair is None:
        raise DataError(f"{folder} holds the training files of {key} but not its test files "
                        f"({' and '.join(_IDX_FILES['test'])}[.gz]); put both splits in one folder")
    return train, _read_idx_pair(key, "test", pair, str(folder))


def load_sample(split: str = "train") -> ImageDataset:
    """The Fashion-MNIST sample shipped in the package (3,000 train / 1,000 test images, class-balanced)."""
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = resources.files("moderncnn") / "data" / _SAMPLE
    tensors = [parse_idx((folder / f"{stem}.gz").read_bytes(), f"embedded sample {stem}.gz")
               for stem in _IDX_FILES[split]]
    n = len(tensors[1])
    return _make_idx_dataset("fashion-mnist", split, *tensors, f"embedded sample ({n} images)", is_sample=True)


def _search_dirs(root: str | Path | None) -> list[Path]:
    """Where a named set is looked for: the folder the user gave, alone; else $MODERNCNN_DATA and the cache."""
    for given, what in ((root, "the data directory"), (os.environ.get(ENV_VAR) or None, ENV_VAR)):
        if given is None:
            continue
        path = Path(given).expanduser()
        if not path.is_dir():
            raise DataError(f"{what} {str(given)!r} is not a directory; give an existing directory")
        if given is root:
            return [path]
        return [path, default_data_dir()]
    return [default_data_dir()]


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torchvision's urlopen calls take no timeout; the default one bounds each connect and read
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _download(mirrors: list[str], files: list[tuple[str, str]], folder: Path) -> None:
    """Fetch every (filename, md5) from the first mirror that serves them all, verifying each md5.

    Files land in ``folder`` only once verified: an interrupted download never looks like data.
    """
    from torchvision.datasets import utils as tv_utils

    staging = folder / ".download"
    made = not folder.exists()  # a failed download leaves no empty folder behind in the user's directory
    errors = []
    for mirror in mirrors:
        try:
            with _socket_timeout(DOWNLOAD_TIMEOUT):
                for filename, md5 in files:  # download_url skips a file already there with the right md5
                    tv_utils.download_url(mirror + filename, str(staging), filename, md5)
        except Exception as e:  # noqa: BLE001 - URLError, timeout, md5 mismatch, disk: all mean "next mirror"
            errors.append(f"{mirror}: {type(e).__name__}: {e}".replace("\n", " "))
            continue
        for filename, _ in files:
            os.replace(staging / filename, folder / filename)
        return
    shutil.rmtree(staging, ignore_errors=True)
    if made:
        with contextlib.suppress(OSError):
            folder.rmdir()
    raise _DownloadFailed("; ".join(errors))


# -- MNIST and Fashion-MNIST: IDX files --------------------------------------------------------------------

def _find_file(folder: Path, stem: str) -> Path | None:
    # some copies of MNIST write "train-images.idx3-ubyte"
    for name in (stem, stem.replace("-idx", ".idx", 1)):
        for suffix in ("", ".gz"):
            if (folder / (name + suffix)).is_file():
                return folder / (name + suffix)
    return None


def _find_idx_pair(folder: Path, split: str) -> tuple[Path, Path] | None:
    found = [_find_file(folder, stem) for stem in _IDX_FILES[split]]
    if all(found):
        return found[0], found[1]
    if any(found):
        have, missing = (found[0], _IDX_FILES[split][1]) if found[0] else (found[1], _IDX_FILES[split][0])
        raise DataError(f"{folder}: found {have.name} but not {missing}[.gz]; "
                        f"put the image and label files of a split together")
    return None


def _make_idx_dataset(name: str, split: str, images: torch.Tensor, labels: torch.Tensor, source: str,
                      is_sample: bool = False, files: tuple[str, str] | None = None) -> ImageDataset:
    img_file, lbl_file = files or ("images", "labels")
    classes = list(IDX_CLASSES[name])
    if images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
        raise DataError(f"{img_file}: images of shape {tuple(images.shape[1:])}, expected 28x28 {name} images; "
                        f"check the file is the right one")
    if labels.dim() != 1 or len(images) != len(labels):
        raise DataError(f"{img_file} holds {len(images):,} images but {lbl_file} {len(labels):,} labels; "
                        f"use the matching pair of files")
    if len(labels) == 0:
        raise DataError(f"{lbl_file}: no examples; replace it with the original file")
    if int(labels.max()) >= len(classes):
        raise DataError(f"{lbl_file}: label {int(labels.max())} out of range 0..{len(classes) - 1}; "
                        f"replace it with the original file")
    root = str(Path(files[0]).resolve().parent) if files else None
    return ImageDataset(images.unsqueeze(1), labels.long(), classes, name, split, source, is_sample, root=root,
                        files=tuple(str(Path(f).resolve()) for f in files or ()))


def _read_idx_pair(name: str, split: str, pair: tuple[Path, Path], source: str) -> ImageDataset:
    images, labels = read_idx(pair[0], ndim=3), read_idx(pair[1], ndim=1)
    return _make_idx_dataset(name, split, images, labels, source, files=(str(pair[0]), str(pair[1])))


def _load_idx_set(name: str, split: str, bases: list[Path], download: bool, allow_sample: bool,
                  download_to: Path, advice: str = _HOW_TO_GET) -> ImageDataset:
    looked = []
    for base in bases:
        for folder in (base / name, base / _TORCHVISION_CLASS[name] / "raw", base):
            pair = _find_idx_pair(folder, split)
            if pair:
                return _read_idx_pair(name, split, pair, str(folder))
            looked.append(str(folder))
    reason = "download=False" if not download else "the download failed earlier"
    if download and name not in _using_sample:
        folder = download_to / name
        tv_class = _torchvision_dataset(name)
        wanted = list(tv_class.resources)  # both splits: train and test must come from one source
        try:
            _download(list(tv_class.mirrors), wanted, folder)
            return _read_idx_pair(name, split, _find_idx_pair(folder, split), f"downloaded to {folder}")
        except _DownloadFailed as e:
            reason = f"download failed: {e}"
    searched = ", ".join(str(b) for b in bases)
    if name == "fashion-mnist" and allow_sample:
        if name not in _using_sample:
            _using_sample.add(name)
            print(f"moderncnn: WARNING: Fashion-MNIST not found in {searched} ({reason[:200]}); using the embedded "
                  f"SAMPLE (3,000 train / 1,000 test images): results are not comparable with the full set. "
                  f"For the full set {_HOW_TO_GET}.", file=sys.stderr, flush=True)
        return load_sample(split)
    wanted = " and ".join(f"{stem}[.gz]" for stem in _IDX_FILES[split])
    raise DataError(f"{name} {split} split not found: looked for {wanted} in {', '.join(looked)} ({reason[:200]}); "
                    f"{advice}")


# -- CIFAR-10: torchvision's python pickle batches ---------------------------------------------------------

def _cifar_files(split: str) -> list[str]:
    cifar = _torchvision_dataset("cifar10")
    return [f for f, _ in (cifar.train_list if split == "train" else cifar.test_list)]


def _find_cifar(base: Path, split: str) -> Path | None:
    cifar = _torchvision_dataset("cifar10")
    names = _cifar_files(split) + [cifar.meta["filename"]]
    for folder in (base / "cifar10" / cifar.base_folder, base / cifar.base_folder, base / "cifar10", base):
        present = [n for n in names if (folder / n).is_file()]
        if len(present) == len(names):
            return folder
        if present:
            missing = sorted(set(names) - set(present))
            raise DataError(f"{folder}: CIFAR-10 files {', '.join(missing)} missing; "
                            f"extract the whole cifar-10-python.tar.gz there")
    return None


def _unpickle(path: Path) -> dict:
    # CIFAR's python batches are pickles: read as data only (safepickle), so no file can run code
    fix = "replace it with the file from cifar-10-python.tar.gz"
    entry = load_data_pickle(path, fix)
    if not isinstance(entry, dict):
        raise DataError(f"{path}: not a CIFAR-10 python batch; {fix}")
    return entry


def _read_cifar(folder: Path, split: str, source: str) -> ImageDataset:
    cifar = _torchvision_dataset("cifar10")
    classes = _unpickle(folder / cifar.meta["filename"]).get(cifar.meta["key"])
    if not isinstance(classes, list) or not classes:
        raise DataError(f"{folder / cifar.meta['filename']}: no class names; replace it with the original file")
    images, labels, paths = [], [], []
    for filename in _cifar_files(split):
        path = folder / filename
        entry = _unpickle(path)
        data, targets = entry.get("data"), entry.get("labels")
        if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
                or data.shape[1] != 3 * 32 * 32 or not isinstance(targets, list) or len(targets) != len(data)):
            raise DataError(f"{path}: not a CIFAR-10 batch of 32x32 RGB uint8 images with one label each; "
                            f"replace it with the file from cifar-10-python.tar.gz")
        targets = torch.tensor(targets, dtype=torch.int64)
        if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= len(classes)):
            raise DataError(f"{path}: labels outside 0..{len(classes) - 1}; replace it with the original file")
        images.append(torch.from_numpy(data).reshape(-1, 3, 32, 32))
        labels.append(targets)
        paths.append(str(path.resolve()))
    return ImageDataset(torch.cat(images), torch.cat(labels), classes, "cifar10", split, source,
                        root=str(folder.resolve()), files=tuple(paths))


def _download_cifar10(folder: Path) -> Path:
    from torchvision.datasets import utils as tv_utils

    cifar = _torchvision_dataset("cifar10")
    staging = folder / ".download"
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT):
            tv_utils.download_and_extract_archive(cifar.url, str(staging), filename=cifar.filename,
                                                  md5=cifar.tgz_md5, remove_finished=True)
    except Exception as e:  # noqa: BLE001 - see _download
        raise _DownloadFailed(f"{cifar.url}: {type(e).__name__}: {e}") from None
    for filename, md5 in cifar.train_list + cifar.test_list + [[cifar.meta["filename"], cifar.meta["md5"]]]:
        if not tv_utils.check_integrity(staging / cifar.base_folder / filename, md5):
            raise _DownloadFailed(f"{filename} failed its md5 check after extraction")
    shutil.rmtree(folder / cifar.base_folder, ignore_errors=True)
    os.replace(staging / cifar.base_folder, folder / cifar.base_folder)
    return folder / cifar.base_folder


def _load_cifar10(split: str, bases: list[Path], download: bool, download_to: Path,
                  advice: str = _HOW_TO_GET) -> ImageDataset:
    for base in bases:
        folder = _find_cifar(base, split)
        if folder:
            return _read_cifar(folder, split, str(folder))
    reason = "download=False"
    if download:
        try:
            folder = _download_cifar10(download_to / "cifar10")
            return _read_cifar(folder, split, f"downloaded to {folder}")
        except _DownloadFailed as e:
            reason = f"download failed: {e}"
    wanted = ", ".join(_cifar_files(split) + ["batches.meta"])
    raise DataError(f"cifar10 {split} split not found: looked for {wanted} (cifar-10-batches-py) in "
                    f"{', '.join(map(str, bases))} ({reason[:200]}); {advice}")
