"""``moderncnn train --config FILE`` and ``--like RUN_DIR``: a file's values as the command's defaults.

A config file is TOML or JSON with the names of :class:`~moderncnn.recipes.Recipe` (``lr``, ``momentum``,
``schedule``, ...) and of the run (``model``, ``recipe``, ``seed``, ``data_dir``, ``device``, ``threads``,
``init_from``).
A run's own ``run.json`` is accepted as it is: its ``model``, ``recipe`` (every value of it), ``seed`` and
data set are taken, the rest (speed, versions, results) left. Flags on the command line override the file,
as timm's ``--config args.yaml`` does. ``--like`` also replays the run's speed plan (bf16 or fp32, the
speed options) where it was made for the same kind of device, so that a replay computes as the run did.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_KEYS", "load_config", "like_run", "apply_config", "configured"]

_NUMBER, _WHOLE, _FLAG, _TEXT = "a number", "a whole number", "true or false", "a string"
#: Every key a config file may hold, with what its value must be (None is allowed for the optional sizes).
CONFIG_KEYS: dict[str, str] = {
    "model": _TEXT, "recipe": _TEXT, "seed": _WHOLE, "data_dir": _TEXT, "device": _TEXT, "threads": _WHOLE,
    "lr": _NUMBER, "epochs": _WHOLE, "batch_size": _WHOLE, "resize": _WHOLE, "subset": _WHOLE,
    "test_subset": _WHOLE, "dataset": _TEXT, "init": _TEXT, "momentum": _NUMBER, "nesterov": _FLAG,
    "weight_decay": _NUMBER, "schedule": _TEXT, "label_smoothing": _NUMBER, "augment": _FLAG,
    "crop_padding": _WHOLE, "normalize": _FLAG, "normalize_stats": _TEXT, "test_flip": _FLAG,
    "pretrained_lr_scale": _NUMBER, "init_from": _TEXT, "model_kwargs": "a table of NAME = VALUE",
    "amp": _FLAG, "channels_last": _FLAG, "cuda_graph": _FLAG, "speed": "a table of OPTION = true or false",
}
_MAY_BE_NONE = ("resize", "subset", "test_subset")
# Recipe values a run.json holds that say where a recipe came from, not how to train
_RECORD_ONLY = ("name", "model", "book", "based_on")


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as e:  # tomllib.TOMLDecodeError and json.JSONDecodeError are ValueErrors
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON (name a TOML file *.toml)"
        raise ValueError(f"{path} is not valid {kind}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a table of NAME = VALUE, not {type(data).__name__}")
    return data


def _from_run(data: dict[str, Any]) -> dict[str, Any]:
    """A run.json's values as config keys: its model, whole recipe, seed and data set."""
    values = {k: v for k, v in data["recipe"].items() if k not in _RECORD_ONLY}
    values["recipe"] = data["recipe"].get("name", "book")
    for key in ("model", "seed"):
        if key in data:
            values[key] = data[key]
    values = {k: v for k, v in values.items() if k in CONFIG_KEYS}  # a newer run's values this one lacks
    threads = data.get("threads")
    if isinstance(threads, int) and threads >= 1:
        values["threads"] = threads
    return values


def _check_types(values: dict[str, Any], where: Path) -> None:
    unknown = sorted(set(values) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(CONFIG_KEYS))}")
    for key, value in values.items():
        want = CONFIG_KEYS[key]
        ok = {_NUMBER: isinstance(value, (int, float)) and not isinstance(value, bool),
              _WHOLE: isinstance(value, int) and not isinstance(value, bool),
              _FLAG: isinstance(value, bool), _TEXT: isinstance(value, str)}.get(want, isinstance(value, dict))
        if not ok and not (value is None and key in _MAY_BE_NONE):
            raise ValueError(f"{where}: {key} must be {want}, got {value!r}")


def _check_speed(speed: Any, where: Path) -> None:
    from .train.speed import SPEED_OPTIONS

    for key, value in (speed or {}).items():
        if key not in SPEED_OPTIONS or not isinstance(value, bool):
            raise ValueError(f"{where}: speed.{key} must be one of {', '.join(SPEED_OPTIONS)} = true or false")


def load_config(path: str | Path) -> dict[str, Any]:
    """A config file's values, keyed as :data:`CONFIG_KEYS`, each checked for its kind of value."""
    path = Path(path)
    data = _read(path)
    if isinstance(data.get("recipe"), dict):  # a run's run.json, as it is
        data = _from_run(data)
    _check_types(data, path)
    _check_speed(data.get("speed"), path)
    return data


def _speed_of(plan: Any, kind: str | None) -> dict[str, Any]:
    """The speed options the run's command asked for, as config values, where the plan was made for this
    kind of device (the policy decides the others as it did: it is deterministic for a device kind and a
    model). Elsewhere the policy decides every option anew."""
    if not isinstance(plan, dict) or plan.get("device_kind") != kind or not isinstance(plan.get("why"), dict):
        return {}
    asked = {k: plan.get(k) for k, why in plan["why"].items() if why == "asked for"}
    values: dict[str, Any] = {}
    if "amp" in asked:
        values["amp"] = asked.pop("amp") is not None
    values.update({k: asked.pop(k) for k in ("channels_last", "cuda_graph") if isinstance(asked.get(k), bool)})
    speed = {k: v for k, v in asked.items() if isinstance(v, bool)}
    return {**values, "speed": speed} if speed else values


def like_run(run_dir: str | Path, device_kind: str | None = None) -> dict[str, Any]:
    """What ``--like RUN_DIR`` replays: the run's model, recipe, seed, data (the folder it was read from,
    where that folder is still there) and the weights it started from (``--init-from``), and on the same
    ``device_kind`` its speed plan (bf16 or fp32, ...)."""
    run_json = Path(run_dir) / "run.json"
    if not run_json.is_file():
        raise ValueError(f"--like {run_dir}: no run.json there; give a run directory written by 'moderncnn train'")
    data = _read(run_json)
    if not isinstance(data.get("recipe"), dict) or "model" not in data:
        raise ValueError(f"--like {run_dir}: its run.json records no model and recipe")
    values = load_config(run_json)
    values.update(_speed_of(data.get("speed"), device_kind))
    record = data.get("data") if isinstance(data.get("data"), dict) else {}
    root = (record.get("train") or {}).get("root") if isinstance(record.get("train"), dict) else None
    if not record.get("is_sample") and isinstance(root, str) and Path(root).is_dir():
        values["data_dir"] = root
    started = data.get("init_from") if isinstance(data.get("init_from"), dict) else {}
    if isinstance(started.get("source"), str):  # the weights it started from: a replay starts there too
        values["init_from"] = started["source"]
    return values


def _to_dest(key: str, value: Any) -> tuple[str, Any]:
    if key == "model_kwargs":
        return "model_arg", [(k, v) for k, v in value.items()]
    if key == "speed":
        return "speed", [(k, v) for k, v in value.items()]
    if key == "amp":
        return "no_amp", not value
    return key, value


def apply_config(parser: argparse.ArgumentParser, argv: list[str], values: dict[str, Any],
                 where: str) -> argparse.Namespace:
    """``argv`` parsed again with ``values`` as the defaults: a flag given on the command line wins. A value
    goes through its option's own check (the ranges of :mod:`moderncnn.cliargs`)."""
    actions = {a.dest: a for a in parser._actions}
    defaults = {}
    for key, value in values.items():
        dest, value = _to_dest(key, value)
        action = actions[dest]
        if action.type is not None and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                value = action.type(str(value))
            except (argparse.ArgumentTypeError, ValueError) as e:
                raise ValueError(f"{where}: {key} {e}") from None
        if action.choices is not None and value not in action.choices:
            raise ValueError(f"{where}: {key} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
        defaults[dest] = value
    parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def configured(args: argparse.Namespace) -> argparse.Namespace:
    """``moderncnn train``'s ``args`` with --config's or --like's values as defaults, and a model named."""
    if args.config and args.like:
        raise ValueError("--config FILE and --like RUN_DIR both set the defaults: pass one of them")
    if args.config or args.like:
        values = load_config(args.config) if args.config else like_run(args.like, _device_kind(args.device))
        if args.like and args.model is not None and args.model != values.get("model"):
            raise ValueError(f"--like {args.like} replays {values.get('model')}, not {args.model}: leave MODEL out, "
                             f"or use --config {Path(args.like) / 'run.json'} to train {args.model} with its values")
        argv = shlex.split(args.command_line)[1:]
        where = f"--config {args.config}" if args.config else f"--like {args.like}"
        args = apply_config(args.verb_parser, argv[argv.index("train") + 1:], values, where)
        args.command_line = "moderncnn " + shlex.join(argv)
        note = _budget_note(args.like) if args.like and args.time_budget is None else None
        if note:
            print(note, file=sys.stderr)
    if args.model is None:
        raise ValueError("name a MODEL ('moderncnn list' shows them), or replay a run with --like RUN_DIR")
    return args


def _budget_note(run_dir: str | Path) -> str | None:
    """A run fitted to a time budget trained its steps, not whole epochs: a replay without the budget says
    how it differs (one line) rather than differ in silence."""
    chosen = _read(Path(run_dir) / "run.json").get("time_budget")
    if not isinstance(chosen, dict) or not isinstance(chosen.get("steps"), int):
        return None
    budget = chosen.get("budget")
    return (f"note: {run_dir} was fitted to a {budget} s time budget ({chosen['steps']:,} steps, its last epoch "
            f"cut short); this replay trains {chosen.get('epochs')} whole epochs: add --time-budget {budget} to fit "
            f"the budget again on this machine")


def _device_kind(device: str | None) -> str:
    from .evaluate import select_device
    from .train.speed import device_kind

    return device_kind(select_device(device))
