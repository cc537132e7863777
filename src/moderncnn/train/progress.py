"""What a run says while an epoch trains, where no progress bar is seen: a log file, nohup, CI.

The tqdm bar shows only on a terminal; elsewhere a line every :data:`LOG_EVERY` seconds (epoch, step,
images/s, time left) says that the run is alive and when it ends. Once, a few steps in, a run that will
train for more than :data:`LONG_RUN` seconds on a CPU says so, with the cheaper ways to run it.
"""

from __future__ import annotations

import sys
import time

__all__ = ["Ticker", "LOG_EVERY", "LONG_RUN", "long_run_hint", "format_duration"]

#: Seconds between two progress lines when stderr is not a terminal.
LOG_EVERY = 30.0
#: A CPU run longer than this (seconds) says so at its start.
LONG_RUN = 30 * 60.0
#: The first steps that time the run for the long-run line: at least this many, or this many seconds.
ESTIMATE_STEPS, ESTIMATE_SECONDS = 20, 2.0


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"7.5 min"``, ``"12.3 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def long_run_hint(seconds: float, device_type: str) -> str | None:
    """One line for a CPU run estimated at more than :data:`LONG_RUN` seconds: its length and cheaper ways."""
    if device_type != "cpu" or seconds <= LONG_RUN:
        return None
    from ..recipes import RECIPES

    fast = ", --recipe fast" if "fast" in RECIPES else ""
    return (f"this run will take about {format_duration(seconds)} on this CPU; cheaper: a smaller --resize, "
            f"--subset N{fast}, or a GPU (--dry-run estimates any of them)")


class Ticker:
    """Called once per training step of an epoch; prints what the run is doing, as the module says."""

    def __init__(self, epoch: int, epochs: int, steps: int, batch_size: int, device_type: str, *, log: bool,
                 estimate: bool, interval: float | None = None):
        self.epoch, self.epochs, self.steps, self.batch_size = epoch, epochs, steps, batch_size
        self.device_type, self.log, self.estimate = device_type, log, estimate
        self.interval = LOG_EVERY if interval is None else interval
        self.start = self.last = time.perf_counter()
        self.told = False  # the long-run line, said or judged unneeded

    def step(self, i: int) -> str | None:
        """After step ``i`` (1-based) of the epoch: the line printed, if any."""
        now = time.perf_counter()
        elapsed = now - self.start
        line = None
        if self.estimate and not self.told and i >= 3 and (i >= ESTIMATE_STEPS or elapsed >= ESTIMATE_SECONDS):
            self.told = True
            line = long_run_hint(self._left(i, elapsed) + elapsed, self.device_type)
        if self.log and now - self.last >= self.interval:
            self.last = now
            rate = i * self.batch_size / elapsed if elapsed > 0 else float("inf")
            line = (f"epoch {self.epoch + 1}/{self.epochs}, step {i}/{self.steps}: {rate:,.0f} images/s, about "
                    f"{format_duration(self._left(i, elapsed))} of training left") + (f"\n{line}" if line else "")
        if line:
            print(line, file=sys.stderr, flush=True)
        return line

    def _left(self, i: int, elapsed: float) -> float:
        """Seconds of training left in this run, at this epoch's pace (test passes not counted)."""
        steps_left = self.steps - i + self.steps * (self.epochs - self.epoch - 1)
        return steps_left * elapsed / i
