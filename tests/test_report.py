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
