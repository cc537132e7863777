"""Make the Fashion-MNIST sample shipped in src/moderncnn/data/sample/ (deterministic: reruns give the same bytes).

The sample is the first 300 training and the first 100 test images of each class, in file order, of a full
copy of Fashion-MNIST (the project used the shuffled copy in ../shared/data/fashion-mnist), written as IDX
.gz files with the standard names (gzip level 9, no file name, mtime 0). Prints each file's MD5, its number
of examples and its size.

    python benchmarks/make_fashion_sample.py [--source DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

from moderncnn.data import load_dataset, write_idx

REPO = Path(__file__).resolve().parents[1]
PER_CLASS = {"train": 300, "test": 100}
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def first_per_class(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """Indices (in file order) of the first ``per_class`` examples of every class."""
    keep = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(int(labels.max()) + 1)])
    return keep.sort().values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "fashion-mnist",
                        metavar="DIR", help="a full copy of Fashion-MNIST's .gz files (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=REPO / "src" / "moderncnn" / "data" / "sample", metavar="DIR",
                        help="an existing folder to write the sample's four files to, replacing them (default: "
                             "%(default)s)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    for split, per_class in PER_CLASS.items():
        data = load_dataset("fashion-mnist", split, root=args.source, download=False, allow_sample=False)
        keep = first_per_class(data.labels, per_class)
        images, labels = data.images[keep, 0], data.labels[keep].to(torch.uint8)
        for name, array in zip(FILES[split], (images, labels)):
            write_idx(args.out / name, array)
            digest = hashlib.md5((args.out / name).read_bytes()).hexdigest()
            print(f"{digest}  {name}  ({array.shape[0]} examples, {(args.out / name).stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
