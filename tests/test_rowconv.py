"""Single-channel convolutions over stacked rows: the same function as nn.Conv2d, only computed otherwise."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import moderncnn
from moderncnn.layers import RowStackedConv2d, row_stackable, use_row_stacked

from fixtures import assert_same_as_conv2d

ALL = moderncnn.list_models()


@pytest.mark.parametrize("kernel, stride, padding, size", [
    (5, 1, 2, (28, 28)), (3, 1, 1, (9, 7)), (11, 4, 1, (35, 35)), (7, 2, 3, (20, 17)),
    ((5, 3), (2, 1), (1, 2), (12, 10)), (3, 3, 0, (10, 11)), (2, 1, 0, (5, 5)),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_same_outputs_and_gradients_as_conv2d(kernel, stride, padding, size, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, kernel, stride, padding).double()
    rows = nn.Conv2d(1, 4, kernel, stride, padding).double()
    rows.load_state_dict(conv.state_dict())
    assert use_row_stacked(rows, channels_last).modules() == [rows] and type(rows) is RowStackedConv2d
    x = torch.randn(3, 1, *size, dtype=torch.float64, requires_grad=True)
    assert_same_as_conv2d(rows, conv, x)
    assert rows(x).is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("channels_last", [False, True])
def test_under_autocast_the_image_is_cast_before_stacking_and_its_gradient_flows(channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 6, 5, 1, 2)
    rows = nn.Conv2d(1, 6, 5, 1, 2)
    rows.load_state_dict(conv.state_dict())
    use_row_stacked(rows, channels_last)
    x = torch.rand(4, 1, 12, 12, requires_grad=True)
    with torch.autocast("cpu", torch.bfloat16):
        out, ref = rows(x), conv(x)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)  # the same bf16 products, summed in another order
    grad = torch.randn_like(ref)
    ours, theirs = (torch.autograd.grad(y, (x, layer.weight), grad) for y, layer in ((out, rows), (ref, conv)))
    assert ours[0].dtype == torch.float32
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=5e-2, rtol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("channels_last", [False, True])
def test_same_outputs_and_gradients_on_cuda(channels_last):  # the CUDA default too
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 8, 11, 4, 1).double().cuda()
    rows = nn.Conv2d(1, 8, 11, 4, 1).double().cuda()
    rows.load_state_dict(conv.state_dict())
    use_row_stacked(rows, channels_last)
    x = torch.randn(3, 1, 35, 35, dtype=torch.float64, device="cuda", requires_grad=True)
    assert_same_as_conv2d(rows, conv, x)


def test_only_plain_single_channel_convolutions_are_converted():
    keep = [nn.Conv2d(3, 4, 3), nn.Conv2d(1, 4, (1, 5)), nn.Conv2d(1, 4, 3, dilation=2),
            nn.Conv2d(1, 4, 3, padding="same"), nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"),
            type("MyConv", (nn.Conv2d,), {})(1, 4, 3)]
    converted = [nn.Conv2d(1, 4, 3), nn.Conv2d(1, 8, 5, stride=2, padding=2, bias=False)]
    model = nn.Sequential(*keep, *converted)
    assert [row_stackable(m) for m in model] == [False] * len(keep) + [True] * len(converted)
    keys = list(model.state_dict())
    done = use_row_stacked(model)
    assert done.modules() == converted and list(model.state_dict()) == keys
    done.restore()
    assert all(type(m) is nn.Conv2d for m in converted) and not hasattr(converted[0], "stack_channels_last")


@pytest.mark.parametrize("name", ALL)
def test_every_model_computes_the_same_with_its_stem_over_stacked_rows(name):
    torch.manual_seed(0)
    model = moderncnn.create_model(name, in_channels=1).double()
    size = model.min_input_size if model.max_input_size is not None else max(model.min_input_size, 32)
    x = torch.rand(2, 1, size, size, dtype=torch.float64)
    model.eval()
    plain = model(x)
    converted = use_row_stacked(model)
    assert converted, "every model's first convolution takes the one grey channel"
    torch.testing.assert_close(model(x), plain)
    converted.restore()
