"""Every door moderncnn reads through, fed hostile input: each is refused in one line naming the file, or read
correctly; nothing hangs, runs code, or allocates without bound. Fixtures are built here, small."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pickle
import signal
import struct
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.folder  # noqa: F401 - the folder loader's import, done before any timing or tracing
from PIL import Image

from moderncnn import create_model
from moderncnn.checkpoint import load_checkpoint
from moderncnn.storage import save_state, save_weights
from moderncnn.cli import main
from moderncnn.compare import compare
from moderncnn.data import DataError, load_dataset, load_image_folder, read_idx, write_idx
from moderncnn.data.idx import parse_idx
from moderncnn.data.images import decode_image
from moderncnn.evaluate import image_files, load_images, select_device
from moderncnn.rundir import RunDir

from fixtures import offline  # noqa: F401 - a fixture, used by pytestmark


pytestmark = pytest.mark.usefixtures("offline")


@contextlib.contextmanager
def no_hang(seconds: int = 60):
    """A blocking call (a FIFO's open) becomes a test failure instead of a test run that never ends."""
    def fail(signum, frame):
        raise AssertionError(f"hung for {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def peak_python_bytes():
    """The peak of memory allocated through Python while the block runs (bytearrays, bytes, numpy)."""
    result = {}
    tracemalloc.start()
    try:
        yield result
    finally:
        result["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def one_line(message: str) -> str:
    assert "\n" not in message and "Traceback" not in message, message
    return message


# -- pickles: CIFAR-10's batches are data, never code --------------------------------------------------------

class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _cifar_folder(root: Path, test_batch: bytes | None = None) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 1],
                 "batch_label": name, "filenames": ["a", "b", "c", "d"]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["cat", "dog", "ship"]}, protocol=2))
    if test_batch is not None:
        (folder / "test_batch").write_bytes(test_batch)
    return folder


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_batches_of_numpy_arrays_still_load(tmp_path, protocol):
    folder = _cifar_folder(tmp_path)
    batch = {"data": np.full((2, 3072), 7, np.uint8), "labels": [2, 0]}
    raw = pickle.dumps(batch, protocol=protocol)
    if protocol == 2:  # as the real files were written (Python 2, numpy 1): the module numpy.core
        raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (folder / "test_batch").write_bytes(raw)
    test = load_dataset("cifar10", "test", root=tmp_path, download=False)
    assert test.images.shape == (2, 3, 32, 32) and int(test.images.max()) == 7 and test.labels.tolist() == [2, 0]


@pytest.mark.parametrize("payload", ["code", "zlib codec", "object array", "huge empty array"])
def test_a_hostile_cifar_pickle_is_refused_without_running_anything(tmp_path, payload):
    marker = tmp_path / "pwned"
    if payload == "code":
        raw = pickle.dumps({"data": _RunsCode(marker), "labels": []}, protocol=2)
    elif payload == "zlib codec":  # a small file that would decompress into gigabytes
        raw = b"c_codecs\nencode\n(X\x04\x00\x00\x00abcdX\x04\x00\x00\x00zlibtR."
    elif payload == "object array":
        raw = pickle.dumps({"data": np.array([marker], dtype=object), "labels": [0]}, protocol=2)
    else:
        raw = (b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(J\x00\xe1\xf5\x05\x85X\x01\x00\x00\x00"
               b"btR.")  # _reconstruct(ndarray, (100_000_000,), "b"): an allocation the file does not pay for
    _cifar_folder(tmp_path, test_batch=raw)
    with pytest.raises(DataError, match="test_batch") as err:
        load_dataset("cifar10", "test", root=tmp_path, download=False)
    one_line(str(err.value))
    assert not marker.exists()


# -- image folders: regular files, each folder once, hidden skipped, pixels bounded, 16 bits scaled -----------

def _png(path: Path, value: int = 100, size: int = 8, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value).save(path)
    return path


def _two_classes(root: Path, per_class: int = 3) -> Path:
    for c, value in (("cat", 40), ("dog", 200)):
        for i in range(per_class):
            _png(root / c / f"{i}.png", value)
    return root


def test_a_symlink_loop_is_walked_once(tmp_path):
    root = _two_classes(tmp_path / "pets", per_class=5)
    os.symlink(root / "cat", root / "cat" / "again")  # cat/again/again/... forever
    os.symlink(root / "cat", root / "dog" / "cats-too")  # a class folder linked into another class...
    os.symlink(root / "dog", root / "cat" / "dogs-too")  # ...before or after it in the walk
    with no_hang():
        train = load_image_folder(root, "train", image_size=8)
        test = load_image_folder(root, "test", image_size=8)
    assert len(train) + len(test) == 10
    assert sorted(torch.cat([train.labels, test.labels]).tolist()) == [0] * 5 + [1] * 5


def test_test_images_linked_into_training_are_refused(tmp_path):
    root = tmp_path / "pets"
    _two_classes(root / "train")
    _two_classes(root / "test")
    os.symlink(root / "test" / "cat", root / "train" / "cat" / "more")
    with pytest.raises(DataError, match="also reachable from the training folder") as err:
        load_image_folder(root, "train", image_size=8)
    one_line(str(err.value))


def test_a_fifo_named_like_an_image_is_skipped_and_refused_when_named(tmp_path):
    root = _two_classes(tmp_path / "pets")
    os.mkfifo(root / "cat" / "x.png")
    with no_hang():
        data = load_image_folder(root, "train", image_size=8)
        with pytest.raises(DataError, match="x.png is not a regular file"):
            load_images([root / "cat" / "x.png"], 1, 8)
        assert root / "cat" / "x.png" not in image_files([root])
    assert len(data) == 5


def test_hidden_files_and_folders_are_not_classes_nor_images(tmp_path):
    root = _two_classes(tmp_path / "pets")
    _png(root / ".ipynb_checkpoints" / "0.png")
    _png(root / "cat" / ".hidden.png")
    _png(root / "cat" / ".cache" / "0.png")
    data = load_image_folder(root, "train", image_size=8)
    assert data.classes == ["cat", "dog"]
    found = image_files([root])
    assert len(found) == 6 and not any(part.startswith(".") for f in found for part in f.relative_to(root).parts)


def _lying_png(path: Path, width: int, height: int) -> Path:
    """A valid 1x1 PNG whose header (with a correct CRC) claims ``width`` x ``height`` pixels."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    raw = bytearray(buf.getvalue())
    ihdr = bytearray(raw[12:29])  # b"IHDR" + 13 bytes of header
    ihdr[4:12] = struct.pack(">II", width, height)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("side", [100_000, 9_000])  # above Pillow's own limit, and between Pillow's and ours
def test_a_decompression_bomb_is_one_line_in_train_and_predict(tmp_path, side):
    root = _two_classes(tmp_path / "pets")
    bomb = _lying_png(root / "cat" / "bomb.png", side, side)
    with peak_python_bytes() as mem:
        for read in (lambda: load_image_folder(root, "train", image_size=8), lambda: load_images([bomb], 1, 8)):
            with pytest.raises(DataError, match="bomb.png .*pixels an image may have") as err:
                read()
            one_line(str(err.value))
    assert mem["peak"] < 50 * 2**20


def test_a_truncated_image_is_one_line_naming_it(tmp_path):
    good = _png(tmp_path / "a.png", size=64)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:60])
    with pytest.raises(DataError, match="cut.png is not an image"):
        decode_image(cut, grey=True)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    Image.fromarray(np.round(ramp / 257).astype(np.uint8)).save(tmp_path / "flat.png")
    deep = np.asarray(decode_image(tmp_path / "deep.png", grey=True), dtype=np.int16)
    flat = np.asarray(decode_image(tmp_path / "flat.png", grey=True), dtype=np.int16)
    assert np.abs(deep - flat).max() <= 1 and (deep == 255).mean() < 0.01
    batch = load_images([tmp_path / "deep.png"], 1, 64)  # predict reads it the same way
    assert torch.equal(batch[0, 0], torch.from_numpy(deep.astype(np.uint8)))


@pytest.mark.parametrize("mode", ["P", "PA", "LA", "RGBA", "1", "I", "F"])
def test_every_colour_mode_becomes_the_models_channels(tmp_path, mode):
    rgb = Image.new("RGB", (6, 6), (200, 100, 0))
    img = {"P": lambda: rgb.convert("P"), "PA": lambda: rgb.convert("RGBA").convert("PA"),
           "LA": lambda: rgb.convert("LA"), "RGBA": lambda: rgb.convert("RGBA"),
           "1": lambda: Image.new("1", (6, 6), 1), "I": lambda: Image.new("I", (6, 6), 65535),
           "F": lambda: Image.new("F", (6, 6), 1.0)}[mode]()
    path = tmp_path / f"x-{mode}.{'tiff' if mode in ('I', 'F', 'PA') else 'png'}"
    img.save(path)
    grey, colour = decode_image(path, grey=True), decode_image(path, grey=False)
    assert (grey.mode, colour.mode, grey.size) == ("L", "RGB", (6, 6))
    if mode in ("1", "I", "F"):  # full scale in every range: white
        assert np.asarray(grey).min() == 255
    else:  # the colour (alpha dropped, palette looked up); grey for a grey image
        want = (118, 118, 118) if mode == "LA" else (200, 100, 0)
        assert np.abs(np.asarray(colour).astype(int)[0, 0] - want).max() <= 8
        assert abs(int(np.asarray(grey)[0, 0]) - 118) <= 8


# -- IDX: streamed, bounded by its header, one copy, the file named in every error -----------------------------

def _idx_bytes(dims: list[int], data: bytes) -> bytes:
    return bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims) + data


def test_a_gzip_bomb_stops_at_the_size_its_header_declares(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    with gzip.open(path, "wb") as f:  # 10 labels declared, 64 MB of zeros behind them: ~64 KB on disk
        f.write(_idx_bytes([10], b""))
        for _ in range(64):
            f.write(bytes(2**20))
    assert path.stat().st_size < 200_000
    with peak_python_bytes() as mem, pytest.raises(DataError, match="longer than its header says") as err:
        read_idx(path)
    assert str(path) in one_line(str(err.value)) and mem["peak"] < 8 * 2**20


@pytest.mark.parametrize("dims", [[2**31, 2**31], [100_000, 28, 28]])
def test_a_header_that_lies_about_its_size_costs_nothing(tmp_path, dims):
    path = tmp_path / "images"
    path.write_bytes(_idx_bytes(dims, bytes(100)))
    with peak_python_bytes() as mem, pytest.raises(DataError) as err:
        read_idx(path)
    assert str(path) in one_line(str(err.value)) and mem["peak"] < 8 * 2**20


def test_an_idx_file_is_held_once(tmp_path):
    images = torch.randint(0, 256, (2000, 28, 28), dtype=torch.uint8)  # 1.5 MB
    for name in ("images", "images.gz"):
        write_idx(tmp_path / name, images)
        with peak_python_bytes() as mem:
            read = read_idx(tmp_path / name, ndim=3)
        assert torch.equal(read, images) and mem["peak"] < 1.3 * images.numel() + 2**21


@pytest.mark.parametrize("content", [b"", b"\x1f\x8b", b"\x00\x00\x08", _idx_bytes([3], b"ab")])
def test_empty_and_truncated_idx_files_name_the_file(tmp_path, content):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_idx(path, ndim=1)
    assert str(path) in one_line(str(err.value))


def test_an_idx_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "train-images-idx3-ubyte")
    with no_hang(), pytest.raises(DataError, match="not a regular file"):
        read_idx(tmp_path / "train-images-idx3-ubyte")


# -- run directories: run.json and the state checked for shape; weights errors name the file -------------------

def _run_dir(root: Path, epochs: int = 1) -> Path:
    """A finished LeNet run as the trainer lays it out, without training."""
    model = create_model("lenet", num_classes=10, in_channels=1)
    run = RunDir(root)
    root.mkdir(parents=True)
    run.checkpoints.mkdir()
    save_weights(run.checkpoints / "epoch-0001.safetensors", model, epochs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    save_state(run.checkpoints / "epoch-0001.pt", {"optimizer": optimizer.state_dict(), "scheduler": None,
                                                   "rng": {"torch": torch.get_rng_state()}, "epoch": 1,
                                                   "history": [{"epoch": 1, "loss": 1.0, "test_acc": 0.5}]})
    (run.pointer).write_text(json.dumps({"epoch": 1, "weights": "epoch-0001.safetensors", "state": "epoch-0001.pt"}))
    os.link(run.checkpoints / "epoch-0001.safetensors", run.weights)
    run.write_meta({"model": "lenet", "model_kwargs": {"num_classes": 10, "in_channels": 1},
                    "recipe": {"name": "book", "epochs": 1, "batch_size": 256},
                    "input": {"channels": 1, "native_size": 28, "size": 28, "resize": None, "normalize": None},
                    "data": {"name": "fashion-mnist", "classes": [str(i) for i in range(10)]},
                    "status": "finished", "epochs_done": 1})
    return root


def test_a_well_formed_run_directory_loads(tmp_path):
    model, meta = load_checkpoint(_run_dir(tmp_path / "run"))
    assert meta["epoch"] == 1 and model.preprocessing.size == 28
    ckpt, state = RunDir(tmp_path / "run").load()
    assert ckpt.epoch == 1 and len(state["history"]) == 1


@pytest.mark.parametrize("meta", [{}, [], "run", {"model": 5}, {"model": "lenet", "recipe": [1]},
                                  {"model": "lenet", "model_kwargs": [1]}, {"model": "lenet", "data": []},
                                  {"model": "lenet", "input": None},
                                  {"model": "lenet", "input": {"channels": 1, "size": 100_000}},
                                  {"model": "lenet", "model_kwargs": {"num_classes": 10**11}}])
def test_a_wrong_shaped_run_json_is_one_line_in_eval_predict_and_compare(tmp_path, meta):
    run = _run_dir(tmp_path / "run")
    (run / "run.json").write_text(json.dumps(meta))
    for read in (lambda: load_checkpoint(run), lambda: compare([run])):
        with pytest.raises(ValueError) as err:
            read()
        assert "run.json" in one_line(str(err.value)) or "num_classes" in str(err.value)


@pytest.mark.parametrize("metrics", [b"[1]\n", b"\xff\xfe\n", b'{"epoch": 1}\n{"epo'])
def test_damaged_metrics_are_one_line_in_compare(tmp_path, metrics):
    run = _run_dir(tmp_path / "run")
    (run / "metrics.jsonl").write_bytes(metrics)
    with pytest.raises(ValueError, match="metrics.jsonl") as err:
        compare([run])
    one_line(str(err.value))


def test_a_run_json_that_is_not_utf8_names_the_file(tmp_path):
    run = _run_dir(tmp_path / "run")
    (run / "run.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ValueError, match="run.json is not valid JSON"):
        load_checkpoint(run)


@pytest.mark.parametrize("state", [{}, [1, 2], "damage:optimizer", "damage:rng", "damage:history"])
def test_a_wrong_shaped_state_is_one_line_and_the_run_is_kept(tmp_path, state):
    run_dir = _run_dir(tmp_path / "run")
    path = run_dir / "checkpoints" / "epoch-0001.pt"
    if isinstance(state, str):
        good = torch.load(path, weights_only=True)
        good[state.split(":")[1]] = 5
        state = good
    save_state(path, state)
    before = sorted(p.name for p in run_dir.rglob("*"))
    with pytest.raises(ValueError, match="epoch-0001.pt") as err:
        RunDir(run_dir).load()
    assert "--overwrite" in one_line(str(err.value))
    assert sorted(p.name for p in run_dir.rglob("*")) == before


@pytest.mark.parametrize("damage", ["truncated", "bad epoch"])
def test_damaged_weights_on_resume_name_the_file_and_lose_nothing(tmp_path, damage):
    from safetensors.torch import load_file, save_file

    run_dir = _run_dir(tmp_path / "run")
    weights = run_dir / "model.safetensors"
    if damage == "truncated":
        weights.unlink()  # model.safetensors is a hard link: damage a copy of its own
        weights.write_bytes((run_dir / "checkpoints" / "epoch-0001.safetensors").read_bytes()[:100])
    else:
        tensors = load_file(weights)
        weights.unlink()
        save_file(tensors, weights, metadata={"epoch": "abc"})
    saved = weights.read_bytes()
    run = RunDir(run_dir)
    with pytest.raises(ValueError, match="model.safetensors") as err:
        try:
            run.claim(resume=True, overwrite=False)
        finally:
            run.release()
    one_line(str(err.value))
    assert weights.read_bytes() == saved and (run_dir / "checkpoints" / "epoch-0001.safetensors").is_file()


# -- command-line values --------------------------------------------------------------------------------------

def _cli(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's usage error
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


@pytest.mark.parametrize("argv, message", [
    (["summary", "resnet18", "--input", "3x100000x100000"], "sides of at most 4096 pixels"),
    (["summary", "lenet", "--num-classes", "100000000000"], "num_classes must be at most 100,000"),
    (["train", "resnet18_book", "--resize", "100000"], "argument --resize: must be a side in pixels from 1"),
    (["train", "lenet", "--batch-size", "0"], "argument --batch-size: must be a whole number from 1"),
    (["eval", "nowhere", "--batch-size", "0"], "argument --batch-size: must be a whole number from 1"),
    (["train", "resnet18_book", "--resize", "4096"], "GiB for resnet18_book's activations"),
    (["train", "lenet", "--model-arg", "num_classes=3"], "--model-arg num_classes=... cannot be set"),
    (["train", "lenet", "--model-arg", "in_channels=3"], "--model-arg in_channels=... cannot be set"),
    (["train", "lenet", "--device", "meta"], "device 'meta' cannot train"),
    (["eval", "{run}", "--device", "meta"], "device 'meta' cannot train"),
    (["predict", "{run}", "x.png", "--device", "meta"], "device 'meta' cannot train"),
])
def test_command_line_values_that_cannot_work_are_one_line_before_any_work(argv, message, tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = _run_dir(tmp_path / "run")
    code, _, lines = _cli([a.format(run=run) for a in argv], capsys)
    assert code == 2 and message in lines[-1] and lines[-1].startswith(f"moderncnn {argv[0]}: error: ")
    assert not any("Traceback" in line for line in lines) and not (tmp_path / "runs").exists()


def test_summary_of_a_large_input_allocates_nothing(capsys):
    with peak_python_bytes() as mem:
        code, out, _ = _cli(["summary", "resnet18", "--input", "3x4096x4096"], capsys)
    assert code == 0 and "(1, 3, 4096, 4096)" in out and "10.00 GB" in out  # answered, not allocated
    assert mem["peak"] < 200 * 2**20


def test_an_unexpected_error_is_one_line_unless_debug(monkeypatch, capsys):
    import importlib

    def broken(*args, **kwargs):
        raise TypeError("something no check foresaw\nsecond line")

    monkeypatch.setattr(importlib.import_module("moderncnn.compare"), "compare", broken)
    code, _, lines = _cli(["compare", "lenet"], capsys)
    assert code == 1 and len(lines) == 1 and "unexpected TypeError: something no check foresaw" in lines[0]
    assert "--debug" in lines[0]
    with pytest.raises(TypeError):
        main(["compare", "lenet", "--debug"])


def test_select_device_takes_only_devices_that_train():
    assert select_device("cpu").type == "cpu"
    for bad in ("meta", "floppy", 3.5):
        with pytest.raises(ValueError):
            select_device(bad)
