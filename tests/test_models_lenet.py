"""LeNet: the book's forms against the book's own code; LeNet-5 against the 1998 paper."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import moderncnn
from moderncnn.layers import BatchNorm
from moderncnn.models.lenet import C3_TABLE, Squash, Subsampling, rbf_codes


# ---- the book's code, verbatim (d2l zh 2.0.0, PyTorch) -------------------------------------------------------------
def book_batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum):
    if not torch.is_grad_enabled():
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
    else:
        assert len(X.shape) in (2, 4)
        if len(X.shape) == 2:
            mean = X.mean(dim=0)
            var = ((X - mean) ** 2).mean(dim=0)
        else:
            mean = X.mean(dim=(0, 2, 3), keepdim=True)
            var = ((X - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        X_hat = (X - mean) / torch.sqrt(var + eps)
        moving_mean = momentum * moving_mean + (1.0 - momentum) * mean
        moving_var = momentum * moving_var + (1.0 - momentum) * var
    Y = gamma * X_hat + beta
    return Y, moving_mean.data, moving_var.data


class BookBatchNorm(nn.Module):
    def __init__(self, num_features, num_dims):
        super().__init__()
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.moving_mean = torch.zeros(shape)
        self.moving_var = torch.ones(shape)

    def forward(self, X):
        if self.moving_mean.device != X.device:
            self.moving_mean = self.moving_mean.to(X.device)
            self.moving_var = self.moving_var.to(X.device)
        Y, self.moving_mean, self.moving_var = book_batch_norm(
            X, self.gamma, self.beta, self.moving_mean, self.moving_var, eps=1e-5, momentum=0.9)
        return Y


def book_lenet():
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, 10))


def book_lenet_bn():
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), nn.BatchNorm2d(6), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.BatchNorm2d(16), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
        nn.Linear(256, 120), nn.BatchNorm1d(120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.BatchNorm1d(84), nn.Sigmoid(),
        nn.Linear(84, 10))


def book_lenet_bn_scratch():
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), BookBatchNorm(6, num_dims=4), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), BookBatchNorm(16, num_dims=4), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120), BookBatchNorm(120, num_dims=2), nn.Sigmoid(),
        nn.Linear(120, 84), BookBatchNorm(84, num_dims=2), nn.Sigmoid(),
        nn.Linear(84, 10))


BOOK = {"lenet": book_lenet, "lenet_bn": book_lenet_bn, "lenet_bn_scratch": book_lenet_bn_scratch}
MOVING = ("moving_mean", "moving_var")  # buffers in ours, plain attributes (not in the state dict) in the book's


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.endswith(MOVING)}


@pytest.mark.parametrize("name", BOOK)
def test_book_forms_are_the_books_sequential(name):
    torch.manual_seed(0)
    book, ours = BOOK[name](), moderncnn.create_model(name)
    assert [type(m) for m in ours] == [{BookBatchNorm: BatchNorm}.get(type(m), type(m)) for m in book]
    assert _shapes(ours) == _shapes(book)
    result = ours.load_state_dict(book.state_dict(), strict=name != "lenet_bn_scratch")
    assert all(k.endswith(MOVING) for k in result.missing_keys) and not result.unexpected_keys

    # same weights, same batches: the training-mode outputs and the statistics kept for evaluation agree
    for step in range(3):
        x = torch.rand(8, 1, 28, 28) + step
        torch.testing.assert_close(ours(x), book(x))
    ours.eval(), book.eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():  # the book's own BatchNorm reads prediction mode from here
        torch.testing.assert_close(ours(x), book(x))


@pytest.mark.parametrize("name", BOOK)
def test_book_forms_head_and_reset_classifier(name):
    model = moderncnn.create_model(name, num_classes=5, in_channels=3).eval()
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 84)
        model.reset_classifier(7)
        assert model(x).shape == (2, 7)
    assert model.get_classifier().in_features == 84 and model[0].in_channels == 3


# ---- LeNet-5, the paper's form --------------------------------------------------------------------------------------
# Table I of the paper: row = S2 map, column = C3 map, X = connected.
TABLE_I = """
X...XXX..XXXX.XX
XX...XXX..XXXX.X
XXX...XXX..X.XXX
.XXX..XXXX..X.XX
..XXX..XXXX.XX.X
...XXX..XXXX.XXX
""".split()


def test_lenet5_parameter_counts_per_layer():
    model = moderncnn.create_model("lenet5")
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    assert counts == {"c1": 156, "s2": 12, "c3": 1516, "s4": 32, "c5": 48120, "f6": 10164, "output": 0}
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 60_000


def test_lenet5_multiply_adds_count_the_real_connections():
    # C1 6x25x28x28 + C3 60x25x10x10 (Table I's kernels, not 16x6) + C5 120x16x25 + F6 120x84
    assert moderncnn.summary(moderncnn.create_model("lenet5"), (1, 32, 32)).totals.macs == 325_680
    c3 = moderncnn.create_model("lenet5").double().c3[0]
    x = torch.randn(2, 6, 14, 14, dtype=torch.float64)
    torch.testing.assert_close(c3(x), torch.nn.functional.conv2d(x, c3.dense_weight(), c3.bias))


def test_c3_follows_table_one():
    assert sum(row.count("X") for row in TABLE_I) == 60
    assert [tuple(r for r in range(6) if TABLE_I[r][k] == "X") for k in range(16)] == list(C3_TABLE)
    torch.manual_seed(0)
    c3 = moderncnn.create_model("lenet5").double().c3
    assert c3[0].weight.shape == (60, 5, 5)
    s2 = torch.randn(2, 6, 14, 14, dtype=torch.float64)
    with torch.no_grad():
        base = c3(s2)
        for j in range(6):
            poked = s2.clone()
            poked[:, j] += torch.randn(2, 14, 14, dtype=torch.float64)
            changed = (c3(poked) - base).abs().amax(dim=(0, 2, 3)) > 1e-12
            assert "".join("X" if c else "." for c in changed) == TABLE_I[j], f"S2 map {j}"


def test_lenet5_layers_as_the_paper_defines_them():
    torch.manual_seed(0)
    f = Squash()
    torch.testing.assert_close(f(torch.tensor([-1.0, 0.0, 1.0])), torch.tensor([-1.0, 0.0, 1.0]), atol=1e-4, rtol=0)

    s2 = Subsampling(6)
    x = torch.randn(2, 6, 8, 8)
    window_sums = x.view(2, 6, 4, 2, 4, 2).sum(dim=(3, 5))
    torch.testing.assert_close(s2(x), window_sums * s2.weight.view(1, 6, 1, 1) + s2.bias.view(1, 6, 1, 1))

    model = moderncnn.create_model("lenet5").eval()
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        f6 = model.forward_head(model.forward_features(x), pre_logits=True)
        assert model.forward_features(x).shape == (3, 120, 1, 1) and f6.shape == (3, 84)
        torch.testing.assert_close(model(x), -torch.cdist(f6, model.output.codes) ** 2, rtol=1e-5, atol=1e-3)
    assert "output.codes" in model.state_dict()


def test_rbf_codes():
    digits = rbf_codes(10)
    assert digits.shape == (10, 84) and set(digits.unique().tolist()) == {-1.0, 1.0}
    hamming = (digits[:, None] != digits[None]).sum(-1) + 84 * torch.eye(10, dtype=torch.long)
    assert hamming.min() == 8  # the closest pair of our digit drawings (3 and 5)
    many = rbf_codes(26)
    assert torch.equal(many, rbf_codes(26)) and torch.equal(many[:12], rbf_codes(12))  # deterministic, prefix-stable
    assert len({tuple(c) for c in many.tolist()}) == 26 and set(many.unique().tolist()) == {-1.0, 1.0}
    with pytest.raises(ValueError, match="num_classes"):
        rbf_codes(0)


def test_lenet5_reset_classifier_and_channels():
    model = moderncnn.create_model("lenet5", in_channels=3).eval()
    assert sum(p.numel() for p in model.c1.parameters()) == 6 * 3 * 25 + 6
    model.reset_classifier(4)
    assert model.get_classifier().codes.shape == (4, 84) and model.num_classes == 4
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    assert sum(p.numel() for p in model.parameters()) == 60_000 + 6 * 2 * 25
