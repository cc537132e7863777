"""Training recipes as data: the book's nine chapter-6/7 experiments and a modern variant of each.

``book`` reproduces d2l's ``train_ch6``: Xavier-uniform init of every Conv2d and
Linear weight, plain SGD (no momentum, weight decay or schedule),
cross-entropy, images in [0, 1] with no normalisation, 10 epochs on
Fashion-MNIST with the lr / batch / resize printed in the book.

``modern`` keeps the book's batch, resize, epochs and init (and the model
itself, batch norm or not) and changes only the optimisation: SGD with
Nesterov momentum 0.9, weight decay 5e-4 on conv/linear weights, a one-cycle
schedule (per step) peaking at :data:`MODERN_LR`, label smoothing 0.1, random
crop (padding 4) + horizontal flip (not for the 28-pixel LeNets:
:data:`MODERN_NO_AUGMENT`), and per-channel normalisation by the training set's
mean/std. Momentum 0.9 makes each step ~10x the lr, so the peak
lr is the book's divided by 2 to 10 (see :data:`MODERN_LR`).

A model with no book experiment borrows the book recipe of its family (the
longest book name it starts with, else its family's book form); failing
that, :data:`GENERIC`. Its resize is clamped to the sizes the model accepts;
``Recipe.based_on`` says which recipe was borrowed and why.

``fast`` is chosen for time to accuracy (:data:`FAST_RECIPES`); ``finetune`` starts from torchvision's ImageNet
weights (``--init-from``; :data:`FINETUNE_MODELS`, :func:`finetune`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Recipe", "BookFigures", "BOOK_RECIPES", "BOOK_FIGURES", "BOOK_BUILDS", "RECIPES", "GENERIC",
           "MODERN_LR", "MODERN_NO_AUGMENT", "OWN_VALUES", "FAST_RECIPES", "FINETUNE_MODELS", "NORMALIZE_STATS",
           "get_recipe", "as_recorded_then"]

RECIPES = ("book", "modern", "fast", "finetune")
#: What ``normalize`` divides by: "data", the training set's per-channel mean/std; "imagenet", the mean/std
#: torchvision's ImageNet weights were trained with (:mod:`moderncnn.train.normalization`).
NORMALIZE_STATS = ("data", "imagenet")
BOOK_BUILDS = ("zh 2.0.0", "en 0.17.5")


@dataclass(frozen=True)
class BookFigures:
    """What one build of the book printed at the end of an experiment."""

    loss: float
    train_acc: float
    test_acc: float
    examples_per_sec: float


@dataclass(frozen=True)
class Recipe:
    """Every value that decides how a model is trained (speed options such as bf16 are not here)."""

    model: str
    name: str = "book"
    lr: float = 0.1
    batch_size: int = 256
    epochs: int = 10
    resize: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = "fashion-mnist"
    subset: int | None = None
    #: Test on a fixed class-balanced sample of this many test images (None: all): a 224-pixel test pass
    #: over all 10,000 takes 0.5-1.5 minutes on a laptop CPU, longer than a small training subset.
    test_subset: int | None = None
    init: str = "xavier"  # "xavier" (d2l's init_weights) or "default" (whatever the builder does)
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"  # "constant", "onecycle" or "cosine"
    label_smoothing: float = 0.0
    augment: bool = False
    #: The zero padding of augment's random crop (0: a horizontal flip only).
    crop_padding: int = 4
    #: Test on each image and its mirror image, summing the logits (train, test pass and ``moderncnn eval``).
    test_flip: bool = False
    normalize: bool = False
    #: Whose mean/std ``normalize`` uses: one of :data:`NORMALIZE_STATS`.
    normalize_stats: str = "data"
    #: The lr of the layers loaded by ``--init-from``, as a fraction of ``lr`` (which the new classifier gets).
    pretrained_lr_scale: float = 1.0
    #: The key of :data:`BOOK_FIGURES` this recipe reproduces, if it is one of the book's experiments.
    book: str | None = None
    based_on: str = ""

    def __post_init__(self) -> None:
        checks = [
            (self.name in RECIPES, f"recipe name must be one of {', '.join(RECIPES)}"),
            (math.isfinite(self.lr) and self.lr > 0, f"lr must be a finite number > 0, got {self.lr}"),
            (math.isfinite(self.momentum) and self.momentum >= 0, f"momentum must be >= 0, got {self.momentum}"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.resize is None or self.resize >= 1, "resize must be >= 1 (or None: the native size)"),
            (self.subset is None or self.subset >= 1, "subset must be >= 1 (or None: every image)"),
            (self.test_subset is None or self.test_subset >= 1, "test_subset must be >= 1 (or None: every image)"),
            (self.init in ("xavier", "default"), "init must be 'xavier' or 'default'"),
            (self.schedule in ("constant", "onecycle", "cosine"), "schedule must be constant, onecycle or cosine"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (isinstance(self.crop_padding, int) and 0 <= self.crop_padding <= 16, "crop_padding must be 0 to 16"),
            (isinstance(self.test_flip, bool), "test_flip must be True or False"),
            (self.normalize_stats in NORMALIZE_STATS, f"normalize_stats must be {' or '.join(NORMALIZE_STATS)}"),
            # above 1 the trained layers would move faster than the random classifier: no fine-tuning does that
            (math.isfinite(self.pretrained_lr_scale) and 0 <= self.pretrained_lr_scale <= 1,
             f"pretrained_lr_scale must be in [0, 1], got {self.pretrained_lr_scale}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"bad recipe for {self.model or 'a model'}: {message}")

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with some values changed; unknown names are a one-line error listing the valid ones."""
        names = {f.name for f in dataclasses.fields(self)}
        bad = sorted(set(changes) - names)
        if bad:
            raise ValueError(f"unknown recipe value(s) {', '.join(bad)}; valid: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def differences(self, other: "Recipe", ignore: tuple[str, ...] = ("based_on",)) -> dict[str, tuple]:
        """``{name: (self's value, other's value)}`` for every value that differs."""
        a, b = self.as_dict(), other.as_dict()
        return {k: (a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]}


def as_recorded_then(recipe: dict[str, Any]) -> dict[str, Any]:
    """A run.json's recipe with the default of every value added since it was written (``crop_padding``,
    ``test_flip``, ``normalize_stats``, ``pretrained_lr_scale``): the run trained with those defaults, so it
    compares equal to a recipe that has them."""
    defaults = {f.name: f.default for f in dataclasses.fields(Recipe) if f.default is not dataclasses.MISSING}
    return {**defaults, **recipe}


def _book(model: str, lr: float, batch_size: int, resize: int | None, title: str, **model_kwargs: Any) -> Recipe:
    return Recipe(model=model, lr=lr, batch_size=batch_size, resize=resize, model_kwargs=model_kwargs,
                  book=model, based_on=f"the book's {title} experiment")


BOOK_RECIPES: dict[str, Recipe] = {r.model: r for r in (
    _book("lenet", 0.9, 256, None, "LeNet (ch. 6)"),
    _book("alexnet", 0.01, 128, 224, "AlexNet"),
    _book("vgg11_book", 0.05, 128, 224, "VGG-11 (channels / 4)", ratio=4),
    _book("nin", 0.1, 128, 224, "NiN"),
    _book("googlenet", 0.1, 128, 96, "GoogLeNet"),
    _book("lenet_bn_scratch", 1.0, 256, None, "LeNet + BN (from scratch)"),
    _book("lenet_bn", 1.0, 256, None, "LeNet + BN (concise)"),
    _book("resnet18_book", 0.05, 256, 96, "ResNet-18"),
    _book("densenet_book", 0.1, 256, 96, "DenseNet"),
)}

_F = BookFigures
#: ``BOOK_FIGURES[model][build]``: the book's printed figures (/work/shared/BOOK.md), V100, 10 epochs.
BOOK_FIGURES: dict[str, dict[str, BookFigures]] = {
    "lenet": {"zh 2.0.0": _F(0.469, 0.823, 0.779, 55297), "en 0.17.5": _F(0.455, 0.831, 0.789, 72323)},
    "alexnet": {"zh 2.0.0": _F(0.331, 0.878, 0.883, 3942), "en 0.17.5": _F(0.327, 0.880, 0.882, 4171)},
    "vgg11_book": {"zh 2.0.0": _F(0.178, 0.935, 0.920, 2464), "en 0.17.5": _F(0.185, 0.931, 0.922, 2551)},
    "nin": {"zh 2.0.0": _F(0.563, 0.786, 0.790, 3088), "en 0.17.5": _F(0.591, 0.795, 0.785, 3201)},
    "googlenet": {"zh 2.0.0": _F(0.262, 0.900, 0.886, 3266), "en 0.17.5": _F(0.232, 0.913, 0.883, 3568)},
    "lenet_bn_scratch": {"zh 2.0.0": _F(0.273, 0.899, 0.807, 32294), "en 0.17.5": _F(0.269, 0.900, 0.838, 34609)},
    "lenet_bn": {"zh 2.0.0": _F(0.267, 0.902, 0.708, 50597), "en 0.17.5": _F(0.278, 0.897, 0.836, 63564)},
    "resnet18_book": {"zh 2.0.0": _F(0.012, 0.997, 0.893, 5033), "en 0.17.5": _F(0.013, 0.997, 0.918, 4672)},
    "densenet_book": {"zh 2.0.0": _F(0.140, 0.948, 0.885, 5626), "en 0.17.5": _F(0.139, 0.950, 0.821, 5563)},
}

#: Peak lr of the modern recipe per book experiment, picked from one 10-epoch run each on an H100 (bf16),
#: all with crop + flip: test acc, modern (book recipe, same seed): lenet 0.45: 0.782 (0.785); lenet_bn 0.5:
#: 0.873 (0.779); alexnet 0.005: 0.893 (0.878); vgg11_book 0.025: 0.920 (0.920; 0.01 gave 0.901); resnet18_book 0.025: 0.928
#: (0.924; 0.01 gave 0.919); densenet_book 0.05: 0.929 (0.906); nin 0.01: 0.703 (0.621, 0.882, 0.785 over
#: three seeds; 0.02 gave 0.540 and 0.05 died: NiN without batch norm is fragile, nin_bn is the modern choice).
#: Since then, without crop + flip (MODERN_NO_AUGMENT), CPU, seed 0: lenet 0.2 / 0.45 / 0.9 / 1.8: 0.827 /
#: 0.850 / 0.863 / 0.868 (0.9 on seed 1: 0.865, 0.45: 0.855), so 0.9; lenet_bn 0.25 / 0.5 / 1.0: 0.904 / 0.909
#: / 0.911 and lenet_bn_scratch 0.892 / 0.894 / 0.894, so 0.5 stays.
#: lenet_bn_scratch follows lenet_bn; googlenet (no batch norm) is unmeasured and takes the book's lr / 10,
#: the same peak step as the book. A borrowed recipe takes its source's value, a generic one its lr / 10.
MODERN_LR: dict[str, float] = {"lenet": 0.9, "lenet_bn": 0.5, "lenet_bn_scratch": 0.5, "alexnet": 0.005,
                               "vgg11_book": 0.025, "nin": 0.01, "googlenet": 0.01, "resnet18_book": 0.025,
                               "densenet_book": 0.05}

#: Book experiments whose modern recipe trains without crop + flip. The 28-pixel LeNets underfit in 10 epochs,
#: and augmentation cost them 3.5-7 points of test accuracy (CPU, seeds 0 and 1, modern recipe without / with
#: it): lenet 0.850 / 0.782 and 0.855 / 0.782, lenet_bn 0.909 / 0.875 and 0.908 / 0.873, lenet_bn_scratch
#: 0.894 / 0.851 and 0.896 / 0.850 (docs/notes.md; per-seed figures in git history, commit 6c52d17). lenet5 borrows lenet's recipe, so this too. The
#: larger models are measured only with it.
MODERN_NO_AUGMENT = frozenset({"lenet", "lenet_bn", "lenet_bn_scratch"})

#: Values that replace a borrowed recipe's (book and modern alike), per model, where it does not train it.
#: lenet5's RBF outputs are logits of -(squared distance), up to ~300: at LeNet's lr 0.9 (book) or 0.45
#: (modern) it stays at 10% accuracy (test 0.100 / 0.234 after 3 epochs), as it does at 0.03 with its own
#: init. With the paper's init (not Xavier), 10 epochs, seed 0, CPU: book lr 0.01 test 0.803 (0.005: 0.774),
#: modern lr 0.01 test 0.871 (0.005: 0.860).
#: The batch-normed VGGs borrow vgg11_book's lr 0.05, which a quarter-width net without batch norm trains at;
#: with batch norm, features of unit scale feed a 25088 -> 4096 Xavier layer and the first steps blow up
#: (vgg11_bn at 224 px, batch 32: loss 3.6 -> 203 by step 4; vgg16_bn at 32 px: 4.3 -> 241). 100 steps of
#: batch 128 at 32 px, vgg11_bn, CPU, seed 0, test acc: book lr 0.05 0.101 (diverged), 0.01 0.787; modern
#: peak 0.025 0.674, 0.01 0.681. Unmeasured over 10 epochs at 224 px.
_VGG_BN = {"lr": 0.01}
OWN_VALUES: dict[str, dict[str, Any]] = {"lenet5": {"lr": 0.01, "init": "default"},
                                         **{f"vgg{depth}_bn": _VGG_BN for depth in (11, 13, 16, 19)}}

#: For a model with no book experiment: used when neither its name nor its family matches a book recipe.
GENERIC = Recipe(model="", lr=0.05, batch_size=128, based_on="the generic recipe (no book recipe for its family)")

# A family's book form, for paper forms whose name does not start with a book name (vgg16, resnet50, ...).
_FAMILY_BOOK_FORM = {"lenet": "lenet", "alexnet": "alexnet", "vgg": "vgg11_book", "nin": "nin",
                     "googlenet": "googlenet", "resnet": "resnet18_book", "densenet": "densenet_book"}


#: ``fast``: chosen for time to accuracy on Fashion-MNIST (``--time-budget`` then fits its steps), each value
#: kept for a measured gain in whole runs (docs/notes.md, "Time to accuracy"). fastnet: the modern recipe's
#: optimiser (Nesterov SGD, one-cycle, label smoothing 0.1, weight decay 5e-4 on weights), PyTorch's default
#: init (Xavier: 0.917 vs 0.920 in 5 epochs), a horizontal flip without the crop (the 2-pixel crop cost 1.2
#: points in 5 epochs: 0.907) and the flip at test time too (+0.25 points in 5 epochs, +0.5 in 30; both flips
#: +1.1 in 30: 0.935 vs 0.924); those on one core, seed 0. Batch 128 at lr 0.1 (the lr halved with the
#: batch): on 2 cores a step of 128 costs 0.085 ms an image against 0.1 for 256 or 64, so a 30 s budget trains
#: 4.1-4.7 epochs instead of 3.1-3.6: 0.919 against 0.913 (3 and 5 seeds; batch 64 at lr 0.05: 0.916).
#: lenet_bn: its modern recipe (nothing beat it in 4-epoch runs: flip + test flip 0.891, modern 0.894) at batch
#: 128 and lr 0.5: in a 15 s budget 0.895 against 0.881 at 256 (batch 64 at lr 0.25: 0.887).
_FAST = dict(name="fast", momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="onecycle", label_smoothing=0.1,
             normalize=True, book=None)
FAST_RECIPES: dict[str, Recipe] = {r.model: r for r in (
    Recipe(model="lenet_bn", lr=MODERN_LR["lenet_bn"] / 2, batch_size=128, epochs=4, **_FAST,
           based_on="the fast recipe of lenet_bn: its modern recipe at batch 128 (time to accuracy)"),
    Recipe(model="fastnet", lr=0.1, batch_size=128, epochs=5, init="default", augment=True, crop_padding=0,
           test_flip=True, **_FAST, based_on="the fast recipe of fastnet (time to accuracy)"),
)}


#: The registered models whose ImageNet-1k weights torchvision publishes (its weight enums know each file's
#: address and checksum): ``--recipe finetune`` is for them.
FINETUNE_MODELS = frozenset({*(f"resnet{depth}" for depth in (18, 34, 50, 101, 152)),
                             *(f"vgg{depth}{bn}" for depth in (11, 13, 16, 19) for bn in ("", "_bn")),
                             *(f"densenet{depth}" for depth in (121, 169, 201))})

#: ``finetune``: the modern recipe (Nesterov SGD, one-cycle, label smoothing 0.1, crop + flip, the family's
#: modern lr for the new classifier), changed where the network starts from torchvision's ImageNet weights.
#: One-cycle's warm-up (from lr / 25 over the first 30% of steps) is kept for fine-tuning too: the random
#: classifier's large first gradients reach the trained layers at a small lr. Unmeasured at full size; a
#: small measured example is in docs/training.md ("Fine-tuning").
_FINETUNE = dict(
    name="finetune",
    # the inputs the weights were trained on: torchvision's weights.transforms() normalise by ImageNet's mean/std
    normalize=True, normalize_stats="imagenet",
    # trained layers at a tenth of the new classifier's lr, adjusted rather than overwritten: DETR's backbone lr
    # (1e-5 vs 1e-4), ULMFiT's discriminative rates; the classifier starts from nothing and needs the full lr
    pretrained_lr_scale=0.1,
    # torchvision's reference scripts' default (the modern recipe's 5e-4 pulls harder towards zero, away from
    # the weights a run starts from)
    weight_decay=1e-4,
    # half the book's 10: trained features need fewer passes (torchvision's fine-tuning tutorial: 15 epochs
    # of a few hundred images)
    epochs=5,
    # the side the weights were trained at (their transforms(): resize 256, centre crop 224); on a CPU a
    # smaller --resize (64 to 128) trades accuracy for a 3-12x shorter run
    resize=224,
    # the new classifier as torchvision's builder initialises it; every other tensor is overwritten anyway
    init="default",
)


def _source(model: str) -> str | None:
    """The book experiment whose recipe ``model`` uses: its own, its longest prefix, or its family's."""
    if model in BOOK_RECIPES:
        return model
    starts = [k for k in BOOK_RECIPES if model.startswith(k)]
    if starts:
        return max(starts, key=len)
    return next((v for k, v in _FAMILY_BOOK_FORM.items() if model.startswith(k)), None)


def modernize(recipe: Recipe, source: str | None = None) -> Recipe:
    """The ``modern`` recipe derived from a ``book`` one (see the module docstring)."""
    return recipe.replace(
        name="modern", lr=MODERN_LR.get(source or "", recipe.lr / 10), momentum=0.9, nesterov=True,
        weight_decay=5e-4, schedule="onecycle", label_smoothing=0.1, augment=source not in MODERN_NO_AUGMENT,
        normalize=True, book=None,
        based_on=f"modern variant of {recipe.based_on}")


def get_recipe(model: str, recipe: str = "book", **overrides: Any) -> Recipe:
    """The named recipe (one of :data:`RECIPES`) for a registered model name, with any value overridden.

    ``get_recipe("vgg11_book", "book", epochs=2, model_kwargs={"ratio": 8})``. ``fast`` exists for the models of
    :data:`FAST_RECIPES`, ``finetune`` for those of :data:`FINETUNE_MODELS`; elsewhere they are one-line errors.
    The resize of a borrowed recipe is not yet fitted to the model; the trainer does that.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    if recipe == "finetune" and model not in FINETUNE_MODELS:
        raise ValueError(f"there is no finetune recipe for {model}: it is for the models torchvision has ImageNet "
                         f"weights for (resnet18..152, vgg11..19 and their _bn forms, densenet121/169/201); to start "
                         f"{model} from one of your runs, use --init-from RUN_DIR with --recipe modern")
    if recipe == "fast":
        if model not in FAST_RECIPES:
            raise ValueError(f"there is no fast recipe for {model}: it exists for {', '.join(FAST_RECIPES)}; "
                             f"use --recipe modern (with fewer --epochs) for {model}")
        return _with_overrides(FAST_RECIPES[model], overrides)
    source = _source(model)
    if source is None:
        base = GENERIC.replace(model=model)
    elif source == model:
        base = BOOK_RECIPES[model]
    else:  # the model_kwargs of another model (vgg11_book's ratio) do not carry over
        base = BOOK_RECIPES[source].replace(model=model, model_kwargs={}, book=None,
                                            based_on=f"the book recipe of {source} (no book experiment for {model})")
    if recipe in ("modern", "finetune"):
        base = modernize(base, source)
    own = OWN_VALUES.get(model)
    if own:
        shown = ", ".join(f"{k} {v}" for k, v in own.items())
        base = base.replace(**own, based_on=f"{base.based_on}, with {shown} (measured: recipes.OWN_VALUES)")
    if recipe == "finetune":
        base = base.replace(**_FINETUNE, based_on=f"fine-tuning of torchvision's ImageNet weights: the "
                                                  f"{base.based_on} with recipes._FINETUNE's changes")
    return _with_overrides(base, overrides)


def _with_overrides(base: Recipe, overrides: dict[str, Any]) -> Recipe:
    kwargs = overrides.pop("model_kwargs", None)
    if kwargs:
        overrides["model_kwargs"] = {**base.model_kwargs, **kwargs}
    return base.replace(**overrides)
