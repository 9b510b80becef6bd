"""Tests of course_lib.device: the automatic choice, the COURSE_DEVICE override, describe()."""

import subprocess
import sys

import pytest
import torch

from course_lib import device as device_module
from course_lib.device import DEVICE_ENV_VAR, default_device, describe, set_threads


@pytest.fixture
def no_override(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV_VAR, raising=False)


def _fake_hardware(monkeypatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(device_module, "_mps_available", lambda: mps)


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_automatic_choice_prefers_cuda_then_mps_then_cpu(monkeypatch, no_override, cuda, mps, expected):
    _fake_hardware(monkeypatch, cuda, mps)
    assert default_device() == torch.device(expected)


def test_real_machine_choice_is_consistent(no_override):
    chosen = default_device()
    if torch.cuda.is_available():
        assert chosen.type == "cuda"
    elif device_module._mps_available():
        assert chosen.type == "mps"
    else:
        assert chosen == torch.device("cpu")


@pytest.mark.parametrize("value", ["cpu", "CPU", " cpu "])
def test_override_cpu_wins_over_gpu(monkeypatch, value):
    _fake_hardware(monkeypatch, cuda=True, mps=True)
    monkeypatch.setenv(DEVICE_ENV_VAR, value)
    assert default_device() == torch.device("cpu")


def test_override_to_available_gpu(monkeypatch):
    _fake_hardware(monkeypatch, cuda=False, mps=True)
    monkeypatch.setenv(DEVICE_ENV_VAR, "mps")
    assert default_device() == torch.device("mps")


def test_unknown_override_raises(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV_VAR, "tpu")
    with pytest.raises(ValueError, match=r"COURSE_DEVICE must be one of .*got 'tpu'"):
        default_device()


@pytest.mark.parametrize("kind", ["cuda", "mps"])
def test_unavailable_override_raises(monkeypatch, kind):
    _fake_hardware(monkeypatch, cuda=False, mps=False)
    monkeypatch.setenv(DEVICE_ENV_VAR, kind)
    with pytest.raises(ValueError, match=f"COURSE_DEVICE='{kind}' but no {kind} device is available"):
        default_device()


def test_describe_reports_version_device_and_threads(no_override):
    text = describe()
    assert f"torch {torch.__version__}" in text
    assert f"device: {default_device()}" in text
    assert f"CPU threads: {torch.get_num_threads()}" in text
    assert "GPU:" in text


def test_describe_reports_a_bad_override_instead_of_raising(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV_VAR, "tpu")
    assert "device: invalid" in describe()


def test_module_runs_as_a_script():
    completed = subprocess.run(
        [sys.executable, "-m", "course_lib.device"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert completed.stdout.startswith("torch ")
    assert "device:" in completed.stdout


def test_set_threads_sets_and_validates():
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="set_threads expects an int >= 1"):
            set_threads(bad)
