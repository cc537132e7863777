"""One-line errors for the benchmark scripts: a wrong model name or data folder is for the user to fix, and a
stack trace would bury the fix."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from moderncnn import get_model_builder

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"  # the project's shared copy


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """``--data-dir``, the project's shared copy of Fashion-MNIST unless given."""
    parser.add_argument("--data-dir", default=str(DATA_DIR), metavar="DIR",
                        help="a folder with Fashion-MNIST's .gz files (default: %(default)s)")


def add_result_options(parser: argparse.ArgumentParser) -> None:
    """``--machine`` and ``--json``: where ``_results.write`` puts the results."""
    parser.add_argument("--machine", metavar="NAME", help="the results folder's name (default: from the device's name)")
    parser.add_argument("--json", metavar="FILE", help="write the results here instead of docs/results/<machine>/")


def model_names(text: str) -> list[str]:
    """A ``--models`` value, comma-separated, each one checked: a misspelt model fails before any run starts,
    not after the others' runs."""
    names = text.split(",")
    for name in names:
        get_model_builder(name)
    return names


def run(main: Callable[[], None]) -> None:
    """Call ``main()``; a ValueError or a missing file ends the script with ``SCRIPT: error: ...`` on stderr."""
    try:
        main()
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        detail = str(e)
        if isinstance(e, OSError) and e.filename:
            detail = f"{e.strerror.lower() if e.strerror else 'cannot open'}: {e.filename}"
        sys.exit(f"{Path(sys.argv[0]).name}: error: {detail}")
