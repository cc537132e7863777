"""Recipes in the user's hands: every recipe value on the command line, config files, --like replay,
--dry-run, --threads, progress in a log, and ``moderncnn recipes`` (tiny generated data, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moderncnn.cli import main
from moderncnn.recipes import RECIPES, get_recipe
from safetensors.torch import load_file as load_weights
from moderncnn.train import fit
from moderncnn.train import progress
from moderncnn.train.estimate import dry_run

from fixtures import offline, write_fashion_idx  # noqa: F401 - offline: a fixture, used by pytestmark

pytestmark = pytest.mark.usefixtures("offline")

TINY = ["--epochs", "1", "--batch-size", "32", "--subset", "96", "--test-subset", "20", "--no-amp", "--device",
        "cpu", "--quiet"]
KNOBS = ["--momentum", "0.8", "--nesterov", "--weight-decay", "0.001", "--schedule", "cosine", "--label-smoothing",
         "0.05", "--normalize", "--augment", "--init", "default"]


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_fashion_idx(tmp_path_factory.mktemp("fashion"), train=200, test=40)


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def recorded(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def test_every_recipe_value_from_the_command_line_is_the_recipe_fit_trains(idx_dir, tmp_path, capsys):
    code, _, err = run(["train", "lenet", "--data-dir", idx_dir, "--out", tmp_path / "cli", *TINY, *KNOBS], capsys)
    assert code == 0, err
    cli = recorded(tmp_path / "cli")
    result = fit("lenet", "book", tmp_path / "lib", "cpu", data_dir=idx_dir, amp=False, quiet=True, epochs=1,
                 batch_size=32, subset=96, test_subset=20, momentum=0.8, nesterov=True, weight_decay=0.001,
                 schedule="cosine", label_smoothing=0.05, normalize=True, augment=True, init="default")
    assert cli["recipe"] == result.recipe.as_dict() == recorded(tmp_path / "lib")["recipe"]
    book = get_recipe("lenet", "book").as_dict()
    changed = {k for k in book if book[k] != cli["recipe"][k]}
    assert {"momentum", "nesterov", "weight_decay", "schedule", "label_smoothing", "normalize", "augment",
            "init"} <= changed
    ours, theirs = (load_weights(d / "model.safetensors") for d in (tmp_path / "cli", tmp_path / "lib"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("flag, value, says", [("--momentum", "-0.5", "momentum must be >= 0"),
                                                ("--weight-decay", "nan", "weight_decay must be >= 0"),
                                                ("--label-smoothing", "1.5", "label_smoothing must be in [0, 1)")])
def test_a_bad_recipe_value_is_one_line_and_writes_nothing(flag, value, says, idx_dir, tmp_path, capsys):
    code, _, err = run(["train", "lenet", "--data-dir", idx_dir, "--out", tmp_path / "r", *TINY, flag, value], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv", [["--schedule", "linear"], ["--init", "he"], ["--threads", "0"]])
def test_a_bad_choice_is_argparse_s_one_line(argv, idx_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "lenet", "--data-dir", str(idx_dir), *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and argv[0] in err


def test_a_config_file_sets_the_defaults_and_flags_override_it(idx_dir, tmp_path, capsys):
    config = tmp_path / "recipe.toml"
    config.write_text('model = "lenet"\nrecipe = "modern"\nlr = 0.3\nmomentum = 0.7\nschedule = "cosine"\n'
                      'seed = 4\nnesterov = true\n[model_kwargs]\n')
    code, _, err = run(["train", "--config", config, "--data-dir", idx_dir, "--out", tmp_path / "r", *TINY,
                        "--lr", "0.2", "--no-nesterov"], capsys)
    assert code == 0, err
    meta = recorded(tmp_path / "r")
    want = get_recipe("lenet", "modern", lr=0.2, momentum=0.7, schedule="cosine", nesterov=False, epochs=1,
                      batch_size=32, subset=96, test_subset=20)
    assert meta["recipe"] == want.as_dict() and meta["seed"] == 4 and meta["model"] == "lenet"


@pytest.mark.parametrize("text, says", [('{"lr": 0.1, "momentun": 0.9}', "unknown key(s) momentun; valid: "),
                                        ('{"lr": "fast"}', "lr must be a number"),
                                        ('{"nesterov": 1}', "nesterov must be true or false"),
                                        ('{"batch_size": 0}', "batch_size must be"),
                                        ('{"schedule": "linear"}', "schedule must be one of"),
                                        ('{"speed": {"warp": true}}', "speed.warp must be one of"),
                                        ("[1, 2]", "must hold a table"), ("{lr", "is not valid JSON")])
def test_a_bad_config_is_one_line(text, says, idx_dir, tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(text)
    code, _, err = run(["train", "lenet", "--config", config, "--data-dir", idx_dir, "--out", tmp_path / "r"],
                       capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, err
    assert not (tmp_path / "r").exists()


def test_like_replays_a_run_bit_for_bit_and_a_flag_changes_it(idx_dir, tmp_path, capsys):
    first = tmp_path / "first"
    code, _, err = run(["train", "lenet_bn", "--data-dir", idx_dir, "--out", first, "--seed", "3", *TINY, *KNOBS],
                       capsys)
    assert code == 0, err
    code, _, err = run(["train", "--like", first, "--out", tmp_path / "again", "--quiet"], capsys)  # fp32 as first
    assert code == 0, err
    a, b = recorded(first), recorded(tmp_path / "again")
    assert (a["model"], a["recipe"], a["seed"], a["data"]["train"]["sha256"], a["speed"]) == \
        (b["model"], b["recipe"], b["seed"], b["data"]["train"]["sha256"], b["speed"])
    ours, theirs = (load_weights(d / "model.safetensors") for d in (first, tmp_path / "again"))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    code, _, err = run(["train", "--like", first, "--out", tmp_path / "seed4", "--seed", "4", "--quiet", "--no-amp"],
                       capsys)
    assert code == 0, err
    assert recorded(tmp_path / "seed4")["seed"] == 4
    other = load_weights(tmp_path / "seed4" / "model.safetensors")
    assert not all(torch.equal(ours[k], other[k]) for k in ours)
    # a run's run.json is a config file as it is
    code, _, err = run(["train", "--config", first / "run.json", "--data-dir", idx_dir, "--out", tmp_path / "cfg",
                        "--quiet", "--no-amp"], capsys)
    assert code == 0, err
    assert recorded(tmp_path / "cfg")["recipe"] == a["recipe"]


def test_like_refuses_another_model_and_a_missing_run(idx_dir, tmp_path, capsys):
    first = tmp_path / "first"
    assert run(["train", "lenet", "--data-dir", idx_dir, "--out", first, *TINY], capsys)[0] == 0
    code, _, err = run(["train", "alexnet", "--like", first, "--out", tmp_path / "x"], capsys)
    assert code == 2 and "replays lenet, not alexnet" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(["train", "--like", tmp_path / "nowhere", "--out", tmp_path / "x"], capsys)
    assert code == 2 and "no run.json there" in err
    code, _, err = run(["train", "--out", tmp_path / "x"], capsys)
    assert code == 2 and "name a MODEL" in err
    code, _, err = run(["train", "--like", first, "--config", first / "run.json", "--out", tmp_path / "x"], capsys)
    assert code == 2 and "pass one of them" in err
    assert not (tmp_path / "x").exists()


def _tree(*roots: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for root in roots for p in root.rglob("*")}


def test_dry_run_resolves_the_run_writes_nothing_and_trains_nothing(idx_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before, rng = _tree(tmp_path, Path(idx_dir)), torch.get_rng_state()
    code, out, err = run(["train", "lenet_bn", "--data-dir", idx_dir, "--dry-run", "--out", tmp_path / "r", *TINY,
                          *KNOBS], capsys)
    assert code == 0, err
    assert _tree(tmp_path, Path(idx_dir)) == before and torch.equal(torch.get_rng_state(), rng)
    assert "momentum 0.8" in out and "schedule cosine" in out and "train 200 images (using 96)" in out
    assert "fold_bn:" in out and "estimate:" in out and "1 epochs: about" in out
    plan = dry_run("lenet_bn", "book", "cpu", data_dir=idx_dir, amp=False, epochs=1, batch_size=32, subset=96,
                   test_subset=20, momentum=0.8, nesterov=True, weight_decay=0.001, schedule="cosine",
                   label_smoothing=0.05, normalize=True, augment=True, init="default")
    assert str(plan.recipe.as_dict()["momentum"]) in out and plan.steps_per_epoch == 3 and plan.seconds > 0
    shown = (f"{k} {v}" for k, v in plan.recipe.as_dict().items() if k not in ("model", "name", "based_on"))
    assert f"recipe: {', '.join(shown)}" in out


def test_the_estimate_grows_with_the_run(idx_dir):
    short = dry_run("lenet", "book", "cpu", data_dir=idx_dir, amp=False, epochs=1, batch_size=32)
    long = dry_run("lenet", "book", "cpu", data_dir=idx_dir, amp=False, epochs=50, batch_size=32)
    assert long.steps_per_epoch == short.steps_per_epoch == 7 and long.seconds > 10 * short.seconds


def test_a_log_gets_progress_lines_and_a_long_run_says_so(idx_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)
    monkeypatch.setattr(progress, "LONG_RUN", 0.0)
    monkeypatch.setattr(progress, "ESTIMATE_STEPS", 3)
    fit("lenet", "book", None, "cpu", data_dir=idx_dir, amp=False, epochs=2, batch_size=32, subset=128)
    err = capsys.readouterr().err  # not a terminal under pytest: no bar, lines instead
    lines = [line for line in err.splitlines() if ", step " in line]
    assert len(lines) == 2 * 4 and lines[0].startswith("epoch 1/2, step 1/4: ") and "images/s, about" in lines[0]
    assert err.count("this run will take about") == 1 and "--subset N" in err
    fit("lenet", "book", None, "cpu", data_dir=idx_dir, amp=False, epochs=1, batch_size=32, subset=128, quiet=True)
    assert ", step " not in capsys.readouterr().err


def test_the_long_run_line_only_past_the_limit_and_on_a_cpu():
    assert progress.long_run_hint(progress.LONG_RUN - 1, "cpu") is None
    assert progress.long_run_hint(progress.LONG_RUN + 1, "cuda") is None
    assert "about 12.0 h" in progress.long_run_hint(12 * 3600, "cpu")


def test_threads_for_the_run_only_and_recorded(idx_dir, tmp_path):
    before = torch.get_num_threads()
    seen = []
    result = fit("lenet", "book", tmp_path / "r", "cpu", data_dir=idx_dir, amp=False, quiet=True, epochs=1,
                 batch_size=32, subset=64, threads=before + 1,
                 on_epoch_end=lambda r: seen.append(torch.get_num_threads()))
    assert seen == [before + 1] and result.metadata["threads"] == before + 1
    assert recorded(tmp_path / "r")["threads"] == before + 1 and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be"):
        fit("lenet", "book", None, "cpu", data_dir=idx_dir, threads=0)


def test_recipes_lists_every_recipe_marks_differences_and_reads_measured_runs(tmp_path, capsys):
    code, out, err = run(["recipes", "lenet_bn"], capsys)
    assert code == 0, err
    assert all(name in out.splitlines()[1] for name in RECIPES if name != "finetune")
    assert "finetune: no finetune recipe for lenet_bn" in out  # it is for torchvision's weights
    book, modern = get_recipe("lenet_bn", "book"), get_recipe("lenet_bn", "modern")
    lr_line = next(line for line in out.splitlines() if line.strip().startswith("lr "))
    assert lr_line.endswith("*") == (book.lr != modern.lr)
    from moderncnn.recipeview import recipe_table

    run_dir = tmp_path / "machine" / "runs" / "lenet5-modern-seed0"
    run_dir.mkdir(parents=True)
    meta = {"model": "lenet5", "status": "finished", "seed": 0, "device_name": "Some CPU",
            "recipe": get_recipe("lenet5", "modern").as_dict(), "final": {"test_acc": 0.8712, "train_seconds": 61.0}}
    (run_dir / "run.json").write_text(json.dumps(meta))
    table = recipe_table("lenet5", root=tmp_path)
    assert "modern: test acc 0.871 (seeds 0; 10 epochs, 61 s of training on Some CPU" in table
    assert "book: not measured" in table
    code, _, err = run(["recipes", "lenett"], capsys)
    assert code == 2 and "unknown model" in err


def test_every_recipe_value_has_a_flag_and_a_config_key():
    """A value added to Recipe without its flag and config key would be dropped by --like: no bit-for-bit replay."""
    import dataclasses

    from moderncnn.cli import build_parser
    from moderncnn.recipes import Recipe
    from moderncnn.trainconfig import CONFIG_KEYS

    train = build_parser("train")._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in train._actions} | {"model_kwargs"}  # model_kwargs: --model-arg
    values = {f.name for f in dataclasses.fields(Recipe)} - {"model", "name", "book", "based_on"}
    assert values <= set(CONFIG_KEYS) and values <= dests, values - set(CONFIG_KEYS) - dests
