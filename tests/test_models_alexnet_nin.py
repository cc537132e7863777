"""AlexNet (book and paper forms) and NiN against the book's own code and the papers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import moderncnn


# ---- the book's code, verbatim (d2l zh 2.0.0, PyTorch) -------------------------------------------------------------
def book_alexnet():
    return nn.Sequential(
        nn.Conv2d(1, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Flatten(),
        nn.Linear(6400, 4096), nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, 4096), nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, 10))


def book_nin_block(in_channels, out_channels, kernel_size, strides, padding):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, strides, padding),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU())


def book_nin():
    return nn.Sequential(
        book_nin_block(1, 96, kernel_size=11, strides=4, padding=0),
        nn.MaxPool2d(3, stride=2),
        book_nin_block(96, 256, kernel_size=5, strides=1, padding=2),
        nn.MaxPool2d(3, stride=2),
        book_nin_block(256, 384, kernel_size=3, strides=1, padding=1),
        nn.MaxPool2d(3, stride=2),
        nn.Dropout(0.5),
        book_nin_block(384, 10, kernel_size=3, strides=1, padding=1),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten())


def _layout(module: nn.Module) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(k, type(m).__name__, tuple(p.shape)) for k, m in module.named_modules() for p in m.parameters(recurse=False)]


@pytest.mark.parametrize("name, book, size", [("alexnet", book_alexnet, 224), ("nin", book_nin, 96)])
def test_book_forms_are_the_books_sequential(name, book, size):
    torch.manual_seed(0)
    book, ours = book(), moderncnn.create_model(name)
    assert _layout(ours) == _layout(book)
    ours.load_state_dict(book.state_dict(), strict=True)
    ours.eval(), book.eval()
    x = torch.rand(1, 1, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), book(x))


def test_nin_bn_is_nin_plus_batch_norm():
    plain, bn = moderncnn.create_model("nin"), moderncnn.create_model("nin_bn")
    plain_blocks = [m for m in plain if isinstance(m, nn.Sequential)]
    bn_blocks = [m for m in bn if isinstance(m, nn.Sequential)]
    assert len(bn_blocks) == len(plain_blocks) == 4
    for p, b in zip(plain_blocks, bn_blocks):
        assert [type(m) for m in b] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 3
        assert [repr(m) for m in b if not isinstance(m, nn.BatchNorm2d)] == [repr(m) for m in p]
        assert [m.num_features for m in b if isinstance(m, nn.BatchNorm2d)] == [b[0].out_channels] * 3
    assert [type(m) for m in bn if not isinstance(m, nn.Sequential)] == [
        type(m) for m in plain if not isinstance(m, nn.Sequential)
    ]


@pytest.mark.parametrize("name", ["nin", "nin_bn"])
def test_nin_classifier_is_the_last_block(name):
    torch.manual_seed(0)
    model = moderncnn.create_model(name).eval()
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape == (2, 384, 2, 2)
        torch.testing.assert_close(model.get_classifier()(pre).mean(dim=(2, 3)), model(x))
        model.reset_classifier(5)
        assert model(x).shape == (2, 5) and model.num_classes == 5
    block = model.get_classifier()
    assert not any(m.training for m in block.modules()), "the new block follows the model's eval mode"
    assert [m.out_channels for m in block if isinstance(m, nn.Conv2d)] == [5, 5, 5]
    assert any(isinstance(m, nn.BatchNorm2d) for m in block) == (name == "nin_bn")
    assert (block[0].in_channels, block[0].kernel_size, block[0].padding) == (384, (3, 3), (1, 1))


def test_book_alexnet_reset_classifier():
    model = moderncnn.create_model("alexnet", num_classes=3)
    model.reset_classifier(6)
    assert isinstance(model[-1], nn.Linear) and (model[-1].in_features, model[-1].out_features) == (4096, 6)


# ---- AlexNet, the paper's form --------------------------------------------------------------------------------------
PAPER_COUNTS = {"alexnet_paper": (2, 60_965_224, 724_406_816), "alexnet_paper_1gpu": (1, 62_378_344, 1_135_256_096)}


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_alexnet_paper(name):
    torch.manual_seed(0)
    model = moderncnn.create_model(name).eval()
    groups, params, macs = PAPER_COUNTS[name]
    assert model.groups == groups and moderncnn.create_model("alexnet_paper", groups=groups).groups == groups
    totals = moderncnn.summary(model, (3, 227, 227)).totals
    assert (totals.params, totals.macs) == (params, macs)
    norms = [m for m in model.features if isinstance(m, nn.LocalResponseNorm)]
    assert [(m.size, m.alpha, m.beta, m.k, m.alpha_over_size, m.groups) for m in norms] == \
        [(5, 1e-4, 0.75, 2.0, False, groups)] * 2
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    assert [c.groups for c in convs] == [1, groups, 1, groups, groups]  # conv2, conv4, conv5 split across the GPUs
    kinds = [type(m).__name__ for m in model.features]
    assert kinds[:8] == ["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d"] * 2  # LRN after conv1 and conv2 ReLUs
    assert kinds.count("LocalResponseNorm") == 2 and kinds.count("MaxPool2d") == 3
    assert [m.p for m in model.classifier if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    # split: conv4's first 192 outputs do not see its last 192 inputs
    x = torch.rand(1, 384, 5, 5)
    poked = x.clone()
    poked[:, 192:] += 1
    with torch.no_grad():
        delta = (convs[3](poked) - convs[3](x)).abs().amax(dim=(0, 2, 3))
    assert (delta[:192].max() == 0) == (groups == 2) and delta[192:].min() > 0

    x = torch.rand(1, 3, 227, 227)
    with torch.no_grad():
        assert model.forward_features(x).shape == (1, 256, 6, 6)
        assert model(x).shape == (1, 1000)
        model.reset_classifier(10)
        assert model(x).shape == (1, 10)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, 4096)


def test_alexnet_paper_rejects_bad_groups():
    with pytest.raises(ValueError, match="groups=2"):
        moderncnn.create_model("alexnet_paper", groups=3)


def test_alexnet_paper_lrn_is_the_papers_formula_within_each_gpu():
    # b = a / (k + alpha * sum of a^2 over the 5 neighbouring maps of the same GPU) ** beta, alpha = 1e-4
    lrn = moderncnn.create_model("alexnet_paper").features[2]
    a = torch.rand(1, 96, 3, 3, dtype=torch.float64) * 30
    half = a.view(1, 2, 48, 3, 3)
    sq = torch.nn.functional.pad(half.square(), (0, 0, 0, 0, 2, 2))
    window = sum(sq[:, :, j:j + 48] for j in range(5)).reshape(1, 96, 3, 3)
    torch.testing.assert_close(lrn(a), a / (2.0 + 1e-4 * window) ** 0.75)
    torch.testing.assert_close(moderncnn.create_model("alexnet_paper_1gpu").features[2](a),
                               nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)(a))  # PyTorch's alpha / size


# ---- NiN, the paper's ImageNet network ------------------------------------------------------------------------------
def test_nin_paper_is_the_released_imagenet_model():
    model = moderncnn.create_model("nin_paper").eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [
        (3, 96, 11, 4, 0), (96, 96, 1, 1, 0), (96, 96, 1, 1, 0),
        (96, 256, 5, 1, 2), (256, 256, 1, 1, 0), (256, 256, 1, 1, 0),
        (256, 384, 3, 1, 1), (384, 384, 1, 1, 0), (384, 384, 1, 1, 0),
        (384, 1024, 3, 1, 1), (1024, 1024, 1, 1, 0), (1024, 1000, 1, 1, 0)]
    assert all(m.ceil_mode for m in model if isinstance(m, nn.MaxPool2d))
    assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.5]
    totals = moderncnn.summary(model, (3, 224, 224)).totals
    assert (totals.params, totals.macs) == (7_595_176, 1_100_188_800)
    assert moderncnn.shape_walk(model, (3, 224, 224))[5].endswith("torch.Size([1, 384, 6, 6])")  # Caffe's 6x6
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 384, 1, 1)
        model.reset_classifier(7)
        assert model(x).shape == (2, 7)
    assert [m.out_channels for m in model.get_classifier() if isinstance(m, nn.Conv2d)] == [1024, 1024, 7]
