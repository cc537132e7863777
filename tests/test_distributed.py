"""Training on several processes under torchrun (gloo on the CPU): the same run as one process, split."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from moderncnn import compare
from moderncnn.checkpoint import load_checkpoint
from moderncnn.data import DeviceLoader, ImageDataset, load_dataset
from moderncnn.distributed import World, all_sum, local_device, main_first, on_main, world_from_env
from moderncnn.evaluate import evaluate

from fixtures import write_fashion_idx


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_fashion_idx(tmp_path_factory.mktemp("fashion"), train=300, test=60)


def toy(n: int) -> ImageDataset:
    images = torch.arange(n, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4)
    return ImageDataset(images.contiguous(), torch.arange(n) % 3, [str(i) for i in range(3)], "toy", "train", "")


@pytest.mark.parametrize("n,batch,shards,drop_last", [(130, 32, 2, False), (130, 32, 3, False), (129, 64, 3, False),
                                                      (129, 64, 3, True), (10, 2, 4, False)])
def test_shards_split_every_batch_of_the_same_order(n, batch, shards, drop_last):
    data = toy(n)
    whole = list(DeviceLoader(data, batch, shuffle=True, seed=3, drop_last=drop_last))
    parts = [list(DeviceLoader(data, batch, shuffle=True, seed=3, drop_last=drop_last, shard=(r, shards)))
             for r in range(shards)]
    for r, part in enumerate(parts):
        assert len(part) == len(DeviceLoader(data, batch, drop_last=drop_last, shard=(r, shards)))
    # batch i of the single process is the concatenation of the shares that are not empty, in rank order
    cursors = [iter(p) for p in parts]
    for x, y in whole:
        m = len(y)
        sizes = [m * (r + 1) // shards - m * r // shards for r in range(shards)]
        assert max(sizes) - min(sizes) <= 1
        shares = [next(cursors[r]) for r in range(shards) if sizes[r]]
        assert torch.equal(torch.cat([s[1] for s in shares]), y)
        assert torch.equal(torch.cat([s[0] for s in shares]), x)
    assert all(next(c, None) is None for c in cursors)


def test_equal_steps_leave_out_a_batch_too_small_for_every_shard():
    data = toy(129)  # batches of 64, 64 and 1: the last cannot give three shards an example each
    parts = [list(DeviceLoader(data, 64, shuffle=True, seed=3, shard=(r, 3), equal_steps=True)) for r in range(3)]
    assert [len(p) for p in parts] == [2, 2, 2]
    whole = list(DeviceLoader(data, 64, shuffle=True, seed=3))
    for i in range(2):
        assert torch.equal(torch.cat([p[i][1] for p in parts]), whole[i][1])
    loader = DeviceLoader(data, 64, shard=(2, 3))
    assert [loader.share(m) for m in (64, 1, 2)] == [22, 1, 1] and DeviceLoader(data, 64).share(64) == 64


def test_single_process_world_is_a_pass_through(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    world = world_from_env()
    assert world == World() and world.main and not world.distributed
    assert on_main(world, lambda: 5) == 5 and main_first(world, lambda: 6) == 6
    t = torch.tensor([1.5])
    assert all_sum(world, t)[0] is t
    assert local_device(world, None) is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert world_from_env() == World(rank=3, size=4, local_rank=1)
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="torchrun"):
        world_from_env()
    with pytest.raises(ValueError, match="0 <= rank < shards"):
        DeviceLoader(toy(4), 2, shard=(2, 2))


def torchrun(args: list, processes: int = 2) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "moderncnn", "train", *map(str, args)]
    # a process waiting for another that died would hang: the timeout turns that into a failure
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)


def train_one_process(args: list) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "moderncnn", "train", *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr


def test_two_processes_train_the_weights_one_process_trains(idx_dir, tmp_path):
    # LeNet has neither batch norm nor dropout: two halves of each batch, their gradients averaged, are the batch
    common = ["lenet", "--epochs", 2, "--batch-size", 64, "--lr", 0.3, "--no-amp", "--device", "cpu",
              "--data-dir", idx_dir, "--no-download", "--quiet"]
    done = torchrun(common + ["--out", tmp_path / "two"])
    assert done.returncode == 0, done.stderr[-3000:]
    train_one_process(common + ["--out", tmp_path / "one"])
    two = json.loads((tmp_path / "two" / "run.json").read_text())
    one = json.loads((tmp_path / "one" / "run.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["final"]["device"] == "2 x cpu"
    assert done.stdout.count("examples/sec on 2 x cpu") == 1  # rank 0 alone prints
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5)
    for key in ("loss", "train_acc", "test_acc"):
        assert two["final"][key] == pytest.approx(one["final"][key], abs=1e-4)
    assert two["data"]["train_used"] == 300 and two["final"]["epochs"] == 2
    assert [row["device"] for row in compare([tmp_path / "one", tmp_path / "two"])] == ["cpu", "2 x cpu"]


def test_batch_norm_run_resumes_and_tests_the_model_it_saves(idx_dir, tmp_path):
    out = tmp_path / "bn"
    common = ["lenet_bn", "--batch-size", 64, "--no-amp", "--device", "cpu", "--data-dir", idx_dir,
              "--no-download", "--out", out]
    done = torchrun(common + ["--epochs", 1])
    assert done.returncode == 0, done.stderr[-3000:]
    done = torchrun(common + ["--epochs", 1])  # the run is there: one line from rank 0, no process left waiting
    assert done.returncode != 0
    assert done.stderr.count("moderncnn train: error:") == 1 and "pass --resume" in done.stderr
    done = torchrun(common + ["--epochs", 2, "--resume"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming after epoch 1" in done.stderr
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and all(h["examples"] == 300 for h in history)
    # the test accuracy logged is that of the weights saved, whole test set, one process
    model, meta = load_checkpoint(out)
    test = load_dataset("fashion_mnist", "test", root=idx_dir, download=False)
    assert evaluate(model, test, "cpu")["accuracy"] == history[-1]["test_acc"]
    assert meta["processes"] == 2 and meta["status"] == "finished"


def test_world_size_without_torchrun_is_a_one_line_error(idx_dir, tmp_path, monkeypatch):
    from moderncnn.train import fit

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="could not join .*start them with torchrun, or unset WORLD_SIZE"):
        fit("lenet", out_dir=tmp_path / "run", device="cpu", data_dir=idx_dir, download=False, epochs=1)
    assert not (tmp_path / "run").exists()


def test_fewer_test_images_than_processes_is_a_one_line_error(idx_dir, tmp_path, monkeypatch):
    # a one-member gloo group standing in for two processes: the check runs before any per-process work
    import socket

    import moderncnn.train.trainer as train

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for var, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port)), ("RANK", "0"), ("WORLD_SIZE", "1")):
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(train, "world_from_env", lambda: World(rank=0, size=2))
    with pytest.raises(ValueError, match="1 test images cannot be shared by 2 processes; use a larger --test-subset"):
        train.fit("lenet", out_dir=tmp_path / "run", device="cpu", data_dir=idx_dir, download=False, epochs=1,
                  test_subset=1)
    assert not (tmp_path / "run").exists()
    assert not torch.distributed.is_initialized()  # fit left the group it joined


def test_a_single_process_on_one_of_several_gpus_says_how_to_use_them_all(monkeypatch):
    from moderncnn.train.report import other_gpus_hint as _other_gpus_hint

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    hint = _other_gpus_hint(World(), torch.device("cuda", 0))
    assert "4 GPUs are visible" in hint and "torchrun --nproc-per-node 4 -m moderncnn train" in hint
    assert _other_gpus_hint(World(rank=1, size=4, local_rank=1), torch.device("cuda", 1)) is None
    assert _other_gpus_hint(World(), torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _other_gpus_hint(World(), torch.device("cuda", 0)) is None
