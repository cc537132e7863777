"""Every architecture torchvision also builds: same parameter count, its state dict loads strict=True,
and with those weights our forward gives torchvision's outputs.

Both models are built on the meta device (no init cost: the VGGs alone would take tens of seconds) and
get the same random weights with ``load_state_dict(assign=True)``. The weights are random everywhere,
batch-norm statistics included, so a swapped or misplaced layer changes the output.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

import moderncnn

# torchvision's documented ImageNet-1k parameter counts (exact).
PARAMS = {
    "vgg11": 132_863_336, "vgg11_bn": 132_868_840, "vgg13": 133_047_848, "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544, "vgg16_bn": 138_365_992, "vgg19": 143_667_240, "vgg19_bn": 143_678_248,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
    "densenet121": 7_978_856, "densenet169": 14_149_480, "densenet201": 20_013_928,
}

# Shared across models by (key, shape): the VGGs' 120M-parameter classifiers are drawn once.
_RANDOM: dict[tuple[str, torch.Size], torch.Tensor] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny inputs gain nothing from threads, and on a busy machine OpenMP's spin-waits make them 5-10x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _random_like(key: str, meta: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if (key, meta.shape) in _RANDOM:
        return _RANDOM[key, meta.shape]
    if not meta.is_floating_point():  # num_batches_tracked
        value = torch.zeros(meta.shape, dtype=meta.dtype)
    elif key.endswith("running_var") or (meta.dim() == 1 and key.endswith("weight")):
        value = torch.rand(meta.shape, generator=gen) + 0.5  # BN scale and variance: positive, near 1
    elif meta.dim() == 1:
        value = 0.1 * torch.randn(meta.shape, generator=gen)  # biases and running means
    else:
        fan_in = meta[0].numel()
        value = torch.randn(meta.shape, generator=gen) * (2.0 / fan_in) ** 0.5
    _RANDOM[key, meta.shape] = value
    return value


def _on_meta(build, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return build(**kwargs)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_matches_torchvision(name):
    ours = _on_meta(moderncnn.get_model_builder(name))
    theirs = _on_meta(getattr(torchvision.models, name), weights=None)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters()) == PARAMS[name]

    gen = torch.Generator().manual_seed(0)
    state = {k: _random_like(k, v, gen) for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(state, strict=True, assign=True)
    ours.load_state_dict(theirs.state_dict(), strict=True, assign=True)

    x = torch.randn(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        expected = theirs.eval()(x)
        got = ours.eval()(x)
    assert expected.abs().max() > 1e-3, "degenerate comparison: torchvision's output is ~0"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_a_real_build_has_torchvision_keys_and_init_statistics(name):
    """Built for real (not on meta): our init gives the same kind of weights torchvision's does."""
    torch.manual_seed(0)
    ours = moderncnn.create_model(name)
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)(weights=None)
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd)  # the same order, too
    for key, value in theirs_sd.items():
        if value.is_floating_point() and value.numel() > 1000:
            assert ours_sd[key].std().item() == pytest.approx(value.std().item(), rel=0.05), key
        elif value.is_floating_point():
            assert torch.allclose(ours_sd[key].float().mean(), value.float().mean(), atol=0.05), key
