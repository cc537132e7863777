"""The trainer: d2l's ``train_ch6`` as a library, with a run directory, a speed policy and checked data.

``fit("lenet")`` trains the book's LeNet with the book's recipe and returns a :class:`TrainResult`;
``fit(..., out_dir="runs/x")`` also writes a run directory (:mod:`moderncnn.rundir`) that ``resume=True``
continues. One concern a module, in the order a run meets them:

- :mod:`.options`: what the user asked, checked in one place;
- :mod:`.trainer`: the run's life, from the options to the last checkpoint;
- :mod:`.speed`: the speed policy, every option decided once and recorded;
- :mod:`.step`: the recipe made into objects (init, optimizer, schedule, loss) and one SGD step;
- :mod:`.loop`: the loaders, one epoch, the test pass, divergence;
- :mod:`.metadata` and :mod:`.report`: what run.json holds, and what the run prints (its curves are
  :mod:`moderncnn.curves`).
"""

from ..curves import plot_curves
from .trainer import Terminated, TrainResult, fit, initial_model
from .loop import Diverged
from .options import TrainOptions
from .report import format_final
from .speed import (COMPILE_MODES, SPEED_OPTIONS, SpeedPlan, compile_mode_of, compiled, cpu_has_native_bf16,
                    device_kind, eval_speed, plan_speed)
from .step import TrainStep, build_loss, build_optimizer, build_scheduler, init_weights, make_train_step

__all__ = ["fit", "initial_model", "TrainResult", "TrainOptions", "Terminated", "Diverged", "plan_speed",
           "eval_speed", "SpeedPlan", "SPEED_OPTIONS", "device_kind", "cpu_has_native_bf16", "COMPILE_MODES",
           "compile_mode_of", "compiled", "init_weights", "build_optimizer", "build_scheduler", "build_loss", "make_train_step", "TrainStep",
           "format_final", "plot_curves"]
