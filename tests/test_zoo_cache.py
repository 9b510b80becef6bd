"""The zoo's cache under faults: locks between processes, unwritable folders, non-finite weights,
the cache folder's path, and the command line's progress (course_lib.zoo.cache / registry / cli)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from course_lib import zoo
from course_lib.profiles import get_profile
from course_lib.zoo import cache, cli, progress

REPO = Path(__file__).resolve().parent.parent
QUICK = get_profile("quick")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """A recipe 'tiny' whose fit fills the weights with config['value'] and counts its calls."""
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    calls = []
    state = {"value": 3.0}

    def fit(model, config, progress):
        calls.append(config["value"])
        with torch.no_grad():
            model.lin.weight.fill_(config["value"])
        return model, {"final_loss": 0.5}

    recipe = zoo.Recipe("tiny", "classifier", lambda profile: {"value": state["value"], "seed": 0},
                        lambda config: Tiny(), fit, "a test model")
    monkeypatch.setitem(zoo.RECIPES, "tiny", recipe)
    return calls, state


# --------------------------------------------------------------------------- writability
def test_a_failed_write_warns_and_returns_the_trained_model(tiny, monkeypatch, tmp_path):
    calls, _ = tiny

    def full_disk(obj, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(cache, "atomic_save", full_disk)
    with pytest.warns(UserWarning, match="could not write .*No space left on device.*used without being cached"):
        entry = zoo.load("tiny", profile=QUICK, device="cpu", progress=False)
    assert entry.trained_now and calls == [3.0] and float(entry.model.lin.weight[0, 0]) == 3.0
    assert not list(tmp_path.glob("*.pt"))


def test_an_unwritable_folder_is_reported_before_training(tiny, monkeypatch, tmp_path):
    calls, _ = tiny
    seen_before_fit = []
    recipe = zoo.RECIPES["tiny"]

    def fit(model, config, progress):
        seen_before_fit.append(len(caught))
        return recipe.fit(model, config, progress)

    monkeypatch.setitem(zoo.RECIPES, "tiny", zoo.Recipe("tiny", recipe.kind, recipe.config, recipe.build, fit))
    monkeypatch.setattr(cache, "writable", lambda folder: "Read-only file system")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entry = zoo.load("tiny", profile=QUICK, device="cpu", progress=False)
    assert entry.trained_now and calls == [3.0]
    assert seen_before_fit == [1] and "not writable (Read-only file system)" in str(caught[0].message)
    assert not list(tmp_path.glob("*"))  # no file, no lock, no progress file


def test_a_read_only_folder_really_is_detected(tiny, monkeypatch, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if cache.writable(folder) is None:
            pytest.skip("this user can write to a read-only folder (root): simulated in the tests above")
        monkeypatch.setenv("COURSE_CACHE_DIR", str(folder))
        with pytest.warns(UserWarning, match="is not writable"):
            entry = zoo.load("tiny", profile=QUICK, device="cpu", progress=False)
        assert entry.trained_now and float(entry.model.lin.weight[0, 0]) == 3.0
    finally:
        folder.chmod(0o755)


# --------------------------------------------------------------------------- finiteness
def test_non_finite_weights_are_refused_on_load_and_retrained(tiny):
    calls, _ = tiny
    path = zoo.cache_path("tiny", QUICK)
    config = zoo.RECIPES["tiny"].config(QUICK)
    bad = Tiny().state_dict()
    bad["lin.weight"][0, 0] = float("nan")
    torch.save({"name": "tiny", "config": config, "state_dict": bad, "metrics": {}}, path)
    with pytest.warns(UserWarning, match="non-finite weights in lin.weight"):
        entry = zoo.load("tiny", profile=QUICK, device="cpu", progress=False)
    assert entry.trained_now and calls == [3.0]
    assert torch.isfinite(entry.model.lin.bias).all()  # trained from a fresh model, not the NaN one
    assert not zoo.load("tiny", profile=QUICK, device="cpu", progress=False).trained_now


def test_non_finite_weights_are_never_written(tiny, monkeypatch, tmp_path):
    recipe = zoo.RECIPES["tiny"]

    def fit(model, config, progress):
        with torch.no_grad():
            model.lin.weight.fill_(float("inf"))
        return model, {}

    monkeypatch.setitem(zoo.RECIPES, "tiny", zoo.Recipe("tiny", recipe.kind, recipe.config, recipe.build, fit))
    with pytest.raises(FloatingPointError, match="non-finite weights.*nothing was cached"):
        zoo.load("tiny", profile=QUICK, device="cpu", progress=False)
    assert not list(tmp_path.glob("*.pt"))


def test_cached_tensors_with_nan_are_recomputed_and_not_written(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    with pytest.warns(UserWarning, match="NaN or infinite values; it is returned but not cached"):
        out = zoo.cached_tensor("nan_samples", {"seed": 0}, lambda: torch.tensor([1.0, float("nan")]))
    assert torch.isnan(out[1]) and not list(tmp_path.glob("*.pt"))


# --------------------------------------------------------------------------- the folder
def test_a_relative_cache_dir_is_one_folder_from_the_checkout_and_from_chapters(monkeypatch, tmp_path):
    """make zoo runs in the checkout, a notebook in chapters/: a relative COURSE_CACHE_DIR is one folder."""
    monkeypatch.setenv("COURSE_CACHE_DIR", os.path.relpath(tmp_path / "shared_cache", REPO))
    monkeypatch.chdir(REPO)
    from_root = zoo.cache_dir()
    monkeypatch.chdir(REPO / "chapters")
    from_chapters = zoo.cache_dir()
    assert from_root == from_chapters == (tmp_path / "shared_cache").resolve()
    assert from_root.is_dir() and from_root.is_absolute()


def test_the_cache_dir_expands_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("COURSE_CACHE_DIR", "~/models")
    assert zoo.cache_dir() == (tmp_path / "models").resolve()


# --------------------------------------------------------------------------- two processes
_SLOW_RECIPE = '''
import os, sys, time
import torch
from torch import nn
from course_lib import zoo
from course_lib.profiles import get_profile
from course_lib.training import report_progress

CALLS = sys.argv[1]

def fit(model, config, progress):
    with open(CALLS, "a") as f:
        f.write(f"{os.getpid()}\\n")
    release = CALLS + ".release"  # the test creates it once the second process is seen waiting
    deadline = time.monotonic() + 90
    step = 0
    while not os.path.exists(release) and time.monotonic() < deadline:
        step = min(step + 1, 19)
        time.sleep(0.1)
        report_progress(step, 20, 1.0 / step)
    report_progress(20, 20, 0.05)
    with torch.no_grad():
        model.weight.fill_(7.0)
    return model, {"final_loss": 0.05}

zoo.register(zoo.Recipe("slow", "classifier", lambda profile: {"seed": 0}, lambda config: nn.Linear(2, 2), fit))
entry = zoo.load("slow", profile=get_profile("quick"), device="cpu", progress=True)
print("trained_now", entry.trained_now, float(entry.model.weight[0, 0]))
'''


def test_two_processes_needing_one_missing_model_train_it_once(tmp_path):
    script = tmp_path / "slow_recipe.py"
    script.write_text(_SLOW_RECIPE)
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "COURSE_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, str(script), str(calls)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not calls.exists() and time.monotonic() < deadline:  # the first one is training
        time.sleep(0.05)
    # the builder holds the lock until the second process is seen waiting for it (no race with
    # the second's start-up time on a loaded machine)
    second_err = tmp_path / "second.err"
    with open(second_err, "w") as err:
        second = subprocess.Popen([sys.executable, str(script), str(calls)], env=env, stdout=subprocess.PIPE,
                                  stderr=err, text=True)
        while "waiting" not in second_err.read_text() and time.monotonic() < deadline + 60:
            time.sleep(0.05)
        time.sleep(1.0)  # let it show a progress line of the builder
        Path(str(calls) + ".release").write_text("go")
        out_second, _ = second.communicate(timeout=120)
    out_first, err_first = first.communicate(timeout=120)
    second_stderr = second_err.read_text()
    assert first.returncode == 0 and second.returncode == 0, err_first + second_stderr
    assert len(calls.read_text().split()) == 1  # trained once
    assert "trained_now True 7.0" in out_first and "trained_now False 7.0" in out_second
    assert "'slow' is being built by another process; waiting" in second_stderr
    assert "zoo: slow (pid " in second_stderr  # the builder's progress, shown to the one waiting
    assert not list((tmp_path / "cache").glob("*.lock")) and not list((tmp_path / "cache").glob("*.progress"))


def test_the_lock_is_released_when_training_fails(tiny, monkeypatch):
    recipe = zoo.RECIPES["tiny"]

    def fit(model, config, progress):
        raise KeyboardInterrupt("stopped")

    monkeypatch.setitem(zoo.RECIPES, "tiny", zoo.Recipe("tiny", recipe.kind, recipe.config, recipe.build, fit))
    with pytest.raises(KeyboardInterrupt):
        zoo.load("tiny", profile=QUICK, device="cpu", progress=False)
    path = zoo.cache_path("tiny", QUICK)
    with cache.build_lock(path, "tiny") as waited:  # free again, at once
        assert waited is False


# --------------------------------------------------------------------------- progress and the command line
def test_plain_progress_lines_every_five_percent():
    import io

    log = io.StringIO()
    display = progress.Display(log, bar=False)
    for step in range(1, 101):
        display.update("m", step, 100, 0.1)
    lines = log.getvalue().splitlines()
    assert len(lines) == 20 and lines[0].startswith("zoo: m   5% (5/100") and "100% (100/100" in lines[-1]


_CLI = '''
import sys, time
import torch
from torch import nn
from course_lib import zoo
from course_lib.training import report_progress
from course_lib.zoo.cli import main

def fit(model, config, progress):
    print(f"fit {config['tag']} starts", file=sys.stderr, flush=True)
    for step in range(1, 41):
        report_progress(step, 40, 0.5)
    return model, {"final_loss": 0.25 if config["tag"] == "a" else 0.125}

for tag in ("a", "b"):
    zoo.register(zoo.Recipe(f"cli_{tag}", "classifier", lambda profile, tag=tag: {"tag": tag, "seed": 0},
                            lambda config: nn.Linear(3, 2), fit, "test"))
raise SystemExit(main(sys.argv[1:]))
'''


def test_build_prints_each_row_when_its_model_is_done(tmp_path):
    script = tmp_path / "cli.py"
    script.write_text(_CLI)
    env = {**os.environ, "COURSE_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, str(script), "build", "cli_a", "cli_b"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=120)
    assert run.returncode == 0, run.stdout
    out = run.stdout
    assert out.index("| cli_a | 8 | yes |") < out.index("fit b starts")  # a's row before b's training
    assert "final loss 0.25 |" in out and "| cli_b | 8 | yes |" in out
    assert "zoo: cli_b  50% (20/40 steps" in out  # not a terminal: plain progress lines
    listing = subprocess.run([sys.executable, str(script), "list"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert "| cli_a | yes | cli_a-" in listing.stdout and "| digits_unet | no |" in listing.stdout
    again = subprocess.run([sys.executable, str(script), "build", "cli_a"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert "| cli_a | 8 | no (cached) |" in again.stdout
    bad = subprocess.run([sys.executable, str(script), "build", "nope"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown name(s) ['nope']" in bad.stderr


def test_the_stage_modules_are_found_by_name_and_hold_every_recipe():
    names = [stage.__name__.rsplit(".", 1)[1] for stage in zoo.STAGES]
    assert names[:3] == ["stage1", "stage2", "stage3"]
    homes = {recipe.fit.__module__ for recipe in zoo.RECIPES.values()}
    assert homes <= {stage.__name__ for stage in zoo.STAGES}
    with pytest.raises(ValueError, match="registered twice"):
        zoo.register(zoo.RECIPES["digits_unet"])
    assert cli.key_figure({"test_accuracy": 0.5}) == "test accuracy 50.00 %"
