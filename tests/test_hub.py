"""torch.hub: hubconf.py's entry points, loaded from a clone on disk (offline), with and without weights."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import moderncnn
from moderncnn.storage import save_weights
from moderncnn.data import ImageDataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """What a clone holds that torch.hub needs: hubconf.py and src/moderncnn (copied: the working tree's, which
    a git clone of the last commit would not have yet)."""
    root = tmp_path_factory.mktemp("clone") / "moderncnn"
    (root / "src").mkdir(parents=True)
    shutil.copy(REPO / "hubconf.py", root)
    shutil.copytree(REPO / "src" / "moderncnn", root / "src" / "moderncnn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return root


def hubconf(root: Path):
    spec = importlib.util.spec_from_file_location("hubconf_under_test", root / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_entry_point_per_registered_model_with_its_docstring(clone):
    module = hubconf(clone)
    entries = sorted(f for f in dir(module) if callable(getattr(module, f)) and not f.startswith("_"))
    assert entries == moderncnn.list_models()  # torch.hub.list's rule: public callables
    doc = module.nin_paper.__doc__
    assert doc.startswith(moderncnn.get_model_builder("nin_paper").__doc__.rstrip()) and "weights" in doc


def test_torch_hub_load_from_the_clone_uses_the_clones_code(clone):
    code = ("import torch; m = torch.hub.load({root!r}, 'resnet18_book', source='local', num_classes=10); "
            "import moderncnn; print(m.num_classes, m.model_name, moderncnn.__file__)").format(root=str(clone))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=clone.parent, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    classes, name, source = done.stdout.split()
    assert (classes, name) == ("10", "resnet18_book") and source.startswith(str(clone / "src"))


def test_weights_from_a_run_directory_or_a_safetensors_file(tmp_path):
    y = torch.arange(32) % 4
    x = (torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    data = ImageDataset(x, y, list("abcd"), "toy", "train", "in memory")
    run = tmp_path / "run"
    moderncnn.fit("lenet", "book", run, train_data=data, test_data=data, epochs=1, batch_size=16, quiet=True,
                  amp=False)
    trained, _ = moderncnn.load_checkpoint(run)
    images = torch.rand(2, 1, 28, 28)

    from_run = torch.hub.load(str(REPO), "lenet", source="local", weights=str(run))
    assert not from_run.training and from_run.preprocessing.classes == tuple("abcd")
    file = tmp_path / "w.safetensors"
    save_weights(file, trained, epoch=1)
    from_file = torch.hub.load(str(REPO), "lenet", source="local", weights=str(file), num_classes=4)
    with torch.no_grad():
        torch.testing.assert_close(from_run(images), trained(images))
        torch.testing.assert_close(from_file(images), trained(images))

    with pytest.raises(ValueError, match="is a run of lenet, not lenet_bn: load it as 'lenet'"):
        torch.hub.load(str(REPO), "lenet_bn", source="local", weights=str(run))
    with pytest.raises(ValueError, match="was trained with num_classes=4, not 10"):
        torch.hub.load(str(REPO), "lenet", source="local", weights=str(run), num_classes=10)
    with pytest.raises(ValueError, match="does not fit the model lenet"):
        torch.hub.load(str(REPO), "lenet", source="local", weights=str(file))  # 10 classes, the file has 4
