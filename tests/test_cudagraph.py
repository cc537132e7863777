"""The training step replayed as one CUDA graph (needs CUDA: skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from moderncnn import create_model
from moderncnn.cudagraph import GraphedStep
from moderncnn.train import init_weights, make_train_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def batches(sizes: list[int], channels_last: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for n in sizes:
        x = torch.rand(n, 1, 28, 28, generator=g).cuda()
        out.append((x.to(memory_format=torch.channels_last) if channels_last else x,
                    torch.randint(0, 10, (n,), generator=g).cuda()))
    return out


@pytest.mark.parametrize("channels_last", [False, True])
def test_replays_compute_what_the_eager_step_does(channels_last):
    torch.backends.cudnn.deterministic = True
    try:
        torch.manual_seed(0)
        models = [init_weights(create_model("lenet_bn")).cuda() for _ in range(2)]
        models[1].load_state_dict(models[0].state_dict())
        steps = [make_train_step(m, torch.optim.SGD(m.parameters(), lr=0.5), nn.CrossEntropyLoss(),
                                 cuda_graph=graph) for m, graph in zip(models, (None, 16))]
        assert isinstance(steps[1], GraphedStep)
        for x, y in batches([16] * 7 + [5, 16, 16], channels_last):  # warm-up, capture, replays; a smaller batch
            eager, graphed = steps[0](x, y), steps[1](x, y)
            for a, b in zip(eager, graphed):
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
        assert steps[1].graph is not None
        for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)  # batch norm's running stats too
    finally:
        torch.backends.cudnn.deterministic = False


def test_dropout_draws_new_masks_on_every_replay():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(784, 10)).cuda()
    step = make_train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), nn.CrossEntropyLoss(), cuda_graph=8)
    (x, y), = batches([8])
    losses = [step(x, y)[0].item() for _ in range(8)]  # lr 0: only the masks change
    assert len(set(losses[4:])) == 4, losses


def test_a_failed_capture_leaves_random_draws_working():
    # dropout in the eager fallback (and every later draw on the device) needs the generator out of capture mode
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(784, 10)).cuda()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].sum().item()))  # a host sync: no capture
    step = make_train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), nn.CrossEntropyLoss(), cuda_graph=8)
    (x, y), = batches([8])
    with pytest.warns(UserWarning, match="cannot be replayed as a CUDA graph"):
        losses = [step(x, y)[0].item() for _ in range(6)]
    assert step.failed and len(set(losses)) > 1  # new masks, eagerly
    assert torch.rand(4, device="cuda").unique().numel() == 4


def test_a_step_that_waits_for_the_host_warns_and_runs_eagerly():
    torch.manual_seed(0)
    model = init_weights(create_model("lenet")).cuda()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].max().item()))  # a host sync
    step = make_train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), cuda_graph=8)
    data = batches([8] * 6)
    with pytest.warns(UserWarning, match=r"cannot be replayed as a CUDA graph \(.*\); it runs eagerly from now on"):
        losses = [step(x, y)[0].item() for x, y in data]
    assert step.graph is None and step.failed and len(seen) == 6  # every batch ran, each once, eagerly
    torch.manual_seed(0)
    twin = init_weights(create_model("lenet")).cuda()
    eager = make_train_step(twin, torch.optim.SGD(twin.parameters(), lr=0.1), nn.CrossEntropyLoss())
    assert losses == pytest.approx([eager(x, y)[0].item() for x, y in data], rel=1e-4)


def test_a_compiled_step_replays_as_one_graph_and_computes_what_it_computes_unreplayed():
    # torch.compile's default mode launches its fused kernels one by one; the whole step, optimizer included,
    # is one graph around them (as fit does with --compile on CUDA)
    torch.backends.cudnn.deterministic = True
    try:
        torch.manual_seed(0)
        models = [init_weights(create_model("lenet_bn")).cuda() for _ in range(2)]
        models[1].load_state_dict(models[0].state_dict())
        steps = [make_train_step(torch.compile(m, dynamic=False), torch.optim.SGD(m.parameters(), lr=0.1),
                                 nn.CrossEntropyLoss(), cuda_graph=graph) for m, graph in zip(models, (None, 16))]
        for x, y in batches([16] * 7 + [16, 16]):
            unreplayed, graphed = steps[0](x, y), steps[1](x, y)
            for a, b in zip(unreplayed, graphed):
                torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)
        assert steps[1].graph is not None and not steps[1].failed
        for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=name)
    finally:
        torch.backends.cudnn.deterministic = False


def test_dropout_in_a_compiled_graph_draws_new_masks_on_every_replay():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(784, 10)).cuda()
    step = make_train_step(torch.compile(model, dynamic=False), torch.optim.SGD(model.parameters(), lr=0.0),
                           nn.CrossEntropyLoss(), cuda_graph=8)
    (x, y), = batches([8])
    losses = [step(x, y)[0].item() for _ in range(8)]  # lr 0: only the masks change
    assert step.graph is not None and len(set(losses[4:])) == 4, losses
