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
from moderncnn.train.budget import BudgetTooSmall
from moderncnn.train.metadata import check_resumable

from fixtures import offline, write_fashion_idx  # noqa: F401 - offline: a fixture, used by pytestmark
from test_train import toy

pytestmark = pytest.mark.usefixtures("offline")


M = budget.Measured  # step, test pass, commit, curves (seconds)


@pytest.mark.parametrize("budget_s, spent, per_epoch, measured", [
    (60, 3.0, 235, M(0.03, 0.7, 0.05, 0.4)), (15, 2.5, 235, M(0.008, 0.3, 0.02, 0.3)),
    (300, 4.0, 235, M(0.045, 0.7, 0.05, 0.4)), (30, 0.0, 10, M(2.5, 1.0, 0.0, 0.0))])
def test_the_steps_chosen_are_the_most_that_fit(budget_s, spent, per_epoch, measured):
    steps = budget.steps_that_fit(budget_s, spent, per_epoch, measured, finish=0.3, margin=0.05)
    assert steps >= per_epoch
    for n, fits in ((steps, True), (steps + 1, False)):
        epochs = -(-n // per_epoch)
        total = spent + n * measured.step + epochs * (measured.commit + measured.curves) + measured.test + 0.3
        assert (total <= budget_s * 0.95) == fits, (n, total)


def test_a_budget_too_small_names_the_smallest_that_fits():
    one = M(1.0, 0.5, 0.25, 0.25)  # an epoch of 3 steps: 3 + 0.5 + 0.25 + 0.25 = 4 s
    with pytest.raises(BudgetTooSmall, match=r"give at least --time-budget 8\b") as e:
        budget.steps_that_fit(7, 3.0, 3, one, finish=0.0, margin=0.1)  # (3 + 4) / 0.9 = 7.8
    assert "\n" not in str(e.value)
    assert budget.steps_that_fit(8, 3.0, 3, one, finish=0.0, margin=0.1) == 3
    with pytest.raises(ValueError, match="> 0"):
        budget.steps_that_fit(float("nan"), 1.0, 3, one)


def fake_measure(step, test, commit, curves=0.0):
    return lambda loop, recipe, device, test_size, seconds: M(step, test, commit, curves)


def test_fit_records_the_budget_and_trains_the_steps_chosen(tmp_path, monkeypatch):
    # two steps an epoch (64 images, batch 32) of a faked 4 s each, a 0.5 s test pass and commit
    monkeypatch.setattr("moderncnn.train.trainer.measure", fake_measure(4.0, 0.5, 0.5))
    result = fit("fastnet", "fast", tmp_path / "run", "cpu", train_data=toy(64, "train"), test_data=toy(16, "test"),
                 batch_size=32, lr=0.02, quiet=True, time_budget=60, budget_start=time.time() - 1)
    # an epoch at fastnet's 0.2 explodes on noise (loss 17.9 on 4 classes), which would stop the run
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    chosen = meta["time_budget"]
    assert chosen["spent"] >= 1  # a second before the call, and the start-up of the run
    left = 60 * (1 - budget.MARGIN) - chosen["spent"] - budget.FINISH_SECONDS - 0.5  # the one test pass
    expected = max(n for n in range(2, 20) if 4 * n + 0.5 * -(-n // 2) <= left)  # the steps, a commit an epoch
    assert chosen["steps"] == expected and chosen["epochs"] == meta["recipe"]["epochs"] == -(-expected // 2)
    assert len(result.history) == chosen["epochs"] and sum(h["examples"] for h in result.history) == 32 * expected
    assert chosen["budget"] == 60 and chosen["step_seconds"] == 4.0 and chosen["steps_per_epoch"] == 2
    # tested once: after the last step
    assert [h["test_acc"] is None for h in result.history] == [True] * (len(result.history) - 1) + [False]
    assert result.final["test_acc"] == result.history[-1]["test_acc"]
    assert (tmp_path / "run" / "curves.png").is_file()


def test_the_measurement_leaves_the_run_as_it_was(tmp_path, monkeypatch):
    """The run with a budget trains as the run without one of as many epochs: same weights at the end."""
    monkeypatch.setattr("moderncnn.train.trainer.steps_that_fit", lambda *a, **k: 4)  # a real measurement
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


def test_a_resumed_budget_run_keeps_the_steps_it_chose(tmp_path, monkeypatch):
    """Interrupted after its first epoch, a budget run of 2.5 epochs resumes to the same weights as one that
    was never interrupted: its schedule, its cut last epoch and its one test pass are the start's."""
    monkeypatch.setattr("moderncnn.train.trainer.steps_that_fit", lambda *a, **k: 5)  # 2 steps an epoch
    kw = dict(train_data=toy(64, "train"), test_data=toy(16, "test"), batch_size=32, lr=0.02, quiet=True,
              device="cpu", time_budget=30)
    whole = fit("fastnet", "fast", tmp_path / "whole", budget_start=time.time(), **kw)

    def stop(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit("fastnet", "fast", tmp_path / "run", budget_start=time.time(), on_epoch_end=stop, **kw)
    monkeypatch.setattr("moderncnn.train.trainer.steps_that_fit", lambda *a, **k: 100)  # a new choice: unused
    again = fit("fastnet", "fast", tmp_path / "run", resume=True, budget_start=time.time(), **kw)
    assert again.recipe.epochs == whole.recipe.epochs == len(again.history) == 3
    assert [h["examples"] for h in again.history] == [64, 64, 32]
    assert again.metadata["time_budget"]["steps"] == 5
    for a, b in zip(whole.model.state_dict().values(), again.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_replay_of_a_budget_run_says_it_trains_whole_epochs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("moderncnn.train.trainer.steps_that_fit", lambda *a, **k: 3)  # 1.5 epochs of 2 steps
    data = str(write_fashion_idx(tmp_path / "fashion", train=64, test=16))
    first = tmp_path / "first"
    assert main(["train", "fastnet", "--recipe", "fast", "--data-dir", data, "--no-download", "--quiet",
                 "--batch-size", "32", "--lr", "0.02", "--time-budget", "60", "--out", str(first)]) == 0
    capsys.readouterr()
    assert main(["train", "--like", str(first), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"note: {first} was fitted to a 60.0 s time budget (3 steps, its last epoch cut short); this replay " \
           "trains 2 whole epochs: add --time-budget 60.0" in err
    assert json.loads((tmp_path / "again" / "run.json").read_text())["recipe"]["epochs"] == 2
