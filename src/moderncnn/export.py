"""Carry a model onward: ONNX and ``torch.export``'s ``.pt2``, each checked numerically before it is written.

``export("runs/lenet-book", "onnx")`` (or a model name, or a model) exports in eval mode on the CPU, runs the
exported program on real images (the embedded Fashion-MNIST sample, made the model's size and channels and
normalised as the run was) at two batch sizes, compares its outputs with PyTorch's, and writes the file only
when the largest difference is within ``tolerance * max(1, max |output|)``. Exporters are known to go wrong
silently (pytorch#169178: a ResNet that scores 0% in ONNX Runtime; pytorch#157621: a dynamic batch exported as
a fixed one); an unchecked export is not one a user can trust.

- ONNX: ``torch.onnx.export``, the dynamo exporter first and the TorchScript-based one when the dynamo one
  fails or its output is beyond tolerance (the result says why); checked in ONNX Runtime. Needs the
  ``export`` extra (onnx, onnxscript, onnxruntime).
- ``.pt2``: ``torch.export.export``, saved with ``torch.export.save``, checked after loading it back.

What a user of the file needs (model, input size and channels, normalisation, class names, recipe) goes into
the ONNX file's metadata properties, and into the ``.pt2`` archive (``extra_files["moderncnn.json"]``) and a
``FILE.pt2.json`` beside it; :func:`read_metadata` reads either back.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

__all__ = ["export", "read_metadata", "ExportResult", "ExportError", "MissingExtraError", "FORMATS", "REFUSED",
           "DEFAULT_TOLERANCE"]

FORMATS = ("onnx", "pt2")
EXTRA = 'pip install "moderncnn[export]"'
DEFAULT_TOLERANCE = 1e-4
#: (model, format) -> the exporter's reason, for models that cannot be exported (docs/export.md lists them).
#: Empty: every registered model exports to both formats at its default size (benchmarks/export_table.py).
REFUSED: dict[tuple[str, str], str] = {}
_INPUT, _OUTPUT = "images", "logits"
_TRACE_BATCH = 2  # traced at 2, checked at 1 and 3: a batch specialised to the traced size fails the check
_CHECK_BATCHES = (1, 3)


class ExportError(ValueError):
    """An export that failed or did not pass its check; the one-line message says why. Nothing was written."""


class MissingExtraError(ImportError):
    """An exporter's package is not installed; the message names the extra that brings it."""


@dataclass
class ExportResult:
    """What :func:`export` wrote and how it was checked."""

    path: Path
    format: str
    exporter: str  # "dynamo" or "torchscript" (ONNX), "torch.export" (.pt2)
    max_abs_diff: float
    allowed: float
    batch_sizes: tuple[int, ...]
    size_bytes: int
    seconds: float
    checked_with: str  # the runtime that ran the exported program
    fallback_reason: str | None = None  # why the dynamo exporter was not used
    metadata: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        how = self.exporter + (f" exporter, opset {self.metadata['opset']}" if self.format == "onnx" else "")
        fallback = f"; dynamo exporter not used: {self.fallback_reason}" if self.fallback_reason else ""
        batches = f"batch {' and '.join(map(str, self.batch_sizes))}" if len(self.batch_sizes) > 1 else \
            f"two batches of {self.batch_sizes[0]}"
        return (f"{self.path}: {self.format} ({how}), checked in {self.checked_with} at {batches}: "
                f"max |difference| {self.max_abs_diff:.2e} (allowed {self.allowed:.1e}); "
                f"{self.size_bytes / 1e6:,.2f} MB in {self.seconds:.1f} s{fallback}")


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"ONNX export needs {', '.join(modules)} (missing: {', '.join(missing)}): {EXTRA}")


def _resolve(source: Any, model_kwargs: dict[str, Any] | None) -> tuple[nn.Module, dict[str, Any] | None]:
    """(a CPU eval-mode model, the run's metadata or None) from a model, a run directory or a model name."""
    from .checkpoint import load_checkpoint
    from .registry import create_model

    if isinstance(source, nn.Module):
        return copy.deepcopy(source).cpu().eval(), None  # the caller's model stays as it is
    path = Path(source)
    if path.exists():
        if model_kwargs:
            raise ValueError("model_kwargs are for a model given by name; a run is rebuilt as it was trained")
        return load_checkpoint(path, "cpu")
    if "/" in str(source) or str(source).endswith((".safetensors", ".json")):
        raise FileNotFoundError(f"no such run directory or weights file: {source}")
    torch.manual_seed(0)  # an untrained model's export is reproducible
    return create_model(str(source), **(model_kwargs or {})).eval(), None


def _input_size(model: nn.Module, input_size: tuple[int, int, int] | None) -> tuple[int, int, int]:
    prep = getattr(model, "preprocessing", None)
    if input_size is not None:
        size = tuple(input_size)
    elif prep is not None:
        size = (prep.channels, prep.size, prep.size)
    elif hasattr(model, "default_input_size"):
        size = tuple(model.default_input_size)
    else:
        raise ValueError(f"{type(model).__name__} has no default input size: give input_size=(C, H, W)")
    if len(size) != 3 or not all(isinstance(d, int) and d > 0 for d in size):
        raise ValueError(f"input_size must be (C, H, W) positive integers, got {input_size!r}")
    return size  # type: ignore[return-value]


def check_images(n: int, size: tuple[int, int, int], normalize=None, offset: int = 0) -> torch.Tensor:
    """``n`` real images for a check: the embedded Fashion-MNIST sample's test images from ``offset``, resized
    to ``size`` (C, H, W), repeated over the channels and normalised as a run was (``(mean, std)``)."""
    from .data import load_sample, resize_batch

    images = load_sample("test").images
    index = torch.arange(offset, offset + n) % len(images)
    x = resize_batch(images[index].float() / 255, size[1]) if size[1] == size[2] else \
        torch.nn.functional.interpolate(images[index].float() / 255, size=size[1:], mode="bilinear")
    x = x.expand(-1, size[0], -1, -1).contiguous()
    if normalize is not None:
        mean, std = (torch.tensor(v, dtype=x.dtype).view(1, -1, 1, 1) for v in normalize)
        x = (x - mean) / std
    return x


def _metadata(model: nn.Module, meta: dict[str, Any] | None, size: tuple[int, int, int],
              batch: str | int) -> dict[str, Any]:
    """What the file says of itself, as JSON values: :func:`read_metadata` gives them back as they are."""
    from . import __version__

    prep = getattr(model, "preprocessing", None)
    run = meta or {}
    normalize = None if prep is None or prep.normalize is None else \
        {"mean": list(prep.normalize[0]), "std": list(prep.normalize[1])}
    return {
        "model": getattr(model, "model_name", type(model).__name__),
        "model_kwargs": run.get("model_kwargs", {}),
        "input": "x".join(map(str, size)),
        "input_name": _INPUT,
        "output_name": _OUTPUT,
        "input_format": "float32 (N, C, H, W): pixels in [0, 1], resized to the input size, then normalised"
                        + ("" if prep is None or prep.native in (None, size[-1]) else
                           f"; an image file is first resized to {prep.native}x{prep.native}, as the training "
                           f"set's images were stored, then to the input size"),
        "batch": batch,
        "normalize": normalize,
        "resize": None if prep is None else prep.resize,
        "native_size": None if prep is None else prep.native,
        "classes": list(prep.classes) if prep is not None else [],
        "recipe": run.get("recipe"),
        "run": {"dir": str(run["run_dir"]) if run.get("run_dir") else None, "epoch": run.get("epoch")}
        if meta else None,
        "moderncnn": __version__,
        "torch": torch.__version__,
    }


def _compare(run: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, batches: list[torch.Tensor],
             tolerance: float) -> tuple[float, float]:
    """(largest |exported - PyTorch| over the batches, the allowed difference)."""
    worst, scale = 0.0, 1.0
    with torch.no_grad():
        for x in batches:
            ref = model(x)
            out = run(x)
            if tuple(out.shape) != tuple(ref.shape):
                raise ExportError(f"the exported program gives shape {tuple(out.shape)} for a batch of {len(x)}, "
                                  f"PyTorch {tuple(ref.shape)}")
            worst = max(worst, (out.float() - ref.float()).abs().max().item())
            scale = max(scale, ref.abs().max().item())
    if worst != worst:  # NaN
        worst = float("inf")
    return worst, tolerance * scale


def _onnx_dynamo(model: nn.Module, x: torch.Tensor, dynamic: bool, opset: int | None) -> Any:
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    program = torch.onnx.export(model, (x,), dynamo=True, input_names=[_INPUT], output_names=[_OUTPUT],
                                dynamic_shapes=shapes, opset_version=opset, verbose=False)
    return program.model_proto


def _onnx_torchscript(model: nn.Module, x: torch.Tensor, dynamic: bool, opset: int | None) -> Any:
    import onnx

    buf = io.BytesIO()
    axes = {_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}} if dynamic else None
    kw = {} if opset is None else {"opset_version": opset}
    torch.onnx.export(model, (x,), buf, dynamo=False, input_names=[_INPUT], output_names=[_OUTPUT],
                      dynamic_axes=axes, **kw)
    return onnx.load_from_string(buf.getvalue())


def _quiet(fn: Callable[[], Any]) -> Any:
    """The exporters print progress and warn at length; what matters is in the result or the error."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return fn()


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" + ("..." if len(text) > 300 else "")


def _export_onnx(model, x, batches, dynamic, opset, tolerance, metadata, exporter):
    _require("onnx", "onnxruntime", *(("onnxscript",) if exporter != "torchscript" else ()))
    import onnx
    import onnxruntime as ort

    def check(proto) -> tuple[bytes, float, float]:
        onnx.helper.set_model_props(proto, _as_props(metadata))
        data = proto.SerializeToString()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

        def run(batch: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0])

        return (data, *_compare(run, model, batches, tolerance))

    tries = {"auto": ("dynamo", "torchscript"), "dynamo": ("dynamo",), "torchscript": ("torchscript",)}[exporter]
    failures = []
    for name in tries:
        build = _onnx_dynamo if name == "dynamo" else _onnx_torchscript
        try:
            proto = _quiet(lambda: build(model, x, dynamic, opset))
            opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
            metadata.update(exporter=name, opset=int(opset_used))
            data, worst, allowed = check(proto)
        except ExportError as e:
            failures.append(f"{name}: {e}")
            continue
        except Exception as e:  # noqa: BLE001  (an exporter's failure, of any type, is a reason to fall back)
            failures.append(f"{name}: {_one_line(e)}")
            continue
        if worst <= allowed:
            return data, worst, allowed, name, "; ".join(failures) or None, f"onnxruntime {ort.__version__}"
        failures.append(f"{name}: outputs differ from PyTorch's by {worst:.2e} (allowed {allowed:.1e})")
    raise ExportError("; ".join(failures))


def _export_pt2(model, x, batches, dynamic, tolerance, metadata):
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    metadata.update(exporter="torch.export")
    try:
        program = _quiet(lambda: torch.export.export(model, (x,), dynamic_shapes=shapes, strict=False))
        buf = io.BytesIO()
        torch.export.save(program, buf, extra_files={"moderncnn.json": json.dumps(metadata)})
        data = buf.getvalue()
        loaded = torch.export.load(io.BytesIO(data)).module()
        worst, allowed = _compare(loaded, model, batches, tolerance)
    except ExportError as e:
        raise ExportError(f"torch.export: {e}") from None
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"torch.export: {_one_line(e)}") from None
    if worst > allowed:
        raise ExportError(f"torch.export: outputs differ from PyTorch's by {worst:.2e} (allowed {allowed:.1e})")
    return data, worst, allowed, "torch.export", None, f"torch {torch.__version__} (torch.export.load)"


def export(source: nn.Module | str | Path, format: str = "onnx", out: str | Path | None = None, *,
           batch: str | int = "dynamic", opset: int | None = None, input_size: tuple[int, int, int] | None = None,
           model_kwargs: dict[str, Any] | None = None, tolerance: float = DEFAULT_TOLERANCE,
           exporter: str = "auto") -> ExportResult:
    """Export ``source`` to ``format`` ("onnx" or "pt2"), check it, and only then write it to ``out``.

    ``source``: a run directory (or its ``model.safetensors``), a registered model name (built with
    ``model_kwargs``, seed 0, untrained) or a model (a CPU copy of it is exported; yours is untouched).
    ``out``: default ``RUN_DIR/model.FORMAT`` for a run, ``NAME.FORMAT`` here for a model.
    ``batch``: "dynamic" (checked at batch 1 and 3) or a fixed batch N (checked on two batches of N).
    ``input_size``: (C, H, W); default the run's, else the model's own. ``opset``: ONNX opset (default the
    exporter's). ``exporter`` (ONNX): "auto" (dynamo, then TorchScript), "dynamo" or "torchscript".
    ``tolerance``: the largest difference allowed, relative to ``max(1, max |PyTorch's output|)``.

    Raises :class:`ExportError` (nothing written) when the exporters fail or the check does not pass, and
    :class:`MissingExtraError` when ONNX's packages are missing. Returns an :class:`ExportResult`.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError(f"exporter must be auto, dynamo or torchscript, got {exporter!r}")
    if batch != "dynamic" and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be 'dynamic' or a positive integer, got {batch!r}")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    start = time.perf_counter()
    model, meta = _resolve(source, model_kwargs)  # a run with nothing to export says so before a missing package
    name = getattr(model, "model_name", type(model).__name__)
    if (name, format) in REFUSED:
        raise ExportError(f"{name} cannot be exported to {format}: {REFUSED[name, format]}")
    size = _input_size(model, input_size)
    if hasattr(model, "check_input"):
        model.check_input(torch.zeros(1, *size))  # a wrong size is the model's one-line error, before exporting
    if format == "onnx":
        _require("onnx", "onnxruntime", *(("onnxscript",) if exporter != "torchscript" else ()))
    prep = getattr(model, "preprocessing", None)
    normalize = prep.normalize if prep is not None else None
    dynamic = batch == "dynamic"
    sizes = _CHECK_BATCHES if dynamic else (batch, batch)
    x = check_images(_TRACE_BATCH if dynamic else batch, size, normalize)
    batches, offset = [], len(x)
    for n in sizes:
        batches.append(check_images(n, size, normalize, offset))
        offset += n
    metadata = _metadata(model, meta, size, batch)
    try:
        if format == "onnx":
            data, worst, allowed, used, fallback, runtime = _export_onnx(model, x, batches, dynamic, opset,
                                                                          tolerance, metadata, exporter)
        else:
            data, worst, allowed, used, fallback, runtime = _export_pt2(model, x, batches, dynamic, tolerance,
                                                                         metadata)
    except ExportError as e:
        raise ExportError(f"{name} to {format} failed, nothing written: {e}") from None
    path = Path(out) if out is not None else _default_out(source, meta, name, format)
    _write(path, data, format, metadata)
    return ExportResult(path=path, format=format, exporter=used, max_abs_diff=worst, allowed=allowed,
                        batch_sizes=tuple(sorted(set(sizes))), size_bytes=len(data),
                        seconds=time.perf_counter() - start, checked_with=runtime, fallback_reason=fallback,
                        metadata=metadata)


def _default_out(source: Any, meta: dict[str, Any] | None, name: str, format: str) -> Path:
    if meta is not None:
        return Path(meta["run_dir"]) / f"model.{format}"
    return Path(f"{name}.{format}")


def _write(path: Path, data: bytes, format: str, metadata: dict[str, str]) -> None:
    from .storage import atomic_write

    if path.is_dir():
        raise ValueError(f"{path} is a directory; give a file name for the export, e.g. {path / ('model.' + format)}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: no directory {path.parent}")
    atomic_write(path, data)
    if format == "pt2":
        atomic_write(_sidecar(path), (json.dumps(metadata, indent=1) + "\n").encode())


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


# The properties an export before "json_keys" wrote as JSON text.
_JSON_BEFORE = ("model_kwargs", "normalize", "resize", "native_size", "classes", "recipe", "run")


def _as_props(metadata: dict[str, Any]) -> dict[str, str]:
    """ONNX metadata properties are strings by format: a value that is not one is stored as JSON, and
    ``json_keys`` says which, so that a string that looks like JSON is never mistaken for it."""
    encoded = [k for k, v in metadata.items() if not isinstance(v, str)]
    props = {k: json.dumps(v) if k in encoded else v for k, v in metadata.items()}
    return {**props, "json_keys": json.dumps(encoded)}


def _from_props(props: dict[str, str]) -> dict[str, Any]:
    """:func:`_as_props` undone."""
    props = dict(props)
    try:
        encoded = json.loads(props.pop("json_keys"))
    except (KeyError, ValueError):
        encoded = _JSON_BEFORE
    decoded: dict[str, Any] = {}
    for key, value in props.items():
        try:
            decoded[key] = json.loads(value) if key in encoded else value
        except ValueError:  # a file edited by hand: its text as it is
            decoded[key] = value
    return decoded


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata :func:`export` put in an ONNX file (its metadata properties) or a ``.pt2`` archive, as
    values: ``read_metadata(path)["classes"][6]`` is a class name (ONNX stores them as JSON strings)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such exported file: {path}")
    if path.suffix == ".onnx":
        _require("onnx")
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        return _from_props({p.key: p.value for p in proto.metadata_props})
    extra = {"moderncnn.json": ""}
    try:
        torch.export.load(str(path), extra_files=extra)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path} is not a readable .pt2 file ({_one_line(e)})") from None
    if not extra["moderncnn.json"]:
        raise ValueError(f"{path} carries no moderncnn metadata; was it written by moderncnn export?")
    return json.loads(extra["moderncnn.json"])
