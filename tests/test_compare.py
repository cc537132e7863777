"""compare: models by name and trained runs side by side (library and command line)."""

from __future__ import annotations

import json

import pytest
import torch

from moderncnn import compare, create_model, fit, summary
from moderncnn.cli import main
from moderncnn.compare import format_comparison, plot_runs
from moderncnn.data import ImageDataset


def toy(n: int, split: str) -> ImageDataset:
    g = torch.Generator().manual_seed(int(split == "test"))
    y = torch.arange(n) % 4
    x = (torch.rand(n, 1, 28, 28, generator=g) * 80).to(torch.uint8)
    x[torch.arange(n), 0, 2 * y + 1] = 255
    return ImageDataset(x, y, [f"c{i}" for i in range(4)], "toy", split, "in memory")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished lenet run, a finished lenet_bn run, and a lenet_bn run stopped after 1 of 3 epochs."""
    root = tmp_path_factory.mktemp("runs")
    kw = dict(train_data=toy(128, "train"), test_data=toy(32, "test"), batch_size=32, quiet=True, amp=False)
    fit("lenet", "book", root / "lenet", epochs=1, **kw)
    fit("lenet_bn", "book", root / "lenet_bn", epochs=2, **kw)

    def stop(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit("lenet_bn", "book", root / "stopped", epochs=3, on_epoch_end=stop, **kw)
    return root


def test_models_by_name_cost_what_summary_counts():
    rows = compare(["lenet", "resnet1*"])
    assert [r["model"] for r in rows] == ["lenet", "resnet101", "resnet152", "resnet18", "resnet18_book"]
    for row in rows[:1] + rows[-2:]:
        model = create_model(row["model"])
        totals = summary(model, model.default_input_size).totals
        assert (row["params"], row["macs"]) == (totals.params, totals.macs)
        assert row["input"] == "x".join(map(str, model.default_input_size)) and "run" not in row
    small = compare(["resnet18"], input_size=(1, 64, 64), num_classes=10)[0]
    model = create_model("resnet18", num_classes=10, in_channels=1)
    assert small["params"] == sum(p.numel() for p in model.parameters()) and small["input"] == "1x64x64"
    assert small["macs"] == summary(model, (1, 64, 64)).totals.macs


def test_runs_show_their_results_and_the_cost_at_their_trained_size(runs):
    rows = compare([runs / "lenet", runs / "lenet_bn", runs / "stopped", "lenet"])
    lenet, bn, stopped, by_name = rows
    meta = json.loads((runs / "lenet" / "run.json").read_text())
    assert lenet["test_acc"] == meta["final"]["test_acc"] and lenet["examples_per_sec"] == meta["final"][
        "examples_per_sec"]
    assert (lenet["epochs"], lenet["recipe"], lenet["data"], lenet["status"]) == ("1/1", "book", "toy", "finished")
    assert lenet["params"] == sum(p.numel() for p in create_model("lenet", num_classes=4).parameters())
    assert lenet["params"] != by_name["params"], "the run's 4 classes, not the default 10"
    assert bn["epochs"] == "2/2" and len(bn["history"]) == 2
    assert bn["wall_seconds"] > 0 and bn["wall_seconds"] == pytest.approx(sum(h["wall_seconds"]
                                                                                for h in bn["history"]))
    last = json.loads((runs / "stopped" / "metrics.jsonl").read_text().splitlines()[-1])
    assert (stopped["epochs"], stopped["status"], stopped["test_acc"]) == ("1/3", "interrupted", last["test_acc"])

    ranked = compare([runs / "lenet", "lenet", runs / "lenet_bn"], sort="test_acc")
    accs = [r.get("test_acc") for r in ranked]
    assert accs[-1] is None and accs[:2] == sorted(accs[:2], reverse=True), "best first, models by name last"
    assert [r["model"] for r in compare(["alexnet", "lenet"], sort="params")] == ["lenet", "alexnet"]


def test_tables_and_curves(runs, tmp_path):
    names = format_comparison(compare(["lenet", "alexnet"])).splitlines()
    assert names[0].split() == ["model", "input", "params", "MACs"] and len(names) == 4
    assert names[3].split()[:3] == ["alexnet", "1x224x224", "46,764,746"]
    rows = compare([runs / "lenet", runs / "lenet_bn"])
    text = format_comparison(rows).splitlines()
    assert text[0].split()[:3] == ["run", "model", "input"] and "test acc" in text[0]
    markdown = format_comparison(rows, markdown=True).splitlines()
    assert markdown[0].startswith("| run | model |") and markdown[1].startswith("|---|---|")
    assert len(markdown) == 4 and f"| {rows[1]['test_acc']:.3f} |" in markdown[3]
    png = plot_runs(rows, tmp_path / "cmp.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_runs(compare(["lenet"]), tmp_path / "none.png")


@pytest.mark.parametrize("items, kwargs, message", [
    (["lenett"], {}, "unknown model 'lenett'; did you mean lenet"),
    (["zzz*"], {}, "no model matches 'zzz*'"),
    (["runs/nothing-here"], {}, "no such run directory: runs/nothing-here"),
    (["lenet"], {"sort": "speed"}, "cannot sort by 'speed'; use one of params, macs, test_acc, examples_per_sec"),
    (["alexnet"], {"input_size": (1, 28, 28)}, "alexnet needs images of 193x193 to 224x224 pixels"),
])
def test_bad_items_are_one_line_errors(items, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("*", r"\*").replace("(", r"\(")) as err:
        compare(items, **kwargs)
    assert "\n" not in str(err.value)


def test_a_directory_that_is_not_a_run(runs, tmp_path):
    with pytest.raises(ValueError, match="is not a run directory \\(no run.json\\)"):
        compare([tmp_path])
    assert [r["run"] for r in compare([runs])] == [str(runs / n) for n in ("lenet", "lenet_bn", "stopped")]
    assert compare([runs / "lenet" / "model.safetensors"])[0]["run"] == str(runs / "lenet")


def test_command_line(runs, tmp_path, capsys):
    png = tmp_path / "curves.png"
    assert main(["compare", str(runs / "lenet"), str(runs / "lenet_bn"), "lenet", "--sort", "test_acc",
                 "--plot", str(png)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["run", "model"] and out[-1] == f"curves: {png}" and png.exists()
    assert main(["compare", "lenet5", "vgg11", "--input", "1x32x32", "--num-classes", "10", "--markdown"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| model | input | params | MACs |" and out[3].startswith("| vgg11 | 1x32x32 | 128,806,154 |")
    assert main(["compare", "lenet", "--plot", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "moderncnn compare: error: --plot draws trained runs' curves: give run directories " \
                  "(written by 'moderncnn train')"
    assert not (tmp_path / "x.png").exists()


def test_a_runs_model_arguments_are_part_of_its_name(tmp_path):
    run = tmp_path / "vgg"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({
        "model": "vgg11_book", "model_kwargs": {"num_classes": 10, "in_channels": 1, "ratio": 8},
        "input": {"channels": 1, "size": 224}, "recipe": {"name": "book", "epochs": 10}, "epochs_done": 0,
        "status": "interrupted"}))
    row = compare([run])[0]
    assert row["model"] == "vgg11_book (ratio=8)" and row["epochs"] == "0/10" and row["test_acc"] is None
    assert row["params"] == sum(p.numel() for p in create_model("vgg11_book", ratio=8).parameters())


def test_a_model_that_cannot_be_built_on_the_meta_device_is_measured_on_the_cpu(monkeypatch):
    import moderncnn.registry as registry

    def picky(num_classes: int = 10, in_channels: int = 1):
        model = create_model("lenet", num_classes=num_classes, in_channels=in_channels)
        float(model[0].weight.detach().sum())  # needs real data: fails on the meta device
        return model

    monkeypatch.setitem(registry._MODELS, "picky", picky)
    row = compare(["picky"])[0]
    assert (row["params"], row["macs"]) == (compare(["lenet"])[0]["params"], compare(["lenet"])[0]["macs"])
