"""The run directory's lifecycle: a kill at any point of a commit, two writers, repair, provenance, NaN."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import moderncnn.rundir as rundir
import moderncnn.storage as storage
from moderncnn import fit
from moderncnn.rundir import RunBusy, RunDir
from moderncnn.storage import save_weights, weights_epoch

from fixtures import write_fashion_idx
from test_train import FAST, Tiny, tiny, toy


@pytest.fixture(scope="module")
def data8():
    return toy(96, "train", size=8), toy(32, "test", size=8)


def kw(data, **changes):
    return {**FAST, "batch_size": 16, "epochs": 3, "seed": 5, "train_data": data[0], "test_data": data[1], **changes}


class Kill(BaseException):
    """Stands for SIGKILL: nothing catches it, nothing after it runs (the lock goes with the process)."""


# The commit's writes, in order; a kill before the k-th (k = len: after the last) of epoch 2's commit.
STEPS = [(storage, "save_weights"), (rundir, "save_state"), (rundir, "atomic_write"), (rundir.RunDir, "_publish"),
         (rundir.RunDir, "_remove_unreferenced"), (rundir.RunDir, "write_history"), (rundir.RunDir, "write_meta")]


def kill_during_second_commit(monkeypatch, k: int) -> None:
    calls = {"commit": 0, "step": 0}
    real_commit = RunDir.commit

    def commit(self, epoch, *args, **kwargs):
        calls["commit"], calls["step"] = epoch, 0
        return real_commit(self, epoch, *args, **kwargs)

    monkeypatch.setattr(RunDir, "commit", commit)
    for owner, name in STEPS:
        real = getattr(owner, name)

        def step(*args, _real=real, **kwargs):
            if calls["commit"] == 2:
                if calls["step"] == k:
                    raise Kill()
                calls["step"] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(owner, name, step)
    monkeypatch.setattr(rundir, "save_weights", storage.save_weights)  # rundir's name for the patched one


@pytest.mark.parametrize("k", range(len(STEPS) + 1))
def test_a_kill_anywhere_in_a_commit_leaves_a_run_that_resumes_to_the_same_weights(k, data8, tmp_path, monkeypatch):
    full = fit(tiny(), "book", tmp_path / "full", **kw(data8))
    with monkeypatch.context() as m:
        kill_during_second_commit(m, k)
        with pytest.raises(Kill):
            fit(tiny(), "book", tmp_path / "cut", **kw(data8))
    run = RunDir(tmp_path / "cut")
    assert run.checkpoint().epoch == (2 if k > 2 else 1), "the pointer is the commit"
    (tmp_path / "cut" / ".run.json.x1y2.tmp").write_bytes(b"left by a kill inside a write")
    resumed = fit(tiny(), "book", tmp_path / "cut", resume=True, **kw(data8))  # never --overwrite
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert [json.loads(line)["epoch"] for line in run.metrics.read_text().splitlines()] == [1, 2, 3]
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["epoch-0003.pt", "epoch-0003.safetensors",
                                                                  "latest.json"]
    assert not [p for p in run.dir.iterdir() if p.name.endswith(".tmp")], "temporary files removed"
    assert weights_epoch(run.weights) == 3 and json.loads(run.run_json.read_text())["status"] == "finished"
    del full


def test_a_run_killed_by_a_signal_resumes(data8, tmp_path):
    """SIGTERM stops like Ctrl-C (status interrupted); SIGKILL leaves "running" and a resumable run."""
    out = tmp_path / "run"
    script = ("import sys, time; sys.path.insert(0, {tests!r}); from moderncnn import fit; "
              "from test_train import toy, tiny; "
              "fit(tiny(), 'book', {out!r}, train_data=toy(96, 'train', size=8), test_data=toy(32, 'test', size=8), "
              "epochs=10000, batch_size=16, seed=5, quiet=True, amp=False, device='cpu', resume=True, "
              "on_epoch_end=lambda r: time.sleep(0.05))").format(tests=os.path.dirname(__file__), out=str(out))
    done = 0
    for sig, status in ((signal.SIGTERM, "interrupted"), (signal.SIGKILL, "running")):
        proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while time.time() < deadline and not (RunDir(out).exists() and RunDir(out).has_checkpoint()
                                              and RunDir(out).checkpoint().epoch > done + 1):
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert json.loads((out / "run.json").read_text())["status"] == status, err
        assert RunDir(out).checkpoint().epoch > done
        done = RunDir(out).checkpoint().epoch
    resumed = fit(tiny(), "book", out, resume=True, **kw(data8, epochs=done + 1))
    assert [h["epoch"] for h in resumed.history] == list(range(1, done + 2))


def test_sigterm_from_the_command_line_exits_143_and_says_how_to_go_on(tmp_path):
    idx = write_fashion_idx(tmp_path / "data", train=2000, test=40)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "moderncnn", "train", "lenet", "--data-dir", str(idx), "--out",
                             str(out), "--epochs", "1000", "--device", "cpu", "--quiet", "--no-download"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "latest.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted: the checkpoint of epoch" in err and "--resume" in err and "Traceback" not in err
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


def test_a_second_writer_is_refused_in_one_line(data8, tmp_path):
    out = tmp_path / "run"
    fit(tiny(), "book", out, **kw(data8, epochs=1))
    other = RunDir(out)
    assert other.claim(resume=True, overwrite=False)  # another process training it
    try:
        before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        for how in ({"resume": True}, {"overwrite": True}, {}):
            with pytest.raises(RunBusy, match=r"is being trained by another process \(pid \d+\); wait for it, "
                                              r"stop it, or choose another --out") as err:
                fit(tiny(), "book", out, **kw(data8, epochs=2), **how)
            assert "\n" not in str(err.value)
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before, "nothing touched"
    finally:
        other.release()
    fit(tiny(), "book", out, **kw(data8, epochs=2), resume=True)  # free again


def test_two_commands_started_together_one_trains_one_is_refused(tmp_path):
    idx = write_fashion_idx(tmp_path / "data", train=600, test=40)
    cmd = [sys.executable, "-m", "moderncnn", "train", "lenet", "--data-dir", str(idx), "--out", str(tmp_path / "run"),
           "--epochs", "3", "--device", "cpu", "--quiet", "--no-download"]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert refused.strip().startswith("moderncnn train: error: ") and len(refused.strip().splitlines()) == 1
    assert ("being trained by another process" in refused or "already holds a run" in refused), refused
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["status"] == "finished" and meta["epochs_done"] == 3


def test_overwrite_replaces_nothing_until_the_new_run_starts(data8, tmp_path):
    out = tmp_path / "run"
    fit(tiny(), "book", out, **kw(data8, epochs=1))
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="unknown recipe value"):
        fit(tiny(), "book", out, overwrite=True, **kw(data8, epochs=1), no_such_value=1)
    with pytest.raises(ValueError, match="needs images"):
        fit("lenet5", "book", out, overwrite=True, **kw(data8, epochs=1, resize=8))
    assert (out / "model.safetensors").read_bytes() == before and RunDir(out).checkpoint().epoch == 1


def test_a_run_of_the_layout_before_the_pointer_is_resumed(data8, tmp_path):
    out = tmp_path / "run"
    fit(tiny(), "book", out, **kw(data8, epochs=1))
    run = RunDir(out)
    ckpt = run.checkpoint()
    os.replace(ckpt.state, out / "state.pt")  # model.safetensors + state.pt, as moderncnn wrote them before
    import shutil

    shutil.rmtree(run.checkpoints)
    resumed = fit(tiny(), "book", out, resume=True, **kw(data8, epochs=2))
    assert [h["epoch"] for h in resumed.history] == [1, 2] and not (out / "state.pt").exists()
    # cut off between its two files, an old run cannot go on: said in one line, and its weights are kept
    fit(tiny(), "book", tmp_path / "old", **kw(data8, epochs=1))
    old = RunDir(tmp_path / "old")
    os.replace(old.checkpoint().state, tmp_path / "old" / "state.pt")
    shutil.rmtree(old.checkpoints)
    save_weights(old.weights, tiny(), epoch=2)
    with pytest.raises(ValueError, match=r"\(epoch 2\) and .*state.pt \(epoch 1\) disagree: .* --overwrite") as err:
        fit(tiny(), "book", tmp_path / "old", resume=True, **kw(data8, epochs=2))
    assert "\n" not in str(err.value) and weights_epoch(old.weights) == 2


class Exploding(Tiny):
    """Finite for ``finite`` training steps, then infinite logits: a run that diverges."""

    def __init__(self, finite: int):
        super().__init__()
        self.finite = finite

    def forward(self, x):
        out = super().forward(x)
        return out * math.inf if self.training and self.calls > self.finite else out


def test_a_diverging_run_stops_at_once_keeps_the_last_checkpoint_and_writes_no_nan(data8, tmp_path):
    out = tmp_path / "run"
    torch.manual_seed(0)
    model = Exploding(finite=6 + 2)  # 6 steps an epoch: the third of epoch 2 diverges
    with pytest.raises(ValueError, match=r"the loss became (nan|inf) in epoch 2, step 3; lr 0\.9 is too high for "
                                         r"exploding: train again with a lower --lr, e\.g\. 0\.09 \(the checkpoint "
                                         r"of epoch 1 in .* is kept\)") as err:
        fit(model, "book", out, **kw(data8, lr=0.9))
    assert "\n" not in str(err.value)
    assert model.calls == 9, "stopped at the first non-finite loss, not at the epoch's end"
    assert RunDir(out).checkpoint().epoch == 1 and weights_epoch(out / "model.safetensors") == 1
    assert all(torch.isfinite(t).all() for t in load_file(out / "model.safetensors").values())
    text = (out / "run.json").read_text()
    assert json.loads(text)["status"] == "diverged" and "NaN" not in text and "Infinity" not in text


class Blowing(Tiny):
    """Finite for ever, but after ``calm`` training steps its logits are a million times too large: the loss
    explodes (about 1e6) without ever becoming NaN."""

    def __init__(self, calm: int):
        super().__init__()
        self.calm = calm

    def forward(self, x):
        out = super().forward(x)
        return out * 1e6 if self.training and self.calls > self.calm else out


def test_a_finite_loss_that_explodes_stops_the_run_as_nan_does(data8, tmp_path):
    out = tmp_path / "run"
    torch.manual_seed(0)
    model = Blowing(calm=24)  # 24 steps an epoch; 4 classes: over 10 ln 4 = 13.9 is exploded; epoch 2 explodes
    with pytest.raises(ValueError, match=r"the loss exploded to .* \(over 13\.9, 10x a uniform guess's\) in epoch 2, "
                                         r"step 14; lr 0\.9 is too high .* \(the checkpoint of epoch 1 in .* is "
                                         r"kept\)"):
        fit(model, "book", out, **kw(data8, lr=0.9, epochs=3, batch_size=4))
    assert model.calls == 24 + 14, "stopped at the curves' first point past 10 steps, not at the epoch's end"
    meta = json.loads((out / "run.json").read_text())
    assert (meta["status"], meta["epochs_done"], RunDir(out).checkpoint().epoch) == ("diverged", 1, 1)


def test_json_files_never_hold_nan(tmp_path):
    run = RunDir(tmp_path)
    run.write_meta({"final": {"loss": math.nan, "examples_per_sec": math.inf, "ok": [1.0, -math.inf]}})
    assert json.loads(run.run_json.read_text()) == {"final": {"loss": None, "examples_per_sec": None,
                                                              "ok": [1.0, None]}}


@pytest.mark.parametrize("lr", ["inf", "nan", "-1", "0"])
def test_an_lr_that_is_not_a_finite_positive_number_is_refused(lr, data8):
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        fit(tiny(), "book", None, **kw(data8, lr=float(lr)))


def test_a_model_is_handed_back_with_its_own_layers_after_any_stop(data8):
    from moderncnn.layers import PatchAvgPool2d

    class Pooling(Tiny):
        def __init__(self):
            super().__init__()
            self.pool = torch.nn.AvgPool2d(2)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls > 3:
                raise KeyboardInterrupt
            seen.append(type(self.pool))
            return self.fc(self.forward_features(self.pool(x)))

    seen: list = []
    model = Pooling()
    with pytest.raises(KeyboardInterrupt):
        fit(model, "book", None, **kw(data8, speed={"patch_pool": True}))
    assert PatchAvgPool2d in seen and type(model.pool) is torch.nn.AvgPool2d
