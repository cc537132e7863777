"""summary(): the layer table and its totals; shape_walk(): the lines the book prints."""

import pytest
import torch
import torch.nn as nn

import moderncnn
from moderncnn import shape_walk, summary


def conv_linear():
    # Conv 1->2, 3x3 on 5x5: 2 maps x 3x3 positions x 9 taps = 162 MACs, 20 params.
    # Linear 18->4: 72 MACs, 76 params.
    return nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), nn.Flatten(), nn.Linear(18, 4))


@pytest.mark.parametrize("batch", [1, 3])
def test_macs_and_params_of_a_hand_computable_model(batch):
    size = (1, 5, 5) if batch == 1 else (batch, 1, 5, 5)
    s = summary(conv_linear(), size)
    t = s.totals
    assert t.params == t.trainable_params == 96
    assert t.macs == batch * (162 + 72)
    assert t.flops == 2 * t.macs
    assert t.input_size == (batch, 1, 5, 5) and t.output_shape == (batch, 4)
    rows = {r.name: r for r in s.rows}
    assert (rows["0.0"].macs, rows["0.0"].params, rows["0.0"].output_shape) == (batch * 162, 20, (batch, 2, 3, 3))
    assert (rows["2"].macs, rows["2"].params) == (batch * 72, 76)
    # leaf outputs: conv 18, relu 18, flatten 18, linear 4 floats per sample
    assert t.activation_bytes == batch * (18 + 18 + 18 + 4) * 4
    assert t.param_bytes == 96 * 4


@pytest.mark.parametrize("depth, names", [
    (1, ["0", "1", "2"]),
    (2, ["0", "0.0", "0.1", "1", "2"]),
    (None, ["0", "0.0", "0.1", "1", "2"]),
])
def test_depth_filters_rows_and_keeps_the_sums(depth, names):
    s = summary(conv_linear(), (1, 5, 5), depth=depth)
    assert [r.name for r in s.rows] == names
    assert sum(r.params for r in s.rows) == s.totals.params
    assert sum(r.macs for r in s.rows) == s.totals.macs


@pytest.mark.parametrize("name, size, depth", [("googlenet", (1, 96, 96), None), ("resnet18_book", (1, 64, 64), 1)])
def test_totals_match_the_registered_models(name, size, depth):
    model = moderncnn.create_model(name)
    s = summary(model, size, depth=depth)
    assert s.totals.params == sum(p.numel() for p in model.parameters())
    assert sum(r.params for r in s.rows) == s.totals.params
    assert sum(r.macs for r in s.rows) == s.totals.macs > 0
    assert s.totals.output_shape == (1, 10)


def test_string_rendering_shows_the_totals():
    model = nn.Sequential(nn.Flatten(), nn.Linear(1000, 1000))
    s = summary(model, (1, 1, 1000))
    text = str(s)
    assert "1,001,000" in text and "1,000,000" in text
    assert "MACs" in text and "1.00 M" in text and "2.00 M" in text
    header = next(line for line in text.splitlines() if line.startswith("Layer"))
    row = next(line for line in text.splitlines() if line.startswith("1 "))
    assert len(row) == len(header)  # columns aligned, numbers right-aligned
    assert s.to_dict()["totals"]["params"] == 1_001_000
    assert [r["name"] for r in s.as_rows()] == ["0", "1"]


def test_module_used_twice():
    relu = nn.ReLU()
    conv = nn.Conv2d(2, 2, 3, padding=1)  # shared weights: counted once, computed twice
    model = nn.Sequential(conv, relu, conv, relu)
    s = summary(model, (2, 4, 4))
    assert s.totals.params == 38
    assert s.totals.macs == 2 * (2 * 2 * 9 * 16)
    rows = {r.name: r for r in s.rows}
    assert set(rows) == {"0", "1"}
    assert rows["0"].calls == rows["1"].calls == 2 and rows["0"].macs == s.totals.macs
    assert "ReLU x2" in str(s)


class Probe(nn.Module):
    """Records the mode it ran in; owns a head that its forward never calls."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.unused = nn.Linear(3, 5)
        self.modes = []

    def forward(self, x):
        self.modes.append((self.training, torch.is_grad_enabled()))
        return self.fc(x)


def test_runs_in_eval_without_grad_and_restores_the_mode():
    model = Probe().train()
    s = summary(model, (1, 1, 3))
    assert model.modes == [(False, False)] and model.training
    unused = next(r for r in s.rows if r.name == "unused")
    assert (unused.calls, unused.output_shape, unused.params, unused.macs) == (0, None, 20, 0)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_bad_input_gives_the_models_own_error():
    model = moderncnn.create_model("googlenet")
    with pytest.raises(ValueError) as expected:
        model.check_input(torch.rand(1, 3, 96, 96))
    for fn in (summary, shape_walk):
        with pytest.raises(ValueError) as got:
            fn(model, (3, 96, 96))
        assert str(got.value) == str(expected.value)
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("size", [(96, 96), (1, 1, 1, 96, 96), (1, 0, 96), (1, 96.0, 96)])
def test_bad_input_size(size):
    with pytest.raises(ValueError, match="input_size"):
        summary(conv_linear(), size)


def test_device_mismatch_is_a_clear_error():
    with torch.device("meta"):
        model = conv_linear()
    with pytest.raises(ValueError, match="model is on meta"):
        summary(model, (1, 5, 5), device="cpu")


def walk(*shapes):
    return [f"{cls} output shape:\t torch.Size([{', '.join(map(str, shape))}])" for cls, shape in shapes]


# What the book prints for each network (d2l chapters 6.6 and 7), batch 1.
BOOK_WALKS = {
    "lenet": ((1, 28, 28), {}, walk(
        ("Conv2d", (1, 6, 28, 28)), ("Sigmoid", (1, 6, 28, 28)), ("AvgPool2d", (1, 6, 14, 14)),
        ("Conv2d", (1, 16, 10, 10)), ("Sigmoid", (1, 16, 10, 10)), ("AvgPool2d", (1, 16, 5, 5)),
        ("Flatten", (1, 400)), ("Linear", (1, 120)), ("Sigmoid", (1, 120)),
        ("Linear", (1, 84)), ("Sigmoid", (1, 84)), ("Linear", (1, 10)))),
    "alexnet": ((1, 224, 224), {}, walk(
        ("Conv2d", (1, 96, 54, 54)), ("ReLU", (1, 96, 54, 54)), ("MaxPool2d", (1, 96, 26, 26)),
        ("Conv2d", (1, 256, 26, 26)), ("ReLU", (1, 256, 26, 26)), ("MaxPool2d", (1, 256, 12, 12)),
        ("Conv2d", (1, 384, 12, 12)), ("ReLU", (1, 384, 12, 12)),
        ("Conv2d", (1, 384, 12, 12)), ("ReLU", (1, 384, 12, 12)),
        ("Conv2d", (1, 256, 12, 12)), ("ReLU", (1, 256, 12, 12)), ("MaxPool2d", (1, 256, 5, 5)),
        ("Flatten", (1, 6400)), ("Linear", (1, 4096)), ("ReLU", (1, 4096)), ("Dropout", (1, 4096)),
        ("Linear", (1, 4096)), ("ReLU", (1, 4096)), ("Dropout", (1, 4096)), ("Linear", (1, 10)))),
    # The book prints the walk of the full-width vgg(conv_arch); it trains the ratio-4 one.
    "vgg11_book": ((1, 224, 224), {"ratio": 1}, walk(
        ("Sequential", (1, 64, 112, 112)), ("Sequential", (1, 128, 56, 56)), ("Sequential", (1, 256, 28, 28)),
        ("Sequential", (1, 512, 14, 14)), ("Sequential", (1, 512, 7, 7)), ("Flatten", (1, 25088)),
        ("Linear", (1, 4096)), ("ReLU", (1, 4096)), ("Dropout", (1, 4096)),
        ("Linear", (1, 4096)), ("ReLU", (1, 4096)), ("Dropout", (1, 4096)), ("Linear", (1, 10)))),
    "nin": ((1, 224, 224), {}, walk(
        ("Sequential", (1, 96, 54, 54)), ("MaxPool2d", (1, 96, 26, 26)),
        ("Sequential", (1, 256, 26, 26)), ("MaxPool2d", (1, 256, 12, 12)),
        ("Sequential", (1, 384, 12, 12)), ("MaxPool2d", (1, 384, 5, 5)), ("Dropout", (1, 384, 5, 5)),
        ("Sequential", (1, 10, 5, 5)), ("AdaptiveAvgPool2d", (1, 10, 1, 1)), ("Flatten", (1, 10)))),
    "googlenet": ((1, 96, 96), {}, walk(
        ("Sequential", (1, 64, 24, 24)), ("Sequential", (1, 192, 12, 12)), ("Sequential", (1, 480, 6, 6)),
        ("Sequential", (1, 832, 3, 3)), ("Sequential", (1, 1024)), ("Linear", (1, 10)))),
    "resnet18_book": ((1, 224, 224), {}, walk(
        ("Sequential", (1, 64, 56, 56)), ("Sequential", (1, 64, 56, 56)), ("Sequential", (1, 128, 28, 28)),
        ("Sequential", (1, 256, 14, 14)), ("Sequential", (1, 512, 7, 7)),
        ("AdaptiveAvgPool2d", (1, 512, 1, 1)), ("Flatten", (1, 512)), ("Linear", (1, 10)))),
    "densenet_book": ((1, 96, 96), {}, walk(
        ("Sequential", (1, 64, 24, 24)),
        ("DenseBlock", (1, 192, 24, 24)), ("Sequential", (1, 96, 12, 12)),
        ("DenseBlock", (1, 224, 12, 12)), ("Sequential", (1, 112, 6, 6)),
        ("DenseBlock", (1, 240, 6, 6)), ("Sequential", (1, 120, 3, 3)),
        ("DenseBlock", (1, 248, 3, 3)), ("BatchNorm2d", (1, 248, 3, 3)), ("ReLU", (1, 248, 3, 3)),
        ("AdaptiveAvgPool2d", (1, 248, 1, 1)), ("Flatten", (1, 248)), ("Linear", (1, 10)))),
}


@pytest.mark.parametrize("name", list(BOOK_WALKS))
def test_shape_walk_prints_what_the_book_prints(name):
    size, kwargs, expected = BOOK_WALKS[name]
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = moderncnn.create_model(name, **kwargs)
    assert shape_walk(model, size) == expected


def test_shape_walk_formats_like_the_books_print():
    assert walk(("Conv2d", (1, 96, 54, 54)))[0] == "Conv2d output shape:\t torch.Size([1, 96, 54, 54])"
    model = nn.Sequential(nn.Conv2d(1, 96, 11, stride=4, padding=1))
    line = shape_walk(model, (1, 224, 224))[0]
    x = torch.rand(1, 1, 224, 224)
    assert line == " ".join(["Conv2d", "output shape:\t", str(model(x).shape)])
