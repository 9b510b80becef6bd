"""Key figures of the notebooks, recorded for the benchmark table.

A notebook states its claims with numbers it computes ("MMD to the data: 0.0012"). Passing
those numbers through :func:`record` changes nothing in the notebook (the value comes back
unchanged), but when the environment variable ``COURSE_REPORT`` names a file, each call
appends one JSON line ``{"chapter": ..., "key": ..., "value": ...}`` to it. The benchmark
script (``make benchmark``) sets ``COURSE_REPORT`` and ``COURSE_CHAPTER`` for every notebook
it runs and prints the recorded figures beside the run times.

Introduced in chapter 00 (the course tooling; no mathematics here).

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "report.jsonl")
>>> with report_to(path, chapter="02"):
...     mmd = record("mmd_moons", 0.0012)
>>> mmd
0.0012
>>> read_records(path)
[{'chapter': '02', 'key': 'mmd_moons', 'value': 0.0012}]
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterator

__all__ = ["record", "read_records", "report_to", "REPORT_ENV", "CHAPTER_ENV"]

REPORT_ENV = "COURSE_REPORT"
CHAPTER_ENV = "COURSE_CHAPTER"


def _as_number(key: str, value: Any) -> float | int:
    """The plain Python number behind ``value`` (int, float, NumPy scalar, one-element
    tensor or array); ValueError for anything else or a non-finite number."""
    if isinstance(value, bool):
        raise ValueError(f"record({key!r}, ...): expected a finite number, got the bool {value!r}")
    number = value
    if not isinstance(value, numbers.Real) and hasattr(value, "item"):
        size = getattr(value, "numel", None)
        count = size() if callable(size) else getattr(value, "size", None)
        if count != 1:
            raise ValueError(
                f"record({key!r}, ...): expected a finite number (or a one-element tensor/array), "
                f"got a {type(value).__name__} with {count} elements"
            )
        number = value.item()
    if isinstance(number, bool) or not isinstance(number, numbers.Real):
        raise ValueError(
            f"record({key!r}, ...): expected a finite number, got {type(value).__name__} {value!r}"
        )
    if not math.isfinite(float(number)):
        raise ValueError(f"record({key!r}, ...): expected a finite number, got {number!r}")
    return int(number) if isinstance(number, numbers.Integral) else float(number)


def record(key: str, value: Any, *, chapter: str | None = None) -> Any:
    """Record one key figure of a notebook and return ``value`` unchanged.

    Args:
        key: a short name for the figure, e.g. ``"mmd_moons"`` or ``"ddim50_mmd"``.
        value: a finite number (a one-element tensor or array is read with ``.item()``).
        chapter: the chapter id; default the environment variable ``COURSE_CHAPTER``
            (set by the benchmark script), or none.

    When ``COURSE_REPORT`` names a file, one JSON line ``{"chapter", "key", "value"}`` is
    appended to it; otherwise nothing is written.

    Raises:
        ValueError: ``key`` is not a non-empty string, ``value`` is not a finite number,
            or ``chapter`` is given but is not a non-empty string.
    """
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"record(key, value): expected key to be a non-empty string, got {key!r}")
    if chapter is not None and (not isinstance(chapter, str) or not chapter.strip()):
        raise ValueError(
            f"record({key!r}, ...): expected chapter to be a non-empty string or None, "
            f"got {chapter!r}"
        )
    number = _as_number(key, value)
    target = os.environ.get(REPORT_ENV, "")
    if target:
        folder = Path(target).parent
        if not folder.is_dir():
            raise ValueError(
                f"{REPORT_ENV}={target!r}: expected a file in an existing folder, but "
                f"{folder} does not exist"
            )
        line = {"chapter": chapter or os.environ.get(CHAPTER_ENV) or None, "key": key, "value": number}
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    return value


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``COURSE_REPORT`` file, in the order they were written (an empty
    list when the file does not exist). ValueError names a line that is not a record."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: expected a JSON record, got {text!r}") from error
        if not isinstance(entry, dict) or set(entry) != {"chapter", "key", "value"}:
            raise ValueError(
                f"{path}:{number}: expected keys chapter, key, value, got {text!r}"
            )
        records.append(entry)
    return records


@contextlib.contextmanager
def report_to(path: str | Path, chapter: str | None = None) -> Iterator[Path]:
    """Within the block, :func:`record` appends to ``path`` (and uses ``chapter`` as the
    default chapter id); the previous environment is restored afterwards."""
    saved = {name: os.environ.get(name) for name in (REPORT_ENV, CHAPTER_ENV)}
    os.environ[REPORT_ENV] = str(path)
    if chapter is None:
        os.environ.pop(CHAPTER_ENV, None)
    else:
        os.environ[CHAPTER_ENV] = chapter
    try:
        yield Path(path)
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
