"""The command line end to end on a tiny generated Fashion-MNIST-format data set (no network)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import torch

from moderncnn.cli import main, parse_model_arg
from moderncnn.train import cpu_has_native_bf16

from fixtures import offline, write_fashion_idx  # noqa: F401 - offline: a fixture, used by pytestmark

VERBS = ("list", "summary", "train", "eval", "predict", "compare")


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_fashion_idx(tmp_path_factory.mktemp("fashion"), train=200, test=40)


pytestmark = pytest.mark.usefixtures("offline")


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, verb: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"moderncnn {verb}: error: "), err
    return lines[0]


def test_console_script_help():
    exe = shutil.which("moderncnn")
    assert exe, "the moderncnn console script is installed (pip install -e .)"
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert all(verb in done.stdout for verb in VERBS)


def test_a_closed_pipe_is_not_a_traceback():
    proc = subprocess.Popen([shutil.which("moderncnn"), "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command has imported torch, so its first write meets a closed pipe
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and err == b""


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([verb, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: moderncnn {verb}")


def test_train_eval_predict_end_to_end(idx_dir, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "run"
    train = ["train", "lenet", "--epochs", 1, "--subset", 96, "--test-subset", 20, "--batch-size", 32,
             "--data-dir", idx_dir, "--no-download", "--out", out, "--quiet", "--device", "cpu"]
    code, stdout, err = run(train, capsys)
    assert code == 0, err
    lines = stdout.splitlines()
    assert re.fullmatch(r"loss \d\.\d{3}, train acc \d\.\d{3}, test acc \d\.\d{3}", lines[0])
    assert re.fullmatch(r"\d+\.\d examples/sec on cpu", lines[1])
    assert any(line.startswith("book en 0.17.5") for line in lines)
    meta = json.loads((out / "run.json").read_text())
    assert meta["data"]["train_used"] == 96 and meta["data"]["test_size"] == 40
    assert meta["data"]["test_used"] == 20 and meta["recipe"]["test_subset"] == 20
    assert "test_subset 20 vs None" in stdout, "the final table says the test set was cut"
    assert meta["data"]["source"] == str(idx_dir) and meta["command"].startswith("moderncnn train lenet")

    code, stdout, err = run(["train", "lenet", "--data-dir", idx_dir, "--out", out, "--quiet"], capsys)
    assert code == 2 and "already holds a run" in one_line_error(err, "train")

    code, stdout, err = run(["eval", out, "--data-dir", idx_dir, "--no-download", "--device", "cpu"], capsys)
    assert code == 0, err
    assert re.search(r"test \(40 images, .*\): test acc \d\.\d{3}", stdout) and "Ankle boot" in stdout
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    code, stdout, err = run(["eval", out / "model.safetensors", "--data-dir", idx_dir, "--out", tmp_path / "cm",
                             "--subset", 20], capsys)
    assert code == 0 and (tmp_path / "cm" / "confusion.png").exists()
    final = json.loads((out / "run.json").read_text())["final"]
    precision = "bfloat16" if cpu_has_native_bf16() else "fp32"  # the run's: bf16 where the CPU has it in hardware
    assert f"test (20 images, {idx_dir}, {precision}): test acc {final['test_acc']:.3f}" in stdout, \
        "evaluated as the run was tested, eval gives the run's own test accuracy"
    code, stdout, err = run(["eval", out, "--data-dir", idx_dir, "--subset", 20, "--no-amp"], capsys)
    assert code == 0 and "test (20 images, " in stdout and ", fp32): test acc" in stdout

    Image.new("RGBA", (64, 48), (255, 255, 255, 128)).save(tmp_path / "photo.png")
    Image.new("L", (10, 10), 30).save(tmp_path / "small.jpg")
    code, stdout, err = run(["predict", out, tmp_path / "photo.png", tmp_path / "small.jpg", "--topk", 2], capsys)
    assert code == 0, err
    classes = meta["data"]["classes"]
    for line, name in zip(stdout.splitlines(), ("photo.png", "small.jpg")):
        path, top = line.split(": ")
        assert path.endswith(name)
        assert [c.rsplit(" ", 1)[0] in classes for c in top.split(", ")] == [True, True]

    (tmp_path / "album").mkdir()
    shutil.copy(tmp_path / "small.jpg", tmp_path / "album" / "x.jpg")
    code, stdout, err = run(["predict", out, tmp_path / "album", tmp_path / "photo.png"], capsys)
    assert code == 0 and [line.split(": ")[0] for line in stdout.splitlines()] == \
        [str(tmp_path / "album" / "x.jpg"), str(tmp_path / "photo.png")]

    (tmp_path / "notes.png").write_text("plain text")
    # one bad file of many: named in one line, the rest predicted, a non-zero exit at the end
    code, stdout, err = run(["predict", out, tmp_path / "photo.png", tmp_path / "notes.png", tmp_path / "absent.png",
                             tmp_path / "small.jpg"], capsys)
    assert code == 2 and [line.split(": ")[0] for line in stdout.splitlines()] == \
        [str(tmp_path / "photo.png"), str(tmp_path / "small.jpg")]
    skipped, last = err.strip().splitlines()[:-1], err.strip().splitlines()[-1]
    assert len(skipped) == 2 and "notes.png is not an image" in skipped[0] and "no such image file" in skipped[1]
    assert last == "moderncnn predict: error: 2 of 4 image files could not be read (each named above); the others " \
                   "were predicted"
    code, _, err = run(["predict", tmp_path / "nowhere", tmp_path / "photo.png"], capsys)
    assert code == 2 and "no such checkpoint" in one_line_error(err, "predict")


def test_resume_and_overwrite_on_the_command_line(idx_dir, tmp_path, capsys):
    base = ["train", "lenet_bn", "--subset", 64, "--batch-size", 32, "--data-dir", idx_dir, "--out",
            tmp_path / "run", "--quiet", "--no-amp"]
    assert run([*base, "--epochs", 1], capsys)[0] == 0
    code, _, err = run([*base, "--epochs", 2, "--resume"], capsys)
    assert code == 0, err
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["epoch"] for m in metrics] == [1, 2]
    code, _, err = run([*base, "--epochs", 2, "--resume", "--lr", 0.1], capsys)
    assert code == 2 and "different run" in one_line_error(err, "train")
    assert run([*base, "--epochs", 1, "--overwrite"], capsys)[0] == 0
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_fine_tune_on_the_command_line(idx_dir, tmp_path, capsys):
    base = ["train", "lenet", "--epochs", 1, "--subset", 64, "--test-subset", 10, "--batch-size", 32, "--data-dir",
            idx_dir, "--device", "cpu"]
    assert run([*base, "--out", tmp_path / "a", "--quiet"], capsys)[0] == 0
    code, out, err = run([*base, "--out", tmp_path / "b", "--init-from", tmp_path / "a"], capsys)
    assert code == 0 and f"starting from {tmp_path / 'a'}: 10 tensors" in err
    assert f"(started from the weights in {tmp_path / 'a'}, not from scratch as the book's run)" in out
    assert json.loads((tmp_path / "b" / "run.json").read_text())["init_from"]["loaded"] == 10
    code, _, err = run([*base, "--out", tmp_path / "c", "--init-from", tmp_path / "none.pth"], capsys)
    assert code == 2 and "no such weights file or run directory" in one_line_error(err, "train")
    assert not (tmp_path / "c").exists()


def test_train_passes_overrides_and_model_args(monkeypatch, capsys):
    import moderncnn.train

    seen = {}
    monkeypatch.setattr(moderncnn.train, "fit", lambda *a, **kw: seen.update(args=a, kwargs=kw))
    code = main(["train", "vgg11_book", "--recipe", "modern", "--epochs", "3", "--lr", "0.5", "--ratio", "8",
                 "--model-arg", "flag=False", "--model-arg", "name=abc", "--no-amp", "--quiet", "--seed", "7"])
    assert code == 0
    model, recipe, out, device = seen["args"]
    assert (model, recipe, str(out), device) == ("vgg11_book", "modern", "runs/vgg11_book-modern", None)
    kw = seen["kwargs"]
    assert (kw["epochs"], kw["lr"], kw["seed"], kw["amp"]) == (3, 0.5, 7, False)
    assert kw["model_kwargs"] == {"ratio": 8, "flag": False, "name": "abc"}
    assert "batch_size" not in kw and "resize" not in kw, "unset options keep the recipe's values"
    assert kw["compile"] is False

    main(["train", "lenet", "--compile", "--quiet"])
    assert seen["kwargs"]["compile"] is True
    main(["train", "lenet", "--compile-mode", "reduce-overhead", "--quiet"])
    assert seen["kwargs"]["compile"] == "reduce-overhead"


@pytest.mark.parametrize("text, expected", [("ratio=8", ("ratio", 8)), ("p=0.5", ("p", 0.5)),
                                            ("aux_logits=False", ("aux_logits", False)), ("s=abc", ("s", "abc"))])
def test_parse_model_arg(text, expected):
    assert parse_model_arg(text) == expected


@pytest.mark.parametrize("argv, message", [
    (["train", "lenett", "--data-dir", "{idx}"], "unknown model 'lenett'; did you mean lenet"),
    (["train", "lenet", "--data-dir", "{idx}", "--lr", "-1", "--out", "{tmp}/x"], "lr must be a finite number > 0"),
    (["train", "lenet", "--dataset", "{tmp}/nothing-here", "--out", "{tmp}/x"], "no such folder of images: "),
    (["eval", "{tmp}/nowhere"], "no such checkpoint or run directory"),
    (["summary", "lenet", "--num-classes", "-3"], "num_classes must be a positive integer, got -3"),
])
def test_errors_are_one_line(argv, message, idx_dir, tmp_path, capsys):
    code, _, err = run([a.format(idx=idx_dir, tmp=tmp_path) for a in argv], capsys)
    assert code == 2 and message in one_line_error(err, argv[0])


@pytest.mark.parametrize("error", [MemoryError(), torch.cuda.OutOfMemoryError(
    "CUDA out of memory. Tried to allocate 4.00 GiB. GPU 0 has a total capacity of 79 GiB\nOf the allocated ...")])
def test_out_of_memory_is_one_line_with_what_to_do(error, monkeypatch, capsys):
    import moderncnn.train

    def fit(*args, **kwargs):
        raise error

    monkeypatch.setattr(moderncnn.train, "fit", fit)
    # the estimate before training would refuse this batch on a small machine: here training itself runs out
    monkeypatch.setattr(moderncnn.cliargs, "check_fits", lambda *args: None)
    code, _, err = run(["train", "alexnet", "--batch-size", 4096], capsys)
    line = one_line_error(err, "train")
    assert code == 2 and "out of memory (" in line and line.endswith("use a smaller --batch-size (or --resize)")


def test_a_full_disk_is_one_line(monkeypatch, capsys):
    import errno

    import moderncnn.train

    def fit(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/lenet-book/model.safetensors")

    monkeypatch.setattr(moderncnn.train, "fit", fit)
    code, _, err = run(["train", "lenet"], capsys)
    assert code == 2 and one_line_error(err, "train") == (
        "moderncnn train: error: No space left on device (runs/lenet-book/model.safetensors); free space or write "
        "elsewhere, then run again (a stopped training goes on with --resume)")


def test_unknown_compile_mode_is_argparses_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "lenet", "--compile-mode", "fast"])
    assert exit_.value.code == 2
    assert "argument --compile-mode: invalid choice: 'fast'" in capsys.readouterr().err.splitlines()[-1]


def test_unknown_option_is_the_verbs_usage_error_with_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "run", "photo.png", "--top-k", "2"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["moderncnn predict: error: unrecognized arguments: --top-k 2 "
                                "(--top-k: did you mean --topk?) (see moderncnn predict --help)"]


@pytest.mark.parametrize("argv, message", [
    (["train", "lenet", "--batch-size", "0"], "argument --batch-size: "),
    (["train", "lenet", "--speed", "foo=on"], "argument --speed: --speed must be OPTION=on|off"),
    (["show", "filters"], "the following arguments are required: RUN"),
    ([], "the following arguments are required: COMMAND"),
])
def test_a_usage_error_is_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and message in err[0] and err[0].endswith("--help)"), err


def test_list_and_summary_still_work(capsys):
    code, out, _ = run(["list", "lenet*"], capsys)
    assert code == 0 and "lenet_bn" in out.split()
    code, out, _ = run(["summary", "lenet"], capsys)
    assert code == 0 and out.strip()


# -- where a run's data comes from ------------------------------------------------------------------------------

def train_small(idx, out, capsys, *extra):
    code, _, err = run(["train", "lenet", "--epochs", 1, "--subset", 64, "--test-subset", 20, "--batch-size", 32,
                        "--data-dir", idx, "--no-download", "--out", out, "--quiet", "--device", "cpu", *extra], capsys)
    assert code == 0, err


def test_resume_and_eval_use_the_runs_own_data_never_the_sample(tmp_path, capsys):
    idx = write_fashion_idx(tmp_path / "data", train=200, test=40)
    out = tmp_path / "run"
    train_small(idx, out, capsys)
    recorded = json.loads((out / "run.json").read_text())["data"]
    assert recorded["train"]["root"] == str(idx.resolve()) and not recorded["is_sample"]
    # no --data-dir, and nothing in $MODERNCNN_DATA or the cache: the run's own folder, not the sample
    code, _, err = run(["train", "lenet", "--epochs", 2, "--subset", 64, "--test-subset", 20, "--batch-size", 32,
                        "--out", out, "--quiet", "--resume", "--no-download"], capsys)
    assert code == 0, err
    meta = json.loads((out / "run.json").read_text())
    assert meta["epochs_done"] == 2 and meta["data"]["train"] == recorded["train"] and not meta["data"]["is_sample"]
    code, stdout, err = run(["eval", out, "--no-download"], capsys)
    assert code == 0 and f"test (40 images, {idx}, " in stdout, err

    # the data changed under the run: refused in one line, by resume and eval alike
    write_fashion_idx(idx, train=200, test=41)
    code, _, err = run(["train", "lenet", "--epochs", 3, "--out", out, "--resume", "--quiet"], capsys)
    assert code == 2 and "is not the data the run used" in one_line_error(err, "train")
    code, _, err = run(["eval", out], capsys)
    assert code == 2 and "is not the data the run used" in one_line_error(err, "eval")
    # and gone: said, with what to do
    shutil.rmtree(idx)
    code, _, err = run(["train", "lenet", "--epochs", 3, "--out", out, "--resume", "--quiet"], capsys)
    assert code == 2 and "which is gone; pass --data-dir" in one_line_error(err, "train")
    code, _, err = run(["eval", out], capsys)
    assert code == 2 and "which is gone; pass --data-dir" in one_line_error(err, "eval")
    assert json.loads((out / "run.json").read_text())["epochs_done"] == 2, "the run is as it was"


def test_a_folder_with_one_split_is_refused_not_completed_from_elsewhere(tmp_path, capsys):
    idx = write_fashion_idx(tmp_path / "data", train=200, test=40)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (idx / name).unlink()
    code, _, err = run(["train", "lenet", "--data-dir", idx, "--out", tmp_path / "run", "--quiet"], capsys)
    assert code == 2 and "holds the training files of fashion-mnist but not its test files" in \
        one_line_error(err, "train")
    assert not (tmp_path / "run").exists()


def test_predict_from_python_gives_the_command_lines_answers(idx_dir, tmp_path, capsys):
    from PIL import Image

    from moderncnn import load_checkpoint, predict

    out = tmp_path / "run"
    train_small(idx_dir, out, capsys, "--recipe", "modern")  # normalised inputs: the preprocessing matters
    for i in range(3):
        Image.new("L", (30 + i, 28), 60 * i).save(tmp_path / f"{i}.png")
    files = [tmp_path / f"{i}.png" for i in range(3)]
    code, stdout, _ = run(["predict", out, *files, "--topk", 3], capsys)
    assert code == 0
    model, meta = load_checkpoint(out)
    assert model.preprocessing.normalize is not None and list(model.preprocessing.classes) == meta["data"]["classes"]
    for answers in (predict(out, files), predict(model, files)):
        lines = [f"{p}: " + ", ".join(f"{name} {prob:.3f}" for name, prob in top) for p, top in zip(files, answers)]
        assert lines == stdout.splitlines()


def test_eval_prints_its_results_before_it_writes_a_file(idx_dir, tmp_path, capsys, monkeypatch):
    import errno
    import importlib

    out = tmp_path / "run"
    train_small(idx_dir, out, capsys)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(importlib.import_module("moderncnn.evaluate"), "plot_confusion", read_only)
    code, stdout, err = run(["eval", out], capsys)
    assert code == 0 and "test acc" in stdout and "Ankle boot" in stdout and "confusion matrix:" not in stdout
    assert err.strip().splitlines() == [f"moderncnn eval: warning: confusion.png not written in {out} (Read-only "
                                        f"file system); pass --out DIR to write it elsewhere"]
    code, stdout, err = run(["eval", out, "--out", tmp_path / "elsewhere"], capsys)  # asked for: an error
    assert code == 2 and "test acc" in stdout and "cannot write confusion.png in" in one_line_error(err, "eval")


@pytest.mark.parametrize("lr, what", [("1e30", "became"), ("1e4", "exploded to")])  # 1e4: finite, at chance
def test_a_diverging_run_exits_non_zero_in_one_line(idx_dir, tmp_path, capsys, lr, what):
    out = tmp_path / "run"
    code, _, err = run(["train", "lenet_bn", "--recipe", "modern", "--lr", lr, "--epochs", 3, "--subset", 64,
                        "--batch-size", 32, "--data-dir", idx_dir, "--out", out, "--quiet"], capsys)
    line = one_line_error(err, "train")
    assert code == 2 and f"the loss {what}" in line and "lower --lr" in line
    text = (out / "run.json").read_text()
    assert json.loads(text)["status"] == "diverged" and "NaN" not in text


@pytest.mark.parametrize("argv, message", [
    (["--lr", "inf"], "lr must be a finite number > 0, got inf"),
    (["--lr", "nan"], "lr must be a finite number > 0, got nan"),
    (["--resume", "--overwrite"], "pass one of them"),
])
def test_bad_values_are_refused_before_anything_is_written(argv, message, idx_dir, tmp_path, capsys):
    code, _, err = run(["train", "lenet", "--data-dir", idx_dir, "--out", tmp_path / "run", *argv], capsys)
    assert code == 2 and message in one_line_error(err, "train")
    assert not (tmp_path / "run").exists()


def test_speed_options_from_the_command_line(idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    train_small(idx_dir, out, capsys, "--speed", "patch_pool=off", "--speed", "channels_last=on")
    recorded = json.loads((out / "run.json").read_text())["speed"]
    assert recorded["patch_pool"] is False and recorded["channels_last"] is True
    assert recorded["why"]["patch_pool"] == "asked for"
    with pytest.raises(SystemExit):
        main(["train", "lenet", "--speed", "fold=off"])
    assert "--speed must be OPTION=on|off with OPTION one of amp, channels_last" in capsys.readouterr().err
