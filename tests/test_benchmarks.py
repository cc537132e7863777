"""The benchmark scripts still run: a GPU session has little time, and a broken script would waste it."""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from moderncnn.cpumem import glibc_malloc
from moderncnn.evaluate import cpu_has_native_bf16

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared Fashion-MNIST copy not present")


def trainer_precision() -> str:
    """The CPU step's precision as the trainer picks it for this CPU, as the experiment scripts print it."""
    return "bf16" if cpu_has_native_bf16() else "fp32"


@functools.cache  # once: a script that registers custom ops could not register them twice
def script(name: str):
    sys.path.insert(0, str(BENCH))  # the scripts import each other as top-level modules
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


@needs_shared
@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="torch.compile on CPU needs a C++ compiler")
def test_bench_throughput_times_both_pipelines_and_compile(tmp_path, capsys):
    copies = Path(tempfile.gettempdir()).glob  # where the reference's uncompressed copy of the data goes
    before = set(copies("moderncnn-bench-*"))
    out = tmp_path / "bench.json"
    script("bench_throughput").main(["--data-dir", str(SHARED), "--models", "lenet", "--batches", "2", "--warmup", "1",
                                     "--repeats", "1", "--small-factor", "1", "--workers", "0", "--compile",
                                     "--device", "cpu", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["compile_mode"] == "default"
    (row,) = result["results"]
    assert row["recipe"] == "lenet" and row["batches"] == 2
    for key in ("reference_median", "reference_book_timer_median", "moderncnn_median", "moderncnn_compile_median"):
        assert row[key] > 0, key
    assert len(row["runs"]["compile_seconds"]) == 1
    table = capsys.readouterr().out
    assert "| lenet | 256 | 28 |" in table and "warm-up s |" in table
    assert set(copies("moderncnn-bench-*")) == before, "the reference's data copy is removed"


@needs_shared
def test_bench_throughput_can_leave_malloc_as_the_books_process_has_it():
    from moderncnn.data import load_dataset

    bench = script("bench_throughput")
    data = load_dataset("fashion-mnist", "test", root=SHARED, download=False, allow_sample=False)
    cpu = torch.device("cpu")
    assert bench.build_step("lenet", data, cpu)[2]["keep_memory"] is glibc_malloc()  # as fit() does
    assert bench.build_step("lenet", data, cpu, keep_memory=False)[2]["keep_memory"] is False  # --malloc-defaults


@needs_shared
def test_book_experiments_tabulates_seeds_and_reuses_finished_runs(tmp_path, monkeypatch, capsys):
    experiments = script("book_experiments")
    argv = ["--data-dir", str(SHARED), "--models", "lenet", "--seeds", "0,1", "--device", "cpu", "--epochs", "1",
            "--subset", "512", "--test-subset", "1000", "--resize", "30", "--out", str(tmp_path / "runs"),
            "--markdown", str(tmp_path / "table.md")]
    experiments.main(argv)
    first = (tmp_path / "table.md").read_text()
    assert ("book recipe, seeds 0,1, overrides {'epochs': 1, 'subset': 512, 'test_subset': 1000, 'resize': 30}"
            in first)
    run = json.loads((tmp_path / "runs" / "lenet-book-seed0" / "run.json").read_text())
    assert run["recipe"]["resize"] == 30 and run["data"]["test_used"] == 1000
    assert "| lenet |" in first and "| 0.779 / 0.789 |" in first
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["lenet-book-seed0", "lenet-book-seed1"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(experiments, "fit", no_training)
    experiments.main(argv)
    assert (tmp_path / "table.md").read_text() == first

    # a cut-off call: no new run past the budget; what finished is tabulated and its small files exported
    export = tmp_path / "export"
    experiments.main([*argv, "--seeds", "0,1,2", "--time-budget", "0", "--export", str(export)])
    cut = (tmp_path / "table.md").read_text()
    assert "| lenet (seeds 0,1) |" in cut and "not run (--time-budget 0 s spent): lenet seed 2" in cut
    assert sorted(p.name for p in export.iterdir()) == ["lenet-book-seed0", "lenet-book-seed1"]
    assert sorted(p.name for p in (export / "lenet-book-seed0").iterdir()) == ["curves.png", "metrics.jsonl",
                                                                                "run.json"]
    experiments.main([*argv, "--out", str(export)])  # the exported runs tabulate without training
    assert (tmp_path / "table.md").read_text() == first


@needs_shared
def test_first_steps_prints_one_line_of_losses_per_lr(capsys):
    script("first_steps").main(["lenet", "--data-dir", str(SHARED), "--lrs", "0.9,0.1", "--steps", "3",
                                "--batch-size", "16", "--device", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["lenet lr 0.9", "lenet lr 0.1"]
    first = [[float(v) for v in line.split(":")[1].split()] for line in lines]
    assert all(len(losses) == 3 for losses in first)
    assert first[0][0] == first[1][0]  # same init and batch: the first loss does not depend on the lr
    assert first[0][1:] != first[1][1:]


def test_banded_convolution_experiment_matches_conv2d(capsys):
    experiments = script("cpu_conv_experiments")
    torch = pytest.importorskip("torch")
    from fixtures import assert_same_as_conv2d

    nn = torch.nn
    torch.manual_seed(0)
    for c, o, h, w, k, pad in [(1, 6, 28, 28, 5, 2), (6, 16, 14, 14, 5, 0), (3, 5, 9, 11, 3, 1)]:
        conv = nn.Conv2d(c, o, k, padding=pad).double()
        banded = experiments.BandedConv2d(c, o, k, padding=pad).double()
        banded.load_state_dict(conv.state_dict())
        assert_same_as_conv2d(banded, conv, torch.randn(3, c, h, w, dtype=torch.float64, requires_grad=True))
    x = torch.randn(2, 3, 8, 6)
    torch.testing.assert_close(experiments.MeanPool2d(2)(x), nn.AvgPool2d(2)(x))
    experiments.main(["--eager", "--rounds", "1", "--no-amp"])
    assert "lenet eager, fp32 banded: first quartile" in capsys.readouterr().out


def test_models_md_is_what_model_table_writes(capsys):
    script("model_table").main()
    written = capsys.readouterr().out
    assert written == (BENCH.parent / "docs" / "models.md").read_text(), \
        "docs/models.md is stale: python benchmarks/model_table.py > docs/models.md"


def test_two_process_experiment_runs(tmp_path):
    import subprocess

    done = subprocess.run([sys.executable, str(BENCH / "cpu_two_processes.py"), "--eager", "--steps", "2",
                           "--batch", "32"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("lenet, batch 32, eager") and len(lines) == 5
    assert [line.split("  ")[0] for line in lines[1:]] == [
        "1 process, every core", "2 processes x 1 thread, gradients all-reduced", "2 processes x 1 thread, DDP",
        "2 processes x 1 thread, no all-reduce (bound)"]


def test_row_stacked_experiment_runs(capsys):
    experiments = script("cpu_row_stacked")
    experiments.main(["--models", "lenet", "--rounds", "1", "--steps", "1", "--profile", "1"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("lenet (batch 256, 28 px")
    assert float(line.split("max |output difference| ")[1].split(";")[0]) < 0.05  # bf16 rounding at most
    assert "stem alone (profiled): plain" in line


def test_batch_norm_experiment_runs(capsys):
    experiments = script("cpu_bn_experiments")
    experiments.main(["--eager", "--rounds", "1", "--variants", "plain,eager_op,matmul_stats,dynamic_threads"])
    lines = capsys.readouterr().out.strip().splitlines()
    precision = trainer_precision()
    assert [line.split(":")[0] for line in lines] == [
        f"lenet_bn eager, {precision} {v}" for v in ("plain", "eager_op", "matmul_stats")]  # settings: compiled only
    with pytest.raises(ValueError, match="unknown variant 'fast'"):
        experiments.main(["--variants", "plain,fast"])


@pytest.mark.parametrize("how", ["eager_op", "matmul_stats", "view_stats", "opaque_stats"])
def test_batch_norm_experiments_compute_batch_norm(how):
    experiments = script("cpu_bn_experiments")
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(6).double()
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-1, 1)
    ours = nn.BatchNorm2d(6).double()
    ours.load_state_dict(plain.state_dict())
    experiments.variant(nn.Sequential(ours), how)
    x = (torch.randn(4, 6, 6, 8, dtype=torch.float64) * 3 + 1).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y = plain(x)
    grad = torch.randn_like(y)
    torch.testing.assert_close(ours(x), y)
    for a, b in zip(torch.autograd.grad(ours(x), (x, ours.weight, ours.bias), grad),
                    torch.autograd.grad(plain(x), (x, plain.weight, plain.bias), grad)):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(ours.running_var, plain.running_var)


@pytest.mark.parametrize("native", [True, False])
def test_cpu_experiments_follow_the_trainers_precision(monkeypatch, native):
    """bf16 only where the CPU has it in hardware (emulated, it is several times slower than fp32), as the
    trainer decides; --no-amp: fp32 anyway."""
    import moderncnn.train

    timing = script("_timing")
    monkeypatch.setattr(moderncnn.train, "cpu_has_native_bf16", lambda: native)
    assert timing.cpu_amp_dtype() is (torch.bfloat16 if native else None)
    assert timing.cpu_amp_dtype(no_amp=True) is None
    assert timing.precision_name(timing.cpu_amp_dtype()) == ("bf16" if native else "fp32")


def test_patch_pool_experiment_runs(capsys):
    experiments = script("cpu_patch_pool")
    experiments.main(["--models", "lenet,googlenet", "--rounds", "1", "--steps", "1"])
    lenet, googlenet = capsys.readouterr().out.strip().splitlines()
    precision = trainer_precision()
    assert lenet.startswith(f"lenet (batch 256, 28 px, {precision}, channels_last True, 2 pooling layers): plain ")
    assert lenet.endswith("max |gradient difference| 0.0e+00")  # the same numbers, computed otherwise
    assert googlenet == "googlenet: no average pooling over non-overlapping patches"


def test_fold_bn_experiment_runs(capsys):
    experiments = script("cpu_fold_bn")
    experiments.main(["--models", "lenet,lenet_bn", "--rounds", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    precision = trainer_precision()
    assert lines[0] == "lenet: no batch norm after a single-channel convolution"
    assert [line.split(":")[0] for line in lines[1:4]] == [
        f"lenet_bn ({precision}) before", f"lenet_bn ({precision}) fold", f"lenet_bn ({precision}) fold_nchw"]
    assert lines[4].startswith("lenet_bn: before/fold ")
    assert float(lines[4].split("max relative gradient difference ")[1]) < 1e-12  # float64: rounding only


@needs_shared
def test_whole_runs_times_the_books_train_ch6_and_fit(tmp_path, capsys):
    out = tmp_path / "whole.json"
    script("whole_runs").main(["--data-dir", str(SHARED), "--models", "lenet_bn", "--epochs", "1", "--repeats", "1",
                               "--subset", "512", "--workers", "0", "--device", "cpu", "--json", str(out)])
    (row,) = json.loads(out.read_text())["results"]
    assert row["model"] == "lenet_bn" and set(row["runs"]) == {"book", "moderncnn"}
    for pipeline, (run,) in row["runs"].items():
        assert run["seconds"] > 0 and 0 <= run["test_acc"] <= 1, pipeline
        assert 0 < run["loss"] < 10 and 0 <= run["train_acc"] <= 1, pipeline
    assert row["runs"]["book"][0]["examples"] == 512  # an epoch of the first 512 images, the last batch whole
    table = capsys.readouterr().out
    assert table.splitlines()[1] == "| model | book | moderncnn | speed-up |"
    assert table.splitlines()[-1].startswith("| lenet_bn | ")


@needs_shared
def test_step_variants_times_each_variant_and_profiles(tmp_path, capsys):
    out = tmp_path / "variants.json"
    script("step_variants").main(["--data-dir", str(SHARED), "--models", "lenet", "--variants", "default,fp32+nocl",
                                  "--batches", "2", "--warmup", "1", "--profile", "1", "--top", "3",
                                  "--device", "cpu", "--json", str(out)])
    result = json.loads(out.read_text())
    default, fp32 = result["results"]
    native = cpu_has_native_bf16()  # the trainer's default: bf16 and stacked rows where the CPU has bf16 in hardware
    assert default["variant"] == "default" and default["amp"] == ("torch.bfloat16" if native else "None")
    assert default["row_stacked"] is native
    assert fp32["variant"] == "fp32+nocl" and fp32["amp"] == "None" and fp32["channels_last"] is False
    assert default["examples_per_sec"] > 0 and fp32["examples_per_sec"] > 0
    (profile,) = result["profiles"]
    assert profile.startswith("## lenet: 1 eager steps of batch 256") and len(profile.splitlines()) == 4
    assert capsys.readouterr().out.splitlines()[-1].startswith("| lenet | ")


@pytest.mark.parametrize("name, args, message", [
    ("step_variants", ["--variants", "default,fast"], "step_variants.py: error: unknown variant option 'fast'"),
    ("whole_runs", ["--models", "lenet,nosuch"], "whole_runs.py: error: unknown model 'nosuch'"),
    ("bench_throughput", ["--models", "lenet,nosuch"], "bench_throughput.py: error: unknown model 'nosuch'"),
    ("cpu_row_stacked", ["--models", "nosuch"], "cpu_row_stacked.py: error: unknown model 'nosuch'"),
    ("cpu_fold_bn", ["--models", "nosuch"], "cpu_fold_bn.py: error: unknown model 'nosuch'"),
    ("book_experiments", ["--data-dir", ".", "--models", "lenet,nosuch"],
     "book_experiments.py: error: unknown model 'nosuch'"),
    ("whole_runs", ["--data-dir", "/nonexistent"], "whole_runs.py: error: no folder /nonexistent: pass --data-dir"),
])
def test_benchmark_scripts_fail_in_one_line(name, args, message):
    import subprocess

    done = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *args], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and done.stderr.strip().splitlines()[-1].startswith(message), done.stderr
