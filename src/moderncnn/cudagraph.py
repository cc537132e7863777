"""The whole training step as one CUDA graph: forward, loss, backward and the optimizer's update, replayed.

Why: on a GPU the book's small models are launch-bound. LeNet's step is a few dozen kernels of a few
microseconds each, and the Python that launches them sets the pace. The first measurement on an H100
gave 130k ex/s eager, a 2 ms step (docs/notes.md). A graph launches them all at once.
``torch.compile(mode="reduce-overhead")`` graphs the forward and backward passes only. It leaves out
the optimizer, and it compiles for up to a minute a model first. The step may also be a compiled one
(``fit(compile=True)`` on CUDA): inductor's fused kernels, launched by the graph, are the fastest way
found to train the book's 96- and 224-pixel models on an H100 (docs/benchmarks.md).

This follows PyTorch's "whole network capture" recipe (the CUDA semantics notes): a few eager steps on a
side stream first (cudnn.benchmark picks its kernels, optimizers create their state), then one step
captured, then copies of each batch into the graph's input buffers and a replay. What may not be in the
graph is left to the caller: a per-step lr schedule (the lr would be frozen at capture), a step that
waits for the host, DistributedDataParallel.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch

TrainStep = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

__all__ = ["GraphedStep"]


class GraphedStep:
    """``step(x, y)`` replayed as one CUDA graph for batches of ``batch_size`` examples.

    Batches of another size (the epoch's last) run ``step`` eagerly. The first ``warmup`` full batches
    also run eagerly, on a side stream; the next one is captured. ``step`` must not wait for the host,
    must update the model's parameters and buffers in place, and must not use autocast's weight cache
    (``torch.autocast(..., cache_enabled=False)``).

    The returned tensors are the graph's own outputs: the next replay overwrites them, so read or add
    them up before the next call, as :func:`moderncnn.train.fit` does. A replay runs no Python: code in
    the model's ``forward`` or in hooks runs at the warm-up steps and the capture only. A step that
    cannot be captured (a hook that calls ``.item()``, say) warns once and runs eagerly from then on;
    ``failed`` then says why.
    """

    def __init__(self, step: TrainStep, batch_size: int, warmup: int = 3) -> None:
        self.step, self.batch_size, self.warmup = step, batch_size, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_calls = 0
        self.failed: str | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if y.shape[0] != self.batch_size or self.failed:
            return self.step(x, y)
        if self.graph is None:
            if self.eager_calls < self.warmup:
                self.eager_calls += 1
                return self._on_side_stream(x, y)
            if not self._capture(x, y):
                return self.step(x, y)
        else:
            self.x.copy_(x)
            self.y.copy_(y)
        self.graph.replay()
        return self.out

    def _on_side_stream(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # lazy initialisations (cuBLAS workspaces, autograd's streams) must happen outside the capture
        side, main = torch.cuda.Stream(x.device), torch.cuda.current_stream(x.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out = self.step(x, y)
        main.wait_stream(side)
        return out

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> bool:
        self.x, self.y = x.clone(), y.clone()  # clone keeps channels_last strides, so copy_ stays a plain copy
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.out = self.step(self.x, self.y)
        except RuntimeError as e:  # nothing ran while capturing: the caller runs this batch eagerly
            _release_generator(x.device)
            self.failed = str(e).strip().splitlines()[0]
            warnings.warn(f"the training step cannot be replayed as a CUDA graph ({self.failed}); it runs eagerly "
                          f"from now on (cuda_graph=False or --no-cuda-graph skips the attempt)", stacklevel=3)
            return False
        self.graph = graph
        return True


def _release_generator(device: torch.device) -> None:
    """Take the device's default random generator out of capture mode after a capture that failed.

    ``torch.cuda.graph`` raises before it ends the capture of the generator's state when the capture broke
    (a host sync in the step, say), and the generator then refuses every later draw ("Offset increment
    outside graph capture"): an eager fallback with dropout would fail. A copy of its own state (seed and
    offset, not the capture flag) puts it back, so the random stream goes on where it was.
    """
    gen = torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    if hasattr(gen, "clone_state"):  # torch >= 2.4
        gen.graphsafe_set_state(gen.clone_state())
