"""The ``moderncnn`` command: argument parsing only; every verb calls the library."""

from __future__ import annotations

import argparse
import sys


class CLIError(Exception):
    """An error the command line reports in one line (exit status 2)."""


def parse_input_size(text: str) -> tuple[int, int, int]:
    """``"1x224x224"`` -> ``(1, 224, 224)``; ``"224"`` -> ``(None, 224, 224)`` is not allowed: give C x H x W."""
    try:
        dims = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"--input must be CxHxW, e.g. 1x224x224 (got {text!r})")
    return dims  # type: ignore[return-value]


def cmd_list(args: argparse.Namespace) -> None:
    from . import list_models

    names = list_models(args.pattern)
    if not names:
        raise CLIError(f"no model matches {args.pattern!r}; 'moderncnn list' shows all")
    print("\n".join(names))


def cmd_summary(args: argparse.Namespace) -> None:
    from . import create_model, shape_walk, summary

    kw = {}
    if args.num_classes is not None:
        kw["num_classes"] = args.num_classes
    if args.input is not None:
        kw["in_channels"] = args.input[0]
    model = create_model(args.model, **kw)
    size = args.input or model.default_input_size
    if args.walk:
        for line in shape_walk(model, size):
            print(line)
    else:
        print(summary(model, size, depth=args.depth))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moderncnn",
        description="The classic CNNs of d2l chapter 7 (and LeNet-5): inspect, train, evaluate, predict.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", help="list the registered models", description="List registered models.")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard, e.g. 'resnet*'")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "summary",
        help="layer-by-layer table: output shapes, parameters, multiply-adds",
        description="Print a model's layer table (output shape, parameters, MACs) and totals.",
    )
    p.add_argument("model", help="a name from 'moderncnn list'")
    p.add_argument("--input", type=parse_input_size, default=None, metavar="CxHxW",
                   help="input size, e.g. 1x224x224 (default: the model's own)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--depth", type=int, default=None, help="deepest module level to list (default: leaves)")
    p.add_argument("--walk", action="store_true",
                   help="print the book's walk instead: one line per top-level block with its output shape")
    p.set_defaults(func=cmd_summary)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CLIError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        print(f"moderncnn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"moderncnn {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
