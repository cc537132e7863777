"""The report of a sweep (:mod:`moderncnn.reproduce`), written from its run directories alone.

``DIR/report.md`` and its pictures (``report-curves.png``: every experiment's curves; ``report-test-acc.png``:
the test accuracy per epoch of all of them on one plot), and ``DIR/report.html``, the same in one file that
can be mailed or opened anywhere (its pictures inside it). Each run directory under DIR holding a run.json of one
of the book's experiments counts, whoever wrote it (``moderncnn train``, an older sweep, a folder of runs
copied from a GPU). Runs are grouped by experiment and by their exact settings, so that runs of other settings
are never averaged together; a group whose recipe is not the book's says so in its row, and then the title
says so too. ``DIR/reproduce.json``, where a sweep left it, names the runs it asked for: those missing are
listed.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .figures import new_figure, save_figure
from .recipes import BOOK_BUILDS, BOOK_FIGURES, BOOK_RECIPES, as_recorded_then
from .storage import atomic_write

__all__ = ["RunRecord", "read_runs", "write_report"]

REPORT = "report.md"
HTML = "report.html"
#: What a sweep leaves beside its run directories: the runs it asked for (:mod:`moderncnn.reproduce`).
MANIFEST = "reproduce.json"
CURVES = "report-curves.png"
TEST_ACC = "report-test-acc.png"
NOT_BOOK = "not the book's settings"
#: Recipe values that do not change what is trained: left out when a run's settings are compared with the book's.
_SAME_RUN = ("based_on", "book")


@dataclass(frozen=True)
class RunRecord:
    """One run directory as the report reads it."""

    name: str
    meta: dict[str, Any]
    history: list[dict[str, Any]]

    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def status(self) -> str:
        return str(self.meta.get("status"))

    @property
    def final(self) -> dict[str, Any]:
        return self.meta.get("final") if isinstance(self.meta.get("final"), dict) else {}

    @property
    def changes(self) -> tuple[tuple[str, Any, Any], ...]:
        """``(value, ours, the book's)`` for each recipe value that is not the book's."""
        ours = as_recorded_then(self.meta["recipe"])
        book = BOOK_RECIPES[self.model].as_dict()
        changes = [(k, _hashable(ours.get(k)), _hashable(v)) for k, v in book.items()
                   if k not in _SAME_RUN and ours.get(k) != v]
        data = self.meta.get("data") if isinstance(self.meta.get("data"), dict) else {}
        if data.get("is_sample"):  # the same recipe on the embedded sample is not the book's experiment either
            changes.append(("data", "the embedded sample", "Fashion-MNIST"))
        return tuple(changes)

    @property
    def wall_seconds(self) -> float:
        return sum(h.get("wall_seconds") or 0.0 for h in self.history)

    @property
    def device(self) -> str:
        speed = self.meta.get("speed") if isinstance(self.meta.get("speed"), dict) else {}
        return f"{self.meta.get('device_name') or self.meta.get('device')}, {speed.get('amp_dtype') or 'fp32'}"


def _hashable(value: Any) -> Any:
    """A recipe value as a key of the run's group (``model_kwargs`` is a dict)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def read_runs(folder: Path) -> tuple[list[RunRecord], list[str]]:
    """The runs of book experiments in ``folder`` (sorted by name), and a note for each folder passed over."""
    runs, skipped = [], []
    for path in sorted(p for p in folder.iterdir() if (p / "run.json").is_file()):
        try:
            meta = json.loads((path / "run.json").read_text(encoding="utf-8"))
            metrics = path / "metrics.jsonl"
            lines = metrics.read_text(encoding="utf-8").splitlines() if metrics.is_file() else []
            history = [json.loads(line) for line in lines if line.strip()]
        except (OSError, ValueError) as e:
            skipped.append(f"{path.name}: unreadable ({type(e).__name__})")
            continue
        if not isinstance(meta, dict) or not isinstance(meta.get("recipe"), dict) \
                or meta.get("model") not in BOOK_RECIPES:
            skipped.append(f"{path.name}: not one of the book's experiments")
            continue
        runs.append(RunRecord(path.name, meta, history))
    return runs, skipped


def write_report(folder: str | Path) -> Path:
    """Write ``folder/report.md`` and its pictures from the run directories in ``folder``; its path."""
    folder = Path(folder)
    runs, skipped = read_runs(folder)
    groups = _groups(runs)
    _draw_curves(groups, folder / CURVES)
    _draw_test_acc(groups, folder / TEST_ACC)
    lines = _title(groups) + _results(groups) + _book_table(groups) + _ranking(groups)
    lines += _pictures() + _run_table(runs) + _missing(folder, runs, skipped)
    path = folder / REPORT
    atomic_write(path, ("\n".join(lines) + "\n").encode())
    atomic_write(folder / HTML, as_html(lines, folder).encode())
    return path


def as_html(lines: list[str], folder: Path) -> str:
    """The report's Markdown as one standalone HTML page: the little Markdown it writes (headings, tables,
    lists, pictures, links, bold, code), pictures embedded, every text escaped."""
    body, table = [], []
    for line in [*lines, ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not set("".join(cells)) <= set("-: "):  # the header's rule
                table.append(cells)
            continue
        if table:
            head, *rows = table
            body.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                        + "</table>")
            table = []
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            image = folder / src.rstrip(")")
            data = base64.b64encode(image.read_bytes()).decode() if image.is_file() else ""
            body.append(f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>')
        elif line.startswith("- "):
            body.append(f"<ul><li>{_inline(line[2:])}</li></ul>")
        elif line:
            body.append(f"<p>{_inline(line)}</p>")
    style = ("body{font-family:sans-serif;max-width:80em;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:2px 6px}"
             "img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(lines[0].lstrip('# '))}"
            f"</title><style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    """Markdown's inline marks, on escaped text: `code`, **bold**, [text](link)."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', text)


Group = tuple[str, tuple, list[RunRecord]]


def _groups(runs: list[RunRecord]) -> list[Group]:
    """``(experiment, changes, runs)``, in the chapter's order, one per experiment and settings."""
    by_key: dict[tuple[str, tuple], list[RunRecord]] = {}
    for run in runs:
        by_key.setdefault((run.model, run.changes), []).append(run)
    order = list(BOOK_RECIPES)
    keys = sorted(by_key, key=lambda k: (order.index(k[0]), repr(k[1])))
    return [(model, changes, by_key[(model, changes)]) for model, changes in keys]


def _finished(runs: list[RunRecord]) -> list[RunRecord]:
    return [r for r in runs if r.status == "finished" and r.final.get("test_acc") is not None]


def _label(model: str, changes: tuple) -> str:
    return model + (" (cpu scale)" if changes else "")


def _settings(changes: tuple, runs: list[RunRecord]) -> str:
    if not changes:
        return "the book's"
    shown = ", ".join(f"{k} {_value(k, ours)} (book {_value(k, book)})" for k, ours, book in changes)
    based_on = str(runs[0].meta["recipe"].get("based_on", ""))
    why = based_on.split(f"{NOT_BOOK}: ", 1)[1] if f"{NOT_BOOK}: " in based_on else ""
    return f"**{NOT_BOOK}**: {shown}" + (f"; {why}" if why else "")


def _value(key: str, value: Any) -> str:
    if value is None:
        return {"subset": "all 60,000", "test_subset": "all 10,000", "resize": "28"}.get(key, "-")
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _title(groups: list[Group]) -> list[str]:
    reduced = [bool(changes) for _, changes, _ in groups]
    note = (f" ({NOT_BOOK}: smaller runs, as each row says)" if reduced and all(reduced) else
            f" (some rows: {NOT_BOOK})" if any(reduced) else "")
    title = "# The book's chapter-7 experiments, reproduced" + note
    return [title, "",
            "Written by `moderncnn reproduce` from the run directories in this folder alone; `moderncnn reproduce "
            "--report-only DIR` writes it again. Test accuracy after the last epoch: mean +- standard deviation "
            "and min-max over seeds; images/s: training images per second (median over seeds); wall time: the "
            "epochs' wall time (training and testing) of one run, mean over seeds.", ""]


def _results(groups: list[Group]) -> list[str]:
    lines = ["## Results", "",
             "| experiment | settings | seeds | test acc | min-max | train loss | train acc | images/s | wall time "
             "| device, precision | book test acc (zh / en) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, changes, runs in groups:
        done = _finished(runs)
        others = sorted({r.status for r in runs} - {"finished"})
        seeds = ",".join(str(r.meta.get("seed")) for r in done) or "-"
        seeds += "".join(f"; {sum(r.status == s for r in runs)} {s}" for s in others)
        book = " / ".join(f"{BOOK_FIGURES[model][b].test_acc:.3f}" for b in BOOK_BUILDS)
        devices = "; ".join(sorted({r.device for r in done})) or "-"
        if not done:
            lines.append(f"| {_label(model, changes)} | {_settings(changes, runs)} | {seeds} | - | - | - | - | - | - "
                         f"| {devices} | {book} |")
            continue
        acc = [r.final["test_acc"] for r in done]
        sd = f" +- {statistics.stdev(acc):.3f}" if len(acc) > 1 else ""  # one seed has no spread
        speed = statistics.median(r.final.get("examples_per_sec") or 0.0 for r in done)
        lines.append(f"| {_label(model, changes)} | {_settings(changes, runs)} | {seeds} | "
                     f"{statistics.mean(acc):.3f}{sd} | {min(acc):.3f}-{max(acc):.3f} | "
                     f"{statistics.mean(r.final['loss'] for r in done):.3f} | "
                     f"{statistics.mean(r.final['train_acc'] for r in done):.3f} | {speed:,.0f} | "
                     f"{_duration(statistics.mean(r.wall_seconds for r in done))} | {devices} | {book} |")
    return lines + [""]


def _duration(seconds: float) -> str:
    if seconds < 100:
        return f"{seconds:.1f} s"
    if seconds < 6000:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _book_table(groups: list[Group]) -> list[str]:
    """The book's printed figures, both builds, for the experiments in the report."""
    lines = ["## The book's printed figures (one V100, 10 epochs, fp32)", "",
             "| experiment | " + " | ".join(f"{b}: loss / train acc / test acc, images/s" for b in BOOK_BUILDS) + " |",
             "|---|" + "---|" * len(BOOK_BUILDS)]
    for model in dict.fromkeys(m for m, _, _ in groups):
        figures = [BOOK_FIGURES[model][b] for b in BOOK_BUILDS]
        lines.append(f"| {model} | " + " | ".join(f"{f.loss:.3f} / {f.train_acc:.3f} / {f.test_acc:.3f}, "
                                                  f"{f.examples_per_sec:,.0f}" for f in figures) + " |")
    return lines + [""]


def _ranking(groups: list[Group]) -> list[str]:
    """Ours ranked by mean test accuracy beside each build's ranking of the same experiments, and how many
    pairs of experiments ours orders as the book does: the chapter's lesson, kept or not."""
    ours = {}
    for model, changes, runs in groups:
        done = _finished(runs)
        if done:
            ours[_label(model, changes)] = (model, statistics.mean(r.final["test_acc"] for r in done))
    if len(ours) < 2:
        return []
    ranked = sorted(ours.items(), key=lambda kv: -kv[1][1])
    books = {b: sorted(ranked, key=lambda kv: -BOOK_FIGURES[kv[1][0]][b].test_acc) for b in BOOK_BUILDS}
    lines = ["## Ranking by test accuracy", "",
             "| rank | ours | " + " | ".join(f"book {b}" for b in BOOK_BUILDS) + " |",
             "|---|---|" + "---|" * len(BOOK_BUILDS)]
    for i, (label, (_, acc)) in enumerate(ranked):
        row = [f"{label} {acc:.3f}"] + [f"{books[b][i][1][0]} {BOOK_FIGURES[books[b][i][1][0]][b].test_acc:.3f}"
                                        for b in BOOK_BUILDS]
        lines.append(f"| {i + 1} | " + " | ".join(row) + " |")
    lines.append("")
    for b in BOOK_BUILDS:
        agree, pairs = _pairs_agreeing([(v[0], v[1]) for v in ours.values()], b)
        lines.append(f"- pairs of experiments in the book {b}'s order: {agree} of {pairs}")
    first, *others = BOOK_BUILDS
    models = sorted({v[0] for v in ours.values()})
    for b in others:  # how far the book agrees with itself: no measure of ours can be asked to do better
        agree, pairs = _pairs_agreeing([(m, BOOK_FIGURES[m][first].test_acc) for m in models], b)
        lines.append(f"- for comparison, the book {first}'s pairs in the book {b}'s order: {agree} of {pairs}")
    return lines + [""]


def _pairs_agreeing(accs: list[tuple[str, float]], build: str) -> tuple[int, int]:
    agree = pairs = 0
    for i, (a, acc_a) in enumerate(accs):
        for b, acc_b in accs[i + 1:]:
            book_a, book_b = BOOK_FIGURES[a][build].test_acc, BOOK_FIGURES[b][build].test_acc
            if a == b or book_a == book_b:
                continue
            pairs += 1
            agree += (acc_a - acc_b) * (book_a - book_b) > 0
    return agree, pairs


def _pictures() -> list[str]:
    return ["## Curves", "", f"![every experiment's curves]({CURVES})", "",
            f"![test accuracy per epoch of every experiment]({TEST_ACC})", ""]


def _run_table(runs: list[RunRecord]) -> list[str]:
    lines = ["## Runs", "", "| run | status | epochs | test acc | images/s | wall time | device, precision | started |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        epochs = f"{r.meta.get('epochs_done', len(r.history))}/{r.meta['recipe'].get('epochs')}"
        acc = f"{r.final['test_acc']:.3f}" if r.final.get("test_acc") is not None else "-"
        speed = f"{r.final['examples_per_sec']:,.0f}" if r.final.get("examples_per_sec") else "-"
        lines.append(f"| [{r.name}]({r.name}/) | {r.status} | {epochs} | {acc} | {speed} | "
                     f"{_duration(r.wall_seconds)} | {r.device} | {r.meta.get('start_time', '-')} |")
    return lines + [""]


def _missing(folder: Path, runs: list[RunRecord], skipped: list[str]) -> list[str]:
    """The runs the last sweep asked for that are not here, and the folders passed over."""
    asked = []
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            asked = list(json.loads(manifest.read_text(encoding="utf-8")).get("runs", []))
        except (OSError, ValueError, AttributeError):
            asked = []
    present = {r.name for r in runs}
    lines = []
    absent = [name for name in asked if name not in present]
    if absent:
        lines += [f"Asked for and not run yet (the time budget was spent, or the sweep was stopped): "
                  f"{', '.join(absent)}.", ""]
    if skipped:
        lines += ["Passed over: " + "; ".join(skipped) + ".", ""]
    return lines


def _draw_curves(groups: list[Group], path: Path) -> None:
    """A grid, one panel per experiment and settings: every finished epoch of every seed, as the book's
    animator draws one run (train loss, train acc, test acc against epoch)."""
    shown = [(m, c, [r for r in runs if r.history]) for m, c, runs in groups]
    shown = [g for g in shown if g[2]]
    cols = 3
    rows = max(1, -(-len(shown) // cols))
    fig = new_figure((4.0 * cols, 3.0 * rows))
    for i, (model, changes, runs) in enumerate(shown):
        ax = fig.add_subplot(rows, cols, i + 1)
        for j, run in enumerate(runs):
            epochs = [h["epoch"] for h in run.history]
            first = j == 0
            for key, style in (("loss", "C0-"), ("train_acc", "m--"), ("test_acc", "g-.")):
                ax.plot(epochs, _series(run.history, key), style,
                        label=key.replace("loss", "train loss").replace("_", " ") if first else None)
        ax.set_title(f"{_label(model, changes)}, {len(runs)} seed(s)", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(True)
        if i == 0:
            ax.legend(fontsize=8)
    save_figure(fig, path)


def _series(history: list[dict[str, Any]], key: str) -> list[float]:
    """One figure per epoch; a missing one (a NaN loss was written as null) is a gap in the line."""
    return [math.nan if h.get(key) is None else float(h[key]) for h in history]


def _draw_test_acc(groups: list[Group], path: Path) -> None:
    """The test accuracy per epoch of every experiment on one plot, the mean over its seeds."""
    fig = new_figure((7.0, 4.5))
    ax = fig.add_subplot()
    for i, (model, changes, runs) in enumerate(groups):
        histories = [r.history for r in runs if r.history]
        if not histories:
            continue
        length = min(len(h) for h in histories)
        mean = [statistics.mean(_series(h, "test_acc")[e] for h in histories) for e in range(length)]
        style = "-" if i < 10 else "--"
        ax.plot(range(1, length + 1), mean, style, marker=".", label=_label(model, changes))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.grid(True)
    if ax.lines:
        ax.legend(fontsize=8)
    save_figure(fig, path)
