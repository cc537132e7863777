"""``--recipe finetune``: torchvision's ImageNet weights trained as they expect (ImageNet's mean/std, the loaded
layers at a smaller lr), recorded in run.json and followed by eval. Offline and small: the ".pth" is a freshly
built resnet18's state dict saved here, the data a few 28-pixel images."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from moderncnn import create_model, list_models
from moderncnn.checkpoint import load_checkpoint, pretrained_parameters
from moderncnn.cli import main
from moderncnn.recipes import FINETUNE_MODELS, Recipe, as_recorded_then, get_recipe
from moderncnn.train import build_optimizer, build_scheduler, fit
from moderncnn.train.normalization import IMAGENET_MEAN, IMAGENET_STD, channel_stats, input_normalization

from fixtures import offline, write_fashion_idx  # noqa: F401 - offline: a fixture, used by pytestmark

pytestmark = pytest.mark.usefixtures("offline")

GREY = ([0.449], [0.226])  # the means of ImageNet's three means and stds, for the summed first conv
TINY = ["--epochs", "1", "--batch-size", "16", "--subset", "16", "--test-subset", "20", "--resize", "32",
        "--no-amp", "--device", "cpu", "--quiet"]
SMALL = dict(epochs=1, batch_size=16, subset=16, test_subset=20, resize=32, amp=False, device="cpu", quiet=True)


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_fashion_idx(tmp_path_factory.mktemp("fashion"), train=100, test=40)


@pytest.fixture(scope="module")
def imagenet_pth(tmp_path_factory):
    """A stand-in for torchvision's resnet18-f37072fd.pth: same keys and shapes (1000 classes, RGB)."""
    path = tmp_path_factory.mktemp("weights") / "resnet18-imagenet.pth"
    torch.manual_seed(0)
    torch.save(create_model("resnet18").state_dict(), path)
    return path


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_finetune_is_for_the_models_torchvision_has_imagenet_weights_for():
    torchvision = pytest.importorskip("torchvision")
    for name in sorted(FINETUNE_MODELS):
        weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1  # offline: the enum knows the file
        assert weights.url.startswith("https://download.pytorch.org/models/"), name
        recipe = get_recipe(name, "finetune")
        assert (recipe.name, recipe.normalize, recipe.normalize_stats, recipe.pretrained_lr_scale) == \
               ("finetune", True, "imagenet", 0.1), name
        modern = get_recipe(name, "modern")
        assert (recipe.lr, recipe.momentum, recipe.nesterov, recipe.schedule) == \
               (modern.lr, 0.9, True, "onecycle"), "the head trains as the modern recipe trains a fresh model"
        assert (recipe.resize, recipe.weight_decay, recipe.epochs) == (224, 1e-4, 5)
    for name in sorted(set(list_models()) - FINETUNE_MODELS):
        with pytest.raises(ValueError, match=f"no finetune recipe for {name}: .*--init-from RUN_DIR") as err:
            get_recipe(name, "finetune")
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("changes, says", [({"normalize_stats": "coco"}, "normalize_stats must be data or imagenet"),
                                           ({"pretrained_lr_scale": 1.5}, "pretrained_lr_scale must be in [0, 1]"),
                                           ({"pretrained_lr_scale": float("nan")}, "pretrained_lr_scale must be"),
                                           ({"pretrained_lr_scale": -0.1}, "pretrained_lr_scale must be")])
def test_bad_values_are_one_line_errors(changes, says):
    with pytest.raises(ValueError, match=says.replace("[", r"\[").replace("]", r"\]")) as err:
        get_recipe("resnet18", "finetune", **changes)
    assert "\n" not in str(err.value)


def test_the_loaded_layers_train_at_the_scaled_lr_at_every_step_of_the_schedule():
    model = create_model("lenet_bn", num_classes=10)
    head = ["15.weight", "15.bias"]
    assert dict(model.named_parameters()).keys() >= set(head)
    loaded = pretrained_parameters(model, {"source": "w.pth", "loaded": 20, "kept": head, "adapted": []})
    assert loaded == {n for n, _ in model.named_parameters()} - set(head)
    for schedule in ("onecycle", "cosine", "constant"):
        recipe = get_recipe("lenet_bn", "modern", schedule=schedule, pretrained_lr_scale=0.1, epochs=2)
        opt = build_optimizer(model, recipe, pretrained=loaded)
        groups = {(g["pretrained"], g["weight_decay"]): g for g in opt.param_groups}
        assert set(groups) == {(True, 5e-4), (True, 0.0), (False, 5e-4), (False, 0.0)}
        new = {id(p) for g in opt.param_groups if not g["pretrained"] for p in g["params"]}
        assert new == {id(p) for n, p in model.named_parameters() if n in head}
        scheduler = build_scheduler(opt, recipe, steps_per_epoch=5)
        for _ in range(10):
            lrs = {g["pretrained"]: g["lr"] for g in opt.param_groups}
            assert lrs[True] == pytest.approx(0.1 * lrs[False]), schedule
            opt.step()
            if scheduler is not None:
                scheduler.step()
    every = build_optimizer(model, recipe.replace(pretrained_lr_scale=0.1), pretrained=loaded | set(head))
    assert [(g["pretrained"], g["lr"]) for g in every.param_groups] == [(True, pytest.approx(recipe.lr * 0.1))] * 2, \
        "no new layer: every group scaled, none empty"
    plain = build_optimizer(model, recipe.replace(pretrained_lr_scale=1.0), pretrained=loaded)
    weights = sum(p.dim() > 1 for p in model.parameters())
    assert [len(g["params"]) for g in plain.param_groups] == [weights, len(list(model.parameters())) - weights], \
        "scale 1: the groups of every run from before the scale"


def test_imagenet_statistics_for_rgb_grey_and_nothing_else():
    images = torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8)
    imagenet = get_recipe("resnet18", "finetune")
    assert input_normalization(imagenet, images) == (list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert input_normalization(imagenet, images[:, :1]) == GREY
    assert input_normalization(imagenet.replace(normalize_stats="data"), images) == channel_stats(images)
    assert input_normalization(imagenet.replace(normalize=False), images) is None
    with pytest.raises(ValueError, match="these have 2 channels; use --normalize-stats data"):
        input_normalization(imagenet, images[:, :2])


def test_a_finetune_run_records_its_normalisation_and_eval_gives_its_accuracy(idx_dir, imagenet_pth, tmp_path,
                                                                            capsys):
    out = tmp_path / "cli"
    code, _, err = run(["train", "resnet18", "--recipe", "finetune", "--init-from", imagenet_pth, "--data-dir",
                        idx_dir, "--out", out, *TINY], capsys)
    assert code == 0, err
    meta = json.loads((out / "run.json").read_text())
    assert meta["recipe"] == get_recipe("resnet18", "finetune", **{k: v for k, v in SMALL.items()
                                                                 if k in meta["recipe"]}).as_dict()
    assert meta["input"]["normalize"] == list(GREY)
    assert meta["init_from"]["kept"] == ["fc.weight", "fc.bias"]
    lrs = {g["pretrained"]: g["lr"] for g in meta["lr_groups"]}
    assert lrs == {True: pytest.approx(0.0025), False: 0.025}

    lib = fit("resnet18", "finetune", tmp_path / "lib", data_dir=idx_dir, init_from=imagenet_pth, **SMALL)
    assert lib.recipe.as_dict() == meta["recipe"], "the command line and fit() train the same recipe"

    model, _ = load_checkpoint(out)
    assert model.preprocessing.normalize == ((0.449,), (0.226,))
    code, stdout, err = run(["eval", out, "--data-dir", idx_dir, "--subset", 20, "--no-amp"], capsys)
    assert code == 0, err
    assert f"test acc {meta['final']['test_acc']:.3f}" in stdout, "eval normalises as the run did"


def test_a_stopped_finetune_run_resumes_with_its_groups_without_the_weights_file(idx_dir, imagenet_pth, tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(imagenet_pth.read_bytes())

    def stop(record):
        raise KeyboardInterrupt

    kw = dict(data_dir=idx_dir, **{**SMALL, "epochs": 2})
    with pytest.raises(KeyboardInterrupt):
        fit("resnet18", "finetune", tmp_path / "r", init_from=weights, on_epoch_end=stop, **kw)
    before = json.loads((tmp_path / "r" / "run.json").read_text())
    weights.unlink()  # a resume goes on from the run's checkpoint; its groups come from run.json's init_from
    result = fit("resnet18", "finetune", tmp_path / "r", resume=True, **kw)
    assert len(result.history) == 2 and result.metadata["lr_groups"] == before["lr_groups"]


def test_finetune_without_weights_is_a_one_line_error(idx_dir, tmp_path, capsys):
    code, _, err = run(["train", "resnet18", "--recipe", "finetune", "--data-dir", idx_dir, "--out", tmp_path / "r",
                        *TINY], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "pass --init-from WEIGHTS" in err, err
    assert not (tmp_path / "r").exists()
    code, _, err = run(["train", "lenet", "--recipe", "finetune", "--data-dir", idx_dir, "--init-from",
                        tmp_path / "w.pth", "--out", tmp_path / "r"], capsys)
    assert code == 2 and "no finetune recipe for lenet" in err and not (tmp_path / "r").exists()


def test_the_book_recipe_with_a_pth_says_finetune_exists_and_keeps_the_book_recipe(idx_dir, imagenet_pth, tmp_path,
                                                                                 capsys):
    book = fit("resnet18", "book", tmp_path / "b", data_dir=idx_dir, init_from=imagenet_pth,
               **{**SMALL, "quiet": False})
    err = capsys.readouterr().err
    hints = [line for line in err.splitlines() if "--recipe finetune" in line]
    assert len(hints) == 1 and book.recipe.name == "book" and book.metadata["input"]["normalize"] is None


def test_a_run_from_before_the_new_values_resumes_and_replays(idx_dir, tmp_path, capsys):
    kw = dict(data_dir=idx_dir, epochs=2, batch_size=32, subset=64, test_subset=20, amp=False, device="cpu",
              quiet=True)

    def stop(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit("lenet", "modern", tmp_path / "old", on_epoch_end=stop, **kw)
    run_json = tmp_path / "old" / "run.json"
    meta = json.loads(run_json.read_text())
    for key in ("normalize_stats", "pretrained_lr_scale"):  # as a run.json written before they existed
        del meta["recipe"][key]
    del meta["lr_groups"]
    run_json.write_text(json.dumps(meta))
    names = {f.name for f in dataclasses.fields(Recipe)}
    assert Recipe(**as_recorded_then(meta["recipe"])) == get_recipe("lenet", "modern", **{
        k: v for k, v in kw.items() if k in names})
    resumed = fit("lenet", "modern", tmp_path / "old", resume=True, **kw)
    assert len(resumed.history) == 2 and json.loads(run_json.read_text())["input"] == meta["input"]
    code, _, err = run(["train", "--like", tmp_path / "old", "--out", tmp_path / "again", "--quiet"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "again" / "run.json").read_text())["recipe"] == resumed.recipe.as_dict()
