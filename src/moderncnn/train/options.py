"""Everything a user may ask of a training run, in one object, checked in one place."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from ..recipes import Recipe, get_recipe
from .speed import SPEED_OPTIONS, compile_mode_of
from .threads import check_threads

__all__ = ["TrainOptions"]


@dataclass(frozen=True)
class TrainOptions:
    """What :func:`~moderncnn.train.fit` was asked (see its docstring for each value).

    ``speed`` holds the speed overrides (keys of :data:`~moderncnn.train.speed.SPEED_OPTIONS`; None: the
    policy's default); ``overrides`` the recipe values replaced. Built, it has been checked: a bad value is a
    one-line ValueError before any data is read or any file written.
    """

    model: nn.Module | str
    recipe: str | Recipe = "book"
    out_dir: str | Path | None = None
    device: Any = None
    seed: int = 0
    data_dir: str | Path | None = None
    train_data: Any = None
    test_data: Any = None
    download: bool = True
    speed: dict[str, Any] = field(default_factory=dict)
    compile: bool | str | None = False
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    command: str | None = None
    init_from: str | Path | None = None
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None
    on_point: Callable[[dict[str, Any]], None] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    time_budget: float | None = None
    budget_start: float | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        compile_mode_of(self.compile)
        check_threads(self.threads)
        unknown = sorted(set(self.speed) - set(SPEED_OPTIONS))
        if unknown:
            raise ValueError(f"unknown speed option(s) {', '.join(unknown)}; use {', '.join(SPEED_OPTIONS)}")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
        if (self.train_data is None) != (self.test_data is None):
            raise ValueError("give both train_data and test_data, or neither (then the recipe's dataset is loaded)")
        self._check_budget()
        named = self.recipe if isinstance(self.recipe, str) else self.recipe.name
        if named == "finetune" and self.init_from is None and not self.resume:
            raise ValueError("--recipe finetune trains weights it starts from: pass --init-from WEIGHTS (torchvision's "
                             "ImageNet weights: docs/training.md, 'Fine-tuning'), or use --recipe modern from scratch")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            raise ValueError(f"the seed must be a whole number from 0 to 2**63 - 1, got {self.seed!r}")

    def _check_budget(self) -> None:
        if self.time_budget is None:
            return
        if isinstance(self.time_budget, bool) or not isinstance(self.time_budget, (int, float)) \
                or not math.isfinite(self.time_budget) or self.time_budget <= 0:
            raise ValueError(f"the time budget must be a number of seconds > 0, got {self.time_budget!r}")
        if "epochs" in self.overrides:
            raise ValueError("--epochs and --time-budget both set the number of epochs: drop --epochs to let the "
                             "budget choose it, or drop --time-budget")
        if self.compile_mode is not None:
            raise ValueError("--time-budget cannot time a compiled model's steps before its compilation: drop "
                             "--compile or --time-budget")

    @property
    def compile_mode(self) -> str | None:
        return compile_mode_of(self.compile)

    @property
    def name(self) -> str:
        """The model's registered name (or its class's, for a model built by hand)."""
        if isinstance(self.model, str):
            return self.model
        return getattr(self.model, "model_name", type(self.model).__name__.lower())

    def base_recipe(self) -> Recipe:
        """The recipe with the user's overrides; its resize is fitted to the model once the model is built."""
        if isinstance(self.recipe, Recipe):
            return self.recipe.replace(**self.overrides)
        return get_recipe(self.name, self.recipe, **self.overrides)
