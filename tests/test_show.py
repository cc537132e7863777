"""Pictures of what a network learned (moderncnn.show): stages, filters, activations, saliency, mistakes, the
live curves and TensorBoard; small models and tiny inputs, CPU."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from moderncnn import create_model
from moderncnn.data import ImageDataset
from moderncnn.data.datasets import IDX_CLASSES
from moderncnn.checkpoint import Preprocessing
from moderncnn.evaluate import evaluate
from moderncnn.show import (feature_stages, find_mistakes, gradcam, input_gradients, plot_activations,
                            plot_filters, plot_mistakes, plot_saliency, stage_outputs)
from moderncnn.show.images import mosaic, read_image
from moderncnn.show.live import LiveCurves
from moderncnn.curves import curves_figure


def model(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=kw.pop("num_classes", 10), in_channels=kw.pop("in_channels", 1), **kw).eval()


def toy(n: int = 40, size: int = 28) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(n, 1, size, size, generator=g) * 255).to(torch.uint8)
    return ImageDataset(images, torch.arange(n) % 10, [f"class {i}" for i in range(10)], "toy", "test", "in memory")


def images_of(fig: Figure):
    return [im for ax in fig.axes for im in ax.get_images()]


# -- stages ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, labels", [
    ("lenet", ["0-2", "3-5"]),
    ("lenet_bn", ["0-3", "4-7"]),
    ("alexnet", ["0-2", "3-5", "6-7", "8-9", "10-12"]),
    ("resnet18_book", ["0", "1", "2", "3", "4"]),
    ("googlenet", ["0", "1", "2", "3", "4.0", "4.1"]),
    ("densenet_book", ["0", "1", "2", "3", "4", "5", "6", "7-9"]),
    ("vgg11_book", ["0", "1", "2", "3", "4"]),
    ("nin", ["0-1", "2-3", "4-5"]),
])
def test_the_stages_are_the_familys_blocks_and_end_where_the_head_begins(name, labels):
    net = model(name)
    size = {"alexnet": 224, "nin": 224, "vgg11_book": 224}.get(name, net.default_image_size)
    x = torch.rand(1, 1, size, size)
    assert [label for label, _, _ in feature_stages(net, x)] == labels
    outputs = stage_outputs(net, x)
    assert all(maps.dim() == 3 for _, maps in outputs)
    if name != "googlenet":  # the book's GoogLeNet pools inside its last block
        torch.testing.assert_close(outputs[-1][1], net.forward_features(x)[0])


def test_paper_forms_open_torchvisions_features_container():
    net = model("resnet18")
    labels = [label for label, _, _ in feature_stages(net, torch.rand(1, 1, 64, 64))]
    assert labels == ["conv1-maxpool", "layer1", "layer2", "layer3", "layer4"]
    labels = [label for label, _, _ in feature_stages(model("vgg11"), torch.rand(1, 1, 64, 64))]
    assert labels[0] == "features.0-2" and len(labels) == 8


# -- filters -----------------------------------------------------------------------------------------------------

def test_filters_of_a_grey_first_layer_are_grey_tiles():
    fig = plot_filters(model("lenet"))
    assert isinstance(fig, Figure)
    (image,) = images_of(fig)
    assert image.get_array().ndim == 2 and image.get_array().shape == (5 * 2 + 1, 5 * 3 + 2)  # 6 tiles, 3 a row
    assert "layer 0" in fig.axes[0].get_title()


def test_filters_of_an_rgb_first_layer_are_colour_tiles():
    (image,) = images_of(plot_filters(model("resnet18_book", in_channels=3)))
    assert image.get_array().ndim == 3 and image.get_array().shape[-1] == 3


def test_filters_since_the_start_draw_what_training_changed():
    start, trained = model("lenet"), model("lenet")
    with torch.no_grad():
        trained[3].weight.copy_(start[3].weight)
        trained[3].weight[0, 0] += torch.arange(-12.0, 13).reshape(5, 5)  # one kernel learned a ramp
    fig = plot_filters(trained, layer="3", start=start)
    (image,) = images_of(fig)
    tiles = image.get_array()
    assert "what training changed" in fig.axes[0].get_title()
    assert tiles[0, 0] == 0 and tiles[4, 4] == 1 and tiles[0, 6] == pytest.approx(0.5)  # unchanged: mid-grey
    with pytest.raises(ValueError, match="give the same network before training"):
        plot_filters(model("lenet"), start=model("lenet", in_channels=3))
    with pytest.raises(ValueError, match="the start has no convolution 3 with kernels of shape"):
        plot_filters(model("lenet"), layer="3", start=model("resnet18_book"))


def test_a_deeper_layer_is_a_grid_of_outputs_by_inputs():
    fig = plot_filters(model("lenet"), layer="3")  # 16 filters over 6 input channels
    (image,) = images_of(fig)
    assert image.get_array().shape == (11 * 5 + 10, 6 * 5 + 5)
    assert "input channels" in fig.axes[0].get_title()


def test_an_unknown_layer_names_the_convolutions():
    with pytest.raises(ValueError, match=r"no convolution layer named 'conv9'.*0, 3"):
        plot_filters(model("lenet"), layer="conv9")
    with pytest.raises(ValueError, match="no convolution layer named '2'"):
        plot_filters(model("lenet"), layer="2")  # a pooling layer


def test_mosaic_lays_tiles_out_with_gaps():
    out = mosaic(torch.ones(5, 2, 3), columns=2)
    assert out.shape == (3 * 2 + 2, 2 * 3 + 1) and out.isnan().sum() == out.numel() - 5 * 6


# -- activations -------------------------------------------------------------------------------------------------

def test_activations_draw_the_input_and_every_stage(tmp_path):
    path = tmp_path / "boot.png"
    Image.fromarray((torch.rand(40, 30) * 255).to(torch.uint8).numpy()).save(path)
    fig = plot_activations(model("lenet"), path)
    images = images_of(fig)
    assert len(images) == 3 and images[0].get_array().shape == (28, 28)  # resized to the run's size
    assert images[2].get_array().shape == (5 * 2 + 1, 5 * 8 + 7)  # 16 maps of 5x5, 8 a row
    assert fig.axes[2].get_title() == "stage 2 of 2 (modules 3-5: Conv2d to AvgPool2d): 16 maps of 5x5; all 16"


def test_activations_follow_the_runs_preprocessing():
    net = model("lenet")
    net.preprocessing = Preprocessing(channels=1, size=28, normalize=((0.5,), (0.25,)), classes=("a",) * 10)
    x = torch.rand(1, 28, 28)
    ours = dict(stage_outputs(net, (x[None] - 0.5) / 0.25))
    torch.testing.assert_close(read_image(net, x), x[None])
    fig = plot_activations(net, x)
    assert len(images_of(fig)) == 1 + len(ours)


def test_a_missing_file_or_a_non_image_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such image file"):
        plot_activations(model("lenet"), tmp_path / "none.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        plot_saliency(model("lenet"), text)
    with pytest.raises(ValueError, match=r"one \(1, H, W\) image"):
        plot_activations(model("lenet"), torch.rand(3, 28, 28))


# -- saliency ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["gradcam", "hirescam", "gradients"])
def test_saliency_maps_cover_the_input_and_name_the_class(method):
    net = model("lenet_bn")
    fig = plot_saliency(net, torch.rand(1, 28, 28), method=method, target="7")
    heat = images_of(fig)[1].get_array()
    assert heat.shape == (28, 28) and 0 <= heat.min() and heat.max() <= 1
    assert "for 7 (" in fig.axes[1].get_title()


def test_gradcam_is_the_papers_weighted_sum_and_hirescam_equals_it_over_an_averaging_head():
    net = model("resnet18_book")
    x = torch.rand(1, 1, 48, 48)
    cam, probs, index = gradcam(net, x, target=3)
    maps = {}
    hook = net[4].register_forward_hook(lambda m, i, o: maps.setdefault("a", o))
    score = net(x)[0, 3]
    (grad,) = torch.autograd.grad(score, maps["a"])
    hook.remove()
    manual = torch.relu((grad[0].mean((1, 2))[:, None, None] * maps["a"][0]).sum(0)).detach()
    manual = torch.nn.functional.interpolate(manual[None, None], size=(48, 48), mode="bilinear")[0, 0]
    torch.testing.assert_close(cam, manual / manual.max())
    assert index == 3 and probs.shape == (10,)
    torch.testing.assert_close(gradcam(net, x, target=3, elementwise=True)[0], cam, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("captum") is None, reason="captum is not installed (a cross-check only)")
def test_gradcam_and_gradients_agree_with_captum():
    from captum.attr import LayerAttribution, LayerGradCam, Saliency

    net = model("resnet18_book")
    x = torch.rand(1, 1, 48, 48)
    theirs = LayerGradCam(net, net[4]).attribute(x, target=2, relu_attributions=True)
    theirs = LayerAttribution.interpolate(theirs, (48, 48), "bilinear")[0, 0]
    torch.testing.assert_close(gradcam(net, x, 2)[0], theirs / theirs.max(), atol=1e-5, rtol=1e-4)
    theirs = Saliency(net).attribute(x.clone().requires_grad_(True), target=2, abs=True)[0].amax(0)
    torch.testing.assert_close(input_gradients(net, x, 2)[0], theirs / theirs.max())


def test_saliency_errors_name_the_choices():
    net = model("lenet")
    net.preprocessing = Preprocessing(channels=1, size=28, classes=tuple(f"c{i}" for i in range(10)))
    with pytest.raises(ValueError, match="no class named 'boot'; give a class index .* the model's classes: c0, c1"):
        plot_saliency(net, torch.rand(1, 28, 28), target="boot")
    with pytest.raises(ValueError, match="class index 12 is out of range"):
        plot_saliency(net, torch.rand(1, 28, 28), target=12)
    with pytest.raises(ValueError, match="unknown saliency method 'cam'; use one of gradcam, hirescam"):
        plot_saliency(net, torch.rand(1, 28, 28), method="cam")


@pytest.mark.parametrize("given, index", [("Shirt", 6), ("shirt", 6), ("SHIRT", 6), ("t-shirt", 0), ("ankle", 9),
                                          ("6", 6), (6, 6)])
def test_a_class_is_named_in_any_case_or_by_index(given, index):
    from moderncnn.show.saliency import _target

    net = model("lenet")
    net.preprocessing = Preprocessing(channels=1, size=28, classes=tuple(IDX_CLASSES["fashion-mnist"]))
    assert _target(net, torch.zeros(1, 10), given) == index


@pytest.mark.parametrize("name, method", [("lenet", "hirescam"), ("alexnet", "hirescam"), ("vgg11_book", "hirescam"),
                                          ("vgg16", "hirescam"), ("nin", "gradcam"), ("googlenet", "gradcam"),
                                          ("resnet18_book", "gradcam"), ("densenet_book", "gradcam")])
def test_the_default_saliency_suits_the_head(name, method):
    from moderncnn.show import default_method

    with torch.device("meta"):
        net = create_model(name)
    assert default_method(net) == method


# -- mistakes ----------------------------------------------------------------------------------------------------

def test_mistakes_are_the_most_confident_wrong_answers():
    net, data = model("lenet_bn"), toy(40)
    found = find_mistakes(net, data, n=5)
    result = evaluate(net, data, "cpu")
    assert found["wrong"] == result["num_examples"] - int(result["confusion"].diag().sum())
    assert all(t != p for t, p in zip(found["true"], found["predicted"]))
    assert found["probability"] == sorted(found["probability"], reverse=True) and len(found["true"]) == 5
    assert found["images"].shape == (5, 1, 28, 28) and found["images"].dtype == torch.uint8
    assert find_mistakes(net, data, n=5, subset=20)["examined"] == 20


@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16])
def test_the_mistakes_are_the_ones_evaluate_counts(amp_dtype):
    net, data = model("lenet_bn"), toy(60)
    found = find_mistakes(net, data, n=400, amp_dtype=amp_dtype)
    scores = evaluate(net, data, amp_dtype=amp_dtype)
    assert found["wrong"] == len(found["true"]) == round((1 - scores["accuracy"]) * 60)
    assert all(t != p for t, p in zip(found["true"], found["predicted"]))


def test_plot_mistakes_labels_each_image():
    fig = plot_mistakes(model("lenet_bn"), toy(40), n=8, columns=4)
    assert len(fig.axes) == 8 and fig.axes[0].get_title().startswith("true: class ")
    assert fig.axes[0].get_xlabel().startswith("said: class ")
    with pytest.raises(ValueError, match="n must be at least 1"):
        find_mistakes(model("lenet"), toy(10), n=0)
    with pytest.raises(ValueError, match="at most 400 for a picture"):
        plot_mistakes(model("lenet"), toy(10), n=401)


# -- curves: sub-epoch points, live in a notebook ----------------------------------------------------------------

def test_fit_records_the_books_five_points_an_epoch_and_draws_them(tmp_path):
    from moderncnn import fit

    data = toy(64)
    result = fit("lenet", train_data=data, test_data=data, epochs=2, batch_size=8, device="cpu", quiet=True,
                 out_dir=tmp_path / "run", plot=True)  # plot=True outside a notebook: nothing drawn, nothing fails
    points = [p for h in result.history for p in h["points"]]
    steps = [1, 3, 4, 6, 8]  # of 8 an epoch: the book's num_batches // 5 spacing, the last step always
    assert [p[0] for p in points] == [e + k / 8 for e in (0, 1) for k in steps]
    assert points[4][1] == pytest.approx(result.history[0]["loss"])
    fig = curves_figure(result.history)
    xs = fig.axes[0].lines[0].get_xdata()
    assert len(xs) == 10 and fig.axes[0].get_xlim()[0] == 0


@pytest.fixture
def shown(monkeypatch):
    """What IPython would display: the first image, then each update of it in place."""
    pytest.importorskip("IPython")
    import IPython.display

    images = []

    class Handle:
        def update(self, obj):
            images.append(obj)

    monkeypatch.setattr(IPython.display, "display", lambda obj, display_id=None: images.append(obj) or Handle())
    return images


def test_live_curves_draw_only_in_a_notebook(shown):
    record = {"epoch": 1, "loss": 1.0, "train_acc": 0.5, "test_acc": 0.4, "points": [[0.5, 1.2, 0.4], [1, 1, .5]]}
    LiveCurves(enabled=False)(record)
    assert shown == []
    assert not LiveCurves().enabled  # pytest is no Jupyter kernel
    live = LiveCurves(enabled=True)
    live(record)
    live({**record, "epoch": 2})
    assert len(shown) == 2 and shown[0].data[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_redraws_the_live_curves_at_each_point_within_the_epoch(shown, monkeypatch):
    from moderncnn import fit
    from moderncnn.show import live

    drawn = []  # the histories drawn: a partial epoch (points, no test acc yet) before each finished one

    class InANotebook(LiveCurves):
        def __init__(self, title=""):
            super().__init__(title, enabled=True, max_share=None)  # every point drawn, however fast

        def _draw(self, history):
            drawn.append([dict(h) for h in history])
            super()._draw(history)

    monkeypatch.setattr(live, "LiveCurves", InANotebook)
    data = toy(40)
    result = fit("lenet", train_data=data, test_data=data, epochs=2, batch_size=8, device="cpu", quiet=True,
                 plot=True)
    assert len(drawn) == len(shown) == 2 * (5 + 1)
    partial = drawn[2][-1]
    assert partial["epoch"] == 1 and len(partial["points"]) == 3 and "test_acc" not in partial
    assert partial["epochs"] == 2 and curves_figure(drawn[2], epochs=5).axes[0].get_xlim()[1] == 5
    assert drawn[5] == result.history[:1] and drawn[-1] == result.history
    assert [len(h[-1]["points"]) for h in drawn[6:11]] == [1, 2, 3, 4, 5] and len(drawn[8]) == 2


def test_live_curves_skip_a_point_that_comes_too_soon_but_never_an_epoch(shown):
    live = LiveCurves(enabled=True)  # drawing costs tens of ms: points microseconds apart are drawn later
    partial = {"epoch": 1, "points": [[0.2, 1.0, 0.5]]}
    live.point(partial)
    for _ in range(10):
        live.point(partial)
    assert live.drawings == 1
    live({**partial, "test_acc": 0.5})
    assert live.drawings == 2 == len(shown)


# -- TensorBoard -------------------------------------------------------------------------------------------------

def test_without_tensorboard_the_error_names_the_extra(monkeypatch):
    from moderncnn.show.board import TensorBoard

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r'pip install "moderncnn\[tensorboard\]"'):
        TensorBoard("unused")


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_gets_the_scalars_and_the_pictures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from moderncnn.show.board import TensorBoard

    board = TensorBoard(tmp_path / "tb")
    record = {"epoch": 1, "loss": 1.0, "train_acc": 0.5, "test_acc": 0.4, "examples_per_sec": 9.0, "examples": 40,
              "points": [[0.5, 1.2, 0.4], [1.0, 1.0, 0.5]]}
    board(record)
    net = model("lenet")
    board.add_pictures(net, toy(20), [record], "lenet", start=model("lenet"))
    board.close()
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [20, 40]
    assert [e.step for e in events.Scalars("test/accuracy")] == [40]
    assert set(events.Tags()["images"]) == {f"pictures/{n}" for n in
                                            ("curves", "filters", "filters_learned", "activations", "gradcam",
                                             "mistakes")}


# -- the command line ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A LeNet trained one epoch on 64 images of a tiny Fashion-MNIST-format data set."""
    from fixtures import write_fashion_idx

    from moderncnn.cli import main

    root = tmp_path_factory.mktemp("show")
    idx = write_fashion_idx(root / "fashion", train=100, test=40)
    assert main(["train", "lenet", "--epochs", "1", "--subset", "64", "--batch-size", "32", "--data-dir", str(idx),
                 "--no-download", "--out", str(root / "run"), "--quiet", "--device", "cpu"]) == 0
    image = root / "shoe.png"
    Image.fromarray((torch.rand(28, 28) * 255).to(torch.uint8).numpy()).save(image)
    return root / "run", image


def show(argv, capsys):
    from moderncnn.cli import main

    code = main(["show", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, name", [
    (["filters"], "filters-first.png"),
    (["filters", "--layer", "3"], "filters-3.png"),
    (["filters", "--learned"], "filters-first-learned.png"),
    (["activations", "IMAGE"], "activations-shoe.png"),
    (["saliency", "IMAGE"], "saliency-hirescam-shoe.png"),  # LeNet's head flattens: Grad-CAM would be empty
    (["saliency", "IMAGE", "--method", "gradcam", "--class", "shirt"], "saliency-gradcam-shoe.png"),
    (["saliency", "IMAGE", "--method", "gradients", "--class", "Sneaker"], "saliency-gradients-shoe.png"),
    (["mistakes", "--n", "4"], "mistakes.png"),
])
def test_show_writes_a_png_in_the_run_directory_and_prints_its_path(small_run, argv, name, capsys):
    run, image = small_run
    argv = [argv[0], run, *[image if a == "IMAGE" else a for a in argv[1:]]]
    code, out, err = show(argv, capsys)
    assert code == 0, err
    assert out.strip() == str(run / name)
    assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_show_out_puts_the_picture_elsewhere(small_run, tmp_path, capsys):
    code, out, _ = show(["filters", small_run[0], "--out", tmp_path / "f.png"], capsys)
    assert code == 0 and out.strip() == str(tmp_path / "f.png") and (tmp_path / "f.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["filters", "RUN", "--layer", "9"], "lenet has no convolution layer named '9'; its convolution layers: 0, 3"),
    (["activations", "RUN", "NOTES"], "is not an image Pillow can read"),
    (["activations", "RUN", "missing.png"], "no such image file: missing.png"),
    (["saliency", "RUN", "IMAGE", "--class", "Boot"], "no class named 'Boot'; give a class index (0..9) or one of "
                                                      "the model's classes: T-shirt/top"),
    (["filters", "nowhere"], "no such checkpoint or run directory: nowhere"),
])
def test_show_errors_are_one_line(small_run, argv, message, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    subst = {"RUN": small_run[0], "IMAGE": small_run[1], "NOTES": notes}
    code, _, err = show([subst.get(a, a) for a in argv], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("moderncnn show: error: "), err
    assert message in lines[0]


@pytest.mark.parametrize("n", ["0", "401", "many"])
def test_show_mistakes_n_is_checked_before_anything_is_read(n, capsys):
    with pytest.raises(SystemExit) as exit_:
        show(["mistakes", "nowhere", "--n", n], capsys)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.strip().splitlines() == [
        f"moderncnn show mistakes: error: argument --n: must be a whole number from 1 to 400 (got '{n}') "
        f"(see moderncnn show mistakes --help)"]


def test_show_has_help_for_each_picture(capsys):
    from moderncnn.cli import main

    for picture in ("filters", "activations", "saliency", "mistakes"):
        with pytest.raises(SystemExit) as exit_:
            main(["show", picture, "--help"])
        assert exit_.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: moderncnn show {picture}")


def test_train_tensorboard_without_the_extra_fails_before_training(monkeypatch, tmp_path, capsys):
    from moderncnn.cli import main

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    code = main(["train", "lenet", "--tensorboard", "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == ('moderncnn train: error: --tensorboard needs TensorBoard, which is not installed: '
                                 'pip install "moderncnn[tensorboard]"')
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_train_tensorboard_writes_events_into_the_run(tmp_path, capsys):
    from fixtures import write_fashion_idx

    from moderncnn.cli import main

    idx = write_fashion_idx(tmp_path / "fashion", train=64, test=20)
    code = main(["train", "lenet", "--epochs", "1", "--batch-size", "32", "--data-dir", str(idx), "--no-download",
                 "--out", str(tmp_path / "run"), "--quiet", "--device", "cpu", "--tensorboard"])
    assert code == 0, capsys.readouterr().err
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    images = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload().Tags()["images"]
    assert "pictures/filters_learned" in images


def test_the_confusion_matrix_has_a_colour_bar_and_a_normalised_form(tmp_path):
    from moderncnn.evaluate import confusion_figure, plot_confusion

    result = {"confusion": torch.tensor([[3, 1], [0, 4]]), "classes": ["a", "b"], "accuracy": 0.875}
    fig = confusion_figure(result, normalize=True)
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "share of the true class"
    assert [t.get_text() for t in fig.axes[0].texts] == [".75", ".25", "", "1.00"]
    assert [t.get_text() for t in confusion_figure(result).axes[0].texts] == ["3", "1", "0", "4"]
    assert plot_confusion(result, tmp_path / "c.png", normalize=True).read_bytes()[:4] == b"\x89PNG"
