"""``moderncnn reproduce``: a sweep that goes on where it stopped, and a report written from its runs alone.

Tiny runs on a generated Fashion-MNIST-format folder: ``settings`` replaces the cpu scale's reductions with
ones of a few steps (recorded in run.json as the real ones are)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import moderncnn.train
from moderncnn.cli import main
from moderncnn.recipes import BOOK_RECIPES
from moderncnn.reproduce import CPU_SCALE, Reduction, experiment_recipe, reproduce
from moderncnn.reproduce_report import NOT_BOOK, write_report

from fixtures import offline, write_fashion_idx  # noqa: F401 - offline: a fixture, used by pytestmark

pytestmark = pytest.mark.usefixtures("offline")

H100_RUNS = Path(__file__).resolve().parents[1] / "docs" / "results" / "h100" / "runs"
TINY = {name: Reduction({"epochs": 2, "subset": 64, "test_subset": 50}, "a test's few steps")
        for name in ("lenet", "lenet_bn")}
REPORT_FILES = ("report.md", "report-curves.png", "report-test-acc.png", "report.html")


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_fashion_idx(tmp_path_factory.mktemp("fashion"), train=200, test=60)


def sweep(out, idx_dir, **kw):
    kw = {"seeds": 2, "scale": "cpu", "settings": TINY, "device": "cpu", "data_dir": idx_dir, **kw}
    return reproduce(kw.pop("experiments", ["lenet", "lenet_bn"]), out, **kw)


def report_bytes(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in REPORT_FILES}


def no_training(monkeypatch):
    def fit(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(moderncnn.train, "fit", fit)


def test_a_second_identical_call_trains_nothing_and_writes_the_same_report(idx_dir, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    first = sweep(out, idx_dir)
    assert [(r.experiment, r.seed, r.outcome) for r in first.runs] == [
        ("lenet", 0, "trained"), ("lenet", 1, "trained"), ("lenet_bn", 0, "trained"), ("lenet_bn", 1, "trained")]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "lenet-cpu-seed0", "lenet-cpu-seed1", "lenet_bn-cpu-seed0", "lenet_bn-cpu-seed1"]
    written = report_bytes(out)
    text = written["report.md"].decode()
    assert "| lenet (cpu scale) |" in text and "| lenet_bn (cpu scale) |" in text and "| 0,1 |" in text
    assert "[lenet_bn-cpu-seed1](lenet_bn-cpu-seed1/)" in text and "0.779 / 0.789" in text
    page = written["report.html"].decode()  # the same, standalone: its pictures inside it
    assert '<a href="lenet_bn-cpu-seed1/">lenet_bn-cpu-seed1</a>' in page and "<td>0.779 / 0.789</td>" in page
    assert page.count('src="data:image/png;base64,iVBOR') == 2 and "report-curves.png" not in page

    no_training(monkeypatch)
    again = sweep(out, idx_dir)
    assert {r.outcome for r in again.runs} == {"read back"}
    assert report_bytes(out) == written

    for name in REPORT_FILES:
        (out / name).unlink()
    reproduce(out_dir=out, report_only=True)
    assert report_bytes(out) == written


def test_a_sweep_interrupted_mid_run_is_finished_by_the_next_call(idx_dir, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    real_fit = moderncnn.train.fit

    def interrupted_after_one_epoch(*args, **kwargs):
        def stop(record):
            raise KeyboardInterrupt

        return real_fit(*args, **{**kwargs, "on_epoch_end": stop})

    monkeypatch.setattr(moderncnn.train, "fit", interrupted_after_one_epoch)
    with pytest.raises(KeyboardInterrupt):
        sweep(out, idx_dir, seeds=1)
    meta = json.loads((out / "lenet-cpu-seed0" / "run.json").read_text())
    assert meta["status"] == "interrupted" and meta["epochs_done"] == 1
    assert "| interrupted | 1/2 |" in (out / "report.md").read_text()  # the report of what was done

    monkeypatch.setattr(moderncnn.train, "fit", real_fit)
    done = sweep(out, idx_dir, seeds=1)
    assert [r.outcome for r in done.runs] == ["trained", "trained"]
    meta = json.loads((out / "lenet-cpu-seed0" / "run.json").read_text())
    assert meta["status"] == "finished" and meta["epochs_done"] == 2 and "resumed_at" in meta
    assert len((out / "lenet-cpu-seed0" / "metrics.jsonl").read_text().splitlines()) == 2


def test_past_the_time_budget_no_run_starts_and_what_is_done_is_reported(idx_dir, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    sweep(out, idx_dir, seeds=1, experiments=["lenet"])
    no_training(monkeypatch)
    cut = sweep(out, idx_dir, seeds=2, time_budget=0)
    assert [(r.experiment, r.seed, r.outcome) for r in cut.runs] == [
        ("lenet", 0, "read back"), ("lenet", 1, "not run"), ("lenet_bn", 0, "not run"), ("lenet_bn", 1, "not run")]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["lenet-cpu-seed0"]
    text = (out / "report.md").read_text()
    assert "| lenet (cpu scale) |" in text and "lenet_bn (cpu scale)" not in text
    assert "not run yet (the time budget was spent, or the sweep was stopped): lenet-cpu-seed1, " \
           "lenet_bn-cpu-seed0, lenet_bn-cpu-seed1." in text


def test_cpu_scale_reductions_are_applied_recorded_and_said_in_every_row(idx_dir, tmp_path):
    out = tmp_path / "sweep"
    sweep(out, idx_dir, seeds=1, experiments=["lenet"])
    recipe = json.loads((out / "lenet-cpu-seed0" / "run.json").read_text())["recipe"]
    assert (recipe["epochs"], recipe["subset"], recipe["test_subset"]) == (2, 64, 50)
    assert recipe["lr"] == BOOK_RECIPES["lenet"].lr and recipe["book"] == "lenet"
    assert f"{NOT_BOOK}: a test's few steps" in recipe["based_on"]
    text = (out / "report.md").read_text()
    assert text.splitlines()[0].startswith("# ") and NOT_BOOK in text.splitlines()[0]
    results = text.split("\n## Results\n")[1].split("\n## ")[0]
    rows = [line for line in results.splitlines() if line.startswith("| lenet")]
    assert len(rows) == 1 and NOT_BOOK in rows[0]
    assert "epochs 2 (book 10)" in rows[0] and "subset 64 (book all 60,000)" in rows[0]


def test_runs_of_other_settings_are_never_averaged_together(idx_dir, tmp_path):
    out = tmp_path / "sweep"
    reproduce(["lenet"], out, scale="book", device="cpu", data_dir=idx_dir)  # 10 epochs of one step each
    sweep(out, idx_dir, seeds=1, experiments=["lenet"])
    text = (out / "report.md").read_text()
    assert text.splitlines()[0].endswith(f"(some rows: {NOT_BOOK})")
    assert "\n| lenet | the book's | 0 |" in text and "\n| lenet (cpu scale) | **not the book's settings**" in text
    assert "[lenet-book-seed0](lenet-book-seed0/) | finished | 10/10 |" in text


@pytest.mark.parametrize("name", sorted(BOOK_RECIPES))
def test_cpu_scale_keeps_the_book_form_and_recipe_but_for_its_named_reductions(name):
    book, cpu = BOOK_RECIPES[name], experiment_recipe(name, "cpu")
    changed = {k for k, _ in cpu.differences(book, ignore=()).items()} - {"based_on"}
    assert changed == set(CPU_SCALE[name].changes)
    assert changed <= {"resize", "subset", "epochs", "test_subset"}
    assert cpu.model_kwargs == book.model_kwargs and experiment_recipe(name, "book") == book
    assert (NOT_BOOK in cpu.based_on) == bool(changed)


def test_the_cpu_scale_fits_in_an_hour_as_predicted():
    assert sum(r.minutes for r in CPU_SCALE.values()) < 60 and set(CPU_SCALE) == set(BOOK_RECIPES)


def test_a_diverged_run_is_reported_and_not_trained_again(idx_dir, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    sweep(out, idx_dir, seeds=1, experiments=["lenet"])
    run_json = out / "lenet-cpu-seed0" / "run.json"
    meta = json.loads(run_json.read_text())
    run_json.write_text(json.dumps({**meta, "status": "diverged"}))
    no_training(monkeypatch)
    again = sweep(out, idx_dir, seeds=1, experiments=["lenet"])
    assert [r.outcome for r in again.runs] == ["diverged"]
    text = (out / "report.md").read_text()
    assert "| -; 1 diverged | - |" in text and "| diverged | 2/2 |" in text


def test_a_failed_run_does_not_stop_the_sweep(idx_dir, tmp_path, monkeypatch):
    real_fit = moderncnn.train.fit

    def lenet_fails(model, *args, **kwargs):
        if model == "lenet":
            raise RuntimeError("no memory left")
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(moderncnn.train, "fit", lenet_fails)
    result = sweep(tmp_path / "sweep", idx_dir, seeds=1)
    assert [(r.experiment, r.outcome) for r in result.runs] == [("lenet", "failed"), ("lenet_bn", "trained")]
    assert "no memory left" in result.failed[0].detail


def test_the_report_reads_runs_written_elsewhere(tmp_path):
    """The H100 runs in docs/results: folders of run.json and metrics.jsonl only, with no manifest."""
    out = tmp_path / "h100"
    shutil.copytree(H100_RUNS, out)
    text = write_report(out).read_text()
    assert NOT_BOOK not in text.splitlines()[0]
    for name in BOOK_RECIPES:
        assert f"\n| {name} | the book's |" in text
    assert "| nin | the book's | 0,1,2 |" in text and "| 1 | vgg11_book 0.920 | vgg11_book 0.920 |" in text
    assert text == (H100_RUNS / "report.md").read_text(), "docs/results/h100/runs/report.md is out of date: " \
        "moderncnn reproduce --report-only --out docs/results/h100/runs"


@pytest.mark.parametrize("kw, message", [
    ({"experiments": ["lenet", "nosuch"]}, "unknown experiment nosuch"),
    ({"seeds": 0}, "--seeds must be a whole number >= 1"),
    ({"scale": "gpu"}, "unknown scale 'gpu'"),
    ({"scale": "book"}, "use them with scale='cpu'"),
    ({"time_budget": -1}, "--time-budget must be seconds >= 0"),
])
def test_bad_input_is_refused_before_anything_runs(kw, message, idx_dir, tmp_path):
    with pytest.raises(ValueError, match=message):
        sweep(tmp_path / "sweep", idx_dir, **kw)
    assert not (tmp_path / "sweep").exists()


def test_the_command_line_sweeps_and_says_its_reductions(idx_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["reproduce", "lenet", "--out", str(out), "--scale", "cpu", "--data-dir", str(idx_dir),
                 "--device", "cpu", "--time-budget", "0"])
    stdout, err = capsys.readouterr()
    assert code == 0 and f"report: {out / 'report.md'}" in stdout
    assert f"lenet: {', '.join(f'{k} {v}' for k, v in CPU_SCALE['lenet'].changes.items())}" in err
    assert "lenet seed 0: not run (time budget spent)" in err

    code = main(["reproduce", "nosuch", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("moderncnn reproduce: error: unknown experiment nosuch")
    code = main(["reproduce", "--report-only", "--out", str(tmp_path / "none")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is not a folder of runs" in err[0]
    code = main(["reproduce", "lenet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "give the sweep's folder: --out DIR" in err[0]

    (out / "report.md").unlink()
    assert main(["reproduce", "--report-only", str(out)]) == 0 and (out / "report.md").is_file()
