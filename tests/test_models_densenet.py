"""DenseNet: the book's conv_block / DenseBlock / transition_block / network (d2l 7.7) and DenseNet-BC."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import moderncnn
from moderncnn.models.densenet import DenseBlock, DenseNet, DenseLayer, Transition, conv_block, transition_block
from book import assert_is_books_network


def book_densenet():
    """The book's own DenseNet ``nn.Sequential``, verbatim."""
    b1 = nn.Sequential(
        nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3),
        nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    num_channels, growth_rate = 64, 32
    num_convs_in_dense_blocks = [4, 4, 4, 4]
    blks = []
    for i, num_convs in enumerate(num_convs_in_dense_blocks):
        blks.append(DenseBlock(num_convs, num_channels, growth_rate))
        num_channels += num_convs * growth_rate
        if i != len(num_convs_in_dense_blocks) - 1:
            blks.append(transition_block(num_channels, num_channels // 2))
            num_channels = num_channels // 2
    return nn.Sequential(
        b1, *blks,
        nn.BatchNorm2d(num_channels), nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(num_channels, 10))


def test_conv_block_is_bn_relu_conv():
    blk = conv_block(3, 5)
    assert [type(m) for m in blk] == [nn.BatchNorm2d, nn.ReLU, nn.Conv2d]
    assert blk[2].kernel_size == (3, 3) and blk[2].bias is not None
    assert blk(torch.rand(2, 3, 7, 7)).shape == (2, 5, 7, 7)


def test_dense_block_and_transition_as_in_the_book():
    blk = DenseBlock(2, 3, 10)
    X = torch.rand(4, 3, 8, 8)
    Y = blk(X)
    assert Y.shape == (4, 3 + 2 * 10, 8, 8)  # input channels + num_convs * growth
    torch.testing.assert_close(Y[:, :3], X)  # the input is passed through by concatenation
    assert list(blk.state_dict())[:2] == ["net.0.0.weight", "net.0.0.bias"]  # the book's self.net
    assert blk.net[1][0].num_features == 13
    blk = transition_block(23, 10)
    assert blk(Y).shape == (4, 10, 4, 4)


def test_densenet_book_is_the_books_network():
    torch.manual_seed(0)
    book = book_densenet()
    ours = moderncnn.create_model("densenet_book")
    x = torch.rand(2, 1, 96, 96)
    assert_is_books_network(ours, book, x)
    assert ours[-1].in_features == 248  # 64 -> 192 -> 96 -> 224 -> 112 -> 240 -> 120 -> 248
    assert sum(p.numel() for p in ours.parameters()) == 758_226
    assert ours.forward_features(x).shape == (2, 248, 3, 3)  # after the final BN and ReLU, unpooled


def _on_meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return moderncnn.create_model(name, **kwargs)


@pytest.mark.parametrize("depth, blocks, channels", [(121, (6, 12, 24, 16), 1024), (169, (6, 12, 32, 32), 1664), (201, (6, 12, 48, 32), 1920)])
def test_paper_densenet_depth_and_width(depth, blocks, channels):
    model = _on_meta(f"densenet{depth}").eval()
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weighted) == depth  # stem + 2 per dense layer + 3 transitions + classifier
    assert [len(getattr(model.features, f"denseblock{i}")) for i in (1, 2, 3, 4)] == list(blocks)
    layer = model.features.denseblock1.denselayer1
    assert (layer.conv1.out_channels, layer.conv2.out_channels) == (4 * 32, 32)  # bottleneck 4k, growth k
    assert [getattr(model.features, f"transition{i}").conv.out_channels for i in (1, 2, 3)] == [
        (64 + 6 * 32) // 2, ((64 + 6 * 32) // 2 + 12 * 32) // 2,
        (((64 + 6 * 32) // 2 + 12 * 32) // 2 + blocks[2] * 32) // 2]  # compression 0.5
    x = torch.empty(2, 3, 64, 64, device="meta")
    assert model.forward_features(x).shape == (2, channels, 2, 2)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, channels)


def test_small_densenet_forward_dropout_and_reset():
    torch.manual_seed(0)
    model = DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, compression=0.5, drop_rate=0.5,
                     num_classes=3, in_channels=2)
    assert model.features.transition1.conv.out_channels == (8 + 2 * 4) // 2
    assert model.num_features == (8 + 2 * 4) // 2 + 2 * 4
    assert model.min_input_size == 5  # stem to ceil(5 / 4) = 2, one transition to 1
    x = torch.rand(2, 2, 16, 16)
    model.train()
    assert not torch.equal(model(x), model(x))  # dropout after each dense layer
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        features = model.forward_features(x)
        assert (features >= 0).all()  # the final ReLU belongs to the features, as in timm
        model.reset_classifier(6)
        assert model(x).shape == (2, 6) and model.get_classifier().out_features == 6
    assert [n for n, _ in model.stages()] == ["features", "relu", "avgpool", "flatten", "classifier"]


def test_paper_blocks_have_no_conv_bias():
    layer, trans = DenseLayer(8, growth_rate=4, bn_size=4), Transition(8, 4)
    assert layer.conv1.bias is None and layer.conv2.bias is None and trans.conv.bias is None
    assert layer(torch.rand(1, 8, 5, 5)).shape == (1, 4, 5, 5)
    assert trans(torch.rand(1, 8, 5, 5)).shape == (1, 4, 2, 2)
