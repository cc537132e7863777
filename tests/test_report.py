"""What a finished run prints beside its figures."""

from __future__ import annotations

from moderncnn.recipes import get_recipe
from moderncnn.train.report import closing_notes


def history(*test_accs: float) -> list[dict]:
    return [{"epoch": i + 1, "test_acc": a} for i, a in enumerate(test_accs)]


def test_a_book_run_whose_test_accuracy_swings_says_so():
    book = get_recipe("lenet_bn", "book")
    (note,) = closing_notes(False, 60000, None, book, history(0.80, 0.844, 0.835, 0.782))
    assert "0.844, 0.835, 0.782" in note and "compare means over seeds" in note
    assert closing_notes(False, 60000, None, book, history(0.80, 0.851, 0.848, 0.859)) == []
    assert closing_notes(False, 60000, None, book, history(0.844, 0.782)) == [], "too few epochs to tell"
    assert closing_notes(False, 60000, None, get_recipe("lenet_bn", "modern"), history(0.844, 0.835, 0.782)) == []


def test_a_run_that_only_climbs_is_not_said_to_swing():
    book = get_recipe("lenet", "book")
    assert closing_notes(False, 60000, None, book, history(0.1, 0.262, 0.604, 0.721)) == []
    (note,) = closing_notes(False, 60000, None, book, history(0.262, 0.721, 0.604))
    assert "swings" in note


def run_history(*pairs: tuple[float, float], examples: int = 3000) -> list[dict]:
    return [{"epoch": i + 1, "loss": loss, "test_acc": acc, "examples": examples} for i, (loss, acc) in
            enumerate(pairs)]


def test_a_run_that_ends_at_chance_says_so_with_the_likely_cause():
    book = get_recipe("lenet", "book")
    stuck = run_history(*[(2.31, 0.1)] * 10)
    on_sample = closing_notes(True, 3000, None, book, stuck, classes=10)
    assert "test acc 0.100 is chance for 10 classes" in on_sample[0] and "uniform guess's (2.30)" in on_sample[0]
    assert "120 steps in all" in on_sample[0] and "--data-dir" in on_sample[0]
    assert "embedded sample" in on_sample[1] and "notice above" not in on_sample[1]
    (full,) = closing_notes(False, 60000, None, book, stuck, classes=10)
    assert "lr 0.9 may not suit lenet" in full and "--recipe modern" in full
    assert closing_notes(False, 60000, None, book, run_history((0.5, 0.81)), classes=10) == []
    assert closing_notes(False, 60000, None, book, run_history((1.1, 0.2)), classes=2) != [], "0.2 of 2 classes"
