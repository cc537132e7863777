"""The speed policy: one decision per run, the user's overrides, the reasons recorded, the model handed back."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import moderncnn.train.speed as speed
from moderncnn import create_model, fit, list_models
from moderncnn.layers import PatchAvgPool2d, RowStackedConv2d
from moderncnn.train import eval_speed, plan_speed

from test_train import FAST

CPU = torch.device("cpu")


@pytest.fixture(params=[True, False], ids=["cpu-bf16", "cpu"])
def native_bf16(request, monkeypatch):
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: request.param)
    return request.param


@pytest.mark.parametrize("name", sorted(list_models()))
def test_every_model_gets_a_plan_with_a_reason_for_each_option(name, native_bf16):
    with torch.device("meta"):  # the plan looks at the layers, not at their weights
        model = create_model(name)
    plan = plan_speed(CPU, model)
    assert plan.device_kind == ("cpu-bf16" if native_bf16 else "cpu")
    assert plan.amp in ((torch.bfloat16, None) if native_bf16 else (None,))
    assert set(plan.why) == set(speed.SPEED_OPTIONS) and all(plan.why.values())
    assert not plan.cuda_graph and not plan.row_stacked
    recorded = plan.as_dict()
    assert recorded["amp"] == ("bfloat16" if plan.amp else None) and recorded["why"] == plan.why


# What the whole book runs measured on a CPU with bf16 in hardware (docs/benchmarks.md): bf16, channels_last and
# the matmul pooling for LeNet; batch norm folded into BN LeNet's first convolution, the plain pooling beside it;
# the from-scratch batch norm, which is never folded, in fp32 and NCHW.
EXPECTED = {"lenet": dict(amp=torch.bfloat16, channels_last=True, fold_bn=False, patch_pool=True),
            "lenet_bn": dict(amp=torch.bfloat16, channels_last=True, fold_bn=True, patch_pool=False),
            "lenet_bn_scratch": dict(amp=None, channels_last=False, fold_bn=False, patch_pool=False),
            "alexnet": dict(amp=torch.bfloat16, channels_last=True, fold_bn=False, patch_pool=False),
            "densenet_book": dict(amp=torch.bfloat16, channels_last=True, fold_bn=False, patch_pool=False)}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_book_models_plans_follow_the_measurements(name, monkeypatch):
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: True)
    plan = plan_speed(CPU, create_model(name), image_size=28 if name.startswith("lenet") else 96)
    assert {k: getattr(plan, k) for k in EXPECTED[name]} == EXPECTED[name]
    # at 224 pixels the fold's moments would cost more than the batch norm: not folded, so as any narrow one
    if name == "lenet_bn":
        wide = plan_speed(CPU, create_model(name), image_size=224)
        assert not wide.fold_bn and not wide.channels_last and wide.amp is None
        unfolded = plan_speed(CPU, create_model(name), image_size=28, overrides={"fold_bn": False})
        assert not unfolded.channels_last and unfolded.why["fold_bn"] == "asked for"


def test_overrides_win_and_say_so(native_bf16):
    model = create_model("lenet")
    plan = plan_speed(CPU, model, overrides={"amp": False, "patch_pool": False, "channels_last": False})
    assert (plan.amp, plan.patch_pool, plan.channels_last) == (None, False, False)
    assert plan.why["amp"] == plan.why["patch_pool"] == "asked for"
    assert plan_speed(CPU, model, overrides={"amp": True}).amp == torch.bfloat16  # asked for, on any CPU
    with pytest.raises(ValueError, match="unknown speed option.*fold; use amp, channels_last"):
        plan_speed(CPU, model, overrides={"fold": True})
    with pytest.raises(ValueError, match="unknown speed option"):
        fit("lenet", "book", None, speed={"nosuch": True}, **FAST)  # before any data is looked for


def test_the_plan_is_off_where_nothing_was_measured():
    plan = plan_speed(torch.device("meta"), create_model("lenet"))
    assert plan.device_kind == "meta" and plan.amp is None
    assert not any(getattr(plan, o) for o in speed.SPEED_OPTIONS if o != "amp")


def test_precision_line_says_why_fp32_where_the_policy_chose_it(native_bf16):
    plan = plan_speed(CPU, create_model("lenet"))
    assert plan.precision == ("bfloat16 autocast" if native_bf16 else "fp32 (this CPU has no bf16 in hardware)")
    assert plan_speed(CPU, create_model("lenet"), overrides={"amp": False}).precision == "fp32"
    scratch = plan_speed(CPU, create_model("lenet_bn_scratch")).precision
    assert scratch == ("fp32 (batch norm over a few channels, unfolded, is slower in bf16)" if native_bf16
                       else "fp32 (this CPU has no bf16 in hardware)")


def test_freed_memory_is_kept_on_a_cpu_only():
    assert speed.keeps_freed_memory(CPU)[0]
    assert not speed.keeps_freed_memory(torch.device("cuda"))[0]


def test_the_speed_layers_run_while_training_and_the_model_comes_back_plain(native_bf16):
    model = create_model("lenet_bn", num_classes=4)
    stem, norm = model[0], model[1]
    pools = [m for m in model.modules() if isinstance(m, nn.AvgPool2d)]
    plan = plan_speed(CPU, model, overrides={"row_stacked": True, "fold_bn": True, "patch_pool": True})
    with plan.applied(model) as swaps:
        assert isinstance(stem, RowStackedConv2d) and type(stem).__name__ == "BNFoldedRowStackedConv2d"
        assert all(type(m) is PatchAvgPool2d for m in pools) and len(swaps) == 3 + len(pools)
        model(torch.rand(2, 1, 28, 28)).sum().backward()
    assert type(stem) is nn.Conv2d and type(norm) is nn.BatchNorm2d and all(type(m) is nn.AvgPool2d for m in pools)
    assert "stack_channels_last" not in vars(stem) and "folded_bn" not in vars(stem)


def test_fit_records_the_plan_and_its_reasons(native_bf16):
    from test_train import toy

    result = fit("lenet", "book", None, train_data=toy(64, "train"), test_data=toy(16, "test"),
                 **{**FAST, "amp": None, "epochs": 1})
    recorded = result.metadata["speed"]
    assert recorded["amp"] == ("bfloat16" if native_bf16 else None) and recorded["device_kind"] in ("cpu", "cpu-bf16")
    assert set(recorded["why"]) == set(speed.SPEED_OPTIONS)


def test_eval_takes_the_runs_precision_unless_this_cpu_would_emulate_it(native_bf16):
    model = create_model("lenet")
    run = {"amp": "bfloat16", "channels_last": True}
    plan = eval_speed(CPU, model, run, "cpu")
    assert (plan.amp, plan.channels_last) == (torch.bfloat16 if native_bf16 else None, True)
    assert eval_speed(CPU, model, run, "cpu", amp=False).amp is None
    assert eval_speed(CPU, model, {"amp": None, "channels_last": False}, "cpu").amp is None
    legacy = {"amp_dtype": "bfloat16", "channels_last": False}  # run.json before the policy had its name
    assert eval_speed(CPU, model, legacy, "cpu").amp == (torch.bfloat16 if native_bf16 else None)


@pytest.mark.parametrize("amx, avx512_bf16, native", [(True, False, True), (False, True, True),
                                                       (False, False, False), (None, None, False)])
def test_cpu_has_native_bf16_reads_the_cpu_features(amx, avx512_bf16, native, monkeypatch):
    for name, has in (("_is_amx_tile_supported", amx), ("_is_avx512_bf16_supported", avx512_bf16)):
        if has is None:  # an older torch without the check: counted as not there
            monkeypatch.delattr(torch.cpu, name, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, name, lambda has=has: has)
    speed.cpu_has_native_bf16.cache_clear()
    try:
        assert speed.cpu_has_native_bf16() is native
    finally:
        monkeypatch.undo()
        speed.cpu_has_native_bf16.cache_clear()
