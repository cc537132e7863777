"""The ``moderncnn`` command: argument parsing only; every verb calls the library."""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import os
import shlex
import sys
from pathlib import Path

from .recipes import NORMALIZE_STATS, RECIPES


class CLIError(Exception):
    """An error the command line reports in one line (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors in one line (the usage itself is one ``--help`` away): fourteen lines
    of usage above a mistyped value bury the one that says what was wrong."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: The verbs, in the order ``--help`` lists them, with their one-line help. ``moderncnn --help`` is built from
#: this alone, without importing torch (1.6 s of a 2 s start); a verb's own options are built only for it.
VERBS = {
    "list": "list the registered models",
    "summary": "layer-by-layer table: output shapes, parameters, multiply-adds",
    "train": "train a model with the book's recipe (or a modern one); checkpoints every epoch",
    "eval": "test accuracy, per-class accuracy and a confusion matrix of a trained run",
    "predict": "top-k classes of image files",
    "compare": "architectures side by side: parameters and MACs, and for trained runs their results",
    "export": "export a trained run or a model to ONNX or .pt2, checked against PyTorch before it is written",
    "show": "pictures of what a trained run learned: filters, activations, saliency, mistakes",
    "reproduce": "the book's chapter-7 experiments in one sweep of runs, and a report beside the book's figures",
    "recipes": "a model's recipes side by side: their values, what differs, and their measured results",
}


def parse_input_size(text: str) -> tuple[int, int, int]:
    """``"1x224x224"`` -> ``(1, 224, 224)``: channels x height x width, all three required."""
    from .cliargs import MAX_IMAGE_SIDE

    try:
        dims = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"--input must be CxHxW, e.g. 1x224x224 (got {text!r})")
    if dims[0] > 64 or max(dims[1:]) > MAX_IMAGE_SIDE:
        raise argparse.ArgumentTypeError(f"--input must have at most 64 channels and sides of at most "
                                         f"{MAX_IMAGE_SIDE} pixels (got {text!r})")
    return dims  # type: ignore[return-value]


def parse_model_arg(text: str) -> tuple[str, object]:
    """``"ratio=8"`` -> ``("ratio", 8)``: the value is a Python literal (8, 0.5, False, "x") or else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"--model-arg must be NAME=VALUE, e.g. ratio=8 (got {text!r})")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def positive_seconds(text: str) -> float:
    """``"60"`` -> ``60.0``: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"--time-budget must be a number of seconds > 0, e.g. 60 (got {text!r})")
    return value


def parse_speed(text: str) -> tuple[str, bool]:
    """``"patch_pool=off"`` -> ``("patch_pool", False)``: a speed option of the policy, on or off."""
    from .train.speed import SPEED_OPTIONS

    key, sep, value = text.partition("=")
    states = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False}
    if not sep or key not in SPEED_OPTIONS or value.lower() not in states:
        raise argparse.ArgumentTypeError(f"--speed must be OPTION=on|off with OPTION one of "
                                         f"{', '.join(SPEED_OPTIONS)} (got {text!r})")
    return key, states[value.lower()]


def cmd_list(args: argparse.Namespace) -> None:
    from . import list_models

    names = list_models(args.pattern)
    if not names:
        raise CLIError(f"no model matches {args.pattern!r}; 'moderncnn list' shows all")
    print("\n".join(names))


def cmd_summary(args: argparse.Namespace) -> None:
    import torch

    from . import create_model, shape_walk, summary

    kw = dict(args.model_arg or [])
    if args.num_classes is not None:
        kw["num_classes"] = args.num_classes
    if args.input is not None:
        kw["in_channels"] = args.input[0]
    try:  # on the meta device: shapes and counts without memory, so any --input is answered at once
        with torch.device("meta"):
            model = create_model(args.model, **kw)
        size = args.input or model.default_input_size
        lines = shape_walk(model, size) if args.walk else [summary(model, size, depth=args.depth, device="meta")]
    except (RuntimeError, NotImplementedError):  # a model whose code needs real tensors
        model = create_model(args.model, **kw)
        size = args.input or model.default_input_size
        lines = shape_walk(model, size) if args.walk else [summary(model, size, depth=args.depth)]
    for line in lines:
        print(line)


def cmd_train(args: argparse.Namespace) -> None:
    from .cliargs import check_model_args
    from .cpumem import keep_freed_memory
    from .evaluate import select_device
    from .train import fit
    from .train.speed import keeps_freed_memory
    from .trainconfig import configured

    args = configured(args)
    overrides = {k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "resize", "subset", "test_subset",
                                               "dataset") if getattr(args, k) is not None}
    overrides.update({k: getattr(args, k) for k in RECIPE_VALUES if getattr(args, k) is not None})
    model_kwargs = dict(args.model_arg or [])
    check_model_args(model_kwargs)
    if args.ratio is not None:
        model_kwargs["ratio"] = args.ratio
    if model_kwargs:
        overrides["model_kwargs"] = model_kwargs
    if args.resize is not None or args.batch_size is not None:
        _check_training_fits(args, model_kwargs)
    speed = dict(args.speed or [])
    if args.malloc and keeps_freed_memory(select_device(args.device))[0]:
        keep_freed_memory()  # process-wide and for good: only here, where the command owns the process
    if args.dry_run:
        from .train.estimate import dry_run

        print(dry_run(args.model, args.recipe, args.device, seed=args.seed, data_dir=args.data_dir,
                      amp=False if args.no_amp else None, channels_last=args.channels_last, cuda_graph=args.cuda_graph,
                      speed=speed, compile=args.compile_mode or args.compile, init_from=args.init_from,
                      threads=args.threads, **overrides))
        return
    out = args.out or Path("runs") / f"{args.model}-{args.recipe}"
    board = None
    if args.tensorboard and _main_process():
        from .show.board import TensorBoard

        try:  # before training: a missing extra costs no run
            board = TensorBoard(Path(out) / "tensorboard", fresh=args.overwrite)
        except ImportError as e:
            raise CLIError(str(e)) from None
    budget = {}
    if args.time_budget is not None:
        from .train.budget import process_start

        budget = {"time_budget": args.time_budget, "budget_start": process_start()}  # the whole command counts
    result = fit(args.model, args.recipe, out, args.device, seed=args.seed, data_dir=args.data_dir,
                 download=not args.no_download, amp=False if args.no_amp else None, channels_last=args.channels_last,
                 cuda_graph=args.cuda_graph, speed=speed, compile=args.compile_mode or args.compile,
                 resume=args.resume, overwrite=args.overwrite, quiet=args.quiet, command=args.command_line,
                 init_from=args.init_from, on_epoch_end=board, threads=args.threads, **budget, **overrides)
    if board is not None:
        _board_pictures(board, result, args, out)
    if not args.quiet and _main_process():
        print(f"run directory: {out}", file=sys.stderr)


def _board_pictures(board, result, args: argparse.Namespace, out: str | Path) -> None:
    """The finished run's pictures for TensorBoard, what training changed in the filters included."""
    from .train import initial_model

    start = None
    try:
        start = initial_model(out)
    except ValueError as e:  # the run is saved: one picture fewer is no reason to fail the command
        print(f"tensorboard: no picture of what training changed ({e})", file=sys.stderr)
    board.add_pictures(result.model, _eval_data(result.metadata, args), result.history, args.model, start=start)
    board.close()
    print(f"tensorboard: tensorboard --logdir {board.log_dir}", file=sys.stderr)


def _check_training_fits(args: argparse.Namespace, model_kwargs: dict) -> None:
    """A --resize or --batch-size whose activations cannot fit the device: refused before any data is read."""
    from .cliargs import check_fits
    from .evaluate import select_device
    from .recipes import get_recipe

    recipe = get_recipe(args.model, args.recipe)
    size = args.resize or recipe.resize
    if size is not None:  # the native size of a built-in data set is small: nothing to check
        check_fits(args.model, model_kwargs, size, args.batch_size or recipe.batch_size, select_device(args.device))


def cmd_eval(args: argparse.Namespace) -> None:
    import torch

    from .checkpoint import load_checkpoint
    from .evaluate import evaluate, format_per_class, plot_confusion, select_device
    from .train.speed import eval_speed

    device = select_device(args.device)
    model, meta = load_checkpoint(args.checkpoint, device)
    test = _eval_data(meta, args)
    prep = model.preprocessing
    if args.dataset is None and list(test.classes) != list(prep.classes):
        raise CLIError(f"the test set's classes differ from the run's ({len(test.classes)} vs "
                       f"{len(prep.classes)}); pass the --dataset it was trained on")
    plan = eval_speed(device, model, meta.get("speed"), meta.get("device"), amp=False if args.no_amp else None)
    if plan.channels_last:
        model = model.to(memory_format=torch.channels_last)
    batch_size = args.batch_size or (meta.get("recipe") or {}).get("batch_size") or 256
    result = evaluate(model, test, device, batch_size=batch_size, subset=args.subset, amp_dtype=plan.amp,
                      channels_last=plan.channels_last)
    precision = str(plan.amp).replace("torch.", "") if plan.amp else "fp32"
    print(f"{meta['model']} (epoch {meta.get('epoch')}) on {test.name} test ({result['num_examples']} images, "
          f"{test.source}, {precision}): test acc {result['accuracy']:.3f}")
    print(format_per_class(result), flush=True)
    out = Path(args.out) if args.out else Path(meta["run_dir"])
    try:
        out.mkdir(parents=True, exist_ok=True)
        png = plot_confusion(result, out / "confusion.png", normalize=args.normalize,
                             title=f"{meta['model']} on {test.name} test: accuracy {result['accuracy']:.3f}")
    except OSError as e:
        if args.out:  # asked for: its absence is a failure
            raise CLIError(f"cannot write confusion.png in {out} ({e.strerror or e})") from None
        # the accuracy, printed above, is the job: a read-only run directory (a shared or archived run) is no
        # reason to fail it
        print(f"moderncnn eval: warning: confusion.png not written in {out} ({e.strerror or e}); pass --out DIR "
              f"to write it elsewhere", file=sys.stderr)
        return
    print(f"confusion matrix: {png}")


def _eval_data(meta: dict, args: argparse.Namespace):
    """The test split to score on: the run's own (its recorded folder unless --data-dir, checked against its
    checksum; the sample only for a run on the sample), or the --dataset named."""
    from .data import DATASETS, check_provenance, load_dataset, load_sample

    native = (meta.get("input") or {}).get("native_size")
    if args.dataset:
        return load_dataset(args.dataset, "test", root=args.data_dir, download=not args.no_download,
                            image_size=native)
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    name = str(data.get("name", ""))
    if name not in DATASETS and not name.startswith("folder:"):
        raise CLIError(f"the run was trained on data {name!r} that cannot be loaded by name; pass --dataset")
    recorded = data.get("test") if isinstance(data.get("test"), dict) else None
    if data.get("is_sample"):
        test = load_sample("test")
    else:
        root = args.data_dir or (recorded or {}).get("root")
        if args.data_dir is None and root is not None and not Path(root).is_dir():
            raise CLIError(f"the run's test data was in {root}, which is gone; pass --data-dir with the same data")
        test = load_dataset(name.removeprefix("folder:"), "test", root=root, download=not args.no_download,
                            image_size=native, allow_sample=False)
    check_provenance(recorded, test, "evaluate")
    return test


def cmd_compare(args: argparse.Namespace) -> None:
    from .compare import compare, format_comparison, plot_runs

    rows = compare(args.items, input_size=args.input, num_classes=args.num_classes, sort=args.sort,
                   model_kwargs=dict(args.model_arg or []) or None)
    if args.plot and not any("run" in r for r in rows):
        raise CLIError("--plot draws trained runs' curves: give run directories (written by 'moderncnn train')")
    print(format_comparison(rows, markdown=args.markdown))
    if args.plot:
        print(f"curves: {plot_runs(rows, args.plot)}")


def cmd_predict(args: argparse.Namespace) -> None:
    from .checkpoint import load_checkpoint
    from .evaluate import image_files, predict, select_device

    if args.topk < 1:
        raise CLIError(f"--topk must be at least 1, got {args.topk}")
    model, _ = load_checkpoint(args.checkpoint, select_device(args.device))
    files = image_files(args.images)
    failed: list[Path] = []

    def unreadable(path: Path, error: Exception) -> None:  # one bad file of a folder must not cost the rest
        failed.append(path)
        print(f"moderncnn predict: skipped: {error}", file=sys.stderr)

    for path, top in zip(files, predict(model, files, topk=args.topk, on_error=unreadable)):
        if top is not None:
            print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in top))
    if failed:
        raise CLIError(f"{len(failed)} of {len(files)} image files could not be read (each named above); the "
                       f"others were predicted")


def cmd_show(args: argparse.Namespace) -> None:
    from . import show
    from .checkpoint import load_checkpoint
    from .figures import save_figure
    from .evaluate import select_device
    from .train.speed import eval_speed

    device = select_device(args.device)
    model, meta = load_checkpoint(args.checkpoint, device)
    stem = Path(getattr(args, "image", "") or "").stem
    if args.picture == "filters":
        start = None
        if args.learned:
            from .train import initial_model

            start = initial_model(meta["run_dir"])
        fig = show.plot_filters(model, args.layer, start=start)
        name = f"filters-{args.layer or 'first'}{'-learned' if args.learned else ''}.png"
    elif args.picture == "activations":
        fig, name = show.plot_activations(model, args.image), f"activations-{stem}.png"
    elif args.picture == "saliency":
        method = args.method or show.default_method(model)
        fig = show.plot_saliency(model, args.image, method, args.target, args.layer)
        name = f"saliency-{method}-{stem}.png"
    else:
        test = _eval_data(meta, args)
        if args.dataset is None and list(test.classes) != list(model.preprocessing.classes):
            raise CLIError("the test set's classes differ from the run's; pass the --dataset it was trained on")
        plan = eval_speed(device, model, meta.get("speed"), meta.get("device"))  # as eval counts them
        fig = show.plot_mistakes(model, test, args.n, subset=args.subset, amp_dtype=plan.amp)
        name = "mistakes.png"
    out = Path(args.out) if args.out else Path(meta["run_dir"]) / name
    try:
        print(save_figure(fig, out))
    except OSError as e:
        raise CLIError(f"cannot write {out} ({e.strerror or e}); pass --out PNG to write it elsewhere") from None


def _add_show(sub) -> None:
    from .cliargs import whole_number
    from .show.mistakes import MAX_PICTURED

    p = sub.add_parser(
        "show",
        help=VERBS["show"],
        description="Draw what a trained run learned as a PNG (in the run directory unless --out) and print "
                    "its path. In Python: moderncnn.show.plot_filters(model) etc. return the figures.",
    )
    pictures = p.add_subparsers(dest="picture", metavar="PICTURE", required=True)
    q = pictures.add_parser("filters", help="a convolution's kernels as a grid of tiles",
                            description="A convolution's kernels as tiles (default: the first convolution).")
    q.add_argument("checkpoint", metavar="RUN")
    q.add_argument("--layer", metavar="NAME", help="the convolution to draw (an unknown name lists them)")
    q.add_argument("--learned", action="store_true",
                   help="draw what training changed: the kernels minus the run's starting weights (rebuilt from "
                        "its seed), which a short run hides under the noise the kernels started as")
    views = [q]
    q = pictures.add_parser("activations", help="the feature maps of each stage for one image",
                            description="The image as the model sees it, then each stage's most active maps.")
    q.add_argument("checkpoint", metavar="RUN")
    q.add_argument("image", metavar="IMAGE")
    views.append(q)
    q = pictures.add_parser("saliency", help="where the model looks: Grad-CAM or input gradients",
                            description="Grad-CAM over the last convolutional stage (or input gradients), over "
                                        "the image, for the predicted class or --class.")
    q.add_argument("checkpoint", metavar="RUN")
    q.add_argument("image", metavar="IMAGE")
    q.add_argument("--method", choices=("gradcam", "hirescam", "gradients"),
                   help="gradcam: the default where the head averages the maps (ResNet, GoogLeNet, DenseNet, NiN); "
                        "hirescam: Grad-CAM element by element, the default for heads that flatten the maps "
                        "(LeNet, AlexNet, VGG), where Grad-CAM can be empty; gradients: |d score/d pixel|")
    q.add_argument("--class", dest="target", metavar="NAME|INDEX",
                   help="explain this class: a name in any case, or the start of one (shirt, ankle), or its index "
                        "(0 = the first class); default: the predicted class")
    q.add_argument("--layer", metavar="NAME", help="Grad-CAM over this module (default: the last stage)")
    views.append(q)
    q = pictures.add_parser("mistakes", help="the test images it gets most confidently wrong",
                            description="The test images the run gets most confidently wrong, with true and "
                                        "predicted labels and the probability.")
    q.add_argument("checkpoint", metavar="RUN")
    q.add_argument("--n", type=whole_number(1, MAX_PICTURED), default=36, help="how many images (default 36)")
    q.add_argument("--subset", type=int, metavar="N", help="look at N test images only (class-balanced)")
    q.add_argument("--dataset", help="the test set of this data set instead of the run's")
    _add_data_location(q)
    views.append(q)
    for q in views:
        q.add_argument("--out", metavar="PNG", help="where to write the picture (default: in the run directory)")
        _add_device(q)
        q.set_defaults(func=cmd_show, verb_parser=q)


def cmd_export(args: argparse.Namespace) -> None:
    from .export import MissingExtraError, export

    try:
        result = export(args.source, args.format, args.out, batch=args.batch, opset=args.opset,
                        input_size=args.input, model_kwargs=dict(args.model_arg or []) or None,
                        tolerance=args.tolerance, exporter=args.exporter)
    except MissingExtraError as e:
        raise CLIError(str(e)) from None
    print(result)


def parse_batch(text: str) -> str | int:
    """``"dynamic"`` or a positive batch size."""
    if text == "dynamic":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--batch must be 'dynamic' or a positive integer (got {text!r})")
    return int(text)


def _add_export(sub) -> None:
    from .export import DEFAULT_TOLERANCE, FORMATS

    p = sub.add_parser(
        "export",
        help=VERBS["export"],
        description="Export a run directory (or a model by name, untrained) to ONNX (torch.onnx.export: the "
                    "dynamo exporter, else the TorchScript one) or .pt2 (torch.export). The exported program is "
                    "run on real images at two batch sizes (ONNX in onnxruntime, .pt2 reloaded) and compared "
                    "with PyTorch; beyond the tolerance nothing is written. The file carries the input size, "
                    "normalisation, class names, model and recipe. ONNX needs: pip install \"moderncnn[export]\".",
    )
    p.add_argument("source", metavar="RUN_DIR_OR_MODEL")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="onnx (default) or pt2")
    p.add_argument("--out", metavar="FILE", help="default: RUN_DIR/model.FORMAT, or MODEL.FORMAT here")
    p.add_argument("--batch", type=parse_batch, default="dynamic", metavar="dynamic|N",
                   help="a dynamic batch (default; checked at 1 and 3) or a fixed batch of N")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--input", type=parse_input_size, default=None, metavar="CxHxW",
                   help="input size (default: the run's, or the model's own)")
    p.add_argument("--model-arg", type=parse_model_arg, action="append", metavar="NAME=VALUE",
                   help="for a model by name: a keyword for its builder, e.g. groups=1 (repeatable)")
    p.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                   help="ONNX exporter (default auto: dynamo, then TorchScript if dynamo fails or is inexact)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"largest difference allowed, times max(1, max |output|) (default {DEFAULT_TOLERANCE:g})")
    p.set_defaults(func=cmd_export)


def cmd_reproduce(args: argparse.Namespace) -> None:
    from .reproduce import reproduce

    out = args.out
    if args.report_only:  # --report-only DIR, or --report-only --out DIR
        if out is not None and out != args.report_only and args.report_only is not True:
            raise CLIError(f"--report-only {args.report_only} and --out {out} name two folders: give one")
        out = out if args.report_only is True else args.report_only
    if out is None:
        raise CLIError("give the sweep's folder: --out DIR (or --report-only DIR)")
    result = reproduce(args.experiments or None, out, seeds=args.seeds, scale=args.scale,
                       time_budget=args.time_budget, data_dir=args.data_dir, device=args.device,
                       report_only=bool(args.report_only), download=not args.no_download, quiet=not args.verbose)
    print(f"report: {result.report}")
    if result.failed:
        raise CLIError(f"{len(result.failed)} run(s) failed ({', '.join(r.run_dir.name for r in result.failed)}); "
                       f"their errors are above; the same command again retries them")


def _add_reproduce(sub) -> None:
    from .cliargs import whole_number
    from .recipes import BOOK_RECIPES

    p = sub.add_parser(
        "reproduce",
        help=VERBS["reproduce"],
        description="Train the book's chapter-7 experiments (default: all nine) for each seed, each into its own "
                    "run directory OUT/EXPERIMENT-SCALE-seedN, then write OUT/report.md: ours (mean +- sd, "
                    "min-max over seeds) beside the book's printed figures, the ranking of the architectures, "
                    "every experiment's curves. Run it again to go on where it stopped: a finished run is read "
                    "back, an interrupted one resumes, a diverged one is reported as such (docs/reproduce.md).",
    )
    p.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                   help=f"{', '.join(BOOK_RECIPES)} (default: all nine)")
    p.add_argument("--out", metavar="DIR", help="the sweep's folder: its runs and its report (required)")
    p.add_argument("--seeds", type=whole_number(1, 1000, "a number of seeds"), default=1, metavar="N",
                   help="runs per experiment, seeds 0..N-1 (default 1)")
    p.add_argument("--scale", choices=("book", "cpu"), default="book",
                   help="book: the book's recipes exactly (default); cpu: sized for a 2-core CPU, all nine in "
                        "under an hour (smaller images, fewer images and epochs: printed, recorded, and said in "
                        "the report)")
    p.add_argument("--time-budget", type=float, metavar="S",
                   help="start no run after S seconds; what is done is reported")
    p.add_argument("--report-only", nargs="?", const=True, default=False, metavar="DIR",
                   help="train nothing: write DIR/report.md (or OUT's) again from the run directories in it")
    p.add_argument("--verbose", action="store_true", help="each run's progress bar and per-epoch lines")
    _add_data_location(p)
    _add_device(p)
    p.set_defaults(func=cmd_reproduce)


def _add_device(p) -> None:
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda, then mps, then cpu)")


def _add_data_location(p) -> None:
    p.add_argument("--data-dir", help="where the data set's files are (else $MODERNCNN_DATA, then the cache)")
    p.add_argument("--no-download", action="store_true", help="never download a missing data set")


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser: every verb with its options, or (``verb``) only that one's options, the
    other verbs listed by name, so that a command imports what its own options need and no more; ``""``: the
    verbs by name only, enough for ``moderncnn --help`` and ``--version``, without importing torch."""
    from importlib.metadata import version

    from . import __version__

    parser = _Parser(
        prog="moderncnn",
        description="The classic CNNs of d2l chapter 7 (and LeNet-5): inspect, train, evaluate, predict, compare.",
    )
    parser.add_argument("--version", action="version", version=f"moderncnn {__version__} (torch {version('torch')})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    adders = {"list": _add_list, "summary": _add_summary, "train": _add_train, "eval": _add_eval,
              "predict": _add_predict, "compare": _add_compare, "export": _add_export, "show": _add_show,
              "reproduce": _add_reproduce, "recipes": _add_recipes}
    for name, add in adders.items():
        if verb is None or verb == name:
            add(sub)
        else:
            sub.add_parser(name, help=VERBS[name])
    for verb_parser in sub.choices.values():
        verb_parser.set_defaults(verb_parser=verb_parser)
        _add_debug(verb_parser)
    return parser


def _add_list(sub) -> None:
    p = sub.add_parser("list", help=VERBS["list"], description="List registered models.")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard, e.g. 'resnet*'")
    p.set_defaults(func=cmd_list)


def _add_summary(sub) -> None:
    p = sub.add_parser(
        "summary",
        help=VERBS["summary"],
        description="Print a model's layer table (output shape, parameters, MACs) and totals.",
    )
    p.add_argument("model", help="a name from 'moderncnn list'")
    p.add_argument("--input", type=parse_input_size, default=None, metavar="CxHxW",
                   help="input size, e.g. 1x224x224 (default: the model's own)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--depth", type=int, default=None, help="deepest module level to list (default: leaves)")
    p.add_argument("--walk", action="store_true",
                   help="print the book's walk instead: one line per top-level block with its output shape")
    p.add_argument("--model-arg", type=parse_model_arg, action="append", metavar="NAME=VALUE",
                   help="pass a keyword to the model builder, e.g. --model-arg groups=1 (repeatable)")
    p.set_defaults(func=cmd_summary)


def _add_train(sub) -> None:
    from .cliargs import MAX_BATCH, MAX_IMAGE_SIDE, whole_number
    from .train.speed import COMPILE_MODES, SPEED_OPTIONS

    p = sub.add_parser(
        "train",
        help=VERBS["train"],
        description="Train MODEL like d2l's train_ch6 (--recipe book) or with a modern recipe. Writes a run "
                    "directory: run.json, metrics.jsonl, curves.png, model.safetensors, checkpoints/. Ctrl-C keeps "
                    "the last finished epoch; --resume continues from it. Several GPUs: torchrun "
                    "--nproc-per-node N -m moderncnn train MODEL ... (each batch split across them).",
    )
    p.add_argument("model", nargs="?", help="a name from 'moderncnn list' (optional with --like or a --config "
                                            "that names one)")
    p.add_argument("--recipe", choices=RECIPES, default="book",
                   help="book: d2l's recipe for this model (default); modern: Nesterov momentum, one-cycle, "
                        "label smoothing, crop + flip (not for the 28-pixel LeNets); fast: chosen for time to "
                        "accuracy (lenet_bn, fastnet); finetune: with --init-from torchvision's ImageNet weights "
                        "(resnet*, vgg*, densenet*): ImageNet mean/std, the loaded layers at a tenth of the lr")
    p.add_argument("--time-budget", type=positive_seconds, metavar="SECONDS",
                   help="choose the number of epochs so that the whole command ends within SECONDS with the lr "
                        "schedule complete: a few steps are timed first, and run.json records the choice")
    g = p.add_argument_group("recipe (default: the recipe's value; 'moderncnn recipes MODEL' shows them)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--batch-size", type=whole_number(1, MAX_BATCH))
    g.add_argument("--resize", type=whole_number(1, MAX_IMAGE_SIDE, "a side in pixels"),
                   help="resize images to RESIZE x RESIZE pixels")
    g.add_argument("--subset", type=int, metavar="N",
                   help="train on N training images only (a fixed, class-balanced sample)")
    g.add_argument("--test-subset", type=int, metavar="N",
                   help="test on N test images only (a fixed, class-balanced sample): a CPU user's 224-pixel "
                        "run spends minutes on every full test pass")
    g.add_argument("--ratio", type=int, help="vgg11_book: divide every channel count by RATIO (book: 4)")
    g.add_argument("--model-arg", type=parse_model_arg, action="append", metavar="NAME=VALUE",
                   help="pass a keyword to the model builder, e.g. --model-arg ratio=8 (repeatable)")
    _add_recipe_values(g)
    _add_config_options(p)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help="fashion-mnist (default), mnist, cifar10, or a folder of class sub-folders")
    _add_data_location(g)
    g = p.add_argument_group("run")
    g.add_argument("--out", help="run directory (default: runs/MODEL-RECIPE)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    g.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    g.add_argument("--init-from", metavar="WEIGHTS",
                   help="fine-tune: start from a run directory, .safetensors or .pth state dict (e.g. "
                        "torchvision's ImageNet weights for resnet*/vgg*/densenet*); a classifier for another "
                        "number of classes starts afresh, a 3-channel first conv is summed for grey images; "
                        "--recipe finetune trains ImageNet weights as they expect")
    _add_device(g)
    g.add_argument("--seed", type=int, default=0, help="seed of the init, the shuffle and dropout (default 0)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model (the first epoch's compilation is not counted in ex/s)")
    g.add_argument("--compile-mode", choices=COMPILE_MODES, metavar="MODE",
                   help="torch.compile in MODE, implies --compile: " + ", ".join(COMPILE_MODES)
                        + " (on a GPU the default mode's step is replayed as one CUDA graph; reduce-overhead "
                          "and max-autotune make their own graphs instead)")
    g.add_argument("--no-amp", action="store_true", help="train in fp32 (default: bf16 autocast on cuda, and on a "
                   "cpu with bf16 in hardware: AMX or AVX-512 BF16)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: what measured fastest for the device and model; "
                        "docs/benchmarks.md)")
    g.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="replay each step (forward, backward, update) as one CUDA graph (default: on for one "
                        "CUDA process without an lr schedule, with --compile too unless its mode makes its own "
                        "graphs: reduce-overhead, max-autotune)")
    g.add_argument("--speed", type=parse_speed, action="append", metavar="OPTION=on|off",
                   help="turn one speed option of the policy on or off (repeatable): " + ", ".join(SPEED_OPTIONS)
                        + " (default: what measured faster on this kind of machine; run.json says what and why)")
    g.add_argument("--no-malloc", dest="malloc", action="store_false",
                   help="leave glibc's malloc as it is (default on a Linux CPU: it keeps freed "
                        "memory for the next step, and the process its peak memory)")
    g.add_argument("--quiet", action="store_true",
                   help="no progress bar or per-epoch lines (the final result is still printed)")
    g.add_argument("--tensorboard", action="store_true",
                   help="also write the curves and, at the end, the run's pictures for TensorBoard into "
                        "OUT/tensorboard (needs: pip install \"moderncnn[tensorboard]\")")
    p.set_defaults(func=cmd_train)


#: The recipe's values the command line sets beyond epochs/lr/batch/resize/subsets (Recipe's own names).
RECIPE_VALUES = ("momentum", "nesterov", "weight_decay", "schedule", "label_smoothing", "augment", "crop_padding",
                 "normalize", "normalize_stats", "test_flip", "init", "pretrained_lr_scale")


def _add_recipe_values(g) -> None:
    """Every other value of :class:`~moderncnn.recipes.Recipe`; each is checked where the recipe is built."""
    from .cliargs import whole_number

    g.add_argument("--momentum", type=float, help="SGD momentum (book 0, modern 0.9)")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum (modern: on)")
    g.add_argument("--weight-decay", type=float, help="on conv and linear weights (book 0, modern 5e-4)")
    g.add_argument("--schedule", choices=("constant", "onecycle", "cosine"),
                   help="lr schedule, per step (book constant, modern onecycle peaking at --lr)")
    g.add_argument("--label-smoothing", type=float, help="in [0, 1) (book 0, modern 0.1)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop (padding 4) + horizontal flip (modern: on, except for the 28-pixel LeNets)")
    g.add_argument("--crop-padding", type=whole_number(0, 16), metavar="PIXELS",
                   help="--augment's crop: zero padding of each side (book, modern 4; fast 0: the flip only)")
    g.add_argument("--test-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="test on each image and its mirror image, summing the logits; eval and predict of the run "
                        "do the same (fast: on)")
    g.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="normalise each channel by a mean/std (modern, fast, finetune: on)")
    g.add_argument("--normalize-stats", choices=NORMALIZE_STATS,
                   help="--normalize's mean/std: data, the training set's own (modern); imagenet, those "
                        "torchvision's ImageNet weights were trained with (finetune)")
    g.add_argument("--pretrained-lr-scale", type=float, metavar="S",
                   help="the lr of the layers --init-from loaded, as a fraction in [0, 1] of --lr, which the new "
                        "classifier gets (finetune 0.1; others 1)")
    g.add_argument("--init", choices=("xavier", "default"),
                   help="xavier: d2l's init_weights (book); default: the builder's own")


def _add_config_options(p) -> None:
    from .cliargs import whole_number

    g = p.add_argument_group("config, replay and cost")
    g.add_argument("--config", metavar="FILE",
                   help="TOML or JSON of recipe and run values (lr = 0.1, schedule = \"cosine\", model, seed, ...), "
                        "or a run's run.json: its values become the defaults, flags here override them")
    g.add_argument("--like", metavar="RUN_DIR",
                   help="replay a run: its model, recipe, seed and data (flags here change any of them)")
    g.add_argument("--dry-run", action="store_true",
                   help="print the resolved recipe, the data, the speed plan and an estimate of the run's time "
                        "from a few timed steps; write nothing, train nothing")
    g.add_argument("--threads", type=whole_number(1, 1024), metavar="N",
                   help="CPU threads for this run (default: torch's, one per core); restored afterwards")


def cmd_recipes(args: argparse.Namespace) -> None:
    from .recipeview import recipe_table
    from .registry import get_model_builder

    get_model_builder(args.model)  # an unknown name: the registry's one-line error, with the close names
    print(recipe_table(args.model))


def _add_recipes(sub) -> None:
    p = sub.add_parser("recipes", help=VERBS["recipes"],
                       description="Print MODEL's recipes side by side (every value; '*' where they differ) and the "
                                   "results the project measured with each (docs/results), or 'not measured'.")
    p.add_argument("model", help="a name from 'moderncnn list'")
    p.set_defaults(func=cmd_recipes)


def _add_eval(sub) -> None:
    from .cliargs import MAX_BATCH, whole_number

    p = sub.add_parser(
        "eval",
        help=VERBS["eval"],
        description="Evaluate a run directory (or its model.safetensors) on the test split of the data set it "
                    "was trained on; writes confusion.png into the run directory or --out.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN_DIR")
    p.add_argument("--out", help="directory for confusion.png (default: the run directory)")
    p.add_argument("--normalize", action="store_true",
                   help="write each cell of confusion.png as its share of the true class (default: counts)")
    p.add_argument("--dataset", help="evaluate on this data set instead of the run's")
    _add_data_location(p)
    p.add_argument("--subset", type=int, metavar="N",
                   help="evaluate on N test images only (a fixed, class-balanced sample; default all)")
    p.add_argument("--batch-size", type=whole_number(1, MAX_BATCH), default=None, help="default: the run's")
    p.add_argument("--no-amp", action="store_true",
                   help="evaluate in fp32 (default: as the run was tested, e.g. bf16 autocast)")
    _add_device(p)
    p.set_defaults(func=cmd_eval)


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help=VERBS["predict"],
        description="Classify image files with a trained run: any size or colour mode, converted to what the "
                    "model was trained on (grey/RGB, its input size). A folder stands for the image files under "
                    "it (.png, .jpg, ...; recursively).",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN_DIR")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--topk", type=int, default=3, help="how many classes to show (default 3)")
    _add_device(p)
    p.set_defaults(func=cmd_predict)


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        help=VERBS["compare"],
        description="Tabulate models by name (wildcards allowed: 'resnet*') at their default input, or run "
                    "directories written by 'moderncnn train' with their recipe, epochs, accuracies and speed "
                    "beside the cost of the model at the size it was trained at.",
    )
    p.add_argument("items", nargs="+", metavar="MODEL_OR_RUN_DIR")
    p.add_argument("--input", type=parse_input_size, default=None, metavar="CxHxW",
                   help="input size for the models given by name, e.g. 1x96x96 (default: each model's own)")
    p.add_argument("--num-classes", type=int, default=None, help="classes of the models given by name")
    p.add_argument("--sort", choices=("params", "macs", "test_acc", "examples_per_sec"),
                   help="order the rows: cost ascending, accuracy and speed descending (default: as given)")
    p.add_argument("--plot", metavar="PNG", help="also draw the runs' test accuracy and train loss per epoch")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--model-arg", type=parse_model_arg, action="append", metavar="NAME=VALUE",
                   help="for the models given by name: a keyword for their builders, e.g. groups=1 (repeatable)")
    p.set_defaults(func=cmd_compare)


def _add_debug(parser: argparse.ArgumentParser) -> None:
    """``--debug`` on a verb and on every sub-verb beneath it (SUPPRESS: a sub-parser's default cannot
    overwrite what its parent parsed)."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full Python traceback of an unexpected error")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_debug(child)


def _reject_unknown(verb_parser: argparse.ArgumentParser, unknown: list[str]) -> None:
    """The verb's own usage error (not the top level's), naming the closest option to a misspelt one."""
    known = [s for action in verb_parser._actions for s in action.option_strings]
    hints = []
    for arg in unknown:
        if arg.startswith("--"):
            close = difflib.get_close_matches(arg.split("=", 1)[0], known, n=1, cutoff=0.6)
            hints += [f"{arg}: did you mean {close[0]}?"] if close else []
    verb_parser.error(f"unrecognized arguments: {' '.join(unknown)}" + (f" ({'; '.join(hints)})" if hints else ""))


def _main_process() -> bool:
    """Under torchrun every process fails alike: rank 0 alone says so."""
    from .distributed import world_from_env

    try:
        return world_from_env().main
    except ValueError:  # a malformed RANK: better said twice than not at all
        return True


def _report(line: str) -> None:
    if _main_process():
        print(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if argv is None:
        # the command line's process, its work done and saved (every file written atomically and synced), ends
        # here without the interpreter's teardown, which frees torch's modules one by one: 0.45 s with torch,
        # 0.8 s once the first optimizer step has imported torch._dynamo (a second of a 15 s time budget).
        # Under torchrun that teardown also aborted one gloo process in ~25 ("terminate called without an
        # active exception"; 2 CPU processes, torch 2.14), and torchrun then failed the whole run.
        with contextlib.suppress(OSError):  # a reader that has left (BrokenPipeError) has nothing to lose
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    return code


def _out_of_memory() -> tuple[type[BaseException], ...]:
    """Python's MemoryError and, once torch is imported (nothing else can run out of a GPU), torch's."""
    torch = sys.modules.get("torch")
    return (MemoryError,) + ((torch.OutOfMemoryError,) if torch is not None else ())


def _main(argv: list[str] | None) -> int:
    given = sys.argv[1:] if argv is None else [str(a) for a in argv]
    named = next((a for a in given if not a.startswith("-")), "")  # no top-level option takes a value
    parser = build_parser(named if named in VERBS else "")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _reject_unknown(args.verb_parser, unknown)
    args.command_line = "moderncnn " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        args.func(args)
    except BrokenPipeError:  # `moderncnn list | head`: the reader left; no traceback, not even at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a tool killed by SIGPIPE
    except (CLIError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        _report(f"moderncnn {args.command}: error: {e}")
        return 2
    except OSError as e:  # a full disk, a read-only directory: the last finished checkpoint is intact
        where = f" ({e.filename})" if e.filename else ""
        _report(f"moderncnn {args.command}: error: {e.strerror or e}{where}; free space or write elsewhere, then "
                f"run again (a stopped training goes on with --resume)")
        return 2
    except _out_of_memory() as e:
        what = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _report(f"moderncnn {args.command}: error: out of memory ({what}); use a smaller --batch-size "
                f"(or --resize)")
        return 2
    except KeyboardInterrupt as e:
        from .train import Terminated

        _report(f"moderncnn {args.command}: {'terminated' if isinstance(e, Terminated) else 'interrupted'}")
        return 143 if isinstance(e, Terminated) else 130
    except Exception as e:  # noqa: BLE001 - the last guard: a bug or an input no check foresaw, in one line
        if getattr(args, "debug", False):
            raise
        what = (str(e).strip().splitlines() or [""])[0][:300]
        _report(f"moderncnn {args.command}: error: unexpected {type(e).__name__}{': ' + what if what else ''}; "
                f"rerun with --debug to see the traceback (and report it if the input was valid)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
