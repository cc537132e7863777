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


def _readme_commands() -> list[str]:
    """Every ``moderncnn ...`` command line of the README's code blocks (a comment after it removed)."""
    lines, fenced = [], False
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced and line.startswith("moderncnn "):
            lines.append(line.split("  #")[0].strip())
    return lines


def test_every_readme_command_is_one_the_command_line_takes():
    import shlex

    from moderncnn.cli import build_parser

    commands = _readme_commands()
    assert len(commands) >= 10
    parser = build_parser()
    for command in commands:
        args, unknown = parser.parse_known_args(shlex.split(command)[1:])
        assert not unknown, f"README: {command}: unknown {unknown}"


def test_the_install_story_keeps_users_developers_and_extras_apart():
    readme = (REPO / "README.md").read_text()
    head = readme.split("\n## ")[0]
    assert 'pip install -e ".[test]"' in head, "the contract's install line serves the test command"
    install = readme.split("\n## Install\n")[1].split("\n## ")[0]
    for line in ("pip install -e .  ", 'pip install -e ".[export]"', 'pip install -e ".[test]"', "--index-url"):
        assert line in install, line
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"export", "test", "tensorboard"} <= set(extras)
    export_line = next(line for line in readme.splitlines() if line.startswith("moderncnn export"))
    assert '".[export]"' in export_line, "where moderncnn export appears, its extra is named"
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["authors"]
    hub = (REPO / "docs" / "export.md").read_text()
    assert "## torch.hub" in hub and 'torch.hub.load("path/to/moderncnn", "lenet_bn", source="local", weights=' in hub


def test_help_and_version_answer_without_importing_torch():
    import subprocess

    code = ("import sys, contextlib, io\n"
            "from moderncnn.cli import main\n"
            "for argv in (['--help'], ['--version']):\n"
            "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "        main(argv)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_the_api_is_bound_on_first_use_and_a_module_never_hides_its_function():
    import importlib
    import types

    for name in moderncnn.__all__:
        assert callable(getattr(moderncnn, name)), name
    for name in ("export", "evaluate", "compare", "reproduce"):
        module = importlib.import_module(f"moderncnn.{name}")  # sets the package's attribute to the module
        assert getattr(moderncnn, name) is getattr(module, name) and not isinstance(getattr(moderncnn, name),
                                                                                    types.ModuleType)
    assert moderncnn.data.load_sample is not None  # a submodule, imported when asked for
    with pytest.raises(AttributeError):
        moderncnn.no_such_name
