"""export: ONNX and .pt2 files checked against PyTorch before they are written (a handful of models, small
inputs; benchmarks/export_table.py exports every registered model at its default size)."""

from __future__ import annotations

import importlib.util
import importlib
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import moderncnn
from moderncnn.cli import main
from moderncnn.export import REFUSED, ExportError, MissingExtraError, check_images, export, read_metadata

HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
onnx_only = pytest.mark.skipif(not HAVE_ONNX, reason='needs pip install "moderncnn[export]"')
FORMATS = [pytest.param("onnx", marks=onnx_only), "pt2"]


def run_file(path, x: torch.Tensor) -> torch.Tensor:
    """The exported file run on its own, as a user would, outside moderncnn."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    return torch.export.load(str(path)).module()(x)


# lenet5: its own layers (subsampling, partial C3, RBF); lenet_bn_scratch: the book's batch norm; nin: global
# pooling; resnet18_book at 32 px: residual blocks and batch norm, small
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name, size", [("lenet5", None), ("lenet_bn_scratch", None), ("nin", (1, 67, 67)),
                                        ("resnet18_book", (1, 32, 32))])
def test_models_export_and_the_file_gives_pytorchs_outputs(name, size, fmt, tmp_path):
    path = tmp_path / f"{name}.{fmt}"
    result = export(name, fmt, path, input_size=size)
    assert path.is_file() and result.path == path and result.size_bytes == path.stat().st_size
    assert result.max_abs_diff <= result.allowed and result.batch_sizes == (1, 3)
    torch.manual_seed(0)
    model = moderncnn.create_model(name).eval()  # the export's seed: the same weights
    c, h, w = size or model.default_input_size
    x = check_images(5, (c, h, w))  # a batch size the check did not use
    with torch.no_grad():
        torch.testing.assert_close(run_file(path, x), model(x), rtol=1e-4, atol=1e-4)
    meta = read_metadata(path)
    assert meta["model"] == name and meta["input"] == f"{c}x{h}x{w}" and meta["batch"] == "dynamic"
    assert meta["exporter"] == result.exporter and meta["classes"] == [] and meta == result.metadata
    if fmt == "pt2":
        assert json.loads((tmp_path / f"{name}.pt2.json").read_text()) == meta


@onnx_only
def test_an_export_that_differs_from_pytorch_is_not_written(tmp_path):
    class SumPool(nn.Module):  # ONNX's AveragePool has no divisor: both exporters drop it without a word
        def forward(self, x):
            return F.avg_pool2d(x, 2, divisor_override=1).flatten(1)

    path = tmp_path / "sum.onnx"
    with pytest.raises(ExportError, match=r"SumPool to onnx failed, nothing written: dynamo: outputs differ from "
                                          r"PyTorch's by 2\.\d+e\+00 \(allowed .*\); torchscript: outputs differ"):
        export(SumPool(), "onnx", path, input_size=(1, 8, 8))
    assert list(tmp_path.iterdir()) == []


@onnx_only
def test_the_torchscript_exporter_and_a_fixed_batch(tmp_path):
    import onnxruntime as ort

    result = export("lenet", "onnx", tmp_path / "l.onnx", exporter="torchscript", batch=4, opset=17)
    assert result.exporter == "torchscript" and result.batch_sizes == (4,) and result.metadata["opset"] == 17
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [4, 1, 28, 28]
    assert "two batches of 4" in str(result)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_run_exports_with_its_preprocessing(fmt, tmp_path):
    from moderncnn.data import ImageDataset

    y = torch.arange(64) % 4
    x = (torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    data = ImageDataset(x, y, ["a", "b", "c", "d"], "toy", "train", "in memory")
    run = tmp_path / "run"
    moderncnn.fit("lenet", "modern", run, train_data=data, test_data=data, epochs=1, batch_size=32, quiet=True,
                  amp=False)
    result = export(run, fmt)
    assert result.path == run / f"model.{fmt}"
    meta = read_metadata(result.path)
    trained, _ = moderncnn.load_checkpoint(run)
    mean, std = trained.preprocessing.normalize
    # values, not JSON text: meta["classes"][2] is a class name (a character, when ONNX's strings were handed on)
    assert meta["classes"][2] == "c" and meta["recipe"]["name"] == "modern" and meta["native_size"] == 28
    assert meta["normalize"] == {"mean": list(mean), "std": list(std)}
    assert meta["run"]["epoch"] == 1 and meta["model_kwargs"]["num_classes"] == 4
    images = check_images(2, (1, 28, 28), (mean, std))
    with torch.no_grad():
        torch.testing.assert_close(run_file(result.path, images), trained(images), rtol=1e-4, atol=1e-4)


def test_refusals_and_bad_arguments_are_one_line_errors(monkeypatch, tmp_path):
    for kwargs, message in [({"format": "tflite"}, "format must be one of onnx, pt2"),
                            ({"batch": 0}, "batch must be 'dynamic' or a positive integer"),
                            ({"input_size": (1, 20, 20)}, "lenet needs images of 28x28 to 31x31")]:
        with pytest.raises(ValueError, match=message):
            export("lenet", out=tmp_path / "x", **{"format": "pt2", **kwargs})
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        export("runs/missing", "pt2")
    monkeypatch.setitem(REFUSED, ("lenet", "pt2"), "the reason given")
    with pytest.raises(ExportError, match="^lenet cannot be exported to pt2: the reason given$"):
        export("lenet", "pt2", tmp_path / "x.pt2")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_extra_names_it(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"missing: onnxscript\): pip install \"moderncnn\[export\]\""):
        export("lenet", "onnx", tmp_path / "l.onnx")
    assert main(["export", "lenet", "--out", str(tmp_path / "l.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moderncnn export: error: ONNX export needs") and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_command_line(capsys, tmp_path):
    out = tmp_path / "a.pt2"
    assert main(["export", "lenet_bn", "--format", "pt2", "--out", str(out), "--batch", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{out}: pt2 (torch.export), checked in torch") and "max |difference| " in line
    assert read_metadata(out)["batch"] == 2
    with pytest.raises(SystemExit) as stop:
        main(["export", "lenet", "--batch", "none"])
    assert stop.value.code == 2
    assert "--batch must be 'dynamic' or a positive integer" in capsys.readouterr().err


def test_the_export_table_script(tmp_path, capsys):
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location("bench_export_table", bench / "export_table.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.main(["--models", "lenet_bn", "--formats", "pt2", "--json", str(tmp_path / "t.json")])
    finally:
        sys.path.remove(str(bench))
    results = json.loads((tmp_path / "t.json").read_text())
    row, = results["rows"]
    assert results["complete"] and row["ok"] and row["model"] == "lenet_bn" and row["max_abs_diff"] <= row["allowed"]
    assert "| `lenet_bn` | pt2 | 1x28x28 | torch.export |" in capsys.readouterr().out


def test_onnx_properties_give_back_values_and_keep_strings_that_look_like_json():
    from moderncnn.export import _as_props, _from_props

    meta = {"model": "123", "input": "1x28x28", "classes": ["T-shirt/top", "Trouser"], "batch": 2, "normalize": None}
    props = _as_props(meta)
    assert all(isinstance(v, str) for v in props.values()) and _from_props(props) == meta
    # written before json_keys: the values it stored as JSON text are decoded all the same
    old = {"model": "lenet", "classes": '["a", "b"]', "batch": "dynamic", "run": '{"epoch": 3}'}
    assert _from_props(old) == {"model": "lenet", "classes": ["a", "b"], "batch": "dynamic", "run": {"epoch": 3}}


def test_a_run_with_nothing_to_export_says_so_before_a_missing_package(tmp_path, monkeypatch):
    exporting = importlib.import_module("moderncnn.export")  # the module: moderncnn.export is the function

    def missing(*modules):
        raise MissingExtraError(f"ONNX export needs {', '.join(modules)}")

    monkeypatch.setattr(exporting, "_require", missing)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"model": "lenet", "model_kwargs": {}, "status": "interrupted",
                                              "epochs_done": 0}))
    with pytest.raises(FileNotFoundError, match="holds no weights yet"):
        export(run, "onnx")
    with pytest.raises(MissingExtraError):  # a model there is to export: then the packages are what is missing
        export("lenet", "onnx")
