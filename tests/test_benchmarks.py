"""The benchmark scripts still run: a GPU session has little time, and a broken script would waste it."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared Fashion-MNIST copy not present")


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
def test_book_experiments_tabulates_seeds_and_reuses_finished_runs(tmp_path, monkeypatch, capsys):
    experiments = script("book_experiments")
    argv = ["--data-dir", str(SHARED), "--models", "lenet", "--seeds", "0,1", "--device", "cpu", "--epochs", "1",
            "--subset", "512", "--out", str(tmp_path / "runs"), "--markdown", str(tmp_path / "table.md")]
    experiments.main(argv)
    first = (tmp_path / "table.md").read_text()
    assert "book recipe, seeds 0,1, overrides {'epochs': 1, 'subset': 512}" in first
    assert "| lenet |" in first and "| 0.779 / 0.789 |" in first
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["lenet-book-seed0", "lenet-book-seed1"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(experiments, "fit", no_training)
    experiments.main(argv)
    assert (tmp_path / "table.md").read_text() == first
