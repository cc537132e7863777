"""VGG: the book's blocks and network (d2l 7.2), and the paper's configurations A/B/D/E."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import moderncnn
from moderncnn.models.vgg import VGG, vgg, vgg_block
from book import assert_is_books_network


def book_vgg(conv_arch):
    """The book's own ``vgg(conv_arch)``, verbatim (1 input channel, 10 classes hardcoded)."""
    conv_blks = []
    in_channels = 1
    for (num_convs, out_channels) in conv_arch:
        conv_blks.append(vgg_block(num_convs, in_channels, out_channels))
        in_channels = out_channels
    return nn.Sequential(
        *conv_blks, nn.Flatten(),
        nn.Linear(out_channels * 7 * 7, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 10))


def test_vgg_block_is_convs_relus_then_a_halving_pool():
    blk = vgg_block(2, 3, 8)
    assert [type(m) for m in blk] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.MaxPool2d]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in blk[::2][:2]] == [
        (3, 8, (3, 3), (1, 1)), (8, 8, (3, 3), (1, 1))]
    assert blk(torch.rand(2, 3, 16, 10)).shape == (2, 8, 8, 5)


def test_vgg11_book_is_the_books_network():
    torch.manual_seed(0)
    conv_arch = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
    ratio = 4
    small_conv_arch = [(pair[0], pair[1] // ratio) for pair in conv_arch]
    book = book_vgg(small_conv_arch)
    ours = moderncnn.create_model("vgg11_book")
    assert_is_books_network(ours, book, torch.rand(1, 1, 224, 224))
    assert sum(p.numel() for p in ours.parameters()) == 43_093_322
    assert (ours.default_image_size, ours.min_input_size, ours.max_input_size) == (224, 224, 255)


@pytest.mark.parametrize("ratio", [0, 128, 2.5])
def test_vgg11_book_rejects_a_bad_ratio(ratio):
    with pytest.raises(ValueError, match="ratio"):
        moderncnn.create_model("vgg11_book", ratio=ratio)


def test_vgg_input_bounds_follow_the_number_of_blocks():
    net = vgg(((1, 4), (1, 8), (1, 8)), in_channels=3, num_classes=5).eval()
    assert (net.min_input_size, net.max_input_size, net.in_channels, net.num_classes) == (56, 63, 3, 5)
    with torch.no_grad():
        for size in (56, 63):
            assert net(torch.rand(1, 3, size, size)).shape == (1, 5)
        for size in (55, 64):
            with pytest.raises(RuntimeError):
                net.forward_head(net.forward_features(torch.rand(1, 3, size, size)))
    with pytest.raises(ValueError, match="conv_arch"):
        vgg(())


def _on_meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return moderncnn.create_model(name, **kwargs)


@pytest.mark.parametrize("depth", [11, 13, 16, 19])
@pytest.mark.parametrize("bn", [False, True])
def test_paper_vgg_depth_is_its_name(depth, bn):
    model = _on_meta(f"vgg{depth}" + ("_bn" if bn else ""))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) + len(linears) == depth
    assert len(norms) == (len(convs) if bn else 0)
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert len([m for m in model.features if isinstance(m, nn.MaxPool2d)]) == 5


def test_paper_vgg_api():
    model = _on_meta("vgg16", num_classes=7, in_channels=1).eval()
    x = torch.empty(2, 1, 64, 64, device="meta")
    assert model.forward_features(x).shape == (2, 512, 2, 2)  # unpooled
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 4096)
    assert model(x).shape == (2, 7)
    with torch.device("meta"):
        model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model(x).shape == (2, 3)
    assert [name for name, _ in model.stages()] == ["features", "avgpool", "flatten", "classifier"]


def test_paper_vgg_init_is_torchvisions():
    torch.manual_seed(0)
    model = VGG([16, "M", 32, "M"], batch_norm=True, num_classes=10)
    conv = model.features[0]
    assert conv.weight.std().item() == pytest.approx((2 / (16 * 9)) ** 0.5, rel=0.1)  # kaiming, fan_out
    assert not conv.bias.any()
    assert model.features[1].weight.eq(1).all() and not model.features[1].bias.any()
    assert model.classifier[0].weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert not model.classifier[0].bias.any()
