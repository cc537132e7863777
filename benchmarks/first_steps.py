"""The loss of each of a model's first training steps, at several learning rates: does a recipe blow up?

    python benchmarks/first_steps.py MODEL --data-dir DIR [--lrs 0.05,0.01] [--steps 20] [--batch-size 32] \
        [--resize 224] [--recipe book] [--device cpu]

A cheap check of a borrowed recipe before a long run (recipes.OWN_VALUES was set from it): the book
recipe's init and plain SGD (or the modern one's step, without its schedule), bf16 autocast as the trainer
does on the CPU and GPU, the first ``steps * batch`` training images in the data set's order (not shuffled),
one line of losses per lr. The size is the recipe's (fitted to the model, as the trainer does) unless
``--resize`` says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from moderncnn import create_model
from moderncnn.data.datasets import load_dataset
from moderncnn.data.loader import DeviceLoader
from moderncnn.recipes import get_recipe
from moderncnn.train import (_fit_resize, build_loss, build_optimizer, default_speed, init_weights, make_train_step,
                             select_device)


def first_losses(model_name: str, lr: float, args: argparse.Namespace, data) -> list[float]:
    recipe = get_recipe(model_name, args.recipe, lr=lr, batch_size=args.batch_size)
    if args.resize:
        recipe = recipe.replace(resize=args.resize)
    device = select_device(args.device)
    torch.manual_seed(args.seed)
    model = create_model(model_name, num_classes=len(data.classes), in_channels=data.images.shape[1],
                         **recipe.model_kwargs)
    if recipe.init == "xavier":
        init_weights(model)
    # a borrowed recipe's resize moved to one the model takes, as the trainer does
    recipe = _fit_resize(recipe, model, data.images.shape[-1], explicit=bool(args.resize))
    model.to(device)
    step = make_train_step(model, build_optimizer(model, recipe, device), build_loss(recipe),
                           amp_dtype=default_speed(device, model)["amp_dtype"])
    loader = DeviceLoader(data, args.batch_size, device=device, resize=recipe.resize)
    losses = []
    for (x, y), _ in zip(loader, range(args.steps)):
        loss_sum, _ = step(x, y)
        losses.append(loss_sum.item() / y.shape[0])
    return losses


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--lrs", default="0.05,0.01")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--resize", type=int)
    p.add_argument("--recipe", default="book", choices=("book", "modern"))
    p.add_argument("--device")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    data = load_dataset(get_recipe(args.model).dataset, "train", root=args.data_dir, download=False)
    n = args.steps * args.batch_size
    data = dataclasses.replace(data, images=data.images[:n], labels=data.labels[:n])
    for lr in (float(v) for v in args.lrs.split(",")):
        losses = first_losses(args.model, lr, args, data)
        print(f"{args.model} lr {lr}: " + " ".join(f"{v:.2f}" for v in losses), flush=True)


if __name__ == "__main__":
    import _cli

    _cli.run(main)
