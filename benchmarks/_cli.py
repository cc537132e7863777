"""One-line errors for the benchmark scripts: a wrong model name or data folder is for the user to fix, and a
stack trace would bury the fix."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from moderncnn import get_model_builder


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
