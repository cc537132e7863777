"""What this release adds around the models: --version, py.typed, and --model-arg for summary and compare."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import moderncnn
from moderncnn.cli import main

REPO = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"moderncnn {moderncnn.__version__} (torch ")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["version"] == moderncnn.__version__
    assert "## " + moderncnn.__version__ in (REPO / "CHANGELOG.md").read_text()


def test_py_typed_ships():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["moderncnn"]
    assert (Path(moderncnn.__file__).parent / "py.typed").is_file()


def test_summary_and_compare_take_model_args(capsys):
    assert main(["summary", "alexnet_paper", "--model-arg", "groups=1", "--depth", "1"]) == 0
    assert "Total params          62,378,344" in capsys.readouterr().out
    assert main(["summary", "alexnet_paper", "--depth", "1"]) == 0
    assert "Total params          60,965,224" in capsys.readouterr().out
    assert main(["compare", "alexnet_paper", "--model-arg", "groups=1", "--markdown"]) == 0
    assert "| alexnet_paper (groups=1) | 3x227x227 | 62,378,344 | 1,135.3 M |" in capsys.readouterr().out
    row, = moderncnn.compare(["vgg11_book"], model_kwargs={"ratio": 8})
    assert row["model"] == "vgg11_book (ratio=8)"
    assert main(["summary", "lenet", "--model-arg", "colour=red"]) == 2
    assert "lenet takes no argument 'colour'" in capsys.readouterr().err
