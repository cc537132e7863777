"""Negative experiment: LeNet's book step as 2 data-parallel processes of 1 thread each, on a 2-core CPU.

    python benchmarks/cpu_two_processes.py [--model lenet] [--steps 100] [--eager] [--no-amp]

One process with 2 OpenMP threads spends part of each small kernel synchronising its threads; two
single-threaded processes, each on half of the batch, do not, but must average their gradients every
step (one gloo all-reduce over loopback). Prints ms/step and examples/sec for: one process with every
core; 2 processes whose gradients are averaged (a flat all-reduce of all gradients, then SGD: the
same update as the whole batch in one process, up to rounding); the same with PyTorch's
DistributedDataParallel doing the averaging; and 2 processes without the all-reduce (the
compute-only bound, not a valid training step). Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from _timing import add_no_amp, cpu_amp_dtype, precision_name

import moderncnn
from moderncnn.recipes import get_recipe
from moderncnn.train import build_loss, build_optimizer, compiled, init_weights


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_steps(model_name: str, batch: int, steps: int, compile_mode: str | None, world: int = 1,
               averaging: str = "flat", amp_dtype: torch.dtype | None = None) -> float:
    """Milliseconds per step of this process's share (``batch``) of the book recipe's step.

    ``averaging`` (with ``world > 1``): "flat" (one all-reduce of all gradients), "ddp" or "none".
    """
    recipe = get_recipe(model_name, "book")
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = init_weights(moderncnn.create_model(model_name, **recipe.model_kwargs))
    model = model.to(memory_format=torch.channels_last)
    if world > 1 and averaging == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        net = compiled(DistributedDataParallel(model), compile_mode, device)
    else:
        net = compiled(model, compile_mode, device)
    optimizer, loss_fn = build_optimizer(model, recipe, device), build_loss(recipe)
    params = list(model.parameters())
    size = recipe.resize or 28
    x = torch.rand(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = loss_fn(net(x), y)
        loss.backward()
        if world > 1 and averaging == "flat":
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            dist.all_reduce(flat)
            flat /= world
            for p, g in zip(params, torch._utils._unflatten_dense_tensors(flat, [p.grad for p in params])):
                p.grad.copy_(g)
        optimizer.step()

    for _ in range(5):
        step()
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if world > 1:
        dist.barrier()
    return (time.perf_counter() - start) / steps * 1e3


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, averaging: str, out) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ms = time_steps(args.model, args.batch // world, args.steps, args.compile_mode, world, averaging,
                        args.amp_dtype)
        if rank == 0:
            out.put(ms)
    finally:
        dist.destroy_process_group()


def run_two(args: argparse.Namespace, averaging: str) -> float:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    mp.start_processes(_worker, args=(2, _free_port(), args, averaging, out), nprocs=2, start_method="spawn")
    return out.get()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet")
    p.add_argument("--batch", type=int, default=256, help="the whole step's batch (the book's: 256)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--eager", action="store_true", help="no torch.compile")
    add_no_amp(p)
    args = p.parse_args(argv)
    args.compile_mode = None if args.eager else "default"
    args.amp_dtype = cpu_amp_dtype(args.no_amp)
    print(f"{args.model}, batch {args.batch}, {'eager' if args.eager else 'compiled'}, "
          f"{precision_name(args.amp_dtype)}, channels_last, "
          f"{os.cpu_count()} cores, torch {torch.__version__}")
    results = [("1 process, every core", time_steps(args.model, args.batch, args.steps, args.compile_mode,
                                                         amp_dtype=args.amp_dtype)),
               ("2 processes x 1 thread, gradients all-reduced", run_two(args, "flat")),
               ("2 processes x 1 thread, DDP", run_two(args, "ddp")),
               ("2 processes x 1 thread, no all-reduce (bound)", run_two(args, "none"))]
    for name, ms in results:
        print(f"{name:48} {ms:6.2f} ms/step  {args.batch / ms * 1e3:8,.0f} ex/s")


if __name__ == "__main__":
    import _cli

    _cli.run(main)
