"""The book's pipeline, as d2l runs it: the baseline moderncnn is measured against.

d2l's ``load_data_fashion_mnist`` + ``train_ch6``: torchvision ``FashionMNIST``
with ``Resize`` + ``ToTensor`` per image, ``DataLoader(num_workers=4)``, an fp32
step, and a ``float()`` host sync on every batch (d2l's ``Accumulator`` and
``accuracy``). Nothing here is used by the library; it exists to be timed.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def torchvision_root(gz_dir: Path, work_dir: Path) -> Path:
    """Lay the .gz files out as torchvision's FashionMNIST expects them (raw/, uncompressed)."""
    raw = work_dir / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if not (raw / name).exists():
            with gzip.open(gz_dir / f"{name}.gz", "rb") as src, open(raw / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return work_dir


def book_loader(root: Path, batch_size: int, resize: int | None, num_workers: int = 4,
                persistent: bool = True, train: bool = True, subset: int | None = None) -> DataLoader:
    """d2l's ``load_data_fashion_mnist`` loader (``train=False``: its test loader, not shuffled); ``subset``:
    the first that many images only.

    ``persistent`` keeps the worker processes between epochs, which d2l does not: the throughput benchmark
    times batches, not epochs, and this leaves worker start-up out of the book's figure.
    """
    trans = [transforms.ToTensor()]
    if resize:
        trans.insert(0, transforms.Resize(resize))
    data = torchvision.datasets.FashionMNIST(root=str(root), train=train, transform=transforms.Compose(trans),
                                             download=False)
    if subset is not None:
        data = torch.utils.data.Subset(data, range(min(subset, len(data))))
    return DataLoader(data, batch_size, shuffle=train, num_workers=num_workers,
                      persistent_workers=persistent and num_workers > 0)


def book_init(model: nn.Module) -> None:
    def init_weights(m):
        if type(m) in (nn.Linear, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)

    model.apply(init_weights)


def book_step(model: nn.Module, lr: float, device: torch.device):
    """train_ch6's step: ``step(X, y) -> (loss * batch, correct)`` as Python floats, as d2l's ``Accumulator``
    takes them (a host sync per batch)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()

    def step(X: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        optimizer.zero_grad()
        X, y = X.to(device), y.to(device)
        y_hat = model(X)
        l = loss(y_hat, y)
        l.backward()
        optimizer.step()
        with torch.no_grad():
            return float(l * X.shape[0]), float((y_hat.argmax(axis=1).type(y.dtype) == y).type(y.dtype).sum())

    return step


def book_accuracy(model: nn.Module, data_iter: DataLoader, device: torch.device) -> float:
    """d2l's ``evaluate_accuracy_gpu``."""
    model.eval()
    correct = total = 0.0
    with torch.no_grad():
        for X, y in data_iter:
            X, y = X.to(device), y.to(device)
            correct += float((model(X).argmax(axis=1).type(y.dtype) == y).type(y.dtype).sum())
            total += y.numel()
    return correct / total


def train_ch6(model: nn.Module, train_iter: DataLoader, test_iter: DataLoader, num_epochs: int, lr: float,
              device: torch.device) -> dict[str, float]:
    """d2l's whole ``train_ch6``, without its animator (which redraws a matplotlib figure five times an epoch:
    leaving it out makes the book faster, not slower).

    Returns the book's closing figures (loss, train acc, test acc of the last epoch; examples/sec by the book's
    timer, around the step only), every epoch's test accuracy, ``examples`` (an epoch's) and ``seconds``, the whole run's wall time, test
    passes and worker start-ups included.
    """
    start = time.perf_counter()
    book_init(model)
    model.to(device)
    step = book_step(model, lr, device)
    step_time = 0.0
    test_accs = []
    for _ in range(num_epochs):
        model.train()
        loss_sum = correct = examples = 0.0
        for X, y in train_iter:
            t0 = time.perf_counter()
            l, c = step(X, y)
            step_time += time.perf_counter() - t0
            loss_sum, correct, examples = loss_sum + l, correct + c, examples + X.shape[0]
        test_accs.append(book_accuracy(model, test_iter, device))
    return {"loss": loss_sum / examples, "train_acc": correct / examples, "test_acc": test_accs[-1],
            "test_acc_history": test_accs, "examples_per_sec": examples * num_epochs / step_time,
            "examples": examples, "seconds": time.perf_counter() - start}


def endless(loader):
    """The loader's batches, epoch after epoch: the timed runs may be longer than one epoch."""
    while True:
        yield from loader


def time_book_steps(model: nn.Module, train_iter: DataLoader, lr: float, device: torch.device,
                    num_batches: int, warmup: int = 2) -> tuple[float, float]:
    """Run train_ch6's inner loop for ``warmup + num_batches`` batches.

    Returns (end-to-end examples/sec, the book's examples/sec): the first counts
    everything between batches, data loading included; the second is what
    train_ch6 prints (its timer runs only around the step).
    """
    model.to(device).train()
    step = book_step(model, lr, device)
    step_time = examples = 0.0
    it = endless(train_iter)
    for i in range(warmup + num_batches):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        X, y = next(it)
        t0 = time.perf_counter()
        step(X, y)
        if i >= warmup:
            step_time += time.perf_counter() - t0
            examples += X.shape[0]
    wall = time.perf_counter() - start
    return examples / wall, examples / step_time


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(
        "One whole run of d2l's train_ch6 on Fashion-MNIST, as the book runs it: MODEL's book recipe, torchvision's "
        "FashionMNIST with Resize + ToTensor, its DataLoader, Xavier init, plain SGD, fp32. Prints the run's figures "
        "as one JSON line: the last epoch's loss, train and test accuracy, every epoch's test accuracy, "
        "examples/sec by the book's timer and the run's seconds. whole_runs.py and parity.py start it, one "
        "process a run."))
    p.add_argument("model", metavar="MODEL", help="a model with a book recipe, e.g. lenet")
    p.add_argument("--root", required=True, metavar="DIR",
                   help="a folder laid out as torchvision's FashionMNIST expects (FashionMNIST/raw/, uncompressed)")
    p.add_argument("--epochs", type=int, default=10, metavar="N", help="epochs to train (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="the torch seed: init, shuffle, dropout (default %(default)s)")
    p.add_argument("--workers", type=int, default=4, metavar="N",
                   help="the DataLoader's workers (d2l: 4; default %(default)s)")
    p.add_argument("--subset", type=int, default=None, metavar="N", help="the first N training images only")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> None:
    """One whole book run in this process, as d2l runs it; prints its figures as one JSON line (for
    ``whole_runs.py``, which starts one process a run)."""
    import json

    import moderncnn
    from moderncnn.recipes import get_recipe

    p = build_parser()
    args = p.parse_args(argv)
    recipe = get_recipe(args.model, "book")
    torch.manual_seed(args.seed)
    root = Path(args.root)
    train_iter = book_loader(root, recipe.batch_size, recipe.resize, args.workers, persistent=False,
                             subset=args.subset)
    test_iter = book_loader(root, recipe.batch_size, recipe.resize, args.workers, persistent=False, train=False)
    model = moderncnn.create_model(args.model, **recipe.model_kwargs)
    print(json.dumps(train_ch6(model, train_iter, test_iter, args.epochs, recipe.lr, torch.device(args.device))))


if __name__ == "__main__":
    main()
