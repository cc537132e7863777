"""ResNet: the book's Residual / resnet_block / ResNet-18 (d2l 7.6) and the paper's ResNet-18..152."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import moderncnn
from moderncnn.models.resnet import BasicBlock, Bottleneck, Residual, resnet_block
from book import assert_is_books_network


def book_resnet18():
    """The book's own ResNet-18 ``nn.Sequential``, verbatim."""
    b1 = nn.Sequential(nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3),
                       nn.BatchNorm2d(64), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(*resnet_block(64, 64, 2, first_block=True))
    b3 = nn.Sequential(*resnet_block(64, 128, 2))
    b4 = nn.Sequential(*resnet_block(128, 256, 2))
    b5 = nn.Sequential(*resnet_block(256, 512, 2))
    return nn.Sequential(b1, b2, b3, b4, b5,
                         nn.AdaptiveAvgPool2d((1, 1)),
                         nn.Flatten(), nn.Linear(512, 10))


@pytest.mark.parametrize(
    "args, kwargs, out_shape",
    [((3, 3), {}, (4, 3, 6, 6)), ((3, 6), {"use_1x1conv": True, "strides": 2}, (4, 6, 3, 3))],
)
def test_residual_shapes_as_in_the_book(args, kwargs, out_shape):
    blk = Residual(*args, **kwargs)
    X = torch.rand(4, 3, 6, 6)
    assert blk(X).shape == out_shape
    keys = {k.rsplit(".", 1)[0] for k in blk.state_dict()}
    assert keys == {"conv1", "conv2", "bn1", "bn2"} | ({"conv3"} if kwargs else set())
    assert blk.conv1.bias is not None  # the book keeps conv biases


def test_residual_is_relu_of_branch_plus_shortcut():
    torch.manual_seed(0)
    blk = Residual(3, 3).eval()
    X = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        branch = blk.bn2(blk.conv2(torch.relu(blk.bn1(blk.conv1(X)))))
        torch.testing.assert_close(blk(X), torch.relu(branch + X))


def test_resnet_block_downsamples_unless_first():
    first = resnet_block(64, 64, 2, first_block=True)
    later = resnet_block(64, 128, 3)
    assert [b.conv3 is None for b in first] == [True, True]
    assert [b.conv3 is None for b in later] == [False, True, True]
    assert later[0].conv1.stride == (2, 2) and later[0].conv3.stride == (2, 2)
    assert nn.Sequential(*later)(torch.rand(1, 64, 8, 8)).shape == (1, 128, 4, 4)


def test_resnet18_book_is_the_books_network():
    torch.manual_seed(0)
    book = book_resnet18()
    ours = moderncnn.create_model("resnet18_book")
    assert_is_books_network(ours, book, torch.rand(2, 1, 96, 96))
    assert sum(p.numel() for p in ours.parameters()) == 11_178_378


def test_resnet18_book_shape_walk_at_224_as_printed_in_the_book():
    with torch.device("meta"):
        net = moderncnn.create_model("resnet18_book")
    X = torch.empty(1, 1, 224, 224, device="meta")
    shapes = []
    for _, layer in net.stages():
        X = layer(X)
        shapes.append(tuple(X.shape))
    assert shapes == [(1, 64, 56, 56), (1, 64, 56, 56), (1, 128, 28, 28), (1, 256, 14, 14), (1, 512, 7, 7),
                      (1, 512, 1, 1), (1, 512), (1, 10)]


def _on_meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return moderncnn.create_model(name, **kwargs)


@pytest.mark.parametrize("depth, block", [(18, BasicBlock), (34, BasicBlock), (50, Bottleneck), (101, Bottleneck), (152, Bottleneck)])
def test_paper_resnet_depth_block_and_features(depth, block):
    model = _on_meta(f"resnet{depth}").eval()
    weighted = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and "downsample" not in n]
    assert len(weighted) == depth  # the depth counts the convs on the main path and the fc
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert all(type(b) is block for b in blocks)
    assert sum(b.downsample is not None for b in blocks) == (3 if block is BasicBlock else 4)
    x = torch.empty(2, 3, 64, 64, device="meta")
    assert model.forward_features(x).shape == (2, 512 * block.expansion, 2, 2)  # unpooled, stride 32
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 512 * block.expansion)


def test_bottleneck_strides_on_the_3x3_conv():
    model = _on_meta("resnet50")
    first = model.layer2[0]
    assert (first.conv1.stride, first.conv2.stride, first.downsample[0].stride) == ((1, 1), (2, 2), (2, 2))
    assert not any(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_paper_resnet_api_and_zero_init_residual():
    torch.manual_seed(0)
    model = moderncnn.create_model("resnet18", num_classes=5, in_channels=1, zero_init_residual=True).eval()
    assert model.conv1.in_channels == 1 and model.fc.out_features == 5
    assert all(not b.bn2.weight.any() for b in model.modules() if isinstance(b, BasicBlock))
    assert model.bn1.weight.eq(1).all()
    model.reset_classifier(3)
    assert model.get_classifier() is model.fc and model.num_classes == 3
    with torch.no_grad():
        assert model(torch.rand(1, 1, 1, 1)).shape == (1, 3)  # padded downsampling: even 1x1 works
    assert [n for n, _ in model.stages()][-3:] == ["avgpool", "flatten", "fc"]
