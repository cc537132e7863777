"""GoogLeNet: the book's Inception block and 96x96 network, and the paper's form with auxiliary heads."""

import pytest
import torch
import torch.nn as nn
from torch.nn import functional as F

import moderncnn
from moderncnn.models.googlenet import GoogLeNetOutputs, Inception
from book import assert_is_books_network


def meta_model(name, **kwargs):
    """Shapes and types only: built on the meta device, so no memory or compute is spent."""
    with torch.device("meta"):
        return moderncnn.create_model(name, **kwargs)


@pytest.mark.parametrize("args", [
    (3, 1, (2, 3), (1, 4), 5),
    (8, 4, (4, 4), (2, 2), 1),
    (192, 64, (96, 128), (16, 32), 32),
])
def test_inception_output_channels(args):
    in_channels, c1, c2, c3, c4 = args
    y = Inception(*args)(torch.rand(2, in_channels, 5, 7))
    assert y.shape == (2, c1 + c2[1] + c3[1] + c4, 5, 7)


def test_inception_names_and_shapes_are_the_books():
    # The book's Inception(in_channels, c1, c2, c3, c4): p1_1 1x1; p2_1 1x1 -> p2_2 3x3; p3_1 1x1 -> p3_2 5x5;
    # p4_1 3x3 max pool -> p4_2 1x1.
    shapes = {k: tuple(v.shape) for k, v in Inception(192, 64, (96, 128), (16, 32), 32).state_dict().items()}
    assert shapes == {
        "p1_1.weight": (64, 192, 1, 1), "p1_1.bias": (64,),
        "p2_1.weight": (96, 192, 1, 1), "p2_1.bias": (96,),
        "p2_2.weight": (128, 96, 3, 3), "p2_2.bias": (128,),
        "p3_1.weight": (16, 192, 1, 1), "p3_1.bias": (16,),
        "p3_2.weight": (32, 16, 5, 5), "p3_2.bias": (32,),
        "p4_2.weight": (32, 192, 1, 1), "p4_2.bias": (32,),
    }


def book_net():
    # The book's code for the network (d2l 7.4), verbatim.
    b1 = nn.Sequential(nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3),
                       nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(nn.Conv2d(64, 64, kernel_size=1), nn.ReLU(),
                       nn.Conv2d(64, 192, kernel_size=3, padding=1), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b3 = nn.Sequential(Inception(192, 64, (96, 128), (16, 32), 32),
                       Inception(256, 128, (128, 192), (32, 96), 64),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b4 = nn.Sequential(Inception(480, 192, (96, 208), (16, 48), 64),
                       Inception(512, 160, (112, 224), (24, 64), 64),
                       Inception(512, 128, (128, 256), (24, 64), 64),
                       Inception(512, 112, (144, 288), (32, 64), 64),
                       Inception(528, 256, (160, 320), (32, 128), 128),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b5 = nn.Sequential(Inception(832, 256, (160, 320), (32, 128), 128),
                       Inception(832, 384, (192, 384), (48, 128), 128),
                       nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())
    return nn.Sequential(b1, b2, b3, b4, b5, nn.Linear(1024, 10))


def test_book_form_is_the_books_sequential():
    book, ours = book_net(), moderncnn.create_model("googlenet")
    assert_is_books_network(ours, book, torch.rand(2, 1, 64, 64))
    assert sum(p.numel() for p in ours.parameters()) == 5_977_530


def test_book_form_shape_walk_on_cpu():
    lines = moderncnn.shape_walk(moderncnn.create_model("googlenet"), (1, 96, 96))
    assert lines[2] == "Sequential output shape:\t torch.Size([1, 480, 6, 6])"
    assert lines[-1] == "Linear output shape:\t torch.Size([1, 10])"


# (in_channels, out_channels) of each inception module in the paper's Table 1.
PAPER_CHANNELS = {
    "inception3a": (192, 256), "inception3b": (256, 480),
    "inception4a": (480, 512), "inception4b": (512, 512), "inception4c": (512, 512),
    "inception4d": (512, 528), "inception4e": (528, 832),
    "inception5a": (832, 832), "inception5b": (832, 1024),
}
PAPER_SIDES = {"3": 28, "4": 14, "5": 7}  # map side per stage for a 224x224 input


def test_paper_form_table1_channels_and_map_sizes():
    model = meta_model("googlenet_paper").eval()
    seen = {}
    hooks = [getattr(model, n).register_forward_hook(
        lambda mod, args, out, n=n: seen.__setitem__(n, (args[0].shape[1], *out.shape[1:])))
        for n in PAPER_CHANNELS]
    model(torch.rand(1, 3, 224, 224, device="meta"))
    for h in hooks:
        h.remove()
    expected = {n: (cin, cout, PAPER_SIDES[n[9]], PAPER_SIDES[n[9]]) for n, (cin, cout) in PAPER_CHANNELS.items()}
    assert seen == expected


@pytest.mark.parametrize("aux_logits", [True, False])
def test_paper_form_aux_heads_only_in_training(aux_logits):
    model = meta_model("googlenet_paper", num_classes=7, aux_logits=aux_logits)
    x = torch.rand(2, 3, 224, 224, device="meta")
    model.train()
    out = model(x)
    if aux_logits:
        assert isinstance(out, GoogLeNetOutputs) and isinstance(out, tuple)
        assert [t.shape for t in out] == [(2, 7)] * 3
        assert model.aux_loss_weight == 0.3
    else:
        assert isinstance(out, torch.Tensor) and out.shape == (2, 7)
        assert not hasattr(model, "aux_loss_weight")
        assert not any(n.startswith("aux") for n, _ in model.named_parameters())
    model.eval()
    out = model(x)
    assert type(out) is torch.Tensor and out.shape == (2, 7)


def test_paper_form_trains_with_aux_losses_on_cpu():
    torch.manual_seed(0)
    model = moderncnn.create_model("googlenet_paper", num_classes=5, in_channels=1).train()
    out = model(torch.rand(1, 1, 223, 223))
    y = torch.tensor([3])
    loss = F.cross_entropy(out.logits, y) + model.aux_loss_weight * sum(F.cross_entropy(a, y) for a in out[1:])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())


def test_paper_form_parameter_count():
    no_aux = sum(p.numel() for p in meta_model("googlenet_paper", aux_logits=False).parameters())
    with_aux = sum(p.numel() for p in meta_model("googlenet_paper").parameters())
    # Table 1 sums to about 6.8M weights; it leaves out biases and miscounts conv1 and 4c/5a slightly.
    assert abs(no_aux - 6.8e6) / 6.8e6 < 0.05
    assert (no_aux, with_aux) == (6_998_552, 13_378_280)


def test_paper_form_rejects_unsupported_sizes():
    model = meta_model("googlenet_paper").eval()
    with pytest.raises(ValueError, match="223x223 to 254x254"):
        model(torch.rand(1, 3, 96, 96, device="meta"))
    with pytest.raises(ValueError, match="takes no options"):
        moderncnn.create_model("googlenet", aux_logits=True)


def test_reset_classifier_resets_aux_heads():
    model = meta_model("googlenet_paper")
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3
    assert model.aux1.fc2.out_features == model.aux2.fc2.out_features == 3
