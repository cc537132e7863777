"""The shape of what a run directory holds (run.json, an epoch's state), checked in one place when it is read.

A file can parse (valid JSON, a valid ``weights_only`` pickle) and still be of the wrong shape: ``{}``, a
list, a recipe that is a list, ``"model": 5``, an optimizer state that is a number. Every reader (resume,
eval, predict, compare) goes through :func:`check_run_meta` or :func:`check_state`, so such a file is one
line naming it and what to do, never an AttributeError deep in the code that trusted it. Only keys that are
present are checked (older runs lack some), except the model's name, without which no run can be rebuilt.
Sizes are bounded too: an image side recorded as 100000 would make eval allocate terabytes.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["MAX_IMAGE_SIDE", "MAX_CLASSES", "check_run_meta", "check_state"]

#: The largest image side a run may train or be evaluated at (ImageNet models train at 224).
MAX_IMAGE_SIDE = 4096
#: The most classes a model may be built with (ImageNet-21k has 21,841).
MAX_CLASSES = 100_000

_DAMAGED = "the run directory is damaged: restore the file, or train again (with --overwrite to replace the run)"


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _whole(value: Any, lo: int, hi: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lo and (hi is None or value <= hi)


def _meta_problem(meta: Any) -> str | None:
    """What is wrong with a run.json's contents, or None."""
    if not isinstance(meta, dict):
        return f"holds {_kind(meta)}, not a JSON object"
    if not isinstance(meta.get("model"), str) or not meta["model"]:
        return f"names no model ('model' is {_kind(meta.get('model'))}, not a name)"
    for key in ("model_kwargs", "recipe", "data", "input", "final", "speed"):
        may_be_null = key in ("final", "speed")  # null until the run finishes, or when no plan was made
        if key in meta and not isinstance(meta[key], dict) and not (may_be_null and meta[key] is None):
            return f"its {key!r} is {_kind(meta[key])}, not a JSON object"
    for key in ("status", "device"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            return f"its {key!r} is {_kind(meta[key])}, not a string"
    for key, lo in (("epochs_done", 0), ("processes", 1)):
        if key in meta and not _whole(meta[key], lo):
            return f"its {key!r} is {meta[key]!r}, not a whole number >= {lo}"
    if not all(isinstance(k, str) for k in (meta.get("model_kwargs") or {})):
        return "its 'model_kwargs' has keys that are not names"
    return _input_problem(meta.get("input") or {}) or _data_problem(meta.get("data") or {}) \
        or _recipe_problem(meta.get("recipe") or {})


def _input_problem(inputs: dict[str, Any]) -> str | None:
    if "channels" in inputs and not _whole(inputs["channels"], 1, 4):
        return f"its input channels are {inputs['channels']!r}, not 1 to 4"
    for key in ("size", "native_size", "resize"):
        if inputs.get(key) is not None and not _whole(inputs[key], 1, MAX_IMAGE_SIDE):
            return f"its input {key} is {inputs[key]!r}, not a side of 1 to {MAX_IMAGE_SIDE} pixels"
    norm = inputs.get("normalize")
    if norm is not None and not (isinstance(norm, list) and len(norm) == 2 and all(
            isinstance(v, list) and all(isinstance(x, (int, float)) for x in v) for v in norm)):
        return "its input normalize is not [means, stds]"
    return None


def _data_problem(data: dict[str, Any]) -> str | None:
    classes = data.get("classes")
    if classes is not None and not (isinstance(classes, list) and len(classes) <= MAX_CLASSES
                                    and all(isinstance(c, str) for c in classes)):
        return "its data classes are not a list of names"
    for key in ("train", "test"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            return f"its data {key!r} is {_kind(data[key])}, not a JSON object"
    if data.get("name") is not None and not isinstance(data["name"], str):
        return "its data name is not a string"
    return None


def _recipe_problem(recipe: dict[str, Any]) -> str | None:
    for key in ("epochs", "batch_size"):
        if recipe.get(key) is not None and not _whole(recipe[key], 1):
            return f"its recipe {key} is {recipe[key]!r}, not a whole number >= 1"
    if recipe.get("name") is not None and not isinstance(recipe["name"], str):
        return "its recipe name is not a string"
    return None


def check_run_meta(meta: Any, where: Any) -> dict[str, Any]:
    """``meta`` (a parsed run.json) if it has the shape the readers rely on; else a one-line ValueError
    naming ``where``."""
    problem = _meta_problem(meta)
    if problem:
        raise ValueError(f"{where}: {problem}; {_DAMAGED}")
    return meta


def _state_problem(state: Any, epoch: int) -> str | None:
    if not isinstance(state, dict):
        return f"holds {_kind(state)}, not the dict of a training state"
    if state.get("epoch") != epoch:
        return f"holds epoch {state.get('epoch')!r}, not epoch {epoch}"
    history = state.get("history")
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        return "has no history (a list of per-epoch records)"
    opt = state.get("optimizer")
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in opt["param_groups"])):
        return "has no optimizer state (a dict with 'state' and 'param_groups')"
    if state.get("scheduler") is not None and not isinstance(state["scheduler"], dict):
        return f"has a scheduler state that is {_kind(state['scheduler'])}"
    return _rng_problem(state.get("rng"))


def _rng_problem(rng: Any) -> str | None:
    def is_bytes(t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1

    if not isinstance(rng, dict) or not is_bytes(rng.get("torch")) \
            or rng["torch"].numel() != torch.get_rng_state().numel():
        return "has no random-number state of this torch's shape"
    if "cuda" in rng and not is_bytes(rng["cuda"]):
        return "has a CUDA random-number state that is not bytes"
    return None


def check_state(state: Any, where: Any, epoch: int) -> dict[str, Any]:
    """``state`` (an epoch's ``.pt``, as read) if it holds what resuming epoch ``epoch`` needs; else a
    one-line ValueError naming ``where``."""
    problem = _state_problem(state, epoch)
    if problem:
        raise ValueError(f"{where}: {problem}; the run cannot go on from it: restore it, or start the run again "
                         f"with --overwrite (copy model.safetensors first to keep its weights)")
    return state
