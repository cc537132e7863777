"""``moderncnn recipes MODEL``: a model's recipes side by side, what differs, and what each measured.

The measured results are those the project keeps as run directories under ``docs/results/*/runs/`` (each
with its run.json: model, recipe, seed, device, final figures), and the book's printed figures for its
recipe; a recipe with neither says "not measured". Nothing here is estimated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .recipes import BOOK_FIGURES, RECIPES, Recipe, get_recipe

__all__ = ["RESULTS", "measured_runs", "recipe_table"]

#: Where the project's measured run directories are, in a source checkout (absent from an installed wheel).
RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
_SHOWN_LAST = ("book", "based_on")  # values that say where a recipe came from, not how it trains


def measured_runs(model: str, root: Path = RESULTS) -> dict[str, list[dict[str, Any]]]:
    """Finished full-data runs of ``model`` per recipe name: seed, test acc, training seconds, device."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(root.glob("*/runs/*/run.json")):
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            recipe, final = meta["recipe"], meta["final"]
            if meta["model"] != model or meta.get("status") != "finished" or recipe.get("subset") is not None:
                continue
            found.setdefault(recipe["name"], []).append(
                {"seed": meta.get("seed"), "test_acc": final["test_acc"], "epochs": recipe["epochs"],
                 "train_seconds": final.get("train_seconds"), "device": meta.get("device_name") or meta.get("device"),
                 "where": str(path.parent.relative_to(root.parent.parent))})
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a run.json of another shape is no result of this table
    return found


def _value(v: Any) -> str:
    return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def _measured_lines(model: str, name: str, runs: list[dict[str, Any]], book: str | None) -> list[str]:
    lines = []
    if runs:
        accs = " / ".join(f"{r['test_acc']:.3f}" for r in runs)
        seeds = ", ".join(str(r["seed"]) for r in runs)
        secs = [r["train_seconds"] for r in runs if isinstance(r["train_seconds"], (int, float))]
        time = ""
        if secs:
            lo, hi = round(min(secs)), round(max(secs))
            time = f", {lo if lo == hi else f'{lo}-{hi}'} s of training"
        lines.append(f"  {name}: test acc {accs} (seeds {seeds}; {runs[0]['epochs']} epochs{time} on "
                     f"{runs[0]['device']}; {runs[0]['where'].rsplit('/', 1)[0]})")
    if name == "book" and book in BOOK_FIGURES:
        printed = ", ".join(f"{f.test_acc:.3f} ({build})" for build, f in BOOK_FIGURES[book].items())
        lines.append(f"  {name}: the book printed test acc {printed} on a V100")
    return lines or [f"  {name}: not measured (no run of it in docs/results)"]


def recipe_table(model: str, root: Path = RESULTS) -> str:
    """Every recipe of :data:`~moderncnn.recipes.RECIPES` for ``model``: values, differences, results."""
    recipes: dict[str, Recipe] = {}
    missing = []
    for name in RECIPES:
        try:
            recipes[name] = get_recipe(model, name)
        except ValueError:  # a recipe made for some models only
            missing.append(name)
    fields = [k for k in next(iter(recipes.values())).as_dict() if k not in ("model", "name", *_SHOWN_LAST)]
    width = max(12, *(len(_value(getattr(r, k))) + 2 for r in recipes.values() for k in fields))
    names = max(16, *(len(k) + 1 for k in fields))
    lines = [f"{model}: the {', '.join(recipes)} recipes ('*': differs)",
             (" " * (2 + names) + "".join(f"{name:<{width}}" for name in recipes)).rstrip()]
    for k in fields:
        values = [_value(getattr(r, k)) for r in recipes.values()]
        mark = " *" if len(set(values)) > 1 else ""
        lines.append(f"  {k:{names}}" + "".join(f"{v:<{width}}" for v in values).rstrip() + mark)
    lines += [f"  {name}: {r.based_on}" for name, r in recipes.items()]
    runs = measured_runs(model, root)
    lines.append("measured (full data):")
    for name, r in recipes.items():
        lines += _measured_lines(model, name, runs.get(name, []), r.book)
    lines += [f"  {name}: no {name} recipe for {model}" for name in missing]
    lines.append(f"train one: moderncnn train {model} --recipe NAME (--dry-run first to see its time here)")
    return "\n".join(lines)
