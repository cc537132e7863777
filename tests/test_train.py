"""The trainer, recipes, checkpoints, evaluation and prediction, on tiny in-memory data sets (CPU)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from moderncnn import create_model, list_models
from moderncnn.checkpoint import Preprocessing, load_checkpoint, load_pretrained
from moderncnn.storage import load_weights, save_weights, weights_epoch
from moderncnn.data import ImageDataset
from moderncnn.evaluate import evaluate, format_per_class, load_images, predict, read_images
from moderncnn.layers import BatchNorm
from moderncnn.models import ModelBase
from moderncnn.recipes import BOOK_FIGURES, BOOK_RECIPES, GENERIC, MODERN_LR, OWN_VALUES, Recipe, get_recipe
from moderncnn.rundir import RunDir
from moderncnn.train import (build_optimizer, build_scheduler, compile_mode_of, fit, format_final, init_weights,
                             initial_model, make_train_step, plan_speed)
from moderncnn.train.trainer import _fit_resize

FAST = dict(epochs=2, batch_size=32, quiet=True, amp=False, device="cpu")


def toy(n: int, split: str, size: int = 28, classes: int = 4, seed: int = 0) -> ImageDataset:
    """Noise with one bright row per class: learnable, and holding both 0 and 255."""
    g = torch.Generator().manual_seed(seed + (split == "test"))
    y = torch.arange(n) % classes
    x = (torch.rand(n, 1, size, size, generator=g) * 80).to(torch.uint8)
    x[torch.arange(n), 0, 2 * y + 1] = 255
    x[:, :, 0, 0] = 0
    return ImageDataset(x, y, [f"class{i}" for i in range(classes)], "toy", split, "in memory")


@pytest.fixture(scope="module")
def data28():
    return toy(128, "train"), toy(32, "test")


@pytest.fixture(scope="module")
def data8():
    return toy(96, "train", size=8), toy(32, "test", size=8)


class Tiny(ModelBase):
    """conv -> pool -> dropout -> linear; optional aux head, optional Ctrl-C after ``interrupt_after`` batches."""

    default_image_size, min_input_size = 8, 4

    def __init__(self, num_classes: int = 4, in_channels: int = 1, aux_weight: float | None = None,
                 interrupt_after: int | None = None):
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.conv = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(6, num_classes)
        if aux_weight is not None:
            self.aux_loss_weight = aux_weight
            self.aux = nn.Linear(6, num_classes)
        self.calls, self.interrupt_after = 0, interrupt_after

    def forward_features(self, x):
        return self.drop(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1).flatten(1))

    def forward_head(self, x, pre_logits=False):
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.interrupt_after is not None and self.calls > self.interrupt_after:
                raise KeyboardInterrupt
        f = self.forward_features(x)
        if self.training and hasattr(self, "aux"):
            return self.fc(f), self.aux(f)
        return self.fc(f)


def tiny(**kwargs) -> Tiny:
    torch.manual_seed(0)  # a model handed to fit is built before fit seeds: seed it the same way each time
    return Tiny(**kwargs)


# -- recipes ------------------------------------------------------------------------------------------------

BOOK_TABLE = {  # BOOK.md: lr, batch, resize
    "lenet": (0.9, 256, None), "alexnet": (0.01, 128, 224), "vgg11_book": (0.05, 128, 224),
    "nin": (0.1, 128, 224), "googlenet": (0.1, 128, 96), "lenet_bn_scratch": (1.0, 256, None),
    "lenet_bn": (1.0, 256, None), "resnet18_book": (0.05, 256, 96), "densenet_book": (0.1, 256, 96),
}


@pytest.mark.parametrize("model", sorted(BOOK_TABLE))
def test_book_recipes_are_the_books(model):
    r = get_recipe(model)
    assert (r.lr, r.batch_size, r.resize) == BOOK_TABLE[model]
    assert (r.epochs, r.momentum, r.weight_decay, r.schedule, r.label_smoothing) == (10, 0, 0, "constant", 0)
    assert (r.init, r.normalize, r.augment, r.dataset, r.book) == ("xavier", False, False, "fashion-mnist", model)
    assert set(BOOK_FIGURES[model]) == {"zh 2.0.0", "en 0.17.5"}
    assert model in list_models(), "every book recipe names a registered model"


def test_book_figures_match_book_md():
    assert BOOK_FIGURES["lenet"]["zh 2.0.0"].test_acc == 0.779
    assert BOOK_FIGURES["densenet_book"]["en 0.17.5"].examples_per_sec == 5563
    assert BOOK_FIGURES["vgg11_book"]["zh 2.0.0"].loss == 0.178
    assert get_recipe("vgg11_book").model_kwargs == {"ratio": 4}


@pytest.mark.parametrize("model, borrowed", [("lenet5", "lenet"), ("resnet50", "resnet18_book"),
                                             ("vgg16", "vgg11_book"), ("vgg16_bn", "vgg11_book"), ("nin_bn", "nin"),
                                             ("googlenet_paper", "googlenet")])
def test_models_without_a_book_experiment_borrow_their_familys(model, borrowed):
    r, b = get_recipe(model), BOOK_RECIPES[borrowed]
    assert (r.batch_size, r.resize, r.book, r.model_kwargs) == (b.batch_size, b.resize, None, {})
    assert r.lr == OWN_VALUES.get(model, {}).get("lr", b.lr)
    assert borrowed in r.based_on and model in r.based_on


def test_lenet5_trains_with_its_own_lr_and_the_papers_init():
    for name in ("book", "modern"):
        r = get_recipe("lenet5", name)
        assert (r.lr, r.init) == (0.01, "default") and "OWN_VALUES" in r.based_on
        assert get_recipe("lenet5", name, lr=0.3).lr == 0.3  # the user's value still wins
    assert get_recipe("lenet5").batch_size == BOOK_RECIPES["lenet"].batch_size


@pytest.mark.parametrize("depth", [11, 13, 16, 19])
def test_batch_normed_vggs_train_at_a_fifth_of_the_borrowed_lr(depth):
    # vgg11_book's 0.05 made vgg11_bn / vgg16_bn diverge in their first steps (recipes.OWN_VALUES)
    for name in ("book", "modern"):
        assert get_recipe(f"vgg{depth}_bn", name).lr == 0.01
    assert get_recipe(f"vgg{depth}").lr == BOOK_RECIPES["vgg11_book"].lr  # without batch norm: borrowed as is


def test_generic_recipe_and_overrides():
    assert get_recipe("mystery").lr == GENERIC.lr and "generic" in get_recipe("mystery").based_on
    r = get_recipe("vgg11_book", epochs=2, lr=0.5, model_kwargs={"ratio": 8})
    assert (r.epochs, r.lr, r.model_kwargs, r.batch_size) == (2, 0.5, {"ratio": 8}, 128)
    with pytest.raises(ValueError, match="unknown recipe value.*valid:"):
        get_recipe("lenet", learning_rate=0.1)
    with pytest.raises(ValueError, match="choose one of: book, modern"):
        get_recipe("lenet", "fancy")
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        get_recipe("lenet", lr=0)


def test_modern_recipe_keeps_books_shape_and_changes_optimisation():
    book, modern = get_recipe("resnet18_book"), get_recipe("resnet18_book", "modern")
    assert (modern.batch_size, modern.resize, modern.epochs) == (book.batch_size, book.resize, 10)
    assert modern.init == "xavier"
    assert (modern.momentum, modern.nesterov, modern.weight_decay) == (0.9, True, 5e-4)
    assert (modern.schedule, modern.label_smoothing, modern.augment, modern.normalize) == ("onecycle", 0.1, True, True)
    assert modern.book is None and modern.lr == MODERN_LR["resnet18_book"] < book.lr
    assert set(MODERN_LR) == set(BOOK_RECIPES)
    assert get_recipe("resnet50", "modern").lr == MODERN_LR["resnet18_book"]
    assert get_recipe("mystery", "modern").lr == pytest.approx(GENERIC.lr / 10)
    # the 28-pixel LeNets (and lenet5, which borrows LeNet's recipe) train without crop + flip
    assert [get_recipe(m, "modern").augment for m in ("lenet", "lenet_bn", "lenet_bn_scratch", "lenet5")] == [False] * 4
    assert get_recipe("alexnet", "modern").augment and get_recipe("mystery", "modern").augment


class _Sized:
    def __init__(self, lo, hi, default):
        self.min_input_size, self.max_input_size, self.default_image_size = lo, hi, default


@pytest.mark.parametrize("resize, native, sizes, explicit, expected", [
    (96, 28, (227, 258, 227), False, 227),    # alexnet_paper borrowing AlexNet's 224... at 96
    (96, 28, (193, 224, 224), False, 224),    # googlenet_paper: its own default
    (None, 28, (32, 35, 32), False, 32),      # lenet5 on 28x28 images
    (None, 28, (28, 31, 28), False, None),    # the book's LeNet: native size fits
    (96, 28, (227, 258, 227), True, 96),      # an explicit --resize is the user's choice
])
def test_resize_fitted_to_models_that_cannot_take_it(resize, native, sizes, explicit, expected):
    r = _fit_resize(Recipe(model="m", resize=resize), _Sized(*sizes), native, explicit)
    assert r.resize == expected
    assert ("resized to" in r.based_on) == (expected != resize)


# -- the book's train_ch6 semantics ---------------------------------------------------------------------------

def test_init_weights_is_xavier_uniform_on_exact_linear_and_conv_only():
    torch.manual_seed(0)
    model = create_model("lenet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init_weights(model)
    for name, m in model.named_modules():
        if type(m) in (nn.Linear, nn.Conv2d):
            fan_out, fan_in = m.weight.shape[0], m.weight[0].numel()
            receptive = m.weight[0, 0].numel()
            bound = math.sqrt(6 / (fan_in + fan_out * receptive))
            default_bound = 1 / math.sqrt(fan_in)  # PyTorch's kaiming_uniform(a=sqrt(5))
            assert m.weight.abs().max() <= bound
            if m.weight.numel() > 1000:  # the extreme of many uniform draws nears the bound
                assert m.weight.abs().max() > 0.9 * bound > 1.1 * default_bound
                assert before[f"{name}.weight"].abs().max() <= default_bound
            torch.testing.assert_close(m.bias, before[f"{name}.bias"], rtol=0, atol=0)


def test_book_recipe_is_train_ch6(data28, tmp_path):
    """Xavier init exactly as init_weights from the seed, plain SGD at the recipe lr, inputs in [0, 1]."""
    seen = []
    torch.manual_seed(3)
    model = create_model("lenet", num_classes=4)
    model.register_forward_pre_hook(lambda m, args: seen.append((args[0].min().item(), args[0].max().item())))
    torch.manual_seed(3)
    fresh = create_model("lenet", num_classes=4)
    torch.manual_seed(3)  # fit seeds a model it is given, then applies the book's init
    init_weights(fresh)
    fit(model, "book", tmp_path / "run", train_data=data28[0], test_data=data28[1], seed=3, lr=1e-30,
        **{**FAST, "epochs": 1})
    for k, v in fresh.state_dict().items():  # lr 1e-30 leaves the weights as initialised
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    assert min(lo for lo, _ in seen) == 0.0 and max(hi for _, hi in seen) == 1.0, "no normalisation"
    state = RunDir(tmp_path / "run").load()[1]
    group = state["optimizer"]["param_groups"][0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (1e-30, 0, 0, False)
    assert state["scheduler"] is None


def test_book_optimizer_and_modern_optimizer():
    model = create_model("lenet_bn")
    opt = build_optimizer(model, get_recipe("lenet_bn"))
    assert type(opt) is torch.optim.SGD and len(opt.param_groups) == 1
    assert {k: opt.param_groups[0][k] for k in ("lr", "momentum", "weight_decay", "nesterov", "dampening")} == \
        {"lr": 1.0, "momentum": 0, "weight_decay": 0, "nesterov": False, "dampening": 0}
    assert build_scheduler(opt, get_recipe("lenet_bn"), 10) is None
    modern = get_recipe("lenet_bn", "modern")
    opt = build_optimizer(model, modern)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0
    assert all(p.dim() > 1 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    sched = build_scheduler(opt, modern, 10)
    assert isinstance(sched, torch.optim.lr_scheduler.OneCycleLR) and sched.total_steps == 100


def test_aux_outputs_add_weighted_loss_and_accuracy_uses_logits():
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 4
    model, twin = Tiny(aux_weight=0.3), Tiny(aux_weight=0.3)
    model.drop.p = twin.drop.p = 0.0
    twin.load_state_dict(model.state_dict())
    loss_fn = nn.CrossEntropyLoss()
    step = make_train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn)
    loss_sum, correct = step(x, y)
    logits, aux = twin.train()(x)
    (loss_fn(logits, y) + 0.3 * loss_fn(aux, y)).backward()
    with torch.no_grad():
        for p in twin.parameters():
            p -= 0.1 * p.grad
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(loss_sum, loss_fn(logits, y).detach() * 16)
    assert correct.item() == (logits.argmax(1) == y).sum().item()


# -- run directories, checkpoints, resume ---------------------------------------------------------------------

def test_run_dir_files(data28, tmp_path):
    out = tmp_path / "run"
    result = fit("lenet_bn", "book", out, train_data=data28[0], test_data=data28[1], **FAST)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "checkpoints", "curves.png", "metrics.jsonl", "model.safetensors", "run.json"], "no temporary files left"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch-0002.pt", "epoch-0002.safetensors",
                                                                       "latest.json"], "epoch 1's pair removed"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2] and lines == result.history
    assert {"loss", "train_acc", "test_acc", "examples_per_sec", "wall_seconds"} <= set(lines[0])
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "finished" and meta["epochs_done"] == 2
    assert meta["model"] == "lenet_bn" and meta["model_kwargs"] == {"num_classes": 4, "in_channels": 1}
    assert meta["recipe"]["lr"] == 1.0 and meta["recipe"]["epochs"] == 2
    assert {"python", "torch", "torchvision", "moderncnn"} <= set(meta["versions"])
    assert meta["data"] == {**meta["data"], "name": "toy", "source": "in memory", "is_sample": False,
                            "train_size": 128, "test_size": 32}
    assert meta["data"]["train"]["examples"] == 128 and len(meta["data"]["test"]["sha256"]) == 64
    assert {"seed", "device", "device_name", "command", "start_time", "git", "final"} <= set(meta)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert weights_epoch(out / "model.safetensors") == 2
    weights = load_file(out / "model.safetensors")
    for k, v in result.model.state_dict().items():
        torch.testing.assert_close(weights[k], v, rtol=0, atol=0)
    assert result.final["loss"] == lines[-1]["loss"] and result.run_dir == out


def test_fine_tuning_starts_from_trained_weights(data28, tmp_path):
    kw = dict(train_data=data28[0], test_data=data28[1], **{**FAST, "epochs": 1})
    first = fit("lenet", "book", tmp_path / "a", **kw).model.state_dict()
    same = create_model("lenet", num_classes=4)
    assert load_pretrained(same, tmp_path / "a") == {"source": str(tmp_path / "a"), "loaded": 10, "kept": [],
                                                     "adapted": []}
    assert all(torch.equal(v, first[k]) for k, v in same.state_dict().items())
    seven = create_model("lenet", num_classes=7)
    head = seven[-1].weight.clone()
    report = load_pretrained(seven, tmp_path / "a" / "model.safetensors")
    assert report["kept"] == ["11.weight", "11.bias"] and report["loaded"] == 8
    assert torch.equal(seven[-1].weight, head) and torch.equal(seven[0].weight, first["0.weight"])

    tuned = fit("lenet", "book", tmp_path / "b", init_from=tmp_path / "a", lr=1e-12, **kw)
    assert all(torch.allclose(v, first[k]) for k, v in tuned.model.state_dict().items()), "trained from them"
    meta = json.loads((tmp_path / "b" / "run.json").read_text())
    assert meta["init_from"]["loaded"] == 10 and meta["init_from"]["source"] == str(tmp_path / "a")
    shutil.rmtree(tmp_path / "a")  # resuming goes on from the run's own checkpoint, not from the source
    fit("lenet", "book", tmp_path / "b", init_from=tmp_path / "a", resume=True, lr=1e-12, **{**kw, "epochs": 2})
    assert json.loads((tmp_path / "b" / "run.json").read_text())["init_from"] == meta["init_from"]


def test_initial_model_rebuilds_a_runs_start_and_says_when_it_cannot(tmp_path, data28):
    train, test = data28
    kw = dict(train_data=train, test_data=test, seed=7, **{**FAST, "epochs": 1})
    with torch.random.fork_rng():
        torch.manual_seed(7)
        expected = init_weights(create_model("lenet", num_classes=4))
    result = fit("lenet", "book", tmp_path / "a", **kw)
    after_seed = torch.manual_seed(123).get_state()
    start = initial_model(tmp_path / "a")
    assert torch.equal(torch.get_rng_state(), after_seed), "the user's random state is left as it was"
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in start.state_dict().items())
    assert not torch.equal(start[0].weight, result.model[0].weight)

    tuned = fit("lenet", "book", tmp_path / "b", init_from=tmp_path / "a", **kw)  # the start is the weights loaded
    assert torch.equal(initial_model(tmp_path / "b")[0].weight, result.model[0].weight.cpu())
    assert not torch.equal(tuned.model[0].weight, result.model[0].weight)

    run_json = tmp_path / "a" / "run.json"
    meta = json.loads(run_json.read_text())
    run_json.write_text(json.dumps({**meta, "seed": 8}))  # another start than the one recorded
    with pytest.raises(ValueError, match="cannot be rebuilt here .the model was built by hand, or run.json was"):
        initial_model(tmp_path / "a")
    del meta["init_sha256"]
    run_json.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="records no checksum of the run's starting weights"):
        initial_model(tmp_path / "a")
    shutil.rmtree(tmp_path / "a")
    with pytest.raises(ValueError, match="cannot rebuild the starting weights"):
        initial_model(tmp_path / "b")  # its init_from is gone


def test_torchvision_weights_fine_tune_ours_for_grey_images_and_ten_classes(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    theirs = torchvision.models.resnet18(weights=None).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in theirs.items()}}, tmp_path / "tv.pth")
    ours = create_model("resnet18", num_classes=10, in_channels=1)
    head = ours.fc.weight.clone()
    report = load_pretrained(ours, tmp_path / "tv.pth")
    assert (report["kept"], report["adapted"]) == (["fc.weight", "fc.bias"], ["conv1.weight"])
    torch.testing.assert_close(ours.conv1.weight, theirs["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(ours.fc.weight, head) and torch.equal(ours.layer4[1].bn2.running_var,
                                                             theirs["layer4.1.bn2.running_var"])
    rgb = create_model("resnet18", num_classes=10)
    save_weights(tmp_path / "grey.safetensors", ours, epoch=1)
    assert load_pretrained(rgb, tmp_path / "grey.safetensors")["adapted"] == ["conv1.weight"]
    torch.testing.assert_close(rgb.conv1.weight.sum(1, keepdim=True), ours.conv1.weight)


@pytest.mark.parametrize("content, message", [
    (None, "no such weights file or run directory"),
    (b"not a pickle", "is not a PyTorch state dict file"),
    ([1, 2], "holds no state dict"),
    ("resnet", "does not fit the model alexnet: 16 missing keys .*; start from weights of the same architecture"),
])
def test_weights_that_cannot_start_a_model_are_one_line_errors(content, message, tmp_path):
    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "resnet":
        torch.save(create_model("resnet18").state_dict(), path)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as err:
        load_pretrained(create_model("alexnet"), path)
    assert "\n" not in str(err.value)


def test_load_checkpoint_rebuilds_the_model(data28, tmp_path):
    out = tmp_path / "run"
    result = fit("lenet", "book", out, train_data=data28[0], test_data=data28[1], **{**FAST, "epochs": 1})
    for path in (out, out / "model.safetensors"):
        model, meta = load_checkpoint(path)
        assert not model.training and meta["epoch"] == 1 and meta["model"] == "lenet"
        x = data28[1].images[:8].float() / 255
        torch.testing.assert_close(model(x), result.model.eval()(x))
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing")


def test_refuses_to_clobber_a_run(data28, tmp_path):
    out = tmp_path / "run"
    kw = dict(train_data=data28[0], test_data=data28[1], **{**FAST, "epochs": 1})
    fit("lenet", "book", out, **kw)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="already holds a run .*--resume.*--overwrite"):
        fit("lenet", "book", out, **kw)
    assert (out / "model.safetensors").read_bytes() == before
    with pytest.raises(ValueError, match="holds a different run .*lr"):
        fit("lenet", "book", out, resume=True, lr=0.1, **kw)
    with pytest.raises(ValueError, match="holds a different run .*model"):
        fit("lenet_bn", "book", out, resume=True, **kw)
    fit("lenet", "book", out, overwrite=True, seed=1, **kw)
    assert (out / "model.safetensors").read_bytes() != before


class Failing(Tiny):
    def __init__(self, fail_after: int):
        super().__init__()
        self.fail_after = fail_after

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls > self.fail_after:
                raise RuntimeError("boom")
        return self.fc(self.forward_features(x))


def test_a_run_that_fails_before_its_first_checkpoint_costs_nothing(data8, data28, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"lenet5 needs images of 32x32 to 35x35 .* got 28x28: "
                                         r"resize them \(e.g. to 32x32\) with --resize 32"):
        fit("lenet5", "book", out, train_data=data28[0], test_data=data28[1], resize=28, **FAST)
    assert not out.exists(), "a size the model cannot take fails before the run directory is made"

    kw = dict(train_data=data8[0], test_data=data8[1], **FAST)  # 96 images, batch 32: 3 steps an epoch
    with pytest.raises(RuntimeError, match="boom"):
        fit(Failing(fail_after=1), "book", out, **kw)
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    fit(tiny(), "book", out, **kw)  # no --overwrite needed: nothing was saved
    assert json.loads((out / "run.json").read_text())["status"] == "finished"

    with pytest.raises(RuntimeError, match="boom"):
        fit(Failing(fail_after=4), "book", out, overwrite=True, **kw)
    meta = json.loads((out / "run.json").read_text())
    assert (meta["status"], meta["epochs_done"]) == ("failed", 1)
    with pytest.raises(ValueError, match=r"already holds a run \(failing book, failed, 1/2 epochs\); pass --resume"):
        fit(tiny(), "book", out, **kw)


@pytest.mark.parametrize("recipe", ["book", "modern"])
def test_resume_after_ctrl_c_is_bit_identical(data8, tmp_path, recipe, capsys):
    """Stopped mid-epoch 2 and resumed == uninterrupted (dropout, shuffle, augmentation, schedule, momentum)."""
    kw = dict(train_data=data8[0], test_data=data8[1], seed=5, **{**FAST, "batch_size": 16, "epochs": 3})
    full = fit(tiny(), recipe, tmp_path / "full", **kw)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny(interrupt_after=6 + 3), recipe, tmp_path / "cut", **kw)  # 6 batches an epoch
    assert "checkpoint of epoch 1" in capsys.readouterr().err
    meta = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert (meta["status"], meta["epochs_done"], weights_epoch(tmp_path / "cut" / "model.safetensors")) == \
        ("interrupted", 1, 1)
    resumed = fit(tiny(), recipe, tmp_path / "cut", resume=True, **kw)
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda h: [{k: v for k, v in e.items() if "sec" not in k} for e in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 3


def test_resume_can_extend_a_finished_constant_lr_run(data8, tmp_path):
    kw = dict(train_data=data8[0], test_data=data8[1], **{**FAST, "batch_size": 16})
    fit(tiny(), "book", tmp_path / "run", **{**kw, "epochs": 1})
    again = fit(tiny(), "book", tmp_path / "run", resume=True, **{**kw, "epochs": 1})
    assert len(again.history) == 1, "a finished run is not trained again"
    more = fit(tiny(), "book", tmp_path / "run", resume=True, **{**kw, "epochs": 3})
    assert [h["epoch"] for h in more.history] == [1, 2, 3]
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (meta["recipe"]["epochs"], meta["epochs_done"]) == (3, 3)
    assert [(e["from_epochs"], e["to_epochs"]) for e in meta["extended"]] == [(1, 3)]
    # left out, --epochs is the run's own: the recipe's default (10) would rewrite it as "3 of 10"
    fit(tiny(), "book", tmp_path / "run", resume=True, **{k: v for k, v in kw.items() if k != "epochs"})
    assert json.loads((tmp_path / "run" / "run.json").read_text())["recipe"]["epochs"] == 3


@pytest.mark.parametrize("recipe", ["book", "modern"])
def test_a_resume_never_shortens_a_run(data8, tmp_path, recipe):
    kw = dict(train_data=data8[0], test_data=data8[1], **{**FAST, "batch_size": 16})
    fit(tiny(), recipe, tmp_path / "run", **{**kw, "epochs": 3})
    before = (tmp_path / "run" / "run.json").read_text()
    with pytest.raises(ValueError, match=r"already trained 3 epochs, more than --epochs 2; .*leave --epochs out"):
        fit(tiny(), recipe, tmp_path / "run", resume=True, **{**kw, "epochs": 2})
    assert (tmp_path / "run" / "run.json").read_text() == before


def test_damaged_state_is_a_one_line_error_and_the_weights_stay(data8, tmp_path):
    kw = dict(train_data=data8[0], test_data=data8[1], **{**FAST, "batch_size": 16, "epochs": 1})
    fit(tiny(), "book", tmp_path / "run", **kw)
    weights = (tmp_path / "run" / "model.safetensors").read_bytes()
    state = RunDir(tmp_path / "run").checkpoint().state
    state.write_bytes(state.read_bytes()[:300])  # truncated, as by a full disk
    with pytest.raises(ValueError, match=r"epoch-0001.pt is damaged \(.*\); .* --overwrite") as err:
        fit(tiny(), "book", tmp_path / "run", resume=True, **{**kw, "epochs": 2})
    assert "\n" not in str(err.value)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == weights


def test_run_directory_that_cannot_be_created_is_a_one_line_error(data8, tmp_path):
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(ValueError, match=r"cannot create the run directory .*file/sub \(.*\); choose another --out"):
        fit(tiny(), "book", tmp_path / "file" / "sub", train_data=data8[0], test_data=data8[1], **FAST)


def test_weights_of_another_model_name_the_mismatch_in_one_line(tmp_path):
    save_weights(tmp_path / "w.safetensors", create_model("lenet"), epoch=1)
    with pytest.raises(ValueError, match=r"does not fit the model lenet: 2 of another shape \(first '11.weight': "
                                         r"file \(10, 84\), model \(7, 84\)\)") as err:
        load_weights(tmp_path / "w.safetensors", create_model("lenet", num_classes=7))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"missing keys \(first '0.0.weight'\), \d+ unexpected keys"):
        load_weights(tmp_path / "w.safetensors", create_model("resnet18_book"))


# -- speed options ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["lenet_bn_scratch", "lenet_bn"])
def test_bf16_autocast_keeps_batch_norm_close_to_fp32(model):
    torch.manual_seed(0)
    net = init_weights(create_model(model))
    x, y = torch.rand(64, 1, 28, 28) * 3 + 2, torch.arange(64) % 10  # a large mean stresses bf16 centring
    losses = []
    for amp in (None, torch.bfloat16):
        twin = create_model(model)
        twin.load_state_dict(net.state_dict())
        step = make_train_step(twin, torch.optim.SGD(twin.parameters(), lr=0.1), nn.CrossEntropyLoss(), amp_dtype=amp)
        losses.append(step(x, y)[0].item() / 64)
    assert math.isfinite(losses[1])
    assert losses[1] == pytest.approx(losses[0], rel=0.02)


def test_channels_last_and_examples_per_sec(data28):
    result = fit("lenet", "book", None, train_data=data28[0], test_data=data28[1], channels_last=True, **FAST)
    assert result.run_dir is None and result.paths == {}
    assert all(h["examples_per_sec"] > 0 and h["examples"] == 128 and not h["warmup"] for h in result.history)
    assert result.final["device"] == "cpu"


def test_final_lines_in_the_books_format():
    final = {"loss": 0.4691, "train_acc": 0.8234, "test_acc": 0.779, "examples_per_sec": 55297.41, "device": "cuda:0"}
    text = format_final(final, get_recipe("lenet"))
    lines = text.splitlines()
    assert lines[:2] == ["loss 0.469, train acc 0.823, test acc 0.779", "55297.4 examples/sec on cuda:0"]
    assert any(line.startswith("book zh 2.0.0") and "0.779" in line for line in lines)
    assert any(line.startswith("book en 0.17.5") and "72323" in line for line in lines)
    assert "differs" not in text
    assert "epochs 1 vs 10" in format_final(final, get_recipe("lenet", epochs=1))
    assert "book" not in format_final(final, get_recipe("lenet", "modern"))


# -- evaluation and prediction ----------------------------------------------------------------------------------

def test_evaluate_counts():
    class Fixed(nn.Module):  # predicts class (first pixel * 10) -> known confusion
        num_classes = 3

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return F.one_hot((x[:, 0, 0, 0] * 10).round().long(), 3).float() + self.w

    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 2, 0])
    images = torch.zeros(6, 1, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = (predicted * 25.5).round().to(torch.uint8)
    ds = ImageDataset(images, labels, ["a", "b", "c"], "toy", "test", "in memory")
    res = evaluate(Fixed(), ds, "cpu", batch_size=4)
    assert res["accuracy"] == pytest.approx(4 / 6)
    assert res["per_class"] == {"a": 0.5, "b": 1.0, "c": 0.5}
    assert res["confusion"].tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert "all" in format_per_class(res).splitlines()[-1]


def test_test_subset_is_a_fixed_class_balanced_sample(data28, tmp_path):
    train, test = data28
    result = fit("lenet_bn", "book", tmp_path / "run", train_data=train, test_data=test, test_subset=8, **FAST)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["data"]["test_size"] == 32 and meta["data"]["test_used"] == 8
    again = evaluate(result.model, test, "cpu", subset=8)
    assert again["num_examples"] == 8 and again["confusion"].sum(1).tolist() == [2, 2, 2, 2]
    assert again["accuracy"] == result.final["test_acc"]
    assert evaluate(result.model, test, "cpu")["num_examples"] == 32
    with pytest.raises(ValueError, match="needs an ImageDataset"):
        evaluate(result.model, [(test.images[:4].float() / 255, test.labels[:4])], "cpu", subset=2)
    with pytest.raises(ValueError, match="test_subset must be >= 1"):
        get_recipe("lenet", test_subset=0)


def test_predict_from_files_and_tensors(data28, tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    model = create_model("lenet", num_classes=4).eval()
    Image.new("RGB", (60, 45), (200, 30, 30)).save(tmp_path / "red.png")
    x = load_images([tmp_path / "red.png"], channels=1, size=28)
    assert x.shape == (1, 1, 28, 28) and x.dtype == torch.uint8
    from_file = predict(model, [tmp_path / "red.png"], ["a", "b", "c", "d"], topk=3)
    from_tensor = predict(model, x, ["a", "b", "c", "d"], topk=3)
    assert len(from_file[0]) == 3 and [c for c, _ in from_file[0]] == [c for c, _ in from_tensor[0]]
    probs = [p for _, p in from_file[0]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="notes.txt is not an image"):
        predict(model, [tmp_path / "notes.txt"], topk=1)
    with pytest.raises(FileNotFoundError, match="no such image file"):
        predict(model, [tmp_path / "absent.png"])


def test_a_file_is_read_as_training_read_its_data_set(tmp_path):
    from PIL import Image

    from moderncnn.data import DeviceLoader, load_image_folder

    g = torch.Generator().manual_seed(0)
    for i, (w, h) in enumerate([(37, 23), (100, 80), (16, 16)]):  # one image per class, of any size
        (tmp_path / "photos" / "train" / f"c{i}").mkdir(parents=True)
        (tmp_path / "photos" / "test" / f"c{i}").mkdir(parents=True)
        for split in ("train", "test"):
            pixels = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "photos" / split / f"c{i}" / "x.png")
    train = load_image_folder(tmp_path / "photos", "train", image_size=16)
    files = [tmp_path / "photos" / "train" / f"c{i}" / "x.png" for i in range(3)]
    assert torch.equal(load_images(files, 3, 16), train.images), "predict reads a training file bit for bit"

    # a run that enlarged its 16-pixel data set to 28: a file is read at 16, then enlarged as the loader does
    x = read_images(files, 3, 28, native=16)
    assert torch.equal(x, next(iter(DeviceLoader(train, 3, device="cpu", resize=28)))[0])
    assert (x - load_images(files, 3, 28).float() / 255).abs().max() > 0.1, "straight to 28 would be sharper"
    torch.manual_seed(0)
    model = create_model("lenet", num_classes=3, in_channels=3).eval()
    model.preprocessing = Preprocessing(channels=3, size=28, resize=28, classes=("a", "b", "c"), native=16)
    assert predict(model, files) == predict(model, x)


def test_predict_a_folder_in_batches(tmp_path):
    from PIL import Image

    from moderncnn.evaluate import image_files

    torch.manual_seed(0)
    model = create_model("lenet", num_classes=4).eval()
    photos = tmp_path / "photos"
    (photos / "more").mkdir(parents=True)
    (photos / ".thumbnails").mkdir()
    for i, where in enumerate(["b.png", "a.JPG", "more/c.png", ".thumbnails/d.png", ".e.png"]):
        Image.new("L", (20 + i, 30), 40 * i).save(photos / where, format="PNG" if where.endswith("png") else "JPEG")
    (photos / "notes.txt").write_text("skipped: not an image file name")
    files = image_files([photos, tmp_path / "absent.png"])
    assert files == [photos / "a.JPG", photos / "b.png", photos / "more" / "c.png", tmp_path / "absent.png"]
    one_batch = predict(model, files[:3], topk=4)
    batched = predict(model, files[:3], topk=4, batch_size=2)  # batches of 2, then 1
    # oneDNN may round differently for another batch size: same classes, probabilities to rounding
    assert [[c for c, _ in top] for top in batched] == [[c for c, _ in top] for top in one_batch]
    assert [p for top in batched for _, p in top] == pytest.approx([p for top in one_batch for _, p in top], abs=1e-5)
    assert [len(top) for top in one_batch] == [4, 4, 4]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files .* in the folder .*empty"):
        image_files([tmp_path / "empty"])
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        predict(model, files[:1], batch_size=0)


def test_compile_modes():
    assert compile_mode_of(True) == "default" and compile_mode_of("reduce-overhead") == "reduce-overhead"
    assert compile_mode_of(False) is None and compile_mode_of(None) is None
    with pytest.raises(ValueError, match="unknown compile mode 'fast'; use one of default, reduce-overhead"):
        compile_mode_of("fast")
    with pytest.raises(ValueError, match="unknown compile mode"):
        fit("lenet", "book", None, compile="fast", **FAST)  # before any data is looked for


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_training_matches_eager(data28, tmp_path):
    runs = {mode: fit("lenet", "book", tmp_path / str(mode), train_data=data28[0], test_data=data28[1],
                      compile=mode, **dict(FAST, epochs=1)) for mode in (False, True)}
    eager, comp = runs[False], runs[True]
    assert comp.history[0]["warmup"] and not eager.history[0]["warmup"]
    assert json.loads((tmp_path / "True" / "run.json").read_text())["speed"]["compile"] == "default"
    # same init, data order and arithmetic up to the compiler's reordering of float sums
    assert comp.history[0]["loss"] == pytest.approx(eager.history[0]["loss"], rel=1e-4)
    for (name, a), b in zip(eager.model.state_dict().items(), comp.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


def test_compiled_model_sees_only_full_batches(data28, monkeypatch):
    import moderncnn.train.loop as loop

    seen = []

    class Recording(nn.Module):  # stands in for torch.compile's module: records the batch sizes it runs
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            seen.append(x.shape[0])
            return self.model(x)

    monkeypatch.setattr(loop, "compiled", lambda model, mode, device=None: Recording(model))
    result = fit("lenet", "book", None, compile=True, **dict(FAST, batch_size=48, epochs=1),
                 train_data=data28[0], test_data=data28[1])
    assert seen == [48, 48]  # 128 images: two full batches compiled; the last 32 ran eagerly
    assert result.history[0]["examples"] == 128


def test_compile_without_a_cxx_compiler_is_a_one_line_error(data28, tmp_path, monkeypatch):
    inductor_config = pytest.importorskip("torch._inductor.config")
    pytest.importorskip("torch._inductor.cpp_builder")
    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, str(tmp_path / "no-such-g++")))
    with pytest.raises(ValueError, match="needs a C.. compiler .*; install g.. or clang, set CXX, or train without"):
        fit("lenet", "book", tmp_path / "run", train_data=data28[0], test_data=data28[1], compile=True, **FAST)
    assert not (tmp_path / "run" / "run.json").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_restores_the_callers_cudnn_benchmark(data28):
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        result = fit("lenet", "book", None, train_data=data28[0], test_data=data28[1], **dict(FAST, device="cuda"))
        assert result.device.type == "cuda" and torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


def test_cuda_graph_only_where_it_applies(data28, tmp_path):
    cuda = torch.device("cuda")
    assert plan_speed(cuda).cuda_graph and not plan_speed(cuda, overrides={"cuda_graph": False}).cuda_graph
    assert plan_speed(cuda, compile="default").cuda_graph  # the compiled step, replayed whole
    # a per-step lr schedule, several processes or torch.compile's own graphs: off by default, an error when asked
    for kwargs, why in [({"schedule": "onecycle"}, "freeze the onecycle schedule's lr"),
                        ({"processes": 2}, "for one process"),
                        ({"compile": "reduce-overhead"}, "replays its own CUDA graphs")]:
        plan = plan_speed(cuda, **kwargs)
        assert not plan.cuda_graph and why in plan.why["cuda_graph"]
        with pytest.raises(ValueError, match=f"--cuda-graph cannot be used here: it .*{why}.*; leave it out"):
            plan_speed(cuda, overrides={"cuda_graph": True}, **kwargs)
    with pytest.raises(ValueError, match="--cuda-graph cannot be used here: it needs a CUDA device"):
        fit("lenet", "book", tmp_path / "run", train_data=data28[0], test_data=data28[1], cuda_graph=True, **FAST)
    assert not (tmp_path / "run" / "run.json").exists()
    fit("lenet", "book", tmp_path / "run", train_data=data28[0], test_data=data28[1], **FAST)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["speed"]["cuda_graph"] is False
    model = create_model("lenet")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="would freeze the lr of a per-step schedule"):
        make_train_step(model, optimizer, nn.CrossEntropyLoss(), cuda_graph=32,
                        scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model", ["lenet_bn_scratch", "alexnet"])
def test_cuda_graph_training_matches_eager(model, data28, tmp_path):
    # 24-image batches: five graphed (three warm-up steps, the capture, a replay) and one of 8 each epoch
    # a calm lr: no chaos to amplify rounding
    options = dict(FAST, batch_size=24, lr=0.1, test_data=data28[1], device="cuda")
    runs = {graph: fit(model, "book", tmp_path / str(graph), train_data=data28[0], cuda_graph=graph,
                       **options) for graph in (False, True)}
    assert json.loads((tmp_path / "True" / "run.json").read_text())["speed"]["cuda_graph"] is True
    eager, graphed = runs[False], runs[True]
    for a, b in zip(eager.history, graphed.history):
        assert b["examples"] == a["examples"] == 128
        if model == "lenet_bn_scratch":  # no dropout: the same sums (AlexNet's dropout masks differ)
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-4) and b["test_acc"] == a["test_acc"]
    if model == "lenet_bn_scratch":  # the moving statistics were updated in place by every replay
        for (name, a), b in zip(eager.model.state_dict().items(), graphed.model.state_dict().values()):
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=name)
    else:
        assert all(math.isfinite(h["loss"]) for h in graphed.history)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_cuda_run_replays_the_compiled_step_as_one_graph(data28, tmp_path):
    result = fit("lenet_bn", "book", tmp_path / "run", train_data=data28[0], test_data=data28[1], compile=True,
                 **dict(FAST, batch_size=24, lr=0.1, device="cuda"))
    speed = json.loads((tmp_path / "run" / "run.json").read_text())["speed"]
    assert speed["compile"] == "default" and speed["cuda_graph"] is True and "cuda_graph_failed" not in speed
    assert [h["examples"] for h in result.history] == [128, 128]
    assert all(math.isfinite(h["loss"]) and h["train_acc"] > 0 for h in result.history)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run_whose_step_cannot_be_captured_goes_on_eagerly_and_says_so(data28, tmp_path):
    model = create_model("lenet", num_classes=4)
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].max().item()))  # waits for the host
    with pytest.warns(UserWarning, match="cannot be replayed as a CUDA graph"):
        result = fit(model, "book", tmp_path / "run", train_data=data28[0], test_data=data28[1],
                     **dict(FAST, batch_size=16, device="cuda"))
    speed = json.loads((tmp_path / "run" / "run.json").read_text())["speed"]
    assert speed["cuda_graph"] is False and speed["cuda_graph_failed"]
    assert [h["examples"] for h in result.history] == [128, 128] and len(seen) == 2 * (8 + 2)  # train and test batches
