r"""The zoo's command line: ``python -m course_lib.zoo build [NAME ...]`` and ``python -m course_lib.zoo list``.

``build`` trains (or loads) the named models (default: all) in the order given and prints each
model's row (name, parameters, trained now, seconds, its key figure) the moment it is done, with a
progress bar while it trains on a terminal and a line every 5 % when the output is not a terminal
(CI, a log file). ``list`` shows, for the current profile, which models are cached, which are being
built by another process, and how many other files the cache holds.

Introduced in chapter 00.

>>> key_figure({"final_loss": 0.03125, "seconds": 12.0})
'final loss 0.03125'
>>> key_figure({"test_accuracy": 0.9944})
'test accuracy 99.44 %'
"""

from __future__ import annotations

import os
import sys

import torch

from course_lib.profiles import current_profile

from . import cache
from .progress import Display, read_progress, showing
from .registry import RECIPES, SAMPLE_SETS, build, cache_path

__all__ = ["key_figure", "main"]

USAGE = ("usage: python -m course_lib.zoo build [NAME ...] | list   "
         "(NAME: a model or a sample set; build without names builds them all)")


def key_figure(metrics: dict) -> str:
    """The one number that says how well a zoo model trained (accuracy, else final loss, else shape)."""
    if "test_accuracy" in metrics:
        return f"test accuracy {100 * metrics['test_accuracy']:.2f} %"
    if "final_loss" in metrics:
        return f"final loss {metrics['final_loss']:.4g}"
    if "shape" in metrics:
        return f"shape {metrics['shape']}"
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
                     if not isinstance(v, list))


def format_row(row: dict) -> str:
    """One table row of ``build``: | model | parameters | trained now | seconds | key figure |."""
    params = "-" if row["parameters"] is None else f"{row['parameters']:,}"
    trained = {True: "yes", False: "no (cached)", None: "-"}[row["trained_now"]]
    return f"| {row['name']} | {params} | {trained} | {row['seconds']:.1f} | {key_figure(row['metrics'])} |"


def _build(names: list[str]) -> int:
    unknown = [n for n in names if n not in RECIPES and n not in SAMPLE_SETS]
    if unknown:
        print(f"zoo: unknown name(s) {unknown}; expected models {sorted(RECIPES)} or sample sets "
              f"{sorted(SAMPLE_SETS)}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    profile = current_profile()
    print(f"zoo: profile {profile.name}, cache {cache.cache_dir()}", flush=True)
    print("| model | parameters | trained now | seconds | key figure |\n|---|---|---|---|---|", flush=True)
    with showing(Display()):
        build(names or None, profile=profile, progress=False, on_row=lambda row: print(format_row(row), flush=True))
    return 0


def _list() -> int:
    profile = current_profile()
    folder = cache.cache_dir()
    print(f"zoo: profile {profile.name}, cache {folder}")
    print("| model | cached | file | MB | description |\n|---|---|---|---|---|")
    known = set()
    entries = [(name, cache_path(name, profile), recipe.description) for name, recipe in sorted(RECIPES.items())]
    for name in sorted(SAMPLE_SETS):
        config = SAMPLE_SETS[name][0](profile)
        entries.append((name, folder / f"{name}-{cache.config_key(name, config)}.pt", "cached reference samples"))
    for name, path, description in entries:
        known.add(path.name)
        state = read_progress(cache.progress_path(path))
        if path.exists():
            status, size = "yes", f"{path.stat().st_size / 1e6:.1f}"
        elif state is not None:
            done = 100 * state["step"] / max(1, state["steps"])
            status, size = f"being built (pid {state.get('pid')}, {done:.0f} %)", "-"
        else:
            status, size = "no", "-"
        print(f"| {name} | {status} | {path.name} | {size} | {description} |")
    others = sorted(p.name for p in folder.glob("*.pt") if p.name not in known) if folder.is_dir() else []
    print(f"zoo: {sum(1 for _, p, _ in entries if p.exists())} of {len(entries)} cached; {len(others)} other "
          "file(s) in the cache (other profiles, course versions or recipes)")
    return 0


def main(argv: list[str]) -> int:
    """Run the command line with ``argv`` (without the program name); returns the exit status."""
    if not argv or argv[0] not in ("build", "list") or (argv[0] == "list" and len(argv) > 1):
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] == "list":
        return _list()
    return _build(argv[1:])
