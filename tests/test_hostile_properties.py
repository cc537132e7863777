"""Random and mutated bytes fed to the readers of files: each returns well-formed data or raises the project's
one-line error, never another exception, a hang or an unbounded allocation (hypothesis)."""

from __future__ import annotations

import gzip
import io
import json
import signal
import tracemalloc
from pathlib import Path

import pytest
import torch
import torchvision.datasets.folder  # noqa: F401 - the folder loader's import, done before any timing or tracing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from moderncnn.data import DataError, load_image_folder
from moderncnn.data.idx import parse_idx
from moderncnn.rundir import RunDir

# no deadline: timings on a shared CI machine vary; a hang is caught by _bounded's alarm instead
FAST = settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
BOUND = 16 * 2**20  # bytes any one of these tiny inputs may cost to read
HANG = 60  # seconds any one of them may take (on a loaded machine; a FIFO or a loop never ends)


def _valid_idx() -> bytes:
    return bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 3]) + bytes(range(18))


def _mutated(draw, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "grow", "splice"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "grow":
            data[at:at] = draw(st.binary(max_size=64))
        else:
            data[at:at + 4] = draw(st.binary(min_size=4, max_size=4))
    return bytes(data)


@st.composite
def idx_files(draw) -> bytes:
    seed = _valid_idx()
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    data = _mutated(draw, seed)
    return gzip.compress(data, mtime=0) if draw(st.booleans()) else data


def _bounded(read):
    """``read()``, failing the test if it takes over HANG seconds or BOUND bytes (of Python's allocations)."""
    def hung(signum, frame):
        raise AssertionError(f"reading took over {HANG} s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG)
    tracemalloc.start()
    try:
        return read()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        assert peak < BOUND, f"reading cost {peak:,} bytes"


@FAST
@given(idx_files())
def test_the_idx_reader_returns_uint8_data_or_one_data_error(data):
    try:
        tensor = _bounded(lambda: parse_idx(data, "fuzz.idx"))
    except DataError as e:
        assert "fuzz.idx" in str(e) and "\n" not in str(e)
        return
    assert tensor.dtype == torch.uint8 and tensor.numel() == torch.Size(tensor.shape).numel()


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=12)
_KEYS = ["model", "model_kwargs", "recipe", "data", "input", "final", "speed", "status", "epochs_done", "processes"]


@st.composite
def run_json_bytes(draw) -> bytes:
    meta = {"model": "lenet", "model_kwargs": {"num_classes": 10}, "input": {"channels": 1, "size": 28},
            "data": {"name": "fashion-mnist", "classes": ["a", "b"]}, "recipe": {"name": "book", "epochs": 1}}
    for key in draw(st.lists(st.sampled_from(_KEYS), max_size=3)):
        meta[key] = draw(_JSON)
    raw = json.dumps(meta).encode()
    return _mutated(draw, raw) if draw(st.booleans()) else raw


@FAST
@given(raw=run_json_bytes())
def test_run_json_is_read_as_a_well_formed_object_or_one_value_error(raw, tmp_path):
    (tmp_path / "run.json").write_bytes(raw)
    try:
        meta = _bounded(RunDir(tmp_path).read_meta)
    except ValueError as e:
        assert "run.json" in str(e) and "\n" not in str(e)
        return
    assert isinstance(meta["model"], str) and all(isinstance(meta.get(k, {}), dict) for k in ("recipe", "data"))


def _png_bytes(mode: str) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (5, 4), 3).save(buf, format="PNG")
    return buf.getvalue()


@st.composite
def image_bytes(draw) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=120))
    return _mutated(draw, _png_bytes(draw(st.sampled_from(["L", "RGB", "RGBA", "P", "I;16", "LA", "1"]))))


@settings(FAST, max_examples=30)
@given(images=st.lists(image_bytes(), min_size=1, max_size=3))
def test_the_folder_loader_returns_a_dataset_or_one_data_error(images, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    for c in ("a", "b"):
        (root / c).mkdir()
        Image.new("L", (5, 4), 9).save(root / c / "good.png")
    for i, raw in enumerate(images):
        (root / "a" / f"x{i}.png").write_bytes(raw)
    try:
        data = _bounded(lambda: load_image_folder(root, "train", image_size=6))
    except DataError as e:
        assert "\n" not in str(e) and str(root) in str(e)
        return
    assert data.images.dtype == torch.uint8 and data.images.shape[1:] in ((1, 6, 6), (3, 6, 6))
