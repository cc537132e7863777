"""The benchmark scripts still run: a GPU session has little time, and a broken script would waste it."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from moderncnn.cpumem import glibc_malloc

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared Fashion-MNIST copy not present")


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
                                     "--device", "cpu", "--speed", "patch_pool=off", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["compile_mode"] == "default" and result["speed"] == {"patch_pool": False}
    assert result["git"]["commit"] and result["device_kind"] in ("cpu", "cpu-bf16") and result["torch"]
    (row,) = result["results"]
    assert row["recipe"] == "lenet" and row["batches"] == 2
    for key in ("reference_median", "reference_book_timer_median", "moderncnn_median", "moderncnn_compile_median"):
        assert row[key] > 0, key
    assert len(row["runs"]["compile_seconds"]) == 1
    table = capsys.readouterr().out
    assert "| lenet | 256 | 28 |" in table and "warm-up s |" in table
    assert set(copies("moderncnn-bench-*")) == before, "the reference's data copy is removed"


@needs_shared
def test_bench_throughput_builds_the_step_the_trainer_plans():
    from moderncnn.data import load_dataset

    bench = script("bench_throughput")
    data = load_dataset("fashion-mnist", "test", root=SHARED, download=False, allow_sample=False)
    step, loader, model, plan = bench.build_step("lenet", data, torch.device("cpu"), speed={"patch_pool": False})
    assert not plan.patch_pool and plan.why["patch_pool"] == "asked for" and loader.batch_size == 256


def test_book_experiments_sweeps_with_the_library_and_exports_the_small_files(tmp_path, capsys):
    from fixtures import write_fashion_idx
    from moderncnn.reproduce import Reduction, reproduce

    experiments = script("book_experiments")
    idx = write_fashion_idx(tmp_path / "idx", train=100, test=40)
    out, export = tmp_path / "runs", tmp_path / "export"
    tiny = {"lenet": Reduction({"epochs": 1, "subset": 32, "test_subset": 20}, "a test's one step")}
    reproduce(["lenet"], out, scale="cpu", settings=tiny, data_dir=idx, device="cpu")
    report = (out / "report.md").read_text()
    # the finished run is read back (no new run past the budget), then its small files exported with the report
    experiments.main(["lenet", "--seeds", "2", "--out", str(out), "--scale", "cpu", "--data-dir", str(idx),
                      "--device", "cpu", "--time-budget", "0", "--export", str(export)])
    assert sorted(p.name for p in export.iterdir()) == ["lenet-cpu-seed0", "report-curves.png", "report-test-acc.png",
                                                          "report.html", "report.md", "reproduce.json"]
    assert sorted(p.name for p in (export / "lenet-cpu-seed0").iterdir()) == ["curves.png", "metrics.jsonl",
                                                                               "run.json"]
    exported = (export / "report.md").read_text()
    assert exported == (out / "report.md").read_text() != report  # the second call asked for seed 1 too
    assert "not run yet (the time budget was spent, or the sweep was stopped): lenet-cpu-seed1." in exported


def test_models_md_is_what_model_table_writes(capsys):
    script("model_table").main([])
    written = capsys.readouterr().out
    assert written == (BENCH.parent / "docs" / "models.md").read_text(), \
        "docs/models.md is stale: python benchmarks/model_table.py > docs/models.md"


@needs_shared
def test_whole_runs_times_each_variant_in_a_process_of_its_own(tmp_path, capsys):
    out = tmp_path / "whole.json"
    src = Path(__file__).resolve().parents[1] / "src"
    script("whole_runs").main(["--data-dir", str(SHARED), "--models", "lenet_bn", "--epochs", "1", "--repeats", "1",
                               "--subset", "256", "--test-subset", "100", "--workers", "0", "--book",
                               "--baseline", str(src), "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["benchmark"] == "whole-runs" and result["git"]["commit"] and result["cpu_flags"] is not None
    (row,) = result["results"]
    assert row["model"] == "lenet_bn" and set(row["runs"]) == {"moderncnn", "book", "baseline"}
    for variant, (run,) in row["runs"].items():
        assert run["seconds"] > 0 and 0 <= run["test_acc"] <= 1 and 0 < run["loss"] < 10, variant
        assert row["seconds"][variant]["n"] == 1
    assert row["runs"]["moderncnn"][0]["loss"] == row["runs"]["baseline"][0]["loss"], "the same code, the same run"
    table = capsys.readouterr().out
    assert "| variant | seconds (median, min-max) |" in table and "| baseline | " in table


def test_time_to_accuracy_times_whole_commands_and_counts_the_seeds_reaching_each_target(tmp_path, monkeypatch,
                                                                                        capsys):
    monkeypatch.setenv("MODERNCNN_DATA", str(tmp_path))  # no data there, and no download: the embedded sample
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(BENCH.parent / "src"), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "tta.json"
    script("time_to_accuracy").main(["lenet_bn", "--seeds", "1", "--json", str(out),
                                     "--train-args", "--epochs 1 --subset 256 --test-subset 100"])
    result = json.loads(out.read_text())
    assert result["benchmark"] == "time-to-accuracy" and result["git"]["commit"] and result["torch"]
    (run,) = result["runs"]
    assert run["seconds"] > run["train_seconds"] > 0 and run["epochs"] == 1 and 0 <= run["test_acc"] <= 1
    assert "moderncnn train lenet_bn --recipe fast --seed 0" in run["command"] and "--subset 256" in run["command"]
    assert run["test_images"] == 100 and run["full_test_set"] is False and result["summary"]["full_test_set"] is False
    reached = result["summary"]["reached"]
    assert list(reached) == ["0.90", "0.92", "0.93", "0.94", "0.95"]
    assert all(v == float(run["test_acc"] >= float(t)) for t, v in reached.items())
    assert "| lenet_bn | fast | - |" in capsys.readouterr().out


def test_whole_runs_ablates_each_option_the_policy_turns_on(monkeypatch):
    import argparse

    import moderncnn.train.speed as speed

    whole = script("whole_runs")
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: True)
    args = argparse.Namespace(book=False, baseline=None, ablate=True, resize=None, fp32=False,
                              variant=["fp32=--no-amp --speed patch_pool=off"])
    kinds = whole.variants("lenet", args, torch.device("cpu"))
    plan = speed.plan_speed(torch.device("cpu"), __import__("moderncnn").create_model("lenet"))
    on = [o for o in speed.SPEED_OPTIONS if getattr(plan, o)]
    assert kinds["moderncnn"] == [] and {f"{o}=off" for o in on} <= set(kinds)
    assert all(kinds[f"{o}=off"] == ["--speed", f"{o}=off"] for o in on)
    assert ("malloc=off" in kinds) is glibc_malloc()
    assert kinds["fp32"] == ["--no-amp", "--speed", "patch_pool=off"]


@pytest.mark.parametrize("name, args, message", [
    ("whole_runs", ["--models", "lenet,nosuch"], "whole_runs.py: error: unknown model 'nosuch'"),
    ("whole_runs", ["--baseline", "/nonexistent"], "whole_runs.py: error: --baseline /nonexistent holds no"),
    ("bench_throughput", ["--models", "lenet,nosuch"], "bench_throughput.py: error: unknown model 'nosuch'"),
    ("book_experiments", ["nosuch", "--out", "/nonexistent/x"], "book_experiments.py: error: unknown experiment nosuch"),
    ("whole_runs", ["--data-dir", "/nonexistent"], "whole_runs.py: error: no folder /nonexistent: pass --data-dir"),
    ("parity", ["--seeds", "1"], "parity.py: error: --seeds must be at least 2"),
    ("time_to_accuracy", ["nosuch"], "time_to_accuracy.py: error: unknown model 'nosuch'"),
    ("time_to_accuracy", ["alexnet"], "time_to_accuracy.py: error: there is no fast recipe for alexnet"),
    ("parity", ["--models", "lenet,nosuch"], "parity.py: error: unknown model 'nosuch'"),
])
def test_benchmark_scripts_fail_in_one_line(name, args, message):
    import subprocess

    done = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *args], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and done.stderr.strip().splitlines()[-1].startswith(message), done.stderr


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCH.glob("*.py") if not p.name.startswith("_")))
def test_benchmark_scripts_say_what_they_do_and_what_each_option_is(name):
    """``--help`` is the only guide a user on a borrowed machine has: it must describe the script and every
    option, and print without running anything."""
    import subprocess

    done = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage:"), done.stdout[:200] + done.stderr
    parser = script(name).build_parser()
    assert (parser.description or "").strip(), f"{name}.py has no description"
    assert not [a.option_strings or a.dest for a in parser._actions if not a.help], f"{name}.py: options without help"


def test_parity_interval_holds_zero_for_one_distribution_and_not_for_a_shifted_one():
    parity = script("parity")
    book = [0.85, 0.87, 0.84, 0.88, 0.86]
    same = parity.difference([0.86, 0.85, 0.87, 0.84, 0.88], book)
    assert same["low"] < 0 < same["high"] and abs(same["mean"]) < 1e-9
    lower = parity.difference([a - 0.1 for a in book], book)
    assert lower["high"] < 0 and lower["low"] <= lower["mean"] <= lower["high"]
    assert abs(lower["mean"] + 0.1) < 1e-9
    run = {"test_acc_history": [0.1, 0.5, 0.6, 0.7, 0.8]}
    assert parity.late_accuracy(run) == pytest.approx(0.7)


@needs_shared
def test_parity_runs_both_pipelines_for_each_seed(tmp_path, capsys):
    out = tmp_path / "parity.json"
    script("parity").main(["--data-dir", str(SHARED), "--models", "lenet_bn", "--epochs", "2", "--seeds", "2",
                           "--subset", "512", "--variant", "fp32=--no-amp", "--json", str(out)])
    (row,) = json.loads(out.read_text())["results"]
    assert set(row["runs"]) == {"book", "moderncnn", "fp32"} and set(row["difference_from_book"]) == {"moderncnn", "fp32"}
    for variant, runs in row["runs"].items():
        assert [r["seed"] for r in runs] == [0, 1] and all(len(r["test_acc_history"]) == 2 for r in runs), variant
    assert row["runs"]["book"][0]["loss"] != row["runs"]["book"][1]["loss"], "each seed its own run"
    assert "| book | " in capsys.readouterr().out


def test_parity_takes_the_books_runs_from_an_earlier_result_only_where_they_match(tmp_path):
    parity = script("parity")
    earlier = tmp_path / "parity.json"
    runs = [{"seed": s, "test_acc": 0.8 + s / 100, "loss": 0.4} for s in range(3)]
    earlier.write_text(json.dumps({"benchmark": "parity", "epochs": 10, "subset": None,
                                   "results": [{"model": "lenet", "runs": {"book": runs}}]}))
    assert [r["seed"] for r in parity.book_runs(str(earlier), "lenet", [2, 0], 10)] == [2, 0]
    with pytest.raises(ValueError, match=r"no book run of lenet for seed\(s\) \[3\]"):
        parity.book_runs(str(earlier), "lenet", [0, 3], 10)
    with pytest.raises(ValueError, match="not a parity result of 2 epochs"):
        parity.book_runs(str(earlier), "lenet", [0], 2)
