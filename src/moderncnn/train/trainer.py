"""``fit``: a run's life, from what the user asked to its last checkpoint, in the order it happens.

options -> claim the run directory -> data (with provenance) -> model (init, weights to start from, the
recipe fitted to it) -> speed plan -> loop -> one epoch at a time, each committed to the run directory ->
the result. Each step is a function of this module or of the one named in it.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from ..checkpoint import Preprocessing, load_pretrained, pretrained_parameters, resolve_run
from ..cpumem import keeping_freed_memory
from ..curves import curves_title
from ..data import ImageDataset, check_provenance, load_sample, load_splits
from ..data.base import DataError
from ..distributed import World, join, leave, local_device, main_first, on_main, world_from_env
from ..evaluate import select_device
from ..recipes import Recipe
from ..registry import create_model, get_model_builder
from ..rundir import RunDir
from ..storage import load_weights, weights_sha256
from . import report
from .budget import BudgetFit, measure, steps_that_fit
from .loop import Diverged, Loop, prepare_loop, rng_state, set_rng_state, train_epoch
from .metadata import check_resumable, now, run_metadata
from .normalization import input_normalization
from .options import TrainOptions
from .speed import plan_speed
from .step import init_weights, lr_groups
from .threads import using_threads

__all__ = ["fit", "TrainResult", "Terminated", "initial_model"]


@dataclass
class TrainResult:
    """What :func:`fit` returns: the trained model, one dict per epoch, the final figures and the files."""

    model: nn.Module
    recipe: Recipe
    history: list[dict[str, Any]]
    final: dict[str, Any]
    device: torch.device
    run_dir: Path | None = None
    paths: dict[str, Path] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return report.format_final(self.final, self.recipe)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, ``docker stop``, systemd, SLURM) received while training: stopped like Ctrl-C."""


def fit(model: nn.Module | str, recipe: str | Recipe = "book", out_dir: str | Path | None = None,
        device: str | torch.device | None = None, *, seed: int = 0, data_dir: str | Path | None = None,
        train_data: ImageDataset | None = None, test_data: ImageDataset | None = None, download: bool = True,
        amp: bool | None = None, channels_last: bool | None = None, cuda_graph: bool | None = None,
        speed: dict[str, Any] | None = None, compile: bool | str = False, resume: bool = False,
        overwrite: bool = False, quiet: bool = False, command: str | None = None,
        init_from: str | Path | None = None, on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
        plot: bool = False, time_budget: float | None = None, budget_start: float | None = None,
        threads: int | None = None, **overrides: Any) -> TrainResult:
    """Train ``model`` (a registered name or a built model) with a recipe, like the book's ``train_ch6``.

    ``recipe``: ``"book"``, ``"modern"``, ``"fast"``, ``"finetune"`` (with ``init_from``) or a
    :class:`~moderncnn.recipes.Recipe`; ``overrides`` replace any recipe value (``epochs=2, lr=0.1,
    batch_size=64, resize=96, subset=1000, test_subset=1000, dataset="mnist", model_kwargs={"ratio": 8}``).
    Data: ``train_data``/``test_data`` (ImageDatasets), else the recipe's dataset from
    ``data_dir``/$MODERNCNN_DATA/the cache (downloaded if allowed; both splits from one place); resumed, the
    run's own data (checked against its checksums). ``out_dir``: a run directory for
    checkpoints, metrics and curves (:mod:`moderncnn.rundir`; None: nothing written, no resume).

    Speed (:mod:`moderncnn.train.speed` decides each option for the device and model, and run.json records
    what and why): ``amp``, ``channels_last``, ``cuda_graph`` and ``speed={"row_stacked": False, ...}``
    override it; ``compile``: True or a ``torch.compile`` mode.

    A built model is re-initialised when the recipe's ``init`` is ``"xavier"``, as ``train_ch6`` does; pass
    ``init="default"`` to keep its weights. ``init_from``: start from trained weights (a run directory, a
    ``.safetensors`` or a ``.pth`` state dict, e.g. torchvision's) after the recipe's init: fine-tuning (see
    :func:`~moderncnn.checkpoint.load_pretrained`; ``recipe="finetune"`` trains torchvision's weights as they
    expect: ImageNet's mean/std, the loaded layers at ``pretrained_lr_scale`` times the lr); ignored when
    resuming. ``quiet`` silences the progress bar and the per-epoch lines on stderr; the book's closing lines
    are always printed.
    ``on_epoch_end(epoch_dict)`` is called after each epoch's checkpoint. ``plot=True``: in a notebook, the
    book's animator redrawn in place at each of its five points an epoch and at the epoch's end
    (:mod:`moderncnn.show.live`); elsewhere nothing. ``threads``: torch's CPU threads for this run only
    (None: torch's default), recorded in run.json.

    ``time_budget=SECONDS``: the epochs are chosen so that the run, counted from ``budget_start`` (a
    :func:`time.time`; default: this call; the command line passes its process's start), ends within it with
    its schedule complete (:mod:`moderncnn.train.budget`; run.json's ``time_budget`` says what was measured).

    A loss that becomes NaN or infinite stops the run at once (:class:`~moderncnn.train.loop.Diverged`, a
    ValueError); the last finished epoch's checkpoint is kept and run.json says ``"diverged"``.

    Started by torchrun on several processes, it trains with DistributedDataParallel (each step's batch split
    across them; rank 0 writes and prints): see :mod:`moderncnn.distributed`.
    """
    speed = {"amp": amp, "channels_last": channels_last, "cuda_graph": cuda_graph, **(speed or {})}
    on_point = None
    if plot:
        from ..show.live import live_curves

        on_point, on_epoch_end = live_curves(on_epoch_end, title=model if isinstance(model, str) else "")
    options = TrainOptions(model=model, recipe=recipe, out_dir=out_dir, device=device, seed=seed,
                           data_dir=data_dir, train_data=train_data, test_data=test_data, download=download,
                           speed={k: v for k, v in speed.items() if v is not None}, compile=compile, resume=resume,
                           overwrite=overwrite, quiet=quiet, command=command, init_from=init_from,
                           on_epoch_end=on_epoch_end, on_point=on_point, overrides=overrides,
                           time_budget=time_budget,
                           budget_start=time.time() if budget_start is None and time_budget else budget_start,
                           threads=threads)
    world = world_from_env()
    device = select_device(local_device(world, options.device))
    joined = join(world, device)
    try:
        with using_threads(options.threads):
            return _train(options, world, device)
    finally:
        leave(joined)


def _train(options: TrainOptions, world: World, device: torch.device) -> TrainResult:
    if isinstance(options.model, str):
        get_model_builder(options.model)  # an unknown name fails before any data is loaded
    recipe = options.base_recipe()
    if options.time_budget is not None and world.distributed:
        raise ValueError("--time-budget times one process's steps: drop it under torchrun (give --epochs)")
    if recipe.batch_size < world.size:
        raise ValueError(f"batch size {recipe.batch_size} is smaller than the {world.size} processes that share "
                         f"each batch; pass a larger --batch-size or start fewer processes")
    run = RunDir(options.out_dir) if options.out_dir is not None else None
    resuming = on_main(world, lambda: run.claim(options.resume, options.overwrite)) if run else False
    try:
        return _train_claimed(options, world, device, recipe, run, resuming)
    finally:
        if run is not None and world.main:
            run.release(remove_if_empty=True)


def _train_claimed(options: TrainOptions, world: World, device: torch.device, recipe: Recipe,
                   run: RunDir | None, resuming: bool) -> TrainResult:
    quiet = options.quiet or not world.main
    previous = run.read_meta() if resuming else None
    recipe = _resumed_length(options, recipe, previous)
    train, test = _load_data(options, recipe, world, previous)
    model, recipe, pretrained = _prepare_model(options, recipe, train, resuming)
    start = weights_sha256(model)  # before any step: initial_model() proves its rebuild against it
    normalize = input_normalization(recipe, train.images)
    plan = plan_speed(device, model, image_size=recipe.resize or train.images.shape[-1], processes=world.size,
                      compile=options.compile_mode, schedule=recipe.schedule, overrides=options.speed)
    meta = run_metadata(options.name, recipe, options.seed, train, test, normalize, device, options.command, plan,
                        world.size)
    meta.update(init_from=pretrained, init_sha256=start, threads=torch.get_num_threads())
    meta["speed"]["keeps_freed_memory"] = keeping_freed_memory()  # the command's choice (keeps_freed_memory)
    if previous is not None:
        check_resumable(previous, meta, run.dir)
        meta.update(start_time=previous.get("start_time"), resumed_at=meta["start_time"],
                    init_from=previous.get("init_from"), init_sha256=previous.get("init_sha256"))
        _record_extension(meta, previous)
    loaded = pretrained_parameters(model, meta["init_from"])  # resumed: those the run's start loaded
    build = functools.partial(prepare_loop, model, train=train, test=test, normalize=normalize, plan=plan,
                              device=device, world=world, seed=options.seed, pretrained=loaded)
    recipe, loop = _sized_loop(options, recipe, build, previous, device, meta, quiet)
    meta["data"].update(train_used=loop.train_loader.num_examples, test_used=loop.test_loader.num_examples)
    meta["lr_groups"] = lr_groups(loop.optimizer)
    history = _restore(run, loop, device) if resuming else []
    meta["epochs_done"] = len(history)
    writes = run if world.main else None
    if writes is not None:
        writes.begin(meta, resuming)
    report.say(report.start_line(options.name, recipe, world, device, plan.precision, len(history)), quiet)
    for line in (report.other_gpus_hint(world, device),
                 pretrained and report.describe_pretrained(pretrained, model, recipe),
                 report.finetune_hint(recipe, options.init_from)):
        if line:
            report.say(line, quiet)
    if world.distributed:  # dropout: other draws on each process
        torch.manual_seed(options.seed + 1_000_003 * world.rank + 7919 * len(history))
    _train_epochs(options, world, device, recipe, loop, writes, meta, history, quiet)
    model.preprocessing = Preprocessing.from_meta(meta)
    return _result(world, device, recipe, loop, run, meta, history, train)


def _resumed_length(options: TrainOptions, recipe: Recipe, previous: dict[str, Any] | None) -> Recipe:
    """A resumed run keeps the length it was started with, unless --epochs asks for another (which
    :func:`~moderncnn.train.metadata.check_resumable` allows only as a longer constant schedule)."""
    if previous is None or "epochs" in options.overrides or isinstance(options.recipe, Recipe):
        return recipe
    theirs = previous.get("recipe", {}).get("epochs") if isinstance(previous.get("recipe"), dict) else None
    if isinstance(theirs, int) and not isinstance(theirs, bool) and theirs >= 1:
        return recipe.replace(epochs=theirs)
    return recipe


def _record_extension(meta: dict[str, Any], previous: dict[str, Any]) -> None:
    """run.json keeps every change of a run's length: what it was started as stays on record."""
    extended = previous.get("extended") if isinstance(previous.get("extended"), list) else []
    theirs = previous.get("recipe", {}).get("epochs") if isinstance(previous.get("recipe"), dict) else None
    if isinstance(theirs, int) and theirs != meta["recipe"]["epochs"]:
        extended = [*extended, {"from_epochs": theirs, "to_epochs": meta["recipe"]["epochs"], "at": meta["resumed_at"]}]
    if extended:
        meta["extended"] = extended


def _sized_loop(options: TrainOptions, recipe: Recipe, build: Callable[..., Loop], previous: dict[str, Any] | None,
                device: torch.device, meta: dict[str, Any], quiet: bool) -> tuple[Recipe, Loop]:
    """The loop for the run's length: the recipe's epochs; a resumed budget run's steps, chosen at its start;
    or, for ``options.time_budget``, the steps measured to fit (the lr schedule spans them, the last epoch cut
    short), said in one line and recorded in run.json."""
    chosen = (previous or {}).get("time_budget")
    if isinstance(chosen, dict):
        meta["time_budget"] = chosen
        steps = chosen.get("steps")  # None in a run from before budgets chose steps: whole epochs
        whole = not isinstance(steps, int) or isinstance(steps, bool) or steps < 1
        return recipe, build(recipe=recipe, steps=None if whole else steps)
    loop = build(recipe=recipe)
    if options.time_budget is None:
        return recipe, loop
    measured = measure(loop, recipe, device, loop.test_loader.num_examples, options.time_budget)
    spent = time.time() - options.budget_start
    per_epoch = len(loop.train_loader)
    steps = steps_that_fit(options.time_budget, spent, per_epoch, measured)
    fitted = BudgetFit(options.time_budget, spent, measured.step, per_epoch, measured.test, measured.commit,
                       measured.curves, steps)
    recipe = recipe.replace(epochs=fitted.epochs)
    meta.update(recipe=recipe.as_dict(), time_budget=fitted.as_dict())
    report.say(fitted.line(device.type), quiet)
    return recipe, build(recipe=recipe, steps=steps)


def _load_data(options: TrainOptions, recipe: Recipe, world: World,
               previous: dict[str, Any] | None) -> tuple[ImageDataset, ImageDataset]:
    """Both splits, from one source; resumed, the run's own data, checked against the checksums it recorded."""
    if options.train_data is not None:
        train, test = options.train_data, options.test_data
    else:
        recorded = (previous or {}).get("data") if isinstance((previous or {}).get("data"), dict) else None
        # rank 0 first: a download or the sample's notice happens once
        with contextlib.nullcontext() if world.main else contextlib.redirect_stderr(io.StringIO()):
            train, test = main_first(world, lambda: _find_data(options, recipe, recorded))
    if previous is not None:
        recorded = previous.get("data") if isinstance(previous.get("data"), dict) else {}
        check_provenance(recorded.get("train"), train, "resume")
        check_provenance(recorded.get("test"), test, "resume")
    if train.images.shape[1:] != test.images.shape[1:]:
        raise ValueError(f"train and test images differ in shape ({tuple(train.images.shape[1:])} vs "
                         f"{tuple(test.images.shape[1:])})")
    tested = min(recipe.test_subset or len(test), len(test))
    if tested < world.size:  # a process with no test image would have nothing to count
        raise ValueError(f"{tested} test images cannot be shared by {world.size} processes; use a larger "
                         f"--test-subset or start fewer processes")
    return train, test


def _find_data(options: TrainOptions, recipe: Recipe,
               recorded: dict[str, Any] | None) -> tuple[ImageDataset, ImageDataset]:
    if recorded is None:
        return load_splits(recipe.dataset, root=options.data_dir, download=options.download)
    if recorded.get("is_sample") and options.data_dir is None:  # a run on the sample goes on on the sample
        return load_sample("train"), load_sample("test")
    root = options.data_dir
    if root is None:
        root = (recorded.get("train") or {}).get("root") if isinstance(recorded.get("train"), dict) else None
        if root is not None and not os.path.isdir(root):
            raise DataError(f"the run's data was in {root}, which is gone; pass --data-dir with the same data")
    # a run on the full set never falls back to the sample
    return load_splits(recipe.dataset, root=root, download=options.download, allow_sample=False)


def _prepare_model(options: TrainOptions, recipe: Recipe, train: ImageDataset,
                   resuming: bool) -> tuple[nn.Module, Recipe, dict[str, Any] | None]:
    """The model, initialised as the recipe says (and started from ``init_from``), and the recipe's resize
    fitted to the sizes the model accepts."""
    model = options.model
    kwargs = {"num_classes": len(train.classes), "in_channels": train.images.shape[1], **recipe.model_kwargs}
    model = _initialised(model, kwargs, options.seed, recipe.init)
    pretrained = None
    if options.init_from is not None and not resuming:
        pretrained = load_pretrained(model, options.init_from)
    native = train.images.shape[-1]
    recipe = _fit_resize(recipe, model, native, explicit="resize" in options.overrides)
    if hasattr(model, "check_input"):  # a size the model cannot take fails now, before the run directory is touched
        size = recipe.resize or native
        try:
            model.check_input(torch.empty(1, train.images.shape[1], size, size, device="meta"))
        except ValueError as e:
            raise ValueError(f"{e} with --resize {model.default_image_size}") from None
    return model, recipe, pretrained


def _initialised(model: nn.Module | str, kwargs: dict[str, Any], seed: int, init: str) -> nn.Module:
    """The model as the run starts it: built (when named) and initialised from ``seed``, as the recipe says."""
    torch.manual_seed(seed)
    if isinstance(model, str):
        model = create_model(model, **kwargs)
    if init == "xavier":
        init_weights(model)
    return model


def initial_model(run_dir: str | Path) -> nn.Module:
    """The weights a run started from, before its first step: rebuilt from its run.json (model, seed, init,
    ``init_from``) and proven equal by the checksum the run recorded, so that
    ``show.plot_filters(model, start=initial_model(run))`` draws what training changed. The global random
    state is left as it was. A ValueError says when the start cannot be rebuilt (a model built by hand, a
    ``init_from`` file gone, another version of PyTorch, a run from before the checksum)."""
    run = resolve_run(run_dir)
    meta = run.read_meta()
    recorded, init_from = meta.get("init_sha256"), meta.get("init_from")
    source = init_from.get("source") if isinstance(init_from, dict) else None
    if recorded is None:
        raise ValueError(f"{run.run_json} records no checksum of the run's starting weights (an older run): "
                         f"train it again to compare it with its start")
    try:
        with torch.random.fork_rng(devices=[]):
            model = _initialised(meta["model"], dict(meta["model_kwargs"]), meta["seed"], meta["recipe"]["init"])
        if source is not None:
            load_pretrained(model, source)
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as e:
        raise ValueError(f"cannot rebuild the starting weights of {run.dir} ({e})") from None
    if weights_sha256(model) != recorded:
        versions = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}
        made_by = versions.get("torch")
        why = (f"PyTorch {made_by} made them and this is {torch.__version__}" if made_by != torch.__version__ else
               "the model was built by hand, or run.json was changed")
        raise ValueError(f"the starting weights of {run.dir} cannot be rebuilt here ({why}); the trained weights "
                         f"are drawn as they are without --learned")
    return model.eval()


def _fit_resize(recipe: Recipe, model: nn.Module, native: int, explicit: bool) -> Recipe:
    """A resize the user did not set, moved to the model's default size when the model cannot take it."""
    if explicit:
        return recipe
    lo = getattr(model, "min_input_size", 1)
    hi = getattr(model, "max_input_size", None)
    size = recipe.resize or native
    if lo <= size <= (hi or size):
        return recipe
    fitted = getattr(model, "default_image_size", size)
    if not lo <= fitted <= (hi or fitted):
        fitted = min(max(size, lo), hi or size)
    note = f"; resized to {fitted} because {recipe.model or 'the model'} accepts {lo}..{hi or 'any'} pixels"
    return recipe.replace(resize=None if fitted == native else fitted, based_on=recipe.based_on + note)


def _restore(run: RunDir, loop: Loop, device: torch.device) -> list[dict[str, Any]]:
    """The last finished epoch's weights, optimizer, scheduler and RNG; returns the history so far."""
    ckpt, state = run.load()
    load_weights(ckpt.weights, loop.model)
    loop.optimizer.load_state_dict(state["optimizer"])
    if loop.scheduler is not None and state.get("scheduler"):
        loop.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], device)
    return list(state["history"])


def _train_epochs(options: TrainOptions, world: World, device: torch.device, recipe: Recipe, loop: Loop,
                  writes: RunDir | None, meta: dict[str, Any], history: list[dict[str, Any]], quiet: bool) -> None:
    """Epoch after epoch, each committed; a stop of any kind leaves the last finished epoch and says so."""
    start = len(history)
    budgeted = isinstance(meta.get("time_budget"), dict)  # tested once, at the end (budget.py says why)
    try:
        with _terminate_as_interrupt(), loop.plan.applied(loop.model):
            for epoch in range(start, recipe.epochs):
                last = epoch + 1 == recipe.epochs
                record = train_epoch(loop, world, device, epoch, recipe.epochs,
                                     warmup=loop.plan.compile is not None and epoch == start, quiet=quiet,
                                     on_point=options.on_point, test=last or not budgeted)
                if getattr(loop.graphed, "failed", None):  # the capture failed (GraphedStep warned): eager since
                    meta["speed"].update(cuda_graph=False, cuda_graph_failed=loop.graphed.failed)
                history.append(record)
                meta["epochs_done"] = epoch + 1
                if writes is not None:
                    state = {"optimizer": loop.optimizer.state_dict(), "rng": rng_state(device),
                             "scheduler": loop.scheduler.state_dict() if loop.scheduler is not None else None}
                    writes.commit(epoch + 1, loop.model, state, history, meta, curves_title(meta))
                report.say(report.epoch_line(record, recipe.epochs), quiet)
                if options.on_epoch_end is not None:
                    options.on_epoch_end(record)
    except Diverged as e:
        _stop(writes, meta, "diverged")
        kept = _kept(writes, history, "is kept")
        raise Diverged(e.epoch, e.step, e.value, f"lr {recipe.lr} is too high for {options.name}: train again "
                       f"with a lower --lr, e.g. {recipe.lr / 10:g}" + (f" ({kept})" if kept else ""),
                       limit=e.limit) from None
    except KeyboardInterrupt:
        _stop(writes, meta, "interrupted")
        if writes is not None:
            report.say(f"interrupted: {_kept(writes, history, 'is intact')}; to continue, run the same command "
                       f"with --resume (or fit(..., resume=True))", quiet=False)
        raise
    except Exception:
        with contextlib.suppress(OSError):  # a full disk must not hide what failed first
            _stop(writes, meta, "failed")
        raise


def _kept(writes: RunDir | None, history: list[dict[str, Any]], state: str) -> str:
    """What a stopped run leaves: its last checkpoint, where there is one."""
    if writes is None:
        return ""
    return f"the checkpoint of epoch {len(history)} in {writes.dir} {state}" if history else "no epoch finished"


def _stop(writes: RunDir | None, meta: dict[str, Any], status: str) -> None:
    if writes is not None:
        meta.update(status=status, end_time=now())
        writes.write_meta(meta)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the run as Ctrl-C does (status "interrupted", the last checkpoint kept), where nobody
    else handles it; its default would end the process without a word."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM") \
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise Terminated("SIGTERM")

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _result(world: World, device: torch.device, recipe: Recipe, loop: Loop, run: RunDir | None,
            meta: dict[str, Any], history: list[dict[str, Any]], train: ImageDataset) -> TrainResult:
    loop.model.eval()
    final = report.summarise(history, report.where(world, device)) if history else {}
    paths = {}
    if run is not None:
        meta.update(status="finished", final=final, end_time=now())
        if world.main:
            run.write_meta(meta)
        paths = {"run_json": run.run_json, "weights": run.weights, "metrics": run.metrics, "curves": run.curves}
    if history and world.main:
        print(report.format_final(final, recipe))
        for note in report.closing_notes(train.is_sample, len(train), meta.get("init_from"), recipe, history,
                                         classes=len(train.classes)):
            print(note)
    return TrainResult(model=loop.model, recipe=recipe, history=history, final=final, device=device,
                       run_dir=run.dir if run else None, paths=paths, metadata=meta)
