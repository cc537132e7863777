"""Contract tests run over every registered model (small inputs, CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import moderncnn
from moderncnn.models import ModelBase
from moderncnn.registry import register_model

ALL = moderncnn.list_models()


def test_registry_is_populated():
    families = ["lenet", "alexnet", "vgg", "nin", "googlenet", "resnet", "densenet"]
    for family in families:
        assert moderncnn.list_models(f"{family}*"), f"no {family} model registered"


def _test_size(model: ModelBase) -> int:
    # small but valid: fixed-size networks get their minimum, the rest 32 pixels
    return model.min_input_size if model.max_input_size is not None else max(model.min_input_size, 32)


def _logits(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_and_api(name):
    torch.manual_seed(0)
    model = moderncnn.create_model(name)
    assert isinstance(model, ModelBase)
    assert model.model_name == name
    c, s = model.in_channels, _test_size(model)
    x = torch.rand(2, c, s, s)

    model.train()
    out = model(x)
    outputs = list(out) if isinstance(out, tuple) else [out]
    if isinstance(out, tuple):
        assert hasattr(model, "aux_loss_weight"), "only models with aux heads may return a tuple"
    for o in outputs:
        assert o.shape == (2, model.num_classes)
        assert torch.isfinite(o).all()
    sum(o.square().mean() for o in outputs).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"no gradient reaches {missing[:5]}"

    model.eval()
    with torch.no_grad():
        y = model(x)
        assert isinstance(y, torch.Tensor), "eval mode returns plain logits"
        assert torch.allclose(y, model.forward_head(model.forward_features(x)), atol=1e-5)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape[0] == 2
    assert isinstance(model.get_classifier(), nn.Module)


@pytest.mark.parametrize("name", ALL)
def test_declared_input_bounds_are_exact(name):
    model = moderncnn.create_model(name).eval()
    c, lo, hi = model.in_channels, model.min_input_size, model.max_input_size

    def runs(size: int) -> bool:
        x = torch.rand(1, c, size, size)
        try:
            with torch.no_grad():
                model.forward_head(model.forward_features(x))  # bypasses check_input on purpose
            return True
        except RuntimeError:
            return False

    assert runs(lo), f"{name} fails at its declared minimum {lo}"
    if lo > 1:
        assert not runs(lo - 1), f"{name} also runs at {lo - 1}: min_input_size is too large"
        with pytest.raises(ValueError, match=rf"{name} needs images of .*{lo}x{lo}.*resize them \(e.g. to \d+x\d+\)"):
            model(torch.rand(1, c, lo - 1, lo - 1))
    if hi is not None:
        assert runs(hi), f"{name} fails at its declared maximum {hi}"
        assert not runs(hi + 1), f"{name} also runs at {hi + 1}: max_input_size is too small"
        with pytest.raises(ValueError, match=name):
            model(torch.rand(1, c, hi + 1, hi + 1))


@pytest.mark.parametrize("name", ALL)
def test_num_classes_in_channels_and_reset(name):
    model = moderncnn.create_model(name, num_classes=7, in_channels=3).eval()
    assert (model.num_classes, model.in_channels) == (7, 3)
    s = _test_size(model)
    with torch.no_grad():
        assert model(torch.rand(1, 3, s, s)).shape == (1, 7)
        with pytest.raises(ValueError, match="in_channels=1"):
            model(torch.rand(1, 1, s, s))
        model.reset_classifier(4)
        assert model.num_classes == 4
        assert model(torch.rand(1, 3, s, s)).shape == (1, 4)
        with pytest.raises(ValueError, match="num_classes must be"):
            model.reset_classifier(0)
        assert model(torch.rand(1, 3, s, s)).shape == (1, 4)  # a refused reset leaves the head as it was


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"num_classes": -3}, {"num_classes": 2.5},
                                    {"in_channels": 0}])
def test_bad_sizes_are_one_line_errors(kwargs):
    (key, value), = kwargs.items()
    with pytest.raises(ValueError, match=f"{key} must be a positive integer, got {value}"):
        moderncnn.create_model("resnet18", **kwargs)


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match="did you mean.*resnet18"):
        moderncnn.create_model("resnt18")
    with pytest.raises(ValueError, match="moderncnn list"):
        moderncnn.create_model("no-such-thing")


def test_list_models_wildcards():
    assert set(moderncnn.list_models("resnet*")) >= {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}
    assert moderncnn.list_models("vgg1[13]") == ["vgg11", "vgg13"]
    assert moderncnn.list_models("nothing*") == []


def test_duplicate_registration_is_rejected():
    def lenet(**kw):  # same name as a registered builder
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="registered twice"):
        register_model(lenet)


def test_bad_input_rank():
    model = moderncnn.create_model("lenet")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        model(torch.rand(28, 28))


@pytest.mark.parametrize("name", ["lenet", "resnet18_book", "vgg11_book", "densenet121"])
def test_unknown_keyword_is_a_clear_error(name):
    with pytest.raises(ValueError, match=rf"{name} takes no argument 'colour'"):
        moderncnn.create_model(name, colour="red")
