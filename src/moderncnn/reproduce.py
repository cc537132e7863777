"""The book's chapter-7 experiments as one sweep of runs: each (experiment, seed) one :func:`fit` run in its own
run directory under ``out_dir``, then the report (:mod:`moderncnn.reproduce_report`).

``reproduce(["lenet", "lenet_bn"], "runs/chapter", seeds=2, scale="cpu")``

A sweep can always be called again with the same arguments, and goes on where it stopped:

- a finished run is read back, never trained again;
- an interrupted run (Ctrl-C, SIGTERM, a kill) resumes from its last finished epoch, as does one that failed
  (an error other than divergence: out of memory, a full disk, a busy run directory), since the cause may be
  gone; within one call a run is tried once, and the sweep goes on with the others;
- a diverged run (a NaN or exploding loss, as some of the book's own GoogLeNet builds) is a result: it is
  reported as diverged and not trained again (the same seed would diverge again); remove its directory to
  train it afresh.

Scales: ``book`` is the book's recipes exactly. ``cpu`` keeps each network's book form and book recipe except
the reductions in :data:`CPU_SCALE` (a smaller resize where the network accepts it, fewer training images,
fewer epochs, fewer test images), each with its reason, printed at the start and recorded in each run's
run.json (its recipe, and the reason in ``based_on``): the report says in its title and in every row that
these are not the book's settings. Its run directories are ``EXPERIMENT-SCALE-seedN``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .recipes import BOOK_RECIPES, Recipe
from .reproduce_report import MANIFEST, write_report
from .storage import atomic_write

__all__ = ["CPU_SCALE", "SCALES", "Reduction", "RunOutcome", "SweepResult", "experiment_recipe", "reproduce",
           "run_dir_name"]

SCALES = ("book", "cpu")


@dataclass(frozen=True)
class Reduction:
    """How an experiment departs from the book's recipe at a scale: recipe values, and why."""

    changes: dict[str, Any]
    why: str
    #: Minutes of the run on a 2-core CPU, as measured (docs/reproduce.md).
    minutes: float | None = None


#: Every experiment at ``--scale cpu`` trains on the same number of images, one of the book's epochs (60,000:
#: 5 passes over a fixed class-balanced 12,000), and is tested on the same fixed class-balanced 2,000 test
#: images after each epoch: a fair race at a tenth of the book's length, so that the ranking of the
#: architectures means something. Resize: as the book's where the network needs it (AlexNet's 6400-wide and
#: VGG's 25088-wide classifiers take only 193..224 and 224..255 px), else smaller.
_RACE = {"subset": 12_000, "epochs": 5, "test_subset": 2_000}
_WHY = "one book epoch of images (5 x 12,000), 2,000 test images, as every experiment at this scale"

#: ``--scale cpu``: sized for a 2-core CPU, all nine in under an hour with one seed. ``minutes``: each run's
#: wall time in the sweep of docs/results/xeon-amx-2core/chapter-cpu (a 2-core Xeon, Sapphire Rapids with
#: AMX; its epochs, training and testing), 34 in all, 35.4 for the whole command. They were chosen from
#: probes on one core (training images/s, test in brackets): lenet 9,400 (25,000), lenet_bn 9,300,
#: lenet_bn_scratch 3,800, at 28 px; alexnet 57 (171) at 224; vgg11_book 35 (74) at 224; nin 360 (1,280) at
#: 96; googlenet 159 (610), resnet18_book 107 (440), densenet_book 226 (860) at 64.
CPU_SCALE: dict[str, Reduction] = {
    "lenet": Reduction(_RACE, f"28 px as the book; {_WHY}", 0.05),
    "lenet_bn": Reduction(_RACE, f"28 px as the book; {_WHY}", 0.05),
    "lenet_bn_scratch": Reduction(_RACE, f"28 px as the book; {_WHY}", 0.1),
    "alexnet": Reduction(_RACE, f"224 px as the book (its classifier takes 193..224 px); {_WHY}", 7.9),
    "vgg11_book": Reduction(_RACE, f"224 px as the book (its classifier takes 224..255 px); {_WHY}", 17.6),
    "nin": Reduction({"resize": 96, **_RACE}, f"96 px instead of 224 (it takes >= 67 px); {_WHY}", 1.1),
    "googlenet": Reduction({"resize": 64, **_RACE}, f"64 px instead of 96; {_WHY}", 2.8),
    "resnet18_book": Reduction({"resize": 64, **_RACE}, f"64 px instead of 96; {_WHY}", 3.7),
    "densenet_book": Reduction({"resize": 64, **_RACE}, f"64 px instead of 96; {_WHY}", 1.7),
}

#: ``--scale book`` on a 2-core CPU, from the same probes: predicted hours of each whole 10-epoch run (what the
#: warning says): 9.3 hours for the nine.
CPU_BOOK_HOURS = {"lenet": 0.01, "lenet_bn": 0.01, "lenet_bn_scratch": 0.02, "alexnet": 1.5, "vgg11_book": 2.6,
                  "nin": 1.95, "googlenet": 1.1, "resnet18_book": 1.2, "densenet_book": 0.96}


@dataclass(frozen=True)
class RunOutcome:
    """One (experiment, seed) of a sweep: its run directory and what this call did with it."""

    experiment: str
    seed: int
    run_dir: Path
    #: "trained" (now, fresh or resumed), "read back" (finished before), "diverged", "failed", "not run"
    outcome: str
    detail: str = ""


@dataclass
class SweepResult:
    """What :func:`reproduce` returns: every run's outcome and the report's path."""

    runs: list[RunOutcome] = field(default_factory=list)
    report: Path | None = None

    @property
    def trained(self) -> list[RunOutcome]:
        return [r for r in self.runs if r.outcome == "trained"]

    @property
    def failed(self) -> list[RunOutcome]:
        return [r for r in self.runs if r.outcome == "failed"]


def run_dir_name(experiment: str, scale: str, seed: int) -> str:
    return f"{experiment}-{scale}-seed{seed}"


def experiment_recipe(experiment: str, scale: str = "book",
                      settings: dict[str, Reduction] | None = None) -> Recipe:
    """The recipe an experiment trains with at ``scale``: the book's, with the scale's reductions (or those
    of ``settings``) applied and their reason appended to ``based_on``."""
    book = BOOK_RECIPES[experiment]
    if scale == "book":
        return book
    reduction = (settings if settings is not None else CPU_SCALE).get(experiment)
    if reduction is None or not reduction.changes:
        return book
    return book.replace(**reduction.changes,
                        based_on=f"{book.based_on}; {scale} scale, not the book's settings: {reduction.why}")


def reproduce(experiments: Iterable[str] | None = None, out_dir: str | Path | None = None, *, seeds: int = 1,
              scale: str = "book", time_budget: float | None = None, data_dir: str | Path | None = None,
              device: str | None = None, report_only: bool = False, download: bool = True,
              settings: dict[str, Reduction] | None = None, train_data: Any = None, test_data: Any = None,
              quiet: bool = True) -> SweepResult:
    """Train every experiment (default: all nine keys of ``BOOK_RECIPES``) for seeds ``0..seeds-1`` into
    ``out_dir/EXPERIMENT-SCALE-seedN``, going on where an earlier call stopped (see the module docstring), then
    write ``out_dir/report.md``. ``time_budget``: no run starts (or resumes) after that many seconds; what is
    done is reported. ``report_only``: train nothing, rebuild the report from the run directories.
    ``settings``: reductions that replace :data:`CPU_SCALE` for ``scale="cpu"`` (another budget; the tests'
    tiny runs), recorded in run.json like the scale's own. ``train_data``/``test_data``: the data sets
    instead of Fashion-MNIST from ``data_dir`` (both or neither); ``download``: fetch it if missing;
    ``quiet``: no progress bars or per-epoch lines (each run's closing lines are printed all the same)."""
    if out_dir is None:
        raise ValueError("give the sweep's folder: reproduce(..., out_dir=DIR) (--out DIR)")
    out = Path(out_dir)
    if report_only:
        if experiments:
            raise ValueError("--report-only writes the report of every run in --out: give no EXPERIMENT")
        if not out.is_dir():
            raise FileNotFoundError(f"--report-only: {out} is not a folder of runs; give the --out of a sweep")
        return SweepResult(report=write_report(out))
    names = _check([experiments] if isinstance(experiments, str) else experiments, seeds, scale, time_budget,
                   settings, out)
    data = _Data(data_dir, download, train_data, test_data)
    deadline = time.monotonic() + (math.inf if time_budget is None else time_budget)
    _announce(names, seeds, scale, settings, device)
    out.mkdir(parents=True, exist_ok=True)
    _write_manifest(out, names, seeds, scale)
    plan = [(name, seed) for name in names for seed in range(seeds)]
    result = SweepResult()
    try:
        for name, seed in plan:
            recipe = experiment_recipe(name, scale, settings)
            result.runs.append(_run_one(name, seed, recipe, out / run_dir_name(name, scale, seed), deadline, data,
                                        device, quiet))
            _say(f"{name} seed {seed}: {result.runs[-1].outcome}"
                 + (f" ({result.runs[-1].detail})" if result.runs[-1].detail else ""))
    except KeyboardInterrupt:  # fit's own hint names --resume, which a sweep does by itself
        _say("sweep stopped: the same call again goes on where it stopped (a finished run is kept, the "
             "interrupted one resumes)")
        raise
    finally:  # an interrupted sweep still leaves the report of what is done
        result.report = write_report(out)
    return result


def _check(experiments: Iterable[str] | None, seeds: int, scale: str, time_budget: float | None,
           settings: dict[str, Reduction] | None, out: Path) -> list[str]:
    names = list(BOOK_RECIPES) if experiments is None else list(dict.fromkeys(experiments))
    unknown = [n for n in names if n not in BOOK_RECIPES]
    if unknown or not names:
        raise ValueError(f"unknown experiment {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(BOOK_RECIPES)}")
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ValueError(f"--seeds must be a whole number >= 1 (the runs take seeds 0..N-1), got {seeds!r}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    if time_budget is not None and not (isinstance(time_budget, (int, float)) and time_budget >= 0):
        raise ValueError(f"--time-budget must be seconds >= 0, got {time_budget!r}")
    if settings is not None and scale == "book":
        raise ValueError("settings change the book's recipes: use them with scale='cpu', not 'book'")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder; choose another --out")
    return names


def _announce(names: list[str], seeds: int, scale: str, settings: dict[str, Reduction] | None,
              device: str | None) -> None:
    """The settings, before anything trains: a reader sees at once what is not the book's."""
    from .evaluate import select_device

    where = select_device(device)
    _say(f"reproducing {len(names)} experiment(s) x {seeds} seed(s), {scale} scale, on {where}")
    if scale == "cpu":
        table = settings if settings is not None else CPU_SCALE
        for name in names:
            r = table.get(name)
            changes = ", ".join(f"{k} {v}" for k, v in (r.changes if r else {}).items()) or "none"
            _say(f"  {name}: {changes}" + (f" ({r.why})" if r else ""))
        _say("  (not the book's settings: the report says so in its title and every row)")
    elif where.type == "cpu":
        hours = sum(CPU_BOOK_HOURS[n] for n in names) * seeds
        _say(f"warning: the book's recipes on a CPU: about {hours:.1f} hours on a 2-core CPU (estimate); "
             f"--scale cpu sizes them for under an hour")


class _Data:
    """Fashion-MNIST, read once, when the first run needs training (a sweep that only reads back reads none)."""

    def __init__(self, data_dir: str | Path | None, download: bool, train: Any, test: Any):
        if (train is None) != (test is None):
            raise ValueError("give both train_data and test_data, or neither")
        self.data_dir, self.download, self.splits = data_dir, download, (train, test) if train is not None else None

    def get(self) -> tuple[Any, Any]:
        if self.splits is None:
            from .data import load_splits

            # a sweep on the embedded sample would compare nothing with the book: never fall back to it
            self.splits = load_splits("fashion-mnist", root=self.data_dir, download=self.download,
                                      allow_sample=False)
        return self.splits


def _run_one(name: str, seed: int, recipe: Recipe, run_dir: Path, deadline: float, data: _Data,
             device: str | None, quiet: bool) -> RunOutcome:
    """One run: read back, resumed, trained afresh, or left for a later call."""
    from .rundir import RunDir
    from .train import fit
    from .train.loop import Diverged

    run = RunDir(run_dir)
    meta = _read(run)
    status = meta.get("status") if meta else None
    if status == "finished":
        _warn_if_other_settings(run_dir, meta, recipe)
        return RunOutcome(name, seed, run_dir, "read back")
    if status == "diverged":
        return RunOutcome(name, seed, run_dir, "diverged", f"after {meta.get('epochs_done', 0)} epoch(s), kept")
    if time.monotonic() >= deadline:
        return RunOutcome(name, seed, run_dir, "not run", "time budget spent")
    train, test = data.get()
    try:
        fit(name, recipe, run_dir, device, seed=seed, train_data=train, test_data=test, resume=meta is not None,
            quiet=quiet)
    except Diverged as e:
        return RunOutcome(name, seed, run_dir, "diverged", str(e))
    except Exception as e:  # noqa: BLE001 - one run's failure must not cost the others; the report shows it
        return RunOutcome(name, seed, run_dir, "failed", f"{type(e).__name__}: {e}")
    return RunOutcome(name, seed, run_dir, "trained")


def _read(run: Any) -> dict[str, Any] | None:
    """run.json, or None where there is none or it cannot be read (the run is then started again)."""
    if not run.exists():
        return None
    try:
        return run.read_meta()
    except ValueError:
        return None


def _warn_if_other_settings(run_dir: Path, meta: dict[str, Any], recipe: Recipe) -> None:
    theirs = meta.get("recipe") if isinstance(meta.get("recipe"), dict) else {}
    ours = recipe.as_dict()
    differ = sorted(k for k in ours if k != "based_on" and theirs.get(k) != ours[k])
    if differ:
        _say(f"warning: {run_dir} holds a finished run with other settings ({', '.join(differ)}): reported as it "
             f"is; remove it to train today's")


def _write_manifest(out: Path, names: list[str], seeds: int, scale: str) -> None:
    manifest = {"experiments": names, "seeds": seeds, "scale": scale,
                "runs": [run_dir_name(n, scale, s) for n in names for s in range(seeds)]}
    atomic_write(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
