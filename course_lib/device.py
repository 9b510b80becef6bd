"""Which device the course computes on: CUDA, Apple MPS or the CPU.

The rule of :func:`default_device` is the one every chapter uses:

1. the environment variable ``COURSE_DEVICE`` (``cpu``, ``cuda`` or ``mps``) wins when set;
2. otherwise a CUDA GPU if one is available;
3. otherwise Apple's Metal (MPS) backend if available;
4. otherwise the CPU.

Run ``python -m course_lib.device`` to print what this machine offers.

Introduced in chapter 00.

>>> default_device().type in ("cpu", "cuda", "mps")
True
"""

from __future__ import annotations

import os

import torch

__all__ = ["DEVICE_ENV_VAR", "default_device", "describe", "set_threads"]

#: Name of the environment variable that overrides the automatic choice.
DEVICE_ENV_VAR = "COURSE_DEVICE"

_KNOWN = ("cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _available(kind: str) -> bool:
    if kind == "cpu":
        return True
    if kind == "cuda":
        return torch.cuda.is_available()
    return _mps_available()


def default_device() -> torch.device:
    """The device to compute on: ``COURSE_DEVICE`` if set, else CUDA, else MPS, else CPU.

    Returns:
        ``torch.device`` (``cuda`` means the current CUDA device).

    Raises:
        ValueError: ``COURSE_DEVICE`` names an unknown device, or one this machine lacks.

    Introduced in chapter 00.
    """
    requested = os.environ.get(DEVICE_ENV_VAR, "").strip().lower()
    if requested:
        if requested not in _KNOWN:
            raise ValueError(
                f"{DEVICE_ENV_VAR} must be one of {_KNOWN}, got {os.environ[DEVICE_ENV_VAR]!r}"
            )
        if not _available(requested):
            raise ValueError(
                f"{DEVICE_ENV_VAR}={requested!r} but no {requested} device is available on this "
                "machine; unset the variable to choose automatically"
            )
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def set_threads(n: int) -> None:
    """Set the number of CPU threads torch uses for intra-op parallelism.

    One thread per notebook kernel is the robust setting on a shared 2-core machine
    (two threads next to another busy process ran 2-6x slower than one).

    Args:
        n: number of threads, an int >= 1.

    Introduced in chapter 00.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_threads expects an int >= 1, got {n!r}")
    torch.set_num_threads(n)


def describe() -> str:
    """A short report: torch version, chosen device, CPU threads and GPU name if any.

    Introduced in chapter 00.
    """
    lines = [f"torch {torch.__version__}"]
    try:
        device = default_device()
        lines.append(f"device: {device}")
    except ValueError as error:  # report a bad COURSE_DEVICE instead of crashing
        device = None
        lines.append(f"device: invalid ({error})")
    lines.append(f"CPU threads: {torch.get_num_threads()}")
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        lines.append(
            f"GPU: {torch.cuda.get_device_name(index)} ({props.total_memory / 2**30:.1f} GiB)"
        )
        lines.append(f"bf16 supported: {torch.cuda.is_bf16_supported()}")
    elif _mps_available():
        lines.append("GPU: Apple MPS")
    else:
        lines.append("GPU: none")
    override = os.environ.get(DEVICE_ENV_VAR)
    if override:
        lines.append(f"{DEVICE_ENV_VAR}={override!r}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - exercised by the Makefile
    print(describe())
