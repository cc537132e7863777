"""What a run says: its first line, a line per epoch, the book's closing lines and notes."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch

from ..distributed import World
from ..recipes import BOOK_FIGURES, BOOK_RECIPES, FINETUNE_MODELS, Recipe

__all__ = ["format_final", "summarise", "start_line", "epoch_line", "where"]


def format_final(final: dict[str, Any], recipe: Recipe | None = None) -> str:
    """The book's two closing lines, then the book's figures for the experiment beside ours."""
    lines = [f"loss {final['loss']:.3f}, train acc {final['train_acc']:.3f}, test acc {final['test_acc']:.3f}",
             f"{final['examples_per_sec'] or math.nan:.1f} examples/sec on {final['device']}"]
    if recipe is None or recipe.book not in BOOK_FIGURES:
        return "\n".join(lines)
    rows = [(f"ours ({final['device']})", final["loss"], final["train_acc"], final["test_acc"],
             final["examples_per_sec"] or math.nan)]
    rows += [(f"book {build} (V100)", f.loss, f.train_acc, f.test_acc, f.examples_per_sec)
             for build, f in BOOK_FIGURES[recipe.book].items()]
    lines += ["", f"{'':22} {'loss':>6} {'train acc':>9} {'test acc':>8} {'examples/sec':>12}"]
    lines += [f"{n:22} {lo:6.3f} {tr:9.3f} {te:8.3f} {ex:12.1f}" for n, lo, tr, te, ex in rows]
    book = BOOK_RECIPES[recipe.book]
    diff = recipe.differences(book, ignore=("based_on", "book", "model_kwargs"))
    diff.update({f"model {k}": (recipe.model_kwargs.get(k), book.model_kwargs.get(k))
                 for k in sorted(set(recipe.model_kwargs) | set(book.model_kwargs))
                 if recipe.model_kwargs.get(k) != book.model_kwargs.get(k)})
    if diff:
        lines.append("(our recipe differs from the book's: "
                     + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in diff.items()) + ")")
    return "\n".join(lines)


def summarise(history: list[dict[str, Any]], device: str) -> dict[str, Any]:
    """The run's closing figures: the last epoch's, and examples/sec over the timed epochs."""
    last = history[-1]
    timed = [h for h in history if not h.get("warmup")] or history  # torch.compile's first epoch compiles
    seconds = sum(h["train_seconds"] for h in timed)
    examples = sum(h["examples"] for h in timed)
    return {"loss": last["loss"], "train_acc": last["train_acc"], "test_acc": last["test_acc"],
            "examples_per_sec": examples / seconds if seconds > 0 else None, "device": device,
            "epochs": last["epoch"], "train_seconds": seconds}


def where(world: World, device: torch.device) -> str:
    return f"{world.size} x {device.type}" if world.distributed else str(device)


def start_line(name: str, recipe: Recipe, world: World, device: torch.device, precision: str, start: int) -> str:
    epochs = f"{recipe.epochs} epoch{'s' * (recipe.epochs != 1)}"
    return (f"training {name} ({recipe.name} recipe: lr {recipe.lr}, batch {recipe.batch_size}, "
            f"resize {recipe.resize or '-'}, {epochs}) on {where(world, device)}, {precision}"
            + (f", resuming after epoch {start}" if start else "")
            + (f"\nrecipe: {recipe.based_on}" if recipe.book is None else ""))


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    test = "not tested" if record.get("test_acc") is None else f"test acc {record['test_acc']:.3f}"
    return (f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.3f}, train acc {record['train_acc']:.3f}, "
            f"{test}, {record['examples_per_sec']:.1f} examples/sec, {record['wall_seconds']:.1f} s")


def other_gpus_hint(world: World, device: torch.device) -> str | None:
    """One process on one of several GPUs: say how to use them all."""
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if world.distributed or gpus < 2:
        return None
    return (f"({gpus} GPUs are visible and this run uses {device}: torchrun --nproc-per-node {gpus} -m moderncnn "
            f"train ... splits every batch across all of them)")


def describe_pretrained(report: dict[str, Any], model: torch.nn.Module, recipe: Recipe | None = None) -> str:
    notes = [f"{report['loaded']} tensors"]
    if recipe is not None and recipe.pretrained_lr_scale != 1:
        notes[0] += (f", trained at lr {recipe.lr * recipe.pretrained_lr_scale:g} (x{recipe.pretrained_lr_scale:g} "
                     f"of the new layers' {recipe.lr:g})")
    if report["kept"]:
        notes.append(f"classifier for {getattr(model, 'num_classes', '?')} classes initialised afresh "
                     f"({', '.join(report['kept'])})")
    if report["adapted"]:
        notes.append(f"{', '.join(report['adapted'])} adapted to {getattr(model, 'in_channels', '?')} input "
                     f"channel(s)")
    return f"starting from {report['source']}: " + "; ".join(notes)


def finetune_hint(recipe: Recipe, init_from: Any) -> str | None:
    """A line for a weights file (torchvision's ``.pth``) trained with the default book recipe, where the model
    has a finetune recipe; the run keeps the recipe it was given."""
    if init_from is None or recipe.name != "book" or recipe.model not in FINETUNE_MODELS \
            or Path(init_from).suffix not in (".pth", ".pt"):
        return None
    return (f"(the book recipe trains {Path(init_from).name} with plain SGD on images not normalised as ImageNet "
            f"weights expect; --recipe finetune (recipe=\"finetune\") adds ImageNet's mean/std, momentum and a "
            f"tenth of the lr for the loaded layers)")


#: How far the test accuracy of a run's last epochs may fall back before the closing lines say it swings.
SWING = 0.03
#: A final test accuracy below this many times chance (1 / classes) is "at chance": nothing was learned.
AT_CHANCE = 1.5


def closing_notes(is_sample: bool, train_size: int, init_from: Any, recipe: Recipe,
                  history: list[dict[str, Any]] = (), classes: int = 0) -> list[str]:
    notes = []
    last = [h["test_acc"] for h in history[-3:] if h.get("test_acc") is not None]
    fall = max((a - b for i, a in enumerate(last) for b in last[i + 1:]), default=0.0)
    if recipe.book in BOOK_FIGURES and len(last) == 3 and fall > SWING:
        # At the book's lr (1.0 for the BN LeNets) one epoch's test accuracy is a noisy draw, in the book's own
        # code too (docs/benchmarks.md): a reader comparing one figure with the book's should know it. A run
        # that only climbs (0.262, 0.604, 0.721) is still learning, not swinging.
        notes.append(f"(test acc over the last 3 epochs: {', '.join(f'{a:.3f}' for a in last)}: at this lr it "
                     "swings from epoch to epoch, in the book's own code too; compare means over seeds, as "
                     "benchmarks/parity.py does)")
    chance = at_chance(history, classes, is_sample, train_size, recipe)
    if chance:
        notes.append(chance)
    if is_sample:
        notes.append(f"(trained on the embedded sample of {train_size:,} images, not the full set: not comparable "
                     "with the book's figures; for the full set pass --data-dir DIR (fit(data_dir=...)) or "
                     "connect to the internet once)")
    if init_from and recipe.book in BOOK_FIGURES:
        notes.append(f"(started from the weights in {init_from['source']}, not from scratch as the book's run)")
    return notes


def at_chance(history: list[dict[str, Any]], classes: int, is_sample: bool, train_size: int,
              recipe: Recipe) -> str | None:
    """A note, with the likely cause, when the run ends no better than guessing; else None."""
    if not history or classes < 2 or history[-1].get("test_acc") is None:
        return None
    acc = history[-1]["test_acc"]
    if acc >= AT_CHANCE / classes:
        return None
    steps = sum(math.ceil(h.get("examples", 0) / recipe.batch_size) for h in history)
    uniform = math.log(classes)
    stuck = history[-1].get("loss") is not None and history[-1]["loss"] > 0.95 * uniform
    cause = (f"its loss stayed at a uniform guess's ({uniform:.2f})" if stuck else "it learned nothing that holds "
             "on the test set")
    advice = (f"the {train_size:,}-image sample gave it {steps:,} steps in all, too few for {recipe.model or 'it'} "
              f"with the {recipe.name} recipe: train on the full set (--data-dir), or try --recipe modern"
              if is_sample else f"lr {recipe.lr} may not suit {recipe.model or 'this model'}: try --recipe modern or "
              f"another --lr, or more epochs")
    return f"(test acc {acc:.3f} is chance for {classes} classes: {cause}; likely {advice})"


def say(line: str, quiet: bool) -> None:
    if not quiet:
        print(line, file=sys.stderr)
