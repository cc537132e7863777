"""--time-budget, the fast recipe and test-time flip, on tiny data (no timing is asserted: fake timings)."""

from __future__ import annotations

import json
import time

import pytest
import torch

import moderncnn.train.budget as budget
from moderncnn.checkpoint import Preprocessing
from moderncnn.cli import main
from moderncnn.data import augment_batch
from moderncnn.evaluate import evaluate
from moderncnn.recipes import FAST_RECIPES, Recipe, get_recipe
from moderncnn.train import fit
from moderncnn.train.budget import BudgetTooSmall, epochs_that_fit
from moderncnn.train.metadata import check_resumable

from fixtures import offline, write_fashion_idx  # noqa: F401 - offline: a fixture, used by pytestmark
from test_train import toy

pytestmark = pytest.mark.usefixtures("offline")


@pytest.mark.parametrize("budget_s, spent, epoch, finish", [(60, 3.0, 7.0, 0.3), (15, 2.5, 1.9, 0.3),
                                                           (300, 4.0, 11.3, 0.0), (30, 0.0, 28.0, 0.0)])
def test_the_epochs_chosen_are_the_most_that_fit(budget_s, spent, epoch, finish):
    n = epochs_that_fit(budget_s, spent, epoch, finish, margin=0.05)
    assert n >= 1
    assert spent + n * epoch + finish <= budget_s * 0.95
    assert spent + (n + 1) * epoch + finish > budget_s * 0.95


def test_a_budget_too_small_names_the_smallest_that_fits():
    with pytest.raises(BudgetTooSmall, match=r"give at least --time-budget 9\b") as e:
        epochs_that_fit(5, spent=3.0, epoch=5.0, finish=0.0, margin=0.1)  # (3 + 5) / 0.9 = 8.9
    assert "\n" not in str(e.value)
    assert epochs_that_fit(9, spent=3.0, epoch=5.0, finish=0.0, margin=0.1) == 1
    with pytest.raises(ValueError, match="> 0"):
        epochs_that_fit(float("nan"), 1.0, 1.0)


def fake_measure(step, test, commit):
    return lambda loop, recipe, device, test_size: (step, test, commit)


def test_fit_records_the_budget_and_trains_the_epochs_chosen(tmp_path, monkeypatch):
    # one step an epoch (64 images, batch 64) of a faked 1 s, 0.5 s of test and of commit: 2 s an epoch
    monkeypatch.setattr(budget, "measure_epoch", fake_measure(1.0, 0.5, 0.5))
    monkeypatch.setattr("moderncnn.train.trainer.measure_epoch", budget.measure_epoch)
    result = fit("fastnet", "fast", tmp_path / "run", "cpu", train_data=toy(64, "train"), test_data=toy(16, "test"),
                 batch_size=64, lr=0.02, quiet=True, time_budget=12, budget_start=time.time() - 1)  # one step
    # an epoch at fastnet's 0.2 explodes on noise (loss 17.9 on 4 classes), which would stop the run
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    chosen = meta["time_budget"]
    assert 1 <= chosen["spent"] < 6  # a second before the call, and the start-up of a first run
    expected = int((12 * (1 - budget.MARGIN) - chosen["spent"] - budget.FINISH_SECONDS) // 2.0)
    assert chosen["epochs"] == meta["recipe"]["epochs"] == len(result.history) == expected
    assert chosen["budget"] == 12 and chosen["step_seconds"] == 1.0
    assert chosen["steps_per_epoch"] == 1 and chosen["epoch_seconds"] == 2.0


def test_the_measurement_leaves_the_run_as_it_was(tmp_path, monkeypatch):
    """The run with a budget trains as the run without one of as many epochs: same weights at the end."""
    monkeypatch.setattr("moderncnn.train.trainer.epochs_that_fit", lambda *a, **k: 2)  # a real measurement
    data = dict(train_data=toy(96, "train"), test_data=toy(16, "test"), batch_size=32, lr=0.02, quiet=True,
                device="cpu")  # at fastnet's 0.2, two steps an epoch of noise explode (test_fit_records_...)
    timed = fit("fastnet", "fast", time_budget=600, budget_start=time.time(), subset=64, **data)
    assert timed.metadata["time_budget"]["step_seconds"] > 0 and timed.recipe.epochs == 2
    plain = fit("fastnet", "fast", epochs=timed.recipe.epochs, subset=64, **data)
    for a, b in zip(timed.model.state_dict().values(), plain.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_epochs_and_a_budget_together_are_refused(tmp_path):
    with pytest.raises(ValueError, match="drop --epochs"):
        fit("fastnet", "fast", time_budget=10, epochs=3, train_data=toy(8, "train"), test_data=toy(8, "test"))
    for bad in (0, -1, float("inf"), True):
        with pytest.raises(ValueError, match="number of seconds > 0"):
            fit("fastnet", "fast", time_budget=bad, train_data=toy(8, "train"), test_data=toy(8, "test"))


def test_cli_budget_errors_are_one_line(tmp_path, capsys):
    data = str(write_fashion_idx(tmp_path / "fashion", train=64, test=16))
    common = ["train", "fastnet", "--recipe", "fast", "--data-dir", data, "--no-download", "--quiet"]
    code = main([str(a) for a in common + ["--time-budget", "0.5", "--out", tmp_path / "small"]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "fits no epoch" in err[0] and "give at least --time-budget " in err[0]
    code = main([str(a) for a in common + ["--time-budget", "10", "--epochs", "2", "--out", tmp_path / "both"]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "drop --epochs" in err[0]
    with pytest.raises(SystemExit):
        main(common + ["--time-budget", "soon"])
    assert "--time-budget must be a number of seconds" in capsys.readouterr().err


def test_the_fast_recipe_exists_where_it_was_made_and_says_so_elsewhere():
    assert set(FAST_RECIPES) >= {"lenet_bn", "fastnet"}
    for name, recipe in FAST_RECIPES.items():
        assert get_recipe(name, "fast") == recipe and recipe.name == "fast"
    with pytest.raises(ValueError, match="no fast recipe for alexnet: it exists for lenet_bn, fastnet"):
        get_recipe("alexnet", "fast")
    with pytest.raises(ValueError, match="crop_padding"):
        Recipe(model="x", crop_padding=-1)


def test_a_flip_only_augmentation_mirrors_or_keeps_each_image():
    x = torch.arange(6 * 2 * 5 * 5, dtype=torch.float32).view(6, 2, 5, 5)
    out = augment_batch(x, 0, torch.Generator().manual_seed(0))
    kept = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert (kept | mirrored).all() and kept.any() and mirrored.any()


def test_eval_tests_with_the_flip_the_run_tested_with(tmp_path, capsys):
    data = write_fashion_idx(tmp_path / "fashion", train=96, test=40)
    out = tmp_path / "run"
    assert main(["train", "fastnet", "--recipe", "fast", "--epochs", "1", "--batch-size", "32", "--data-dir",
                 str(data), "--no-download", "--quiet", "--out", str(out)]) == 0
    meta = json.loads((out / "run.json").read_text())
    assert meta["input"]["test_flip"] is True
    capsys.readouterr()
    assert main(["eval", str(out), "--data-dir", str(data), "--no-download"]) == 0
    said = capsys.readouterr().out
    assert f"test acc {meta['final']['test_acc']:.3f}" in said


def test_evaluate_sums_the_logits_of_the_mirror_image():
    class LeftHalf(torch.nn.Module):  # sees only the left half: the mirror shows it the right
        num_classes = 2

        def forward(self, x):
            left = x[..., : x.shape[-1] // 2].mean((1, 2, 3))
            return torch.stack([left, 1 - left], 1)

    x = torch.zeros(4, 1, 4, 4)
    x[:2, ..., :2] = 1  # bright on the left: class 0 unflipped
    x[2:, ..., 2:] = 1  # bright on the right: a tie with its mirror, which argmax gives to class 0
    y = torch.tensor([0, 0, 1, 1])
    batches = [(x, y)]
    plain = evaluate(LeftHalf(), batches, "cpu", classes=["a", "b"])
    flipped = evaluate(LeftHalf(), batches, "cpu", classes=["a", "b"], test_flip=True)
    logits = LeftHalf()(x) + LeftHalf()(x.flip(3))
    assert flipped["accuracy"] == (logits.argmax(1) == y).float().mean().item()
    assert plain["accuracy"] == 1.0 and flipped["accuracy"] != plain["accuracy"]


def test_runs_from_before_the_new_recipe_values_still_load_and_resume():
    old_input = {"channels": 1, "size": 28, "resize": None, "normalize": None}
    assert Preprocessing.from_meta({"input": old_input, "data": {"classes": ["a"]}}).test_flip is False
    recipe = get_recipe("lenet_bn", "modern").as_dict()
    here = {"recipe": dict(recipe), "model": "lenet_bn", "model_kwargs": {}, "seed": 0, "data": {"name": "x"}}
    old = {**here, "recipe": {k: v for k, v in recipe.items() if k not in ("crop_padding", "test_flip")}}
    check_resumable(old, here, "runs/x")  # no error: the old run trained with the defaults
    changed = {**here, "recipe": {**recipe, "test_flip": True}}
    with pytest.raises(ValueError, match="test_flip"):
        check_resumable(old, changed, "runs/x")


def test_a_resumed_budget_run_keeps_the_epochs_it_chose(tmp_path, monkeypatch):
    monkeypatch.setattr("moderncnn.train.trainer.measure_epoch", fake_measure(1.0, 0.5, 0.5))
    kw = dict(train_data=toy(64, "train"), test_data=toy(16, "test"), batch_size=64, lr=0.02, quiet=True,
              device="cpu", time_budget=30)
    first = fit("fastnet", "fast", tmp_path / "run", budget_start=time.time(), **kw)
    monkeypatch.setattr("moderncnn.train.trainer.measure_epoch", fake_measure(100.0, 0.5, 0.5))  # would fit none
    again = fit("fastnet", "fast", tmp_path / "run", resume=True, budget_start=time.time(), **kw)
    assert again.recipe.epochs == first.recipe.epochs == len(again.history) > 1
    assert again.metadata["time_budget"] == first.metadata["time_budget"]
