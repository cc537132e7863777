"""``python -m moderncnn``: the command line, also as ``torchrun --nproc-per-node N -m moderncnn train ...``."""

import sys

from .cli import main

sys.exit(main())
